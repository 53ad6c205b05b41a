"""index.html in a real headless browser (Debian's chromium driven by playwright): the plots render with the
expected points, hovering shows the architecture, and the console stays free of errors."""

from pathlib import Path

import pytest

from blocksearch.report.render import write_report
from tests.conftest import CASE, make_study

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]
PLOTS = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(gd => ({
    id: gd.id,
    names: gd._fullData.map(t => t.name),
    points: gd._fullData.map(t => t.x.length),
    drawn: Array.from(gd.querySelectorAll('.scatterlayer .trace')).map(tr => tr.querySelectorAll('path.point').length),
    webgl: !!gd.querySelector('.gl-container canvas'),
}))"""
HOVER = """() => { const gd = document.getElementById('plot-fid-params');
    Plotly.Fx.hover(gd, [{curveNumber: 0, pointNumber: 0}]);
    return gd.querySelector('.hoverlayer').textContent; }"""


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (/usr/bin/chromium; .ci/run: apt-get install -y chromium)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, timeout=60_000)
        yield b
        b.close()


def open_page(browser, html: Path):
    page, problems = browser.new_page(), []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(html.as_uri(), wait_until="load", timeout=60_000)
    return page, problems


def test_report_renders_in_chromium(browser, tmp_path):
    out = write_report("unet_blocks-toy", make_study(tmp_path), tmp_path / "report")
    page, problems = open_page(browser, out / "index.html")
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 3", timeout=30_000)
    plots = page.evaluate(PLOTS)
    assert [p["id"] for p in plots] == ["plot-fid-params", "plot-fid-latency_ms", "plot-3d", "plot-alignment"]
    done = sum(state == "COMPLETE" for state, *_ in CASE)
    alignment = plots.pop()  # every completed trial of CASE passes the constraints: all feasible, no crosses
    assert alignment["names"] == ["feasible", "infeasible"] and alignment["points"] == [done, 0]
    assert alignment["drawn"][0] == done and sum(alignment["drawn"]) == done  # plotly draws no group for an empty trace
    for plot in plots:  # front 3 (trials 2, 3, 1), dominated 2, reference designs 2 (bk_base, bk_small)
        assert plot["names"] == ["Pareto front", "dominated", "BK-SDM reference designs"]
        assert plot["points"] == [3, 2, 2] and sum(plot["points"][:2]) == done
    for plot in plots[:2]:  # SVG scatter: one drawn marker per point
        assert plot["drawn"] == [3, 2, 2]
    assert plots[2]["webgl"]  # the 3-objective view drew into a WebGL canvas
    assert "down_blocks.0: 1 of 2 layers" in page.evaluate(HOVER)  # trial 2, the lowest-FID front point
    assert problems == []
    page.close()


def test_empty_report_renders_in_chromium(browser, tmp_path):
    url = make_study(tmp_path, case=[c for c in CASE if c[0] != "COMPLETE"])
    page, problems = open_page(browser, write_report("unet_blocks-toy", url, tmp_path / "r") / "index.html")
    assert "No completed trials yet" in page.inner_text("#no-trials")
    assert page.evaluate("document.querySelectorAll('.js-plotly-plot').length") == 0 and problems == []
    page.close()
