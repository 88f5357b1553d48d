"""Quantization never writes a broken file, every command checks a QDQ file's scales and zero points before it
runs it, a file's precision metadata must match its graph, and calibration input is bounded."""

import argparse
import importlib
import os
import subprocess
import sys
import zipfile

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from effattn import metadata
from effattn.cli import main
from effattn.cli.commands import served_models
from effattn.errors import BackendError, ExportError, InputError
from effattn.export import export_onnx, quantize, to_fp16
from effattn.models import load_model
from effattn.runtime import load
from effattn.shapes import ShapeProfile

calibration_module = importlib.import_module("effattn.export.quantize.calibration")  # where the limits are read
BAD_SCALES = {"zero": 0.0, "negative": -0.5, "nan": float("nan"), "inf": float("inf"), "subnormal": 1e-40}


def _conv_model(path, before: str, channels: int = 32) -> None:
    """x -> ``before`` (Add: x + x, or Relu(-|x|): always 0) -> 1x1 Conv: small enough to quantize in a blink,
    with 32 channels so that FP8 keeps the Conv (NVIDIA's rule: more than 16)."""
    nodes = {
        "add": [helper.make_node("Add", ["x", "x"], ["h"])],
        "dead_relu": [
            helper.make_node("Abs", ["x"], ["a"]),
            helper.make_node("Neg", ["a"], ["n"]),
            helper.make_node("Relu", ["n"], ["h"]),
        ],
    }[before]
    weight = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((channels, channels, 1, 1), np.float32), "w"
    )
    graph = helper.make_graph(
        [*nodes, helper.make_node("Conv", ["h", "w"], ["y"], name="conv")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", channels, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", channels, 4, 4])],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _feeds(values: np.ndarray) -> list[dict[str, np.ndarray]]:
    return [{"x": v[None]} for v in values]


def _assert_nothing_written(folder, keep: set[str]) -> None:
    assert {p.name for p in folder.iterdir()} == keep  # no output, no temporary file left behind


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    """The zoo's efficient_attention block (so `compare` can rebuild its reference), exported small, its INT8
    QDQ file, and copies of that file with one scale initializer edited to each bad value."""
    d = tmp_path_factory.mktemp("qdq")
    torch.save(load_model("efficient_attention").model.state_dict(), d / "weights.pt")
    source = load_model("efficient_attention", checkpoint=d / "weights.pt")  # weights `compare` can rebuild
    export_onnx(source, ShapeProfile.single("1x64x8x8", "1x64x8x8", "2x64x16x16"), d / "block.onnx")
    rng = np.random.default_rng(0)
    quantize(
        d / "block.onnx",
        d / "good.onnx",
        calibration=[{"input": rng.standard_normal((1, 64, 8, 8), np.float32)} for _ in range(4)],
    )
    model = onnx.load(d / "good.onnx")
    (q,) = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input"][:1]
    bad = {}
    for label, value in BAD_SCALES.items():
        edited = onnx.load(d / "good.onnx")
        scale = next(t for t in edited.graph.initializer if t.name == q.input[1])
        scale.CopyFrom(numpy_helper.from_array(np.array(value, np.float32), scale.name))
        bad[label] = d / f"bad_{label}.onnx"
        onnx.save(edited, bad[label])
    return {"dir": d, "good": d / "good.onnx", "bad": bad, "scale": q.input[1], "weights": d / "weights.pt"}


# ------------------------------------------------------------------------------- quantize refuses
@pytest.mark.parametrize("precision", ["int8", "fp8"])
@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_nan_or_inf_calibration_file_is_refused_naming_file_and_sample(tmp_path, precision, value):
    _conv_model(tmp_path / "m.onnx", "add")
    data = np.random.default_rng(0).standard_normal((5, 32, 4, 4)).astype(np.float32)
    data[3, 7, 1, 2] = value
    np.save(tmp_path / "calib.npy", data)
    with pytest.raises(
        InputError, match=r"'x' from .*calib\.npy holds NaN or infinity \(as float32\) in sample 3 \(1 of 5"
    ):
        quantize(tmp_path / "m.onnx", tmp_path / "out.onnx", calibration=tmp_path / "calib.npy", precision=precision)
    _assert_nothing_written(tmp_path, {"m.onnx", "calib.npy"})


def test_nan_in_calibration_arrays_is_refused(tmp_path):
    _conv_model(tmp_path / "m.onnx", "add")
    feeds = _feeds(np.ones((3, 32, 4, 4), np.float32) * np.arange(3)[:, None, None, None])
    feeds[2]["x"][0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="'x' from calibration feed 2 holds NaN or infinity"):
        quantize(tmp_path / "m.onnx", tmp_path / "out.onnx", calibration=feeds)
    _assert_nothing_written(tmp_path, {"m.onnx"})


@pytest.mark.parametrize("precision", ["int8", "fp8"])
@pytest.mark.parametrize(
    "fill,match",
    [
        (0.0, "0 in all 4 samples: a range of width 0 has no scale"),
        (0.25, "0.25 in all 4 samples: scales calibrated on one value clip"),
    ],
)
def test_constant_calibration_input_is_refused(tmp_path, precision, fill, match):
    _conv_model(tmp_path / "m.onnx", "add")
    with pytest.raises(InputError, match=f"calibration input 'x' is the constant {match}"):
        quantize(
            tmp_path / "m.onnx",
            tmp_path / "out.onnx",
            calibration=_feeds(np.full((4, 32, 4, 4), fill, np.float32)),
            precision=precision,
        )
    _assert_nothing_written(tmp_path, {"m.onnx"})


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_activation_with_an_empty_range_is_refused(tmp_path, precision):
    """Relu(-|x|) is 0 on every input: ONNX Runtime would write scale 1.0 for the Conv's input."""
    _conv_model(tmp_path / "m.onnx", "dead_relu")
    feeds = _feeds(np.random.default_rng(0).standard_normal((4, 32, 4, 4)).astype(np.float32))
    with pytest.raises(ExportError, match=r"tensor 'h' \(quantized by .*\) is 0 on all the calibration data"):
        quantize(tmp_path / "m.onnx", tmp_path / "out.onnx", calibration=feeds, precision=precision)
    _assert_nothing_written(tmp_path, {"m.onnx"})


def test_a_range_too_small_for_a_normal_scale_is_refused(tmp_path):
    """Data around 1e-38: range / 254 is below float32's smallest normal, and ONNX Runtime writes scale 1.0,
    which rounds every value of the tensor to 0 (found by a hostile review)."""
    _conv_model(tmp_path / "m.onnx", "add")
    feeds = _feeds(np.random.default_rng(0).standard_normal((4, 32, 4, 4)).astype(np.float32) * 1e-38)
    with pytest.raises(ExportError, match=r"is at most [0-9.e-]+ on all the calibration data, too small a range"):
        quantize(tmp_path / "m.onnx", tmp_path / "out.onnx", calibration=feeds)
    _assert_nothing_written(tmp_path, {"m.onnx"})


def test_float64_data_that_is_infinite_in_float32_is_refused_naming_the_sample(tmp_path):
    _conv_model(tmp_path / "m.onnx", "add")
    data = np.random.default_rng(0).standard_normal((3, 32, 4, 4))
    data[1, 0, 0, 0] = 1e300
    np.save(tmp_path / "calib.npy", data)
    with pytest.raises(InputError, match=r"holds NaN or infinity \(as float32\) in sample 1 \(1 of 3"):
        quantize(tmp_path / "m.onnx", tmp_path / "out.onnx", calibration=tmp_path / "calib.npy")
    _assert_nothing_written(tmp_path, {"m.onnx", "calib.npy"})


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_scale_that_comes_out_infinite_is_refused_before_writing(tmp_path, precision):
    """Finite calibration data whose x + x overflows float32: the Conv input's calibrated scale is inf."""
    _conv_model(tmp_path / "m.onnx", "add")
    data = np.random.default_rng(0).standard_normal((4, 32, 4, 4)).astype(np.float32)
    data[1, 0, 0, 0] = 3e38
    with pytest.raises(
        ExportError,
        match=r"calibrated on .*arrays .*has invalid quantization parameters: .*scale "
        r"'h_scale' is inf \(1 of 1 values\)",
    ):
        quantize(tmp_path / "m.onnx", tmp_path / "out.onnx", calibration=_feeds(data), precision=precision)
    _assert_nothing_written(tmp_path, {"m.onnx"})


def test_good_calibration_still_quantizes(tmp_path):
    from effattn.engines.precision import check_onnx

    _conv_model(tmp_path / "m.onnx", "add")
    feeds = _feeds(np.random.default_rng(0).standard_normal((4, 32, 4, 4)).astype(np.float32))
    for precision in ("int8", "fp8"):
        result = quantize(tmp_path / "m.onnx", tmp_path / f"{precision}.onnx", calibration=feeds, precision=precision)
        assert check_onnx(result.path) == precision


# ------------------------------------------------------------------------------- bounded calibration input
def test_zip_bomb_npz_is_refused_from_its_declared_size(tmp_path, monkeypatch):
    """A deflated .npz of zeros declaring more than the limit (1 GiB; 8 MiB here, so the test stays small) is
    refused from its headers, before a byte is inflated."""
    monkeypatch.setattr(calibration_module, "MAX_ARRAY_BYTES", 8 * 2**20)
    _conv_model(tmp_path / "m.onnx", "add")
    np.savez_compressed(tmp_path / "bomb.npz", x=np.zeros((4097, 32, 4, 4), np.float64))
    assert (tmp_path / "bomb.npz").stat().st_size < 100_000
    with pytest.raises(
        InputError,
        match=r"cannot read .*bomb\.npz as \.npy/\.npz: array 'x' declares a float64 array of shape \(4097, 32, 4, 4\) "
        r"\(16781312 bytes\): over the 8388608 bytes left",
    ):
        quantize(tmp_path / "m.onnx", tmp_path / "out.onnx", calibration=tmp_path / "bomb.npz")
    _assert_nothing_written(tmp_path, {"m.onnx", "bomb.npz"})


def test_npy_header_declaring_a_trillion_items_is_refused(tmp_path):
    _conv_model(tmp_path / "m.onnx", "add")
    with open(tmp_path / "huge.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (10**12 // 512, 32, 4, 4)}
        )
        f.write(b"\0" * 64)
    with pytest.raises(
        InputError, match=r"huge\.npy as \.npy/\.npz: the array declares a float32 array of shape .* over the"
    ):
        quantize(tmp_path / "m.onnx", tmp_path / "out.onnx", calibration=tmp_path / "huge.npy")


def test_npy_header_declaring_more_than_the_file_holds_is_refused(tmp_path):
    _conv_model(tmp_path / "m.onnx", "add")
    with open(tmp_path / "short.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (8, 32, 4, 4)})
        f.write(b"\0" * 64)
    with pytest.raises(
        InputError, match=r"short\.npy as \.npy/\.npz: the array declares 16384 bytes of array data but holds 64"
    ):
        quantize(tmp_path / "m.onnx", tmp_path / "out.onnx", calibration=tmp_path / "short.npy")


def test_pickled_calibration_is_never_loaded(tmp_path):
    _conv_model(tmp_path / "m.onnx", "add")
    np.save(tmp_path / "obj.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match=r"obj\.npy as \.npy/\.npz: the array holds Python objects"):
        quantize(tmp_path / "m.onnx", tmp_path / "out.onnx", calibration=tmp_path / "obj.npy")


def test_fifo_or_device_as_calibration_is_refused_without_blocking(tmp_path):
    """A FIFO named a.npy (alone or in a folder) would block quantize forever waiting for a writer: a
    subprocess with a deadline, so the old code fails this test instead of hanging it."""
    _conv_model(tmp_path / "m.onnx", "add")
    os.mkfifo(tmp_path / "a.npy")
    folder = tmp_path / "calib"
    folder.mkdir()
    os.mkfifo(folder / "b.npy")
    for source, kind in ((tmp_path / "a.npy", "a FIFO"), (folder, "a FIFO"), ("/dev/zero", "a character device")):
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "effattn",
                "quantize",
                str(tmp_path / "m.onnx"),
                "-o",
                str(tmp_path / "out.onnx"),
                "--calibration",
                str(source),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 2
        assert run.stderr.strip().splitlines()[-1].endswith(f"is {kind}, not a regular file")
    assert not (tmp_path / "out.onnx").exists()


def test_samples_are_capped(tmp_path, capsys, monkeypatch):
    _conv_model(tmp_path / "m.onnx", "add")
    with pytest.raises(SystemExit) as e:  # the parser's range, as for every numeric option
        main(["quantize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out.onnx"), "--samples", "200000"])
    assert (
        e.value.code == 2 and "--samples: expected an integer from 1 to 4096, got '200000'" in capsys.readouterr().err
    )
    with pytest.raises(InputError, match="samples must be 1 to 4096, got 200000"):
        quantize(tmp_path / "m.onnx", tmp_path / "out.onnx", samples=200000)
    monkeypatch.setattr(calibration_module, "MAX_SAMPLES", 4)
    np.save(tmp_path / "five.npy", np.random.default_rng(0).standard_normal((5, 32, 4, 4)).astype(np.float32))
    with pytest.raises(InputError, match="holds more than 4 samples"):
        quantize(tmp_path / "m.onnx", tmp_path / "out.onnx", calibration=tmp_path / "five.npy", samples=4)
    assert not (tmp_path / "out.onnx").exists()


def test_limits_are_stated_in_help(capsys):
    from effattn.files import MAX_ARRAY_BYTES

    with pytest.raises(SystemExit):
        main(["quantize", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"at most {calibration_module.MAX_SAMPLES}" in text
    assert f"at most {MAX_ARRAY_BYTES // 2**30} GiB of array data" in text


# ------------------------------------------------------------------------------- every command checks
@pytest.mark.parametrize("label", list(BAD_SCALES))
def test_load_refuses_a_bad_scale_and_names_it(block, label):
    with pytest.raises(BackendError, match=f"QuantizeLinear '.*' scale '{block['scale']}' is "):
        load(block["bad"][label], backend="onnxruntime")
    with pytest.raises(BackendError, match=f"scale '{block['scale']}'"):
        load(block["bad"][label], backend="openvino")


def _cli(capsys, *args) -> tuple[int, str]:
    code = main(list(map(str, args)))
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("command", ["run", "compare", "triton", "build"])
def test_every_command_refuses_a_bad_qdq_file(block, tmp_path, capsys, command):
    extra = {
        "triton": ["--repository", tmp_path / "repo"],
        "build": ["--backend", "onnxruntime", "-o", tmp_path / "x.onnx"],
        "compare": ["--checkpoint", block["weights"]],
    }.get(command, [])
    for label, value in BAD_SCALES.items():
        code, err = _cli(capsys, command, block["bad"][label], *extra)
        assert code == 2, err
        assert f"scale '{block['scale']}' is {float(np.float32(value)):g}" in err.splitlines()[-1]
    _assert_nothing_written(tmp_path, set())


@pytest.mark.parametrize("command", ["run", "compare", "triton", "build"])
def test_every_command_still_takes_a_good_qdq_file(block, tmp_path, capsys, command):
    extra = {
        "triton": ["--repository", tmp_path / "repo"],
        "build": ["--backend", "onnxruntime", "-o", tmp_path / "x.onnx"],
        "compare": ["--backend", "onnxruntime", "--checkpoint", block["weights"]],
    }.get(command, [])
    code, err = _cli(capsys, command, block["good"], *extra)
    assert code == 0, err


def test_serve_refuses_a_bad_qdq_file_and_loads_a_good_one(block):
    """What `effattn serve` loads its models with (a served model that loaded would serve until stopped)."""
    args = argparse.Namespace(backend="auto", device="cpu", threads=1)
    for label, value in BAD_SCALES.items():
        with pytest.raises(BackendError, match=f"scale '{block['scale']}' is {float(np.float32(value)):g}"):
            served_models([f"m={block['bad'][label]}"], args)
    (runner,) = served_models([f"m={block['good']}"], args).values()
    runner.close()


def test_load_takes_a_good_qdq_file(block):
    with load(block["good"], backend="onnxruntime") as runner:
        assert runner.infer(np.ones((1, 64, 8, 8), np.float32))["output"].shape == (1, 64, 8, 8)


def _replace(model, name, array) -> None:
    tensor = next(t for t in model.graph.initializer if t.name == name)
    tensor.CopyFrom(numpy_helper.from_array(array, name))


def test_zero_points_and_shapes_are_checked(block, tmp_path):
    from effattn.export.quantize import qdq_problems_of_values

    model = onnx.load(block["good"])
    weights = {t.name: t for t in model.graph.initializer}
    q = next(
        n
        for n in model.graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] in weights
        and len(weights[n.input[1]].dims) == 1
        and weights[n.input[1]].dims[0] > 1
    )  # a per-channel weight
    scale = numpy_helper.to_array(weights[q.input[1]])
    zero = numpy_helper.to_array(weights[q.input[2]])
    cases = [
        (q.input[1], scale[:-1], f"has {scale.size - 1} values but axis 0 of '{q.input[0]}' has {scale.size}"),
        (q.input[2], zero[:-1], f"has shape {scale.shape} but zero point '{q.input[2]}'"),
        (q.input[2], zero.astype(np.float32), "has type float32, not one ONNX quantizes to"),
        (q.input[1], np.full_like(scale, 1e38), "times the int8 range it overflows float32"),
    ]
    for name, array, match in cases:
        edited = onnx.load(block["good"])
        _replace(edited, name, array)
        problems = qdq_problems_of_values(edited)
        assert any(match in p for p in problems), (match, problems)
    assert qdq_problems_of_values(onnx.load(block["good"])) == []


def test_nan_float8_zero_point_is_refused(tmp_path):
    _conv_model(tmp_path / "m.onnx", "add")
    feeds = _feeds(np.random.default_rng(0).standard_normal((4, 32, 4, 4)).astype(np.float32))
    fp8 = onnx.load(quantize(tmp_path / "m.onnx", tmp_path / "fp8.onnx", calibration=feeds, precision="fp8").path)
    zero = next(t for t in fp8.graph.initializer if t.data_type == TensorProto.FLOAT8E4M3FN)
    zero.raw_data = b"\x7f" * len(zero.raw_data)  # 0x7f is NaN in float8e4m3fn
    onnx.save(fp8, tmp_path / "nan_zero.onnx")
    with pytest.raises(BackendError, match=f"zero point '{zero.name}' is not finite"):
        load(tmp_path / "nan_zero.onnx", backend="onnxruntime")


# ------------------------------------------------------------------------------- metadata claims
@pytest.mark.parametrize("claim", ["fp8", "int8", "fp16"])
def test_precision_metadata_the_graph_does_not_have_is_refused(block, tmp_path, capsys, claim):
    model = onnx.load(block["dir"] / "block.onnx")
    metadata.set_metadata(model, {metadata.PRECISION: claim})
    onnx.save(model, tmp_path / "claims.onnx")
    message = f"metadata {metadata.PRECISION} says {claim} but the graph holds fp32 tensors"
    with pytest.raises(BackendError, match=message):
        load(tmp_path / "claims.onnx", backend="onnxruntime")
    code, err = _cli(capsys, "compare", tmp_path / "claims.onnx", "--checkpoint", block["weights"])
    assert code == 2 and message in err


def test_fp16_graph_claiming_fp32_is_refused(block, tmp_path):
    half = onnx.load(to_fp16(block["dir"] / "block.onnx", tmp_path / "half.onnx"))
    metadata.set_metadata(half, {metadata.PRECISION: "fp32"})
    onnx.save(half, tmp_path / "half.onnx")
    with pytest.raises(BackendError, match="says fp32 but the graph holds fp16"):
        load(tmp_path / "half.onnx", backend="onnxruntime")


def test_zip_member_lying_about_its_size_is_refused(tmp_path):
    """A member whose npy header declares more than the zip entry holds is caught before reading."""
    _conv_model(tmp_path / "m.onnx", "add")
    header = tmp_path / "h.npy"
    with open(header, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (4, 32, 4, 4)})
    with zipfile.ZipFile(tmp_path / "lie.npz", "w") as z:
        z.writestr("x.npy", header.read_bytes() + b"\0" * 16)
    with pytest.raises(
        InputError, match=r"lie\.npz as \.npy/\.npz: array 'x' declares 8192 bytes of array data but holds 16"
    ):
        quantize(tmp_path / "m.onnx", tmp_path / "out.onnx", calibration=tmp_path / "lie.npz")


def test_run_input_is_read_bounded_too(block, tmp_path):
    """`run --input` reads through the same reader: a FIFO is refused at once (a deadline, not a hang, on old code)."""
    os.mkfifo(tmp_path / "in.npy")
    run = subprocess.run(
        [sys.executable, "-m", "effattn", "run", str(block["good"]), "--input", str(tmp_path / "in.npy")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].endswith("in.npy is a FIFO, not a regular file")
