"""lorascope report pages in a real browser (headless Chromium over the DevTools protocol): no
console errors, no network requests, every section and plot rendered with a size, a screenshot
that is not blank, readable in a narrow window, printable, interactive within a second.

Chromium is Debian's `chromium` (.ci/run installs it).  Without it these tests are skipped, unless
LORASCOPE_REQUIRE_BROWSER=1 (set by .ci/run), where a missing browser is a failure.
"""

from __future__ import annotations

import io
import json
import os

import pytest
from headless import Browser, find_browser
from report_inputs import audit_doc, bench_dir, gid_json, run_log, study_dir, unet_names
from test_report_trial import trial_doc

from lorascope.cli.main import main

pytestmark = pytest.mark.slow  # the fast lane (make test-fast) skips it

EXE = find_browser()
if EXE is None:
    if os.environ.get("LORASCOPE_REQUIRE_BROWSER"):
        raise RuntimeError(
            "LORASCOPE_REQUIRE_BROWSER is set but no chromium was found (apt-get install chromium)"
        )
    pytest.skip("no headless chromium (apt-get install chromium)", allow_module_level=True)

KINDS = ["audit", "merge_audit", "run", "bench", "study", "gid", "gid_trial"]


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """(page with every kind of section, a 224-layer adapter's page, a Stable Diffusion UNet's, a
    120-block adapter's)."""
    tmp = tmp_path_factory.mktemp("report")
    import numpy as np
    from conftest import layer_names, peft_config, random_factors, write_peft

    rng = np.random.default_rng(0)
    names = layer_names(3)
    a = write_peft(
        tmp / "a", {n: random_factors(rng, 24, 16, 8, decay=0.7) for n in names}, config=peft_config(r=8)
    )
    b = write_peft(
        tmp / "b", {n: random_factors(rng, 24, 16, 8, decay=0.7) for n in names}, config=peft_config(r=8)
    )
    assert main(["merge-audit", str(a), str(b), "--json", "-q", "-o", str(tmp / "ma.json")]) == 0
    inputs = [
        a,
        tmp / "ma.json",
        run_log(tmp / "run.jsonl"),
        bench_dir(tmp / "bench"),
        study_dir(tmp / "study"),
        gid_json(tmp / "gid.json"),
        tmp / "summary.json",
    ]
    (tmp / "summary.json").write_text(json.dumps(trial_doc()))
    assert main(["report", *map(str, inputs), "-o", str(tmp / "all.html")]) == 0
    (tmp / "big.json").write_text(json.dumps(audit_doc(n_blocks=32, r=64)))
    assert main(["report", str(tmp / "big.json"), "-o", str(tmp / "big.html")]) == 0
    (tmp / "unet.json").write_text(json.dumps(audit_doc(r=8, names=unet_names())))
    assert main(["report", str(tmp / "unet.json"), "-o", str(tmp / "unet.html")]) == 0
    (tmp / "tall.json").write_text(json.dumps(audit_doc(n_blocks=120, r=4)))  # thinned row labels
    assert main(["report", str(tmp / "tall.json"), "-o", str(tmp / "tall.html")]) == 0
    return tmp / "all.html", tmp / "big.html", tmp / "unet.html", tmp / "tall.html"


@pytest.fixture(scope="module")
def browser():
    b = Browser(EXE)
    b.open_page(1200, 900)
    yield b
    b.close()


def _open(browser, path, width=1200):
    browser.resize(width, 900)
    browser.navigate(path.as_uri())
    return path.as_uri()


def test_loads_without_errors_or_requests_and_shows_every_section(browser, pages):
    url = _open(browser, pages[0])
    assert browser.problems() == []
    # the page itself; matplotlib's heatmap images are data: URLs inside the SVG, not requests out
    assert [u for u in browser.requests() if u != url and not u.startswith("data:")] == []
    assert (
        browser.evaluate("[...document.querySelectorAll('section.input')].map(s => s.dataset.kind)") == KINDS
    )
    sizes = browser.evaluate(
        "[...document.querySelectorAll('figure.plot svg')].map(s => {const r = s.getBoundingClientRect();"
        " return [r.width, r.height]})"
    )
    assert len(sizes) == 11 and all(w > 300 and h > 100 for w, h in sizes)
    assert browser.evaluate("document.documentElement.dataset.ready") == "1"


def _blank(png: bytes) -> bool:
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("L")
    hist = img.histogram()
    dark = sum(hist[:200])  # pixels clearly darker than the white background
    return dark < 0.01 * img.width * img.height or len([n for n in hist if n]) < 16


def test_screenshot_is_not_blank(browser, pages):
    _open(browser, pages[0])
    png = browser.screenshot()
    assert png.startswith(b"\x89PNG") and not _blank(png)
    browser.evaluate("document.getElementById('s1').scrollIntoView()")
    assert not _blank(browser.screenshot())


def test_224_layer_page_is_interactive_within_a_second(browser, pages):
    _open(browser, pages[1])
    assert browser.problems() == []
    nav = browser.evaluate("performance.getEntriesByType('navigation')[0].toJSON()")
    assert 0 < nav["domInteractive"] <= 1000, nav
    assert browser.evaluate("document.querySelectorAll('.spectra g[id^=sv]').length") == 224
    assert browser.evaluate("document.querySelector('g#sv5 > title').textContent").startswith(
        "model.layers.0."
    )


def test_narrow_window_has_no_horizontal_scroll(browser, pages):
    """The page never scrolls sideways; a plot wider than the window scrolls inside its frame."""
    _open(browser, pages[0], width=360)
    assert browser.evaluate("document.documentElement.scrollWidth") <= 360
    widths = browser.evaluate(
        "[...document.querySelectorAll('figure.plot .svgwrap')].map(s => s.getBoundingClientRect().width)"
    )
    assert len(widths) == 11 and all(0 < w <= 360 for w in widths)


# Every tick label's box on screen, per axis: [[axis #, label, left, top, right, bottom], ...]
TICK_BOXES = """[...document.querySelectorAll('figure.plot svg g.axis')].flatMap((axis, i) =>
  [...axis.querySelectorAll('g.xtick text, g.ytick text')].map(t => {
    const r = t.getBoundingClientRect(); return [i, t.textContent, r.left, r.top, r.right, r.bottom]})
  .filter(b => b[4] > b[2] && b[5] > b[3]))"""


def overlapping(boxes: list[list]) -> list[tuple[str, str]]:
    """Pairs of tick labels on one axis whose boxes overlap by more than half a pixel."""
    out = []
    for k, a in enumerate(boxes):
        for b in boxes[k + 1 :]:
            if a[0] != b[0]:
                continue
            dx = min(a[4], b[4]) - max(a[2], b[2])
            dy = min(a[5], b[5]) - max(a[3], b[3])
            if dx > 0.5 and dy > 0.5:
                out.append((a[1], b[1]))
    return out


@pytest.mark.parametrize("width", [1280, 360])
def test_no_two_tick_labels_of_an_axis_overlap(browser, pages, width):
    for page in pages:
        _open(browser, page, width=width)
        boxes = browser.evaluate(TICK_BOXES)
        assert len(boxes) > 20, page.name
        assert overlapping(boxes) == [], page.name


MIN_PX = 9.0
# every text of every plot: [its text, its rendered font size in CSS pixels]
FONT_SIZES = """[...document.querySelectorAll('figure.plot svg text')].filter(t => t.textContent.trim())
  .map(t => {const m = t.getScreenCTM();
    return [t.textContent, parseFloat(getComputedStyle(t).fontSize) * Math.hypot(m.a, m.b)]})"""


@pytest.mark.parametrize("width", [360, 1280])
def test_plot_text_is_readable_at_any_width(browser, pages, width):
    for page in pages:
        _open(browser, page, width=width)
        sizes = browser.evaluate(FONT_SIZES)
        assert len(sizes) > 20
        small = [(text, round(px, 1)) for text, px in sizes if px < MIN_PX]
        assert small == [], page.name


# [legend box, [every plotting area's box]] per plot: a legend must not cover a plotting area
LEGENDS = """[...document.querySelectorAll('figure.plot svg')].flatMap(svg => {
  const box = e => {const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]};
  const areas = [...svg.querySelectorAll('g.axes')].map(a => box(a.querySelector(':scope > g')));
  return [...svg.querySelectorAll('g.legend')].map(l => [box(l), areas])})"""


def test_legends_sit_outside_the_plotting_areas(browser, pages):
    _open(browser, pages[0])
    legends = browser.evaluate(LEGENDS)
    assert len(legends) >= 8  # audit ×2, run ×4 panels, bench, gid, merge, fair test ×2
    for legend, areas in legends:
        for area in areas:
            dx = min(legend[2], area[2]) - max(legend[0], area[0])
            dy = min(legend[3], area[3]) - max(legend[1], area[1])
            assert dx <= 0.5 or dy <= 0.5, (legend, area)


def test_embedded_json_is_shown_on_request_and_equals_the_data(browser, pages):
    _open(browser, pages[0])
    browser.evaluate("document.querySelector('button.showjson[data-src=data-3]').click()")
    shown = browser.evaluate("JSON.parse(document.getElementById('pre-3').textContent)")
    assert shown == json.loads(browser.evaluate("document.getElementById('data-3').textContent"))
    assert shown["run_id"] == "run-1" and browser.evaluate("document.getElementById('pre-3').hidden") is False


def test_prints_with_every_table_open(browser, pages):
    _open(browser, pages[0])
    assert browser.evaluate("[...document.querySelectorAll('details')].some(d => !d.open)")
    browser.evaluate("dispatchEvent(new Event('beforeprint'))")
    assert browser.evaluate("[...document.querySelectorAll('details')].every(d => d.open)")
    pdf = browser.pdf()
    assert pdf.startswith(b"%PDF") and len(pdf) > 20_000
    assert browser.problems() == []


def test_hovering_a_spectrum_highlights_it(browser, pages):
    _open(browser, pages[1])
    path = "document.querySelector('g#sv7 path')"
    before = browser.evaluate(f"getComputedStyle({path}).strokeWidth")
    browser.send("DOM.enable")
    browser.send("CSS.enable")
    root = browser.send("DOM.getDocument")["root"]["nodeId"]
    node = browser.send("DOM.querySelector", nodeId=root, selector="g#sv7")["nodeId"]
    browser.send("CSS.forcePseudoState", nodeId=node, forcedPseudoClasses=["hover"])
    assert browser.evaluate(f"getComputedStyle({path}).strokeWidth") == "3px" != before
    assert browser.evaluate("getComputedStyle(document.querySelector('g#sv8 path')).strokeWidth") == before
