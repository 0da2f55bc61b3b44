"""The report's plots and tables say what the CLI says, in the order people read: natural layer
order, parameter counts as counts and reductions as percentages, integer axes with integer ticks,
log axes with labels, truthful axis titles, each alert once; and the command's own messages (a
hint that fits `report`, no folder created for -o, the page's path and size on success).

Expectations are literal strings or computed here from the inputs, never with the report's own
formatting code.  What only a browser can measure (overlapping labels, rendered font sizes) is in
test_report_browser.py."""

from __future__ import annotations

import json
import math
import os
import re

import pytest
from report_inputs import audit_doc, bench_dir, gid_json, unet_names
from test_report import Tables, report_cli

from lorascope.report import build_report
from lorascope.report.run_section import merged_alerts

SVG = re.compile(r'<svg role="img"[^>]*class="([a-z]+)"[^>]*>(.*?)</svg>', re.S)
TICK = re.compile(r'<g class="(xtick|ytick)">.*?<text[^>]*>([^<]*)</text>', re.S)
AXIS = re.compile(r'<g class="axis">(.*?)(?=<g class="axis">|<g class="axes">|$)', re.S)


def svgs(page: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for cls, body in SVG.findall(page):
        out.setdefault(cls, []).append(body)
    return out


def axes_ticks(svg: str) -> list[tuple[str, list[str]]]:
    """[(x or y, its tick labels)] for every axis of one SVG, in drawing order."""
    out = []
    for axis in AXIS.findall(svg):
        ticks = TICK.findall(axis)
        if ticks:
            out.append((ticks[0][0][0], [label for _, label in ticks]))
    return out


def _write(tmp_path, name, doc):
    f = tmp_path / name
    f.write_text(json.dumps(doc))
    return str(f)


def test_layers_are_shown_in_natural_order(tmp_path):
    doc = audit_doc(n_blocks=11, r=4)
    doc["layers"].reverse()  # the file's order: block 10 first, 1 after 10 lexicographically
    page = build_report([_write(tmp_path, "a.json", doc)]).html
    names = [row[1] for row in Tables(page).tables["Ranks per layer"]]
    blocks = [n.split(".")[2] for n in names]
    assert blocks == [str(b) for b in range(11) for _ in range(7)]
    assert names[:2] == ["model.layers.0.mlp.down_proj", "model.layers.0.mlp.gate_proj"]
    heat = svgs(page)["heatmap"][0]
    rows = next(labels for which, labels in axes_ticks(heat) if which == "y")
    assert rows == [f"model.layers.{b}" for b in range(11)]


@pytest.mark.slow
def test_heatmap_rows_that_cannot_all_be_labelled_are_labelled_every_kth(tmp_path):
    page = build_report([_write(tmp_path, "a.json", audit_doc(n_blocks=120, r=4))]).html
    rows = next(labels for which, labels in axes_ticks(svgs(page)["heatmap"][0]) if which == "y")
    # 120 rows of 12.8 pt in at most 16 inches: every 2nd block named, in natural order
    assert rows == [f"model.layers.{b}" for b in range(0, 120, 2)]
    assert "every label shown where they fit, else every k-th (the table names every cell)" in page


def test_gid_and_merge_tables_in_natural_order(tmp_path):
    layers = [{"name": f"m.layers.{i}.q", "gid": 5.0 + i} for i in (10, 2, 1)]
    gid = _write(tmp_path, "gid.json", {"schema": "lorascope.gid/v1", "rank": 8, "layers": layers})
    table = Tables(build_report([gid]).html).tables["GID per layer"]
    assert [row[1] for row in table] == ["m.layers.1.q", "m.layers.2.q", "m.layers.10.q"]
    layer = {"verdict": "SAFE", "overlap": 0.2, "agreement": 0.5, "imbalance": 1.2}
    doc = {"schema": "lorascope.merge_audit/v1", "summary": {}}
    doc["layers"] = [dict(layer, name=f"m.layers.{i}.q") for i in (10, 2, 1)]
    table = Tables(build_report([_write(tmp_path, "ma.json", doc)]).html).tables["Per-layer merge audit"]
    assert [row[1] for row in table] == ["m.layers.1.q", "m.layers.2.q", "m.layers.10.q"]


def test_unet_heatmap_reads_modules_as_rows_in_natural_order(tmp_path):
    page = build_report([_write(tmp_path, "unet.json", audit_doc(r=8, names=unet_names()))]).html
    heat = svgs(page)["heatmap"][0]
    (x, cols), (y, rows), *_ = axes_ticks(heat)
    assert (x, y) == ("x", "y")
    # 7 blocks as columns (the SD 1.5 order: down, mid, up), 48 module paths as rows
    assert cols == [
        "unet.down_blocks.0", "unet.down_blocks.1", "unet.down_blocks.2", "unet.mid_block.attentions.0",
        "unet.up_blocks.1", "unet.up_blocks.2", "unet.up_blocks.3",
    ]  # fmt: skip
    assert len(rows) == 48 and rows[:3] == ["attentions.0.proj_in", "attentions.0.proj_out",
                                             "attentions.0.transformer_blocks.0.attn1.to_k"]  # fmt: skip
    assert 'rotate(-90)">unet.down_blocks.0<' in heat and "rotate(-40" not in heat  # upright, no slant


def test_bench_counts_and_reductions_read_as_the_cli_prints_them(tmp_path):
    page = build_report([str(bench_dir(tmp_path / "b"))]).html
    assert "e+05" not in page and "e+04" not in page
    rows = Tables(page).tables["Variants per seed"]
    assert rows[0] == ["42", "uniform_median", "8", "110592", "0.79", "-0.01", "87.5 %", "PASS"]
    assert rows[2] == ["42", "uniform_p90", "32", "442368", "0.76", "-0.04", "50.0 %", "FAIL"]
    bench = svgs(page)["bench"][0]
    ticks = [labels for which, labels in axes_ticks(bench) if which == "x"]
    assert ticks and all(len(t) >= 3 for t in ticks)  # 110592…884736: a linear axis, ≥ 3 labels
    assert ticks[0][:3] == ["200k", "400k", "600k"]
    assert "#f0e442" not in bench.lower()  # no yellow marker on white
    assert "its parameter reduction</dt><dd>87.5 %</dd>" in page


def test_integer_axes_have_integer_ticks(tmp_path):
    doc = audit_doc(n_blocks=1, r=4)
    page = build_report([_write(tmp_path, "a.json", doc), str(gid_json(tmp_path / "g.json", n=3))]).html
    figs = svgs(page)
    for cls, which in (("spectra", "x"), ("ranks", "x"), ("ranks", "y"), ("gid", "x")):
        labels = [t for w, ts in axes_ticks(figs[cls][0]) if w == which for t in ts]
        assert labels and all(re.fullmatch(r"−?\d+", t) for t in labels), (cls, which, labels)


def test_gid_axis_says_what_the_bars_are(tmp_path):
    page = build_report([str(gid_json(tmp_path / "g.json"))]).html
    gid = svgs(page)["gid"][0]
    assert "GID / rank" not in gid and "dimension: GID (bars), r (line)" in gid


def test_small_range_log_axis_gets_enough_labels(tmp_path):
    layer = {"verdict": "SAFE", "overlap": 0.2, "agreement": 0.5, "conflict_share": 0.0}
    layers = [dict(layer, name=f"l.{i}", imbalance=1.0 + i / 10) for i in range(6)]
    doc = {"schema": "lorascope.merge_audit/v1", "summary": {}, "layers": layers}
    page = build_report([_write(tmp_path, "ma.json", doc)]).html
    imbalance = [labels for which, labels in axes_ticks(svgs(page)["merge"][0]) if which == "y"][3]
    assert len(imbalance) >= 3 and imbalance != ["1"]


def test_every_svg_keeps_a_readable_minimum_width(tmp_path):
    page = build_report([str(bench_dir(tmp_path / "b")), str(gid_json(tmp_path / "g.json"))]).html
    widths = re.findall(r'<svg role="img"[^>]*style="min-width:(\d+)px"', page)
    # 8-inch figures: 8 pt text stays 9 px when 576 pt are drawn in ≥ 648 px (+ 8 to spare)
    assert widths == ["656", "656"]


def test_an_alert_logged_live_and_found_again_is_shown_once():
    found = [
        {"code": "GRAD_SPIKE", "severity": "warning", "message": "spike at 65", "step": 65},
        {"code": "LOW_UTILISATION", "severity": "info", "message": "low (offline)", "step": 150},
        {"code": "GRAD_SPIKE", "severity": "warning", "message": "spike at 300", "step": 300},
    ]
    logged = [
        {"code": "LOW_UTILISATION", "severity": "info", "message": "low (live)", "step": 50},
        {"code": "GRAD_SPIKE", "severity": "warning", "message": "spike at 65", "step": 75},
        {"code": "USER_NOTE", "severity": "info", "message": "note", "step": 80},
    ]
    assert merged_alerts(found, logged) == [
        {"severity": "info", "code": "LOW_UTILISATION", "message": "low (live)", "step": 50,
         "steps": [50, 150], "source": "log + monitor"},
        {"severity": "warning", "code": "GRAD_SPIKE", "message": "spike at 65", "step": 65,
         "steps": [65, 75], "source": "log + monitor"},
        {"severity": "info", "code": "USER_NOTE", "message": "note", "step": 80, "source": "log"},
        {"code": "GRAD_SPIKE", "severity": "warning", "message": "spike at 300", "step": 300,
         "source": "monitor"},
    ]  # fmt: skip


EXAMPLE_RUN = os.path.join(os.path.dirname(__file__), "..", "examples", "runs", "minilm-rt", "run.jsonl")


@pytest.mark.skipif(not os.path.exists(EXAMPLE_RUN), reason="example run log not present")
def test_the_example_runs_two_alerts_are_two_rows():
    rows = Tables(build_report([EXAMPLE_RUN]).html).tables["Alerts"]
    assert [(r[0], r[1], r[3], r[5]) for r in rows] == [
        ("A1", "50", "LOW_UTILISATION", "log + monitor"),
        ("A2", "65", "GRAD_SPIKE", "log + monitor"),
    ]


HINT = (
    "(hint: report takes adapters, audit and merge-audit JSON, run logs (.jsonl), bench and study folders, "
    "gid.json, regime.json, and the fair test's summary.json (schema lorascope.gid-trial/v1))"
)


def test_inputs_report_cannot_read_get_a_hint_for_report(tmp_path, capsys):
    (tmp_path / "img.png").write_bytes(b"\x89PNG\r\n")
    (tmp_path / "empty").mkdir()
    unfinished = tmp_path / "bench"
    (unfinished / "seed_42").mkdir(parents=True)
    (unfinished / "bench_config.json").write_text("{}")
    (unfinished / "seed_42" / "stage.json").write_text("{}")
    for path in (tmp_path / "img.png", tmp_path / "empty"):
        code, _, err = report_cli(capsys, path, "-o", tmp_path / "r.html")
        assert code == 2 and "--format" not in err and err.endswith(f"{HINT}\n")
        assert err.startswith(f"lorascope: error: {path}: unknown adapter format")
    code, _, err = report_cli(capsys, unfinished, "-o", tmp_path / "r.html")
    assert (code, err) == (
        2,
        f"lorascope: error: {unfinished}: a bench folder with no finished seed yet (no */bench.json, "
        "no bench_aggregate.json) (hint: report it once a seed has finished; `lorascope bench CONFIG "
        "--out DIR --resume` continues a stopped bench)\n",
    )
    assert not (tmp_path / "r.html").exists()


def test_output_in_a_missing_folder_is_refused_and_creates_nothing(tmp_path, capsys):
    gid = gid_json(tmp_path / "gid.json")
    out = tmp_path / "no" / "such" / "r.html"
    code, _, err = report_cli(capsys, gid, "-o", out)
    assert (code, err) == (
        2,
        f"lorascope: error: {out}: the folder {out.parent} does not exist; create it first\n",
    )
    assert not (tmp_path / "no").exists()


def test_success_prints_the_path_and_size_unless_quiet(tmp_path, capsys):
    gid = gid_json(tmp_path / "gid.json")
    out = tmp_path / "r.html"
    code, stdout, err = report_cli(capsys, gid, "-o", out)
    size = out.stat().st_size
    assert 10_000 < size < 1_000_000  # so the unit is kB
    assert (code, stdout, err) == (0, "", f"wrote {out} ({size / 1000:.1f} kB)\n")
    code, stdout, err = report_cli(capsys, gid, "-o", tmp_path / "q.html", "-q")
    assert (code, stdout, err) == (0, "", "") and (tmp_path / "q.html").exists()


# The audit's figures are SVG written by lorascope.report.svg: a tick is a <g class="xtick"> (or
# ytick) holding its grid line, its mark (`M x y v3.5` down from the x axis, `M x y h-3.5` left of
# the y axis) and its label.
XMARK = re.compile(r'<g class="xtick">(?:<path d="M[^"]*V[^"]*"[^>]*/>)?<path d="M(\S+) \S+v3\.5"[^>]*/>'
                   r"<text[^>]*>([^<]*)</text>")  # fmt: skip
YMARK = re.compile(r'<g class="ytick">(?:<path d="M[^"]*H[^"]*"[^>]*/>)?<path d="M\S+ (\S+)h-3\.5"[^>]*/>'
                   r"<text[^>]*>([^<]*)</text>")  # fmt: skip


def axis_map(marks: list[tuple[str, str]], log: bool = False):
    """value(position): the inverse of an axis' scale, fitted on its first and last tick marks."""
    (p0, v0), (p1, v1) = [(float(p), float(v.replace("−", "-"))) for p, v in (marks[0], marks[-1])]
    f = math.log10 if log else (lambda v: v)
    slope = (f(v1) - f(v0)) / (p1 - p0)
    return lambda p: 10 ** (f(v0) + (p - p0) * slope) if log else f(v0) + (p - p0) * slope


def test_spectra_lines_are_the_jsons_normalised_singular_values(tmp_path):
    doc = audit_doc(n_blocks=2, r=32)
    page = build_report([_write(tmp_path, "a.json", doc)]).html
    spectra = svgs(page)["spectra"][0]
    x_of, y_of = axis_map(XMARK.findall(spectra)), axis_map(YMARK.findall(spectra), log=True)
    lines = re.findall(r'<g id="sv\d+"><title>([^ ]+) [^<]*</title><path d="M([^"]+)"', spectra)
    layers = {x["name"]: x["singular_values"] for x in doc["layers"]}
    assert sorted(name for name, _ in lines) == sorted(layers) and len(lines) == 14
    for name, d in lines:
        coords = [float(c) for c in d.split()]
        points = [(x_of(x), y_of(y)) for x, y in zip(coords[::2], coords[1::2], strict=True)]
        sv = layers[name]
        assert [round(i) for i, _ in points] == list(range(1, 33))
        assert [v for _, v in points] == pytest.approx([s / sv[0] for s in sv], rel=3e-3)


def test_rank_markers_are_the_tables_ranks_one_element_per_series(tmp_path):
    page = build_report([_write(tmp_path, "a.json", audit_doc(n_blocks=32, r=64))]).html
    ranks, spectra = svgs(page)["ranks"][0], svgs(page)["spectra"][0]
    # 224 layers: one <path> per marker series (matplotlib wrote one <use> per point), one per line
    assert "<use" not in ranks and ranks.count("<path") < 60 and ranks.count("<") < 150
    assert spectra.count('<g id="sv') == 224 and spectra.count("<path") < 224 + 60
    x_of, y_of = axis_map(XMARK.findall(ranks)), axis_map(YMARK.findall(ranks))
    circles = re.findall(r'<path d="(M[^"]+)" fill="#0072B2"', ranks)[0]  # suggested rank (●)
    crosses = re.findall(r'<path d="(M[^"]+)" fill="none" stroke="#D55E00"', ranks)[0]  # k@0.9 (×)
    centres_o = [(float(x) + 1.5, float(y)) for x, y in re.findall(r"M(\S+) (\S+?)a", circles)]
    centres_x = [(float(x) + 1.5, float(y) + 1.5) for x, y in re.findall(r"M(\S+) (\S+?)l", crosses)[::2]]
    table = Tables(page).tables["Ranks per layer"]  # [#, layer, allocated r, k@0.9, suggested]
    assert len(centres_o) == len(centres_x) == len(table) == 224
    for row, (xo, yo), (xx, yx) in zip(table, centres_o, centres_x, strict=True):
        assert round(x_of(xo)) == round(x_of(xx)) == int(row[0])
        assert round(y_of(yo)) == int(row[4]) and round(y_of(yx)) == int(row[3])
