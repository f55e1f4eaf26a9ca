"""The run report: what it gathers, and the page as a person sees it in a real browser."""

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.bulk import traces
from pipeline.cli.commands import app
from pipeline.report.gather import DONE, FAILED, PENDING, gather
from pipeline.report.page import contact_sheet, varying_names
from tests.run_helpers import cell, run_cli, runner

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


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


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and "
                    "chromium-driver (make test installs them where apt-get is available)")
def test_the_report_in_a_headless_browser(dataset, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (dev extra)")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    out = tmp_path / "out"
    _grid_run(dataset, out)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        browser.get((out / "report.html").as_uri())
        images = browser.find_elements(By.TAG_NAME, "img")
        # 8 outputs, 8 intermediates, 2 contents (c2 has no preview), a style per column
        assert len(images) == 8 + 8 + 2 + 4
        for img in images:  # lazy images load once scrolled to
            browser.execute_script("arguments[0].scrollIntoView()", img)
            WebDriverWait(browser, 20).until(
                lambda b, img=img: b.execute_script("return arguments[0].complete", img))
            assert browser.execute_script("return arguments[0].naturalWidth", img) > 0, \
                img.get_attribute("src")
        failed = browser.find_elements(By.CSS_SELECTOR, ".failed")
        assert len(failed) == 4
        assert all("cannot decode image" in f.text and "c2.png" in f.text for f in failed)
        curves = browser.find_elements(By.CSS_SELECTOR, "svg.curve polyline.total")
        assert len(curves) == 8
        for curve in curves:
            box = browser.execute_script("return arguments[0].getBBox()", curve)
            assert box["width"] > 100 and box["height"] > 0
    finally:
        browser.quit()


def test_a_record_matches_its_row_as_the_job_key_does():
    from pipeline.gatys.params import StyleParams
    from pipeline.report.gather import same_result

    old_record = {k: v for k, v in StyleParams(tol=0.0).to_dict().items()
                  if k not in ("tol", "tol_window", "save_every")}  # before early stopping
    assert same_result(old_record, StyleParams(tol=0.0))
    assert not same_result(old_record, StyleParams())  # the default stops early now
    record = StyleParams(save_every=5).to_dict()
    assert same_result(record, StyleParams())  # save_every does not change the image
    assert not same_result(record, StyleParams(style_weight=7.0))
