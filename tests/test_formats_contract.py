"""The format contract, checked on every entry of `FORMATS`: a new format gets this battery by being
registered.  Same verbs with the same signatures; write → sniff → read gives back every layer's ΔW
to the storage precision (fp32 / fp16 / bf16 factors, several ranks and scales, conv where the
format holds it); writers take every per-layer fact from the delta they write; read options are
declared and checked."""

from __future__ import annotations

import inspect
from dataclasses import replace

import numpy as np
import pytest
from conftest import from_bf16_bits, to_bf16_bits

from lorascope.cli.main import main
from lorascope.errors import InvalidArgumentError, UnsupportedError
from lorascope.formats import (
    FORMATS,
    VERBS,
    FormatSpec,
    check_dest,
    detect,
    load,
    output_path,
    save,
)
from lorascope.types import Adapter, LayerInfo, LoraDelta

NAMES = list(FORMATS)
SIGNATURES = {
    "sniff": "(path: 'str | Path') -> 'bool'",
    "read": "(path: 'str | Path', **options: 'Any') -> 'Adapter'",
    "write": "(adapter: 'Adapter', dest: 'str | Path', *, source: 'Adapter | None' = None) -> 'Path'",
    "model_path": "(info: 'LayerInfo') -> 'str | None'",
    "match_key": "(info: 'LayerInfo') -> 'str'",
}


def _stored(x: np.ndarray, dtype: str) -> np.ndarray:
    """x as a reader returns it after storing as `dtype` (bf16: float32 holding bf16 values)."""
    if dtype == "bf16":
        return from_bf16_bits(to_bf16_bits(x))
    return x.astype({"fp16": np.float16, "fp32": np.float32, "fp64": np.float64}[dtype])


# (name, kind, rank, out, weight shape or in_features, scale, dtype).  Names carry a pipeline
# component so that every format keeps the dotted path (`model_path`); text_encoder_2 beside
# text_encoder exercises the kohya prefixes.
LAYERS = [
    ("unet.a.q", "linear", 4, 12, 10, 0.5, "fp32"),
    ("unet.x.a.q", "linear", 2, 12, 10, 1.75, "fp16"),
    ("unet.b.proj", "linear", 3, 8, 16, 2.0, "bf16"),
    ("unet.b.conv", "conv", 2, 6, (6, 3, 3, 3), 0.25, "fp32"),
    ("text_encoder.layers.0.q_proj", "linear", 1, 8, 8, 3.0, "fp16"),
    ("text_encoder_2.layers.0.fc1", "linear", 4, 10, 6, 1.0, "bf16"),
    ("unet.emb", "embedding", 2, 5, 9, 1.5, "fp32"),
]


def _adapter(spec: FormatSpec, rng) -> Adapter:
    deltas = []
    for name, kind, r, out, shape, scale, dtype in LAYERS:
        if kind not in spec.kinds:
            continue
        inn = int(np.prod(shape[1:])) if isinstance(shape, tuple) else shape
        weight_shape = shape if isinstance(shape, tuple) else ((inn, out) if kind == "embedding" else ())
        info = LayerInfo(name, kind, r, out, inn, scale, dtype, weight_shape)
        down = _stored(rng.standard_normal((r, inn)), dtype)  # (r, in)
        up = _stored(rng.standard_normal((out, r)), dtype)  # (out, r)
        deltas.append(LoraDelta(info, down, up))
    return Adapter.from_deltas(deltas)


def _dest(tmp_path, name):
    return output_path(name, tmp_path / ("out" if FORMATS[name].SPEC.directory else "out.safetensors"))


@pytest.mark.parametrize("name", NAMES)
def test_same_verbs_same_signatures_and_a_spec(name):
    module = FORMATS[name]
    for verb in VERBS:
        assert str(inspect.signature(getattr(module, verb))) == SIGNATURES[verb], (name, verb)
    assert isinstance(module.SPEC, FormatSpec) and module.SPEC.name == name
    assert set(module.SPEC.kinds) >= {"linear", "conv"}
    assert all(isinstance(t, type) for t in module.SPEC.read_options.values())


@pytest.mark.parametrize("name", NAMES)
def test_write_sniff_read_round_trip(tmp_path, rng, name):
    module = FORMATS[name]
    adapter = _adapter(module.SPEC, rng)
    dest = _dest(tmp_path, name)
    written = module.write(adapter, dest)
    assert written == dest and written.is_dir() == module.SPEC.directory
    assert module.sniff(written) and detect(written) == name
    back = module.read(written)
    assert back.format == name
    by_path = {module.model_path(x): x.name for x in back.layers}
    assert set(by_path) == set(adapter.names)
    for want in adapter.iter_deltas():
        got = back.delta(by_path[want.name])
        assert (got.info.kind, got.info.rank, got.info.dtype) == (
            want.info.kind,
            want.info.rank,
            want.info.dtype,
        )
        np.testing.assert_array_equal(got.down.astype(np.float64), want.down.astype(np.float64))
        np.testing.assert_array_equal(got.up.astype(np.float64), want.up.astype(np.float64))
        np.testing.assert_allclose(got.dense(), want.dense(), rtol=1e-14, atol=0, err_msg=want.name)
        assert module.match_key(got.info) == FORMATS["peft"].match_key(want.info)


@pytest.mark.parametrize("name", NAMES)
def test_writers_take_layer_facts_from_the_delta(tmp_path, rng, name):
    """A derived adapter may decide a layer's rank, scale and dtype while computing it: what
    `adapter.layers` announced beforehand must not leak into the file."""
    module = FORMATS[name]
    adapter = _adapter(module.SPEC, rng)
    announced = tuple(replace(x, rank=x.rank + 5, scale=-7.0, dtype="fp64") for x in adapter.layers)
    derived = replace(adapter, layers=announced, loader=lambda info: adapter.delta(info.name))
    back = module.read(module.write(derived, _dest(tmp_path, name)))
    by_path = {module.model_path(x): x for x in back.layers}
    for want in adapter.layers:
        got = by_path[want.name]
        assert (got.rank, got.dtype) == (want.rank, want.dtype)
        assert got.scale == pytest.approx(want.scale, rel=1e-14)


@pytest.mark.parametrize("name", NAMES)
def test_writers_refuse_factors_that_are_not_a_lora_of_that_rank(tmp_path, rng, name):
    """E.g. a LoHa layer's Khatri–Rao factors (r² columns for lora_dim r): nothing is written."""
    info = LayerInfo("unet.h", "linear", 2, 6, 5, 1.0, "fp32", extras={"algo": "lora"})
    bad = Adapter.from_deltas([LoraDelta(info, rng.standard_normal((4, 5)), rng.standard_normal((6, 4)))])
    dest = _dest(tmp_path, name)
    with pytest.raises(
        UnsupportedError, match=r"layer unet\.h: cannot write it \(factors \[4, 5\] / \[6, 4\]"
    ):
        FORMATS[name].write(bad, dest)
    assert not dest.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", NAMES)
def test_unknown_or_mistyped_read_option_is_one_line(tmp_path, rng, name, capsys):
    module = FORMATS[name]
    written = module.write(_adapter(module.SPEC, rng), _dest(tmp_path, name))
    takes = ", ".join(module.SPEC.read_options) or "none"
    with pytest.raises(InvalidArgumentError) as err:
        module.read(written, colour="red")
    assert (
        str(err.value)
        == f"{written}: the {name} format takes no read option 'colour' (its read options: {takes})"
    )
    for option in module.SPEC.read_options:
        with pytest.raises(
            InvalidArgumentError, match=rf"read option '{option}' of the {name} format must be"
        ):
            module.read(written, **{option: 3})
    assert load(written, adapter_name=None, colour=None).format == name  # None = not given


@pytest.mark.parametrize("name", NAMES)
def test_save_routes_through_the_spec(tmp_path, rng, name):
    spec = FORMATS[name].SPEC
    adapter = _adapter(spec, rng)
    if spec.directory or spec.file_name:
        written = save(adapter, tmp_path / "o", format=name)
        assert written == (tmp_path / "o" if spec.directory else tmp_path / "o" / spec.file_name)
    else:
        with pytest.raises(InvalidArgumentError, match=f"a {name} output is one file: give a path ending in"):
            save(adapter, tmp_path / "o", format=name)
    loha = replace(adapter.layers[0], extras={"algo": "loha"})
    with pytest.raises(UnsupportedError, match=r"cannot write it \(LyCORIS loha is not a LoRA"):
        save(replace(adapter, layers=(loha,)), tmp_path / "x.safetensors", format=name)


def test_kohya_file_with_peft_only_option_is_exit_2(tmp_path, rng, capsys):
    """`lorascope audit k.safetensors --adapter x` was an internal error (exit 70)."""
    path = FORMATS["kohya"].write(_adapter(FORMATS["kohya"].SPEC, rng), tmp_path / "k.safetensors")
    compress = ["compress", str(path), "--rank", "1", "--adapter", "x", "-o", str(tmp_path / "o.safetensors")]
    for argv in (["audit", str(path), "--adapter", "x"], compress):
        assert main(argv) == 2
        out, err = capsys.readouterr()
        assert out == "" and err == (
            f"lorascope: error: {path}: the kohya format takes no read option 'adapter_name' "
            "(its read options: none)\n"
        )


def test_check_dest(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "w.safetensors").write_bytes(b"x")
    for dest in (src, src / "sub", tmp_path, src / "w.safetensors"):
        with pytest.raises(InvalidArgumentError, match=rf"^{dest}: refusing to overwrite the input {src}$"):
            check_dest(dest, [src])
    with pytest.raises(
        InvalidArgumentError, match=r"^.*out\.safetensors: output already exists; choose a new path$"
    ):
        (tmp_path / "out.safetensors").write_bytes(b"y")
        check_dest(tmp_path / "out.safetensors", [src])
    assert check_dest(tmp_path / "out.safetensors", [src], overwrite=True) == tmp_path / "out.safetensors"
    with pytest.raises(InvalidArgumentError, match="already exists and is a non-empty directory"):
        check_dest(tmp_path, [], overwrite=True)
    (tmp_path / "empty").mkdir()
    assert check_dest(tmp_path / "empty", [src]) == tmp_path / "empty"
