"""Dataset mode of `pipeline manifest build`: class-folder trees in, reproducible style
assignment, an output tree that mirrors the input tree."""

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.bulk.dataset import assign_styles
from pipeline.cli import app
from tests.conftest import make_painting, make_photo
from tests.run_helpers import run_cli, runner


@pytest.fixture
def tree(tmp_path):
    content, styles = tmp_path / "train", tmp_path / "styles"
    for i, rel in enumerate(["cat/a.jpg", "cat/b.png", "dog/c.png", "dog/deep/d.png"]):
        (content / rel).parent.mkdir(parents=True, exist_ok=True)
        make_photo((64, 48), seed=i).save(content / rel)
    styles.mkdir()
    for i in range(3):
        make_painting(seed=20 + i).save(styles / f"s{i}.png")
    return content, styles


def _build(tmp_path, content, styles, *extra, name="m.parquet"):
    manifest = tmp_path / name
    result = runner.invoke(app, ["manifest", "build", "--content-dir", str(content),
                                 "--style-dir", str(styles), "-o", str(manifest), *extra],
                           terminal_width=300)
    assert result.exit_code == 0, result.output
    return pq.read_table(manifest).to_pylist()


def test_random_assignment_is_reproducible_and_mirrors_the_tree(tmp_path, tree):
    content, styles = tree
    args = ("--recursive", "--assign", "random", "--seed", "5", "--mirror")
    rows = _build(tmp_path, content, styles, *args)
    assert rows == _build(tmp_path, content, styles, *args, name="again.parquet")
    assert [r["output"] for r in rows] == ["cat/a.png", "cat/b.png", "dog/c.png",
                                           "dog/deep/d.png"]
    assert {Path(r["style"]).name for r in rows} <= {"s0.png", "s1.png", "s2.png"}
    other = _build(tmp_path, content, styles, "--recursive", "--assign", "random", "--seed",
                   "6", "--mirror", name="other.parquet")
    assert [r["style"] for r in other] != [r["style"] for r in rows]  # the seed matters
    make_photo(seed=9).save(content / "cat" / "aa.png")  # an image added to the dataset
    grown = {r["content"]: r["style"] for r in _build(tmp_path, content, styles, *args,
                                                      name="grown.parquet")}
    assert all(grown[r["content"]] == r["style"] for r in rows)  # the others keep theirs


def test_cycle_uses_every_style_evenly_and_names_outputs_apart(tmp_path, tree):
    content, styles = tree
    rows = _build(tmp_path, content, styles, "--recursive", "--assign", "cycle",
                  "--styles-per-image", "3", "--mirror", "--format", "jpg")
    assert len(rows) == 12
    assert set(Counter(Path(r["style"]).name for r in rows).values()) == {4}
    assert "cat/a__s0.jpg" in {r["output"] for r in rows}
    assert len({r["output"] for r in rows}) == 12
    assert assign_styles(["a", "b"], ["x", "y", "z"], "cycle", 2, 0) == [["x", "y"], ["z", "x"]]


def test_a_mirrored_manifest_runs_into_a_mirrored_tree(tmp_path, tree):
    content, styles = tree
    _build(tmp_path, content / "cat", styles, "--assign", "random", "--mirror", "--param",
           "size=32", "--param", "iterations=2")
    _build(tmp_path, content, styles, "--recursive", "--assign", "random", "--mirror",
           "--param", "size=32", "--param", "iterations=2", name="all.parquet")
    assert run_cli(tmp_path / "m.parquet", tmp_path / "cats").exit_code == 0
    result = run_cli(tmp_path / "all.parquet", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(tmp_path / "out").as_posix()
                  for p in (tmp_path / "out").rglob("*.png")) == [
        "cat/a.png", "cat/b.png", "dog/c.png", "dog/deep/d.png"]
    assert sorted(p.name for p in (tmp_path / "cats").iterdir() if p.is_file()) == [
        "a.png", "b.png", "report.html", "run.json"]


@pytest.mark.parametrize(("args", "message"), [
    (["--assign", "random", "--styles-per-image", "4"], "between 1 and the 3 styles"),
    (["--assign", "sideways"], "--assign must be one of"),
    (["--format", "gif", "--mirror"], "--format must be one of"),
    (["--format", "jpg"], "--format: only with --mirror"),
    (["--seed", "3"], "--seed: only with --assign random"),
    (["--assign", "cycle", "--seed", "3"], "--seed: only with --assign random"),
    (["--styles-per-image", "2"], "--styles-per-image: only with --assign random or cycle"),
])
def test_bad_dataset_options_are_one_line_errors(tmp_path, tree, args, message):
    content, styles = tree
    result = runner.invoke(app, ["manifest", "build", "--content-dir", str(content),
                                 "--style-dir", str(styles), "-o", str(tmp_path / "m.parquet"),
                                 *args], terminal_width=300)
    assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--mirror"], "--mirror: dataset mode only"),
    (["--recursive"], "--recursive: dataset mode only (--content-dir and --style-dir); with "
                      "--content, a pattern such as 'photos/**/*.jpg'"),
    (["--assign", "random", "--seed", "2"], "--assign, --seed: dataset mode only"),
])
def test_dataset_options_need_the_folders(tmp_path, tree, args, message):
    """Given with --content, they would change nothing: refused, never ignored."""
    content, styles = tree
    result = runner.invoke(app, ["manifest", "build", "--content", str(content / "cat"),
                                 "--style", str(styles), *args, "-o",
                                 str(tmp_path / "m.parquet")], terminal_width=300)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "m.parquet").exists()


def test_hidden_files_and_folders_are_left_out_and_named(tmp_path, tree):
    """macOS leaves ._a.jpg beside a.jpg on other file systems (its metadata, no image);
    thumbnail tools leave hidden folders. A file named one by one is taken as named."""
    content, styles = tree
    (content / "cat" / "._a.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (content / ".thumbnails").mkdir()
    make_photo((16, 16)).save(content / ".thumbnails" / "a.png")
    result = runner.invoke(app, ["manifest", "build", "--content-dir", str(content),
                                 "--style-dir", str(styles), "--recursive", "-o",
                                 str(tmp_path / "m.parquet")], terminal_width=300)
    assert result.exit_code == 0, result.output
    assert "skipped 2 hidden image files and folders (names starting with '.')" in result.output
    rows = pq.read_table(tmp_path / "m.parquet").to_pylist()
    assert sorted({r["content"] for r in rows}) == [
        "train/cat/a.jpg", "train/cat/b.png", "train/dog/c.png", "train/dog/deep/d.png"]
    for spec, found in ((str(content / "cat"), ["train/cat/a.jpg", "train/cat/b.png"]),
                        (str(content / ".thumbnails" / "a.png"), ["train/.thumbnails/a.png"])):
        result = runner.invoke(app, ["manifest", "build", "--content", spec, "--style",
                                     str(styles / "s0.png"), "-o", str(tmp_path / "n.parquet")],
                               terminal_width=300)
        assert result.exit_code == 0, result.output
        assert [r["content"] for r in pq.read_table(tmp_path / "n.parquet").to_pylist()] == found


# --- every row an output of its own; links followed; run folders left out -------------------

def test_names_that_would_clash_are_made_unique(tmp_path):
    content, styles = tmp_path / "photos", tmp_path / "paintings"
    for rel in ("a.jpg", "a.JPG", "a.png", "gray.jpg", "gray.png", "n1/img.png", "n2/img.png"):
        (content / rel).parent.mkdir(parents=True, exist_ok=True)
        make_photo(seed=len(rel)).save(content / rel)
    for rel in ("x/art.jpg", "y/art.jpg"):
        (styles / rel).parent.mkdir(parents=True, exist_ok=True)
        make_painting(seed=len(rel)).save(styles / rel)
    mirrored = _build(tmp_path, content, styles, "--recursive", "--mirror", "--format", "jpg")
    outputs = [r["output"] for r in mirrored]
    assert len(outputs) == 14 and len(set(outputs)) == 14
    assert {"a.jpg__x_art.jpg", "a.JPG__y_art.jpg", "a.png__x_art.jpg",
            "n1/img__y_art.jpg"} <= set(outputs)
    named = _build(tmp_path, content, styles, "--recursive", name="named.parquet")
    out = tmp_path / "out"  # default names, made unique where stems clash: the run accepts it
    result = runner.invoke(app, ["manifest", "validate", str(tmp_path / "named.parquet"),
                                 "--out", str(out), "--set", "size=32"], terminal_width=300)
    assert result.exit_code == 0 and "0 invalid" in result.output, result.output
    assert sum(r["output"] is not None for r in named) == 14
    flat = _build(tmp_path, content / "n1", styles / "x", name="flat.parquet")  # no clash
    assert "output" not in flat[0]


def test_linked_subfolders_are_followed_once_and_run_folders_left_out(tmp_path, tree):
    content, styles = tree
    extra = tmp_path / "extra"
    extra.mkdir()
    make_photo(seed=30).save(extra / "e.png")
    (content / "linked").symlink_to(extra)
    (content / "cat" / "loop").symlink_to(content)  # a loop: walked once
    out = content / "runs" / "out"  # a run kept inside the dataset
    rows = _build(tmp_path, content / "cat", styles, "--assign", "random", "--param", "size=32",
                  "--param", "iterations=1", "--mirror", name="cats.parquet")
    assert run_cli(tmp_path / "cats.parquet", out).exit_code == 0
    assert (out / "report_files").is_dir()
    result = runner.invoke(app, ["manifest", "build", "--content-dir", str(content),
                                 "--style-dir", str(styles), "--recursive", "--assign",
                                 "random", "-o", str(tmp_path / "all.parquet")],
                           terminal_width=300)
    assert result.exit_code == 0, result.output
    assert "skipped 1 run folders" in result.output and str(out) in result.output
    contents = sorted(r["content"] for r in pq.read_table(tmp_path / "all.parquet").to_pylist())
    assert contents == ["extra/e.png", "train/cat/a.jpg", "train/cat/b.png", "train/dog/c.png",
                        "train/dog/deep/d.png"]  # paths are stored resolved
    globbed = runner.invoke(app, ["manifest", "build", "--content", f"{content}/**/*.png",
                                  "--style", str(styles), "-o", str(tmp_path / "g.parquet")],
                            terminal_width=300)
    assert globbed.exit_code == 0 and "skipped 1 run folders" in globbed.output
    assert len(rows) == 2


@pytest.mark.parametrize(("args", "message"), [
    (["--param", "size="], "--param 'size=': no values; give size=v1,v2"),
    (["--param", "size"], "--param 'size': no values; give size=v1,v2"),  # not "did you mean"
    (["--param", "iteratons=5"], "--param 'iteratons=5' (did you mean 'iterations'?)"),
    (["-o", "m.csv"], "a manifest is a Parquet file"),
    (["-o", "folder"], "this is a folder"),
])
def test_build_refuses_empty_grids_and_wrong_names(tmp_path, tree, args, message):
    content, styles = tree
    (tmp_path / "folder").mkdir()
    result = runner.invoke(app, ["manifest", "build", "--content", str(content / "cat"),
                                 "--style", str(styles), "-o", str(tmp_path / "m.parquet"),
                                 *[str(tmp_path / a) if a in ("m.csv", "folder") else a
                                   for a in args]], terminal_width=300)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "m.csv").exists() and not list((tmp_path / "folder").iterdir())
