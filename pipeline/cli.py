"""The `pipeline` command. Thin: parse options, call the API, report. Exit codes: 0 success,
1 unexpected failure, 2 bad input or usage, 3 a weight source or model is missing, 130 Ctrl-C."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
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
def main() -> None:
    """Batch neural style transfer (Gatys et al., CVPR 2016)."""


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
        channels_last], cudnn_benchmark)
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
