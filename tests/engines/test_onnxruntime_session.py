"""ONNX Runtime sessions: the graph rewrite that is wrong for FP8 QDQ graphs is off, and FP8 files are told apart
for runtimes that cannot turn it off alone (Triton)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from effattn.engines.onnxruntime_session import create_session, holds_float8


def _relu_then_quantize(path, zero_point_type: int):
    """x -> Relu -> QuantizeLinear -> DequantizeLinear: the smallest graph where onnxruntime 1.32's
    ReluQuantRewrite drops the Relu of an FP8 graph (the negative half of x came back)."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("QuantizeLinear", ["r", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(4 / 448, np.float32), "s"),
        helper.make_tensor("z", zero_point_type, [], bytes(1), raw=True),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [9])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), path)
    return path


@pytest.mark.parametrize("zero_point_type", [TensorProto.FLOAT8E4M3FN, TensorProto.INT8], ids=["fp8", "int8"])
def test_a_relu_before_a_quantizer_still_clamps(tmp_path, zero_point_type):
    path = _relu_then_quantize(tmp_path / "relu_q.onnx", zero_point_type)
    assert holds_float8(path) == (zero_point_type == TensorProto.FLOAT8E4M3FN)
    x = np.linspace(-4, 4, 9, dtype=np.float32)
    y = create_session(path).run(None, {"x": x})[0]
    assert (y[x <= 0] == 0).all() and (y[x > 0] > 0).all(), y


def test_holds_float8_reads_nothing_it_cannot(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"\x00junk")
    assert holds_float8(tmp_path / "junk.onnx") is False
    assert holds_float8(tmp_path / "missing.onnx") is False
