"""The output resize as MatMuls (runtime/openvino_rewrites.py): the matrices are torch's bilinear resize, the
rewrite touches only the resizes it computes exactly and that feed graph outputs, and the runner's answers stay the
file's (trained segmenter, fresh inputs)."""

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

pytest.importorskip("openvino", reason="openvino is not installed (it comes with the 'cpu' extra)")
import openvino as ov

from effattn.errors import BackendError
from effattn.runtime import compare, load, profile_inputs
from effattn.runtime.openvino_rewrites import MAX_INPUT_SIZE, interpolation_matrix, output_resizes_as_matmuls
from effattn.runtime.openvino_runner import OpenVINORunner
from effattn.runtime.torch_runner import TorchRunner
from tests.conftest import rel_l2


@pytest.mark.parametrize(("size_in", "size_out"), [(4, 16), (64, 256), (7, 3), (5, 5), (3, 10), (1, 4), (6, 9)])
def test_the_matrices_are_torchs_bilinear_resize(size_in, size_out):
    """Up, down, non-integer and identity scales, with the edges clamped as torch clamps them (torch computes the
    source coordinates in FP32, the matrices in FP64: they differ by FP32 rounding, ~1e-6 of a value)."""
    x = torch.randn(2, 3, size_in, size_in + 1, generator=torch.Generator().manual_seed(size_in * 100 + size_out))
    expected = F.interpolate(x, size=(size_out, size_out + 2), mode="bilinear", align_corners=False)
    a_h = torch.from_numpy(interpolation_matrix(size_in, size_out))
    a_w = torch.from_numpy(interpolation_matrix(size_in + 1, size_out + 2))
    assert rel_l2((a_h @ x @ a_w.T).numpy(), expected.numpy()) <= 1e-6


def _ops(model) -> list[str]:
    return [op.get_type_name() for op in model.get_ordered_ops()]


def _layers(compiled) -> list[str]:
    return [op.get_rt_info()["layerType"].astype(str) for op in compiled.get_runtime_model().get_ordered_ops()]


@pytest.mark.parametrize(("precision", "limit"), [("f32", 1e-6), ("bf16", 4e-3)])
def test_the_segmenters_output_resize_becomes_matmuls_and_computes_the_same(onnx_models, precision, limit):
    """ea_segnet_tiny has two bilinear resizes: the decoder's (it feeds a Concat) stays, the output's is rewritten.
    Compiled in FP32 both graphs give the same logits on fresh inputs: exactly with FP32 matrices, within BF16's
    rounding (8-bit mantissa: ~2e-3 relative per value) when the first product is BF16, as for a BF16 model."""
    seg = onnx_models["seg_small"]
    core = ov.Core()
    plain, rewritten = core.read_model(str(seg.path)), core.read_model(str(seg.path))
    for model in (plain, rewritten):
        model.reshape({"input": [2, 3, 48, 64]})
    assert output_resizes_as_matmuls(rewritten, precision) == ["logits"]
    assert _ops(plain).count("Interpolate") == 2 and _ops(rewritten).count("Interpolate") == 1
    constants = [op for op in rewritten.get_ordered_ops() if op.get_type_name() == "Constant"]
    assert any(c.get_element_type().get_type_name() == "bf16" for c in constants) is (precision == "bf16")
    assert rewritten.outputs[0].get_any_name() == "logits" and list(rewritten.outputs[0].get_shape()) == [2, 3, 48, 64]
    x = np.random.default_rng().standard_normal((2, 3, 48, 64)).astype(np.float32)
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}
    a = core.compile_model(plain, "CPU", f32)(x)[0]
    b = core.compile_model(rewritten, "CPU", f32)(x)[0]
    assert rel_l2(b, a) <= limit


def test_the_runner_rewrites_and_stays_within_the_files_tolerance(onnx_models):
    """With the rewrite the runner's compile has one Interpolate left, without it two; at the precision the runner
    reports (BF16 where the CPU has it) it passes parity against eager on the trained weights, fresh inputs."""
    seg = onnx_models["seg_small"]
    with (
        OpenVINORunner(seg.path, resize_as_matmul=True) as ours,
        OpenVINORunner(seg.path, resize_as_matmul=False) as asis,
    ):
        ((compiled, _),) = ours._static.values()
        ((compiled_asis, _),) = asis._static.values()
        assert _layers(compiled).count("Interpolate") == 1 and _layers(compiled_asis).count("Interpolate") == 2
        report = compare(TorchRunner(seg.source.model, seg.profile), ours, profile_inputs(seg.profile), ours.precision)
    assert report.passed, report
    with pytest.raises(BackendError, match="does not take resize_as_matmul"):
        load(seg.path, backend="onnxruntime", resize_as_matmul=True)


@pytest.mark.parametrize("amx", [True, False])
def test_by_default_the_runner_rewrites_where_the_cpu_has_amx(onnx_models, monkeypatch, amx):
    """Measured faster only with AMX (slower under an AVX512-BF16 cap): the default follows has_amx; load() passes
    an explicit choice through."""
    monkeypatch.setattr("effattn.runtime.openvino_runner.has_amx", lambda: amx)
    seg = onnx_models["seg_small"]
    with load(seg.path, backend="openvino") as runner:
        assert runner.resize_as_matmul is amx
        ((compiled, _),) = runner._static.values()
        assert _layers(compiled).count("Interpolate") == (1 if amx else 2)
    with load(seg.path, backend="openvino", resize_as_matmul=not amx) as runner:
        assert runner.resize_as_matmul is not amx


@pytest.mark.parametrize(
    ("flags", "cap", "expected"),
    [
        (["amx_bf16"], None, True),
        (["amx_bf16"], "ALL", True),
        (["amx_bf16"], "avx512_core_amx", True),
        (["amx_bf16"], "AVX512_CORE_BF16", False),  # oneDNN's ISA cap, which OpenVINO honours
        (["amx_bf16"], "AVX2", False),
        ([], None, False),
    ],
)
def test_has_amx_reads_the_flags_and_onednns_cap(monkeypatch, flags, cap, expected):
    from effattn import cpu

    monkeypatch.setattr(cpu, "cpu_flags", lambda wanted=(): [f for f in flags if f in wanted])
    if cap is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert cpu.has_amx() is expected


def _resize_graph(path, *, mode="linear", coordinates="half_pixel", sizes=(1, 2, 8, 12), then_relu=False, antialias=0):
    """x (1, 2, 4, 6) -> Resize to ``sizes`` (-> Relu) -> y."""
    resized = "r" if then_relu else "y"
    nodes = [
        helper.make_node(
            "Resize",
            ["x", "", "", "sizes"],
            [resized],
            mode=mode,
            coordinate_transformation_mode=coordinates,
            antialias=antialias,
        )
    ]
    if then_relu:
        nodes.append(helper.make_node("Relu", ["r"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "resize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("sizes", TensorProto.INT64, [4], list(sizes))],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return ov.Core().read_model(str(path))


@pytest.mark.parametrize(
    ("options", "rewritten"),
    [
        ({}, True),
        ({"coordinates": "pytorch_half_pixel"}, True),
        ({"coordinates": "pytorch_half_pixel", "sizes": (1, 2, 1, 12)}, False),  # differs from half_pixel at size 1
        ({"sizes": (1, 2, 1, 12)}, True),
        ({"sizes": (1, 2, 3, 2)}, True),  # down
        ({"mode": "nearest"}, False),
        ({"mode": "cubic"}, False),
        ({"coordinates": "align_corners"}, False),
        ({"coordinates": "asymmetric"}, False),
        ({"antialias": 1, "sizes": (1, 2, 2, 3)}, False),
        ({"then_relu": True}, False),  # feeds an op, not only the graph output
        ({"sizes": (1, 4, 8, 12)}, False),  # resizes the channels too
        ({"sizes": (1, 2, 4, 6)}, False),  # the identity: nothing to rewrite, no other node renamed
    ],
)
def test_only_what_the_matrices_compute_exactly_is_rewritten(tmp_path, options, rewritten):
    """Rewritten or not, the graph computes what it computed (FP32, fresh inputs)."""
    model = _resize_graph(tmp_path / "r.onnx", **options)
    x = np.random.default_rng().standard_normal((1, 2, 4, 6)).astype(np.float32)
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}
    before = ov.Core().compile_model(model.clone(), "CPU", f32)(x)[0]
    assert bool(output_resizes_as_matmuls(model)) is rewritten
    after = ov.Core().compile_model(model, "CPU", f32)(x)[0]
    assert after.shape == before.shape and rel_l2(after, before) <= 1e-6
    assert [p.get_any_name() for p in (*model.inputs, *model.outputs)] == ["x", "y"]


def test_large_or_dynamic_inputs_are_left_to_openvino(tmp_path):
    """Beyond MAX_INPUT_SIZE the dense matrices cost more than the Interpolate kernel; without static shapes there
    is no matrix to build."""
    model = _resize_graph(tmp_path / "r.onnx")
    dynamic = model.clone()
    dynamic.reshape({"x": ov.PartialShape([1, 2, -1, -1])})
    assert output_resizes_as_matmuls(dynamic) == []
    model.reshape({"x": [1, 2, MAX_INPUT_SIZE + 1, 6]})
    assert output_resizes_as_matmuls(model) == []


def test_profile_shows_the_rewrite_and_as_is_the_graph_without_it(onnx_models, capsys, monkeypatch):
    """``effattn profile`` times what the runner runs (on an AMX CPU: one Interpolate left in the segmenter);
    ``--as-is`` the file as OpenVINO compiles it (both); ``--shapes`` is trtexec's spelling of ``--shape``."""
    import json

    from effattn.cli import main

    monkeypatch.setattr("effattn.runtime.openvino_runner.has_amx", lambda: True)
    seg = str(onnx_models["seg_small"].path)
    layers = {}
    for as_is in (False, True):
        argv = ["profile", seg, "--shapes", "1x3x40x48", "--iterations", "1", "--json"] + ["--as-is"] * as_is
        assert main(argv) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["inputs"] == {"input": [1, 3, 40, 48]}
        layers[as_is] = {row["name"]: row["layers"] for row in report["by_type"]}
    assert layers[False].get("Interpolate") == 1 and layers[True].get("Interpolate") == 2


@pytest.mark.parametrize(
    ("opset", "shape", "scales", "axes"),
    [
        ("opset11", (2, 3, 5, 7), (1, 1, 1.5, 1.7), None),  # 5 -> 7, 7 -> 11: not out / in
        ("opset11", (1, 1, 9, 10), (1, 1, 0.6, 0.75), None),  # down
        ("opset11", (1, 2, 4, 6), (2.0, 1.7), (2, 3)),  # the scales of the axes named
        ("opset10", (1, 2, 5, 7), (1.5, 1.7), (2, 3)),  # Interpolate v4: the scales are its third input
    ],
)
def test_a_resize_given_scales_computes_its_coordinates_with_them(opset, shape, scales, axes):
    """ONNX Resize given scales (torch's scale_factor) maps output i to (i + 0.5) / scale - 0.5, not to its place
    in out / in: 1.5 takes 5 to 7 (7 / 5 = 1.4). Rewritten, the graph answers what it answered (FP32)."""
    import importlib

    ops = importlib.import_module(f"openvino.{opset}")
    x = ops.parameter(list(shape), np.float32)
    given = ops.constant(np.array(scales, np.float32))
    options = {"coordinate_transformation_mode": "half_pixel"}
    if axes is not None:
        options["axes"] = ops.constant(np.array(axes, np.int64))
    if opset == "opset10":
        resized = ops.interpolate(x, ops.constant(np.zeros(2, np.int64)), given, "linear_onnx", "scales", **options)
    else:
        resized = ops.interpolate(x, given, "linear_onnx", "scales", **options)
    model = ov.Model([resized], [x])
    feed = np.random.default_rng().standard_normal(shape).astype(np.float32)
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}
    before = ov.Core().compile_model(model.clone(), "CPU", f32)(feed)[0]
    assert len(output_resizes_as_matmuls(model)) == 1
    after = ov.Core().compile_model(model, "CPU", f32)(feed)[0]
    assert after.shape == before.shape and rel_l2(after, before) <= 1e-6
