"""Serving pieces without a server: infer paths, datatypes, tensor checks, the batch limit, response writes."""

from __future__ import annotations

import numpy as np
import pytest

from effattn import dtypes
from effattn.serving.http_wire import decompress, header_size, infer_target
from effattn.serving.protocol import DATATYPES, RequestError, datatype_of, raw_tensor, values_tensor
from effattn.serving.repository import TensorConfig, batch_limit
from effattn.shapes import ShapeProfile


@pytest.mark.parametrize(
    "path,target",
    [
        ("/v2/models/seg/infer", ("seg", None)),
        ("/v2/models/seg/versions/1/infer", ("seg", "1")),
        ("/v2/models/stats/infer", ("stats", None)),  # as Starlette's {name} route matches it
        ("/v2/models//infer", None),
        ("/v2/models/seg/versions//infer", None),
        ("/v2/models/seg", None),
        ("/v2/models/seg/infer/", None),
        ("/v1/models/seg/infer", None),
        ("/v2/model/seg/infer", None),
        ("/v2/models/seg/version/1/infer", None),
    ],
)
def test_infer_paths_are_the_routes_paths(path, target):
    assert infer_target(path) == target


def test_datatypes_come_from_the_one_table():
    assert set(DATATYPES) == {row.kserve for row in dtypes.TABLE if row.numpy}
    for name, dtype in DATATYPES.items():
        assert datatype_of(dtype) == name and datatype_of(dtype.type) == name


def test_raw_and_value_tensors_are_checked():
    data = np.arange(6, dtype=np.float32).tobytes()
    assert raw_tensor("x", [2, 3], np.dtype(np.float32), 6, data).shape == (2, 3)
    with pytest.raises(RequestError, match="20 bytes of data for shape"):
        raw_tensor("x", [2, 3], np.dtype(np.float32), 6, data[:20])
    with pytest.raises(RequestError, match="is not a list of INT32 numbers"):
        values_tensor("x", [2], [0.5, 1.5], np.dtype(np.int32), 2)
    assert values_tensor("x", [1, 2], [1, 2], np.dtype(np.float32), 2).dtype == np.float32


def test_raw_tensors_off_numpys_alignment_are_copied_onto_it():
    """ONNX Runtime answers other bits for data off 16-byte alignment (a binary tensor after a JSON head)."""
    x = np.array([0.0, 33554320.0, 268435488.0, 17.0], np.float32)
    body = np.zeros(64, np.uint8)
    start = (-body.ctypes.data) % 16
    for offset in (0, 4, 8):
        body[start + offset : start + offset + 16] = x.view(np.uint8)
        got = raw_tensor("x", [1, 4], np.dtype(np.float32), 4, memoryview(body)[start + offset : start + offset + 16])
        assert got.ctypes.data % 16 == 0 and got.tobytes() == x.tobytes()
        assert (got.base is not None) == (offset == 0)  # in place when aligned: no copy


@pytest.mark.parametrize("datatype", ["INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"])
def test_integer_values_outside_the_type_are_refused_never_wrapped(datatype):
    dtype = DATATYPES[datatype]
    info = np.iinfo(dtype)
    edges = [int(info.min), int(info.max)]
    assert values_tensor("x", [2], edges, dtype, 2).tolist() == edges  # the extremes themselves are taken
    for bad in (int(info.min) - 1, int(info.max) + 1, 2**70, -(2**70)):
        with pytest.raises(RequestError, match=rf"input 'x': {bad} is out of the range of {datatype}"):
            values_tensor("x", [2], [0, bad], dtype, 2)
    with pytest.raises(RequestError, match=f"is not a list of {datatype} numbers"):
        values_tensor("x", [2], [1, 2.5], dtype, 2)


@pytest.mark.parametrize(
    "datatype,values,bad",
    [
        ("FP16", [1.0, 70000.0], "70000.0"),  # rounds to inf in FP16
        ("FP16", [1.0, 2**70], None),  # an int past 64 bits: an object array, refused by kind
        ("FP32", [1.0, 1e39], "1e+39"),
        ("BOOL", [True, 2], "2"),
        ("BOOL", [0, 1], None),  # numbers are not booleans
    ],
)
def test_float_overflow_and_non_boolean_values_are_refused(datatype, values, bad):
    with pytest.raises(RequestError) as e:
        values_tensor("x", [2], values, DATATYPES[datatype], 2)
    message = f"input 'x': {bad} is out of the range of {datatype}" if bad else f"not a list of {datatype} numbers"
    assert message in str(e.value)
    infinite = values_tensor("x", [2], [float("inf"), -float("inf")], DATATYPES["FP16"], 2)  # asked for, kept
    assert np.isinf(infinite).all()


@pytest.mark.parametrize("text", ["\u00b2", "\u0663", "1" * 5000, "-1", "1e3", "", " 12"])
def test_size_headers_are_ascii_digits(text):
    with pytest.raises(RequestError, match="must be a number of bytes"):
        header_size("Inference-Header-Content-Length", text)
    assert header_size("Content-Length", "0042") == 42


def test_a_compressed_body_is_one_stream():
    import gzip
    import zlib

    assert decompress(gzip.compress(b"{}"), "gzip", 100) == b"{}"
    for body, encoding in (
        (gzip.compress(b"{}") + gzip.compress(b"[]"), "gzip"),
        (gzip.compress(b"{}") + b"junk", "gzip"),
        (zlib.compress(b"{}") + b"junk", "deflate"),
    ):
        with pytest.raises(RequestError, match="bytes after its compressed stream") as e:
            decompress(body, encoding, 100)
        assert e.value.status == 400


@pytest.mark.parametrize(
    "requested,dims,out,batch,limit",
    [
        (8, ["n", 3], ["n", 3], (1, 4), 4),  # clamped to the profile
        (8, ["n", 3], ["n", 3], (1, 16), 8),
        (8, [1, 3], [1, 3], (1, 1), 0),  # a fixed batch axis: no batching
        (0, ["n", 3], ["n", 3], (1, 16), 0),
        (8, ["n", 3], ["n", 3], None, 8),  # no profile: as asked
        (8, ["n", 3], [3, "n"], None, 0),  # a Transpose: the output's first axis is not the batch
        (8, ["n", 3], [], None, 0),  # a scalar output (a reduction over everything)
        (8, ["n", 3], ["m", 3], None, 0),  # another dimension: nothing says it is the batch
        (8, [-1, 3], [-1, 3], None, 0),  # unnamed dynamic axes: nothing says they are one
        (8, ["n", "n"], ["n", "n"], None, 0),  # the batch name on another axis too: x x^T mixes requests
    ],
)
def test_batch_limit_is_the_one_clamp_and_batching_comes_from_the_graph(requested, dims, out, batch, limit):
    profile = None if batch is None else ShapeProfile.single(f"{batch[0]}x3", f"{batch[0]}x3", f"{batch[1]}x3")
    tensors = [TensorConfig("input", np.dtype(np.float32), dims), TensorConfig("output", np.dtype(np.float32), out)]
    assert batch_limit(requested, tensors, profile) == limit


def test_a_response_head_leaves_with_its_body():
    import asyncio

    from effattn.serving.uvicorn_guard import HeadWithBody

    class Transport:
        def __init__(self):
            self.writes, self.closed = [], False

        def write(self, data):
            self.writes.append(bytes(data))

        def close(self):
            self.closed = True

        def is_closing(self):
            return self.closed

    async def main():
        loop = asyncio.get_running_loop()
        sent = Transport()
        coalescing = HeadWithBody(sent, loop)
        coalescing.write(b"HTTP/1.1 200 OK\r\n\r\n")
        coalescing.write(b"body")
        assert sent.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
        coalescing.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # a head alone goes out at the end of the loop turn
        await asyncio.sleep(0)
        assert sent.writes[-1] == b"HTTP/1.1 100 Continue\r\n\r\n"
        coalescing.write(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")
        coalescing.close()  # closing writes what is held first
        assert sent.writes[-1].startswith(b"HTTP/1.1 503") and sent.closed and coalescing.is_closing()

    asyncio.run(main())
