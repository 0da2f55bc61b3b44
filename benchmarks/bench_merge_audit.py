"""Time `lorascope merge-audit A B --json` on two Mistral-7B-shaped adapters against dense SVD and Gradience.

    python benchmarks/bench_merge_audit.py [--quick] [--repeats 5] [--profile] [--no-gradience]

One run measures, page cache warm (both files are read once before timing):
  (a) merge-audit  the whole `lorascope merge-audit A B --json -q` process: wall time (best of N and
                   median) and the child's peak RSS (GNU time %M = the child's ru_maxrss);
  (b) python       `python -c "import numpy"` and `python -c "import lorascope.cli.main"`: start-up floors;
      in-proc      lorascope.merge_audit(a, b).to_json() in this process: the work without start-up;
  (c) dense        for one k, q and gate layer: ΔW₁ and ΔW₂ formed in float32, np.linalg.svd
                   (full_matrices=False) of each, then cosine, top-k subspace overlaps, principal-angle
                   cosines and directional agreement from the explicit vectors; extrapolated to the
                   whole pair as n_layers · (2·t_q + 2·t_k + 3·t_gate)  (o ≈ q, v ≈ k, up ≈ down ≈ gate).
                   The same run checks lorascope's factor-only metrics against these dense ones;
  (d) Gradience    `gradience merge-audit --adapter-a A --adapter-b B --json` from a separate venv
                   (default /tmp/gradience-venv, see benchmarks/README.md), if installed;
  (e) ratio        each time divided by (a).
--profile adds a cProfile of one in-process merge_audit(a, b) (after a warm-up call), top 25 by
cumulative time, and a breakdown: reading + bf16 widening, Gram products, sign-conflict grid, rest.

The pair is generated once and cached (default /tmp/lorascope-bench-merge/{a,b}[-quick]):
  a  make_mistral_adapter.write_adapter(seed=0): the adapter bench_audit.py uses;
  b  per tensor, a mix of a's factor and an independent one (seed 1, same shapes and decay):
         A₂ = |c|·A₁ + √(1−c²)·N_A,   B₂ = c·B₁ + √(1−c²)·N_B
     so ΔW₂ ≈ c|c|·ΔW₁ + cross terms; c cycles over MIX per (layer, module), so the pair has
     independent (c = 0), partly shared and opposed (c < 0) layers, not only orthogonal ones.
Other processes on the machine load the cores: compare ratios within one run, and repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import make_mistral_adapter as gen  # noqa: E402
from _child import ChildFailed, best_of, lorascope_cmd, warm_cache  # noqa: E402

ROOT = HERE.parent
TARGET_WALL_S = 1.5
GRADIENCE_QUOTED = {"wall_s": 15.0, "peak_rss_mb": 980.0}  # the figure, not measured here
MIX = (0.0, 0.3, 0.6, 0.9, -0.6, -0.9)  # c per (layer, module), cycled
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "lorascope-bench-merge"
DEFAULT_GRADIENCE = Path(tempfile.gettempdir()) / "gradience-venv" / "bin" / "gradience"


# --- the adapter pair --------------------------------------------------------------------------


def mix_coefficient(key: str) -> float:
    """c of the layer a tensor key belongs to (same c for its lora_A and lora_B)."""
    parts = key.split(".")
    layer = int(parts[parts.index("layers") + 1])
    module = next(j for j, name in enumerate(gen.MODULES) if f".{name}." in key)
    return MIX[(layer * len(gen.MODULES) + module) % len(MIX)]


def write_mixed(out_dir: Path, n_layers: int, rank: int = 64) -> Path:
    """The second adapter: a's factors mixed with independent ones (module docstring)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = gen.tensor_specs(n_layers, rank)
    dest = out_dir / "adapter_model.safetensors"
    tmp = dest.with_suffix(".tmp")
    meta = {"format": "pt", "generator": "lorascope benchmarks (merge pair)", "mix": json.dumps(MIX)}
    with open(tmp, "wb") as f:
        f.write(gen.header_bytes(specs, meta))
        for index, (key, shape, t) in enumerate(specs):
            c = np.float32(mix_coefficient(key))
            s = np.float32(np.sqrt(1.0 - float(c) ** 2))
            first = gen.make_tensor(key, shape, t, 0, index)  # exactly a's factor before rounding
            noise = gen.make_tensor(key, shape, t, 1, index)
            first *= abs(c) if ".lora_A." in key else c
            first += s * noise
            f.write(gen.to_bf16_bits(first).tobytes())
    tmp.replace(dest)
    cfg = gen.adapter_config(rank, alpha=2 * rank)
    (out_dir / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    return dest


def ensure_pair(cache: Path, n_layers: int, quick: bool) -> tuple[Path, Path]:
    suffix = "-quick" if quick else ""
    a, b = cache / f"a{suffix}", cache / f"b{suffix}"
    if not (a / "adapter_model.safetensors").is_file():
        print(f"generating {a} ({n_layers} layers, seed 0) ...", file=sys.stderr)
        gen.write_adapter(a, n_layers=n_layers, seed=0)
    if not (b / "adapter_model.safetensors").is_file():
        print(f"generating {b} ({n_layers} layers, mixed with seed 1) ...", file=sys.stderr)
        write_mixed(b, n_layers)
    return a, b


# --- Gradience ----------------------------------------------------------------------------------


def gradience_run(exe: Path, a: Path, b: Path, repeats: int, timeout: float) -> dict[str, object]:
    """Gradience 0.11's merge-audit on the same pair, or the reason it did not run."""
    if not exe.is_file():
        return {"measured": False, "reason": f"{exe} not found (install: see benchmarks/README.md)"}
    cmd = [str(exe), "merge-audit", "--adapter-a", str(a), "--adapter-b", str(b), "--json"]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    try:
        out = best_of(cmd, repeats, env, timeout)
    except ChildFailed as e:
        return {"measured": False, "reason": str(e)}
    version = subprocess.run(
        [str(exe.with_name("python")), "-c", "import gradience; print(gradience.__version__)"],
        capture_output=True,
        text=True,
        env=env,
    ).stdout.strip()
    return {"measured": True, "version": version or "?", "command": " ".join(cmd), **out}


# --- in process --------------------------------------------------------------------------------


def in_process(a: Path, b: Path, repeats: int) -> float:
    """Best-of time of lorascope.merge_audit(a, b).to_json() here: the work without start-up."""
    from lorascope.merge import merge_audit

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        merge_audit(a, b).to_json()
        times.append(time.perf_counter() - t0)
    return min(times)


def profile(a: Path, b: Path, top: int = 25) -> dict[str, float]:
    """cProfile of one merge_audit(a, b) after a warm-up call; prints the top entries, returns a breakdown."""
    import cProfile
    import io
    import pstats

    from lorascope.merge import merge_audit

    merge_audit(a, b)  # warm-up: lazy imports, thread pool, scratch buffers
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    merge_audit(a, b).to_json()
    prof.disable()
    wall = time.perf_counter() - t0
    stream = io.StringIO()
    stats = pstats.Stats(prof, stream=stream).sort_stats("cumulative")
    stats.print_stats(top)
    print(f"\n--- cProfile: lorascope.merge_audit(a, b).to_json(), {wall:.3f} s under the profiler ---")
    print(stream.getvalue().rstrip())

    def cum(func: str, file_part: str = "lorascope") -> float:
        return sum(v[3] for (f, _, name), v in stats.stats.items() if name == func and file_part in f)

    def tot(func: str, file_part: str = "lorascope") -> float:
        return sum(v[2] for (f, _, name), v in stats.stats.items() if name == func and file_part in f)

    parts = {
        "read_and_widen_bf16": cum("delta"),  # Adapter.delta -> loader -> _read_bf16 (both factors)
        # pair_metrics' own time: the [A₁; A₂], [B₁ B₂] copies (np.concatenate is not seen by
        # cProfile in numpy 2) and the small k×k products
        "stack_factors": tot("pair_metrics"),
        "gram_products": cum("factor_grams"),  # helper thread included: the caller waits for it
        "sign_conflict_grid": cum("sign_conflict"),
        "isfinite_checks": tot("_layer"),  # audit._layer's own time: the np.isfinite ufuncs on the factors
        "to_json": cum("to_json"),
    }
    parts["rest"] = wall - sum(parts.values())
    parts["total_profiled"] = wall
    print("\nbreakdown (s, under the profiler): " + ", ".join(f"{k} {v:.3f}" for k, v in parts.items()))
    print(
        "  rest = r×r eigen-solves and SVDs, verdicts, loading headers, .all() of the finite checks, Python"
    )
    return parts


# --- dense reference ---------------------------------------------------------------------------


def dense_layer(d1, d2, tau: float) -> dict[str, object]:
    """The pairwise metrics from explicit float32 ΔW₁, ΔW₂ and their thin SVDs (pairwise.py's definitions)."""
    from lorascope.merge.pairwise import energy_k

    w1 = np.float32(d1.scale) * (d1.up.astype(np.float32) @ d1.down.astype(np.float32))  # (m, n)
    w2 = np.float32(d2.scale) * (d2.up.astype(np.float32) @ d2.down.astype(np.float32))  # (m, n)
    u1, s1, v1t = np.linalg.svd(w1, full_matrices=False)  # (m, p), (p,), (p, n)
    u2, s2, v2t = np.linalg.svd(w2, full_matrices=False)
    r1, r2 = d1.down.shape[0], d2.down.shape[0]
    s1, s2 = s1[:r1].astype(np.float64), s2[:r2].astype(np.float64)
    k1, k2 = energy_k(s1, tau), energy_k(s2, tau)
    u1, v1t, u2, v2t = u1[:, :k1], v1t[:k1], u2[:, :k2], v2t[:k2]
    uu, vv = u1.T @ u2, v1t @ v2t.T  # (k₁, k₂)
    g1 = np.einsum("ij,ji->i", u1.T @ w2, v1t.T).astype(np.float64)  # u₁ᵢᵀ ΔW₂ v₁ᵢ
    g2 = np.einsum("ij,ji->i", u2.T @ w1, v2t.T).astype(np.float64)
    kmin = min(k1, k2)
    num = float(np.sum(s1[:k1] * g1) + np.sum(s2[:k2] * g2))
    den = float(np.sum(s1[:k1] * np.abs(g1)) + np.sum(s2[:k2] * np.abs(g2)))
    return {
        "k": (k1, k2),
        "cosine": _dot64(w1, w2) / np.sqrt(_dot64(w1, w1) * _dot64(w2, w2)),
        "overlap_left": float(np.sum(uu.astype(np.float64) ** 2) / kmin),
        "overlap_right": float(np.sum(vv.astype(np.float64) ** 2) / kmin),
        "cos_left": np.clip(np.linalg.svd(uu, compute_uv=False), 0, 1).astype(np.float64),
        "cos_right": np.clip(np.linalg.svd(vv, compute_uv=False), 0, 1).astype(np.float64),
        "agreement": num / den if den > 0 else 0.0,
    }


def _dot64(x: np.ndarray, y: np.ndarray, rows: int = 1024) -> float:
    """⟨x, y⟩_F accumulated in float64, 1024 rows at a time (a float32 dot loses ~1e-4 on 58 M entries)."""
    return float(
        sum(
            np.vdot(x[i : i + rows].astype(np.float64), y[i : i + rows].astype(np.float64))
            for i in range(0, x.shape[0], rows)
        )
    )


def dense_baseline(a: Path, b: Path, modules: list[str], repeats: int, n_layers: int, layer: int) -> dict:
    """Dense reference on layer `layer`'s modules, agreement with lorascope, whole-pair estimate."""
    from lorascope.formats import load
    from lorascope.merge.pairwise import PairOptions, pair_metrics

    fa, fb = load(a), load(b)
    tau = PairOptions().energy
    out: dict[str, object] = {"layer": layer, "modules": {}}
    for module in modules:
        block = gen.MODULES[module][0]
        name = f"model.layers.{layer}.{block}.{module}"
        d1, d2 = fa.delta(name), fb.delta(name)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            ref = dense_layer(d1, d2, tau)
            times.append(time.perf_counter() - t0)
        ours = pair_metrics(d1, d2)
        same_k = (ours.k1, ours.k2) == ref["k"]
        diffs = {
            key: abs(getattr(ours, key) - ref[key])
            for key in ("cosine", "overlap_left", "overlap_right", "agreement")
        }
        if same_k:
            diffs["cos_left"] = float(np.max(np.abs(ours.cos_left - ref["cos_left"]), initial=0.0))
            diffs["cos_right"] = float(np.max(np.abs(ours.cos_right - ref["cos_right"]), initial=0.0))
        out["modules"][module] = {
            "seconds": min(times),
            "mix_c": mix_coefficient(f"{name}.lora_A."),
            "k_lorascope": [ours.k1, ours.k2],
            "k_dense": list(ref["k"]),
            "metrics_lorascope": {key: getattr(ours, key) for key in ("cosine", "overlap", "agreement")},
            "max_abs_diff": diffs,
        }
    t = {m: out["modules"][m]["seconds"] for m in modules}  # type: ignore[index]
    if {"q_proj", "k_proj", "gate_proj"} <= set(t):
        out["whole_pair_estimate"] = n_layers * (2 * t["q_proj"] + 2 * t["k_proj"] + 3 * t["gate_proj"])
    return out


# --- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="4-layer adapters (same shapes), for a smoke run")
    p.add_argument("--repeats", type=int, default=5, help="process runs per timing, best kept (≥ 3)")
    p.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help=f"where the pair lives (default {DEFAULT_CACHE})"
    )
    p.add_argument(
        "--dense-modules",
        default="k_proj,q_proj,gate_proj",
        help="layers of the dense reference (k,q,gate give the whole-pair estimate; '' skips)",
    )
    p.add_argument("--dense-repeats", type=int, default=1, help="dense runs per layer (each 2-120 s)")
    p.add_argument("--gradience", type=Path, default=DEFAULT_GRADIENCE, help="gradience executable (0.11)")
    p.add_argument("--gradience-repeats", type=int, default=3, help="Gradience process runs (≈15 s each)")
    p.add_argument(
        "--gradience-timeout", type=float, default=300, help="seconds before a Gradience run is killed"
    )
    p.add_argument("--no-gradience", action="store_true", help="skip Gradience (quoted figure only)")
    p.add_argument(
        "--profile", action="store_true", help="cProfile of the in-process call, top 25 cumulative"
    )
    p.add_argument("--out", type=Path, help="results JSON (default bench-out/bench_merge_audit[-quick].json)")
    args = p.parse_args(argv)
    if args.repeats < 3:
        p.error("--repeats must be ≥ 3")
    n_layers = 4 if args.quick else 32
    a, b = ensure_pair(args.cache, n_layers, args.quick)
    for adapter in (a, b):
        warm_cache(adapter / "adapter_model.safetensors")
    load_before = os.getloadavg()

    cli = best_of([*lorascope_cmd(), "merge-audit", str(a), str(b), "--json", "-q"], args.repeats)
    python = best_of([sys.executable, "-c", "import numpy"], args.repeats)
    imports = best_of([sys.executable, "-c", "import lorascope.cli.main"], args.repeats)
    in_proc = in_process(a, b, args.repeats)
    gradience = (
        {"measured": False, "reason": "--no-gradience"}
        if args.no_gradience
        else gradience_run(args.gradience, a, b, args.gradience_repeats, args.gradience_timeout)
    )
    modules = [m for m in args.dense_modules.split(",") if m]
    dense = dense_baseline(a, b, modules, args.dense_repeats, n_layers, 0) if modules else None
    load_after = os.getloadavg()
    results = {
        "adapters": [str(a), str(b)],
        "file_mb": round((a / "adapter_model.safetensors").stat().st_size / 1e6, 1),
        "n_decoder_layers": n_layers,
        "n_shared_layers": n_layers * len(gen.MODULES),
        "mix": list(MIX),
        "repeats": args.repeats,
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": _cpu_name(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        },
        "merge_audit_process": cli,
        "python_numpy_startup": python,
        "cli_import_process": imports,
        "merge_audit_in_process_s": in_proc,
        "dense": dense,
        "gradience": gradience,
        "gradience_quoted_not_measured_here": GRADIENCE_QUOTED,
        "target_wall_s": TARGET_WALL_S,
        "target_met": cli["wall_s"] <= TARGET_WALL_S,
    }
    print(_table(results))
    if args.profile:
        results["profile_breakdown_s"] = profile(a, b)
    out = args.out or ROOT / "bench-out" / f"bench_merge_audit{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    print(f"\nresults: {out}")
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _jsonable(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(type(x))


def _table(r: dict) -> str:
    c = r["merge_audit_process"]
    base, rss = c["wall_s"], c["peak_rss_mb"]
    rows: list[tuple[str, float, str, str]] = [
        ("lorascope merge-audit --json (process)", base, f"{rss:.0f}", "1.00"),
        (
            "python -c 'import numpy' (process)",
            r["python_numpy_startup"]["wall_s"],
            f"{r['python_numpy_startup']['peak_rss_mb']:.0f}",
            f"{r['python_numpy_startup']['wall_s'] / base:.2f}",
        ),
        (
            "python -c 'import lorascope.cli.main' (process)",
            r["cli_import_process"]["wall_s"],
            f"{r['cli_import_process']['peak_rss_mb']:.0f}",
            f"{r['cli_import_process']['wall_s'] / base:.2f}",
        ),
        (
            "merge_audit(a, b).to_json(), in process",
            r["merge_audit_in_process_s"],
            "-",
            f"{r['merge_audit_in_process_s'] / base:.2f}",
        ),
    ]
    d = r["dense"]
    if d:
        shapes = {m: f"{gen.MODULES[m][1]}x{gen.MODULES[m][2]}" for m in d["modules"]}
        for m, v in d["modules"].items():
            rows.append(
                (
                    f"dense fp32 SVDs + metrics, one {m} ({shapes[m]})",
                    v["seconds"],
                    "-",
                    f"{v['seconds'] / base:.1f}",
                )
            )
        if "whole_pair_estimate" in d:
            est = d["whole_pair_estimate"]
            rows.append(
                (f"dense, whole pair (est., {r['n_decoder_layers']} layers)", est, "-", f"{est / base:.0f}")
            )
    g = r["gradience"]
    if g.get("measured"):
        rows.append(
            (
                f"gradience {g['version']} merge-audit --json (process)",
                g["wall_s"],
                f"{g['peak_rss_mb']:.0f}",
                f"{g['wall_s'] / base:.1f}",
            )
        )
    q = r["gradience_quoted_not_measured_here"]
    rows.append(
        (
            "Gradience 0.11, issue's figure (NOT measured here)",
            q["wall_s"],
            f"{q['peak_rss_mb']:.0f}",
            f"{q['wall_s'] / base:.1f}",
        )
    )
    m = r["machine"]
    lines = [
        f"pair {r['adapters'][0]} + {r['adapters'][1]}: {r['file_mb']} MB each, "
        f"{r['n_shared_layers']} shared layers, bf16, r=64; best of {r['repeats']}; {m['cpus']} CPUs; "
        f"load avg before {m['loadavg_before'][0]:.2f}, after {m['loadavg_after'][0]:.2f}",
        f"| {'what':<56} | {'time (s)':>9} | {'peak RSS (MB)':>13} | {'x lorascope':>11} |",
        f"|{'-' * 58}|{'-' * 11}|{'-' * 15}|{'-' * 13}|",
    ]
    lines += [f"| {w:<56} | {t:>9.3f} | {mb:>13} | {x:>11} |" for w, t, mb, x in rows]
    if d:
        for mod, v in d["modules"].items():
            diffs = ", ".join(f"{k} {x:.1e}" for k, x in v["max_abs_diff"].items())
            k_note = (
                ""
                if v["k_lorascope"] == v["k_dense"]
                else f" (k differs: {v['k_lorascope']} vs {v['k_dense']})"
            )
            mt = v["metrics_lorascope"]
            lines.append(
                f"{mod} (c={v['mix_c']:+.1f}: cosine {mt['cosine']:+.3f}, overlap {mt['overlap']:.3f}, "
                f"agreement {mt['agreement']:+.3f}) vs dense fp32, max abs diff: {diffs}{k_note}"
            )
    if g.get("measured"):
        lines.append(
            f"Gradience measured here: {g['wall_s']:.2f} s best, {g['wall_median_s']:.2f} s median, "
            f"{g['peak_rss_mb']:.0f} MB -> lorascope is {g['wall_s'] / base:.1f}x faster, "
            f"{g['peak_rss_mb'] / rss:.1f}x less memory"
        )
    else:
        lines.append(f"Gradience not measured: {g['reason']}")
    met = "met" if r["target_met"] else "NOT met"
    lines.append(
        f"target (<= {TARGET_WALL_S} s whole process): {met}; merge-audit best {base:.3f} s, "
        f"median {c['wall_median_s']:.3f} s, peak RSS {rss:.0f} MB"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
