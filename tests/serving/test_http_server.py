"""effattn serve, end to end: a real server process on 127.0.0.1, driven by tritonclient.http.

Results equal the Runner's; concurrent clients are all answered correctly and batching shows in
/metrics; every bad request gets its status and message and the server stays healthy; overload
gives 503s at once; SIGTERM with requests in flight loses none of them.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from effattn.runtime import load
from tests.fixtures import ONNX_MODELS
from tests.harness import error_of, http, running_server

from .support import loop_model, loop_request, metric, wait_for

http_client = pytest.importorskip("tritonclient.http", reason="tests need tritonclient[http] (the test extra)")
from tritonclient.utils import InferenceServerException  # noqa: E402

PROFILE = ONNX_MODELS["ea8_batch8"].profile
SLOW_TRIPS = 5_000_000  # a Loop request of ~4 s on an idle core (longer under load, as everything else)


@pytest.fixture(scope="module")
def files(tmp_path_factory, onnx_models):
    folder = tmp_path_factory.mktemp("serve")
    return {
        "block": onnx_models["ea8_batch8"].path,
        "slow": onnx_models["dot16_slow"].path,
        "loop": loop_model(folder / "loop.onnx"),
    }


@pytest.fixture(scope="module")
def server(files):
    with running_server({"block": files["block"]}, "--max-queue-delay-ms", "20", "--max-request-mb", "2") as s:
        yield s


@pytest.fixture(scope="module")
def reference(files):
    return load(files["block"], device="cpu", threads=1)


def _client(base: str):
    return http_client.InferenceServerClient(base.removeprefix("http://"), network_timeout=60)


def _infer(client, x: np.ndarray, binary: bool = True, model: str = "block", **kw) -> np.ndarray:
    tensor = http_client.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    outputs = [http_client.InferRequestedOutput("output", binary_data=binary)]
    return client.infer(model, [tensor], outputs=outputs, **kw).as_numpy("output")


def _healthy(base: str) -> None:
    client = _client(base)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("block")


def test_metadata_and_health(server):
    _, base = server
    client = _client(base)
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_model_metadata("block")
    assert meta["inputs"] == [
        {
            "name": "input",
            "datatype": "FP32",
            "shape": [-1, 8, -1, -1],
            "parameters": {"min": [1, 8, 4, 4], "opt": [2, 8, 16, 16], "max": [8, 8, 32, 32]},
        }
    ]
    assert meta["outputs"][0]["name"] == "output" and meta["versions"] == ["1"]
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    assert http("GET", base + "/v2/models/nope")[0] == 404
    assert not client.is_model_ready("nope")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_results_equal_the_runner(server, reference, binary):
    _, base = server
    client = _client(base)
    rng = np.random.default_rng()
    for shape in [(1, 8, 4, 4), (3, 8, 16, 12), (8, 8, 32, 32)]:
        x = rng.standard_normal(shape, dtype=np.float32)
        np.testing.assert_allclose(_infer(client, x, binary), reference.infer(x)["output"], rtol=1e-5, atol=1e-6)


def test_concurrent_clients_are_batched_and_all_correct(server, reference):
    _, base = server
    rng = np.random.default_rng()
    shapes = [(1, 8, 16, 16), (2, 8, 16, 16), (1, 8, 8, 12)]  # two signatures: they must never be mixed
    feeds = [rng.standard_normal(shapes[i % 3], dtype=np.float32) for i in range(16 * 25)]
    expected = [reference.infer(x)["output"] for x in feeds]

    def worker(start: int) -> int:
        client, wrong = _client(base), 0
        for i in range(start, len(feeds), 16):
            got = _infer(client, feeds[i])
            wrong += got.shape != expected[i].shape or not np.allclose(got, expected[i], rtol=1e-5, atol=1e-6)
        return wrong

    with ThreadPoolExecutor(16) as pool:
        assert sum(pool.map(worker, range(16))) == 0
    metrics = http("GET", base + "/metrics")[2].decode()
    count = float(re.search(r'effattn_batch_size_count\{model="block"\} (\S+)', metrics).group(1))
    total = float(re.search(r'effattn_batch_size_sum\{model="block"\} (\S+)', metrics).group(1))
    ones = float(re.search(r'effattn_batch_size_bucket\{le="1.0",model="block"\} (\S+)', metrics).group(1))
    assert total >= sum(x.shape[0] for x in feeds)  # every item went through an engine call (earlier tests' too)
    assert count < 16 * 25 and ones < count, "no request was ever batched with another"
    assert re.search(r'effattn_requests_total\{code="200",model="block"\} (\d+)', metrics)
    assert "effattn_request_seconds_bucket" in metrics


def _post(base: str, body: bytes, headers: dict | None = None, model: str = "block"):
    return http("POST", f"{base}/v2/models/{model}/infer", body, {"Content-Type": "application/json"} | (headers or {}))


def _json_request(shape, datatype="FP32", name="input", data=None) -> bytes:
    count = int(np.prod(shape))
    return json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": list(shape),
                    "datatype": datatype,
                    "data": data if data is not None else [0.5] * count,
                }
            ]
        }
    ).encode()


@pytest.mark.parametrize(
    "body,headers,status,message",
    [
        (b"{not json", None, 400, "malformed JSON"),
        (b'{"inputs": []}', None, 400, "non-empty 'inputs' list"),
        (
            _json_request((1, 8, 4, 4), name="image"),
            None,
            400,
            r"unknown input 'image'; the model's inputs are \['input'\]",
        ),
        (_json_request((1, 8, 4, 4), datatype="FP64"), None, 400, "datatype 'FP64'; the model takes FP32"),
        (_json_request((8, 4, 4)), None, 400, "has rank 3"),
        (_json_request((1, 8, 4, 4), data=[1.0] * 5), None, 400, "'data' has 5 elements, shape"),
        (_json_request((1, 8, 64, 4)), None, 400, r"axis 2 \(height\) is 64; it must be in \[4, 32\]"),
        (_json_request((9, 8, 4, 4)), None, 400, r"axis 0 \(batch\) is 9"),
        (_json_request((1, 8, 4, 4), data=["a"] * 128), None, 400, "is not a list of FP32 numbers"),
        (
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "input",
                            "shape": [1, 8, 4, 4],
                            "datatype": "FP32",
                            "parameters": {"binary_data_size": 512},
                        }
                    ]
                }
            ).encode()
            + b"\0" * 100,
            "header",
            400,
            "truncated binary payload",
        ),
        (b'{"inputs": [{"name": "input"}]}' + b"x", {"Inference-Header-Content-Length": "999"}, 400, "body has only"),
        (b"\0" * (3 * 2**20), None, 413, "over the limit"),
    ],
)
def test_bad_requests_get_clear_answers_and_the_server_keeps_serving(server, body, headers, status, message):
    _, base = server
    if headers == "header":
        headers = {"Inference-Header-Content-Length": str(body.index(b"}]}") + 3)}
    code, _, answer = _post(base, body, headers)
    assert code == status and re.search(message, error_of(answer)), (code, answer)
    _healthy(base)


def test_unknown_model_is_404_and_triton_client_sees_the_message(server):
    _, base = server
    code, _, answer = _post(base, _json_request((1, 8, 4, 4)), model="nope")
    assert code == 404 and "unknown model 'nope'" in error_of(answer)
    metrics = http("GET", base + "/metrics")[2].decode()
    assert 'model="(unknown)"' in metrics and 'model="nope"' not in metrics  # no label per made-up name
    with pytest.raises(InferenceServerException, match=r"datatype"):
        tensor = http_client.InferInput("input", [1, 8, 4, 4], "FP16")
        tensor.set_data_from_numpy(np.zeros((1, 8, 4, 4), np.float16))
        _client(base).infer("block", [tensor])
    _healthy(base)


def test_request_timeout_is_504(files):
    with running_server({"slow": files["slow"]}, "--max-batch-size", "1") as (_, base):
        x = np.random.default_rng().standard_normal((1, 16, 64, 64), dtype=np.float32)
        with pytest.raises(InferenceServerException, match="timed out"):
            _infer(_client(base), x, model="slow", timeout=1)  # Triton's per-request timeout, microseconds
        assert _infer(_client(base), x, model="slow").shape == x.shape


def _post_loop(base: str, trips: int, x: float = 1.0):
    return http(
        "POST",
        base + "/v2/models/loop/infer",
        loop_request(trips, x),
        {"Content-Type": "application/json"},
        timeout=300,
    )


def _loop_metric(base: str, name: str) -> float:
    return metric(base, name, '{model="loop"}')


def test_overload_answers_503_at_once_not_a_hang(files):
    """One slow request runs and two fill the queue (counted on the server's metrics): the next is refused with a
    503 while they are still in the server, and they are all answered afterwards."""
    with running_server({"loop": files["loop"]}, "--max-queue", "2") as (_, base):
        answers = {}

        def one(i: int, trips: int) -> None:
            answers[i] = _post_loop(base, trips, float(i))

        slow = threading.Thread(target=one, args=(0, SLOW_TRIPS))
        slow.start()
        wait_for(lambda: _loop_metric(base, "effattn_engine_calls") == 1, "the slow request runs")
        queued = [threading.Thread(target=one, args=(i, i)) for i in (1, 2)]
        for t in queued:
            t.start()
        wait_for(lambda: _loop_metric(base, "effattn_queue_depth") == 2, "two requests wait in the queue")
        code, _, body = _post_loop(base, 1)
        assert code == 503 and "queue full (2 requests waiting)" in error_of(body)
        assert _loop_metric(base, "effattn_engine_calls") == 1, "the slow request ended before the refusal"
        for t in [slow, *queued]:
            t.join(300)
        assert [(answers[i][0], json.loads(answers[i][2])["outputs"][0]["data"]) for i in range(3)] == [
            (200, [SLOW_TRIPS]),
            (200, [2.0]),
            (200, [4.0]),
        ]
        assert http("GET", base + "/v2/models/loop/ready")[0] == 200


def test_graceful_shutdown_loses_no_accepted_request(files):
    """SIGTERM while twelve requests are in the server, one running and eleven queued (counted on its own
    metrics, not assumed after a sleep): every one is answered, then the process ends."""
    with running_server({"loop": files["loop"]}) as (process, base):
        answers = {}

        def one(i: int, trips: int) -> None:
            code, _, body = _post_loop(base, trips, float(i))
            answers[i] = (code, json.loads(body)["outputs"][0]["data"] if code == 200 else body, time.monotonic())

        threads = [threading.Thread(target=one, args=(0, SLOW_TRIPS))]
        threads[0].start()
        wait_for(lambda: _loop_metric(base, "effattn_engine_calls") == 1, "the slow request runs")
        threads += [threading.Thread(target=one, args=(i, i)) for i in range(1, 12)]
        for t in threads[1:]:
            t.start()
        wait_for(lambda: _loop_metric(base, "effattn_queue_depth") == 11, "eleven requests wait in the queue")
        process.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        for t in threads:
            t.join(timeout=300)
        assert [answers[i][:2] for i in range(12)] == [(200, [SLOW_TRIPS])] + [(200, [2.0 * i]) for i in range(1, 12)]
        assert any(answers[i][2] > stopped for i in range(1, 12)), "no request was still in the server at SIGTERM"
        # uvicorn re-raises SIGTERM once its graceful shutdown is done: the conventional "ended by SIGTERM"
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)


def test_serve_cli_names_bad_model_arguments(files, tmp_path, capsys):
    from effattn.cli import main

    assert main(["serve", str(tmp_path / "missing.onnx")]) == 2
    assert "missing.onnx does not exist" in capsys.readouterr().err
    assert main(["serve", f"a={files['block']}", f"a={files['slow']}"]) == 2
    assert "two models are named 'a'; name them: NAME=FILE" in capsys.readouterr().err


def test_served_onnx_runtime_sessions_do_not_spin(files):
    """A server's own threads need the cores between engine calls: its ONNX Runtime threads sleep when idle."""
    from effattn.serving.server import ServeOptions, Server

    runner = load(files["block"], device="cpu", threads=1)
    assert runner.spinning  # ONNX Runtime's default, for every other use of a runner
    Server({"block": runner}, ServeOptions())
    options = runner.session.get_session_options()
    assert not runner.spinning
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    runner.close()
