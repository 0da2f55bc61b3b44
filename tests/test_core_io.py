"""The public core: lorascope.files (atomic outputs, user-file reading), lorascope.validate (one
wording for a user's file), lorascope.order (natural layer order)."""

from __future__ import annotations

import dataclasses
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lorascope import files, validate
from lorascope.errors import ConfigError, FormatError, InputNotFoundError, InvalidArgumentError
from lorascope.order import natural_sorted


def test_write_text_is_exclusive_unless_replace(tmp_path):
    dest = tmp_path / "a.txt"
    files.write_text(dest, "one")
    with pytest.raises(InvalidArgumentError, match="already exists"):
        files.write_text(dest, "two")
    assert dest.read_text() == "one"
    files.write_text(dest, "two", replace=True)
    assert dest.read_text() == "two"
    assert sorted(os.listdir(tmp_path)) == ["a.txt"]  # no temporary left behind


def test_write_json_is_strict_and_ends_with_newline(tmp_path):
    files.write_json(tmp_path / "x.json", {"a": [1, 2], "b": {"c": None}})
    text = (tmp_path / "x.json").read_text()
    assert text.endswith("}\n") and files.read_json(tmp_path / "x.json") == {"a": [1, 2], "b": {"c": None}}
    with pytest.raises(ValueError):
        files.write_json(tmp_path / "y.json", {"a": float("nan")})
    assert not (tmp_path / "y.json").exists()


def test_no_hard_links_and_a_failed_rename_leave_nothing(tmp_path, monkeypatch):
    """Without hard links the name is claimed with O_EXCL first; if the rename onto it then fails,
    the claimed (empty) file must not stay behind as an output."""

    def no_link(src, dst):
        raise OSError(1, "Operation not permitted")

    def no_rename(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "link", no_link)
    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(files.WriteError, match="No space left on device"):
        files.write_text(tmp_path / "a.txt", "x")
    assert os.listdir(tmp_path) == []


def test_atomic_dir_leaves_nothing_on_error(tmp_path):
    with pytest.raises(RuntimeError), files.atomic_dir(tmp_path / "out") as tmp:
        (tmp / "f").write_text("x")
        raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("name", "content", "error", "message"),
    [
        ("c.json", b"\xff", FormatError, "not UTF-8 text (byte 0)"),
        ("c.json", b"[1]", FormatError, "config: expected a mapping at the top level"),
        ("c.json", b"{", FormatError, "malformed JSON at line 1 column 2"),
        ("c.yaml", b"a: [", FormatError, "not valid YAML"),
        ("c.json", b"[" * 100_000, FormatError, "JSON nested too deeply"),
    ],
)
def test_read_mapping_failures_are_one_line(tmp_path, name, content, error, message):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(error) as info:
        files.read_mapping(p, "config")
    assert str(info.value).startswith(f"{p}: {message}") and "\n" not in str(info.value)


def test_missing_file_says_what_was_expected(tmp_path):
    with pytest.raises(InputNotFoundError, match="labels file not found") as info:
        files.read_text(tmp_path / "nope.csv", "labels file")
    assert info.value.hint is None  # not the adapter hint
    with pytest.raises(InputNotFoundError, match="expected, found a directory"):
        files.read_text(tmp_path, "labels file")


@dataclasses.dataclass(frozen=True)
class Inner:
    steps: int = validate.setting(10, validate.integer(1))
    names: tuple[str, ...] = validate.setting(("a",), validate.list_of(validate.string(), what="names"))


@dataclasses.dataclass(frozen=True)
class Outer:
    lr: float = validate.setting(0.1, validate.number(0, 1, open_lo=True))
    inner: Inner = validate.section(Inner)


def test_build_fills_defaults_and_freezes():
    cfg = validate.build(Outer, {"inner": {"names": ["x", "y"]}}, path="f.yaml")
    assert cfg == Outer(0.1, Inner(10, ("x", "y")))
    assert validate.to_dict(cfg) == {"lr": 0.1, "inner": {"steps": 10, "names": ["x", "y"]}}
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 0.2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"lr": 0}, "f.yaml: key lr: must be a number in (0, 1], got 0"),
        ({"lr": True}, "f.yaml: key lr: must be a number in (0, 1], got True"),
        ({"inner": {"steps": 0}}, "f.yaml: key inner.steps: must be an integer ≥ 1, got 0"),
        ({"inner": {"bogus": 1}}, "f.yaml: key inner.bogus: unknown key; known keys: steps, names"),
        ({"inner": [1]}, "f.yaml: key inner: must be a mapping, got [1]"),
        ({"inner": {"names": []}}, "f.yaml: key inner.names: must be a non-empty list of names, got []"),
        ({"lr": float("nan")}, "f.yaml: key lr: must be a number in (0, 1], got nan"),
    ],
)
def test_build_errors_have_one_wording(doc, message):
    with pytest.raises(ConfigError) as info:
        validate.build(Outer, doc, path="f.yaml")
    assert str(info.value) == message


def test_a_required_setting():
    @dataclasses.dataclass(frozen=True)
    class Req:
        path: str = validate.setting(check=validate.string())

    with pytest.raises(ConfigError, match="key path: is required"):
        validate.build(Req, {}, path="f")


def test_integer_check_names_its_bounds():
    assert validate.integer(hi=5)(6) == "must be an integer ≤ 5"  # said only "must be an integer"
    assert validate.integer(1)(0) == "must be an integer ≥ 1"
    assert validate.integer(1, 5)(True) == "must be an integer in [1, 5]"
    assert validate.integer()(1.5) == "must be an integer"


def test_natural_order():
    names = ["layers.10.q", "layers.2.q", "layers.1.v", "layers.1.q", "head", "layers.02.k"]
    assert natural_sorted(names) == [
        "head",
        "layers.1.q",
        "layers.1.v",
        "layers.02.k",
        "layers.2.q",
        "layers.10.q",
    ]


@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 99)), max_size=30))
def test_natural_key_orders_digit_runs_as_integers(pairs):
    names = [f"model.layers.{i}.mlp.{j}.proj" for i, j in pairs]
    assert natural_sorted(names) == [f"model.layers.{i}.mlp.{j}.proj" for i, j in sorted(pairs)]
