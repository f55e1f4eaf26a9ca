"""The run report: what it gathers, and the page as a person sees it in a real browser."""

import html
import json
import math
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.bulk import traces
from pipeline.cli import app
from pipeline.report import write_report
from pipeline.report.curves import loss_svg
from pipeline.report.gather import DONE, FAILED, PENDING, gather
from pipeline.report.page import _linked_pages, _Links, _nav, contact_sheet, varying_names
from pipeline.report.thumbs import Thumbnails
from tests.conftest import make_painting, make_photo
from tests.run_helpers import cell, run_cli, runner


def _grid_run(dataset, out, *extra):
    """The 6-job dataset at two style weights (12 jobs, a parameter that varies), one content
    image broken past its header (its jobs fail in the worker), intermediate images."""
    broken = dataset.parent / "content" / "c2.png"
    broken.write_bytes(broken.read_bytes()[:200])
    rows = pq.read_table(dataset).to_pylist()
    rows = [dict(r, style_weight=w) for w in (100.0, 300.0) for r in rows]
    pq.write_table(pa.Table.from_pylist(rows), dataset)
    return run_cli(dataset, out, "--set", "save_every=3", "--trace-every", "2", *extra)


def test_the_report_places_every_row_and_its_state(dataset, tmp_path):
    out = tmp_path / "out"
    result = _grid_run(dataset, out)
    assert result.exit_code == 1, result.output  # 4 jobs failed
    report = out / "report.html"
    assert report.is_file() and "report.html" in result.output
    view = gather(out)
    assert [view.count(s) for s in (DONE, FAILED, PENDING)] == [8, 4, 0]
    columns, rows, _ = contact_sheet(view.jobs, varying_names(view.jobs))
    assert [c.name for c in rows] == ["c0.png", "c1.png", "c2.png"]
    assert [(tuple(s.stem for s in styles), dict(varying)) for styles, varying in columns] == [
        (("s0",), {"style_weight": 100.0}), (("s1",), {"style_weight": 100.0}),
        (("s0",), {"style_weight": 300.0}), (("s1",), {"style_weight": 300.0})]
    for job in view.jobs:
        if job.status == DONE:
            assert [p["iteration"] for p in job.trace] == [0, 2, 4, 6]
            assert [it for it, _ in job.intermediates] == [3]
        else:
            assert "cannot decode" in job.error and job.row in (4, 5, 10, 11)
    assert "· style_weight=300.0 ·" in report.read_text()  # a cell's hover names its setting
    status = runner.invoke(app, ["status", str(out)], terminal_width=200)
    assert "report.html" in status.output and cell(status.output, "report")


def _pages(out):
    return [out / "report.html", *sorted((out / "report_files" / "pages").glob("*.html"))]


def _targets(page):
    """Every file a page links or shows, as paths (anchors dropped)."""
    found = re.findall(r'(?:href|src|poster)="([^"#]+)', page.read_text())
    return [page.parent / unquote(html.unescape(target)) for target in found]


def test_a_large_sheet_goes_on_in_pages_that_link_each_other(dataset, tmp_path):
    out = tmp_path / "out"
    _grid_run(dataset, out)
    write_report(out, page_cells=4)  # the sheet has 4 columns: a content image a page
    pages = _pages(out)
    assert [p.name for p in pages] == ["report.html", "2.html", "3.html"]
    texts = [p.read_text() for p in pages]
    for number, (page, text) in enumerate(zip(pages, texts, strict=True), 1):
        assert f"page {number} of 3" in text
        assert re.findall(r'<div class="name">(c[0-9])</div>', text) == [f"c{number - 1}"]
        assert len(re.findall(r'id="row-', text)) == 4  # its content image's 4 jobs
        assert all(target.exists() for target in _targets(page)), page
    rows = [int(r) for text in texts for r in re.findall(r'id="row-([0-9]+)"', text)]
    assert sorted(rows) == list(range(12))
    # c2 is broken: its 4 rows failed, and the first page lists them, linked to page 3
    assert "<h2>4 failed</h2>" in texts[0]
    for row in (4, 5, 10, 11):
        assert f'href="report_files/pages/3.html#row-{row}"' in texts[0]
        assert f'id="row-{row}"' in texts[2]
    # A refresh on one page removes the pages it wrote, and only those.
    folder = out / "report_files" / "pages"
    (folder / "7.html").write_text("<html>the user's own</html>")
    (folder / "notes.html").write_text("notes")
    (folder / "8.html").symlink_to(pages[1])
    write_report(out)
    assert _pages(out) == [out / "report.html", *(folder / n for n in ("7.html", "8.html",
                                                                       "notes.html"))]
    assert (folder / "8.html").is_symlink() and not pages[1].exists()
    text = (out / "report.html").read_text()
    assert "page 1 of" not in text and len(re.findall(r'id="row-', text)) == 12


@pytest.mark.parametrize("count", [2, 30, 31, 47, 300, 1234])
def test_a_page_links_few_pages_yet_reaches_any_in_two_clicks(count):
    for number in range(1, count + 1):
        linked = _linked_pages(number, count)
        assert linked == sorted(set(linked)) and {1, number, count} <= set(linked)
        assert len(linked) <= max(30, 3 * math.isqrt(count) + 3)
        reached = set().union(*(_linked_pages(p, count) for p in linked))
        assert reached == set(range(1, count + 1))


def test_a_page_s_links_mark_the_pages_they_skip(tmp_path):
    chunks = [[Path(f"c{i}.png")] for i in range(47)]
    out = tmp_path / "out"
    link = _Links(out / "report_files" / "pages", Thumbnails(tmp_path / "thumbs"))
    nav = _nav(20, chunks, {chunk[0]: chunk[0].stem for chunk in chunks}, link, out)
    numbers = re.findall(r"(… )?<(?:a|b) [^>]*>([0-9]+)<", nav)
    assert [int(n) for _, n in numbers] == _linked_pages(20, 47)
    assert [int(n) for gap, n in numbers if gap] == [7, 14, 17, 28, 35, 42, 47]  # after skips
    assert 'title="c19">20</b>' in nav and 'href="21.html" title="c20">21</a>' in nav


def test_pending_rows_and_no_report(dataset, tmp_path):
    out = tmp_path / "out"
    result = run_cli(dataset, out, "--no-report")
    assert result.exit_code == 0 and not (out / "report.html").exists()
    rows = [dict(r, style_weight=None) for r in pq.read_table(dataset).to_pylist()]
    pq.write_table(pa.Table.from_pylist([*rows, dict(rows[0], style_weight=7.0)]), dataset)
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    view = gather(out)
    assert [view.count(s) for s in (DONE, FAILED, PENDING)] == [6, 0, 1]
    assert "row 6: pending" in (out / "report.html").read_text()
    assert runner.invoke(app, ["report", str(tmp_path)]).exit_code == 2  # not a run folder


def test_a_resumed_trace_is_read_from_its_latest_part_only(tmp_path):
    traces.append(tmp_path, {"k": [{"iteration": i, "stage": 0, "total": 1.0, "content": 1.0,
                                    "style": 1.0, "tv": 1.0} for i in (0, 2, 4)]})
    traces.append(tmp_path, {"k": [{"iteration": i, "stage": 0, "total": 2.0, "content": 1.0,
                                    "style": 1.0, "tv": 1.0} for i in (0, 2, 4, 6)]})
    (points,) = traces.read(tmp_path).values()
    assert [p["iteration"] for p in points] == [0, 2, 4, 6] and points[0]["total"] == 2.0


def test_traces_are_read_in_the_order_written_past_an_unreadable_part(tmp_path, caplog):
    """Parts are read several at a time, yet the latest part of a job wins; a damaged part
    is skipped with a warning that names it."""
    for n in range(1, 12):
        traces.append(tmp_path, {"k": [{"iteration": 0, "stage": 0, "total": float(n),
                                        "content": 1.0, "style": 1.0, "tv": 1.0}],
                                 f"j{n}": [{"iteration": 0, "stage": 0, "total": 1.0,
                                            "content": 1.0, "style": 1.0, "tv": 1.0}]})
    parts = sorted((tmp_path / "traces").glob("part-*.parquet"))
    parts[5].write_bytes(parts[5].read_bytes()[:50])
    found = traces.read(tmp_path)
    assert found["k"][0]["total"] == 11.0 and "j6" not in found and len(found) == 11
    assert f"trace part {parts[5].name} is unreadable" in caplog.text


def test_traces_read_back_as_written_from_a_part_of_images_and_videos(tmp_path):
    """A part read back gives each job's points as the engine wrote them (columns a job has
    not got stay absent from its points), though they are held as one array."""
    image = [{"iteration": i, "stage": int(i >= 4), "total": 10.0 ** -i, "content": 0.0,
              "style": 1.5 * i, "tv": 2.0} for i in (0, 2, 4, 6)]
    video = [{"iteration": 8, "stage": 0, "frame": f, "total": 3.0, "content": 1.0,
              "style": 1.0, "tv": 1.0, **({"temporal": 0.5} if f else {})} for f in range(3)]
    traces.append(tmp_path, {"image": image, "video": video, "one": image[:1]})
    found = traces.read(tmp_path)
    assert found == {"image": image, "video": video, "one": image[:1]}
    assert found["image"][-1] == image[-1] and found["video"][1:] == video[1:]
    assert found["image"].has("style") and not found["image"].has("frame")
    assert type(found["video"][0]["frame"]) is int


def test_a_loss_curve_floors_six_decades_and_marks_where_a_stage_begins(tmp_path):
    # content 0 at first (a content-initialized image), then 1e-12: under the six-decade floor
    points = [{"iteration": i, "stage": int(i >= 20), "total": 1e6 / (1 + i),
               "content": 1e-12 if i else 0.0, "style": 1e5 / (1 + i), "tv": 10.0}
              for i in range(0, 40, 10)]
    traces.append(tmp_path, {"k": points})
    svg = loss_svg(traces.read(tmp_path)["k"])
    labels = re.findall(r">1e(-?\d+)</text>", svg)
    assert labels[-1] == "6" and int(labels[0]) >= 0  # 1e0 .. 1e6 at most
    stage = re.findall(r'<line x1="([\d.]+)" x2="[\d.]+" y1="4"[^>]*stroke-dasharray', svg)
    assert stage == [f"{30 + 20 / 30 * 206:.1f}"]  # at iteration 20 of 0..30
    content = re.search(r'class="content"[^>]*points="([^"]*)"', svg).group(1).split()
    assert len(content) == 3  # the 0 is not drawn; 1e-12 sits on the bottom edge
    assert {float(p.split(",")[1]) for p in content} == {90 - 14.0}
    assert "<title>total loss 1e+06 at iteration 0 -&gt; 3.226e+04 at 30<" in svg
    traces.append(tmp_path / "one", {"k": points[:1]})
    assert loss_svg(traces.read(tmp_path / "one")["k"]) == loss_svg(None) == ""  # no line


def test_the_report_in_a_headless_browser(dataset, tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    out = tmp_path / "out"
    _grid_run(dataset, out)
    def images_shown():
        images = browser.find_elements(By.TAG_NAME, "img")
        for img in images:  # lazy images load once scrolled to
            browser.execute_script("arguments[0].scrollIntoView()", img)
            WebDriverWait(browser, 20).until(
                lambda b, img=img: b.execute_script("return arguments[0].complete", img))
            assert browser.execute_script("return arguments[0].naturalWidth", img) > 0, \
                img.get_attribute("src")
        return len(images)

    browser.get((out / "report.html").as_uri())
    # 8 outputs, 8 intermediates, 2 contents (c2 has no preview), a style per column
    assert images_shown() == 8 + 8 + 2 + 4
    failed = browser.find_elements(By.CSS_SELECTOR, ".failed")
    assert len(failed) == 4
    assert all("cannot decode image" in f.text and "c2.png" in f.text for f in failed)
    curves = browser.find_elements(By.CSS_SELECTOR, "svg.curve polyline.total")
    assert len(curves) == 8
    for curve in curves:
        box = browser.execute_script("return arguments[0].getBBox()", curve)
        assert box["width"] > 100 and box["height"] > 0
    # In pages, a content image each: the next page and its images, a failure's link
    write_report(out, page_cells=4)
    browser.get((out / "report.html").as_uri())
    browser.find_element(By.PARTIAL_LINK_TEXT, "next").click()
    assert browser.title.endswith("(page 2 of 3)")
    assert images_shown() == 4 + 4 + 1 + 4  # c1's outputs and intermediates, the styles
    browser.find_element(By.LINK_TEXT, "1").click()
    browser.find_element(By.LINK_TEXT, "row 10").click()
    assert browser.current_url.endswith("/report_files/pages/3.html#row-10")
    assert "cannot decode image" in browser.find_element(By.ID, "row-10").text


def test_names_that_look_like_markup_stay_text_in_a_browser(tmp_path, browser):
    from selenium.webdriver.common.by import By

    out, content, style = _hostile_names_run(tmp_path)
    browser.get((out / "report.html").as_uri())
    body = browser.find_element(By.TAG_NAME, "body")
    assert body.get_attribute("data-pwned") is None and browser.title != "pwned"
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "th .name")]
    assert style.stem in names and content.stem in names
    images = browser.find_elements(By.TAG_NAME, "img")
    assert len(images) == 3  # content, style, output: all thumbnails, none injected
    assert all(browser.execute_script("return arguments[0].naturalWidth", img) > 0
               for img in images)


def test_a_record_matches_its_row_as_the_job_key_does():
    from pipeline.gatys.params import StyleParams
    from pipeline.report.gather import same_result

    assert not same_result({"size": 64, "glow": 1}, StyleParams(size=64))  # unknown: not ours
    assert same_result(StyleParams(tol=0.0, tol_window=9).to_dict(), StyleParams(tol=0.0))
    assert not same_result(StyleParams(tol=0.0).to_dict(), StyleParams())
    record = StyleParams(save_every=5).to_dict()
    assert same_result(record, StyleParams())  # save_every does not change the image
    assert not same_result(record, StyleParams(style_weight=7.0))


# --- hostile names, links and stale files --------------------------------------------------

def _one_line_error(result, *words):
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert "Traceback" not in result.output, result.output
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert all(w in lines[0] for w in words), result.output


def test_the_report_deletes_nothing_through_links(dataset, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        make_photo(seed=i).save(photos / f"p{i}.jpg")
    make_photo(seed=7).save(photos / "0123456789abcdef0123.jpg")  # named like a thumbnail
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    out = tmp_path / "out"
    (out / "report_files").mkdir(parents=True)
    (out / "report_files" / "thumbs").symlink_to(photos)
    result = run_cli(dataset, out)
    assert result.exit_code == 0, result.output
    assert "no report" in result.output and "is a link" in result.output
    _one_line_error(runner.invoke(app, ["report", str(out)], terminal_width=300), "is a link")
    (out / "report_files" / "thumbs").unlink()
    (out / "report_files").rmdir()
    (out / "report_files").symlink_to(photos)  # the folder above, linked
    _one_line_error(runner.invoke(app, ["report", str(out)], terminal_width=300), "is a link")
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before
    # A folder of its own: a refresh removes its stale thumbnails and nothing else.
    (out / "report_files").unlink()
    assert runner.invoke(app, ["report", str(out)]).exit_code == 0
    thumbs = out / "report_files" / "thumbs"
    made = sorted(thumbs.iterdir())
    stale = thumbs / "ffffffffffffffffffff.jpg"
    shutil.copy(made[0], stale)                       # one of ours no longer shown
    users = [thumbs / "0123456789abcdef0123.jpg", thumbs / "notes.jpg"]
    for path in users:
        shutil.copy(photos / "p0.jpg", path)          # the user's own, named like ours or not
    (thumbs / "aaaaaaaaaaaaaaaaaaaa.jpg").symlink_to(photos / "p1.jpg")
    assert runner.invoke(app, ["report", str(out)]).exit_code == 0
    assert not stale.exists() and all(p.is_file() for p in users)
    assert (thumbs / "aaaaaaaaaaaaaaaaaaaa.jpg").is_symlink()
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before


def _hostile_names_run(tmp_path):
    """A run whose content and style files are named like markup."""
    folder = tmp_path / "hostile"
    folder.mkdir()
    content = folder / "<svg onload=document.title='pwned'>.png"
    style = folder / "<img src=x onerror=document.body.setAttribute('data-pwned',1)>.jpg"
    make_photo((48, 36)).save(content)
    make_painting().save(style)
    manifest = folder / "m.parquet"
    result = runner.invoke(app, ["manifest", "build", "--content", str(content), "--style",
                                 str(style), "-o", str(manifest)], terminal_width=300)
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    assert run_cli(manifest, out).exit_code == 0
    return out, content, style


def test_the_report_escapes_every_name(tmp_path):
    out, _, _ = _hostile_names_run(tmp_path)
    page = (out / "report.html").read_text()
    assert "<img src=x" not in page and "<svg onload" not in page
    assert "&lt;img src=x onerror=" in page and "Content-Security-Policy" in page



# --- the report and status agree, and show what is on disk ----------------------------------

def _counts(out):
    view = gather(out)
    status = runner.invoke(app, ["status", str(out)], terminal_width=300)
    assert status.exit_code == 0, status.output
    report = [view.count(s) for s in (DONE, FAILED, PENDING)]
    assert report == [int(cell(status.output, k)) for k in ("done", "failed", "pending")]
    return report, view, status.output


def test_refused_rows_are_failed_with_their_error_in_report_and_status(dataset, tmp_path):
    rows = pq.read_table(dataset).to_pylist()
    rows[1]["content"] = "content/missing.png"
    rows[4]["style"] = "style/gone.png"
    pq.write_table(pa.Table.from_pylist(rows), dataset)
    out = tmp_path / "out"
    result = run_cli(dataset, out, "--skip-bad-rows")
    assert result.exit_code == 1 and cell(result.output, "failed") == "2", result.output
    counts, view, status = _counts(out)
    assert counts == [4, 2, 0]
    failed = {j.row: j.error for j in view.jobs if j.status == FAILED}
    assert "missing.png" in failed[1] and "gone.png" in failed[4]
    assert "missing.png" in status and "gone.png" in status
    assert "missing.png" in (out / "report.html").read_text()


def test_deleted_outputs_are_pending_in_report_and_status(dataset, tmp_path):
    out = tmp_path / "out"
    assert run_cli(dataset, out).exit_code == 0
    outputs = sorted(out.glob("*.png"))
    outputs[0].unlink()
    outputs[1].write_bytes(b"not the job's image any more")
    assert _counts(out)[0] == [4, 0, 2]
    assert runner.invoke(app, ["report", str(out)]).exit_code == 0
    assert "no preview" not in (out / "report.html").read_text()


def test_only_this_job_s_intermediates_are_shown(dataset, tmp_path):
    rows = [dict(r, output="a.png") for r in pq.read_table(dataset).to_pylist()[:1]]
    pq.write_table(pa.Table.from_pylist(rows), dataset)
    out = tmp_path / "out"
    assert run_cli(dataset, out, "--set", "iterations=8", "--set", "save_every=4").exit_code == 0
    assert run_cli(dataset, out, "--set", "save_every=3").exit_code == 0  # 6 iterations
    assert (out / "a.iter0004.png").is_file()  # the earlier job's, left as it was
    (job,) = gather(out).jobs
    assert [it for it, _ in job.intermediates] == [3]
    for _ in range(2):  # the keys read once are kept (report_files/thumbs/keys.json)
        page = (out / "report.html").read_text()
        assert "iteration 3" in page and "iteration 4" not in page
        assert runner.invoke(app, ["report", str(out)]).exit_code == 0
    assert len(json.loads((out / "report_files" / "thumbs" / "keys.json").read_text())) == 2


def test_styles_with_the_same_name_get_their_own_columns(dataset, tmp_path):
    styles = dataset.parent / "style"
    for folder in ("x", "y"):
        (styles / folder).mkdir()
    make_painting(seed=1).save(styles / "x" / "art.png")
    make_painting(seed=2).save(styles / "y" / "art.png")
    manifest = tmp_path / "m.parquet"
    result = runner.invoke(app, ["manifest", "build", "--content", str(dataset.parent /
                                                                        "content" / "c0.png"),
                                 "--style", str(styles / "x" / "art.png"), "--style",
                                 str(styles / "y" / "art.png"), "-o", str(manifest)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    assert run_cli(manifest, out).exit_code == 0
    view = gather(out)
    columns, _, _ = contact_sheet(view.jobs, varying_names(view.jobs))
    assert len(columns) == 2
    page = (out / "report.html").read_text()
    assert ">x_art<" in page and ">y_art<" in page


@pytest.mark.parametrize("text", ["[1, 2]", "null", '{"manifest": 5}', '"run"'])
def test_a_run_json_that_is_not_a_run_s_is_one_line(dataset, tmp_path, text):
    out = tmp_path / "out"
    assert run_cli(dataset, out).exit_code == 0
    (out / "run.json").write_text(text)
    _one_line_error(runner.invoke(app, ["report", str(out)], terminal_width=300),
                    "run.json is unreadable")
    status = runner.invoke(app, ["status", str(out)], terminal_width=300)
    assert status.exit_code == 0 and "Traceback" not in status.output
    assert "run.json is unreadable" in status.output and cell(status.output, "done") == "6"


def test_a_page_finds_each_thumbnail_once(tmp_path, monkeypatch):
    """make_all makes them on every core; the page then asks again for each one it shows,
    and must get those answers, not stat, resolve and hash every file a second time."""
    sources = []
    for seed in range(3):
        sources.append(tmp_path / f"p{seed}.png")
        make_photo(seed=seed).save(sources[-1])
    thumbs = Thumbnails(tmp_path / "thumbs")
    (tmp_path / "thumbs").mkdir()
    found, made = [], Thumbnails._thumbnail
    monkeypatch.setattr(Thumbnails, "_thumbnail",
                        lambda self, source: found.append(source) or made(self, source))
    advanced = []
    thumbs.make_all([*sources, sources[0], tmp_path / "missing.png"], advanced.append)
    assert advanced == [1, 1, 1, 1]  # each distinct source counted once, made or not
    shown = [thumbs(s) for s in [*sources, tmp_path / "missing.png"]]
    assert sorted(found) == sorted([*sources, tmp_path / "missing.png"])
    assert all(t is not None and t.is_file() for t in shown[:3]) and shown[3] is None


def test_a_thumbnail_a_crash_left_empty_is_made_again(tmp_path):
    """Thumbnails are written without an fsync (a report makes thousands): a crash may leave
    one empty under its name, and the next report makes it again."""
    source = tmp_path / "p.png"
    make_photo().save(source)
    (tmp_path / "thumbs").mkdir()
    made = Thumbnails(tmp_path / "thumbs")(source)
    whole = made.read_bytes()
    made.write_bytes(b"")
    assert Thumbnails(tmp_path / "thumbs")(source) == made and made.read_bytes() == whole


def test_a_report_of_a_folder_that_is_no_run_s_is_refused_and_makes_nothing(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for where in (folder, tmp_path / "nowhere"):
        result = runner.invoke(app, ["report", str(where)])
        assert result.exit_code == 2, result.output
        assert "no run.json here" in result.output
        assert len(result.output.strip().splitlines()) == 1
    assert not list(folder.iterdir()) and not (tmp_path / "nowhere").exists()


def test_two_reports_at_once_take_turns_and_the_newer_stands(dataset, tmp_path, monkeypatch):
    """A refresh by hand while the run writes its own (its last job just done): the two take
    turns, each reading the run when its turn comes. At once, each removed the thumbnails
    the other had made for jobs it did not see done, and the older page could be written last."""
    import threading

    from pipeline.report import page

    out = tmp_path / "out"
    assert run_cli(dataset, out, "--no-report").exit_code == 0
    last = sorted(out.glob("*.png"))[0]
    written = last.read_bytes()
    last.unlink()  # not done yet when the first report reads the run
    first_paused, go_on, second_waits = threading.Event(), threading.Event(), threading.Event()
    make_all = Thumbnails.make_all

    def pausing(self, sources, advance=lambda n: None):
        if not first_paused.is_set():
            first_paused.set()
            go_on.wait(300)
        make_all(self, sources, advance)

    class Said:
        @staticmethod
        def info(*args):
            second_waits.set()

    monkeypatch.setattr(Thumbnails, "make_all", pausing)
    monkeypatch.setattr(page, "log", Said)
    first = threading.Thread(target=write_report, args=(out,))
    first.start()
    assert first_paused.wait(300)
    last.write_bytes(written)  # the run's last job is done: its own report starts
    second = threading.Thread(target=write_report, args=(out,))
    second.start()
    waited = second_waits.wait(300)
    go_on.set()
    first.join(), second.join()
    assert waited, "the second report did not wait for the first"
    assert [gather(out).count(s) for s in (DONE, FAILED, PENDING)] == [6, 0, 0]
    text = (out / "report.html").read_text()
    assert not re.search(r"row \d+: pending", text)  # the older page, had it been written last
    thumbs = re.findall(r"report_files/thumbs/[0-9a-f]{20}\.jpg", text)
    assert thumbs and all((out / t).is_file() for t in thumbs)
