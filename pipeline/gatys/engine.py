"""The optimization: from an initial batch of images and their targets to stylized images.

Reads top to bottom as Gatys et al. (2016): the image is the variable, the VGG19 trunk gives
its features, the loss compares them with fixed targets, and an optimizer (L-BFGS by default,
as in the paper) updates the pixels. Departures from the paper: loss normalization follows
neural-style (see losses.py), a batch of independent jobs is optimized at once, each job may
stop early once its loss has flattened (convergence.py), and the trunk may run in bf16 (its
Gram GEMMs too, accumulating in fp32) while the losses stay fp32.

Nothing here knows how it is accelerated: the runtime (`Numerics`) hands over the trunk in its
precision and starts each stage's run, and the accelerators (pipeline/accel: bf16 trunk, CPU
shards, CUDA graphs) wrap StageRun there.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import NonFiniteError
from ..io.tensor_tree import map_tensors
from .blockwise import BlockObjective
from .convergence import EarlyStop
from .layers import LAYER_INDEX
from .lbfgs import BatchedLBFGS
from .loss_trace import LossTrace
from .losses import LossWeights, SplitTarget, Targets, loss_terms
from .params import StyleParams
from .precondition import Spectral
from .vgg import VGG19Trunk
from .weights import WeightSet, load_weights

Progress = Callable[[int, dict[str, Tensor]], None]
# (iteration, images [N, 3, h, w] after that many steps, which samples moved to get there)
Snapshot = Callable[[int, Tensor, Tensor], None]


class Run(Protocol):
    """One stage's optimization, stepped by the loop: StageRun, or an accelerator's wrapper."""

    x: Tensor

    def step(self) -> dict[str, Tensor]: ...

    def hold(self, moving: Tensor) -> None:
        """From now on only the samples where `moving` [N] (bool, updated in place by the
        loop) are stepped; the others keep their pixels."""

    def state_dict(self) -> dict[str, Any]: ...

    def enter(self, i: int, x: Tensor, targets: Targets, state: dict[str, Any] | None
              ) -> None:
        """Sample i becomes another job's (slots.py): its image x [3, H, W], its targets (of
        one sample) and its optimizer state (`row_state`'s; None: a fresh start)."""

    def row_state(self, i: int) -> dict[str, Any]: ...


class Numerics(Protocol):
    """How the math runs (accel.runtime.Runtime): the device, dtypes and layout, and the two
    places where accelerators plug in without the loop knowing them: the trunk in the run's
    precision, and how a stage's run is started (StageRun.start, or a wrapper of it)."""

    device: torch.device
    precision: str
    channels_last: bool
    history_left: bool  # lbfgs.BatchedLBFGS's

    @property
    def trunk_dtype(self) -> torch.dtype: ...

    @property
    def pixel_dtype(self) -> torch.dtype: ...

    def layout(self, x: Tensor) -> Tensor: ...

    def widened(self) -> Numerics: ...

    def compute_trunk(self, trunk: VGG19Trunk) -> VGG19Trunk: ...

    def start_run(self, trunk: VGG19Trunk, x0: Tensor, stage: Stage, start: int,
                  opt_state: dict[str, Any] | None, params: StyleParams) -> Run: ...


class Interrupted(Exception):
    """The run was asked to stop; a checkpoint of the current iteration was saved."""


class NonFinite(NonFiniteError):
    """The objective of some samples of the batch became inf or NaN: those images are not
    results. The other samples are unharmed (every loss is per sample), but the batch stops
    here: the caller runs them again without the diverged ones."""

    def __init__(self, samples: list[int], iteration: int):
        self.samples, self.iteration = samples, iteration
        super().__init__(f"the objective became inf/NaN at iteration {iteration}: the loss "
                         "weights or the step size (lr, lbfgs_max_step) are too large")


# The pixels' scale: what an output holds.
PIXEL_RANGE = (0.0, 255.0)


def as_written(x: Tensor) -> Tensor:
    """The images as an output holds them: the objective reported is theirs, not that of
    pixels an unconstrained run (lbfgs_clamp off) left outside the range."""
    return x.clamp(*PIXEL_RANGE)


# How often the loss is checked for inf/NaN: each check reads it on the host, which on a GPU
# waits for the iteration to finish. It is also checked before every checkpoint and at the end.
FINITE_EVERY = {"cpu": 1, "cuda": 10}


def check_finite(total: Tensor, iteration: int, images: Tensor | None = None) -> None:
    """Raise NonFinite naming the samples whose loss (or image) is not finite."""
    bad = ~torch.isfinite(total)
    if images is not None:
        bad |= ~torch.isfinite(images.flatten(1)).all(1)
    if bad.any():
        raise NonFinite(bad.nonzero().flatten().tolist(), iteration)


@dataclass
class Checkpointing:
    """Resumable optimization: `save(iteration, images, state)` runs every `every` iterations
    where `wants_periodic()` (asked before the state is gathered), and when `stop()` turns true
    (then Interrupted is raised); `resume` restarts from a saved (iteration, images, state).
    The state is the loop's: the optimizer's, early stopping's and the loss trace's."""

    save: Callable[[int, Tensor, dict[str, Any]], None]
    every: int = 0
    resume: tuple[int, Tensor, dict[str, Any]] | None = None
    stop: Callable[[], bool] = lambda: False
    wants_periodic: Callable[[], bool] = lambda: True


@functools.lru_cache(maxsize=4)
def load_trunk(source: str, pooling: str, last_layer: str, runtime: Numerics
               ) -> tuple[VGG19Trunk, WeightSet]:
    """The frozen trunk on the runtime's device; cached so a worker loads weights once."""
    weights = load_weights(source)
    trunk = weights.trunk(pooling=pooling, last_layer=last_layer).to(runtime.device)
    if runtime.channels_last:
        trunk = trunk.to(memory_format=torch.channels_last)
    return trunk, weights


def trunk_for(params: StyleParams, runtime: Numerics) -> tuple[VGG19Trunk, WeightSet]:
    last = max(params.layers, key=LAYER_INDEX.__getitem__)
    return load_trunk(params.weights, params.pooling, last, runtime)


def loss_weights(params: StyleParams) -> LossWeights:
    layer_w = params.style_layer_weights or (1.0,) * len(params.style_layers)
    return LossWeights(params.content_weight, params.style_weight, params.tv_weight,
                       dict(zip(params.style_layers, layer_w, strict=True)))


def init_batch(params: StyleParams, contents: Tensor, init_image: Tensor | None) -> Tensor:
    """The starting images: the content, seeded uniform noise, or a given image."""
    if params.init == "content":
        return contents.clone()
    if params.init == "noise":
        # Reseeded per sample: a job's start does not depend on its place in the batch.
        gen = torch.Generator()
        noise = [torch.rand(contents.shape[1:], generator=gen.manual_seed(params.seed)) * 255
                 for _ in range(contents.shape[0])]
        return torch.stack(noise).to(contents.device)
    assert init_image is not None, "init image path given but no image loaded"
    return init_image.expand_as(contents).clone()


def in_layout(targets: Targets, runtime: Numerics) -> Targets:
    """Content targets in the features' layout: with channels_last features and NCHW targets,
    the loss's gradient comes out NCHW and its sum with the channels_last one runs ~10x
    slower than a same-layout add."""
    return replace(targets, content={k: runtime.layout(t) for k, t in targets.content.items()})


class Objective:
    """Per-sample loss terms of a batch of images: the trunk and its Gram GEMMs in the
    runtime's precision, the losses in fp32. A sample's targets may be replaced in place
    (`set_row`): a CUDA graph of the objective reads the same buffers."""

    def __init__(self, trunk: VGG19Trunk, targets: Targets, params: StyleParams,
                 runtime: Numerics):
        self.weights = loss_weights(params)
        self.layers = params.layers
        self.net = runtime.compute_trunk(trunk)
        self.layout = runtime.layout
        self.targets = in_layout(targets, runtime)
        # Every feature is in the trunk's dtype (compute_trunk), so each style target is split
        # for the Gram GEMMs once here rather than in every iteration.
        self.grams = {k: SplitTarget.of(t, runtime.trunk_dtype)
                      for k, t in self.targets.grams.items()}

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        return loss_terms(self.net(self.layout(x), self.layers), x, self.targets, self.weights,
                          self.grams)

    @torch.no_grad()
    def set_row(self, i: int, targets: Targets) -> None:
        """Sample i's targets become `targets`' (of one sample)."""
        for k, t in targets.content.items():
            self.targets.content[k][i] = t[0]
        for k, t in targets.grams.items():
            split = self.grams[k]
            split.target[i] = t[0]
            split.hi[i] = t[0].to(split.hi.dtype)
            if split.lo is not None:
                split.lo[i] = t[0] - split.hi[i].float()
        for k, t in (targets.guides or {}).items():
            assert self.targets.guides is not None, "a job with masks in a batch without"
            self.targets.guides[k][i] = t[0]


@dataclass
class Stage:
    """One size of a coarse-to-fine schedule: optimize at `size` (w, h) against `targets` until
    the run's iteration count reaches `end`. A plain run is one stage. `block`: compute the
    objective by blocks of at most this side (blockwise.py), 0 = the whole image at once;
    `history`: L-BFGS pairs, where memory allows fewer than the parameters ask (None: theirs).
    Both come from the memory pre-flight and change how much is held, not the objective."""

    size: tuple[int, int]
    end: int
    targets: Targets
    block: int = 0
    history: int | None = None


def block_objective(trunk: VGG19Trunk, stage: Stage, params: StyleParams, runtime: Numerics
                    ) -> BlockObjective:
    """`objective` of a stage too large to run whole, computed block by block."""
    return BlockObjective(runtime.compute_trunk(trunk), in_layout(stage.targets, runtime),
                          loss_weights(params), runtime.layout, stage.block)


def stage_terms(trunk: VGG19Trunk, stage: Stage, params: StyleParams, runtime: Numerics,
                x: Tensor) -> dict[str, Tensor]:
    """The stage's loss terms at x, without autograd (whole or by blocks)."""
    with torch.no_grad():
        if stage.block:
            return block_objective(trunk, stage, params, runtime).terms(x)
        return Objective(trunk, stage.targets, params, runtime)(x)


def resample(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Images [N, 3, H, W] to size (w, h): bicubic, antialiased when shrinking."""
    if (x.shape[3], x.shape[2]) == size:
        return x
    return F.interpolate(x, size=(size[1], size[0]), mode="bicubic", antialias=True,
                         align_corners=False)


@dataclass
class Optimized:
    """What a batch's optimization gives back, per sample."""

    images: Tensor                 # [N, 3, H, W]
    terms: dict[str, Tensor]       # final loss terms, re-evaluated in fp32
    iterations: list[int]          # steps each sample took (fewer when it stopped early)
    trace: list[list[dict[str, Any]]]  # each sample's loss trace (empty without trace_every)


@dataclass
class Watch:
    """What the loop reports to and keeps besides the images: progress, intermediate images,
    checkpoints, early stopping and the loss trace."""

    stop: EarlyStop
    trace: LossTrace
    progress: Progress | None = None
    checkpointing: Checkpointing | None = None
    snapshot: Snapshot | None = None
    save_every: int = 0

    def state_dict(self, run: Run) -> dict[str, Any]:
        return {"optimizer": run.state_dict(), "stop": self.stop.state_dict(),
                "trace": self.trace.state_dict()}


def optimize(trunk: VGG19Trunk, x0: Tensor, stages: Sequence[Stage], params: StyleParams,
             runtime: Numerics, progress: Progress | None = None,
             checkpointing: Checkpointing | None = None, *, trace_every: int = 0,
             snapshot: Snapshot | None = None) -> Optimized:
    """Run the stages from x0 [N, 3, H, W] (or from a checkpoint, which may lie in any stage).
    `trace_every`: record the loss terms every that many iterations; `snapshot`: called with
    the images every params.save_every iterations.

    Coarse-to-fine as in crowsonkb's style-transfer-pytorch: each stage starts from the last
    one's images upsampled, with a fresh optimizer (L-BFGS history is tied to the image size).
    A coarse iteration costs a quarter of the next size's, and it fixes the large structures
    that take a full-size optimization many iterations to move."""
    resume = checkpointing.resume if checkpointing is not None else None
    i, x, state = resume if resume is not None else (0, x0, None)
    x = x.detach().to(runtime.device, runtime.pixel_dtype)
    watch = Watch(EarlyStop(params.tol, params.tol_window, x.shape[0], runtime.device),
                  LossTrace(trace_every), progress, checkpointing, snapshot, params.save_every)
    opt_state = None
    if state is not None:
        state = tree_to(state, runtime.device, copy=True)
        watch.stop.load_state_dict(state["stop"])
        watch.trace.load_state_dict(state["trace"])
        opt_state = state["optimizer"]
    starts = [0] + [stage.end for stage in stages[:-1]]
    for index, (stage, first) in enumerate(zip(stages, starts, strict=True)):
        if i >= stage.end:
            continue
        if i == first:  # a new stage (a checkpoint may lie mid-stage)
            x, opt_state = resample(x, stage.size), None
            watch.stop.start_stage()
        x = _run_stage(trunk, x, stage, index, i, opt_state, params, runtime, watch)
        i = stage.end
    # Report the objective of the images returned, in fp32 (or fp64): the last closure saw them
    # before the last step, and in the runtime's precision. One forward, no backward.
    x = as_written(x)
    terms = stage_terms(trunk, stages[-1], params, runtime.widened(), x)
    check_finite(terms["total"], params.iterations, x)
    trace = (watch.trace.rows(watch.stop.last, len(stages) - 1, terms) if trace_every
             else [[] for _ in range(x.shape[0])])
    return Optimized(x, terms, watch.stop.used.tolist(), trace)


@dataclass
class StageRun:
    """One stage's optimization state: the image being optimized (a leaf), its optimizer and
    objective. `step()` is one iteration; benchmarks step several runs in turn."""

    x: Tensor
    opt: Any
    evaluate: Callable[[Tensor], dict[str, Tensor]]
    clamp: bool  # Adam's steps are clamped to PIXEL_RANGE after it
    moving: Tensor | None = None  # see Run.hold
    blockwise: BlockObjective | None = None  # the stage's objective runs by blocks

    @classmethod
    def start(cls, trunk: VGG19Trunk, x0: Tensor, stage: Stage, start: int,
              opt_state: dict[str, Any] | None, params: StyleParams, runtime: Numerics
              ) -> StageRun:
        x = x0.detach().clone().requires_grad_(True)
        if params.optimizer == "lbfgs":
            # A stage of L iterations stores at most L pairs: the history buffer need not
            # be larger (it is allocated whole on a GPU).
            history = min(stage.history or params.lbfgs_history, max(1, stage.end - start))
            precondition = (Spectral(x.shape, params.lbfgs_precondition, x.device)
                            if params.lbfgs_precondition else None)
            opt: Any = BatchedLBFGS(x, lr=params.step_size, history=history,
                                    max_step=params.lbfgs_max_step or None,
                                    precondition=precondition, scaling=params.lbfgs_scaling,
                                    bounds=PIXEL_RANGE if params.lbfgs_clamp else None,
                                    history_left=runtime.history_left)
        else:
            # Adam is elementwise, so it is already exact for a batch of independent jobs.
            opt = torch.optim.Adam([x], lr=params.step_size)
        if opt_state is not None:
            # A copy: the optimizer updates its state in place (Adam does), which must not
            # write into the caller's.
            opt.load_state_dict(tree_to(opt_state, runtime.device, copy=True))
        clamp = params.optimizer == "adam"  # L-BFGS keeps the range itself (lbfgs_clamp)
        if stage.block:
            blockwise = block_objective(trunk, stage, params, runtime)
            return cls(x, opt, blockwise.terms, clamp, blockwise=blockwise)
        return cls(x, opt, Objective(trunk, stage.targets, params, runtime), clamp)

    def closure(self) -> dict[str, Tensor]:
        """One objective evaluation and its gradient: what the optimizer calls each step."""
        if self.blockwise is not None:
            return self.blockwise.gradient(self.x)
        return evaluate_and_backward(self.evaluate, self.x)

    def hold(self, moving: Tensor) -> None:
        self.moving = moving
        if isinstance(self.opt, BatchedLBFGS):  # it takes no step for them
            self.opt.moving = moving

    def step(self) -> dict[str, Tensor]:
        """One iteration; returns the loss terms of the images before it."""
        # Adam's update is not maskable from outside: the held samples' pixels are put back.
        held = self.moving is not None and not isinstance(self.opt, BatchedLBFGS)
        before = self.x.detach().clone() if held else None
        terms = self.opt.step(self.closure)
        with torch.no_grad():
            if self.clamp:
                self.x.clamp_(*PIXEL_RANGE)
            if before is not None:
                self.x.copy_(torch.where(self.moving.view(-1, 1, 1, 1), self.x, before))
        return terms

    def state_dict(self) -> dict[str, Any]:
        return self.opt.state_dict()

    def enter(self, i: int, x: Tensor, targets: Targets, state: dict[str, Any] | None
              ) -> None:
        if not isinstance(self.opt, BatchedLBFGS) or not isinstance(self.evaluate, Objective):
            raise TypeError("only an L-BFGS run of a whole image takes jobs into its rows")
        with torch.no_grad():
            self.x[i] = x
        self.evaluate.set_row(i, targets)
        if state is None:
            self.opt.reset_row(i)
        else:
            self.opt.load_row(i, state)

    def row_state(self, i: int) -> dict[str, Any]:
        assert isinstance(self.opt, BatchedLBFGS)
        return self.opt.row_state(i)


def _run_stage(trunk: VGG19Trunk, x0: Tensor, stage: Stage, index: int, start: int,
               opt_state: dict[str, Any] | None, params: StyleParams, runtime: Numerics,
               watch: Watch) -> Tensor:
    """Iterations start..stage.end of one stage (fewer when every sample stopped early);
    returns its final images."""
    run = runtime.start_run(trunk, x0, stage, start, opt_state, params)
    stop, checkpointing = watch.stop, watch.checkpointing
    if stop.enabled:
        run.hold(stop.active)
    # Host reads (inf/NaN, all stopped) wait for the device: on a GPU only every few steps.
    check_every = FINITE_EVERY.get(runtime.device.type, 1)
    for i in range(start, stage.end):
        terms = run.step()  # the loss of the images before this step, i.e. after i steps
        watch.trace.record([i] * len(stop.active), index, terms, stop.active)
        stop.update(terms["total"])
        if (i + 1) % check_every == 0:
            check_finite(terms["total"], i)
        if watch.progress is not None:
            watch.progress(i + 1, terms)
        if (watch.snapshot is not None and watch.save_every and (i + 1) % watch.save_every == 0
                and i + 1 < params.iterations):
            # Of the samples that moved and go on: a stopped one's image is its result.
            watch.snapshot(i + 1, run.x.detach(), (stop.last == i + 1) & stop.active)
        if checkpointing is not None and i + 1 < params.iterations:
            stopping = checkpointing.stop()
            if stopping or (checkpointing.every and (i + 1) % checkpointing.every == 0
                            and checkpointing.wants_periodic()):
                x = run.x.detach()
                check_finite(terms["total"], i, x)  # a checkpoint only ever holds finite images
                checkpointing.save(i + 1, x, watch.state_dict(run))
            if stopping:
                raise Interrupted(f"stopped at iteration {i + 1}")
        if (i + 1) % check_every == 0 and stop.all_stopped():
            break
    return run.x.detach()


def evaluate_and_backward(evaluate: Callable[[Tensor], dict[str, Tensor]], x: Tensor
                          ) -> dict[str, Tensor]:
    """The terms of `evaluate` at x (detached), with dL/dx left in x.grad."""
    x.grad = None
    terms = evaluate(x)
    terms["total"].sum().backward()
    return {k: v.detach() for k, v in terms.items()}


def tree_to(state: Any, device: torch.device | str, copy: bool = False) -> Any:
    """A (nested) optimizer state on `device`; copy=True also copies what is already there."""
    return map_tensors(lambda t: t.detach().to(device, copy=copy), state)
