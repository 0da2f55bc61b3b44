"""Every command is linear in the number of layers and flat in memory.

Linear: each command runs on a 2,000-layer and a 20,000-layer adapter of tiny layers (so per-layer
bookkeeping, not arithmetic, dominates); 10× the layers must cost well under 20× the CPU time (a
quadratic step, such as a linear lookup per layer, costs ~100×).  CPU time of this process, not wall
time: a busy machine delays a command without making it do more work, so it cannot fail the test.
Flat: auditing or compressing an adapter of larger layers holds a few layers' factors, not the
adapter (tracemalloc peak).
"""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest

from lorascope import audit_adapter, compress_file, load, merge_audit, merge_files
from lorascope.compress import RankMode
from lorascope.convert import convert_file
from lorascope.formats import peft
from lorascope.merge import MergePlan
from lorascope.types import Adapter, LayerInfo, LoraDelta

pytestmark = pytest.mark.slow


def tiny_adapter(n: int, seed: int, out: int = 6, inn: int = 5) -> Adapter:
    """n layers named like a decoder (model.layers.i.self_attn.q_proj, ...), ranks 1-4, fp32."""
    rng = np.random.default_rng(seed)
    deltas = []
    for i in range(n):
        r = 1 + i % 4
        name = f"model.layers.{i // 4}.self_attn.{'qkvo'[i % 4]}_proj"
        info = LayerInfo(name, "linear", r, out, inn, 0.5 + (i % 3), "fp32")
        a = rng.standard_normal((r, inn)).astype(np.float32)
        b = rng.standard_normal((out, r)).astype(np.float32)
        deltas.append(LoraDelta(info, a, b))
    cfg = {"peft_type": "LORA", "base_model_name_or_path": "tiny/decoder", "target_modules": ["q_proj"]}
    return Adapter.from_deltas(deltas, format="peft", config=cfg)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    out = {}
    for n in (2_000, 20_000):
        a, b = root / f"a{n}", root / f"b{n}"
        peft.write(tiny_adapter(n, 0), a)  # varied ranks and scales: rank_pattern / alpha_pattern keys
        peft.write(tiny_adapter(n, 1), b)
        out[n] = (a, b)
    return out, root


def _seconds(fn) -> float:
    """CPU seconds of this process (all threads) spent in fn."""
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


COMMANDS = {
    "read": lambda a, b, dest: load(a).params,
    "audit": lambda a, b, dest: audit_adapter(a).to_json(),
    "compress": lambda a, b, dest: compress_file(a, dest, RankMode("energy", 0.8)),
    "merge-audit": lambda a, b, dest: merge_audit(a, b).to_json(),
    "merge": lambda a, b, dest: merge_files([a, b], dest, MergePlan((1.0, 0.5))),
    "convert": lambda a, b, dest: convert_file(a, dest.with_suffix(".safetensors"), to="kohya"),
}


@pytest.mark.parametrize("command", COMMANDS)
def test_linear_in_layers(adapters, command):
    paths, root = adapters
    fn = COMMANDS[command]
    # best of two runs per size (output paths differ: outputs are created exclusively): cache and
    # allocator noise must not pass for superlinear growth
    times = {
        n: min(_seconds(lambda n=n, k=k: fn(*paths[n], root / f"{command}-{n}-{k}")) for k in range(2))
        for n in paths
    }
    assert times[20_000] < 20 * max(times[2_000], 0.05), times


def test_compressed_output_reads_back_linearly(adapters):
    """compress writes one rank_pattern key per layer whose rank differs: 20k keys read back fast."""
    paths, root = adapters
    dest = root / "compress-back"
    compress_file(paths[20_000][0], dest, RankMode("energy", 0.6))
    assert _seconds(lambda: load(dest)) < 10.0


def test_memory_stays_flat(tmp_path):
    """40 layers of 512×512, r=32 (128 KB of factors each, 5 MB in all): the passes hold a few."""
    rng = np.random.default_rng(0)
    deltas = [
        LoraDelta(
            LayerInfo(f"model.layers.{i}.mlp.up_proj", "linear", 32, 512, 512, 1.0, "fp32"),
            rng.standard_normal((32, 512)).astype(np.float32),
            rng.standard_normal((512, 32)).astype(np.float32),
        )
        for i in range(40)
    ]
    path = tmp_path / "big"
    peft.write(Adapter.from_deltas(deltas, format="peft", config={"peft_type": "LORA"}), path)
    del deltas
    for run in (
        lambda: audit_adapter(path),
        lambda: compress_file(path, tmp_path / "small", RankMode("rank", 8)),
    ):
        tracemalloc.start()
        run()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 2.5e6, peak  # the whole adapter's factors would be 5.2 MB (fp32), 10 MB as f64
