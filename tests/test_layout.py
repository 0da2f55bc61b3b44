"""The architecture, checked: imports point one way, public names never shadow modules, the CLI and
`import lorascope` stay light, modules stay small."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import lorascope

SRC = Path(lorascope.__file__).resolve().parent

# Layers, bottom to top: a module may import its own layer or lower ones, never higher ones.
# Capabilities (layer 3) may use each other's packages, never each other's private names.
LAYERS = {
    0: {
        "version",
        "errors",
        "types",
        "rounding",
        "jsontext",
        "textsafe",
        "files",
        "validate",
        "order",
        "hfquiet",
        "scratch",
    },
    1: {"spectral", "structured", "metrics", "parallel"},
    2: {"formats", "passes"},
    3: {
        "audit",
        "compress",
        "convert",
        "check",
        "merge",
        "telemetry",
        "monitor",
        "study",
        "report",
        "gid",
        "regime",
    },
    4: {"integrations", "bench"},
    5: {"cli", "__main__", "__init__"},
}
LAYERS[3] |= {"extract"}  # on its own line: the capability list above is already at full width
LAYER_OF = {name: level for level, names in LAYERS.items() for name in names}


def top(module: str) -> str:
    return module.split(".")[0]


def internal_imports(path: Path) -> list[tuple[str, list[str]]]:
    """(imported lorascope module relative to the package, names) for every import in the file."""
    rel = path.relative_to(SRC).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            out.append((target, [a.name for a in node.names]))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lorascope"):
            out.append((node.module.removeprefix("lorascope").lstrip("."), [a.name for a in node.names]))
    return out


SOURCES = sorted(p for p in SRC.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_one_way(path):
    own = top(str(path.relative_to(SRC).with_suffix("")).replace("/", "."))
    level = LAYER_OF[own]
    for target, names in internal_imports(path):
        if not target:  # `from . import x` at the package root
            continue
        other = top(target)
        assert other in LAYER_OF, f"{path.name}: unknown module {target}"
        assert LAYER_OF[other] <= level, f"{own} (layer {level}) imports {target} (layer {LAYER_OF[other]})"
        if other != own:  # another package's (or core module's) private names are off limits
            private = [n for n in names if n.startswith("_") and not n.startswith("__")] + [
                p for p in target.split(".") if p.startswith("_") and not p.startswith("__")
            ]
            assert not private, f"{own} uses private {private} of {other}"


def test_public_names_never_shadow_modules():
    modules = {
        p.stem if p.name != "__init__.py" else p.parent.name for p in SRC.iterdir() if p.suffix == ".py"
    }
    modules |= {p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()}
    assert not set(lorascope.__all__) & modules
    assert set(lorascope.__all__) == {"__version__", *lorascope._API}
    for name in ("audit", "compress", "merge", "monitor", "convert", "check"):
        assert importlib.import_module(f"lorascope.{name}").__name__ == f"lorascope.{name}"
    for name in lorascope.__all__:
        assert getattr(lorascope, name) is not None


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


def test_import_lorascope_is_light():
    loaded = _modules_after("import lorascope")
    assert "numpy" not in loaded and "torch" not in loaded
    assert {m for m in loaded if m.startswith("lorascope")} == {"lorascope", "lorascope.version"}


@pytest.mark.parametrize("argv", [["--version"], ["--help"]])
def test_cli_version_and_help_import_no_command_and_no_numpy(argv):
    code = (
        "import sys\nfrom lorascope.cli.main import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    )
    loaded = _modules_after(code)
    assert "numpy" not in loaded
    assert not {
        m
        for m in loaded
        if m.startswith("lorascope.") and m.split(".")[1] not in ("cli", "version", "errors", "textsafe")
    }


def test_cli_imports_only_the_invoked_command(tmp_path):
    code = (
        "from lorascope.cli.main import main\n"
        "try:\n    main(['check', '--help'])\nexcept SystemExit:\n    pass"
    )
    loaded = _modules_after(code)
    assert not {"lorascope.merge", "lorascope.compress", "lorascope.audit", "torch"} & loaded


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_modules_stay_small(path):
    """A guide, not a cap to split files around: ~400 lines is the aim (a module read in one
    sitting); past 700 a module has grown into several and must be split."""
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 700


def test_audit_does_not_import_numpy_ma(small_adapter):
    """numpy.median / percentile import numpy.ma (≈ 20 ms of start-up): the summaries avoid them."""
    code = (
        "import contextlib, io\nfrom lorascope.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    main(['audit', {str(small_adapter[0])!r}, '--json'])"
    )
    loaded = _modules_after(code)
    assert "lorascope.audit.policies" in loaded and "numpy.ma" not in loaded
