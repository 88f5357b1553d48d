"""effattn serve's Triton endpoints beyond inference: model config, statistics, repository index, errors.

Driven by tritonclient.http and tritonclient.grpc against one server process; the "counted" model gets
only the requests of the statistics test, so its counts are exact (requests sent one after another
never share a batch)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from effattn.serving.repository import TritonOptions, write_repository
from tests.fixtures import ONNX_MODELS
from tests.harness import error_of, free_port, http, running_server

http_client = pytest.importorskip("tritonclient.http", reason="tests need tritonclient[http] (the test extra)")
grpc_client = pytest.importorskip("tritonclient.grpc", reason="tests need tritonclient[grpc] (the test extra)")
from google.protobuf import json_format, text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

PROFILE = ONNX_MODELS["ea8_batch8"].profile


@pytest.fixture(scope="module")
def onnx_file(onnx_models):
    return onnx_models["ea8_batch8"].path


@pytest.fixture(scope="module")
def server(onnx_file):
    port = free_port()
    with running_server({"block": onnx_file, "counted": onnx_file}, "--grpc-port", str(port)) as (_, base):
        yield (
            base,
            http_client.InferenceServerClient(base.removeprefix("http://")),
            grpc_client.InferenceServerClient(f"127.0.0.1:{port}"),
        )


def _http_infer(client, x: np.ndarray, model: str = "counted"):
    tensor = http_client.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(model, [tensor])


def _grpc_infer(client, x: np.ndarray, model: str = "counted"):
    tensor = grpc_client.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(model, [tensor])


def test_model_config_is_the_config_effattn_triton_writes(server, onnx_file, tmp_path):
    _, http_c, grpc_c = server
    options = TritonOptions(max_batch_size=8, max_queue_delay_us=2000, kind="KIND_CPU", warmup=False)
    written = text_format.Parse(
        (write_repository(onnx_file, tmp_path, "block", options) / "config.pbtxt").read_text(),
        model_config_pb2.ModelConfig(),
    )
    over_http = json_format.ParseDict(http_c.get_model_config("block"), model_config_pb2.ModelConfig())
    assert over_http == written and written.max_batch_size == 8 and list(written.input[0].dims) == [8, -1, -1]
    assert grpc_c.get_model_config("block").config == written
    assert http_c.get_model_config("block", "1") == http_c.get_model_config("block")


def test_statistics_count_every_request_batch_and_failure_exactly(server):
    base, http_c, grpc_c = server
    rng = np.random.default_rng(0)
    _http_infer(http_c, rng.standard_normal((1, 8, 4, 4), dtype=np.float32))
    _http_infer(http_c, rng.standard_normal((2, 8, 8, 8), dtype=np.float32))
    _grpc_infer(grpc_c, rng.standard_normal((2, 8, 4, 4), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="axis 2"):
        _http_infer(http_c, np.zeros((1, 8, 64, 4), np.float32))  # refused (400) before the model: counted nowhere
    stats = http_c.get_inference_statistics("counted")["model_stats"]
    assert [(s["name"], s["version"]) for s in stats] == [("counted", "1")]
    s = stats[0]
    assert (s["inference_count"], s["execution_count"]) == (5, 3) and s["last_inference"] > 0
    counts = {k: v["count"] for k, v in s["inference_stats"].items()}
    assert counts == {
        "success": 1 + 1 + 1,
        "fail": 0,
        "queue": 3,
        "compute_input": 3,
        "compute_infer": 3,
        "compute_output": 3,
        "cache_hit": 0,
        "cache_miss": 0,
    }
    assert s["inference_stats"]["success"]["ns"] >= s["inference_stats"]["compute_infer"]["ns"] > 0
    assert [(b["batch_size"], b["compute_infer"]["count"]) for b in s["batch_stats"]] == [(1, 1), (2, 2)]
    over_grpc = grpc_c.get_inference_statistics("counted", as_json=True)["model_stats"][0]
    assert (over_grpc["inference_count"], over_grpc["execution_count"]) == ("5", "3")  # uint64 as JSON strings
    assert over_grpc["inference_stats"]["success"]["count"] == "3"
    everyone = http_c.get_inference_statistics()["model_stats"]
    assert [m["name"] for m in everyone] == ["block", "counted"]
    assert http("GET", base + "/v2/models/counted/versions/1/stats")[0] == 200


def test_repository_index_lists_every_model_as_ready(server):
    base, http_c, grpc_c = server
    expected = [
        {"name": "block", "version": "1", "state": "READY"},
        {"name": "counted", "version": "1", "state": "READY"},
    ]
    assert http_c.get_model_repository_index() == expected
    assert grpc_c.get_model_repository_index(as_json=True)["models"] == expected
    assert json.loads(http("POST", base + "/v2/repository/index", b'{"ready": true}')[2]) == expected
    for query, message in (
        (b"[1", "malformed JSON in the repository index request"),
        (b"[1]", "must be empty or a JSON object"),
        (b"[" * 30000 + b"]" * 30000, "nested too deeply"),  # was a RecursionError: plain-text 500
        (b"1" * 5000, "Exceeds the limit (4300 digits)"),
    ):  # was a ValueError: plain-text 500
        code, _, body = http("POST", base + "/v2/repository/index", query)
        assert code == 400 and message in error_of(body), (code, body[:200])
    code, _, body = http("POST", base + "/v2/repository/index", b" " * 70000)
    assert code == 413 and "at most 65536 bytes" in error_of(body)


@pytest.mark.parametrize(
    "method,path,status,message",
    [
        ("GET", "/v2/models/nope/config", 404, "unknown model 'nope'"),
        ("GET", "/v2/models/block/versions/2/config", 404, "unknown model 'block' version 2"),
        ("GET", "/v2/models/nope/stats", 400, "requested model 'nope' is not available"),  # Triton's status
        ("GET", "/nowhere", 404, "Not Found"),
        ("GET", "/v2/models/block/infer", 405, "Method Not Allowed"),
        ("GET", "/v2/repository/index", 405, "Method Not Allowed"),
        ("DELETE", "/v2/models/block", 405, "Method Not Allowed"),
        ("POST", "/v2/repository/models/block/load", 503, "explicit model load / unload is not supported"),
        ("POST", "/v2/repository/models/block/unload", 503, "explicit model load / unload is not supported"),
        ("POST", "/v2/systemsharedmemory/region/r/register", 400, "shared memory is not supported"),
        ("POST", "/v2/cudasharedmemory/region/r/register", 400, "shared memory is not supported"),
        ("GET", "/v2/trace/setting", 400, "trace is not supported"),
        ("POST", "/v2/models/block/trace/setting", 400, "trace is not supported"),
        ("GET", "/v2/logging", 400, "logging settings are not supported"),
    ],
)
def test_every_http_error_is_a_json_error(server, method, path, status, message):
    base = server[0]
    code, headers, body = http(method, base + path, b"{}" if method == "POST" else None)
    assert code == status and message in error_of(body) and headers["content-type"] == "application/json"


def test_shared_memory_status_is_empty_and_unregister_is_a_no_op(server):
    base, http_c, grpc_c = server
    assert http_c.get_system_shared_memory_status() == [] and http_c.get_cuda_shared_memory_status() == []
    assert http("POST", base + "/v2/systemsharedmemory/unregister", b"")[0] == 200
    assert grpc_c.get_system_shared_memory_status(as_json=True) == {}
    extensions = http_c.get_server_metadata()["extensions"]
    assert {"model_configuration", "statistics", "model_repository"} <= set(extensions)
    assert not {"trace", "logging", "system_shared_memory"} & set(extensions)


@pytest.mark.parametrize(
    "call,status,message",
    [
        (lambda c: c.get_model_config("nope"), "StatusCode.NOT_FOUND", "unknown model 'nope'"),
        (lambda c: c.get_inference_statistics("nope"), "StatusCode.INVALID_ARGUMENT", "requested model 'nope'"),
        (lambda c: c.load_model("block"), "StatusCode.UNAVAILABLE", "explicit model load / unload"),
        (lambda c: c.unload_model("block"), "StatusCode.UNAVAILABLE", "explicit model load / unload"),
        (lambda c: c.register_system_shared_memory("r", "/r", 16), "StatusCode.INVALID_ARGUMENT", "shared memory"),
        (lambda c: c.get_trace_settings(), "StatusCode.INVALID_ARGUMENT", "trace is not supported"),
        (lambda c: c.get_log_settings(), "StatusCode.INVALID_ARGUMENT", "logging settings"),
    ],
)
def test_grpc_errors_have_tritons_codes(server, call, status, message):
    with pytest.raises(InferenceServerException, match=message) as e:
        call(server[2])
    assert e.value.status() == status


def test_a_request_that_times_out_counts_as_a_failure(server):
    """A 504 is the server's side (the model was too slow): Triton's fail counter, not success."""
    _, http_c, _ = server
    before = http_c.get_inference_statistics("block")["model_stats"][0]["inference_stats"]["fail"]["count"]
    with pytest.raises(InferenceServerException, match="timed out"):
        tensor = http_client.InferInput("input", [8, 8, 32, 32], "FP32")
        tensor.set_data_from_numpy(np.ones((8, 8, 32, 32), np.float32))
        http_c.infer("block", [tensor], timeout=1)  # one microsecond: gone before any engine call ends
    after = http_c.get_inference_statistics("block")["model_stats"][0]["inference_stats"]["fail"]["count"]
    assert after == before + 1
