"""Adapter file formats: an explicit registry of modules with the same verbs (`sniff`, `read`).

`load(path)` detects the format unless one is given.  Detection asks every registered format's
`sniff`; exactly one must claim the path, otherwise the error says which claimed it (ambiguous)
or that none did (unknown).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import AdapterNotFoundError, InvalidArgumentError, UnknownFormatError
from ..types import Adapter
from . import diffusers, kohya, lycoris, peft


def _registry(*modules: ModuleType) -> dict[str, ModuleType]:
    table: dict[str, ModuleType] = {}
    for module in modules:
        name = module.__name__.rsplit(".", 1)[-1]
        if name in table:
            raise ValueError(f"format {name!r} registered twice")
        table[name] = module
    return table


FORMATS: dict[str, ModuleType] = _registry(peft, kohya, diffusers, lycoris)


def detect(path: str | Path) -> str:
    p = Path(path)
    if not p.exists():
        raise AdapterNotFoundError("no such file or directory", path=p)
    claims = [name for name, module in FORMATS.items() if module.sniff(p)]
    if len(claims) == 1:
        return claims[0]
    if claims:
        raise UnknownFormatError(f"ambiguous format: looks like {' and '.join(claims)}", path=p)
    raise UnknownFormatError(
        f"unknown adapter format (lorascope reads: {', '.join(FORMATS)}); a PEFT adapter is a "
        "directory with adapter_config.json and adapter_model.safetensors",
        path=p,
    )


def load(path: str | Path, *, format: str | None = None, **options: Any) -> Adapter:
    """Read an adapter from disk (lazily: factors are read per layer when used)."""
    if format is None:
        format = detect(path)
    if format not in FORMATS:
        raise InvalidArgumentError(f"unknown format {format!r}; choose from {', '.join(FORMATS)}")
    return FORMATS[format].read(path, **options)
