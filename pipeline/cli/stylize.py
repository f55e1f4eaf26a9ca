"""`pipeline stylize` and `pipeline export`: one image, or the model ahead of time."""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

import typer

from ..accel.options import RuntimeOptions
from ..gatys.params import StyleParams
from ..gatys.region_params import Regions
from ..gatys.trace import TRACE_EVERY, TRACE_EVERY_HELP
from ..io.files import shown, use_cache
from ..io.images import intermediate_path
from ..io.storage import location, name, set_storage_options
from .app import app, computing, only_warnings, reports_errors
from .options import DEVICE_OPTION, QUIET_OPTION, STORAGE_OPTION, field_option, with_options
from .progress import console, duration, format_losses, iteration_bar, summary_table


@app.command()
@reports_errors
@with_options(params=StyleParams, regions=Regions, options=RuntimeOptions)
def stylize(
    content: str = typer.Argument(..., help="Content image (any format PIL reads): a path, or "
                                  "a URL in object storage (s3://bucket/photo.jpg)."),
    styles: list[str] = typer.Argument(..., help="One or more style images (paths or URLs)."),
    output: str = typer.Option(..., "--output", "-o", help="Output file: .png, .jpg/.jpeg or "
                               ".tif/.tiff, a path or a URL. Written atomically (to object "
                               "storage: one PUT, seen whole or not at all), tagged sRGB, with "
                               "the parameters embedded."),
    storage_option: list[str] = STORAGE_OPTION,
    trace: str | None = typer.Option(None, help="Also write the loss trace (the loss terms "
                                     "every --trace-every iterations) to this Parquet file "
                                     "(a path or a URL)."),
    trace_every: int = typer.Option(TRACE_EVERY, min=0, help=TRACE_EVERY_HELP),
    device: str = DEVICE_OPTION,
    quiet: bool = QUIET_OPTION,
    *,
    params: StyleParams,
    regions: Regions,
    options: RuntimeOptions,
) -> None:
    """Stylize CONTENT with one or more STYLES and write OUTPUT."""
    only_warnings(quiet)
    params.validate(n_styles=len(styles))
    regions.validate(len(styles), params)
    set_storage_options(storage_option)
    use_cache(options.cache)  # objects fetched before the runtime starts: there too
    with computing():
        from ..api import Runtime, stylize_file
    # Started once the inputs are read (stylize_file): a wrong path fails before any probe.
    runtime = functools.cache(lambda: Runtime.start(device, **dataclasses.asdict(options)))
    start = time.perf_counter()
    with iteration_bar(name(content), params.iterations, quiet) as progress:
        result = stylize_file(location(content), [location(s) for s in styles],
                              location(output), params, runtime, progress,
                              None if trace is None else location(trace), trace_every, regions)
    if quiet:
        return
    rt = runtime()
    table = summary_table("stylize")
    table.add_row("output", f"{output} ({result.image.width}x{result.image.height})")
    if regions.active:
        table.add_row("regions", ", ".join(
            f"{name(style)} in {where}" for style, where in
            zip(styles, regions.masks or [f"{c} of {regions.segmentation}"
                                          for c in regions.colors], strict=True)))
    table.add_row("device", f"{rt.device} {rt.precision}"
                  f"{' channels_last' if rt.channels_last else ''}")
    table.add_row("precision", f"{rt.precision} ({rt.numerics})")
    stopped = (f", stopped early by --tol {params.tol}" if result.iterations < params.iterations
               else "")
    table.add_row("iterations", f"{result.iterations} ({params.optimizer}{stopped})")
    s_per_it = result.seconds / max(1, result.iterations)
    table.add_row("optimize", f"{duration(result.seconds)} ({s_per_it:.3f} s/it)")
    table.add_row("total", duration(time.perf_counter() - start))
    table.add_row("final loss", format_losses(result.losses))
    if params.save_every:
        table.add_row("intermediates", str(intermediate_path(location(output), params.save_every))
                      .replace(f"{params.save_every:04d}", "*"))
    if trace is not None:
        table.add_row("trace", f"{trace} ({len(result.trace)} points)")
    console.print(table)


@app.command("export")
@reports_errors
def export_cmd(
    weights: str = field_option(StyleParams, "weights"),
    pooling: str = field_option(StyleParams, "pooling"),
    cache_dir: str | None = field_option(RuntimeOptions, "cache"),
    layers: str = typer.Option(",".join(StyleParams().layers), help="VGG19 layers to output "
                               "(any conv, relu or pool layer), comma-separated: a job's "
                               "content and style layers together. The default is the default "
                               "jobs' set."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Also copy the model and its "
                                       "sidecar JSON here (a .onnx path)."),
    force: bool = typer.Option(False, help="Export again even if the cache has the model."),
) -> None:
    """Export the VGG19 trunk, truncated at the deepest of --layers, to ONNX and verify it
    against PyTorch. Runs export the model their layers need when it is missing; this command
    does it ahead of time (e.g. while building a GPU image)."""
    wanted = [name.strip() for name in layers.split(",") if name.strip()]
    with computing():
        from ..api import export_trunk
    path, sidecar = export_trunk(wanted, weights, pooling, cache_dir,
                                 None if output is None else output.expanduser(), force)
    table = summary_table("export")
    table.add_row("model", f"{shown(path)} ({path.stat().st_size / 1e6:.1f} MB, weights inside)")
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


__all__ = ["export_cmd", "stylize"]
