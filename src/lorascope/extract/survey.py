"""What changed between two checkpoints, tensor by tensor, and what extract does with each change.

`survey(base, tuned, ...)` reads every matched pair once (one pair in memory at a time) and records
‖W_tuned − W_base‖_F and ‖W_base‖_F in float64; no tensor is kept.  `plan_extraction` then sorts
the changes:

* LoRA layers: a changed 2-D (linear) or 4-D (conv, reshaped to (out, c_in·kh·kw) as compress and
  PEFT do) `weight` whose relative change ‖ΔW‖/‖W_base‖ is at least `min_change`, of a module that
  is neither an embedding nor a head, and that `--modules` selects.
* the bias of such a layer, when it changed: PEFT's `lora_bias` (lora_B.bias = Δb at scale 1).
* full weights: any other module with a changed parameter (LayerNorm, embeddings, heads, a linear
  whose bias alone changed) and tensors only the tuned checkpoint has (a new classifier head).
  PEFT keeps them as `modules_to_save`; other formats cannot hold them and list them.
* unchanged (ΔW = 0 exactly), below `min_change`, not float (int buffers such as position_ids),
  unmatched: counted and listed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import InvalidArgumentError
from ..parallel import ordered_map
from .checkpoint import Checkpoint, KeyMatch, matched_keys
from .lowrank import sq_norm

# module names kept as full weights, never as LoRA: embeddings and task heads
FULL_NAMES = re.compile(r"(^|\.)(\w*embed\w*|wte|wpe|shared|lm_head|classifier|score|qa_outputs)$")

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Change:
    key: str  # the tuned checkpoint's key (output names follow the tuned model)
    base_key: str | None  # None: only the tuned checkpoint has it
    shape: tuple[int, ...]
    dtype: str  # the tuned tensor's storage dtype
    delta_norm: float  # ‖W_tuned − W_base‖_F (for a tuned-only key: ‖W_tuned‖_F)
    base_norm: float  # ‖W_base‖_F (0 for a tuned-only key)

    @property
    def module(self) -> str:
        return self.key.rpartition(".")[0]

    @property
    def param(self) -> str:
        return self.key.rpartition(".")[2]

    @property
    def rel(self) -> float:
        """‖ΔW‖/‖W_base‖ (inf where the base is zero or absent and the tensor is not)."""
        if self.delta_norm == 0:
            return 0.0
        return self.delta_norm / self.base_norm if self.base_norm > 0 else math.inf


@dataclass(frozen=True)
class Survey:
    changes: tuple[Change, ...]
    match: KeyMatch
    not_float: tuple[str, ...]  # int/bool tensors (buffers): not compared


def survey(base: Checkpoint, tuned: Checkpoint, progress: Progress | None = None) -> Survey:
    match = matched_keys(base, tuned, "the base checkpoint")
    items: list[tuple[str | None, str]] = []
    skipped: list[str] = []
    for b, t in match.pairs:
        if base.is_float(b) and tuned.is_float(t):
            items.append((b, t))
        else:
            skipped.append(t)
    items += [(None, t) for t in match.only_tuned if tuned.is_float(t)]
    not_float = skipped + [t for t in match.only_tuned if not tuned.is_float(t)]

    def measure(pair: tuple[str | None, str]) -> Change:
        b, t = pair
        w = tuned.get(t)
        if b is None:
            return Change(t, None, tuned.shape(t), tuned.dtype(t), math.sqrt(sq_norm(w)), 0.0)
        w0 = base.get(b)
        d_sq = _diff_sq(w, w0)
        return Change(t, b, tuned.shape(t), tuned.dtype(t), math.sqrt(d_sq), math.sqrt(sq_norm(w0)))

    changes = []
    for i, change in enumerate(ordered_map(measure, items, max_workers=1)):
        changes.append(change)
        if progress:
            progress(i + 1, len(items), f"survey {change.key}")
    return Survey(tuple(changes), match, tuple(not_float))


def _diff_sq(w, w0) -> float:
    """‖w − w0‖² in float64 by row blocks: the difference of two stored floats is exact in float64."""
    lead = w.shape[0] if w.ndim else 1
    rows_a, rows_b = w.reshape(lead, -1), w0.reshape(lead, -1)
    step = max(1, (1 << 20) // max(rows_a.shape[1], 1))
    total = 0.0
    for i in range(0, rows_a.shape[0], step):
        d = rows_a[i : i + step].astype("float64") - rows_b[i : i + step]  # (≤ step, n)
        total += float((d * d).sum())
    return total


@dataclass(frozen=True)
class Plan:
    lora: tuple[Change, ...]  # weights written as LoRA layers
    lora_bias: tuple[Change, ...]  # changed biases of those layers
    full_modules: tuple[str, ...]  # modules kept as full weights (PEFT modules_to_save)
    full: tuple[Change, ...]  # their changed tensors
    below: tuple[Change, ...]  # changed by less than min_change: skipped
    unchanged: int  # tensors with ΔW = 0 exactly
    outside: tuple[Change, ...]  # changed weights that --modules leaves out


def plan_extraction(s: Survey, min_change: float, modules: str | None = None) -> Plan:
    try:
        selected = re.compile(modules) if modules else None
    except re.error as e:
        raise InvalidArgumentError(f"--modules is not a regular expression ({e}): {modules!r}") from None
    changed = [c for c in s.changes if c.rel > 0]
    below = tuple(c for c in changed if c.rel < min_change)
    live = [c for c in changed if c.rel >= min_change]
    lora: list[Change] = []
    outside: list[Change] = []
    for c in live:
        if (
            c.base_key is None
            or c.param != "weight"
            or len(c.shape) not in (2, 4)
            or FULL_NAMES.search(c.module)
        ):
            continue
        (lora if selected is None or selected.search(c.module) else outside).append(c)
    lora_modules = {c.module for c in lora}
    taken = {c.key for c in lora} | {c.key for c in outside}
    bias = [c for c in live if c.module in lora_modules and c.param == "bias"]
    taken |= {c.key for c in bias}
    left_out = {o.module for o in outside}  # their other changed tensors (biases) are left out too
    outside += [c for c in live if c.module in left_out and c.key not in taken]
    taken |= {c.key for c in outside}
    full = [c for c in live if c.key not in taken]
    return Plan(
        lora=tuple(lora),
        lora_bias=tuple(bias),
        full_modules=tuple(sorted({c.module or c.key for c in full})),
        full=tuple(full),
        below=below,
        unchanged=len(s.changes) - len(changed),
        outside=tuple(outside),
    )
