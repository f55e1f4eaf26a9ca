"""The Python API: files or PIL images in, stylized images out. The CLI and the batch runner
call this; no stylization logic lives anywhere above it. `stylize_file` is `pipeline stylize`:
the command only parses its options and prints the summary."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .accel.memory import Fit, plan_stage
from .accel.runtime import Runtime, RuntimeOptions
from .errors import InputError, NonFiniteError
from .gatys.color import luminance, match_colors, match_luminance, with_chroma
from .gatys.engine import (
    Checkpointing,
    Progress,
    Stage,
    init_batch,
    optimize,
    resample,
    trunk_for,
)
from .gatys.keys import job_key
from .gatys.layers import in_order, min_input_side
from .gatys.params import StyleParams
from .gatys.region_params import NO_REGIONS, Regions
from .gatys.slots import Entry, Finished, SlotHooks, SlotState, run_slots
from .gatys.temporal import Temporal
from .gatys.trace import TRACE_EVERY, TRACE_EVERY_HELP, write_traces
from .gatys.vgg import VGG19Trunk
from .gatys.weights import load_weights
from .io.cache_entries import CACHE_PARTS, cache_contents, clear_cache
from .io.files import (
    atomic_path,
    cache_dir,
    check_writable_dir,
    describe_os_error,
    overwrites,
)
from .io.images import (
    check_output_path,
    fit_longest_side,
    image_digest,
    intermediate_path,
    read_rgb_for,
    resize,
    to_rgb,
)
from .io.masks import read_mask, read_segmentation
from .io.pixels import SizedImage, rescale, save_image, to_image, to_tensor
from .io.storage import Location, check_store, location, name, set_storage_options
from .targets.builder import TargetBuilder, builder_for
from .version import __version__

ImageSource = str | os.PathLike | Image.Image
# (iteration, job's index in the batch, its image after that many iterations)
SaveImage = Callable[[int, int, Image.Image], None]
log = logging.getLogger("pipeline.images")
# Enlarging an input more than this many times is worth a word: a thumbnail or a 1x1 image
# passed by mistake makes a blurry output that no error would otherwise explain.
UPSCALE_WARNING = 4


@dataclass
class StyleJob:
    content: ImageSource
    styles: Sequence[ImageSource]
    regions: Regions = NO_REGIONS  # masks: which style goes where (gatys/guides.py)


@dataclass
class StyleResult:
    image: Image.Image
    losses: dict[str, float]   # final weighted terms: content, style, tv, total
    iterations: int            # taken: fewer than asked when it stopped early (tol)
    seconds: float             # wall time of the whole batch this job ran in
    metadata: dict = field(default_factory=dict)
    trace: list[dict[str, Any]] = field(default_factory=list)  # with trace_every: loss terms
    pixels: torch.Tensor | None = None  # [3, H, W] fp32, 0-255: `image` before 8-bit rounding


def _open(src: ImageSource, longest: int = 0) -> tuple[Image.Image, str, str, tuple[int, int]]:
    """(RGB image, digest of the source, display name, size as given); a large JPEG file
    comes decoded at a reduced scale for a resize to `longest` (io/images.read_rgb_for)."""
    if isinstance(src, Image.Image):
        img = to_rgb(src)
        return img, image_digest(src), "<image>", img.size
    img, digest, given = read_rgb_for(src, longest)
    return img, digest, Path(src).name, given


def _sized(src: ImageSource, longest: int, min_side: int, role: str,
           bucket: int = 0) -> tuple[SizedImage, tuple[int, int]]:
    """The image at its size for the transfer, and its size as given."""
    img, digest, name, given = _open(src, longest)
    size = fit_longest_side(given, longest, bucket)
    label = name if isinstance(src, Image.Image) else str(src)
    if min(size) < min_side:
        raise InputError(f"{label}: {role} image {given[0]}x{given[1]} would be "
                         f"{size[0]}x{size[1]}, below the {min_side} px minimum side for these "
                         "layers; use a larger size or a less elongated image")
    if max(size) > UPSCALE_WARNING * max(given):
        log.warning("%s: %s image %dx%d upscaled %.0fx to %dx%d: it will look blurry", label,
                    role, *given, max(size) / max(given), *size)
    return SizedImage(to_tensor(resize(img, size)), digest, name), given


def prepare(job: StyleJob, params: StyleParams) -> tuple[SizedImage, list[SizedImage]]:
    """Decode and resize one job's images: content at the output size, styles at style_scale;
    with regions, their masks with them at their sizes."""
    if not job.styles:
        raise InputError("at least one style image is needed")
    params.validate(n_styles=len(job.styles))
    job.regions.validate(len(job.styles), params)
    content, source = _sized(job.content, params.size, min_input_side(params.layers),
                             "content", params.size_bucket)
    style_side = max(1, round(params.size * params.style_scale))
    styles = [_sized(s, style_side, min_input_side(params.style_layers), "style")
              for s in job.styles]
    if not job.regions.active:
        return content, [s for s, _ in styles]
    return _with_regions(job.regions, params, (content, source), styles)


def _with_regions(regions: Regions, params: StyleParams,
                  content: tuple[SizedImage, tuple[int, int]],
                  styles: list[tuple[SizedImage, tuple[int, int]]]
                  ) -> tuple[SizedImage, list[SizedImage]]:
    """The content with its masks (one per style) and each style with its own region, if
    given; a style's region is part of its digest, so its targets are cached apart."""
    (image, source), colors = content, regions.rgb_colors()
    if regions.segmentation is not None:
        masks = read_segmentation(regions.segmentation, colors, source, image.size)[0]
    else:
        masks = torch.cat([read_mask(m, source, image.size)[0] for m in regions.masks])
    out = []
    for i, (style, source) in enumerate(styles):
        if regions.style_masks:
            region, digest = read_mask(regions.style_masks[i], source, style.size,
                                       "style mask")
        elif regions.style_segmentations:
            region, digest = read_segmentation(regions.style_segmentations[i], [colors[i]],
                                               source, style.size, "style segmentation")
        else:
            out.append(style)
            continue
        out.append(replace(style, regions=region,
                           digest=f"{style.digest}|region:{digest}:{params.mask_mode}"))
    return replace(image, regions=masks), out


def _init_image(params: StyleParams, size: tuple[int, int]) -> torch.Tensor | None:
    if not params.init_is_file:
        return None
    img = _open(params.init, max(size))[0]
    return to_tensor(resize(img, size))[None]


def _transfer_content(content: SizedImage, params: StyleParams) -> SizedImage:
    """The content as the transfer sees it: its luminance with color=luminance."""
    if params.color != "luminance":
        return content
    return replace(content, pixels=luminance(content.pixels),
                   digest=f"luminance:{content.digest}")


def _transfer_style(style: SizedImage, content: SizedImage, params: StyleParams
                    ) -> SizedImage:
    """The style as the transfer sees it (gatys/color.py): its luminance matched to the
    content's, or its colours matched to the content's, or itself. A recoloured style's
    digest names the content (and its size) it was matched to: its targets are its own, and
    cached where the content's are."""
    if params.color == "style":
        return style
    against = f"{content.digest}@{content.size[0]}x{content.size[1]}"
    if params.color == "luminance":
        pixels, how = match_luminance(style.pixels, content.pixels), "luminance"
    else:
        pixels = match_colors(style.pixels, content.pixels, params.color_match)
        how = f"match-{params.color_match}"
    return replace(style, pixels=pixels, digest=f"{how}:{style.digest}:{against}",
                   keep=style.keep and content.keep)


def _stages(prepared: Sequence[tuple[SizedImage, list[SizedImage]]], params: StyleParams,
            fit: Callable[[tuple[int, int], int], Fit], builder: Callable[[], TargetBuilder],
            device: torch.device) -> list[Stage]:
    """The coarse-to-fine schedule with each size's targets (content and styles rescaled
    alike); a coarse size at which an image would fall below the layers' minimum is left out.
    `fit(size, iterations)`: how a stage fits in memory (whole or by blocks), asked for every
    stage before the targets' `builder()` is made: a size that cannot fit fails first."""
    min_content, min_style = min_input_side(params.layers), min_input_side(params.style_layers)
    schedule = []
    for longest in params.scale_sizes():
        style_side = max(1, round(longest * params.style_scale))
        jobs = []
        for content, styles in prepared:
            c = rescale(content, longest)
            jobs.append((_transfer_content(c, params),
                         [_transfer_style(rescale(s, style_side), c, params) for s in styles]))
        fits = all(min(c.size) >= min_content and all(min(s.size) >= min_style for s in styles)
                   for c, styles in jobs)
        if fits or longest == params.size:
            schedule.append(jobs)
    ends = params.stage_ends(len(schedule))
    plans = [fit(jobs[0][0].size, end - start)
             for jobs, start, end in zip(schedule, [0, *ends], ends, strict=False)]
    stages = []
    for jobs, end, how in zip(schedule, ends, plans, strict=True):
        targets = builder().batch([c for c, _ in jobs], [s for _, s in jobs], params,
                                  how.block)
        stages.append(Stage(jobs[0][0].size, end, targets.to(device), how.block, how.history))
    return stages


def stylize_batch(jobs: Sequence[StyleJob], params: StyleParams = StyleParams(),
                  runtime: Runtime | None = None, progress: Progress | None = None,
                  checkpointing: Checkpointing | None = None, trace_every: int = 0,
                  save_image: SaveImage | None = None) -> list[StyleResult]:
    """Stylize jobs with one set of parameters: those of one output size as one batch (see
    stylize_prepared), one size after another, so a folder's portraits and landscapes go in
    one call; results in the jobs' order. `progress` starts again at each size, `save_image`
    gets the job's index in `jobs`. A `checkpointing` call needs one size: its checkpoint
    holds one batch."""
    prepared = [prepare(job, params) for job in jobs]
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, (content, _) in enumerate(prepared):
        by_size.setdefault(content.size, []).append(i)
    if len(by_size) == 1 or checkpointing is not None:  # (setup_batch refuses the latter)
        return stylize_prepared(prepared, params, runtime, progress, checkpointing,
                                trace_every, save_image)
    runtime = runtime or Runtime.start()
    results: dict[int, StyleResult] = {}
    for members in by_size.values():
        def saved(iteration: int, index: int, image: Image.Image,
                  members: list[int] = members) -> None:
            assert save_image is not None
            save_image(iteration, members[index], image)

        done = stylize_prepared([prepared[i] for i in members], params, runtime, progress,
                                None, trace_every, saved if save_image is not None else None)
        results.update(zip(members, done, strict=True))
    return [results[i] for i in range(len(prepared))]


@dataclass
class BatchProblem:
    """What one batch's optimization starts from, ready on the runtime's device."""

    trunk: VGG19Trunk
    stages: list[Stage]
    contents: torch.Tensor  # [N, 3, H, W], 0-255, as given (before any colour transform)
    x0: torch.Tensor
    metadata: dict[str, Any]


def setup_batch(prepared: Sequence[tuple[SizedImage, list[SizedImage]]], params: StyleParams,
                runtime: Runtime, start: torch.Tensor | None = None,
                temporal: Temporal | None = None, batch: int = 0) -> BatchProblem:
    """Plans how each stage fits in memory, then builds its targets and starting images.
    `start`: the starting images instead of params.init's; `temporal`: a video frame's
    temporal term (gatys/temporal.py), at the output size (one stage); `batch`: the batch the
    memory is planned for, when the jobs will share one larger than them (slots)."""
    sizes = {c.size for c, _ in prepared}
    if len(sizes) != 1:
        raise InputError(f"a batch needs one output size, got {sorted(sizes)}")
    trunk, weights = trunk_for(params, runtime)

    def fit(size: tuple[int, int], iterations: int) -> Fit:
        return _plan(trunk, params, size, iterations, batch or len(prepared), runtime,
                     region_count(max((len(c.regions) for c, _ in prepared
                                       if c.regions is not None), default=0), params))

    def builder() -> TargetBuilder:  # cached: one per worker and model
        return builder_for(weights, trunk, params.pooling, runtime, in_order(params.layers))

    stages = _stages(prepared, params, fit, builder, runtime.device)
    if temporal is not None:
        if len(stages) != 1:
            raise ValueError("a temporal term needs one stage (scales=1)")
        stages[0].targets = replace(stages[0].targets,
                                    temporal=temporal.map(lambda t: t.to(runtime.device)))
    contents = torch.stack([c.pixels for c, _ in prepared]).to(runtime.device)
    starts = torch.stack([_transfer_content(c, params).pixels for c, _ in prepared])
    x0 = (start.to(runtime.device) if start is not None else
          init_batch(params, starts.to(runtime.device), _init_image(params, prepared[0][0].size)))
    metadata = {"params": params.to_dict(), "precision": runtime.precision,
                # how each stage fitted: w, h, block side (0: whole), L-BFGS pairs if fewer
                "stages": [[*s.size, s.block, s.history] for s in stages],
                "targets": builder().model, "weights_digest": weights.digest,
                "version": __version__}
    return BatchProblem(trunk, stages, contents, x0, metadata)


def stylize_prepared(prepared: Sequence[tuple[SizedImage, list[SizedImage]]],
                     params: StyleParams, runtime: Runtime | None = None,
                     progress: Progress | None = None,
                     checkpointing: Checkpointing | None = None, trace_every: int = 0,
                     save_image: SaveImage | None = None, *, start: torch.Tensor | None = None,
                     temporal: Temporal | None = None) -> list[StyleResult]:
    """stylize_batch for jobs already decoded by `prepare` (the batch runner checks each job
    alone first, so one bad image fails only its own job). `trace_every`: each result's trace
    holds its loss terms every that many iterations; `save_image`: gets the images every
    params.save_every iterations (of the jobs still moving); `start` and `temporal`: as
    setup_batch's (a video frame's)."""
    runtime = runtime or Runtime.start()
    problem = setup_batch(prepared, params, runtime, start, temporal)

    def finish(images: torch.Tensor) -> torch.Tensor:
        return _colors(images, problem.contents, params)

    def snapshot(iteration: int, images: torch.Tensor, moved: torch.Tensor) -> None:
        assert save_image is not None
        images = finish(images)
        for i in moved.nonzero().flatten().tolist():
            save_image(iteration, i, to_image(images[i]))

    start = time.perf_counter()
    result = optimize(problem.trunk, problem.x0, problem.stages, params, runtime, progress,
                      checkpointing, trace_every=trace_every,
                      snapshot=snapshot if save_image is not None else None)
    out = finish(result.images)
    seconds = time.perf_counter() - start
    losses = {k: v.tolist() for k, v in result.terms.items()}
    return [StyleResult(image=to_image(out[i]), losses={k: v[i] for k, v in losses.items()},
                        iterations=result.iterations[i], seconds=seconds,
                        metadata=problem.metadata, trace=result.trace[i],
                        pixels=out[i].float().cpu())
            for i in range(len(prepared))]


def _plan(trunk: VGG19Trunk, params: StyleParams, size: tuple[int, int], iterations: int,
          batch: int, runtime: Runtime, regions: int) -> Fit:
    """How a stage of `iterations` at size (w, h) fits `batch` images with `regions` regions
    each (0: no masks) on the runtime's device."""
    return plan_stage(runtime.compute_trunk(trunk), params, size, iterations, batch,
                      runtime.device, runtime.channels_last, runtime.block_size,
                      cache_dir(runtime.cache), regions)


def region_count(masks: int, params: StyleParams) -> int:
    """The regions a job's `masks` masks make, its Gram targets' count (builder.py: one more
    where unmasked pixels take the styles); 0 without masks."""
    return masks + (params.unmasked == "styles") if masks else 0


def _colors(images: torch.Tensor, contents: torch.Tensor, params: StyleParams
            ) -> torch.Tensor:
    """The output's colours: with color=luminance, the content's chrominance put back."""
    if params.color != "luminance":
        return images
    return with_chroma(images, resample(contents, (images.shape[3], images.shape[2])))


def slot_plan(params: StyleParams, size: tuple[int, int], slots: int, runtime: Runtime,
              regions: int = 0) -> Fit | None:
    """How jobs of output size (w, h) with `regions` regions each fit `slots` at a time in
    continuous batching (`stylize_in_slots`); None when they cannot run that way:
    coarse-to-fine, Adam, or a size that must run by blocks."""
    if len(params.scale_sizes()) != 1 or params.optimizer != "lbfgs":
        return None
    fit = _plan(trunk_for(params, runtime)[0], params, size, params.iterations, slots, runtime,
                regions)
    return None if fit.block else fit


# (the caller's job id, its decoded images, where an earlier run left it)
SlotJob = tuple[int, tuple[SizedImage, list[SizedImage]], SlotState | None]


@dataclass
class SlotCalls:
    """What `stylize_in_slots` calls: `source()` for the next job (None: no more);
    `done(results)` with the jobs that ended at one step, each a StyleResult or the error that
    failed it; `save(job, state)` every `every` iterations of a job where `wants_periodic()`,
    and when `stop()` turns true; `progress(steps)`, `save_image(iteration, job, image)` as in
    stylize_prepared."""

    source: Callable[[], SlotJob | None]
    done: Callable[[list[tuple[int, StyleResult | str]]], None]
    save: Callable[[int, SlotState], None] | None = None
    every: int = 0
    stop: Callable[[], bool] = lambda: False
    progress: Callable[[int], None] | None = None
    save_image: SaveImage | None = None
    wants_periodic: Callable[[], bool] = lambda: True


def stylize_in_slots(calls: SlotCalls, params: StyleParams, runtime: Runtime, slots: int,
                     fit: Fit, trace_every: int = 0) -> None:
    """Jobs of one output size through `slots` rows (gatys/slots.py): each job's targets are
    built as it enters, and its result is handed to `calls.done` as it ends. `fit`: slot_plan's."""
    problems: dict[int, tuple[BatchProblem, float]] = {}

    def take() -> Entry | None:
        while (item := calls.source()) is not None:
            job, prepared, resume = item
            try:
                problem = setup_batch([prepared], params, runtime, batch=slots)
            except (InputError, NonFiniteError) as e:  # its own failure: the next job goes on
                calls.done([(job, str(e).splitlines()[0])])
                continue
            problems[job] = problem, time.perf_counter()
            return Entry(job, problem.x0[0], problem.stages[0].targets, resume)
        return None

    def finish(finished: list[Finished]) -> None:
        results: list[tuple[int, StyleResult | str]] = []
        for f in finished:
            problem, entered = problems.pop(f.job)
            if f.image is None:
                results.append((f.job, f.error))
                continue
            out = _colors(f.image[None].to(problem.contents), problem.contents, params)[0]
            results.append((f.job, StyleResult(
                image=to_image(out), losses=f.terms, iterations=f.iterations,
                seconds=time.perf_counter() - entered, metadata=problem.metadata,
                trace=f.trace, pixels=out.float().cpu())))
        calls.done(results)

    def snapshot(job: int, iteration: int, image: torch.Tensor) -> None:
        assert calls.save_image is not None
        contents = problems[job][0].contents
        calls.save_image(iteration, job, to_image(_colors(image[None], contents, params)[0]))

    first = take()
    if first is None:
        return
    pending = [first]
    size = problems[first.job][0].stages[0].size  # every job's: one output size
    trunk, _ = trunk_for(params, runtime)
    run_slots(trunk, size, slots, params, runtime, SlotHooks(
        lambda: pending.pop() if pending else take(), finish, calls.save, calls.every,
        calls.stop, calls.progress, snapshot if calls.save_image is not None else None,
        calls.wants_periodic),
        history=fit.history, trace_every=trace_every)


def stylize(content: ImageSource, styles: ImageSource | Sequence[ImageSource],
            params: StyleParams = StyleParams(), runtime: Runtime | None = None,
            progress: Progress | None = None) -> Image.Image:
    """Stylize one content image with one or more style images; returns the RGB image."""
    if isinstance(styles, str | os.PathLike | Image.Image):
        styles = [styles]
    return stylize_batch([StyleJob(content, list(styles))], params, runtime, progress)[0].image


def export_trunk(layers: Sequence[str], weights: str = "caffe", pooling: str = "max",
                 cache: str | None = None, output: Path | None = None, force: bool = False
                 ) -> tuple[Path, dict[str, Any]]:
    """The VGG19 trunk through the deepest of `layers` as a verified ONNX model in the cache
    (exported unless it is there, or with `force`), also copied with its sidecar to `output`;
    returns the cached model's path and its sidecar."""
    from .targets.onnx_export import ensure_model  # onnx: a second of import, for this alone

    StyleParams(content_layers=(), content_weight=0, style_layers=tuple(layers),
                pooling=pooling).validate()
    path, sidecar = ensure_model(load_weights(weights), pooling,
                                 cache_dir(cache) / "models", tuple(layers), force=force)
    if output is not None:
        for src, dst in ((path, output), (path.with_suffix(".json"),
                                          output.with_suffix(".json"))):
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
    return path, sidecar


def check_destinations(output: Location, inputs: Sequence[Location], bit_depth: int = 0,
                       trace: Location | None = None) -> None:
    """InputError before minutes of optimizing, not after: an output of a kind we cannot
    write, over an input, a folder, or where we cannot write; a trace that is not .parquet.
    A destination in object storage: its bucket is there (the write itself is one PUT)."""
    check_output_path(output, bit_depth)
    if overwrites(output, inputs):
        raise InputError(f"{output}: the output would overwrite one of the input images")
    if isinstance(output, Path) and output.is_dir():
        raise InputError(f"{output}: is a folder; give a file name ending in .png or .jpg")
    folder = isinstance(trace, Path) and trace.is_dir()
    if trace is not None and (folder or Path(name(str(trace))).suffix != ".parquet"):
        raise InputError(f"--trace {trace}: give a file name ending in .parquet"
                         + (" (this is a folder)" if folder else ""))
    for option, path in {"--output": output, "--trace": trace}.items():
        if isinstance(path, str):
            check_store(path)
        elif path is not None:
            try:
                check_writable_dir(path.parent)
            except OSError as e:
                raise InputError(f"{option}: {describe_os_error(e, path.parent)}") from None


def stylize_file(content: Location, styles: Sequence[Location], output: Location,
                 params: StyleParams = StyleParams(),
                 runtime: Runtime | Callable[[], Runtime] | None = None,
                 progress: Progress | None = None, trace: Location | None = None,
                 trace_every: int = TRACE_EVERY, regions: Regions = NO_REGIONS
                 ) -> StyleResult:
    """Stylize CONTENT with STYLES into `output` (PNG, JPEG or TIFF by extension, atomic,
    sRGB-tagged, parameters and job key embedded), the image every params.save_every
    iterations beside it, and with `trace` the loss terms every `trace_every` iterations in
    that Parquet file. Every destination is checked before any work. Inputs, the output and
    the trace may be URLs (s3://..., io/storage.py): read whole, written as one object.
    `runtime` may be a function that starts one, called once the inputs are read: a wrong path
    then fails before the hardware probes run. Each location is a path (str or Path) or a
    URL."""
    content, output = location(content), location(output)
    styles = [location(s) for s in styles]
    trace = None if trace is None else location(trace)
    params.validate(n_styles=len(styles))
    regions.validate(len(styles), params)
    init = [location(params.init)] if params.init_is_file else []
    check_destinations(output, [content, *styles, *init, *map(location, regions.files())],
                       params.bit_depth, trace)
    prepared = prepare(StyleJob(content, styles, regions), params)
    # The styles' file digests, as a bulk run keys them (a style's region is in `regions`).
    key = job_key(prepared[0].digest, [image_digest(s) for s in styles], params,
                  image_digest(init[0]) if init else None, regions.key(image_digest))
    if callable(runtime):
        runtime = runtime()
    result = stylize_prepared(
        [prepared], params, runtime, progress, trace_every=trace_every if trace else 0,
        save_image=lambda it, _, image: save_image(image, intermediate_path(output, it),
                                                   {"iteration": it, "job_key": key},
                                                   jpeg_quality=params.jpeg_quality))[0]
    save_image(result.pixels, output, {**result.metadata, "job_key": key}, params.bit_depth,
               params.jpeg_quality)
    if trace is not None:
        write_traces(trace, {key: result.trace})
    return result


__all__ = ["CACHE_PARTS", "TRACE_EVERY", "TRACE_EVERY_HELP", "Regions", "Runtime",
           "RuntimeOptions", "StyleJob", "StyleParams", "StyleResult", "cache_contents",
           "clear_cache", "describe_os_error", "export_trunk", "intermediate_path", "job_key",
           "location", "name", "set_storage_options", "stylize", "stylize_batch",
           "stylize_file"]
