"""The `pipeline` command. Thin: parse options, call the API, report. Exit codes: 0 success,
1 unexpected failure, 2 bad input or usage, 3 a weight source or model is missing, 130 Ctrl-C."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import logging
import shutil
import time
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer
from rich.logging import RichHandler
from rich.progress import TextColumn, TimeElapsedColumn
from rich.table import Table

from ..accel.runtime import RuntimeOptions
from ..errors import InputError, NonFiniteError, SourceMissingError
from ..gatys.params import HELP, INIT_WORDS, StyleParams
from .progress import console, format_losses, iteration_bar, say

app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                  help="Batch neural style transfer (Gatys et al., CVPR 2016).")
D = StyleParams()
# Every 10 iterations: a smooth curve over 500, and no cost an iteration would show.
TRACE_EVERY = 10
TRACE_EVERY_HELP = "Record the loss terms every N iterations (and the final ones); 0 = none."


def _list(name: str, text: str | None) -> tuple | None:
    """A comma-separated list option, parsed as a manifest cell would be."""
    from ..bulk.manifest import coerce_param

    if text is None:
        return None
    try:
        return coerce_param(name, text)
    except ValueError as e:
        raise InputError(f"--{name.replace('_', '-')} {text!r}: {e}") from None


def say_error(message: object) -> None:
    say("error:", "red", message)


def reports_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn our exceptions into one line on stderr and a documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except InputError as e:
            say_error(e)
            raise typer.Exit(2) from None
        except SourceMissingError as e:
            say_error(e)
            raise typer.Exit(3) from None
        except KeyboardInterrupt:
            say("interrupted", "yellow")
            raise typer.Exit(130) from None
        except NonFiniteError as e:  # the job diverged
            say_error(e)
            raise typer.Exit(1) from None
        except (MemoryError, RuntimeError) as e:  # torch.OutOfMemoryError is a RuntimeError
            text = str(e).splitlines()[0] if str(e) else type(e).__name__
            if not isinstance(e, MemoryError) and "memory" not in text.lower():
                raise
            say_error(f"out of memory ({text}); try a smaller --size, fewer styles, "
                      "--lbfgs-history 20 or --optimizer adam")
            raise typer.Exit(1) from None
        except OSError as e:  # a write the checks before the work could not foresee
            from ..io.files import describe_os_error

            where = Path(e.filename).parent if e.filename else Path.cwd()
            say_error(describe_os_error(e, where))
            raise typer.Exit(1) from None

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


def setting_option(f: dataclasses.Field) -> Any:
    """The Typer option of a RuntimeOptions field: its default (as a word where it has
    words), flag, environment variable and help, all from the field."""
    words, flag = f.metadata["words"], f.metadata["flag"]
    default = next((w for w, v in (words or {}).items() if v == f.default), f.default)
    return typer.Option(default, *([flag] if flag else []), envvar=f.metadata["envvar"],
                        help=f.metadata["help"])


# The cache root is also an option of the commands that take no other runtime setting.
cache_option = setting_option(RuntimeOptions.__dataclass_fields__["cache"])


def with_runtime_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command one option per RuntimeOptions field (its default and help come from
    there), handed to it as `options: RuntimeOptions`."""
    hints = typing.get_type_hints(RuntimeOptions)
    params = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=setting_option(f),
                                annotation=str if f.metadata["words"] else hints[f.name])
              for f in dataclasses.fields(RuntimeOptions)]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {}
        for f in dataclasses.fields(RuntimeOptions):
            value, words = kwargs.pop(f.name), f.metadata["words"]
            if words:
                if value not in words:
                    raise InputError(f"--{f.name.replace('_', '-')} must be "
                                     f"{', '.join(words)}, got {value!r}")
                value = words[value]
            values[f.name] = value
        return fn(*args, options=RuntimeOptions(**values), **kwargs)

    own = inspect.signature(fn, eval_str=True).parameters.values()
    wrapper.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [p for p in own if p.name != "options"] + params)
    return wrapper


@app.command()
@reports_errors
@with_runtime_options
def stylize(
    content: Path = typer.Argument(..., help="Content image (any format PIL reads)."),
    styles: list[Path] = typer.Argument(..., help="One or more style images."),
    output: Path = typer.Option(..., "--output", "-o", help="Output file: .png, .jpg/.jpeg or "
                                ".tif/.tiff. Written atomically, tagged sRGB, with the "
                                "parameters embedded."),
    size: int = typer.Option(D.size, help=HELP["size"]),
    size_bucket: int = typer.Option(D.size_bucket, help=HELP["size_bucket"]),
    iterations: int = typer.Option(D.iterations, help=HELP["iterations"]),
    tol: float = typer.Option(D.tol, help=HELP["tol"]),
    tol_window: int = typer.Option(D.tol_window, help=HELP["tol_window"]),
    save_every: int = typer.Option(D.save_every, help=HELP["save_every"]),
    trace: Path | None = typer.Option(None, help="Also write the loss trace (the loss terms "
                                      "every --trace-every iterations) to this Parquet file."),
    trace_every: int = typer.Option(TRACE_EVERY, help=TRACE_EVERY_HELP),
    scales: int = typer.Option(D.scales, help=HELP["scales"]),
    optimizer: str = typer.Option(D.optimizer, help=HELP["optimizer"]),
    lr: float | None = typer.Option(D.lr, help=HELP["lr"]),
    lbfgs_history: int = typer.Option(D.lbfgs_history, help=HELP["lbfgs_history"]),
    lbfgs_max_step: float = typer.Option(D.lbfgs_max_step, help=HELP["lbfgs_max_step"]),
    lbfgs_precondition: float = typer.Option(D.lbfgs_precondition,
                                             help=HELP["lbfgs_precondition"]),
    lbfgs_scaling: str = typer.Option(D.lbfgs_scaling, help=HELP["lbfgs_scaling"]),
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
    color: str = typer.Option(D.color, help=HELP["color"]),
    color_match: str = typer.Option(D.color_match, help=HELP["color_match"]),
    preserve_colors: bool = typer.Option(D.preserve_colors, help=HELP["preserve_colors"]),
    bit_depth: int = typer.Option(D.bit_depth, help=HELP["bit_depth"]),
    pooling: str = typer.Option(D.pooling, help=HELP["pooling"]),
    weights: str = typer.Option(D.weights, help=HELP["weights"]),
    device: str = typer.Option("auto", help="auto (first GPU, else CPU), cpu, cuda or cuda:N."),
    options: RuntimeOptions = RuntimeOptions(),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
) -> None:
    """Stylize CONTENT with one or more STYLES and write OUTPUT."""
    from ..accel.runtime import Runtime
    from ..api import StyleJob, prepare, stylize_prepared
    from ..bulk import traces
    from ..bulk.jobs import job_key
    from ..io.files import check_writable_dir, describe_os_error
    from ..io.images import check_output_path, intermediate_path, save_image
    from ..targets.cache import image_digest

    if quiet:  # no INFO lines either, only warnings and errors
        logging.getLogger("pipeline").setLevel(logging.WARNING)
    check_output_path(output, bit_depth)
    inputs = [content, *styles] + ([Path(init)] if init not in INIT_WORDS else [])
    if output.exists() and any(output.samefile(p) for p in inputs if p.exists()):
        raise InputError(f"{output}: the output would overwrite one of the input images")
    if output.is_dir():
        raise InputError(f"{output}: is a folder; give a file name ending in .png or .jpg")
    if trace is not None and (trace.suffix != ".parquet" or trace.is_dir()):
        raise InputError(f"--trace {trace}: give a file name ending in .parquet"
                         + (" (this is a folder)" if trace.is_dir() else ""))
    if trace_every < 0:
        raise InputError(f"--trace-every must be >= 0, got {trace_every}")
    destinations = {"--output": output} | ({"--trace": trace} if trace is not None else {})
    for option, path in destinations.items():
        try:  # before minutes of optimizing, not after
            check_writable_dir(path.parent)
        except OSError as e:
            raise InputError(f"{option}: {describe_os_error(e, path.parent)}") from None
    params = StyleParams(
        size=size, size_bucket=size_bucket, iterations=iterations, tol=tol,
        tol_window=tol_window, save_every=save_every, scales=scales,
        optimizer=optimizer, lr=lr,
        lbfgs_history=lbfgs_history, lbfgs_max_step=lbfgs_max_step,
        lbfgs_precondition=lbfgs_precondition, lbfgs_scaling=lbfgs_scaling,
        content_weight=content_weight, style_weight=style_weight, tv_weight=tv_weight,
        content_layers=_list("content_layers", content_layers),
        style_layers=_list("style_layers", style_layers),
        style_layer_weights=_list("style_layer_weights", style_layer_weights),
        style_blend=_list("style_blend", style_blend), style_scale=style_scale, init=init,
        seed=seed, color=color, color_match=color_match, preserve_colors=preserve_colors,
        bit_depth=bit_depth, pooling=pooling, weights=weights,
    ).validate(n_styles=len(styles))
    runtime = Runtime.start(device, **dataclasses.asdict(options))
    start = time.perf_counter()
    prepared = prepare(StyleJob(content, styles), params)
    with iteration_bar(content.name, iterations, quiet) as progress:
        result = stylize_prepared(
            [prepared], params, runtime, progress, trace_every=trace_every if trace else 0,
            save_image=lambda it, _, image: save_image(image, intermediate_path(output, it),
                                                       {"iteration": it}))[0]
    save_image(result.pixels, output, result.metadata, params.bit_depth)
    if trace is not None:
        init_digest = image_digest(Path(init)) if params.init_is_file else None
        key = job_key(prepared[0].digest, [s.digest for s in prepared[1]], params, init_digest)
        traces.write(trace, {key: result.trace})
    if not quiet:
        table = Table(title="stylize", show_header=False)
        table.add_row("output", f"{output} ({result.image.width}x{result.image.height})")
        table.add_row("device", f"{runtime.device} {runtime.precision}"
                      f"{' channels_last' if runtime.channels_last else ''}")
        table.add_row("precision", f"{runtime.precision} ({runtime.precision_reason})")
        stopped = f", stopped early by --tol {tol}" if result.iterations < iterations else ""
        table.add_row("iterations", f"{result.iterations} ({params.optimizer}{stopped})")
        s_per_it = result.seconds / max(1, result.iterations)
        table.add_row("optimize", f"{result.seconds:.1f} s ({s_per_it:.3f} s/it)")
        table.add_row("total", f"{time.perf_counter() - start:.1f} s")
        table.add_row("final loss", format_losses(result.losses))
        if save_every:
            table.add_row("intermediates", str(intermediate_path(output, save_every)).replace(
                f"{save_every:04d}", "*"))
        if trace is not None:
            table.add_row("trace", f"{trace} ({len(result.trace)} points)")
        console.print(table)


@app.command("export")
@reports_errors
def export_cmd(
    weights: str = typer.Option(D.weights, help=HELP["weights"]),
    pooling: str = typer.Option(D.pooling, help=HELP["pooling"]),
    cache_dir: str | None = cache_option,
    layers: str = typer.Option(",".join(D.layers), help="VGG19 layers to output (any conv, "
                               "relu or pool layer), comma-separated: a job's content and style "
                               "layers together. The default is the default jobs' set."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Also copy the model and its "
                                       "sidecar JSON here (a .onnx path)."),
    force: bool = typer.Option(False, help="Export again even if the cache has the model."),
) -> None:
    """Export the VGG19 trunk, truncated at the deepest of --layers, to ONNX and verify it
    against PyTorch. Runs export the model their layers need when it is missing; this command
    does it ahead of time (e.g. while building a GPU image)."""
    from ..gatys.params import POOLINGS
    from ..gatys.weights import load_weights
    from ..io.files import cache_dir as resolve_cache
    from ..targets.onnx_export import ensure_model

    if pooling not in POOLINGS:
        raise InputError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    wanted = _list("content_layers", layers) or ()
    StyleParams(content_layers=(), content_weight=0, style_layers=wanted).validate()
    path, sidecar = ensure_model(load_weights(weights, cache_dir), pooling,
                                 resolve_cache(cache_dir) / "models", wanted, force=force)
    if output is not None:
        from ..io.files import atomic_path

        for src, dst in ((path, output), (path.with_suffix(".json"),
                                          output.with_suffix(".json"))):
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
    table = Table(title="export", show_header=False)
    table.add_column()
    table.add_column(overflow="fold")  # the model's path in full, wrapped
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
               "trt": "TensorRT engines", "targets": "content/style targets",
               "probes": "measured hardware defaults"}


@cache_app.command("info")
@reports_errors
def cache_info(cache_dir: str | None = cache_option) -> None:
    """Files and sizes per part of the cache (files of other programs counted apart)."""
    from ..io.cache_entries import entries
    from ..io.files import cache_dir as resolve_cache

    root = resolve_cache(cache_dir)
    table = Table(title=f"cache {root}")
    for col in ("part", "files", "size", "other files"):
        table.add_column(col, justify="right" if col != "part" else "left")
    for part, label in CACHE_PARTS.items():
        ours, others = entries(root, part)
        table.add_row(f"{part} ({label})", str(len(ours)),
                      f"{sum(p.stat().st_size for p in ours) / 1e6:.1f} MB", str(len(others)))
    console.print(table)


@cache_app.command("clear")
@reports_errors
def cache_clear(
    parts: list[str] = typer.Argument(None, help="Parts to empty: weights, models, trt, "
                                      "targets, probes. Default: all."),
    cache_dir: str | None = cache_option,
) -> None:
    """Delete the files this program cached; everything is recomputed on demand. Files of
    any other name in the cache folders are left alone (and counted)."""
    from ..io.cache_entries import clear_part
    from ..io.files import cache_dir as resolve_cache

    root = resolve_cache(cache_dir)
    for part in parts or list(CACHE_PARTS):
        if part not in CACHE_PARTS:
            raise InputError(f"unknown cache part {part!r}; use {', '.join(CACHE_PARTS)}")
        removed, kept = clear_part(root, part)
        console.print(f"cleared {root / part}: {removed} file(s) removed"
                      + (f", {kept} file(s) not written by style-pipeline left alone"
                         if kept else ""))


manifest_app = typer.Typer(no_args_is_help=True, help="Build and check Parquet manifests.")
app.add_typer(manifest_app, name="manifest")
SET_OPTION = typer.Option(None, "--set", help="Column default name=value for rows that leave "
                          "it empty or lack the column (repeatable), e.g. --set size=256.")


def _print_errors(errors: list, limit: int = 100) -> None:
    """One line per invalid row (grep-able, never wrapped)."""
    for e in errors[:limit]:
        say("invalid", "red", e)
    if len(errors) > limit:
        console.print(f"... and {len(errors) - limit} more")


@contextlib.contextmanager
def scanning() -> Iterator[Callable[[int], None]]:
    """A transient counter while manifest rows are checked; yields `advance(n)`."""
    from rich.progress import Progress, SpinnerColumn

    with Progress(SpinnerColumn(), TextColumn("[bold]checking rows"), TextColumn(
            "{task.completed}"), TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("rows", total=None)
        yield lambda n: bar.advance(task, n)


@manifest_app.command("build")
@reports_errors
def manifest_build(
    output: Path = typer.Option(..., "--output", "-o", help="Manifest to write (.parquet)."),
    content: list[str] = typer.Option(None, help="Content images: a folder, a glob pattern or a "
                                      "file (repeatable). Every content x every style."),
    style: list[str] = typer.Option(None, help="Style images: a folder, a glob pattern or a file "
                                    "(repeatable)."),
    content_dir: Path | None = typer.Option(None, help="Dataset mode: the content images under "
                                            "this folder, with --style-dir and --assign."),
    style_dir: Path | None = typer.Option(None, help="Dataset mode: the style images in this "
                                          "folder."),
    recursive: bool = typer.Option(False, help="Dataset mode: also the images in subfolders "
                                   "(class folders), linked ones included; a run's output "
                                   "folder (it holds a run.json) is left out, with a warning."),
    assign: str = typer.Option("cross", help="Dataset mode: cross (every content with every "
                               "style), random (--styles-per-image styles drawn per image, "
                               "reproducible from --seed and the image's path) or cycle "
                               "(round-robin in sorted order)."),
    styles_per_image: int = typer.Option(1, help="Dataset mode, random and cycle: styles per "
                                         "content image (one row each)."),
    seed: int = typer.Option(0, help="Dataset mode, random: the draw's seed."),
    mirror: bool = typer.Option(False, help="Dataset mode: each output path mirrors the "
                                "content's path under --content-dir (class folders kept), with "
                                "the extension --format; several styles or settings per image "
                                "add __<style> and __<setting number> to the name, and images "
                                "that differ only in extension keep it (a.jpg.png)."),
    fmt: str = typer.Option("png", "--format", help="Dataset mode with --mirror: png or jpg."),
    param: list[str] = typer.Option(None, "--param", help="Parameter grid axis name=v1,v2 "
                                    "(repeatable), e.g. --param style_weight=50,200; list "
                                    "parameters separate values with ';'."),
) -> None:
    """Write a manifest, one row per output: the cross product of --content x --style x the
    parameter grid, or (dataset mode) the images under --content-dir each with styles from
    --style-dir as --assign says. Paths are stored relative to the manifest's folder."""
    from ..bulk.build import Walk, cross_product, expand_inputs, parse_grid, to_rows
    from ..bulk.dataset import dataset_drafts
    from ..bulk.manifest import write_manifest

    dataset = content_dir is not None or style_dir is not None
    if dataset == bool(content or style) or (dataset and not (content_dir and style_dir)):
        raise InputError("give --content and --style, or --content-dir and --style-dir")
    if not dataset and (mirror or assign != "cross"):
        raise InputError("--assign and --mirror need --content-dir and --style-dir")
    if output.is_dir() or output.suffix.lower() != ".parquet":
        raise InputError(f"-o {output}: a manifest is a Parquet file; give a file name ending "
                         "in .parquet" + (" (this is a folder)" if output.is_dir() else ""))
    walk = Walk()
    grid = parse_grid(param or [])
    if dataset:
        drafts = dataset_drafts(content_dir, style_dir, recursive=recursive, assign=assign,
                                per_image=styles_per_image, seed=seed, mirror=mirror, fmt=fmt,
                                grid=grid, walk=walk)
    else:
        drafts = cross_product([p for spec in content for p in expand_inputs(spec, walk)],
                               [p for spec in style for p in expand_inputs(spec, walk)], grid)
    rows = to_rows(drafts, relative_to=output.resolve().parent)
    for what, paths in (("entries that are not image files (folders, broken links)",
                         walk.skipped),
                        ("run folders (a run.json marks them: their outputs are not inputs)",
                         walk.run_folders)):
        if paths:
            say("warning:", "yellow", f"skipped {len(paths)} {what}: "
                f"{', '.join(str(p) for p in paths[:10])}" + (" ..." if len(paths) > 10 else ""))
    try:
        write_manifest(rows, output)
    except OSError as e:
        from ..io.files import describe_os_error

        raise InputError(f"-o {output}: {describe_os_error(e, output.parent)}") from None
    console.print(f"wrote {output}: {len(rows)} rows")


@manifest_app.command("validate")
@reports_errors
def manifest_validate(
    manifest: Path = typer.Argument(..., help="Manifest (.parquet)."),
    out: Path = typer.Option(Path("out"), "--out", help="Output folder the run would use "
                             "(relative `output` cells resolve against it)."),
    set_: list[str] = SET_OPTION,
) -> None:
    """Check every row: columns, types, ranges, files exist and decode, duplicate outputs.
    Exit code 2 when any row is invalid."""
    from ..bulk.manifest import parse_overrides
    from ..bulk.runner import scan

    with scanning() as advance:
        found = scan(manifest, out, parse_overrides(set_ or []), advance)
    if found.errors:
        _print_errors(found.errors)
    console.print(f"{manifest}: {len(found.jobs)} valid, {len(found.errors)} invalid row(s)")
    if found.errors:
        raise typer.Exit(2)


@app.command()
@reports_errors
@with_runtime_options
def run(
    manifest: Path = typer.Argument(..., help="Manifest (.parquet): one row per output image."),
    out: Path = typer.Option(..., "--out", help="Output folder: images, ledger/, checkpoints, "
                             "run.json. Rerunning on it resumes."),
    distributor: str = typer.Option("local", help="Where workers run: local (one process per "
                                    "device of this machine) or ray (one actor per GPU of "
                                    "every node of a Ray cluster, or per CPU worker on nodes "
                                    "without GPUs; needs the ray extra and a run folder every "
                                    "node mounts at the same path)."),
    ray_address: str | None = typer.Option(None, help="--distributor ray: the cluster to join, "
                                           "e.g. 10.0.0.1:6379.  [default: $RAY_ADDRESS, else "
                                           "a Ray started on this machine]"),
    devices: str = typer.Option("auto", help="--distributor local: auto (every GPU, else the "
                                "CPU), or a list such as cuda:0,cuda:1 or cpu. One worker "
                                "process per device."),
    workers: int = typer.Option(0, help="CPU workers per machine (on machines without GPUs), "
                                "each with an equal share of the cores. 0 = 2 where the "
                                "machine has 2+ cores and two of the largest jobs fit 4 x "
                                "512x384 px together, else 1."),
    batch_size: int = typer.Option(0, help="Jobs optimized together (same size and "
                                   "parameters). 0 = per device: on CUDA 8 up to 512x384 px, "
                                   "else 1; on the CPU up "
                                   "to 4 images, 4 x 512x384 px in all over the CPU workers "
                                   "(1 at 1024 px)."),
    checkpoint_every: int = typer.Option(50, help="Checkpoint each batch every N iterations "
                                         "(0: only when stopped)."),
    trace_every: int = typer.Option(TRACE_EVERY, help=TRACE_EVERY_HELP + " Kept in "
                                    "--out/traces/ as Parquet, by job key."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write or refresh "
                                "--out/report.html (contact sheet, loss curves, failures) at "
                                "the end."),
    set_: list[str] = SET_OPTION,
    skip_bad_rows: bool = typer.Option(False, help="Record invalid rows as failed and run the "
                                       "rest, instead of refusing to start."),
    retry_failed: bool = typer.Option(False, help="Run jobs that failed in an earlier run "
                                      "again (they are skipped otherwise)."),
    options: RuntimeOptions = RuntimeOptions(),
) -> None:
    """Stylize every row of MANIFEST into --out, resumably. Outputs never land outside --out,
    and nothing this program did not write is deleted. Exit codes: 0 every job is done, 1 some
    jobs failed or are still pending (a worker died, a write failed), 2 invalid manifest or
    options, 4 the folder is in use, 130 Ctrl-C, 143 SIGTERM (both: checkpointed, rerun to
    resume)."""
    from ..bulk.manifest import parse_overrides
    from ..bulk.runner import ManifestInvalid, RunLocked, RunOptions, exit_code
    from ..bulk.runner import run as run_manifest
    from .progress import RunDisplay

    if min(batch_size, workers, checkpoint_every, trace_every) < 0:
        raise InputError("--batch-size, --workers, --checkpoint-every and --trace-every must "
                         "be >= 0")
    if distributor != "local" and devices != "auto":
        raise InputError(f"--devices is for --distributor local; --distributor {distributor} "
                         "uses every GPU of every node (else --workers CPU workers per node)")
    opts = RunOptions(out, devices, workers, batch_size, checkpoint_every, trace_every,
                      parse_overrides(set_ or []), skip_bad_rows, retry_failed, options,
                      distributor, ray_address)
    try:
        result = run_manifest(manifest, opts, RunDisplay, scanning)
    except ManifestInvalid as e:
        _print_errors(e.errors)
        say_error(f"{manifest}: {len(e.errors)} invalid row(s); fix them, or pass "
                  "--skip-bad-rows to run the rest")
        raise typer.Exit(2) from None
    except RunLocked as e:
        say_error(e)
        raise typer.Exit(4) from None
    table = Table(title=f"run {out}", show_header=False)
    table.add_column()
    table.add_column(overflow="fold")  # paths in full, wrapped
    table.add_row("jobs", str(result.total))
    table.add_row("done now", str(result.done))
    table.add_row("done before (skipped)", str(result.done_before))
    table.add_row("failed", str(len(result.failed) + result.failed_before)
                  + (f" ({result.failed_before} from earlier runs; --retry-failed reruns them)"
                     if result.failed_before else ""))
    table.add_row("pending", str(result.pending))
    table.add_row("devices", ", ".join(sorted(set(result.devices))))
    for line in sorted(set(result.precision.values())):
        table.add_row("precision", line)
    table.add_row("time", f"{result.seconds:.1f} s"
                  + (f" ({result.done / result.seconds * 3600:,.0f} images/hour)"
                     if result.done else ""))
    if result.swept[0]:
        table.add_row("checkpoints removed", f"{result.swept[0]} of finished batches "
                      f"({result.swept[1] / 1e6:,.0f} MB)")
    for error in result.errors:
        table.add_row("stopped", error)
    if report:
        table.add_row("report", _write_report(out))
    console.print(table)
    if result.interrupted or result.errors or result.pending:
        console.print(f"{'interrupted' if result.interrupted else 'not finished'}; resume "
                      f"with: pipeline run {manifest} --out {out}")
    raise typer.Exit(exit_code(result))


def _write_report(out: Path) -> str:
    """The report's path, or why there is none: a report that cannot be made does not fail
    the run whose results it shows."""
    from ..report import write_report

    try:
        return str(write_report(out))
    except (InputError, OSError) as e:
        say("warning:", "yellow", f"no report: {e}")
        return f"not written ({e})"


@app.command("report")
@reports_errors
def report_cmd(out: Path = typer.Argument(..., help="Output folder of a run.")) -> None:
    """Write or refresh OUT/report.html: the run's numbers, a contact sheet (content images x
    styles and varied parameters, each output linked, failed rows with their error), each
    job's loss curve and its intermediate images. It opens from disk, with no server."""
    from ..report import write_report

    console.print(f"wrote {write_report(out)}")


@app.command()
@reports_errors
def status(out: Path = typer.Argument(..., help="Output folder of a run.")) -> None:
    """Ledger summary of a run: done / failed / pending, throughput, failures with reasons.
    A job counts as done only while its output is there and is its own, as `run` decides."""
    from ..bulk import ledger
    from ..bulk.run_state import ledger_only_info, read_run_info, run_state
    from ..report.page import REPORT

    try:
        info = read_run_info(out)
    except InputError as e:
        if not (out / "run.json").is_file():
            raise
        say("warning:", "yellow", f"{e}; counting the ledger alone")
        info = ledger_only_info(out)
    state = run_state(out, info)
    table = Table(title=f"status {out}", show_header=False)
    table.add_column()
    table.add_column(overflow="fold")  # paths in full, wrapped
    table.add_row("manifest", info.manifest)
    table.add_row("jobs", str(info.total))
    table.add_row("done", str(state.done))
    table.add_row("failed", str(len(state.failed)))
    table.add_row("pending", str(state.pending))
    if (ran := ledger.throughput(state.records)) is not None:
        timed, span = ran
        table.add_row("throughput", f"{len(timed) / span * 3600:,.0f} images/hour over "
                      f"{span:.0f} s; {sum(r['seconds'] for r in timed) / len(timed):.1f}"
                      " s per batch run")
        table.add_row("devices", ", ".join(sorted({r["device"] for r in timed})))
    report = out / REPORT
    table.add_row("report", str(report) if report.is_file()
                  else f"none yet (pipeline report {out})")
    console.print(table)
    if state.failed:
        failures = Table(title="failures")
        failures.add_column("row", justify="right")
        failures.add_column("error", overflow="fold")
        for row, error in state.failed:
            failures.add_row(str(row), error)
        console.print(failures)
