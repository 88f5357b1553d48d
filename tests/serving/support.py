"""Test support for the serving tests: waiting on the server's own counters, and a model whose run time the request
chooses (``y = x + trips`` by a ``Loop`` of ``trips`` iterations).

``trips`` of 10**12 never finishes in practice (a model that wedges its engine); a few million take seconds
(a slow request whose length grows with the machine's load); a handful answers at once.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from tests.harness import http

FOREVER = 10**12


def loop_model(path: Path) -> Path:
    """Inputs ``trips`` INT64[1] and ``x`` FP32[1], output ``y`` FP32[1] = x + trips (exact below 2**24)."""
    value = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1]) for name in ("v_in", "v_out")]
    body = helper.make_graph(
        [helper.make_node("Add", ["v_in", "one"], ["v_out"]), helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            value[0],
        ],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), value[1]],
        initializer=[helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["trips", "scalar"], ["m"]),
            helper.make_node("Loop", ["m", "", "x"], ["y"], body=body),
        ],
        "loop",
        [
            helper.make_tensor_value_info("trips", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializer=[helper.make_tensor("scalar", TensorProto.INT64, [0], [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def loop_request(trips: int, x: float = 1.0) -> bytes:
    """The JSON body of an infer request to :func:`loop_model`."""
    import json

    return json.dumps(
        {
            "inputs": [
                {"name": "trips", "shape": [1], "datatype": "INT64", "data": [trips]},
                {"name": "x", "shape": [1], "datatype": "FP32", "data": [x]},
            ]
        }
    ).encode()


def metric(base: str, name: str, labels: str = "") -> float:
    """One sample of the server's /metrics (0 where absent)."""
    text = http("GET", base + "/metrics")[2].decode()
    found = re.search(rf"^{name}{re.escape(labels)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def wait_for(condition, what: str, limit: float = 120.0) -> None:
    """Poll ``condition()`` until it holds; fail naming ``what`` after ``limit`` seconds (generous: loaded CI)."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"the server never reached: {what}"
        time.sleep(0.02)


async def until(condition, what: str, limit: float = 120.0) -> None:
    """:func:`wait_for` inside an event loop (for in-process servers and batchers): poll, yielding to the loop."""
    import asyncio

    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"never reached: {what}"
        await asyncio.sleep(0.005)
