"""lorascope report: the page holds one section per input, every number comes from the JSON it
embeds, hostile text stays text, bad inputs are one line (the reading command's) and write nothing."""

from __future__ import annotations

import json
import re
import sys
from html.parser import HTMLParser

import pytest
from conftest import layer_names, peft_config, random_factors, write_peft
from report_inputs import audit_doc, bench_dir, gid_json, run_log, study_dir

from lorascope.audit import audit_adapter
from lorascope.cli.main import main
from lorascope.report import build_report, run_section
from lorascope.report.inputs import classify
from lorascope.report.sections import SECTIONS, _registry


class Tables(HTMLParser):
    """Every <table> of a page as {caption: [[cell text, ...], ...]} (header rows left out)."""

    def __init__(self, page: str):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._caption: str | None = None
        self._rows: list[list[str]] = []
        self._cell: list[str] | None = None
        self._in: str | None = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._rows, self._caption = [], ""
        elif tag == "caption":
            self._in = "caption"
        elif tag == "tr":
            self._rows.append([])
        elif tag == "td":
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "caption":
            self._in = None
        elif tag == "td" and self._cell is not None:
            self._rows[-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self.tables[self._caption] = [r for r in self._rows if r]

    def handle_data(self, data):
        if self._in == "caption":
            self._caption += data
        elif self._cell is not None:
            self._cell.append(data)


def close(text: str, value: float) -> bool:
    """A table cell shows `value` to 4 significant digits."""
    return float(text) == pytest.approx(value, rel=6e-4, abs=1e-12)


DATA = re.compile(r'<script type="application/json" id="data-(\d+)">(.*?)</script>', re.S)


def embedded(page: str) -> dict[int, object]:
    return {int(i): json.loads(text) for i, text in DATA.findall(page)}


def kinds(page: str) -> list[str]:
    return re.findall(r'<section id="s\d+" class="input [a-z_]+" data-kind="([a-z_]+)"', page)


def report_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(["report", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def two_adapters(tmp_path, rng):
    names = layer_names(3)
    a = write_peft(
        tmp_path / "a", {n: random_factors(rng, 24, 16, 8, decay=0.7) for n in names}, config=peft_config(r=8)
    )
    b = write_peft(
        tmp_path / "b", {n: random_factors(rng, 24, 16, 8, decay=0.7) for n in names}, config=peft_config(r=8)
    )
    return a, b


def test_every_kind_of_input_becomes_its_section(tmp_path, capsys, two_adapters):
    a, b = two_adapters
    assert main(["audit", str(a), "--json", "-o", str(tmp_path / "audit.json")]) == 0
    assert main(["merge-audit", str(a), str(b), "--json", "-q", "-o", str(tmp_path / "ma.json")]) == 0
    inputs = [
        a,
        tmp_path / "audit.json",
        tmp_path / "ma.json",
        run_log(tmp_path / "run.jsonl"),
        bench_dir(tmp_path / "bench"),
        study_dir(tmp_path / "study"),
        gid_json(tmp_path / "gid.json"),
    ]
    out = tmp_path / "report.html"
    code, _, err = report_cli(capsys, *inputs, "-o", out, "--title", "All <kinds>")
    assert code == 0, err
    page = out.read_text(encoding="utf-8")
    assert kinds(page) == ["audit", "audit", "merge_audit", "run", "bench", "study", "gid"]
    assert "<title>All &lt;kinds&gt;</title>" in page
    assert page.count('<tr><td class="num">') >= 7  # the summary: one row per input
    assert set(embedded(page)) == set(range(1, 8))
    # audit 3 figures ×2, merge 1, run 1, bench 1, study 1, gid 1: every one an inline SVG
    assert page.count("<svg") == 11
    figures = re.findall(r'<figure class="plot">(.*?)</figure>', page, re.S)
    assert len(figures) == 11 and all("<table>" in f for f in figures)  # a table under every plot
    assert "http://" not in page.replace("http://www.w3.org/", "")  # SVG namespaces only, nothing to fetch
    assert "https://" not in page


def test_every_number_comes_from_the_embedded_json(small_adapter, tmp_path):
    path, _ = small_adapter
    expected = json.loads(audit_adapter(path).to_json())
    page = build_report([str(path)]).html
    data = embedded(page)[1]
    assert data == expected  # the adapter's audit, exactly as `audit --json` writes it
    (tmp_path / "a.json").write_text(json.dumps(expected))
    assert embedded(build_report([str(tmp_path / "a.json")]).html)[1] == expected
    tables = Tables(page).tables
    spectra = {row[0]: row for row in tables["Spectrum summary per layer"]}
    ranks = {row[1]: row for row in tables["Ranks per layer"]}
    assert set(spectra) == set(ranks) == {x["name"] for x in expected["layers"]}
    for layer in expected["layers"]:  # the per-layer tables show the JSON's values
        name, _, r, s1, stable, eff, util = spectra[layer["name"]]
        assert int(r) == layer["rank"] and close(s1, layer["sigma_max"]) and close(util, layer["utilisation"])
        assert close(stable, layer["stable_rank"]) and close(eff, layer["effective_rank"])
        assert ranks[layer["name"]][2:] == [
            str(layer["rank"]),
            str(layer["energy_rank@0.9"]),
            str(layer["suggested_rank"]),
        ]


def test_merge_audit_table_matches_its_json(tmp_path, two_adapters):
    a, b = two_adapters
    assert main(["merge-audit", str(a), str(b), "--json", "-q", "-o", str(tmp_path / "ma.json")]) == 0
    doc = json.loads((tmp_path / "ma.json").read_text())
    page = build_report([str(tmp_path / "ma.json")]).html
    rows = {row[1]: row for row in Tables(page).tables["Per-layer merge audit"]}
    assert set(rows) == {x["name"] for x in doc["layers"]}
    for layer in doc["layers"]:
        _, _, verdict, overlap, excess, agreement, _, imbalance, _ = rows[layer["name"]]
        assert verdict == layer["verdict"] and close(overlap, layer["overlap"])
        assert close(agreement, layer["agreement"]) and close(imbalance, layer["imbalance"])
        assert close(excess, layer["overlap_excess"])


def test_hostile_text_stays_text(tmp_path):
    doc = audit_doc(n_blocks=1, r=4)
    evil = '</script><img src=x onerror="alert(1)">\x1b[31m'
    doc["layers"][0]["name"] = evil
    doc["notes"] = [evil]
    (tmp_path / "evil.json").write_text(json.dumps(doc))
    page = build_report([str(tmp_path / "evil.json")], title=evil).html
    assert "<img" not in page and "\x1b" not in page
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;\\x1b[31m" in page
    assert embedded(page)[1]["layers"][0]["name"] == evil  # the JSON keeps it exact


def test_run_log_series_alerts_and_thinning(tmp_path, monkeypatch):
    monkeypatch.setattr(run_section, "CAP", 25)
    log = run_log(tmp_path / "run.jsonl", steps=400)
    data = embedded(build_report([str(log)]).html)[1]
    assert data["thinning"]["train"] == 16 and 25 <= len(data["train"]) < 50
    assert [p[0] for p in data["train"]] == list(range(1, 401, 16))
    assert data["train"][0][1] == pytest.approx(2.0)
    assert [p[0] for p in data["eval"]["eval"]] == list(range(20, 401, 20))
    codes = {(a["code"], a["source"]) for a in data["alerts"]}
    assert ("GRAD_SPIKE", "monitor") in codes and ("USER_NOTE", "log") in codes


def test_bench_study_gid_sections_read_what_they_plot(tmp_path):
    page = build_report(
        [str(bench_dir(tmp_path / "b")), str(study_dir(tmp_path / "s")), str(gid_json(tmp_path / "g.json"))]
    ).html
    bench, study, gid = (embedded(page)[i] for i in (1, 2, 3))
    assert (
        sorted(bench["seeds"]) == ["seed_123", "seed_42"]
        and bench["aggregate"]["validation_classification"] == "screening_plus"
    )
    assert "<td>uniform_p90</td>" in page and "<td>FAIL</td>" in page
    assert len(study["adapters"]) == 25
    assert "1 adapter line(s) without a utilisation or rank are not plotted" in page
    starved = [x for x in gid["layers"] if x["gid"] >= 4 * 8 or x.get("starved")]
    assert "starved layers</dt><dd>" + str(len(starved)) in page


def _write(path, text):
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    return path


BAD_JSON = [
    (
        "bad.json",
        "{",
        "not valid JSON (Expecting property name enclosed in double quotes at line 1 column 2)",
    ),
    ("nan.json", '{"schema": "lorascope.audit/v1", "x": NaN}', "not strict JSON (NaN is not a JSON number)"),
    ("big.json", '{"x": 1e999}', "not strict JSON (the number 1e999 is too large)"),
    ("latin1.json", b'{"x": "\xe9"}', "not UTF-8 text (byte 7)"),
    ("other.json", '{"schema": "x/v1"}', "not a report lorascope reads (schema 'x/v1'; expected one of"),
    ("list.json", "[1]", "not a report lorascope reads (no schema field; expected one of"),
]


@pytest.mark.parametrize(("name", "text", "problem"), BAD_JSON)
def test_unreadable_json_is_one_line(tmp_path, capsys, name, text, problem):
    f = _write(tmp_path / name, text)
    code, out, err = report_cli(capsys, f, "-o", tmp_path / "r.html")
    assert code == 2 and not (tmp_path / "r.html").exists()
    assert err.startswith(f"lorascope: error: {f}: {problem}") and err.count("\n") == 1


def test_wrongly_typed_key_is_named(tmp_path, capsys):
    doc = audit_doc(n_blocks=1, r=4)
    doc["layers"][2]["utilisation"] = "high"
    f = _write(tmp_path / "a.json", json.dumps(doc))
    code, _, err = report_cli(capsys, f, "-o", tmp_path / "r.html")
    assert (code, err) == (
        2,
        f"lorascope: error: {f}: layers[2].utilisation: expected a number, got the string 'high'\n",
    )


def test_errors_are_those_of_the_reading_command(tmp_path, capsys):
    missing = tmp_path / "no-adapter"
    bad_log = _write(tmp_path / "run.jsonl", '{"schema": "lorascope.telemetry/v1"}\n')
    for command, path in (("audit", missing), ("monitor", bad_log)):
        main([command, str(path)])
        expected = capsys.readouterr().err
        code, _, err = report_cli(capsys, path, "-o", tmp_path / "r.html")
        assert code == 2 and err == expected and err.count("\n") == 1


def test_several_inputs_name_the_failing_one_and_write_nothing(tmp_path, capsys, small_adapter):
    path, _ = small_adapter
    bad = _write(tmp_path / "bad.json", "{")
    out = tmp_path / "r.html"
    code, _, err = report_cli(capsys, path, bad, run_log(tmp_path / "run.jsonl"), "-o", out)
    assert code == 2 and not out.exists()
    assert err.startswith(f"lorascope: error: input 2 of 3: {bad}: not valid JSON")


def test_output_is_never_an_input_nor_replaced(tmp_path, capsys, small_adapter):
    path, _ = small_adapter
    log = run_log(tmp_path / "run.jsonl")
    before = log.read_bytes()
    code, _, err = report_cli(capsys, path, log, "-o", log)
    assert code == 2 and "refusing to overwrite the input" in err and log.read_bytes() == before
    existing = _write(tmp_path / "old.html", "keep")
    code, _, err = report_cli(capsys, log, "-o", existing)
    assert code == 2 and existing.read_text() == "keep"


def test_registry_is_explicit_and_detects_every_schema(tmp_path):
    with pytest.raises(ValueError, match="registered twice"):
        _registry(SECTIONS["audit"], SECTIONS["audit"])
    for kind in SECTIONS.values():
        for schema in kind.schemas:
            f = _write(tmp_path / "x.json", json.dumps({"schema": schema + "/v1"}))
            assert classify(str(f), SECTIONS)[0] is kind
    assert classify(str(tmp_path / "some.jsonl"), SECTIONS)[0] is SECTIONS["run"]
    assert classify(str(tmp_path / "adapter-dir"), SECTIONS)[0] is SECTIONS["audit"]


@pytest.mark.slow
def test_a_224_layer_adapter_page_stays_under_2_mb(tmp_path):
    f = _write(tmp_path / "audit.json", json.dumps(audit_doc(n_blocks=32, r=64)))
    page = build_report([str(f)]).html
    assert len(page.encode()) <= 2 * 1024 * 1024
    assert page.count('<g id="sv') == 224  # one hoverable line per layer, each with its name
    # natural order: every layer of block 0 (mlp.* before self_attn.*), then block 1, …, block 31
    assert '<g id="sv0"><title>model.layers.0.mlp.down_proj (r=64, mlp)</title>' in page
    assert '<g id="sv223"><title>model.layers.31.self_attn.v_proj (r=64, attention)</title>' in page


def test_without_matplotlib_the_error_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, err = report_cli(capsys, gid_json(tmp_path / "gid.json"), "-o", tmp_path / "r.html")
    assert code == 2 and "pip install 'lorascope[report]'" in err and not (tmp_path / "r.html").exists()


def test_report_help_does_not_import_matplotlib():
    import subprocess

    code = (
        "from lorascope.cli.main import main\ntry:\n    main(['report', '--help'])\n"
        "except SystemExit:\n    pass\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(run.stdout.split())
    assert "lorascope.report" in loaded and "matplotlib" not in loaded


def test_an_adapters_report_does_not_import_matplotlib(tmp_path):
    """The audit's figures are written as SVG text: matplotlib's import alone took longer than
    the audit of a 224-layer adapter."""
    import subprocess

    f = _write(tmp_path / "audit.json", json.dumps(audit_doc(n_blocks=2, r=8)))
    code = (
        "import sys\nfrom lorascope.report import build_report\n"
        f"page = build_report([{str(f)!r}]).html\n"
        "print(page.count('<svg'), 'matplotlib' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["3", "False"]


def test_python_api_is_public():
    import lorascope

    assert lorascope.build_report is build_report


def test_an_audit_without_layers_or_with_silent_layers_still_renders(tmp_path):
    empty = audit_doc(n_blocks=1, r=4)
    empty["layers"] = []
    silent = audit_doc(n_blocks=1, r=4)
    silent["layers"][0]["singular_values"] = [0.0] * 4  # σ₁ = 0 but not flagged dead: not drawn
    silent["notes"] = "not a list"
    for name, doc in (("empty.json", empty), ("silent.json", silent)):
        _write(tmp_path / name, json.dumps(doc))
    page = build_report([str(tmp_path / "empty.json"), str(tmp_path / "silent.json")]).html
    assert "No LoRA layers in this audit." in page
    assert page.count('<g id="sv') == 6  # the 7 layers of the block, less the silent one


def test_a_bad_seed_file_is_named(tmp_path, capsys):
    root = bench_dir(tmp_path / "bench")
    seed = root / "seed_42" / "bench.json"
    doc = json.loads(seed.read_text())
    doc["compressed"]["uniform_p90"]["accuracy"] = "0.76"
    seed.write_text(json.dumps(doc))
    code, _, err = report_cli(capsys, root, "-o", tmp_path / "r.html")
    expected = f"{seed}: compressed.uniform_p90.accuracy: expected a number, got the string '0.76'"
    assert (code, err) == (2, f"lorascope: error: {expected}\n")


def test_very_many_layers_draw_every_kth_spectrum(tmp_path, monkeypatch):
    from lorascope.report import audit_section

    monkeypatch.setattr(audit_section, "MAX_LINES", 50)
    f = _write(tmp_path / "audit.json", json.dumps(audit_doc(n_blocks=32, r=8)))
    page = build_report([str(f)]).html
    assert page.count('<g id="sv') == 45  # 224 layers, every 5th
    assert "one layer in 5 of 224 drawn (the table lists them all)" in page


def test_table_cells_are_the_json_values_written_literally(tmp_path):
    doc = audit_doc(n_blocks=1, r=4)
    layer = doc["layers"][0]  # model.layers.0.self_attn.q_proj
    layer.update(sigma_max=123456.7, stable_rank=2.0, effective_rank=0.00012346, utilisation=0.123456)
    layer.update(rank=4, suggested_rank=4, **{"energy_rank@0.9": 3})
    doc["summary"]["params"] = 110592
    doc["suggestions"]["p90"] = {"rank": 2, "params": 55296, "reduction": 0.5}
    page = build_report([_write(tmp_path / "a.json", json.dumps(doc))]).html
    tables = Tables(page).tables
    row = next(r for r in tables["Spectrum summary per layer"] if r[0] == layer["name"])
    assert row == [layer["name"], "attention", "4", "1.235e+05", "2", "1.235e-04", "0.1235"]
    assert next(r for r in tables["Ranks per layer"] if r[1] == layer["name"])[2:] == ["4", "3", "4"]
    assert "<dt>parameters</dt><dd>110592</dd>" in page
    assert "<dt>parameter reduction at p90</dt><dd>50.0 %</dd>" in page  # as `audit` prints it
