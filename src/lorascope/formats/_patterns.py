"""PEFT's `rank_pattern` / `alpha_pattern`: the lookup PEFT does, linear in layers, and the writer side.

Reading.  PEFT (`peft.utils.other.get_pattern_key`) gives module M the value of the first key K, in
dict order, with ``re.match(rf"(.*\\.)?({K})$", M)``.  Trying every key on every module costs
layers × keys regex calls: quadratic for an adapter whose 20,000 layers each have their own rank.
`PatternIndex` gives the same answer in time independent of the number of keys:

* A *simple* key holds only ``[A-Za-z0-9_-]`` and ``.``; only ``.`` is special in it (any character
  but a newline).  K matches M iff the suffix S = M[-len(K):] exists, is all of M or follows a
  literal ``.``, and K[j] == "." or K[j] == S[j] for every j.  Simple keys are indexed by
  (length, positions of their dots) → {K: index of its first occurrence}.  For a module, every
  suffix start (0 and after each ``.``) and every dot-position group of that suffix's length,
  S with ``.`` written at the group's positions is looked up; equal strings ⇔ a match.
* Any other key is tried with its own regex (compiled once, when first needed), in key order, only
  while its index is below the best simple match: the first key in order wins, as in PEFT.  An
  invalid regex, or one whose matching could backtrack without bound (`_regex.backtracking_risk`:
  nested repeats, a repeated alternation whose branches can start alike, more than a few unbounded
  repeats, over 1000 characters), is an error naming the key when PEFT would reach it, not before.
* A module name holding a newline (where ``.`` and ``$`` behave differently) is matched with PEFT's
  regex for every key.

Writing.  `rank_patterns` chooses r / lora_alpha (the most common pair) and pattern keys for the
other layers, keys being the layer names themselves (simple keys, so reading stays linear).  A name
can also match another layer whose name ends with it ("a.q" matches "x.a.q"), so the result is
checked with `PatternIndex`, and every layer that would get another layer's value gets an anchored
key (``^`` + escaped name: exactly that module), placed first.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import FormatError
from ..types import peft_alpha
from ._header import short_repr
from ._regex import backtracking_risk

_SIMPLE = re.compile(r"[A-Za-z0-9_.\-]*")


class PatternIndex:
    """The first key (in order) of one pattern dict that matches a module, as PEFT finds it."""

    def __init__(self, patterns: Mapping[str, Any], path: str | Path):
        self.keys = list(patterns)
        self.values = list(patterns.values())
        self._path = path
        groups: dict[tuple[int, tuple[int, ...]], dict[str, int]] = {}
        self._regex_keys: list[int] = []  # indices of non-simple keys, ascending
        for i, key in enumerate(self.keys):
            if _SIMPLE.fullmatch(key):
                dots = tuple(j for j, c in enumerate(key) if c == ".")
                groups.setdefault((len(key), dots), {}).setdefault(key, i)
            else:
                self._regex_keys.append(i)
        self._by_length: dict[int, list[tuple[tuple[int, ...], dict[str, int]]]] = {}
        for (n, dots), table in groups.items():
            self._by_length.setdefault(n, []).append((dots, table))
        self._compiled: dict[int, re.Pattern[str]] = {}

    def first(self, module: str) -> int | None:
        """Index of the first key matching `module`, or None."""
        if "\n" in module:
            return self._first_regex(module, range(len(self.keys)), len(self.keys))
        best = len(self.keys)
        starts = [0] + [j + 1 for j, c in enumerate(module) if c == "."]
        for start in starts:
            suffix = module[start:]
            for dots, table in self._by_length.get(len(suffix), ()):
                if dots:
                    chars = list(suffix)
                    for j in dots:
                        chars[j] = "."
                    masked = "".join(chars)
                else:
                    masked = suffix
                i = table.get(masked)
                if i is not None and i < best:
                    best = i
        return self._first_regex(module, self._regex_keys, best)

    def value(self, module: str, default: Any) -> Any:
        i = self.first(module)
        return default if i is None else self.values[i]

    def _first_regex(self, module: str, candidates, best: int) -> int | None:
        for i in candidates:
            if i >= best:
                break
            if self._regex(i).match(module):
                return i
        return best if best < len(self.keys) else None

    def _regex(self, i: int) -> re.Pattern[str]:
        if i not in self._compiled:
            key = self.keys[i]
            try:
                why = backtracking_risk(key)
                self._compiled[i] = re.compile(rf"(.*\.)?({key})$")
            except (re.error, RecursionError, OverflowError) as e:
                why = f"is not a valid regular expression ({e})"
            if why:
                raise FormatError(f"pattern key {short_repr(key)} {why}", path=self._path)
        return self._compiled[i]


def pattern_value(patterns: Mapping[str, Any], module: str, default: Any, path: str | Path) -> Any:
    """PEFT's get_pattern_key for one module (builds the index: use `PatternIndex` for many)."""
    return PatternIndex(patterns, path).value(module, default)


def clean_alpha(alpha: float) -> float | int:
    """Store near-integers as ints (16.000000000001 → 16) so configs stay readable; else exact."""
    near = round(alpha)
    return int(near) if abs(alpha - near) <= 1e-9 * max(1.0, abs(alpha)) else float(alpha)


def rank_patterns(rows: Sequence[tuple[str, int, float]], rslora: bool) -> dict[str, Any]:
    """r, lora_alpha, rank_pattern, alpha_pattern giving each (module, rank, scale) row its rank and
    scale under PEFT's rules: alpha = scale·r (scale·√r with rsLoRA).  Module names must not carry
    `base_model.model.` (PEFT matches keys against paths without it)."""
    pairs = [(r, clean_alpha(peft_alpha(scale, r, rslora))) for _, r, scale in rows]
    if not pairs:
        return {"rank_pattern": {}, "alpha_pattern": {}}
    counts = Counter(pairs)
    top = max(counts.values())
    r0, a0 = max(p for p, c in counts.items() if c == top)  # ties: the larger rank
    names = [name for name, _, _ in rows]
    return {
        "r": r0,
        "lora_alpha": a0,
        "rank_pattern": _exact(names, [r for r, _ in pairs], r0),
        "alpha_pattern": _exact(names, [a for _, a in pairs], a0),
    }


def _exact(names: list[str], values: list[Any], default: Any) -> dict[str, Any]:
    """{key: value} that PEFT resolves to values[i] for names[i] (default where no key matches)."""
    plain = {n: v for n, v in zip(names, values, strict=True) if v != default}
    anchored: dict[str, Any] = {}
    while True:
        table = {**anchored, **plain}
        index = PatternIndex(table, "<rank_patterns>")
        wrong = [i for i, n in enumerate(names) if index.value(n, default) != values[i]]
        if not wrong:
            return table
        for i in wrong:  # an anchored key only matches its own module, and it comes first
            anchored[f"^{re.escape(names[i])}"] = values[i]
            plain.pop(names[i], None)
