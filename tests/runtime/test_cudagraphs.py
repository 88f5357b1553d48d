"""CUDA graphs: the capture policy (CPU-testable), and replay output equal to plain execution (GPU)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from effattn.runtime.cudagraphs import GraphPolicy, ShapeGraphs, shape_key

A, B = ((1, 8, 4, 4),), ((2, 8, 4, 4),)


def test_auto_policy_captures_static_profiles_at_once_and_dynamic_ones_on_repeat():
    assert GraphPolicy(None, static_profile=True).wants_capture(A, None)
    dynamic = GraphPolicy(None, static_profile=False)
    assert not dynamic.wants_capture(A, None) and not dynamic.wants_capture(A, B)
    assert dynamic.wants_capture(A, A)
    assert GraphPolicy(True, static_profile=False).wants_capture(A, None)
    off = GraphPolicy(False, static_profile=True)
    assert not off.enabled and not off.wants_capture(A, A)


def test_shape_key_is_per_input_shape():
    assert shape_key({"x": np.zeros((1, 2)), "y": np.zeros(3)}) == ((1, 2), (3,))


def test_exclusive_graphs_keep_one_shape():
    assert ShapeGraphs(GraphPolicy(True, False), capacity=8, exclusive=True).capacity == 1


# ------------------------------------------------------------------------------------------- GPU

SHAPES = [(2, 16, 12, 12), (2, 16, 12, 12), (2, 16, 12, 12), (1, 16, 8, 8), (1, 16, 8, 8), (2, 16, 12, 12)]


def _replays_equal_plain(runner_plain, runner_graph) -> None:
    rng = np.random.default_rng()
    for shape in SHAPES:
        x = rng.standard_normal(shape, dtype=np.float32)
        plain = runner_plain.infer({"input": x})["output"]
        graph = runner_graph.infer({"input": x})["output"]
        np.testing.assert_allclose(graph, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_torch_graph_replay_equals_plain():
    from effattn.models import EfficientAttention
    from effattn.runtime.torch_runner import TorchRunner
    from effattn.shapes import ShapeProfile

    block = EfficientAttention(16, 8, 2, 16)
    profile = ShapeProfile.single("1x16x4x4", "2x16x12x12", "4x16x16x16")
    plain = TorchRunner(block, profile, device="cuda", cuda_graph=False)
    graph = TorchRunner(block, profile, device="cuda", cuda_graph=None)
    _replays_equal_plain(plain, graph)
    assert graph._graphs.captures == 2 and graph._graphs.replays >= 3


@pytest.mark.gpu
def test_tensorrt_graph_replay_equals_plain(tmp_path):
    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("tensorrt is not installed (pip install 'effattn[gpu]')")
    from effattn.engines import build_engine
    from effattn.export import export_onnx
    from effattn.models import EfficientAttention
    from effattn.runtime.tensorrt_runner import TensorRTRunner
    from effattn.shapes import ShapeProfile

    profile = ShapeProfile.single("1x16x4x4", "2x16x12x12", "4x16x16x16")
    path = export_onnx(EfficientAttention(16, 8, 2, 16), profile, tmp_path / "b.onnx").path
    plan = build_engine(path, precision="fp32", cache_dir=tmp_path / "cache").plan
    plain, graph = TensorRTRunner(plan, cuda_graph=False), TensorRTRunner(plan, contexts=1, cuda_graph=None)
    _replays_equal_plain(plain, graph)
    assert graph.graph_counts["replays"] >= 3 and plain.graph_counts["replays"] == 0


@pytest.mark.gpu
def test_onnxruntime_cuda_graph_replay_equals_plain(tmp_path):
    from effattn.engines import available_devices

    if "cuda" not in available_devices():
        pytest.skip("onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu)")
    from effattn.export import export_onnx
    from effattn.models import EfficientAttention
    from effattn.runtime.onnxruntime_runner import OnnxRuntimeRunner
    from effattn.shapes import ShapeProfile

    profile = ShapeProfile.single("2x16x12x12", "2x16x12x12", "2x16x12x12")  # static: graphs on by default
    path = export_onnx(EfficientAttention(16, 8, 2, 16), profile, tmp_path / "b.onnx").path
    plain = OnnxRuntimeRunner(path, device="cuda", cuda_graph=False)
    graph = OnnxRuntimeRunner(path, device="cuda")
    assert graph.cuda_graph and not plain.cuda_graph
    rng = np.random.default_rng()
    for _ in range(4):
        x = rng.standard_normal((2, 16, 12, 12), dtype=np.float32)
        np.testing.assert_allclose(graph.infer(x)["output"], plain.infer(x)["output"], rtol=1e-5, atol=1e-5)
