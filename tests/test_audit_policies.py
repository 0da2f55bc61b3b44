"""Rank policies (energy, erank, knee, oht): each against a reference written from its definition
in docs/metrics.md and applied to the dense numpy SVD; hand-made spectra; the CLI table."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import dense_sigma, peft_config, quantize, random_factors, strict_json, write_peft

from lorascope.audit import AuditOptions, audit_adapter
from lorascope.audit.policies import POLICIES, parse, summarise
from lorascope.cli.main import main
from lorascope.errors import InvalidArgumentError
from lorascope.metrics import Spectrum
from lorascope.rounding import Rounding

# ---- references: plain loops over the dense singular values ------------------------------------


def live(sigma):
    return [s for s in sigma if s > 1e-6 * sigma[0]] if sigma[0] > 0 else []


def ref_energy(sigma, r, shape, tau):
    s = live(sigma)
    total = sum(x * x for x in s)
    acc = 0.0
    for k, x in enumerate(s, 1):
        acc += x * x
        if acc >= tau * total * (1 - 1e-12):
            return k
    return len(s)


def ref_erank(sigma, r, shape, tau):
    s = live(sigma)
    if not s:
        return 0
    p = [x / sum(s) for x in s]
    e = math.exp(-sum(q * math.log(q) for q in p))
    return min(max(math.ceil(e * (1 - 1e-9)), 1), r)


def ref_knee(sigma, r, shape, tau):
    s = live(sigma)
    n = len(s)
    if n < 2:
        return n
    total = sum(x * x for x in s)
    y = [sum(x * x for x in s[: i + 1]) / total for i in range(n)]
    w = min(5, max(3, n // 3))
    if n >= w:  # centred window, zeros outside (numpy.convolve "same" for this odd/even width)
        lo = (w - 1) // 2 if w % 2 else w // 2
        y = [sum(y[j] for j in range(i - lo, i - lo + w) if 0 <= j < n) / w for i in range(n)]
    diff = [y[i] - i / (n - 1) for i in range(n)]
    best = max(range(n), key=lambda i: (diff[i], -i))
    if best >= max(1, int(0.85 * n)) or diff[best] < 0.1:
        return r
    return min(max(best + 1, 1), r)


def ref_oht(sigma, r, shape, tau):
    s = live(sigma)
    if not s:
        return 0
    if r < 3:
        return 1
    b = min(shape) / max(shape)
    cut = (0.56 * b**3 - 0.95 * b**2 + 1.82 * b + 1.43) * float(np.median(s))
    return min(max(sum(x > cut for x in s), 1), r)


REF = {"energy": ref_energy, "erank": ref_erank, "knee": ref_knee, "oht": ref_oht}


def ks(sigma, r=None, shape=(64, 48), tau=0.9):
    spec = Spectrum(np.asarray(sigma, dtype=float), r or len(sigma))
    return {name: fn(spec, shape, tau) for name, fn in POLICIES.items()}


# ---- hand-made spectra -------------------------------------------------------------------------


def test_flat_spectrum():
    # erank of 16 equal values is 16 (not 17: the ceiling's slack); no knee → keep r; OHT: nothing
    # lies above ω·median > median, so the floor of 1
    assert ks([2.0] * 16) == {"energy": 15, "erank": 16, "knee": 16, "oht": 1}
    # n ≤ 10 equal values: the first point of y_s − x is 1/n ≥ 0.1, so the definition finds a
    # "knee" at k = 1 (Gradience 0.11 gives 1 too)
    assert ks([2.0] * 8)["knee"] == 1


def test_rank_one_and_dead():
    assert ks([3.0, 0.0, 0.0, 0.0]) == {"energy": 1, "erank": 1, "knee": 1, "oht": 1}
    assert ks([0.0] * 4) == {"energy": 0, "erank": 0, "knee": 0, "oht": 0}
    assert ks([3.0, 1.0], r=2)["oht"] == 1  # r < 3


def test_clear_knee():
    sigma = [10.0, 9.0, 8.5, 8.0] + [0.05] * 12  # 4 strong directions out of 16
    got = ks(sigma)
    assert got["knee"] == ref_knee(sigma, 16, (64, 48), 0.9)
    assert 2 <= got["knee"] <= 5 and got["energy"] == 4


@pytest.mark.parametrize("seed", range(40))
def test_policies_match_references_on_random_spectra(seed):
    rng = np.random.default_rng(seed)
    r = int(rng.integers(1, 40))
    sigma = np.sort(rng.gamma(0.5, size=r) * rng.choice([1.0, 1e-3], p=[0.8, 0.2], size=r))[::-1]
    shape = (int(rng.integers(r, 200)), int(rng.integers(r, 200)))
    tau = float(rng.choice([0.5, 0.9, 0.99]))
    got = ks(sigma, r, shape, tau)
    assert got == {name: fn(list(sigma), r, shape, tau) for name, fn in REF.items()}


def test_audit_policies_against_dense_svd(tmp_path, rng):
    layers = {}
    for i in range(12):
        r = (4, 8, 16)[i % 3]
        layers[f"model.layers.{i}.self_attn.q_proj"] = random_factors(rng, 40, 24, r, decay=0.2 + 0.07 * i)
    cfg = peft_config(
        r=16,
        lora_alpha=16,
        rank_pattern={f"layers.{i}.self_attn.q_proj": (4, 8, 16)[i % 3] for i in range(12)},
    )
    write_peft(tmp_path, layers, config=cfg)
    report = audit_adapter(tmp_path, AuditOptions(policies=tuple(POLICIES)))
    for x in report.layers:
        a, b = layers[x.name]
        sigma = dense_sigma(quantize(a, "fp32"), quantize(b, "fp32"), x.info.scale)[: x.info.rank]
        want = {n: fn(list(sigma), x.info.rank, (40, 24), 0.9) for n, fn in REF.items()}
        assert x.policies == want, x.name


# ---- parsing and the global table --------------------------------------------------------------


def test_parse_names_and_aliases():
    assert parse("energy,erank,knee") == ("energy", "erank", "knee")
    assert parse("all") == ("energy", "erank", "knee", "oht")
    assert parse("knee_elbow, entropy_effective,optimal_hard_threshold,energy_threshold") == (
        "knee",
        "erank",
        "oht",
        "energy",
    )
    with pytest.raises(InvalidArgumentError, match="unknown rank policy 'stable'"):
        parse("energy,stable")
    with pytest.raises(InvalidArgumentError, match="given twice"):
        parse("knee,knee_elbow")
    with pytest.raises(InvalidArgumentError):
        AuditOptions(policies=("nope",))
    with pytest.raises(InvalidArgumentError):
        AuditOptions(disagree_factor=0.5)


def test_summarise_global_and_disagreement():
    rows = [
        ("a", 16, {"energy": 2, "knee": 8}, False),  # 4× apart
        ("b", 16, {"energy": 4, "knee": 6}, False),  # 1.5×
        ("c", 16, {"energy": 16, "knee": 16}, False),
        ("d", 16, {"energy": 0, "knee": 0}, True),  # dead: left out
    ]
    out = summarise(rows, ("energy", "knee"), 2.0, Rounding.parse("pow2"), 1)
    e = out["global"]["energy"]
    assert e["median"] == 4.0 and e["p90"] == pytest.approx(np.percentile([2, 4, 16], 90)) and e["max"] == 16
    assert e["rank_median"] == 4 and e["rank_p90"] == 16 and e["share_keep_rank"] == pytest.approx(1 / 3)
    assert out["n_disagree"] == 1 and out["disagree"] == [
        {"name": "a", "ratio": 4.0, "ks": {"energy": 2, "knee": 8}}
    ]


# ---- CLI ---------------------------------------------------------------------------------------


def test_cli_policies_json_and_text(small_adapter, capsys):
    path, _ = small_adapter
    assert (
        main(["audit", str(path), "--json", "--policies", "energy,erank,knee", "--disagree-factor", "1.5"])
        == 0
    )
    d = strict_json(capsys.readouterr().out)
    assert d["options"]["policies"] == ["energy", "erank", "knee"] and d["options"]["disagree_factor"] == 1.5
    assert set(d["policies"]["global"]) == {"energy", "erank", "knee"}
    assert all(set(x["policies"]) == {"energy", "erank", "knee"} for x in d["layers"])
    ratios = {x["name"]: max(x["policies"].values()) / min(x["policies"].values()) for x in d["layers"]}
    assert {x["name"] for x in d["policies"]["disagree"]} == {n for n, v in ratios.items() if v > 1.5}
    assert main(["audit", str(path), "--policies", "all", "--disagree-factor", "1", "--layers"]) == 0
    out = capsys.readouterr().out
    assert "rank policies (per-layer k; rank: rounded, capped):" in out
    assert "layers where policies disagree by more than 1×:" in out
    assert "k:knee" in out and "k:oht" in out


def test_cli_policies_bad_name_is_one_line(small_adapter, capsys):
    path, _ = small_adapter
    assert main(["audit", str(path), "--policies", "energy,magic"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown rank policy 'magic'" in err
