"""A model that never finishes (a ``Loop`` of 10**12 trips): ONNX Runtime's run is terminated once it outlives
the timeout and the model serves on; a backend that cannot stop a run (OpenVINO, a fake runner) reports
not-ready while it is stuck; and SIGTERM ends the process within the grace either way, saying what it abandoned.
Every wait is on the server's own state (its metrics, its batcher), never a sleep."""

from __future__ import annotations

import asyncio
import json
import signal
import threading

import numpy as np
import pytest

from effattn.runtime import load
from effattn.runtime.base import Runner, TensorSpec
from effattn.serving.protocol import RequestError
from effattn.serving.server import ServeOptions, Server
from tests.harness import error_of, free_port, http, running_server

from .support import FOREVER, loop_model, loop_request, metric, until, wait_for


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    return loop_model(tmp_path_factory.mktemp("stuck") / "loop.onnx")


def _post(base: str, trips: int, x: float = 1.0):
    return http(
        "POST",
        base + "/v2/models/loop/infer",
        loop_request(trips, x),
        {"Content-Type": "application/json"},
        timeout=120,
    )


def _running(base: str) -> float:
    return metric(base, "effattn_engine_calls", '{model="loop"}')


def test_onnxruntime_runs_are_terminated_from_another_thread(loop):
    runner = load(loop, backend="onnxruntime", device="cpu", threads=1)
    assert not runner.terminate(threading.get_ident())  # no run on this thread
    failed = []

    def forever():
        try:
            runner.infer({"trips": np.array([FOREVER]), "x": np.ones(1, np.float32)})
        except Exception as e:  # any error: the one ONNX Runtime gives a terminated run is what is collected
            failed.append(e)

    thread = threading.Thread(target=forever)
    thread.start()
    wait_for(lambda: runner.terminate(thread.ident), "the run started")
    thread.join(60)
    assert not thread.is_alive() and "terminate flag" in str(failed[0])
    assert runner.infer({"trips": np.array([3]), "x": np.ones(1, np.float32)})["y"][0] == 4.0  # the next run is whole
    runner.close()


def test_a_run_past_its_timeout_is_terminated_and_the_model_serves_on(loop, tmp_path):
    grpc = pytest.importorskip("tritonclient.grpc", reason="tests need tritonclient[grpc] (the test extra)")
    from tritonclient.utils import InferenceServerException

    port, log = free_port(), tmp_path / "server.log"
    with running_server(
        {"loop": loop}, "--backend", "onnxruntime", "--timeout", "2", "--grpc-port", str(port), log=log
    ) as (_, base):
        code, _, body = _post(base, FOREVER)
        assert code == 504 and "timed out after 2 s" in error_of(body)
        wait_for(lambda: _running(base) == 0, "the timed-out run was terminated")
        code, _, body = _post(base, 3, 0.5)
        assert code == 200 and json.loads(body)["outputs"][0]["data"] == [3.5]

        client = grpc.InferenceServerClient(f"127.0.0.1:{port}")

        def inputs(trips: int, x: float):
            tensors = [grpc.InferInput("trips", [1], "INT64"), grpc.InferInput("x", [1], "FP32")]
            tensors[0].set_data_from_numpy(np.array([trips], np.int64))
            tensors[1].set_data_from_numpy(np.array([x], np.float32))
            return tensors

        with pytest.raises(InferenceServerException, match="timed out after 2 s"):
            client.infer("loop", inputs(FOREVER, 1.0))
        wait_for(lambda: _running(base) == 0, "the timed-out gRPC run was terminated")
        assert client.infer("loop", inputs(4, 0.5)).as_numpy("y").tolist() == [4.5]
        assert client.is_server_ready() and client.is_model_ready("loop")
    said = log.read_text()
    assert said.count("asked it to stop") == 2 and "Traceback" not in said, said


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_sigterm_ends_a_server_whose_engine_is_stuck(loop, tmp_path, backend):
    """A run that never ends and a 30 s timeout: SIGTERM with a 1 s grace ends the process, the request gets a
    503, and what could not be stopped (OpenVINO's run) is named in the log. The old server never exited."""
    if backend == "openvino":
        pytest.importorskip("openvino", reason="OpenVINO not installed")
    log, answers = tmp_path / "server.log", []
    with running_server({"loop": loop}, "--backend", backend, "--graceful-seconds", "1", log=log) as (process, base):
        client = threading.Thread(target=lambda: answers.append(_post(base, FOREVER)))
        client.start()
        wait_for(lambda: _running(base) == 1, "the run started")
        process.send_signal(signal.SIGTERM)
        ended = process.wait(timeout=60)
        client.join(60)
    assert ended in (0, -signal.SIGTERM)
    code, _, body = answers[0]
    assert code == 503 and "the server is shutting down" in error_of(body)
    said = log.read_text()
    assert ("abandoned 1 engine call(s) of model 'loop'" in said) == (backend == "openvino"), said
    assert "Traceback" not in said


class Blocking(Runner):
    """A backend that cannot stop a run: each call waits for :attr:`release`."""

    backend = "blocking"

    def __init__(self) -> None:
        spec = TensorSpec("x", np.dtype(np.float32), (1,))
        super().__init__([spec], [TensorSpec("y", np.dtype(np.float32), (1,))])
        self.release = threading.Event()

    def _infer(self, feed):
        self.release.wait(300)
        return {"y": feed["x"] + 1}


def test_a_stuck_engine_that_cannot_be_stopped_is_not_ready_until_it_ends():
    from starlette.requests import Request

    from effattn.serving.http_server import HttpApi

    grpc = pytest.importorskip("tritonclient.grpc", reason="tests need tritonclient[grpc] (the test extra)")
    from effattn.serving.grpc_server import GrpcApi

    async def ready(server: Server) -> list[bool]:
        http_api, grpc_api = HttpApi(server), GrpcApi(server)
        pb = grpc.service_pb2
        return [
            (await http_api.ready(None)).status_code == 200,
            (await http_api.model_ready(Request({"type": "http", "path_params": {"name": "m"}}))).status_code == 200,
            (await grpc_api.ServerReady(pb.ServerReadyRequest(), None)).ready,
            (await grpc_api.ModelReady(pb.ModelReadyRequest(name="m"), None)).ready,
            server.index() == [{"name": "m", "version": "1", "state": "READY"}],
        ]

    async def main():
        runner = Blocking()
        server = Server({"m": runner}, ServeOptions(timeout_s=0.2))
        server.start()
        model = server.model("m")
        assert await ready(server) == [True] * 5
        with pytest.raises(RequestError) as refused:
            await server.infer(model, {"x": np.ones(1, np.float32)})
        assert refused.value.status == 504
        await until(lambda: model.batcher.stuck == 1, "the call is stuck")
        assert await ready(server) == [False] * 5
        runner.release.set()
        await until(lambda: model.batcher.running == 0, "the call ended")
        assert await ready(server) == [True] * 5
        assert (await server.infer(model, {"x": np.ones(1, np.float32)}))["y"].tolist() == [2.0]
        await server.stop(10)

    asyncio.run(main())


def test_stop_is_bounded_refuses_what_waits_and_names_what_it_abandons(caplog):
    async def main():
        runner = Blocking()
        server = Server({"m": runner}, ServeOptions(timeout_s=600))
        server.start()
        model, feed = server.model("m"), {"x": np.ones(1, np.float32)}
        running = asyncio.ensure_future(server.infer(model, feed))
        await until(lambda: model.batcher.running == 1, "the first call runs")
        queued = asyncio.ensure_future(server.infer(model, feed))
        await until(lambda: model.batcher.depth == 1, "the second request is queued")
        await asyncio.wait_for(server.stop(0.1), 60)
        for request in (running, queued):
            with pytest.raises(RequestError, match="the server is shutting down") as refused:
                await request
            assert refused.value.status == 503
        assert server.abandoned == 1 and not server.ready()
        runner.release.set()

    asyncio.run(main())
    assert "abandoned 1 engine call(s) of model 'm' still running after 0.1 s (blocking" in caplog.text
