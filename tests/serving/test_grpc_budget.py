"""gRPC requests count against the same byte budget as HTTP (``--max-inflight-mb``), from their serialized size,
before they are parsed: with the budget held by a running call, concurrent big calls are refused with
RESOURCE_EXHAUSTED, counted by the server, and the bytes are given back. Waits are on the server's metrics."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from effattn.serving.server import ServeOptions, TrimmingBudget
from tests.harness import free_port, running_server

from .support import FOREVER, loop_model, metric, until, wait_for

grpc = pytest.importorskip("grpc", reason="tests need tritonclient[grpc] (the test extra)")
pb = pytest.importorskip("tritonclient.grpc.service_pb2", reason="tests need tritonclient[grpc] (the test extra)")

PADDING = 1_900_000  # bytes of request id: a 1.9 MB call of a model whose tensors are 12 bytes


def _request(trips: int, shape: int = 1, padding: int = PADDING) -> bytes:
    tensor = pb.ModelInferRequest.InferInputTensor
    return pb.ModelInferRequest(
        model_name="loop",
        id="x" * padding,
        inputs=[tensor(name="trips", datatype="INT64", shape=[shape]), tensor(name="x", datatype="FP32", shape=[1])],
        raw_input_contents=[np.full(shape, trips, np.int64).tobytes(), np.ones(1, np.float32).tobytes()],
    ).SerializeToString()


def test_concurrent_big_grpc_calls_are_refused_by_the_byte_budget_before_they_are_parsed(tmp_path):
    port = free_port()
    with running_server(
        {"loop": loop_model(tmp_path / "loop.onnx")},
        "--grpc-port",
        str(port),
        "--timeout",
        "60",
        "--graceful-seconds",
        "1",
        "--max-request-mb",
        "2",
        "--max-inflight-mb",
        "3",
    ) as (_, base):
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 2**25)])
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes in, bytes out
        holding = infer.future(_request(FOREVER), timeout=120)  # holds 1.9 MB of the 3 MB until cancelled
        wait_for(lambda: metric(base, "effattn_inflight_bytes") >= PADDING, "the first call's bytes are held")
        refused = {"before": metric(base, "effattn_requests_total", '{code="503",model="(unknown)"}')}
        codes = []

        def big_bad_call() -> None:  # a shape that does not match its contents: never parsed, never decoded
            try:
                infer(_request(1, shape=7), timeout=120)
            except grpc.RpcError as e:
                codes.append((e.code(), e.details()))

        callers = [threading.Thread(target=big_bad_call) for _ in range(12)]
        for t in callers:
            t.start()
        for t in callers:
            t.join(120)
        assert [code for code, _ in codes] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 12, codes
        assert "--max-inflight-mb" in codes[0][1]
        assert metric(base, "effattn_requests_total", '{code="503",model="(unknown)"}') == refused["before"] + 12
        holding.cancel()
        wait_for(lambda: metric(base, "effattn_inflight_bytes") == 0, "every byte is given back")
        channel.close()


def test_the_budget_trims_freed_memory_once_it_is_idle():
    """After ``TRIM_AFTER`` bytes have passed and none are held, one trim runs (glibc's malloc_trim)."""

    async def main():
        budget = TrimmingBudget(ServeOptions().max_inflight_bytes)
        for _ in range(2):
            budget.take(TrimmingBudget.TRIM_AFTER // 2)
            budget.give(TrimmingBudget.TRIM_AFTER // 2)
        await until(lambda: budget.trims == 1, "a trim once the budget is idle")
        assert budget.passed == 0 and budget.used == 0

    if TrimmingBudget(1)._trim is None:
        pytest.skip("no malloc_trim in this C library")
    asyncio.run(main())


def test_raw_contents_are_split_off_as_views_and_the_rest_parses_as_protobuf_does():
    from effattn.serving.grpc_server import parse_infer_request

    data = _request(3, shape=2, padding=10)
    request, raw = parse_infer_request(pb, data)
    whole = pb.ModelInferRequest.FromString(data)
    assert [bytes(r) for r in raw] == list(whole.raw_input_contents) and all(r.obj is data for r in raw)
    del whole.raw_input_contents[:]
    assert request == whole


@pytest.mark.parametrize(
    "data,match",
    [
        (_request(3)[:-1], "runs past its end"),  # truncated in the last raw content
        (b"\xff" * 11, "truncated or overlong varint"),
        (b"\x0b", "wire type 3"),  # a group: not in this message
        (b"\x08\x01" * 70000, "at most 65536 top-level fields"),
        (b"\x0a\x03abc\x12\xff", "truncated or overlong varint"),
        (b"\x22\x02\x0a\x05", "malformed ModelInferRequest"),  # a map entry that protobuf cannot parse
    ],
)
def test_malformed_requests_are_400_naming_the_problem(data, match):
    from effattn.serving.grpc_server import parse_infer_request
    from effattn.serving.protocol import RequestError

    with pytest.raises(RequestError, match=match) as refused:
        parse_infer_request(pb, data)
    assert refused.value.status == 400
