import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pipeline.gatys.lbfgs import BatchedLBFGS, Identity
from pipeline.gatys.params import LBFGS_SCALINGS as SCALINGS
from pipeline.gatys.precondition import F_MIN, Spectral


def _rosenbrock_like(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A smooth non-quadratic objective per sample: [N, 2, 3] -> [N]."""
    a, b = x[:, 0], x[:, 1]
    return (scale[:, None] * (b - a**2) ** 2 + (1 - a) ** 2).sum(1)


def _closure(x: torch.Tensor, scale: torch.Tensor):
    def closure():
        x.grad = None
        loss = _rosenbrock_like(x, scale)
        loss.sum().backward()
        return loss.detach()

    return closure


def _run_batched(x0: torch.Tensor, scale: torch.Tensor, steps: int, **kw) -> torch.Tensor:
    x = x0.clone().requires_grad_(True)
    opt = BatchedLBFGS(x, **kw)
    closure = _closure(x, scale)
    for _ in range(steps):
        opt.step(closure)
    return x.detach()


@pytest.mark.parametrize("history_left", [True, False])
def test_matches_torch_lbfgs_for_one_sample(history_left):
    """With no step cap, one sample follows torch.optim.LBFGS(max_iter=1) iterate for iterate,
    whichever factor the history is in its products."""
    torch.manual_seed(0)
    x0 = torch.randn(1, 2, 3, dtype=torch.float64) * 0.5
    scale = torch.tensor([3.0], dtype=torch.float64)
    ours = _run_batched(x0, scale, 15, history=5, history_left=history_left)
    x = x0.clone().requires_grad_(True)
    ref = torch.optim.LBFGS([x], lr=1, max_iter=1, history_size=5)

    def closure():
        ref.zero_grad()
        loss = _rosenbrock_like(x, scale).sum()
        loss.backward()
        return loss

    for _ in range(15):
        ref.step(closure)
    torch.testing.assert_close(ours, x.detach(), rtol=1e-9, atol=1e-9)


def test_batch_equals_each_sample_alone():
    torch.manual_seed(1)
    x0 = torch.randn(3, 2, 3, dtype=torch.float64)
    scale = torch.tensor([1.0, 5.0, 20.0], dtype=torch.float64)
    together = _run_batched(x0, scale, 25, history=4, max_step=0.5)
    for i in range(3):
        alone = _run_batched(x0[i:i + 1], scale[i:i + 1], 25, history=4, max_step=0.5)
        torch.testing.assert_close(together[i:i + 1], alone, rtol=1e-10, atol=1e-10)


def test_converges_and_max_step_bounds_each_move():
    x0 = torch.full((2, 2, 3), -1.5, dtype=torch.float64)
    scale = torch.tensor([2.0, 2.0], dtype=torch.float64)
    x = x0.clone().requires_grad_(True)
    opt = BatchedLBFGS(x, history=10, max_step=0.25)
    closure = _closure(x, scale)
    start = closure()
    prev = x.detach().clone()
    for _ in range(200):
        opt.step(closure)
        assert (x.detach() - prev).abs().max() <= 0.25 + 1e-12
        prev = x.detach().clone()
    assert torch.all(closure() < 1e-3 * start)


def test_state_dict_round_trip_resumes_identically():
    torch.manual_seed(2)
    x0 = torch.randn(2, 2, 3, dtype=torch.float64)
    scale = torch.tensor([1.0, 4.0], dtype=torch.float64)
    straight = _run_batched(x0, scale, 12, history=3)

    x = x0.clone().requires_grad_(True)
    opt = BatchedLBFGS(x, history=3)
    for _ in range(6):
        opt.step(_closure(x, scale))
    state = opt.state_dict()
    x2 = x.detach().clone().requires_grad_(True)
    opt2 = BatchedLBFGS(x2, history=3)
    opt2.load_state_dict(state)
    for _ in range(6):
        opt2.step(_closure(x2, scale))
    torch.testing.assert_close(x2.detach(), straight, rtol=1e-12, atol=1e-12)


def _two_loop(g: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor]],
              gamma: float) -> torch.Tensor:
    """The textbook two-loop recursion (Nocedal & Wright, Algorithm 7.4): -H g."""
    q, alphas = g.clone(), []
    for s, y in reversed(pairs):
        rho = 1.0 / (y @ s)
        alphas.append(rho * (s @ q))
        q -= alphas[-1] * y
    r = gamma * q
    for (s, y), a in zip(pairs, reversed(alphas), strict=True):
        r += s * (a - (y @ r) / (y @ s))
    return -r


@pytest.mark.parametrize("history_left", [True, False])
def test_compact_direction_equals_two_loop_with_evictions_and_rejected_pairs(history_left):
    """Random pairs, about half failing the curvature test, 3 samples, history 4 over 11
    pairs: each sample's direction equals the two-loop over its own window of accepted pairs."""
    torch.manual_seed(3)
    n, dim, m = 3, 40, 4
    opt = BatchedLBFGS(torch.zeros(n, dim, dtype=torch.float64, requires_grad=True), history=m,
                       history_left=history_left)
    windows: list[list[tuple[torch.Tensor, torch.Tensor] | None]] = [[] for _ in range(n)]
    gammas = [1.0] * n
    rejected = 0
    for _ in range(11):
        opt.prev_grad, opt.s = torch.randn(n, dim, dtype=torch.float64), torch.randn(
            n, dim, dtype=torch.float64)
        g = torch.randn(n, dim, dtype=torch.float64)
        ours = opt._direction(g)
        opt.steps += 1  # as update() does after it
        for i in range(n):
            s, y = opt.s[i], g[i] - opt.prev_grad[i]
            accepted = bool(y @ s > 1e-10)
            rejected += not accepted
            windows[i] = (windows[i] + [(s, y) if accepted else None])[-m:]
            if accepted:
                gammas[i] = float((y @ s) / (y @ y))
            pairs = [p for p in windows[i] if p is not None]
            torch.testing.assert_close(ours[i], _two_loop(g[i], pairs, gammas[i]),
                                       rtol=1e-9, atol=1e-9)
    assert 5 < rejected < 28  # both kinds of pair were exercised


def _image_problem(x: torch.Tensor) -> torch.Tensor:
    """A smooth image objective whose curvature grows with spatial frequency (as VGG's and
    TV's do): gradient energy, a weak pull to 0 and a quartic to make it non-quadratic.
    [N, 3, H, W] -> [N]; its minimum is 0, at 0."""
    dy, dx = x.diff(dim=2), x.diff(dim=3)
    return ((dy**2).flatten(1).sum(1) + (dx**2).flatten(1).sum(1)
            + 1e-2 * (x**2).flatten(1).sum(1) + 1e-2 * (x**4).flatten(1).sum(1))


def _minimize(f, x0: torch.Tensor, steps: int, **kw) -> list[float]:
    x = x0.clone().requires_grad_(True)
    opt = BatchedLBFGS(x, **kw)

    def closure():
        x.grad = None
        loss = f(x)
        loss.sum().backward()
        return loss.detach()

    return [opt.step(closure).sum().item() for _ in range(steps)]


def test_preconditioned_is_lbfgs_on_the_reparametrized_image():
    """With P, the iterates are plain L-BFGS's on z, x = x0 + P z, step cap included (it is
    on z), with either scaling."""
    shape = (2, 3, 12, 16)
    f = _image_problem
    x0 = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    p = Spectral(shape, 0.5, torch.device("cpu"))
    for scaling in SCALINGS:
        ours = _minimize(f, x0, 12, history=4, max_step=0.2, precondition=p, scaling=scaling)
        z0 = torch.zeros(shape, dtype=torch.float64)
        plain = _minimize(lambda z: f(x0 + p(z.flatten(1)).view(shape)), z0, 12, history=4,
                          max_step=0.2, scaling=scaling)
        assert ours == pytest.approx(plain, rel=1e-9)


def test_spectral_is_symmetric_positive_and_the_identity_at_zero():
    shape = (1, 3, 10, 14)
    gen = torch.Generator().manual_seed(4)
    u, v = (torch.randn(1, 3 * 10 * 14, dtype=torch.float64, generator=gen) for _ in range(2))
    p = Spectral(shape, 0.5, torch.device("cpu"))
    assert (u * p(v)).sum().item() == pytest.approx((v * p(u)).sum().item(), rel=1e-12)
    assert (u * p(u)).sum() > 0
    torch.testing.assert_close(Spectral(shape, 0.0, torch.device("cpu"))(u), u)
    # A constant image is the lowest frequency: the largest gain, (0.5 / F_MIN)^alpha.
    ones = torch.ones(1, 3 * 10 * 14, dtype=torch.float64)
    torch.testing.assert_close(p(ones), ones * (0.5 / F_MIN) ** 0.5)


def test_preconditioning_reaches_a_lower_objective_on_image_like_curvature():
    shape = (1, 3, 24, 32)
    f = _image_problem
    x0 = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    plain = _minimize(f, x0, 30, history=10, max_step=0.5)
    ours = _minimize(f, x0, 30, history=10, max_step=0.5,
                     precondition=Spectral(shape, 0.5, torch.device("cpu")),
                     scaling="geometric")
    # The broad modes, whose curvature is weakest, are what a flat H0 leaves behind.
    assert ours[-1] < 1e-3 * plain[-1]


def _deblur(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """|blur(x) - blur(target)|^2 per sample: a problem whose minimum (target) can lie outside
    the pixel range while blurred targets inside it can still be matched from within."""
    blur = torch.full((3, 1, 3, 3), 1 / 9, dtype=x.dtype)
    return ((torch.nn.functional.conv2d(x - target, blur, padding=1, groups=3)) ** 2
            ).flatten(1).sum(1)


def test_projected_steps_stay_in_bounds_and_remember_the_step_taken():
    """With bounds, every iterate lies in the box, and the pair stored for a step is the step
    actually taken: in z, P^-1 of the projected move (with or without P), and the gradient
    it sees is the projected one: zero where a pixel on a bound is pulled out of the box.
    Bounds that are never reached change nothing."""
    shape = (2, 3, 12, 16)
    gen = torch.Generator().manual_seed(7)
    target = torch.rand(shape, dtype=torch.float64, generator=gen) * 3 - 1  # in [-1, 2]
    x0 = torch.rand(shape, dtype=torch.float64, generator=gen)
    for p in (None, Spectral(shape, 0.5, torch.device("cpu"))):
        x = x0.clone().requires_grad_(True)
        opt = BatchedLBFGS(x, history=4, max_step=0.5, precondition=p, bounds=(0.0, 1.0))
        inverse, blocked = (p or Identity()).inverse, 0
        for _ in range(8):
            x.grad = None
            _deblur(x, target).sum().backward()
            before, grad = x.detach().clone(), x.grad.clone()
            opt.update()
            assert x.min() >= 0 and x.max() <= 1
            moved = (x.detach() - before).flatten(1)
            torch.testing.assert_close(opt.s, inverse(moved))
            pulled_out = ((before == 0) & (grad > 0)) | ((before == 1) & (grad < 0))
            torch.testing.assert_close(inverse(opt.prev_grad),
                                       grad.masked_fill(pulled_out, 0).flatten(1))
            blocked += int(pulled_out.sum())
        assert blocked > 0  # the box was met, and pulled against
        f = lambda v: _deblur(v, target.clamp(0.2, 0.8))  # noqa: E731
        assert _minimize(f, x0, 8, history=4, max_step=0.1, precondition=p,
                         bounds=(-9.0, 9.0)) == pytest.approx(
            _minimize(f, x0, 8, history=4, max_step=0.1, precondition=p), rel=1e-12)


def test_projected_lbfgs_beats_clipping_an_unconstrained_run():
    """The written image of an unconstrained run is its result clipped to the pixel range; a
    projected run optimizes within the range and ends lower, with and without P."""
    shape = (1, 3, 16, 20)
    gen = torch.Generator().manual_seed(8)
    target = torch.rand(shape, dtype=torch.float64, generator=gen) * 3 - 1
    x0 = torch.rand(shape, dtype=torch.float64, generator=gen)
    f = lambda v: _deblur(v, target)  # noqa: E731
    for p in (None, Spectral(shape, 0.5, torch.device("cpu"))):
        finals = []
        for bounds in (None, (0.0, 1.0)):
            x = x0.clone().requires_grad_(True)
            opt = BatchedLBFGS(x, history=10, max_step=0.5, precondition=p, bounds=bounds)
            for _ in range(40):
                x.grad = None
                f(x).sum().backward()
                opt.update()
            finals.append(f(x.detach().clamp(0, 1)).item())
        clipped, projected = finals
        assert projected < 0.8 * clipped, (projected, clipped)


def test_lbfgs_settings_are_checked_and_keyed_only_when_they_change_the_result():
    from pipeline.api import job_key
    from pipeline.errors import InputError
    from pipeline.gatys.params import StyleParams

    keys = {job_key("c", ["s"], StyleParams(**kw)) for kw in (
        {}, {"lbfgs_precondition": 0}, {"lbfgs_scaling": "standard"}, {"lbfgs_precondition": 1})}
    assert len(keys) == 4
    for bad, message in (({"lbfgs_precondition": float("nan")}, "finite"),
                         ({"lbfgs_precondition": -1}, "between 0 and 2"),
                         ({"lbfgs_scaling": "bb"}, "lbfgs_scaling must be one of")):
        with pytest.raises(InputError, match=message):
            StyleParams(**bad).validate()


class _OpLog(TorchDispatchMode):
    """Every op dispatched, as what a CUDA graph's replay would have to repeat: its name, the
    shapes and dtypes of its tensors, and its other arguments as values."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops.append((str(func), _kind([*args, *kwargs.values()])))
        return func(*args, **kwargs)


def _kind(arg):
    if isinstance(arg, torch.Tensor):
        return tuple(arg.shape), arg.dtype
    if isinstance(arg, list | tuple):
        return tuple(_kind(a) for a in arg)
    return repr(arg)


def _logged_updates(fixed: bool, steps: int) -> tuple[list[list[tuple]], BatchedLBFGS]:
    """The ops of each L-BFGS update (the step after the closure) over `steps` steps."""
    shape = (2, 3, 8, 10)
    x = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    x.requires_grad_(True)
    opt = BatchedLBFGS(x, history=4, max_step=0.2, scaling="geometric",
                       precondition=Spectral(shape, 0.5, torch.device("cpu")),
                       bounds=(0.2, 1.0))  # projected, as the engine's: the minimum is at 0
    opt.moving = torch.tensor([True, True])
    if fixed:
        opt.fix_shapes()
    logs = []
    for _ in range(steps):
        x.grad = None
        _image_problem(x).sum().backward()
        with _OpLog() as log:
            opt.update()
        logs.append(log.ops)
    return logs, opt


def test_fixed_shapes_follow_the_same_iterates():
    """fix_shapes() (for a CUDA graph) runs every product over all slots: same iterates."""
    ends = []
    for fixed in (False, True):
        _, opt = _logged_updates(fixed, 12)  # 11 pairs through 4 slots
        ends.append(opt.x.detach().clone())
    torch.testing.assert_close(ends[1], ends[0], rtol=1e-9, atol=1e-12)


def test_with_fixed_shapes_every_step_after_the_first_is_the_same_replayable_work():
    """What a CUDA graph captures once and replays: from the second step on, each update
    dispatches the same ops with the same shapes and arguments, updates the same buffers in
    place and never reads a value back on the host."""
    logs, opt = _logged_updates(True, 3)
    buffers = {k: v.data_ptr() for k, v in vars(opt).items() if isinstance(v, torch.Tensor)}
    logs += _logged_updates(True, 12)[0][3:]
    assert all(log == logs[1] for log in logs[2:])
    dispatched = {name for log in logs for name, _ in log}
    assert not dispatched & {"aten._local_scalar_dense.default", "aten.nonzero.default"}
    for _ in range(5):
        opt.x.grad = None
        _image_problem(opt.x).sum().backward()
        opt.update()
    assert {k: v.data_ptr() for k, v in vars(opt).items()
            if isinstance(v, torch.Tensor)} == buffers
    assert (opt.x == 0.2).any()  # the projection was part of the work replayed
    # Without fixed shapes the history's fill changes the products' shapes.
    growing = _logged_updates(False, 6)[0]
    assert growing[2] != growing[1]
