"""PEFT rank_pattern / alpha_pattern: `PatternIndex` gives PEFT's answer (first key in order with
re.match(rf"(.*\\.)?({key})$", module)) in time linear in layers; the writer's patterns read back."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lorascope.formats import load, peft
from lorascope.formats._patterns import PatternIndex, rank_patterns
from lorascope.types import Adapter, LayerInfo, LoraDelta


def peft_first(keys: list[str], module: str) -> int | None:
    """PEFT's get_pattern_key, as an index (the reference the index must agree with)."""
    for i, key in enumerate(keys):
        if re.match(rf"(.*\.)?({key})$", module):
            return i
    return None


# Few letters and many dots, so that keys' dots often stand for other characters and keys match
# several suffixes of one module; a few regex keys compete on order with the simple ones.
_simple_key = st.text(alphabet="ab._-", max_size=6)
_regex_key = st.sampled_from(["a|b", "[ab]\\.b", "a.*", "^a\\.b", "(a|b)_", ".*", "b+", "a\\.a", "x?a"])
_keys = st.lists(st.one_of(_simple_key, _simple_key, _simple_key, _regex_key), max_size=12)
_module = st.lists(st.text(alphabet="ab_-x\n", max_size=3), min_size=1, max_size=4).map(".".join)


@settings(max_examples=400, deadline=None)
@given(keys=_keys, modules=st.lists(_module, min_size=1, max_size=8))
def test_index_agrees_with_peft_regex(keys, modules):
    table = dict.fromkeys(keys, 0)  # repeated keys: the first occurrence keeps its place, as in a dict
    for i, k in enumerate(table):
        table[k] = i
    order = list(table)
    index = PatternIndex(table, "cfg")
    for module in modules:
        assert index.first(module) == peft_first(order, module), (order, module)


@pytest.mark.parametrize(
    ("keys", "module", "want"),
    [
        (["q_proj"], "model.layers.0.q_proj", 0),
        (["layers.0.q_proj", "q_proj"], "model.layers.0.q_proj", 0),
        (["q_proj", "layers.0.q_proj"], "model.layers.0.q_proj", 0),  # first key in order wins
        (["yers.0.q_proj"], "model.layers.0.q_proj", None),  # a suffix must start after a '.'
        (["layers.1.q_proj", "model.layers.1.q"], "model.layers.1.q_proj", 0),
        (["a.b"], "x.aXb", 0),  # '.' matches any character ...
        (["a.b"], "x.a\nb", None),  # ... but a newline
        (["a.b"], "a.b\n", 0),  # '$' also matches before a final newline
        (["", "b"], "a.", 0),  # the empty key matches a module ending in '.'
        (["a|b", "b"], "x.b", 0),
        (["b", "a|b"], "x.b", 0),
        (["^x\\.a\\.q", "a.q"], "y.x.a.q", 1),  # an anchored key matches its module only
    ],
)
def test_index_examples(keys, module, want):
    assert peft_first(keys, module) == want
    assert PatternIndex(dict.fromkeys(keys, 0), "cfg").first(module) == want


def test_invalid_regex_is_reported_only_when_peft_would_reach_it():
    from lorascope.errors import FormatError

    index = PatternIndex({"q": 1, "(": 2}, "cfg.json")
    assert index.value("m.q", 0) == 1
    with pytest.raises(FormatError, match=r"^cfg\.json: pattern key '\(' is not a valid regular expression"):
        index.value("m.v", 0)


def test_writer_anchors_names_that_another_name_ends_with():
    """'a.q' also matches 'x.a.q': the writer checks its patterns and anchors what would be shadowed."""
    rows = [("a.q", 2, 1.0), ("b.q", 4, 1.0), ("c.q", 4, 1.0), ("x.a.q", 4, 1.0), ("x.b.q", 4, 1.0)]
    cfg = rank_patterns(rows, rslora=False)
    assert cfg["r"] == 4 and list(cfg["rank_pattern"]) == ["^x\\.a\\.q", "a.q"]
    keys = list(cfg["rank_pattern"])
    for name, r, _ in rows:
        i = peft_first(keys, name)
        assert (cfg["r"] if i is None else cfg["rank_pattern"][keys[i]]) == r, name


def test_written_adapter_with_nested_names_reads_back(tmp_path):
    rng = np.random.default_rng(0)
    deltas = []
    for name, r, scale in [
        ("a.q", 2, 1.0),
        ("b.q", 4, 1.0),
        ("c.q", 4, 0.5),
        ("x.a.q", 4, 1.0),
        ("x.c.q", 4, 1.0),
    ]:
        info = LayerInfo(name, "linear", r, 5, 6, scale, "fp32")
        deltas.append(LoraDelta(info, rng.standard_normal((r, 6)), rng.standard_normal((5, r))))
    peft.write(Adapter.from_deltas(deltas), tmp_path / "o")
    assert {(x.name, x.rank, x.scale) for x in load(tmp_path / "o").layers} == {
        (d.name, d.info.rank, d.info.scale) for d in deltas
    }


def _tiny_adapter(n: int) -> Adapter:
    rng = np.random.default_rng(0)
    deltas = []
    for i in range(n):
        r = 1 + (i % 3 == 0)  # every third layer has rank 2: thousands of rank_pattern keys
        info = LayerInfo(f"model.layers.{i // 4}.mlp.p{i % 4}", "linear", r, 4, 4, 0.5 + (i % 7), "fp32")
        deltas.append(
            LoraDelta(
                info, rng.standard_normal((r, 4)).astype("f4"), rng.standard_normal((4, r)).astype("f4")
            )
        )
    return Adapter.from_deltas(deltas)


@pytest.mark.slow
def test_20000_layer_adapter_reads_in_linear_time(tmp_path):
    adapter = _tiny_adapter(20_000)
    peft.write(adapter, tmp_path / "big")
    cfg = json.loads((tmp_path / "big" / "adapter_config.json").read_text())
    assert len(cfg["rank_pattern"]) > 6_000 and len(cfg["alpha_pattern"]) > 10_000
    t0 = time.process_time()  # CPU time: a busy machine delays the read without making it more work
    back = load(tmp_path / "big")
    seconds = time.process_time() - t0
    assert {x.name: (x.rank, x.scale) for x in back.layers} == {
        x.name: (x.rank, x.scale) for x in adapter.layers
    }
    assert seconds < 3.0, f"reading 20,000 layers took {seconds:.1f} CPU s"


@pytest.mark.torch
def test_real_peft_loads_written_patterns_with_every_layers_rank_and_scale(tmp_path):
    """PEFT itself resolves the anchored keys the writer adds for names another name ends with."""
    torch = pytest.importorskip("torch")
    peft_lib = pytest.importorskip("peft")

    class Sub(torch.nn.Module):
        def __init__(self, inner: bool):
            super().__init__()
            self.q = torch.nn.Linear(6, 5)
            if inner:
                self.a = Sub(False)

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.x = Sub(False), Sub(False), Sub(True)

    rng = np.random.default_rng(0)
    want = {"a.q": (2, 1.0), "b.q": (4, 1.0), "x.q": (4, 0.5), "x.a.q": (4, 1.0)}
    deltas = [
        LoraDelta(
            LayerInfo(n, "linear", r, 5, 6, s, "fp32"),
            rng.standard_normal((r, 6)),
            rng.standard_normal((5, r)),
        )
        for n, (r, s) in want.items()
    ]
    source = Adapter.from_deltas(deltas, format="peft", config={"target_modules": ["q"], "peft_type": "LORA"})
    peft.write(source, tmp_path / "o")
    assert "^x\\.a\\.q" in json.loads((tmp_path / "o" / "adapter_config.json").read_text())["rank_pattern"]
    model = peft_lib.PeftModel.from_pretrained(Tiny(), str(tmp_path / "o"))
    got = {
        name.removeprefix("base_model.model."): (m.r["default"], m.scaling["default"])
        for name, m in model.named_modules()
        if hasattr(m, "r") and "default" in getattr(m, "r", {})
    }
    assert got == want
