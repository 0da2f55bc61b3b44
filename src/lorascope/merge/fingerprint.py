"""Fingerprints of a merge plan's adapters: `merge-audit --plan` writes them, `merge --plan` checks them.

A fingerprint says what a plan was computed from, without the path (a moved adapter still
matches):
* `format` and `n_layers`;
* `layers_sha256`: sha256 of one line per layer, in the adapter's order: name, kind, out, in, rank;
* `weights_sha256`: sha256 of the files holding the tensors — a file adapter: that file; a
  directory (PEFT): its `.safetensors` / `.bin` files, by name, each hashed as name + bytes.
A plan is refused for adapters whose fingerprints differ (another or a retrained adapter), with
its own line for the same adapters given in another order; `--ignore-fingerprints` overrides.  A
plan without fingerprints (written by hand or by an older lorascope) is accepted with a note.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError
from ..types import Adapter

KEYS = ("format", "n_layers", "layers_sha256", "weights_sha256")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def fingerprint(adapter: Adapter) -> dict[str, Any]:
    """The fingerprint of one adapter (module docstring)."""
    lines = "".join(
        f"{x.name}\t{x.kind}\t{x.out_features}\t{x.in_features}\t{x.rank}\n" for x in adapter.layers
    )
    return {
        "format": adapter.format,
        "n_layers": len(adapter.layers),
        "layers_sha256": hashlib.sha256(lines.encode("utf-8", "surrogatepass")).hexdigest(),
        "weights_sha256": _weights_sha256(adapter.path),
    }


def _weights_sha256(path: str | None) -> str | None:
    if path is None:
        return None
    p = Path(path)
    files = (
        [p] if p.is_file() else sorted(x for x in p.iterdir() if x.is_file() and x.suffix in _WEIGHT_SUFFIXES)
    )
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode("utf-8", "surrogatepass") + b"\0")
        one = hashlib.sha256()
        with open(f, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                one.update(block)
        h.update(one.digest())
    return h.hexdigest()


def check_plan_inputs(
    prints: Sequence[dict[str, Any]], adapters: Sequence[Adapter], plan_path: str | None = None
) -> str | None:
    """None when the plan's fingerprints match the adapters in order; a note when the plan has
    none; InvalidArgumentError (one line naming the plan and the adapter) otherwise."""
    if not prints:
        return (
            "the plan carries no fingerprints of its adapters (written by hand or by an older "
            "lorascope): it was not checked against the adapters given"
        )
    ours = [fingerprint(a) for a in adapters]  # exactly the KEYS fields; each adapter's files hashed once
    theirs = [{k: p.get(k) for k in KEYS} for p in prints]
    if ours == theirs:
        return None
    if len(ours) == len(theirs) and all(x in theirs for x in ours) and all(x in ours for x in theirs):
        i = next(i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b)
        j = theirs.index(ours[i])
        raise InvalidArgumentError(
            f"the plan was written for these adapters in another order: adapter {i + 1} "
            f"({adapters[i].path}) is the plan's adapter {j + 1}; give them in the plan's order "
            "(or --ignore-fingerprints)",
            path=plan_path,
        )
    for i, (a, b) in enumerate(zip(ours, theirs, strict=False)):
        if a != b:
            what = next(k for k in KEYS if a[k] != b[k]).removesuffix("_sha256").replace("_", " ")
            raise InvalidArgumentError(
                f"the plan was written for other adapters: adapter {i + 1} ({adapters[i].path}) differs "
                f"from the plan's ({what}); run merge-audit --plan on these adapters "
                "(or --ignore-fingerprints)",
                path=plan_path,
            )
    raise InvalidArgumentError(
        f"the plan has fingerprints of {len(theirs)} adapters, {len(ours)} were given", path=plan_path
    )
