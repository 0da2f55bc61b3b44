"""Full model checkpoints in safetensors, read one tensor at a time, and their keys matched.

`open_checkpoint(path)` takes a .safetensors file, a folder holding one or several (sharded:
`model.safetensors.index.json`'s `weight_map` names the shard of every key), or the index file
itself.  Every shard is opened through `formats.open_safetensors` (header checked, positional reads,
bf16 widened to float32 exactly), so the memory in use is one tensor.  Pickled checkpoints
(.bin/.pt/.pth/.ckpt) are refused, never unpickled.

`match_keys(base, tuned)` pairs the keys of two checkpoints of one architecture whose names differ
by a leading prefix (`bert.encoder…` against `encoder…`, `model.layers…` against `layers…`): a key
matches itself, else the other side's key that equals it once a prefix of one or two dotted
components is removed from either side, when exactly one does.  Keys left without a partner are
reported, never dropped silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FormatError, InputNotFoundError, UnsupportedError
from ..files import json_loads, read_text
from ..formats import SafetensorsSource, open_safetensors

INDEX = "model.safetensors.index.json"
PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
FLOATS = ("fp16", "bf16", "fp32", "fp64")
_PREFIX_DEPTH = 2  # prefixes of at most two dotted components are tried ("model.", "base_model.model.")


@dataclass(frozen=True)
class Checkpoint:
    """A model's tensors by key, across its shards; `get` reads one tensor (bf16 as float32)."""

    path: str
    sources: Mapping[str, SafetensorsSource]  # key -> the shard that holds it

    def keys(self) -> list[str]:
        return list(self.sources)

    def shape(self, key: str) -> tuple[int, ...]:
        return self.sources[key].shape(key)

    def dtype(self, key: str) -> str:
        return self.sources[key].dtype(key)

    def file(self, key: str) -> str:
        return self.sources[key].path

    def get(self, key: str) -> np.ndarray:
        return self.sources[key].get(key)

    def is_float(self, key: str) -> bool:
        return self.dtype(key) in FLOATS


def open_checkpoint(path: str | Path, what: str = "checkpoint") -> Checkpoint:
    """The checkpoint at `path` (file, folder, or index file); one-line errors naming the file."""
    p = Path(path)
    if not p.exists():
        raise InputNotFoundError(f"{what} not found: no such file or directory", path=p)
    if p.is_dir():
        if (p / INDEX).is_file():
            return _sharded(p / INDEX)
        files = sorted(p.glob("*.safetensors"))
        if not files:
            pickles = sorted(q.name for q in p.iterdir() if q.suffix in PICKLES)
            why = (
                f" (only pickles: {', '.join(pickles[:3])}, which lorascope never unpickles)"
                if pickles
                else ""
            )
            raise FormatError(f"no .safetensors files in this {what} folder{why}", path=p)
        return _joined(str(p), files)
    if p.name.endswith(".index.json"):
        return _sharded(p)
    if p.suffix in PICKLES:
        raise UnsupportedError(
            f"{what} is a pickle ({p.suffix}); lorascope never unpickles model files",
            path=p,
            hint="save the model with safetensors (save_pretrained(..., safe_serialization=True))",
        )
    return _joined(str(p), [p])


def _joined(path: str, files: Iterable[Path]) -> Checkpoint:
    sources: dict[str, SafetensorsSource] = {}
    for f in files:
        src = open_safetensors(f)
        for key in src.keys():
            if key in sources:
                raise FormatError(f"key {key!r} is in two files ({sources[key].path})", path=f, keys=[key])
            sources[key] = src
    return Checkpoint(path, sources)


def _sharded(index: Path) -> Checkpoint:
    doc = json_loads(read_text(index, "index file"), index)
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise FormatError("expected a JSON object with a 'weight_map' of key -> shard file", path=index)
    shards: dict[str, tuple[SafetensorsSource, set[str]]] = {}
    sources: dict[str, SafetensorsSource] = {}
    for key, name in weight_map.items():
        shard = index.parent / name
        if Path(name).name != name or not shard.is_file():
            raise FormatError(
                f"key {key!r}: shard {name!r} not found beside the index", path=index, keys=[key]
            )
        if name not in shards:
            src = open_safetensors(shard)
            shards[name] = (src, set(src.keys()))
        src, held = shards[name]
        if key not in held:
            raise FormatError(f"key {key!r} is not in this shard, which the index names for it", path=shard)
        sources[key] = src
    return Checkpoint(str(index.parent), sources)


# --- key matching ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyMatch:
    pairs: tuple[tuple[str, str], ...]  # (base key, tuned key), in the tuned checkpoint's order
    only_base: tuple[str, ...]  # keys of base without a partner
    only_tuned: tuple[str, ...]  # keys of tuned without a partner
    renamed: int  # pairs whose names differ by a prefix


def _suffixes(key: str) -> list[str]:
    parts = key.split(".")
    return [".".join(parts[i:]) for i in range(1, min(_PREFIX_DEPTH, len(parts) - 1) + 1)]


def match_keys(base: Iterable[str], tuned: Iterable[str]) -> KeyMatch:
    """Pair keys as the module docstring says; a key with two candidates stays unmatched."""
    base_keys, tuned_keys = list(base), list(tuned)
    bset = set(base_keys)
    by_suffix: dict[str, list[str]] = {}
    for b in base_keys:
        for s in _suffixes(b):
            by_suffix.setdefault(s, []).append(b)
    pairs, used = [], set()
    for t in tuned_keys:
        if t in bset:
            pairs.append((t, t))
            used.add(t)
            continue
        found = {s for s in _suffixes(t) if s in bset} | set(by_suffix.get(t, ()))
        found -= used
        if len(found) == 1:
            b = found.pop()
            pairs.append((b, t))
            used.add(b)
    paired_t = {t for _, t in pairs}
    return KeyMatch(
        pairs=tuple(pairs),
        only_base=tuple(b for b in base_keys if b not in used),
        only_tuned=tuple(t for t in tuned_keys if t not in paired_t),
        renamed=sum(b != t for b, t in pairs),
    )


class KeyIndex:
    """Finds the key of a checkpoint that a name from elsewhere (an adapter's module path + ".weight")
    means: itself, or the one key equal to it up to a prefix on either side."""

    def __init__(self, keys: Iterable[str]):
        self.keys = set(keys)
        self._by_suffix: dict[str, list[str]] = {}
        for k in self.keys:
            for s in _suffixes(k):
                self._by_suffix.setdefault(s, []).append(k)

    def find(self, wanted: str) -> str | None:
        if wanted in self.keys:
            return wanted
        found = {s for s in _suffixes(wanted) if s in self.keys} | set(self._by_suffix.get(wanted, ()))
        return found.pop() if len(found) == 1 else None


MIN_SHARED = 0.5  # fewer matched keys than this share of the smaller checkpoint: not one architecture


def matched_keys(base: Checkpoint, other: Checkpoint, base_name: str) -> KeyMatch:
    """`match_keys` of two checkpoints of one architecture: too few shared keys, or a shared key
    whose shapes differ, is one FormatError naming `other` (`base_name`: how messages call BASE)."""
    match = match_keys(base.keys(), other.keys())
    if len(match.pairs) < MIN_SHARED * min(len(base.keys()), len(other.keys())):
        raise FormatError(
            f"only {len(match.pairs)} of {len(other.keys())} keys match {base_name}'s {len(base.keys())} "
            f"(first unmatched: {(match.only_tuned or ('-',))[0]!r}); are these checkpoints of one model?",
            path=other.path,
        )
    for b, t in match.pairs:
        if base.shape(b) != other.shape(t):
            raise FormatError(
                f"key {t!r} has shape {list(other.shape(t))} but {base_name}'s {b!r} has "
                f"{list(base.shape(b))} ({base.file(b)}): not the same architecture",
                path=other.file(t),
                keys=[t],
            )
    return match
