"""The local copies of input objects stay within their budget (io/copy_budget.py): least
recently used first out, a copy being read never, a setting that is no size named."""

from __future__ import annotations

import os
import shutil
import time
from collections import namedtuple

import pytest

from pipeline.errors import InputError
from pipeline.io import copy_budget
from pipeline.io.copy_budget import INPUTS_MAX_ENV, arriving, fetched_ahead, parse_size, pinned

Usage = namedtuple("Usage", "total used free")


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    """An `inputs` folder on a roomy disk, with no part this process measured before."""
    monkeypatch.setattr(copy_budget, "_PARTS", {})
    monkeypatch.setattr(shutil, "disk_usage", lambda _: Usage(10**12, 0, 10**12))
    folder = tmp_path / "inputs"
    folder.mkdir()
    return folder


def _copy(folder, n: int, size: int = 1000, used: float | None = None):
    path = folder / f"{n:032x}.png"
    path.write_bytes(b"x" * size)
    if used is not None:
        os.utime(path, (used, used))
    return path


def _arrive(folder, n: int, size: int = 1000, used: float | None = None):
    """A copy downloaded, as io/fetch.py does it."""
    with arriving(folder / f"{n:032x}.png", size):
        return _copy(folder, n, size, used)


def test_sizes_are_read_with_their_units_and_a_bad_one_is_named(monkeypatch):
    assert parse_size("2000") == 2000
    assert parse_size("50GB") == 50 * 10**9
    assert parse_size(" 1.5 MiB ") == 1572864
    for bad in ("lots", "-3GB", "5 parsecs", ""):
        with pytest.raises(InputError, match=INPUTS_MAX_ENV):
            parse_size(bad)
    monkeypatch.setenv(INPUTS_MAX_ENV, "ten")
    from pipeline.io.files import use_cache

    with pytest.raises(InputError, match=f"{INPUTS_MAX_ENV}='ten'"):
        use_cache(None)  # every command checks it at its start, before any work


def test_the_least_recently_used_copies_go_first(inputs, monkeypatch):
    monkeypatch.setenv(INPUTS_MAX_ENV, "5000")
    now = time.time()
    for n in range(5):
        _arrive(inputs, n, used=now - 100 + n)  # 0 is the oldest
    assert len(list(inputs.iterdir())) == 5  # at the limit, not over it
    _arrive(inputs, 5, used=now)
    left = sorted(p.name for p in inputs.iterdir())
    # under the limit by its headroom: 4,500 bytes, so 4 copies; the oldest two went
    assert left == [f"{n:032x}.png" for n in (2, 3, 4, 5)]


def test_the_copy_just_written_stays_however_small_the_budget(inputs, monkeypatch):
    monkeypatch.setenv(INPUTS_MAX_ENV, "10")
    old = _arrive(inputs, 0, used=time.time() - 50)
    assert old.exists()  # over the budget alone, but just written: its reader needs it
    new = _arrive(inputs, 1)
    assert new.exists() and not old.exists()


def test_a_copy_being_read_keeps_its_bytes_till_its_reader_ends(inputs, monkeypatch):
    monkeypatch.setenv(INPUTS_MAX_ENV, "1500")
    read = _copy(inputs, 0, used=time.time() - 100)
    with pinned(read) as link, pinned(read) as other:
        assert link != other and link.read_bytes() == read.read_bytes()
        _arrive(inputs, 1)
        assert not read.exists()  # the oldest: trimmed, its name
        assert link.read_bytes() == b"x" * 1000 == other.read_bytes()  # its bytes: kept
    assert not link.exists() and not other.exists()
    assert not any((inputs / ".pins").iterdir())
    with pytest.raises(FileNotFoundError), pinned(read):  # its reader fetches it again
        pass


def test_the_links_of_a_killed_reader_go_at_the_next_trim(inputs, monkeypatch):
    import subprocess
    import sys

    monkeypatch.setenv(INPUTS_MAX_ENV, "1500")
    copy = _copy(inputs, 0, used=time.time() - 100)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (inputs / ".pins").mkdir()
    os.link(copy, inputs / ".pins" / f"{dead}-0badc0de-{copy.name}")
    with pinned(copy) as alive:
        _arrive(inputs, 1)
        assert [p.name for p in (inputs / ".pins").iterdir()] == [alive.name]


def test_a_user_s_file_is_never_linked(tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"x")
    with pytest.raises(AssertionError), pinned(photo):
        pass


def test_copies_leave_a_tenth_of_the_disk_free(inputs, monkeypatch):
    monkeypatch.delenv(INPUTS_MAX_ENV, raising=False)
    now = time.time()
    copies = [_arrive(inputs, n, used=now - 10 + n) for n in range(4)]
    assert all(c.exists() for c in copies)

    def disk(others: int):
        """A disk of 20,000 bytes holding `others` besides the copies."""
        def usage(_):
            held = sum(p.stat().st_size for p in inputs.iterdir() if p.is_file())
            return Usage(20000, others + held, 20000 - others - held)
        return usage

    # 4,000 bytes of copies with 2,500 free: 10% is 2,000, so the copies may hold 4,500 and
    # stay; with 1,500 free, 3,500, less its headroom: 3,150
    monkeypatch.setattr(shutil, "disk_usage", disk(13500))
    _arrive(inputs, 4, size=1)
    assert all(c.exists() for c in copies)
    monkeypatch.setattr(shutil, "disk_usage", disk(14500))
    _arrive(inputs, 5, size=1)
    assert [c.exists() for c in copies] == [False, True, True, True]


def test_others_files_and_downloads_under_way_are_not_touched(inputs, monkeypatch):
    monkeypatch.setenv(INPUTS_MAX_ENV, "100")
    mine = inputs / "notes.txt"
    mine.write_bytes(b"x" * 5000)
    temp = inputs / f".{0:032x}.png.abcd1234.style-pipeline-tmp.png"
    temp.write_bytes(b"x" * 5000)
    _arrive(inputs, 1, size=150)
    assert mine.exists() and temp.exists()


def test_what_is_fetched_ahead_fits_in_half_the_budget(inputs, monkeypatch):
    monkeypatch.setenv(INPUTS_MAX_ENV, "10000")
    # half of it, 5,000: the older copies make room (trimmed first), those fetched ahead
    # never trim each other
    _copy(inputs, 0, size=2000)
    assert fetched_ahead(inputs, [1500, 1500, 1500, 1500]) == 3
    assert fetched_ahead(inputs, [None, None]) == 2  # sizes unknown: fetched, trimmed later
    monkeypatch.delenv(INPUTS_MAX_ENV)
    assert fetched_ahead(inputs, [1500] * 100) == 100


def test_cache_clear_leaves_the_copies_being_read(tmp_path, monkeypatch):
    """`pipeline cache clear inputs` while a job reads a copy: the job's link stays (its
    bytes with it), the rest goes."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    monkeypatch.setenv("STYLE_PIPELINE_CACHE", str(tmp_path))
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    copy = _copy(inputs, 0)
    with pinned(copy) as link:
        result = CliRunner().invoke(app, ["cache", "clear", "inputs"], terminal_width=200)
        assert result.exit_code == 0, result.output
        assert "1 file(s) removed" in result.output and "1 in use" in result.output
        assert not copy.exists() and link.read_bytes() == b"x" * 1000


def test_cache_info_says_what_the_copies_may_hold(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pipeline.cli import app

    monkeypatch.setenv(INPUTS_MAX_ENV, "1MB")
    result = CliRunner().invoke(app, ["cache", "info", "--cache-dir", str(tmp_path)],
                                terminal_width=200)
    assert result.exit_code == 0, result.output
    assert f"inputs may hold 0.00 GB ({INPUTS_MAX_ENV}=1MB)" in result.output
    monkeypatch.delenv(INPUTS_MAX_ENV)
    result = CliRunner().invoke(app, ["cache", "info", "--cache-dir", str(tmp_path)],
                                terminal_width=200)
    assert "(to leave 10% of the disk free)" in result.output
