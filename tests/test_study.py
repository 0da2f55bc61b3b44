"""`lorascope study`: tables from hand-built adapters with known spectra, bad input among good,
sources (folders, lists, links, the Hugging Face cache), the CLI's refusals."""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import peft_config, write_peft, write_safetensors_raw

from lorascope import convert_file
from lorascope.cli.main import main
from lorascope.study import StudyOptions, run_study
from lorascope.study.failure import one_line
from lorascope.study.model import AboveOne, AdapterRecord, MeanMedian, MedianP90
from lorascope.study.sources import Job, adapter_bytes, discover, parse_size
from lorascope.study.tables import _correlation, _rows_ranks

SCALE = 2.0  # lora_alpha 2r


def exact_factors(sigma, r: int, rng):
    """A (r, in), B (out, r) whose scaled ΔW = SCALE·B·A has the singular values `sigma`."""
    out, inn = max(12, r), max(10, r)
    s = np.zeros(r)
    s[: len(sigma)] = sigma
    u, _ = np.linalg.qr(rng.standard_normal((out, r)))  # (out, r) orthonormal columns
    v, _ = np.linalg.qr(rng.standard_normal((inn, r)))  # (in, r)
    return v.T.copy(), u * s / SCALE  # A (r, in), B (out, r)


def known_adapter(path: Path, layers: dict[str, list[float]], r: int, rng) -> Path:
    factors = {name: exact_factors(sigma, r, rng) for name, sigma in layers.items()}
    return write_peft(path, factors, dtype="fp64", config=peft_config(r=r, lora_alpha=SCALE * r))


def dense_utilisation(path: Path) -> dict[str, tuple[float, float, int]]:
    """Ground truth from dense float64 SVDs: layer -> (utilisation, k@0.9 / r, r)."""
    from safetensors.numpy import load_file

    t = load_file(str(path / "adapter_model.safetensors"))
    out = {}
    for key in t:
        if ".lora_A." in key:
            a, b = t[key], t[key.replace("lora_A", "lora_B")]
            s = np.linalg.svd(SCALE * b @ a, compute_uv=False)  # (min(out, in),)
            r = a.shape[0]
            if s[0] == 0:
                out[key] = (0.0, 0.0, r)
                continue
            e = np.cumsum(s**2) / np.sum(s**2)
            k90 = int(np.searchsorted(e, 0.9 - 1e-12) + 1)
            out[key] = (float(np.sum(s**2) / s[0] ** 2 / r), k90 / r, r)
    return out


@pytest.fixture
def corpus(tmp_path, rng):
    """Four adapters with known spectra under one folder: r=4, two r=8, and a dead r=16."""
    root = tmp_path / "corpus"
    q, v, down = (f"model.layers.0.{m}" for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"))
    known_adapter(root / "a", {q: [1, 1], v: [1, 1]}, 4, rng)  # util 0.5, 0.5
    known_adapter(root / "b", {q: [1], down: [1, 1, 1, 1]}, 8, rng)  # util 1/8, 1/2
    known_adapter(root / "c", {q: [2, 1]}, 8, rng)  # util (5/4)/8
    known_adapter(root / "sub" / "dead", {q: [0.0]}, 16, rng)
    return root


def test_tables_from_known_spectra(corpus, tmp_path):
    result = run_study([str(corpus)], tmp_path / "out", StudyOptions(workers=2))
    t = result.tables
    assert (result.n_adapters, result.n_failed) == (4, 0)
    assert t.counts.adapters == 4 and t.counts.layers == 6
    assert t.dead == (str(corpus / "sub" / "dead"),)
    per = {}  # adapter -> (dense layer utilisations, energy fractions) from dense numpy SVD
    for name in "abc":
        truth = dense_utilisation(corpus / name)
        per[name] = ([u for u, _, _ in truth.values()], [f for _, f, _ in truth.values()])
    means = {k: float(np.mean(u)) for k, (u, _) in per.items()}
    assert means["a"] == pytest.approx(0.5) and means["c"] == pytest.approx(5 / 32)
    u = t.utilisation
    values = np.array(sorted(means.values()))
    assert u.n == 3 and u.mean == pytest.approx(values.mean(), rel=1e-9)
    assert u.median == pytest.approx(np.median(values)) and u.std == pytest.approx(values.std())
    assert u.p90 == pytest.approx(np.percentile(values, 90))
    bc = pytest.approx((means["b"] + means["c"]) / 2)
    assert [(g.name, g.n, g.mean, g.median) for g in t.by_rank] == [
        (4, 1, pytest.approx(0.5), pytest.approx(0.5)),
        (8, 2, bc, bc),
    ]
    x, y = np.array([4.0, 8.0, 8.0]), np.array([means[k] for k in "abc"])
    assert t.correlation.pearson.r == pytest.approx(np.corrcoef(x, y)[0, 1])
    ranks_x, ranks_y = np.array([1, 2.5, 2.5]), np.argsort(np.argsort(y)) + 1.0
    assert t.correlation.spearman.r == pytest.approx(np.corrcoef(ranks_x, ranks_y)[0, 1])
    lo, hi = t.correlation.pearson.ci95
    assert -1 - 1e-9 <= lo <= hi <= 1 + 1e-9
    types = {g.name: g for g in t.by_module_type}
    assert types["attention"].n == 3 and types["attention"].layers == 4  # live adapters only
    assert types["attention"].mean == pytest.approx((0.5 + 1 / 8 + 5 / 32) / 3)
    assert (types["mlp"].layers, types["mlp"].n) == (1, 1) and types["mlp"].median == pytest.approx(0.5)
    fr = np.array(sorted(float(np.median(f)) for _, f in per.values()))
    assert t.compression[0.9].median == pytest.approx(np.median(fr))
    assert t.compression[0.9].p90 == pytest.approx(np.percentile(fr, 90))
    assert t.by_architecture[0].name == "llama-like"
    assert t.most_utilised[0].source == str(corpus / "a")
    assert t.least_utilised[0].source == str(corpus / "c")
    doc = json.loads((tmp_path / "out" / "study.json").read_text())
    assert doc["dead"] == {"n": 1, "sources": [str(corpus / "sub" / "dead")]}
    assert doc["by_rank"][0] == {"rank": 4, "n": 1, "mean": t.by_rank[0].mean, "median": t.by_rank[0].median}
    assert doc["by_module_type"]["mlp"] == {
        "layers": 1,
        "n": 1,
        "mean": types["mlp"].mean,
        "median": types["mlp"].median,
    }
    assert doc["compression"]["energy_fraction@0.9"]["median"] == t.compression[0.9].median
    md = (tmp_path / "out" / "study.md").read_text()
    assert "| 8 | 2 |" in md and "Gradience Study 14" in md
    assert json.loads((tmp_path / "out" / "study.json").read_text()) == json.loads(t.to_json())


def test_records_and_layer_rows(corpus, tmp_path):
    run_study([str(corpus)], tmp_path / "out", StudyOptions(workers=1))
    records = {json.loads(x)["source"]: json.loads(x) for x in open(tmp_path / "out" / "adapters.jsonl")}
    b = records[str(corpus / "b")]
    assert b["nominal_rank"] == 8 and b["nominal_ranks"] == [8] and b["n_layers"] == 2
    assert b["format"] == "peft" and b["base_model"] == "tiny/test-model" and not b["dead"]
    assert b["params"] == 2 * 8 * (12 + 10)
    assert b["module_types"]["mlp"]["utilisation_mean"] == pytest.approx(0.5)
    assert set(b["time"]) == {"resolve_s", "audit_s"}
    lines = (tmp_path / "out" / "layers.csv").read_text().splitlines()
    assert lines[0].startswith("source,layer,module_type") and len(lines) == 1 + 6


def test_broken_adapters_are_failures_not_stops(corpus, tmp_path, capsys, rng):
    bad = tmp_path / "corpus" / "bad"
    bad.mkdir()
    good = (corpus / "a" / "adapter_model.safetensors").read_bytes()
    (bad / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    (bad / "garbage.safetensors").write_bytes(b"\xff" * 64)
    header = json.dumps(
        {"x.lora_A.weight": {"dtype": "F32", "shape": [100000, 100000], "data_offsets": [0, 4 * 10**10]}}
    )
    (bad / "evil\x1b[31m\nhuge.safetensors").write_bytes(len(header).to_bytes(8, "little") + header.encode())
    write_safetensors_raw(bad / "no_lora.safetensors", {"model.embed.weight": (np.ones((4, 4)), "fp32")})
    (bad / "badconfig").mkdir()
    (bad / "badconfig" / "adapter_config.json").write_text("{not json")
    (bad / "badconfig" / "adapter_model.safetensors").write_bytes(good)
    known_adapter(bad / "big", {"model.layers.0.self_attn.q_proj": [1] * 64}, 64, rng)
    size = sum(f.stat().st_size for f in (bad / "big").iterdir())
    out = tmp_path / "out"
    argv = ["study", str(corpus), str(tmp_path / "missing"), "--out", str(out), "--max-size", str(size - 1)]
    assert main([*argv, "--workers", "2"]) == 0
    err = capsys.readouterr().err
    assert "7 adapter(s) failed" in err
    fails = {Path(f["source"]).name: f for f in map(json.loads, open(out / "failures.jsonl"))}
    assert fails["big"]["kind"] == "too large"
    assert fails["missing"]["kind"] == "not found"
    assert fails["no_lora.safetensors"]["kind"] in ("no LoRA layers", "unknown format")
    assert {fails[n]["kind"] for n in ("truncated.safetensors", "garbage.safetensors", "badconfig")} <= {
        "unreadable",
        "unknown format",
    }
    assert fails["evil\x1b[31m\nhuge.safetensors"]["kind"] in ("unreadable", "unknown format")
    assert all(f["reason"] and "\n" not in f["reason"] and "\x1b" not in f["reason"] for f in fails.values())
    assert json.loads((out / "study.json").read_text())["counts"]["failed"] == 7
    strict = tmp_path / "strict"
    argv = ["study", str(corpus / "a"), str(bad / "truncated.safetensors"), "--out", str(strict)]
    assert main([*argv, "--strict", "-q"]) == 1  # a partial failure


def test_a_study_that_audited_nothing_is_an_error(corpus, tmp_path, capsys):
    missing = tmp_path / "MISSING"
    out = tmp_path / "out"
    line = (
        f"lorascope: error: no adapter could be audited: 1 source(s) failed; the first (not found): "
        f"{missing}: no such file or directory (hint: nothing was written; fix or drop the failing "
        "sources)\n"
    )
    assert main(["study", str(missing), "--out", str(out)]) == 2
    assert capsys.readouterr().err == line and not out.exists()
    listing = tmp_path / "ids.list"
    listing.write_text(f"{missing}\n{tmp_path / 'gone'}\n")
    assert main(["study", "--list", str(listing), "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert "no adapter could be audited: 2 source(s) failed" in err and err.count("\n") == 1
    assert not out.exists()
    assert main(["study", str(corpus), "--out", str(out), "--max-size", "1K", "--strict"]) == 2
    err = capsys.readouterr().err
    assert "4 source(s) failed; the first (too large): " in err and "bytes > --max-size 1024" in err
    assert not out.exists() and err.count("\n") == 1
    assert main(["study", str(corpus), str(missing), "--out", str(out), "-q"]) == 0  # partial: exit 0


def test_failure_reasons_are_kept_whole_up_to_a_pathological_size():
    reason = "why: " + "x" * 995
    assert one_line(ValueError(reason)) == reason  # 1,000 characters: whole
    cut = one_line(ValueError("y" * 10_000))
    assert len(cut) == 4096 and cut == "y" * 4095 + "…"
    assert one_line(ValueError("a\nb\x1b[31m")) == "a\\nb\\x1b[31m"


def test_study_md_lists_failures_and_flags_few_adapters(corpus, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 64)
    evil = tmp_path / "evil|`x`\n.safetensors"
    evil.write_bytes(b"\x00" * 64)
    run_study([str(corpus), str(bad), str(evil)], tmp_path / "out", StudyOptions(workers=1))
    md = (tmp_path / "out" / "study.md").read_text()
    fails = [json.loads(x) for x in open(tmp_path / "out" / "failures.jsonl")]
    assert [f["source"] for f in fails] == [str(bad), str(evil)]  # in job order
    table = md[md.index("## Failed adapters") :].splitlines()
    assert table[2] == "| source | kind | reason |"
    assert table[4].startswith(f"| `{bad}` | ") and fails[0]["reason"].split(":")[-1].strip()[:20] in table[4]
    assert table[5].startswith("| ``" + str(evil).replace("|", "\\|").replace("\n", "\\n"))
    assert len(table) == 6  # no raw newline from the evil name split the table
    assert "**Warning:** 3 live adapters (fewer than 10): a bootstrap of so few" in md


def test_lokr_utilisation_above_one_gets_a_note(tmp_path, rng):
    """ΔW = kron(W1, W2): W1 an orthogonal 4×4, W2 a rank-2 product with equal singular values, so
    ΔW has 8 equal singular values (stable rank 8) while the allocated lora_dim is r = 2."""
    w1, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    u, _ = np.linalg.qr(rng.standard_normal((8, 2)))
    v, _ = np.linalg.qr(rng.standard_normal((8, 2)))
    t = {
        "lycoris_layers_0_q.lokr_w1": (w1, "fp32"),
        "lycoris_layers_0_q.lokr_w2_a": (u, "fp32"),
        "lycoris_layers_0_q.lokr_w2_b": (v.T.copy(), "fp32"),
        "lycoris_layers_0_q.alpha": (np.array(2.0), "fp32"),
    }
    write_safetensors_raw(tmp_path / "k.safetensors", t)
    s = np.linalg.svd(np.kron(w1, u @ v.T), compute_uv=False)  # dense truth, (16,)
    assert np.sum(s**2) / s[0] ** 2 / 2 == pytest.approx(4.0)
    result = run_study([str(tmp_path / "k.safetensors")], tmp_path / "out", StudyOptions(workers=1))
    assert result.tables.above_one == AboveOne(utilisation=1, energy_rank=1, adapters=1)
    doc = json.loads((tmp_path / "out" / "study.json").read_text())
    assert doc["layers"]["above_one"] == {"utilisation": 1, "energy_rank@0.9": 1, "adapters": 1}
    md = (tmp_path / "out" / "study.md").read_text()
    assert "Note: 1 layers have utilisation above 1 and 1 have k@0.9 above r, in 1 adapters." in md
    assert "LoHa and LoKr layers r is the allocated lora_dim" in md


def test_layer_rows_in_natural_order(tmp_path, rng):
    names = {f"model.layers.{i}.self_attn.q_proj": [1.0] for i in (10, 2, 1)}
    known_adapter(tmp_path / "a", names, 2, rng)
    run_study([str(tmp_path / "a")], tmp_path / "out", StudyOptions(workers=1))
    rows = (tmp_path / "out" / "layers.csv").read_text().splitlines()[1:]
    layers = [r.split(",")[1].split(".")[2] for r in rows]
    assert layers == ["1", "2", "10"]


def test_text_files_are_lists_only_when_clearly_lists(corpus, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text(f"# my adapters\n{corpus / 'a'}\ntrained on 3 tasks, see the paper\n")
    out = tmp_path / "out"
    assert main(["study", str(notes), "--out", str(out), "-q"]) == 2
    assert capsys.readouterr().err == (
        f"lorascope: error: {notes}: line 3 is neither an existing path nor a repository id "
        "(ORG/NAME), so the file is not read as a list of SOURCEs (hint: to study a list whose "
        "paths may be missing, pass it as --list FILE)\n"
    )
    assert not out.exists()
    assert main(["study", "--list", str(notes), "--out", str(out), "-q"]) == 0  # read as asked
    fails = [json.loads(x) for x in open(out / "failures.jsonl")]
    assert [f["kind"] for f in fails] == ["not found"]
    assert fails[0]["source"] == str(tmp_path / "trained on 3 tasks, see the paper")
    assert main(["study", "--list", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o2")]) == 2
    assert "nope.txt: no such list file" in capsys.readouterr().err
    assert main(["study", "--list", str(corpus), "--out", str(tmp_path / "o3")]) == 2
    assert capsys.readouterr().err == (
        f"lorascope: error: {corpus}: is a folder, not a list file "
        "(hint: give the folder as a SOURCE, or --list a text file)\n"
    )
    assert not (tmp_path / "o3").exists()
    clean_list = tmp_path / "ok.list"
    clean_list.write_text(f"{corpus / 'a'}\norg/repo@v1\n")
    assert [j.source for j in discover([str(clean_list)])] == [str(corpus / "a"), "hf:org/repo@v1"]


def test_bin_weights_count_towards_max_size(tmp_path):
    folder = tmp_path / "peft"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.bin").write_bytes(b"\0" * 1000)
    (folder / "notes.bin").write_bytes(b"\0" * 50)  # not an adapter file: not counted
    assert adapter_bytes(folder) == 2 + 1000


def test_progress_shows_done_of_total_on_a_terminal(corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["study", str(corpus), "--out", str(tmp_path / "o1"), "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("\r  ") and "\r  4/4 adapters, 0 failed\n" in err
    assert main(["study", str(corpus), "--out", str(tmp_path / "o2"), "-q"]) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert main(["study", str(corpus), "--out", str(tmp_path / "o3")]) == 0
    assert capsys.readouterr().err == ""


def test_correlation_against_scipy_and_earlier_numbers():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(11)
    x = rng.choice([2, 4, 8, 16, 32], size=25)
    y = (rng.uniform(size=25) / x * 4).round(3)  # ties in both
    live = [_record(int(a), float(b)) for a, b in zip(x, y, strict=True)]
    cor = _correlation(live)
    got = {
        name: {"r": e.r, "ci95": e.ci95} for name, e in (("pearson", cor.pearson), ("spearman", cor.spearman))
    }
    xf = x.astype(float)
    assert got["pearson"]["r"] == pytest.approx(stats.pearsonr(xf, y).statistic, rel=1e-12)
    assert got["spearman"]["r"] == pytest.approx(stats.spearmanr(xf, y).statistic, rel=1e-12)
    idx = np.random.default_rng(0).integers(0, 25, size=(1000, 25))  # the same seed and draw
    for name, f in (("pearson", stats.pearsonr), ("spearman", stats.spearmanr)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant resamples: NaN, skipped as the study does
            boot = np.array([f(xf[i], y[i]).statistic for i in idx])
        boot = boot[np.isfinite(boot)]
        truth = np.percentile(boot, [2.5, 97.5])
        assert got[name]["ci95"] == pytest.approx(truth, rel=1e-12, abs=1e-12)
    # the numbers of the study's earlier, all-numpy implementation (tolerance: 1e-12)
    earlier = {"pearson": (-0.5233904791510655, [-0.7053044607883933, -0.44401788467378167]),
               "spearman": (-0.8291018874989879, [-0.9246737851466778, -0.6652840409333913])}  # fmt: skip
    for name, (r, ci) in earlier.items():
        assert got[name]["r"] == pytest.approx(r, rel=1e-12)
        assert got[name]["ci95"] == pytest.approx(ci, rel=1e-12)


def _record(rank: int, utilisation: float) -> AdapterRecord:
    none = MedianP90(None, None)
    return AdapterRecord(
        "x", "peft", None, "other", rank, (rank,), 1, 0, False, 1, 1, MeanMedian(utilisation, utilisation),
        {}, {0.9: none, 0.99: none},
    )  # fmt: skip


def test_counted_ranks_match_scipy_rankdata():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    v = rng.choice([2.0, 4.0, 8.0, 16.0], size=(7, 40))
    u, codes = np.unique(v, return_inverse=True)
    assert np.array_equal(_rows_ranks(codes.reshape(v.shape), u.size), stats.rankdata(v, axis=1))


def test_sources_lists_links_duplicates_and_exclusions(corpus, tmp_path):
    (corpus / ".hidden").mkdir()
    known_adapter(corpus / ".hidden" / "x", {"q": [1]}, 2, np.random.default_rng(0))
    links = tmp_path / "links"
    links.mkdir()
    (links / "to_a").symlink_to(corpus / "a", target_is_directory=True)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# a comment\n\ncorpus/b\n{corpus / 'c'}\nlist.txt\norg/repo@v1\nhf:org/other\n")
    jobs = list(discover([str(links), str(corpus), str(listing)], exclude=corpus / "sub"))
    sources = [j.source for j in jobs]
    assert sources[0] == str(links / "to_a")  # the link is taken; corpus/a is then a duplicate
    assert str(corpus / "a") not in sources and str(corpus / "sub" / "dead") not in sources
    assert sources[1:3] == [str(corpus / "b"), str(corpus / "c")]
    assert not any(".hidden" in s for s in sources)
    assert jobs[-2] == Job("hf:org/repo@v1", repo_id="org/repo", revision="v1")
    assert jobs[-1] == Job("hf:org/other", repo_id="org/other")
    assert len(sources) == 5


def test_parse_size():
    assert parse_size("500000") == 500000 and parse_size("2K") == 2048 and parse_size("1.5GiB") == 3 << 29
    for bad in ("", "-1", "1X", "0"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_cli_refusals(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["study", str(corpus / "a"), "--out", str(out), "-q"]) == 0
    capsys.readouterr()
    assert main(["study", str(corpus / "a"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lorascope: error: ") and "--resume" in err and err.count("\n") == 1
    assert main(["study", str(corpus), "--out", str(tmp_path / "o2"), "--max-size", "lots"]) == 2
    assert "--max-size" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["study", str(empty), "--out", str(tmp_path / "o3")]) == 2
    assert "no adapter found" in capsys.readouterr().err and not (tmp_path / "o3").exists()
    assert main(["study", str(corpus), "--out", str(tmp_path / "o4"), "--workers", "0"]) == 2


def _hub_cache(cache: Path, repo: str, files: dict[str, bytes], commit: str = "a" * 40) -> Path:
    """huggingface_hub's documented cache layout: blobs named by content hash, snapshots/<commit>/
    holding symbolic links to them, refs/main naming the commit."""
    import hashlib

    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "blobs").mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / name).symlink_to(os.path.relpath(blob, snap))
    return snap


def test_hub_repo_ids_from_the_cache_offline(corpus, tmp_path, monkeypatch):
    hf = pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hub"
    files = {n: (corpus / "b" / n).read_bytes() for n in ("adapter_config.json", "adapter_model.safetensors")}
    snap = _hub_cache(cache, "org/peft-b", files)
    convert_file(corpus / "c", tmp_path / "c.safetensors", to="kohya")
    kohya = (tmp_path / "c.safetensors").read_bytes()
    _hub_cache(cache, "org/only-weights", {"adapter_model.safetensors": kohya}, "b" * 40)
    assert {r.repo_id for r in hf.scan_cache_dir(cache).repos} == {"org/peft-b", "org/only-weights"}
    options = StudyOptions(workers=2, hub_cache=str(cache))
    sources = ["org/peft-b", "hf:org/peft-b@" + "a" * 40, "hf:org/only-weights", "org/not-cached"]
    result = run_study(sources, tmp_path / "out", options)
    records = {json.loads(x)["source"]: json.loads(x) for x in open(tmp_path / "out" / "adapters.jsonl")}
    assert records["hf:org/peft-b"]["resolved"] == str(snap)
    assert records["hf:org/peft-b"]["nominal_rank"] == 8 and records["hf:org/peft-b"]["n_layers"] == 2
    assert records["hf:org/peft-b@" + "a" * 40]["utilisation"] == records["hf:org/peft-b"]["utilisation"]
    assert records["hf:org/only-weights"]["resolved"].endswith("adapter_model.safetensors")
    assert records["hf:org/only-weights"]["format"] == "kohya"
    (fail,) = map(json.loads, open(tmp_path / "out" / "failures.jsonl"))
    assert fail["source"] == "hf:org/not-cached" and fail["kind"] == "not cached"
    assert result.n_adapters == 3 and math.isfinite(result.tables.utilisation.mean)


@pytest.mark.parametrize(
    "name, family",
    [
        ("base_model.model.encoder.block.0.layer.0.SelfAttention.q", "t5"),
        ("bert.encoder.layer.0.attention.self.query", "bert"),
        ("model.layers.3.self_attn.q_proj", "llama-like"),
        ("transformer.h.0.attn.c_attn", "gpt2"),
        ("gpt_neox.layers.0.attention.query_key_value", "gpt-neox"),
        ("model.layers.0.block_sparse_moe.experts.0.w1", "mixtral-moe"),
        ("text_model.encoder.layers.0.self_attn.q_proj", "clip-text"),
        ("lora_unet_down_blocks_0_attentions_0_proj_in", "kohya-sd-unet"),
        ("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "diffusers-unet"),
        ("transformer.transformer_blocks.0.attn.to_q", "diffusers-transformer"),
        ("some.custom.layer", "other"),
    ],
)
def test_architecture_family_from_layer_names(name, family):
    from lorascope.study.arch import architecture

    assert architecture([name]) == family


def test_layers_parquet_matches_the_csv(corpus, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    run_study([str(corpus)], tmp_path / "out", StudyOptions(workers=1))
    table = pq.read_table(tmp_path / "out" / "layers.parquet")
    lines = (tmp_path / "out" / "layers.csv").read_text().splitlines()
    assert table.num_rows == len(lines) - 1 and table.column_names == lines[0].split(",")
    assert sorted(table.column("utilisation").to_pylist()) == sorted(
        float(x.split(",")[15]) for x in lines[1:]
    )
    assert main(["study", str(corpus / "a"), "--out", str(tmp_path / "o2"), "--no-parquet", "-q"]) == 0
    assert not (tmp_path / "o2" / "layers.parquet").exists() and (tmp_path / "o2" / "layers.csv").exists()


def test_hub_download_is_size_checked_before_any_byte(corpus, tmp_path, monkeypatch):
    """Online path, with huggingface_hub replaced by a fake that records what is asked of it."""
    import sys
    import types

    from lorascope.study.failure import StudyFailure
    from lorascope.study.hub import ALLOW, resolve_repo

    calls = []
    sizes = {"adapter_config.json": 600, "adapter_model.safetensors": 5000, "pytorch_model.bin": 10**9}

    def snapshot_download(repo_id, *, local_files_only=False, **kwargs):
        calls.append(("snapshot", local_files_only, tuple(kwargs["allow_patterns"])))
        if local_files_only:
            raise FileNotFoundError("not cached")
        return str(corpus / "b")

    def model_info(self, repo_id, revision=None, files_metadata=False):
        calls.append(("info", files_metadata))
        siblings = [types.SimpleNamespace(rfilename=n, size=s) for n, s in sizes.items()]
        return types.SimpleNamespace(siblings=siblings)

    fake = types.SimpleNamespace(
        snapshot_download=snapshot_download, HfApi=type("HfApi", (), {"model_info": model_info})
    )
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(StudyFailure) as err:
        resolve_repo("org/big", None, 5599, None)  # config + weights = 5600 bytes; the .bin is never counted
    assert err.value.kind == "too large" and "5600 bytes" in str(err.value)
    assert [c[0] for c in calls] == ["snapshot", "info"]  # no download after the size check
    calls.clear()
    assert resolve_repo("org/ok", None, 5600, None) == corpus / "b"
    assert calls[-1] == ("snapshot", False, tuple(ALLOW))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(StudyFailure) as err:
        resolve_repo("org/ok", None, None, None)
    assert err.value.kind == "not cached"
