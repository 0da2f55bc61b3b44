"""Outputs: one rule for every command that writes.  Outputs are created exclusively (never a
silent replacement: `convert --force` is the one way to replace an adapter file), devices, pipes
and symlink loops are refused with one line, a failed write (no space left) leaves no temporary
behind, and whatever a command writes, `audit` reads back."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import layer_names, peft_config, random_factors, write_peft

import lorascope.formats._write as _write
from lorascope.cli.main import main
from lorascope.formats import FORMATS, load

SRC = Path(__file__).parents[1] / "src"


def _cli_error(capsys, argv) -> str:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2 and out == "", (code, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lorascope: error: "), err
    assert "Traceback" not in err and "internal error" not in err
    return lines[0].removeprefix("lorascope: error: ")


@pytest.fixture
def src(tmp_path, rng):
    layers = {n: random_factors(rng, 12, 10, 4) for n in layer_names(2)}
    return write_peft(tmp_path / "src", layers, config=peft_config(r=4))


def _copy(src: Path) -> Path:
    """A second adapter (merge refuses the same one twice)."""
    import shutil

    dest = src.with_name("copy." + src.name)
    if not dest.exists():
        shutil.copytree(src, dest) if src.is_dir() else shutil.copy(src, dest)
    return dest


def _listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


# --- 3. symlink loops ------------------------------------------------------------------------


def test_symlink_loop_as_source_or_destination(tmp_path, src, capsys):
    (tmp_path / "a.safetensors").symlink_to(tmp_path / "b.safetensors")
    (tmp_path / "b.safetensors").symlink_to(tmp_path / "a.safetensors")
    loop = tmp_path / "a.safetensors"
    assert _cli_error(capsys, ["convert", loop, tmp_path / "o.safetensors", "--to", "kohya"]) == (
        f"{loop}: cannot resolve the path (symlink loop)"
    )
    want = f"{loop}: cannot resolve the path (symlink loop)"
    assert _cli_error(capsys, ["convert", src, loop, "--to", "kohya"]) == want
    assert _cli_error(capsys, ["compress", src, "--rank", "2", "--to", "kohya", "-o", loop]) == want
    assert _cli_error(capsys, ["merge", src, _copy(src), "-o", loop]) == want
    assert _cli_error(capsys, ["audit", src, "-o", loop]) == want
    assert _cli_error(capsys, ["audit", loop]).startswith(
        f"{loop}: a symbolic link whose target is missing or loops"
    )


# --- 9. devices, pipes, existing files -----------------------------------------------------------


def test_device_is_never_replaced(tmp_path, src, capsys):
    """`-o /dev/null` replaced the device node with a regular file (as root)."""
    before = os.stat("/dev/null")
    for argv in (
        ["audit", src, "-o", "/dev/null"],
        ["merge-audit", src, _copy(src), "-o", "/dev/null"],
        ["convert", src, "/dev/null", "--to", "peft"],
        ["compress", src, "--rank", "2", "-o", "/dev/null"],
        ["merge", src, _copy(src), "-o", "/dev/null"],
    ):
        line = _cli_error(capsys, argv)
        assert line.startswith(
            "/dev/null: output exists and is not a regular file (a device, pipe or socket)"
        ), line
    after = os.stat("/dev/null")
    assert (after.st_mode, after.st_rdev, after.st_ino) == (before.st_mode, before.st_rdev, before.st_ino)


def test_fifo_is_refused(tmp_path, src, capsys):
    fifo = tmp_path / "f.safetensors"
    os.mkfifo(fifo)
    want = f"{fifo}: output exists and is not a regular file (a device, pipe or socket); choose a new path"
    assert _cli_error(capsys, ["convert", src, fifo, "--to", "kohya"]) == want
    assert _cli_error(capsys, ["audit", src, "-o", fifo]) == want + " (or -o - for stdout)"


def test_dev_stdout_appended_to_a_log_is_not_truncated(tmp_path, src):
    """`lorascope audit X -o /dev/stdout >> log` replaced the log (the link's target) by the report."""
    log = tmp_path / "log"
    log.write_text("earlier lines\n")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    with open(log, "a") as out:
        p = subprocess.run(
            [sys.executable, "-m", "lorascope", "audit", str(src), "-o", "/dev/stdout"],
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
    assert p.returncode == 2
    assert (
        p.stderr
        == "lorascope: error: /dev/stdout: output already exists; choose a new path (or -o - for stdout)\n"
    )
    assert log.read_text() == "earlier lines\n"


def test_report_is_created_exclusively(tmp_path, src, capsys):
    report = tmp_path / "report.txt"
    assert main(["audit", str(src), "-o", str(report)]) == 0
    first = report.read_text()
    assert _cli_error(capsys, ["audit", src, "--json", "-o", report]) == (
        f"{report}: output already exists; choose a new path (or -o - for stdout)"
    )
    assert report.read_text() == first
    assert main(["audit", str(src), "-o", "-"]) == 0 and capsys.readouterr().out == first


def test_report_into_a_missing_folder_is_refused_not_created(tmp_path, src, capsys):
    dest = tmp_path / "no_such_dir" / "report.json"
    assert _cli_error(capsys, ["audit", src, "--json", "-o", dest]) == (
        f"{dest}: the folder {dest.parent} does not exist; create it first"
    )
    assert not dest.parent.exists()


def test_second_convert_to_one_path(tmp_path, src, capsys):
    """The second run is refused and says how to replace; --force replaces (and is the only way)."""
    dest = tmp_path / "k.safetensors"
    assert main(["convert", str(src), str(dest), "--to", "kohya"]) == 0
    capsys.readouterr()
    first = dest.read_bytes()
    assert _cli_error(capsys, ["convert", src, dest, "--to", "kohya"]) == (
        f"{dest}: output already exists; choose a new path or pass --force to replace it"
    )
    assert dest.read_bytes() == first
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("")
    for argv in (
        ["compress", src, "--rank", "2", "--to", "kohya", "-o", dest],
        ["merge", src, _copy(src), "-o", taken],
    ):
        assert "already exists" in _cli_error(capsys, argv)
    capsys.readouterr()
    assert main(["convert", str(src), str(dest), "--to", "kohya", "--force"]) == 0
    peft_dir = tmp_path / "p"
    assert main(["convert", str(dest), str(peft_dir), "--to", "peft"]) == 0
    capsys.readouterr()
    assert _cli_error(capsys, ["convert", dest, peft_dir, "--to", "peft", "--force"]) == (
        f"{peft_dir}: output already exists and is a non-empty directory; --force replaces a file, never a "
        "directory; choose a new path"
    )


def test_output_appearing_after_the_checks_is_not_replaced(tmp_path, src, capsys, monkeypatch):
    """Two runs writing one path: the checks of both pass, the later one to finish is refused at
    the last step (the file is linked into place, which fails when the name exists)."""
    import lorascope.convert as convert
    import lorascope.formats.peft as peft

    for to, name in (("kohya", "k.safetensors"), ("peft", "p"), ("diffusers", "d.safetensors")):
        dest = tmp_path / name
        assert main(["convert", str(src), str(dest), "--to", to]) == 0
        capsys.readouterr()
        before = {p: p.read_bytes() for p in [dest, *dest.glob("*")] if p.is_file()}
        for module in (convert, peft):  # the checks as the other run saw them: nothing there yet
            monkeypatch.setattr(module, "check_dest", lambda d, *a, **k: Path(d))
        assert _cli_error(capsys, ["convert", src, dest, "--to", to]) == (
            f"{dest}: output already exists; choose a new path"
        )
        monkeypatch.undo()
        assert {p: p.read_bytes() for p in before} == before
        assert not [n for n in _listing(tmp_path) if n.endswith(".tmp")]


# --- 10. no space left: no temporary survives -----------------------------------------------------


class _FullDisk:
    """A file object whose writes fail as on a full disk."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


@pytest.mark.parametrize("where", ["data file", "final copy", "text file"])
@pytest.mark.parametrize("to", list(FORMATS))
def test_full_disk_leaves_nothing_behind(tmp_path, src, capsys, monkeypatch, where, to):
    real_fdopen, real_open = os.fdopen, open
    if where == "data file":  # the streaming writer's temporary (header room, then every tensor)
        monkeypatch.setattr(_write.os, "fdopen", lambda *a, **k: _FullDisk(real_fdopen(*a, **k)))
    elif where == "final copy":  # the header outgrew its room: the file is assembled by copying
        monkeypatch.setattr(_write, "header_room", lambda *a, **k: 0)
        monkeypatch.setattr(_write, "open", lambda *a, **k: _FullDisk(real_open(*a, **k)), raising=False)
        for module in ("_keys", "diffusers", "peft"):
            monkeypatch.setattr(f"lorascope.formats.{module}.header_room", lambda *a, **k: 0, raising=False)
    else:  # a PEFT config or a report

        def full(self, *a, **k):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(Path, "write_text", full)
    out = tmp_path / "out"
    out.mkdir()
    directory = FORMATS[to].SPEC.directory  # peft, ralora: a directory with a JSON config
    dest = out / ("p" if directory else "x.safetensors")
    code = main(["convert", str(src), str(dest), "--to", to])
    err = capsys.readouterr().err
    if where == "text file" and not directory:  # no text file in this output
        assert code == 0
        return
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("lorascope: error: ") and "cannot write (No space left on device)" in err, err
    assert _listing(out) == []


def test_full_disk_writing_a_report(tmp_path, src, capsys, monkeypatch):
    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    report = tmp_path / "r" / "report.json"
    report.parent.mkdir()  # -o never creates its folder (a missing one is refused before any work)
    assert _cli_error(capsys, ["audit", src, "--json", "-o", report]) == (
        f"{report}: cannot write (No space left on device)"
    )
    assert _listing(report.parent) == []


# --- 11. one rule for output paths ---------------------------------------------------------------


@pytest.mark.parametrize("to", list(FORMATS))
@pytest.mark.parametrize("name", ["plain", "x.safetensors", "dir/"])
def test_one_rule_for_output_paths(tmp_path, src, capsys, to, name):
    """convert, compress and merge accept and refuse the same paths, and `audit` reads back
    whatever they write (compress and merge could write an extension-less kohya file)."""
    same = tmp_path / f"same.{to}.safetensors"
    assert main(["convert", str(src), str(same), "--to", to]) == 0  # merge writes its inputs' format
    runs = {
        "convert": ["convert", src, "{}", "--to", to],
        "compress": ["compress", src, "--rank", "2", "--to", to, "-o", "{}"],
        "merge": ["merge", same, _copy(same), "-o", "{}"],
    }
    outcomes = {}
    for cmd, argv in runs.items():
        dest = tmp_path / cmd / name
        if name.endswith("/"):
            dest.mkdir(parents=True)
        code = main([str(dest) if a == "{}" else str(a) for a in argv])
        err = capsys.readouterr().err
        outcomes[cmd] = code, err.replace(str(dest), "DEST")
        if code == 0:
            written = [p for p in [dest, *dest.rglob("*")] if p.is_file()] or [dest]
            assert load(dest if dest.is_dir() else written[0]).format == to
    assert len({o for o in outcomes.values()}) == 1, outcomes


def test_dest_type_checks(tmp_path, src, capsys):
    (tmp_path / "d.safetensors").mkdir()
    (tmp_path / "file").write_text("x")
    assert _cli_error(capsys, ["convert", src, tmp_path / "d.safetensors", "--to", "kohya"]) == (
        f"{tmp_path / 'd.safetensors'}: output is a directory; give a file path"
    )
    assert _cli_error(capsys, ["convert", src, tmp_path / "file", "--to", "peft", "--force"]) == (
        f"{tmp_path / 'file'}: output exists and is a file; this output is a directory"
    )
    assert _cli_error(capsys, ["convert", src, tmp_path / "file", "--to", "diffusers"]) == (
        f"{tmp_path / 'file'}: a diffusers output is a .safetensors file or a directory to hold "
        "pytorch_lora_weights.safetensors"
    )
    assert np.array_equal(
        np.frombuffer((tmp_path / "file").read_bytes(), np.uint8), np.frombuffer(b"x", np.uint8)
    )


# --- 14. hints name options the command has ------------------------------------------------------


def test_several_adapters_hint_works_for_every_command(tmp_path, rng, capsys):
    """The hint named --adapter, which convert and merge lack; a sub-folder path works everywhere."""
    d = tmp_path / "multi"
    for name in ("one", "two"):
        write_peft(
            d / name, {n: random_factors(rng, 12, 10, 4) for n in layer_names(2)}, config=peft_config(r=4)
        )
    want = (
        f"{d}: holds several adapters (one, two); give one of them as the path ({d / 'one'}) "
        "or its name with --adapter NAME where the command has that option"
    )
    assert _cli_error(capsys, ["convert", d, tmp_path / "k.safetensors", "--to", "kohya"]) == want
    assert _cli_error(capsys, ["merge", d, d / "two", "-o", tmp_path / "m"]) == want
    assert main(["convert", str(d / "one"), str(tmp_path / "k.safetensors"), "--to", "kohya"]) == 0
    assert main(["merge", str(d / "one"), str(d / "two"), "-o", str(tmp_path / "m"), "-q"]) == 0
    assert main(["audit", str(d), "--adapter", "two"]) == 0
