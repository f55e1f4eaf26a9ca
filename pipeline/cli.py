"""The `pipeline` command. Thin: parse options, call the API, report. Exit codes: 0 success,
1 unexpected failure, 2 bad input or usage, 3 a weight source or model is missing, 130 Ctrl-C."""

from __future__ import annotations

import functools
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.logging import RichHandler
from rich.table import Table

from .errors import InputError, SourceMissingError
from .params import HELP, StyleParams
from .progress import console, format_losses, iteration_bar

app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                  help="Batch neural style transfer (Gatys et al., CVPR 2016).")
D = StyleParams()


def _floats(text: str | None) -> tuple[float, ...] | None:
    return None if text is None else tuple(float(v) for v in text.split(",") if v.strip())


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def reports_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn our exceptions into one line on stderr and a documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except InputError as e:
            console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except SourceMissingError as e:
            console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(3) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/yellow]")
            raise typer.Exit(130) from None

    return wrapper


@app.callback()
def main(verbose: bool = typer.Option(True, "--verbose/--quiet-log",
                                      help="Log target and model events (provider chosen, "
                                           "cache hits, exports) to stderr.")) -> None:
    """Batch neural style transfer (Gatys et al., CVPR 2016)."""
    handler = RichHandler(console=console, show_path=False, show_time=False)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[handler],
                        force=True)
    logging.getLogger("pipeline").setLevel(logging.INFO if verbose else logging.WARNING)


cache_option = typer.Option(None, "--cache-dir", envvar="STYLE_PIPELINE_CACHE",
                            help="Cache root for weights, ONNX models, TensorRT engines and "
                                 "targets.  [default: the user cache dir]")


@app.command()
@reports_errors
def stylize(
    content: Path = typer.Argument(..., help="Content image (any format PIL reads)."),
    styles: list[Path] = typer.Argument(..., help="One or more style images."),
    output: Path = typer.Option(..., "--output", "-o", help="Output file: .png or .jpg/.jpeg. "
                                "Written atomically, with the parameters embedded."),
    size: int = typer.Option(D.size, help=HELP["size"]),
    iterations: int = typer.Option(D.iterations, help=HELP["iterations"]),
    optimizer: str = typer.Option(D.optimizer, help=HELP["optimizer"]),
    lr: float | None = typer.Option(D.lr, help=HELP["lr"]),
    lbfgs_history: int = typer.Option(D.lbfgs_history, help=HELP["lbfgs_history"]),
    lbfgs_max_step: float = typer.Option(D.lbfgs_max_step, help=HELP["lbfgs_max_step"]),
    content_weight: float = typer.Option(D.content_weight, help=HELP["content_weight"]),
    style_weight: float = typer.Option(D.style_weight, help=HELP["style_weight"]),
    tv_weight: float = typer.Option(D.tv_weight, help=HELP["tv_weight"]),
    content_layers: str = typer.Option(",".join(D.content_layers),
                                       help=HELP["content_layers"] + " Comma-separated."),
    style_layers: str = typer.Option(",".join(D.style_layers),
                                     help=HELP["style_layers"] + " Comma-separated."),
    style_layer_weights: str | None = typer.Option(None, help=HELP["style_layer_weights"]
                                                   + " Comma-separated."),
    style_blend: str | None = typer.Option(None, help=HELP["style_blend"] + " Comma-separated."),
    style_scale: float = typer.Option(D.style_scale, help=HELP["style_scale"]),
    init: str = typer.Option(D.init, help=HELP["init"]),
    seed: int = typer.Option(D.seed, help=HELP["seed"]),
    preserve_colors: bool = typer.Option(D.preserve_colors, help=HELP["preserve_colors"]),
    pooling: str = typer.Option(D.pooling, help=HELP["pooling"]),
    weights: str = typer.Option(D.weights, help=HELP["weights"]),
    device: str = typer.Option("auto", help="auto (first GPU, else CPU), cpu, cuda or cuda:N."),
    precision: str = typer.Option("auto", help="Trunk precision: auto (bf16 on CUDA and on "
                                  "CPUs with AMX, else fp32), fp32 or bf16. Grams and losses "
                                  "are always fp32."),
    channels_last: str = typer.Option("auto", help="NHWC memory layout for the trunk: auto (on "
                                      "for CUDA and bf16), on or off."),
    cudnn_benchmark: bool = typer.Option(True, help="Let cuDNN autotune conv algorithms per "
                                         "image size (CUDA only)."),
    targets: str = typer.Option("onnx", help="Compute content/style targets with onnx (ONNX "
                                "Runtime over the exported trunk) or torch."),
    providers: str = typer.Option("auto", help="ONNX Runtime providers in order of choice, e.g. "
                                  "cuda,cpu. auto = tensorrt,cuda,cpu, keeping those that load."),
    trt_fp16: bool = typer.Option(False, help="TensorRT fp16 for targets (default fp32)."),
    cache_dir: str | None = cache_option,
    cache_targets: bool = typer.Option(True, help="Keep computed targets in the cache."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
) -> None:
    """Stylize CONTENT with one or more STYLES and write OUTPUT."""
    from .api import StyleJob, stylize_batch
    from .images import check_output_path, save_image
    from .runtime import Runtime

    check_output_path(output)
    if channels_last not in ("auto", "on", "off"):
        raise InputError(f"--channels-last must be auto, on or off, got {channels_last!r}")
    params = StyleParams(
        size=size, iterations=iterations, optimizer=optimizer, lr=lr, lbfgs_history=lbfgs_history,
        lbfgs_max_step=lbfgs_max_step, content_weight=content_weight, style_weight=style_weight,
        tv_weight=tv_weight, content_layers=_names(content_layers),
        style_layers=_names(style_layers), style_layer_weights=_floats(style_layer_weights),
        style_blend=_floats(style_blend), style_scale=style_scale, init=init, seed=seed,
        preserve_colors=preserve_colors, pooling=pooling, weights=weights,
    ).validate(n_styles=len(styles))
    runtime = Runtime.create(device, precision, {"auto": None, "on": True, "off": False}[
        channels_last], cudnn_benchmark, targets, providers, trt_fp16, cache_dir, cache_targets)
    start = time.perf_counter()
    with iteration_bar(f"{content.name} x {len(styles)} style(s)", iterations, quiet) as progress:
        result = stylize_batch([StyleJob(content, styles)], params, runtime, progress)[0]
    save_image(result.image, output, result.metadata)
    if not quiet:
        table = Table(title="stylize", show_header=False)
        table.add_row("output", f"{output} ({result.image.width}x{result.image.height})")
        table.add_row("device", f"{runtime.device} {runtime.precision}"
                      f"{' channels_last' if runtime.channels_last else ''}")
        table.add_row("iterations", f"{result.iterations} ({params.optimizer})")
        s_per_it = result.seconds / max(1, result.iterations)
        table.add_row("optimize", f"{result.seconds:.1f} s ({s_per_it:.3f} s/it)")
        table.add_row("total", f"{time.perf_counter() - start:.1f} s")
        table.add_row("final loss", format_losses(result.losses))
        console.print(table)


@app.command("export")
@reports_errors
def export_cmd(
    weights: str = typer.Option(D.weights, help=HELP["weights"]),
    pooling: str = typer.Option(D.pooling, help=HELP["pooling"]),
    cache_dir: str | None = cache_option,
    output: Path | None = typer.Option(None, "--output", "-o", help="Also copy the model and its "
                                       "sidecar JSON here (a .onnx path)."),
    force: bool = typer.Option(False, help="Export again even if the cache has the model."),
) -> None:
    """Export the VGG19 trunk (through relu5_1, plus relu4_2) to ONNX and verify it against
    PyTorch. Runs happen automatically when a run needs a missing model; this command does it
    ahead of time (e.g. while building a GPU image)."""
    from export.onnx_export import ensure_model

    from .files import cache_dir as resolve_cache
    from .params import POOLINGS
    from .weights import load_weights

    if pooling not in POOLINGS:
        raise InputError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    path, sidecar = ensure_model(load_weights(weights, cache_dir), pooling,
                                 resolve_cache(cache_dir) / "models", force=force)
    if output is not None:
        from .files import atomic_path

        for src, dst in ((path, output), (path.with_suffix(".json"),
                                          output.with_suffix(".json"))):
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
    table = Table(title="export", show_header=False)
    table.add_row("model", f"{path} ({path.stat().st_size / 1e6:.1f} MB, weights inside)")
    table.add_row("weights", f"{sidecar['weights_source']} ({sidecar['weights_digest'][:16]}), "
                  f"{sidecar['normalization']} input normalization, {sidecar['pooling']} pool")
    table.add_row("outputs", ", ".join(sidecar["outputs"]))
    table.add_row("input", sidecar["input"])
    table.add_row("opset", f"{sidecar['opset']} (torch {sidecar['torch']}, onnx "
                  f"{sidecar['onnx']})")
    ver = sidecar["verification"]
    table.add_row("verified", f"max relative error {ver['max_rel_error']:.1e} <= "
                  f"{ver['limit']:.0e} ({ver['inputs']})")
    console.print(table)


cache_app = typer.Typer(no_args_is_help=True, help="Show or empty the cache.")
app.add_typer(cache_app, name="cache")
CACHE_PARTS = {"weights": "dequantized weights", "models": "ONNX models",
               "trt": "TensorRT engines", "targets": "content/style targets"}


@cache_app.command("info")
@reports_errors
def cache_info(cache_dir: str | None = cache_option) -> None:
    """Files and sizes per part of the cache."""
    from .files import cache_dir as resolve_cache

    root = resolve_cache(cache_dir)
    table = Table(title=f"cache {root}")
    for col in ("part", "files", "size"):
        table.add_column(col, justify="right" if col != "part" else "left")
    for part, label in CACHE_PARTS.items():
        files = [p for p in (root / part).rglob("*") if p.is_file()]
        table.add_row(f"{part} ({label})", str(len(files)),
                      f"{sum(p.stat().st_size for p in files) / 1e6:.1f} MB")
    console.print(table)


@cache_app.command("clear")
@reports_errors
def cache_clear(
    parts: list[str] = typer.Argument(None, help="Parts to empty: weights, models, trt, "
                                      "targets. Default: all."),
    cache_dir: str | None = cache_option,
) -> None:
    """Delete cached files; everything is recomputed on demand."""
    from .files import cache_dir as resolve_cache

    root = resolve_cache(cache_dir)
    for part in parts or list(CACHE_PARTS):
        if part not in CACHE_PARTS:
            raise InputError(f"unknown cache part {part!r}; use {', '.join(CACHE_PARTS)}")
        shutil.rmtree(root / part, ignore_errors=True)
        console.print(f"cleared {root / part}")
