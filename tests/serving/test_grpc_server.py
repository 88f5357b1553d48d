"""effattn serve --grpc-port: the same models over KServe v2 gRPC, driven by tritonclient.grpc."""

from __future__ import annotations

import numpy as np
import pytest

from effattn.runtime import load
from tests.fixtures import ONNX_MODELS
from tests.harness import free_port, http, running_server

grpc_client = pytest.importorskip("tritonclient.grpc", reason="tests need tritonclient[grpc] (the test extra)")
from tritonclient.utils import InferenceServerException  # noqa: E402

PROFILE = ONNX_MODELS["ea8_batch8"].profile


@pytest.fixture(scope="module")
def server(onnx_models):
    path = onnx_models["ea8_batch8"].path
    port = free_port()
    with running_server({"block": path}, "--grpc-port", str(port)) as (_, base):
        yield path, base, grpc_client.InferenceServerClient(f"127.0.0.1:{port}")


def _tensor(x: np.ndarray, datatype: str = "FP32", name: str = "input"):
    tensor = grpc_client.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return tensor


def test_health_and_metadata(server):
    _, _, client = server
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("block")
    assert not client.is_model_ready("nope")
    meta = client.get_model_metadata("block", as_json=True)
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "8", "-1", "-1"]}]
    assert "binary_tensor_data" in client.get_server_metadata(as_json=True)["extensions"]


def test_results_equal_the_runner_and_http(server):
    path, base, client = server
    reference = load(path, device="cpu", threads=1)
    rng = np.random.default_rng()
    for shape in [(1, 8, 4, 4), (3, 8, 16, 12), (8, 8, 32, 32)]:
        x = rng.standard_normal(shape, dtype=np.float32)
        got = client.infer("block", [_tensor(x)]).as_numpy("output")
        np.testing.assert_allclose(got, reference.infer(x)["output"], rtol=1e-5, atol=1e-6)
    metrics = http("GET", base + "/metrics")[2].decode()
    assert 'effattn_requests_total{code="200",model="block"}' in metrics  # gRPC requests count like HTTP ones


@pytest.mark.parametrize(
    "tensor,match",
    [
        (lambda: _tensor(np.zeros((1, 8, 4, 4), np.float64), "FP64"), "datatype 'FP64'; the model takes FP32"),
        (lambda: _tensor(np.zeros((1, 8, 4, 4), np.float32), name="image"), "unknown input 'image'"),
        (lambda: _tensor(np.zeros((1, 8, 64, 4), np.float32)), r"axis 2 \(height\) is 64"),
        (lambda: _tensor(np.zeros((8, 4, 4), np.float32)), "has rank 3"),
    ],
)
def test_bad_requests_are_invalid_argument_and_the_server_keeps_serving(server, tensor, match):
    _, _, client = server
    with pytest.raises(InferenceServerException, match=match) as e:
        client.infer("block", [tensor()])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.infer("nope", [_tensor(np.zeros((1, 8, 4, 4), np.float32))])
    assert client.infer("block", [_tensor(np.ones((1, 8, 4, 4), np.float32))]).as_numpy("output").shape == (1, 8, 4, 4)
