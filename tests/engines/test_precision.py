"""The engine precision decision (one place, from the graph alone), the QDQ checks before a TensorRT INT8 or
FP8 build, the FP8 capability check, how each TensorRT version types the network, and the cache key: all
without a GPU."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from effattn import metadata
from effattn.engines.cache import EngineKey
from effattn.engines.precision import (
    EnginePrecision,
    capability_refusal,
    converted_graph,
    decide,
    engine_precision,
    graph_precision,
    qdq_problems,
)
from effattn.engines.tensorrt_build import NetworkTyping, network_typing, version_tuple
from effattn.errors import BackendError
from effattn.export import quantize, to_fp16
from effattn.export.precision import to_bf16


@pytest.fixture(scope="module")
def graphs(tmp_path_factory, onnx_models):
    d = tmp_path_factory.mktemp("engine-precision")
    fp32 = onnx_models["ea16_quant"].path
    return {
        "dir": d,
        "fp32": fp32,
        "fp16": to_fp16(fp32, d / "block.fp16.onnx"),
        "bf16": to_bf16(fp32, d / "block.bf16.onnx"),
        "int8": quantize(fp32, d / "block.int8.onnx", samples=4).path,
        "fp8": quantize(
            onnx_models["ea32"].path,  # FP8 Convs need > 16 channels
            d / "wide.fp8.onnx",
            samples=4,
            precision="fp8",
        ).path,
    }


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "int8", "fp8"])
def test_graph_precision_is_read_from_the_graph_and_agrees_with_the_metadata(graphs, precision):
    model = onnx.load(graphs[precision])
    assert graph_precision(model) == precision
    assert metadata.precision_of(metadata.read_metadata(graphs[precision])) == precision
    floats = "fp32" if precision in ("int8", "fp8") else None
    assert engine_precision(graphs[precision]) == EnginePrecision(precision, precision, float_type=floats)


@pytest.mark.parametrize(
    "graph,requested,fp16_flag,expected",
    [
        ("fp32", None, False, EnginePrecision("fp32", "fp32")),
        ("fp32", "auto", False, EnginePrecision("fp16", "fp32", convert="fp16")),  # the engine users ship
        ("fp32", "auto", True, EnginePrecision("fp16", "fp32", fp16_flag=True)),
        ("fp16", "auto", False, EnginePrecision("fp16", "fp16")),
        ("int8", "auto", False, EnginePrecision("int8", "int8")),
        ("bf16", "auto", False, EnginePrecision("bf16", "bf16")),
        ("fp32", "fp16", False, EnginePrecision("fp16", "fp32", convert="fp16")),
        ("fp32", "bf16", False, EnginePrecision("bf16", "fp32", convert="bf16")),
        ("fp32", "fp16", True, EnginePrecision("fp16", "fp32", fp16_flag=True)),
        ("fp16", None, False, EnginePrecision("fp16", "fp16")),
        ("fp16", "fp16", False, EnginePrecision("fp16", "fp16")),
        ("bf16", None, False, EnginePrecision("bf16", "bf16")),
        ("int8", None, False, EnginePrecision("int8", "int8")),
        ("int8", "int8", True, EnginePrecision("int8", "int8", fp16_flag=True)),
        ("fp8", None, False, EnginePrecision("fp8", "fp8")),
        ("fp8", "auto", False, EnginePrecision("fp8", "fp8")),
        ("fp8", "fp8", True, EnginePrecision("fp8", "fp8", fp16_flag=True)),
    ],
)
def test_decision_table(graph, requested, fp16_flag, expected):
    assert decide(graph, requested, fp16_flag) == expected


@pytest.mark.parametrize(
    "graph,requested,fp16_flag,match",
    [
        ("fp32", "int8", False, r"INT8 engine needs an INT8 QDQ graph and this one is fp32: quantize the FP32 export"),
        ("fp16", "int8", False, r"this one is fp16"),
        ("fp16", "fp32", False, r"the graph is fp16; an FP32 engine needs the FP32 export"),
        ("int8", "fp32", False, r"the graph is int8; an FP32 engine needs the FP32 export"),
        ("int8", "fp16", False, r"the graph is int8, so its engine is int8: precision lives in the graph"),
        ("fp16", "bf16", False, r"For a bf16 engine build the FP32 export with precision='bf16'"),
        (
            "fp32",
            "fp8",
            False,
            r"an FP8 engine needs an FP8 QDQ graph and this one is fp32: quantize the FP32 export "
            r"first \('effattn quantize --precision fp8', calibrated\)",
        ),
        ("int8", "fp8", False, r"an FP8 engine needs an FP8 QDQ graph and this one is int8"),
        ("fp8", "int8", False, r"an INT8 engine needs an INT8 QDQ graph and this one is fp8: .*'effattn quantize',"),
        ("fp8", "fp16", False, r"the graph is fp8, so its engine is fp8"),
        ("fp32", "fp4", False, r"precision must be one of auto, fp32, fp16, bf16, int8, fp8; got 'fp4'"),
        ("fp32", None, True, r"fp16_flag .* does not apply to a fp32 engine of a fp32 graph"),
        ("fp16", "fp16", True, r"does not apply to a fp16 engine of a fp16 graph"),
    ],
)
def test_decision_refusals_say_what_to_do(graph, requested, fp16_flag, match):
    with pytest.raises(BackendError, match=match):
        decide(graph, requested, fp16_flag)


def _edited(graphs, name: str, edit) -> str:
    model = onnx.load(graphs["int8"])
    edit(model)
    path = graphs["dir"] / name
    onnx.save(model, path)
    return path


def _zero_points(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    names = {n.input[2] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    return [t for t in model.graph.initializer if t.name in names]


def test_metadata_that_disagrees_with_the_graph_is_refused(graphs):
    path = _edited(graphs, "lies.onnx", lambda m: metadata.set_metadata(m, {metadata.PRECISION: "fp32"}))
    with pytest.raises(BackendError, match=r"metadata effattn.precision says fp32 but the graph holds int8"):
        engine_precision(path)


def test_a_file_without_effattn_metadata_is_taken_at_the_graph_word(graphs):
    path = _edited(graphs, "foreign.onnx", lambda m: m.ClearField("metadata_props"))
    assert engine_precision(path) == EnginePrecision("int8", "int8", float_type="fp32")


def test_asymmetric_or_unsigned_qdq_graphs_are_refused_before_tensorrt(graphs):
    def unsigned(model):
        for t in _zero_points(model):
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.uint8) + 128, t.name))

    def shifted(model):
        t = _zero_points(model)[0]
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) + np.int8(3), t.name))

    with pytest.raises(
        BackendError,
        match=r"zero points of type uint8 \(TensorRT takes signed INT8 or FP8 E4M3.*"
        r"non-zero zero points \(asymmetric.*'effattn quantize'",
    ):
        engine_precision(_edited(graphs, "uint8.onnx", unsigned))
    with pytest.raises(BackendError, match=r"not a QDQ graph TensorRT can build: [0-9]+ non-zero zero points"):
        engine_precision(_edited(graphs, "asym.onnx", shifted))
    assert qdq_problems(onnx.load(graphs["int8"])) == []


def test_a_qdq_graph_without_a_quantized_layer_is_refused():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    inits = [numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.int8(0), "z")]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits))
    assert graph_precision(model) == "int8"
    assert qdq_problems(model) == [
        "no op reads both its data and its weight through DequantizeLinear (no quantized layer)"
    ]


def _qdq(zero_points: dict[str, onnx.TensorProto], activation_scale: float | np.ndarray = 0.1) -> onnx.ModelProto:
    """x -> Q/DQ (zero point "zx") -> MatMul with a weight through Q/DQ (zero point "zw"): one quantized layer."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    inits = [
        numpy_helper.from_array(np.asarray(activation_scale, np.float32), "sx"),
        numpy_helper.from_array(np.float32(0.01), "sw"),
        numpy_helper.from_array(np.eye(4, dtype=np.float32), "w"),
        *zero_points.values(),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["qx"]),
        helper.make_node("DequantizeLinear", ["qx", "sx", "zx"], ["dx"]),
        helper.make_node("QuantizeLinear", ["w", "sw", "zw"], ["qw"]),
        helper.make_node("DequantizeLinear", ["qw", "sw", "zw"], ["dw"]),
        helper.make_node("MatMul", ["dx", "dw"], ["y"]),
    ]
    return helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 19)]
    )


def _zero(name: str, kind: int) -> onnx.TensorProto:
    return helper.make_tensor(name, kind, [], bytes(1), raw=True)


def test_fp8_qdq_graphs_are_checked_like_int8_ones():
    """One TensorRT type per graph (signed INT8 or FP8 E4M3), and one scale per activation tensor."""
    e4m3 = {"zx": _zero("zx", TensorProto.FLOAT8E4M3FN), "zw": _zero("zw", TensorProto.FLOAT8E4M3FN)}
    assert graph_precision(_qdq(e4m3)) == "fp8" and qdq_problems(_qdq(e4m3)) == []
    mixed = {"zx": _zero("zx", TensorProto.FLOAT8E4M3FN), "zw": _zero("zw", TensorProto.INT8)}
    assert qdq_problems(_qdq(mixed)) == [
        "INT8 and FP8 quantizers mixed (float8_e4m3fn, int8); quantize the FP32 export to one of them"
    ]
    e5m2 = {"zx": _zero("zx", TensorProto.FLOAT8E5M2), "zw": _zero("zw", TensorProto.FLOAT8E5M2)}
    assert graph_precision(_qdq(e5m2)) == "fp8"
    assert qdq_problems(_qdq(e5m2)) == [
        "zero points of type float8_e5m2 (TensorRT takes signed INT8 or FP8 E4M3; a missing zero point means uint8)"
    ]
    per_channel = _qdq(
        {
            "zx": helper.make_tensor("zx", TensorProto.FLOAT8E4M3FN, [4], bytes(4), raw=True),
            "zw": _zero("zw", TensorProto.FLOAT8E4M3FN),
        },
        activation_scale=np.full(4, 0.1, np.float32),
    )
    per_channel.graph.node[0].attribute.append(helper.make_attribute("axis", 1))
    assert qdq_problems(per_channel) == [
        "1 activation quantizers with per-channel scales (TensorRT takes one scale per activation tensor)"
    ]


def test_the_fp8_file_of_effattn_quantize_passes_the_checks(graphs):
    model = onnx.load(graphs["fp8"])
    assert qdq_problems(model) == []
    assert {t.data_type for t in _zero_points(model)} == {TensorProto.FLOAT8E4M3FN}


@pytest.mark.parametrize(
    "precision,capability,refused",
    [
        ("fp8", "9.0", False),
        ("fp8", "8.9", False),
        ("fp8", "10.0", False),
        ("fp8", "12.0", False),
        ("fp8", "8.6", True),
        ("fp8", "8.0", True),
        ("fp8", "7.5", True),
        ("int8", "7.5", False),
        ("bf16", "9.0", False),
    ],
)
def test_fp8_engines_need_fp8_tensor_cores(precision, capability, refused):
    refusal = capability_refusal(precision, capability)
    assert (refusal is not None) == refused
    if refused:
        assert refusal.startswith(
            f"FP8 engines need FP8 tensor cores (compute capability 8.9+: Ada, Hopper, "
            f"Blackwell); this GPU is {capability}"
        )


def test_unreadable_files_are_one_line_errors(tmp_path):
    with pytest.raises(BackendError, match="does not exist"):
        engine_precision(tmp_path / "none.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00junk")
    with pytest.raises(BackendError, match="is not a readable ONNX model"):
        engine_precision(tmp_path / "junk.onnx")


INT8, FP16_FLAG = EnginePrecision("int8", "int8"), EnginePrecision("fp16", "fp32", fp16_flag=True)


@pytest.mark.parametrize(
    "version,rtx,decision,expected",
    [
        ("11.4.0.106", False, INT8, NetworkTyping(True)),
        ("10.13.3.9", False, INT8, NetworkTyping(True)),
        ("10.12.0", False, INT8, NetworkTyping(True)),
        ("10.8.0.43", False, INT8, NetworkTyping(False, ("int8",))),  # before strong typing was the way: INT8 flag
        ("10.8.0.43", False, EnginePrecision("fp16", "fp16"), NetworkTyping(True)),
        ("10.13.3.9", False, EnginePrecision("int8", "int8", fp16_flag=True), NetworkTyping(False, ("int8", "fp16"))),
        ("10.13.3.9", False, FP16_FLAG, NetworkTyping(False, ("fp16",))),
        ("1.7.1", True, EnginePrecision("bf16", "bf16"), NetworkTyping(True)),
        ("11.4.0.106", False, EnginePrecision("fp8", "fp8"), NetworkTyping(True)),
        ("10.13.3.9", False, EnginePrecision("fp8", "fp8"), NetworkTyping(True)),
        ("10.8.0.43", False, EnginePrecision("fp8", "fp8"), NetworkTyping(False, ("fp8",))),  # the FP8 flag then
        ("10.13.3.9", False, EnginePrecision("fp8", "fp8", fp16_flag=True), NetworkTyping(False, ("fp8", "fp16"))),
    ],
)
def test_network_typing_per_tensorrt_version(version, rtx, decision, expected):
    assert network_typing(version, decision, rtx) == expected


@pytest.mark.parametrize(
    "version,rtx,match",
    [
        ("11.0.0", False, "TensorRT 11.0.0 has no FP16 builder flag"),
        ("1.7.1", True, "TensorRT-RTX 1.7.1 has no FP16 builder flag"),
        ("8.6.1", False, "TensorRT 8.6.1 is too old"),
    ],
)
def test_network_typing_refusals(version, rtx, match):
    with pytest.raises(BackendError, match=match):
        network_typing(version, FP16_FLAG, rtx)


def test_version_tuple():
    assert version_tuple("10.13.3.9.post1") == (10, 13) and version_tuple("11") == (11, 0)


def test_engine_key_and_sidecar_record_the_precision_and_typing():
    def key(precision, typing):
        options = {
            "optimization_level": 3,
            "strongly_typed": typing.strongly_typed,
            "precision_flags": list(typing.flags),
            "graph_precision": "int8",
        }
        return EngineKey.create(b"graph", precision, ["{}"], options, "tensorrt", "10.8.0", "NVIDIA H100", "9.0")

    strong, weak = key("int8", NetworkTyping(True)), key("int8", NetworkTyping(False, ("int8",)))
    assert len({strong.digest, weak.digest, key("fp32", NetworkTyping(True)).digest}) == 3
    assert strong.precision == "int8" and '"precision_flags":["int8"]' in weak.builder_options


def test_converted_graph_follows_the_decision(graphs, tmp_path):
    assert converted_graph(engine_precision(graphs["int8"]), graphs["int8"], tmp_path / "x.onnx") == graphs["int8"]
    assert not (tmp_path / "x.onnx").exists()
    decision = engine_precision(graphs["fp32"], "bf16")
    out = converted_graph(decision, graphs["fp32"], tmp_path / "b.onnx")
    assert out == tmp_path / "b.onnx" and engine_precision(out) == EnginePrecision("bf16", "bf16")


# ------------------------------------------------------------------------------------------ QDQ float part per target
@pytest.mark.parametrize(
    "graph,requested,fp16_flag,floats,target,expected",
    [
        # TensorRT gets the FP16-float QDQ graph: converted from the FP32-float file quantize writes
        ("int8", None, False, "fp32", "tensorrt", EnginePrecision("int8", "int8", convert="fp16", float_type="fp16")),
        ("int8", "auto", False, "fp32", "tensorrt", EnginePrecision("int8", "int8", convert="fp16", float_type="fp16")),
        ("fp8", "fp8", False, "fp32", "tensorrt", EnginePrecision("fp8", "fp8", convert="fp16", float_type="fp16")),
        ("int8", None, False, "fp16", "tensorrt", EnginePrecision("int8", "int8", float_type="fp16")),
        # TensorRT 10 with the FP16 flag picks FP16 itself: the file as it is
        ("int8", None, True, "fp32", "tensorrt", EnginePrecision("int8", "int8", fp16_flag=True, float_type="fp32")),
        # the CPU runtimes run the file as it is (FP32 float measured faster there: docs/precision.md)
        ("int8", None, False, "fp32", "onnxruntime", EnginePrecision("int8", "int8", float_type="fp32")),
        ("int8", None, False, "fp32", "openvino", EnginePrecision("int8", "int8", float_type="fp32")),
        ("int8", None, False, "fp16", "onnxruntime", EnginePrecision("int8", "int8", float_type="fp16")),
        # float graphs are untouched by the QDQ rule
        ("fp32", "auto", False, None, "tensorrt", EnginePrecision("fp16", "fp32", convert="fp16")),
    ],
)
def test_qdq_float_part_per_target(graph, requested, fp16_flag, floats, target, expected):
    assert decide(graph, requested, fp16_flag, float_type=floats, target=target) == expected


def test_unknown_target_is_refused():
    with pytest.raises(BackendError, match="target must be one of tensorrt, onnxruntime, openvino; got 'cuda'"):
        decide("int8", None, float_type="fp32", target="cuda")


HALF_INT8 = EnginePrecision("int8", "int8", convert="fp16", float_type="fp16")


@pytest.mark.parametrize(
    "version,decision,expected",
    [
        ("10.8.0.43", HALF_INT8, NetworkTyping(False, ("int8", "fp16"))),  # weakly typed: FP16 flag for its float part
        ("10.11.0", EnginePrecision("fp8", "fp8", float_type="fp16"), NetworkTyping(False, ("fp8", "fp16"))),
        ("10.8.0.43", EnginePrecision("int8", "int8", float_type="fp32"), NetworkTyping(False, ("int8",))),
        ("10.12.0", HALF_INT8, NetworkTyping(True)),  # strongly typed: the graph's FP16 types say it
        ("11.4.0.106", HALF_INT8, NetworkTyping(True)),
    ],
)
def test_weakly_typed_qdq_builds_add_the_fp16_flag_for_an_fp16_float_part(version, decision, expected):
    assert network_typing(version, decision) == expected


def test_tensorrt_decision_converts_the_qdq_file_and_the_cpu_keeps_it(graphs, tmp_path):
    decision = engine_precision(graphs["int8"], target="tensorrt")
    assert decision == HALF_INT8
    out = converted_graph(decision, graphs["int8"], tmp_path / "h.onnx")
    assert out == tmp_path / "h.onnx"
    assert metadata.read_metadata(out)[metadata.FLOAT_TYPE] == "fp16"
    assert engine_precision(out, target="tensorrt") == EnginePrecision("int8", "int8", float_type="fp16")
    assert engine_precision(graphs["int8"], target="onnxruntime").convert is None


def test_float_type_metadata_that_disagrees_with_the_graph_is_refused(graphs):
    path = _edited(graphs, "floats.onnx", lambda m: metadata.set_metadata(m, {metadata.FLOAT_TYPE: "fp16"}))
    with pytest.raises(BackendError, match=r"metadata effattn\.float_type says 'fp16' but the graph's scales make its"):
        engine_precision(path)
