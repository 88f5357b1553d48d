"""effattn serve under hostile input: every malformed request is a 4xx with its reason (HTTP and gRPC),
multi-input requests are never stacked wrongly, ports are never shared, and resources stay bounded.

No assertion here depends on timing: where the server must have reached a state (bytes held, a
connection closed), the test waits for that state to show (in /metrics, or on the socket) first.
"""

from __future__ import annotations

import gzip
import json
import re
import socket
import subprocess
import sys
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from torch import nn

from effattn.export import export_onnx
from effattn.shapes import InputProfile, ShapeProfile
from tests.fixtures import ONNX_MODELS
from tests.harness import error_of, free_port, http, running_server

http_client = pytest.importorskip("tritonclient.http", reason="tests need tritonclient[http] (the test extra)")
grpc_client = pytest.importorskip("tritonclient.grpc", reason="tests need tritonclient[grpc] (the test extra)")
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402

from .support import metric as _metric  # noqa: E402
from .support import wait_for as _wait_for  # noqa: E402

PROFILE = ONNX_MODELS["ea8_small"].profile
PAIR = ShapeProfile((InputProfile("a", (1, 4), (2, 4), (8, 4)), InputProfile("b", (1, 4), (2, 4), (8, 4))))


class Pair(nn.Module):
    """Two inputs, two outputs, independent along axis 0: a model that would accept mismatched batches."""

    def forward(self, a, b):
        return a * 2, b * 3


@pytest.fixture(scope="module")
def files(tmp_path_factory, onnx_models):
    folder = tmp_path_factory.mktemp("hostile")
    block = onnx_models["ea8_small"].path
    pair = export_onnx(Pair(), PAIR, folder / "pair.onnx", output_names=["a2", "b3"]).path
    return {"block": block, "pair": pair, "folder": folder}


@pytest.fixture(scope="module")
def server(files):
    grpc_port, log = free_port(), files["folder"] / "server.log"
    with running_server(
        {"block": files["block"], "pair": files["pair"]},
        "--max-queue-delay-ms",
        "20",
        "--max-request-mb",
        "2",
        "--max-inflight-mb",
        "3",
        "--keep-alive-s",
        "1",
        "--grpc-port",
        str(grpc_port),
        log=log,
    ) as (_, base):
        yield base, grpc_port, log
    assert "Traceback" not in log.read_text()


def _post(base, body: bytes, headers: dict | None = None, model: str = "block"):
    return http("POST", f"{base}/v2/models/{model}/infer", body, {"Content-Type": "application/json"} | (headers or {}))


def _input(**overrides) -> dict:
    return {"name": "input", "shape": [1, 8, 4, 4], "datatype": "FP32", "data": [0.5] * 128} | overrides


def _body(*inputs, **request) -> bytes:
    return json.dumps({"inputs": list(inputs) or [_input()]} | request).encode()


@pytest.mark.parametrize(
    "body,match",
    [
        (_body(parameters=5), "'parameters' of the request must be an object"),
        (_body(_input(parameters=[1])), "'parameters' of input 'input' must be an object"),
        (_body(_input(name=["input"])), r"unknown input \"\['input'\]\""),
        (_body(_input(name={"a": 1})), "unknown input"),
        (_body(_input(shape=[True, 8, 4, 4])), "'shape' must be a list of non-negative integers"),
        (_body(_input(shape=[1.0, 8, 4, 4])), "'shape' must be a list of non-negative integers"),
        (_body(_input(shape="1x8x4x4")), "'shape' must be a list of non-negative integers"),
        (_body(_input(shape=[2**40, 2**40, 4, 4], data=[])), "more than a request may hold"),
        (_body(_input(shape=[2**64, 2**64, 2**64, 2**64], data=[])), "more than a request may hold"),
        (_body(_input(datatype=5)), "has datatype '5'"),
        (
            _body(_input(data=None, parameters={"binary_data_size": "512"})),
            "binary_data_size must be an integer number of bytes, got '512'",
        ),
        (_body(_input(data=None, parameters={"binary_data_size": 512.0})), "binary_data_size must be an integer"),
        (_body(_input(parameters={"binary_data_size": 512})), "has both 'data' and a binary_data_size parameter"),
        (
            _body(outputs=[{"name": "output", "parameters": {"classification": 2}}]),
            "the classification extension is not supported",
        ),
        (
            _body(outputs=[{"name": "output", "parameters": {"shared_memory_region": "r"}}]),
            "shared memory is not supported",
        ),
        (_body(_input(data=[[1.0, 2.0], [3.0]])), "not a list of FP32 numbers"),
        (_body(_input(data=[True] * 128)), r"not a list of FP32 numbers \(it holds bool values\)"),
        (_body(_input(data=[2**70] * 128)), r"not a list of FP32 numbers \(it holds object values\)"),
        (_body(_input(data=[{"x": 1}] * 128)), "not a list of FP32 numbers"),
        (_body(id=5), "'id' must be a string"),
        (_body(outputs=[5]), r"outputs\[0\] must be an object"),
        (_body(outputs=[{"name": ["output"]}]), "unknown output"),
        (
            _body(outputs=[{"name": "output", "parameters": {"binary_data": "yes"}}]),
            "binary_data must be true or false",
        ),
        (_body(outputs={"name": "output"}), "'outputs' must be a list"),
        (_body(parameters={"timeout": "soon"}), "'timeout' parameter must be a number"),
        (
            b'{"inputs": [{"name": "input", "shape": [1, 8, 4, 4], "datatype": "FP32", "data": '
            + b"[" * 50_000
            + b"]" * 50_000
            + b"}]}",
            "nested too deeply",
        ),
        (b"[" * 100_000, "nested too deeply"),
        (_body(_input(shape=[10**30, 0], data=[])), r"shape \[1000000000000000000000000000000, 0\] of FP32 spans"),
        (_body(_input(shape=[2**62, 2**62, 0], data=[])), "more than a request may hold"),
        (_body(_input(data=[1] * 127 + [float("nan")])).replace(b"NaN", b"1" * 5000), "Exceeds the limit"),
        (_body(outputs=[{"name": "output"}] * 10000), "output 'output' is requested twice"),
        (_body(_input(shape=[1] * 10000, data=[1.0])), "'shape' has 10000 dimensions; an array has at most 64"),
    ],
)
def test_wrong_json_types_anywhere_are_400(server, body, match):
    base, _, _ = server
    code, _, answer = _post(base, body)
    assert code == 400 and re.search(match, error_of(answer)), (code, answer[:300])
    assert _metric(base, "effattn_requests_total", '{code="500",model="block"}') == 0


@pytest.mark.parametrize("length", ["\u00b2", "1" * 5000, "-5"])
def test_the_json_length_header_is_ascii_digits(server, length):
    """'²'.isdigit() is true, and int() of 5000 digits raises: both were 500s."""
    base, _, _ = server
    code, _, answer = _post(base, _body(), {"Inference-Header-Content-Length": length})
    assert code == 400 and "Inference-Header-Content-Length must be a number of bytes" in error_of(answer), answer
    assert _metric(base, "effattn_requests_total", '{code="500",model="block"}') == 0


@pytest.mark.parametrize(
    "body",
    [gzip.compress(_body()) + gzip.compress(_body()), gzip.compress(_body()) + b"junk"],
    ids=["two-members", "trailing-garbage"],
)
def test_a_gzip_body_is_one_stream(server, body):
    base, _, _ = server
    code, _, answer = _post(base, body, {"Content-Encoding": "gzip"})
    assert code == 400 and "bytes after its compressed stream" in error_of(answer), answer


def test_a_request_head_is_capped_at_64_kib(server):
    base, _, _ = server
    with _raw(base) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (100 * 1024) + b"\r\n\r\n")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ") and "request head" in json.loads(body)["error"], answer[:300]
    with _raw(base) as s:  # a big head under the cap is still served
        s.sendall(
            b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: " + b"a" * 60_000 + b"\r\n\r\n"
        )
        assert s.recv(65536).startswith(b"HTTP/1.1 200 ")


def _pair_body(a_rows: int, b_rows: int, start: float = 0.0) -> tuple[bytes, np.ndarray, np.ndarray]:
    a = np.arange(a_rows * 4, dtype=np.float32).reshape(a_rows, 4) + start
    b = -np.arange(b_rows * 4, dtype=np.float32).reshape(b_rows, 4) - start
    body = json.dumps(
        {
            "inputs": [
                {"name": "a", "shape": list(a.shape), "datatype": "FP32", "data": a.ravel().tolist()},
                {"name": "b", "shape": list(b.shape), "datatype": "FP32", "data": b.ravel().tolist()},
            ]
        }
    )
    return body.encode(), a, b


def test_inputs_with_their_own_batch_dimensions_run_alone_and_are_answered_whole(server):
    """The exporter names the pair's first axes a_batch and b_batch: nothing in the graph says they are one
    batch, so the server never stacks its requests, and a request whose inputs differ in size is answered
    whole (ONNX Runtime's answer), never cut to the first input's size."""
    base, grpc_port, _ = server
    body, a, b = _pair_body(1, 2)
    code, _, answer = _post(base, body, model="pair")
    assert code == 200, answer
    out = {o["name"]: np.array(o["data"], np.float32).reshape(o["shape"]) for o in json.loads(answer)["outputs"]}
    np.testing.assert_array_equal(out["a2"], a * 2)
    np.testing.assert_array_equal(out["b3"], b * 3)
    grpc = grpc_client.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    tensors = []
    for name, rows in (("a", 2), ("b", 3)):
        tensors.append(grpc_client.InferInput(name, [rows, 4], "FP32"))
        tensors[-1].set_data_from_numpy(np.ones((rows, 4), np.float32))
    result = grpc.infer("pair", tensors)
    assert result.as_numpy("a2").shape == (2, 4) and result.as_numpy("b3").shape == (3, 4)

    def one(i):  # well-formed requests of 1, 2 and 3 rows, sent together: each still runs alone
        body, a, b = _pair_body(1 + i % 3, 1 + i % 3, start=100.0 * i)
        code, _, answer = _post(base, body, model="pair")
        out = {o["name"]: np.array(o["data"], np.float32).reshape(o["shape"]) for o in json.loads(answer)["outputs"]}
        return code, out, a, b

    with ThreadPoolExecutor(12) as pool:
        for code, out, a, b in pool.map(one, range(24)):
            assert code == 200
            np.testing.assert_array_equal(out["a2"], a * 2)
            np.testing.assert_array_equal(out["b3"], b * 3)
    calls = _metric(base, "effattn_batch_size_count", '{model="pair"}')
    assert calls >= 26 and _metric(base, "effattn_batch_size_sum", '{model="pair"}') == calls  # one request a call


def _grpc_request(*inputs, raw=None, model="block", outputs=()):
    request = service_pb2.ModelInferRequest(model_name=model)
    for name in outputs:
        request.outputs.add(name=name)
    for name, shape in inputs:
        request.inputs.add(name=name, datatype="FP32", shape=shape)
    request.raw_input_contents.extend(raw if raw is not None else [b"\0" * 512] * len(inputs))
    return request


def _grpc_with(request, change):
    change(request)
    return request


@pytest.mark.parametrize(
    "request_,match",
    [
        (_grpc_request(("input", [1, 8, 4, 4]), ("input", [1, 8, 4, 4])), "input 'input' is given twice"),
        (
            _grpc_with(
                _grpc_request(("input", [1, 8, 4, 4])), lambda r: r.inputs[0].contents.fp32_contents.extend([1.0] * 128)
            ),
            "input 'input' has fp32_contents and raw_input_contents; send its values once",
        ),
        (
            _grpc_with(
                _grpc_request(("input", [1, 8, 4, 4]), raw=[]),
                lambda r: (
                    r.inputs[0].contents.fp32_contents.extend([1.0] * 128),
                    r.inputs[0].contents.int_contents.extend([1] * 128),
                ),
            ),
            "has int_contents and fp32_contents|has fp32_contents and int_contents",
        ),
        (
            _grpc_with(
                _grpc_request(("input", [1, 8, 4, 4]), outputs=["output"]),  # tritonclient's class_count=2
                lambda r: r.outputs[0].parameters["classification"].CopyFrom(service_pb2.InferParameter(int64_param=2)),
            ),
            "output 'output': the classification extension is not supported",
        ),
        (_grpc_request(("input", [2**62, 2**62, 4, 4])), "more than a request may hold"),
        (_grpc_request(("input", [2**32, 2**32, 1, 1])), "more than a request may hold"),  # np.prod wraps to 0
        (_grpc_request(("input", [-1, 8, 4, 4])), "non-negative integers"),
        (_grpc_request(("input", [1, 8, 4, 4]), raw=[]), "0 values for shape"),
        (_grpc_request(("input", [1, 8, 4, 4]), outputs=["output"] * 10000), "output 'output' is requested twice"),
        (_grpc_request(("input", [1, 8, 4, 4]), model="m" * 100_000), r"^model name 'm+\.\.\.m+' is not allowed"),
    ],
)
def test_grpc_malformed_requests_are_invalid_argument(server, request_, match):
    import grpc

    base, grpc_port, _ = server
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel, pytest.raises(grpc.RpcError) as e:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request_, timeout=60)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and re.search(match, e.value.details())
    assert len(e.value.details()) < 1000  # nothing of the request is echoed whole
    assert _metric(base, "effattn_requests_total", '{code="500",model="block"}') == 0


def _raw(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=60)


def _head(length: int) -> bytes:
    return (
        f"POST /v2/models/block/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def test_a_client_hanging_up_is_not_a_server_error(server):
    base, _, log = server
    before = _metric(base, "effattn_requests_total", '{code="499",model="block"}')
    with _raw(base) as s:
        s.sendall(_head(100_000) + b'{"inputs": [')
        _wait_for(lambda: _metric(base, "effattn_inflight_bytes") >= 100_000, "the request's bytes are held")
    _wait_for(
        lambda: _metric(base, "effattn_requests_total", '{code="499",model="block"}') == before + 1,
        "the hang-up is counted as 499",
    )
    assert _metric(base, "effattn_requests_total", '{code="500",model="block"}') == 0
    assert _metric(base, "effattn_inflight_bytes") == 0
    assert "Traceback" not in log.read_text()


def test_bytes_in_flight_are_bounded(server):
    base, _, _ = server
    with _raw(base) as s:  # holds 1.9 MB of the 3 MB budget while it sends its body slowly
        s.sendall(_head(1_900_000) + b"{")
        _wait_for(lambda: _metric(base, "effattn_inflight_bytes") >= 1_900_000, "1.9 MB held")
        code, _, answer = _post(base, b" " * 1_500_000)
        assert code == 503 and "server busy" in error_of(answer) and "--max-inflight-mb" in error_of(answer)
    _wait_for(lambda: _metric(base, "effattn_inflight_bytes") == 0, "the held bytes are given back")
    code, _, answer = _post(base, b" " * 1_500_000)
    assert code == 400 and "malformed JSON" in error_of(answer)


@pytest.mark.parametrize(
    "first_bytes", [b"", b"POST /v2/models/block/infer HTTP/1.1\r\nHost: x\r\n"], ids=["idle", "half-sent-head"]
)
def test_idle_and_half_sent_connections_are_closed(server, first_bytes):
    base, _, _ = server
    with _raw(base) as s:
        s.sendall(first_bytes)
        assert s.recv(1024) == b""  # closed by the server (--keep-alive-s 1); the socket's own limit is 60 s
    assert http("GET", base + "/v2/health/ready")[0] == 200


def test_gzip_and_deflate_requests_are_bounded(server):
    base, _, _ = server
    client = http_client.InferenceServerClient(base.removeprefix("http://"), network_timeout=60)
    x = np.random.default_rng().standard_normal((2, 8, 4, 4), dtype=np.float32)
    expected = None
    for algorithm in ("gzip", "deflate", None):
        tensor = http_client.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        got = client.infer("block", [tensor], request_compression_algorithm=algorithm).as_numpy("output")
        expected = got if expected is None else expected
        np.testing.assert_array_equal(got, expected)
    bomb = gzip.compress(b" " * (3 * 2**20))  # 3 MB of spaces in a few KB: over the 2 MB request limit
    code, _, answer = _post(base, bomb, {"Content-Encoding": "gzip"})
    assert code == 413 and "inflates to over 2097152 bytes" in error_of(answer)
    assert _post(base, zlib.compress(_body())[:-5], {"Content-Encoding": "deflate"})[0] == 400
    assert _post(base, b"\x1f\x8bjunk", {"Content-Encoding": "gzip"})[0] == 400
    code, _, answer = _post(base, _body(), {"Content-Encoding": "br"})
    assert code == 415 and "use gzip, deflate or none" in error_of(answer)


def test_non_finite_outputs_are_written_as_nan_and_infinity_tokens(server):
    base, _, _ = server
    x = np.zeros((1, 8, 4, 4), np.float32)
    x[0, 0, 0, 0] = np.nan
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 8, 4, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ]
        }
    ).encode()
    code, _, answer = _post(base, body + x.tobytes(), {"Inference-Header-Content-Length": str(len(body))})
    assert code == 200 and b"NaN" in answer  # Python's json and tritonclient read it; strict JSON has no NaN
    assert np.isnan(json.loads(answer)["outputs"][0]["data"]).any()


def test_ports_in_use_are_refused_not_shared(server, files):
    base, grpc_port, _ = server
    http_port = base.rsplit(":", 1)[1]
    for args, what in (
        (["--port", http_port], "HTTP port"),
        (["--port", str(free_port()), "--grpc-port", str(grpc_port)], "gRPC port"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "effattn", "serve", f"block={files['block']}", "-q", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, done.stderr[-2000:]
        line = done.stderr.strip()
        assert "\n" not in line and f"cannot listen on {what} 127.0.0.1:" in line and "in use" in line, line


def test_the_connection_limit_keeps_the_server_answering(files):
    with running_server({"block": files["block"]}, "--max-connections", "3", "--keep-alive-s", "600") as (_, base):
        held = [_raw(base) for _ in range(3)]
        for s in held:
            s.sendall(b"GET /v2/health/live HTTP/1.1\r\n")  # half-sent heads: they hold their connections
        code, _, _ = http("GET", base + "/v2/health/live")
        assert code == 503
        for s in held:
            s.close()
        _wait_for(lambda: http("GET", base + "/v2/health/live")[0] == 200, "connections are free again")


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--max-batch-size", "0"], "argument --max-batch-size: expected an integer from 1 to 65536, got '0'"),
        (["--max-queue", "-1"], "argument --max-queue: expected an integer from 1 to"),
        (["--timeout", "0"], "argument --timeout: expected a number from 0.001 to"),
        (["--port", "70000"], "argument --port: expected an integer from 1 to 65535, got '70000'"),
        (["--port", "0"], "argument --port: expected an integer from 1 to 65535, got '0'"),
        (["--grpc-port", "99999"], "argument --grpc-port: expected an integer from 1 to 65535, got '99999'"),
        (["--max-inflight-mb", "1"], "must be at least max_request_bytes"),
        (["--max-request-mb", "nan"], "argument --max-request-mb: expected a number from 0.001 to"),
        (["--timeout", "inf"], "argument --timeout: expected a number from 0.001 to"),
        (["--keep-alive-s", "0"], "argument --keep-alive-s: expected a number from 0.001 to"),
        (["--port", "18001", "--host", "no such host"], "cannot listen on no such host:18001"),
    ],
)
def test_bad_serve_options_are_one_line(files, capsys, argv, match):
    from effattn.cli import main

    try:
        code = main(["serve", str(files["block"]), *argv])
    except SystemExit as e:  # out of the parser's range: argparse's usage lines, then the one error line
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and match in err.splitlines()[-1], err
    assert "Traceback" not in err and (err.startswith("usage:") or "\n" not in err), err


@pytest.mark.parametrize(
    "spec,match",
    [
        ("../x={block}", "model name '../x' is not allowed"),
        ("a/b={block}", "model name 'a/b' is not allowed"),
        ("={block}", "model name '' is not allowed"),
        ("a b={block}", "model name 'a b' is not allowed"),
        ("{eq}", "cannot name a model after the file 'a=b.onnx'; give a name"),
    ],
)
def test_serve_names_are_url_safe_and_files_may_hold_equals(files, tmp_path, capsys, spec, match):
    from effattn.cli import main
    from effattn.names import parse_model_spec as _model_spec

    eq = tmp_path / "a=b.onnx"
    eq.write_bytes(files["block"].read_bytes())
    assert main(["serve", spec.format(block=files["block"], eq=eq)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and match in err, err
    assert _model_spec(f"seg={eq}") == ("seg", eq)  # a file name holding '=' is kept whole after NAME=


def test_big_bodies_are_parsed_off_the_event_loop(files, monkeypatch):
    """The server runs in this process so the test can see which thread parsed each body."""
    import uvicorn

    from effattn.runtime import load
    from effattn.serving import grpc_server as serve_grpc
    from effattn.serving import http_server as serve_module
    from effattn.serving import http_wire

    seen, seen_grpc = [], []
    parse, decode_grpc = http_wire.parse_infer_request, serve_grpc.decode_grpc_inputs
    monkeypatch.setattr(
        http_wire, "parse_infer_request", lambda *a: seen.append(threading.current_thread()) or parse(*a)
    )
    monkeypatch.setattr(
        serve_grpc, "decode_grpc_inputs", lambda *a: seen_grpc.append(threading.current_thread()) or decode_grpc(*a)
    )
    grpc_port = free_port()
    app = serve_module.create_app(
        {"block": load(files["block"], device="cpu", threads=1)}, serve_module.ServeOptions(grpc_port=grpc_port)
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    loop_thread = threading.Thread(target=server.run)
    loop_thread.start()
    try:
        _wait_for(lambda: server.started, "the in-process server started")
        base = f"http://127.0.0.1:{port}"
        small, big = _body(), _body(_input(data=[0.5] * 128, pad=" " * 200_000))
        assert _post(base, small)[0] == 200 and _post(base, big)[0] == 200
        assert seen[0] is loop_thread and seen[1] is not loop_thread
        client = grpc_client.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        for shape in ((1, 8, 4, 4), (8, 8, 16, 16)):  # 512 bytes, then 64 KiB and its framing
            tensor = grpc_client.InferInput("input", list(shape), "FP32")
            tensor.set_data_from_numpy(np.zeros(shape, np.float32))
            assert client.infer("block", [tensor]).as_numpy("output").shape == shape
        assert seen_grpc[0] is loop_thread and seen_grpc[1] is not loop_thread
    finally:
        server.should_exit = True
        loop_thread.join(60)


def test_the_listening_socket_is_tcp_so_connections_get_nodelay():
    """asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP; a bare socket(AF_INET,
    SOCK_STREAM) has proto 0, and Nagle's algorithm then held every answer ~40 ms (delayed ACKs)."""
    from effattn.serving.http_server import listen

    with listen("127.0.0.1", free_port()) as sock:
        assert sock.proto == socket.IPPROTO_TCP


def test_the_server_may_hold_as_many_sockets_as_the_system_allows():
    """serve() raises the soft open-file limit to the hard one (checked in a child whose soft limit is 256)."""
    script = (
        "import resource; soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE); "
        "resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard)); "
        "from effattn.serving.http_server import _raise_file_limit; _raise_file_limit(); "
        "print(resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "True", done.stderr[-2000:]
