"""The KServe v2 / Open Inference Protocol, independent of the transport: what HTTP and gRPC share.

Datatype names (from :mod:`effattn.dtypes`, one table), request errors with their HTTP status
(:class:`RequestError`; gRPC maps the status to its code), the byte budget of requests in flight,
the protocol extensions implemented and those answered as Triton answers without them, and the
decoding and checking of input tensors: every tensor, whether it arrives as JSON ``data``, as binary
tensor data (HTTP) or as ``raw_input_contents`` / typed contents (gRPC), goes through
:func:`tensor_header` and :func:`raw_tensor` or :func:`values_tensor`. The HTTP wire format (JSON head plus binary
tail, compression) is here too, as :func:`parse_infer_request` and :func:`encode_outputs`.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import dtypes
from ..errors import InputError
from ..runtime.base import Runner

HEADER_LENGTH = "Inference-Header-Content-Length"

#: KServe datatype -> numpy dtype of every type numpy can hold (what the server can receive and send).
DATATYPES = {row.kserve: np.dtype(row.numpy) for row in dtypes.TABLE if row.numpy is not None}

#: Bodies larger than this are decompressed, parsed and decoded in a worker thread, off the event loop.
OFF_LOOP_BYTES = 64 * 1024

#: Protocol extensions the server implements (HTTP and gRPC server metadata).
EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics", "model_repository"]

#: What ``effattn serve`` answers for protocol extensions it does not implement (Triton's status for each).
UNSUPPORTED = {
    "model_control": (503, "explicit model load / unload is not supported: effattn serve loads its models when it "
                           "starts (like Triton with --model-control-mode=none); restart it with other models"),
    "shared_memory": (400, "shared memory is not supported by effattn serve; send tensors in the request body "
                           "(binary tensor data)"),
    "trace": (400, "trace is not supported by effattn serve; use /metrics or the statistics extension"),
    "logging": (400, "logging settings are not supported by effattn serve; set -q or the log level at start"),
}


class RequestError(Exception):
    """A request the server answers with ``status`` and ``message`` (it keeps serving)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


_KSERVE = {dtype: name for name, dtype in DATATYPES.items()}


def datatype_of(dtype) -> str:
    """The KServe datatype of a numpy dtype (InputError for one the protocol cannot carry)."""
    name = _KSERVE.get(dtype)  # a dict hit per tensor on the hot path; the table names the rest
    return name if name is not None else dtypes.of_numpy(dtype).kserve


class ByteBudget:
    """Request bytes held at once, shared by the HTTP and gRPC front ends (one event loop: no lock)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def take(self, n: int) -> None:
        if self.used + n > self.limit:
            raise RequestError(503, f"server busy: {self.used} bytes of requests in flight, {n} more would pass the "
                                    f"limit of {self.limit} (--max-inflight-mb); retry later")
        self.used += n

    def give(self, n: int) -> None:
        self.used -= n


# ------------------------------------------------------------------------------ HTTP request bodies
def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body as sent before ``Content-Encoding`` (gzip or deflate, as tritonclient compresses), at most ``limit`` bytes."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise RequestError(415, f"Content-Encoding {encoding[:40]!r} is not supported; use gzip, deflate or none")
    inflater = zlib.decompressobj(zlib.MAX_WBITS | (16 if encoding == "gzip" else 0))
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as e:
        raise RequestError(400, f"the {encoding} request body is corrupt: {e}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise RequestError(413, f"the {encoding} request body inflates to over {limit} bytes (--max-request-mb)")
    if not inflater.eof:
        raise RequestError(400, f"the {encoding} request body is truncated")
    return data


def parse_infer_request(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON part and the binary part of an infer request body (binary tensor data extension)."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise RequestError(400, f"{HEADER_LENGTH} must be an integer, got {header_length[:40]!r}") from None
        if not 0 <= n <= len(body):
            raise RequestError(400, f"{HEADER_LENGTH} is {n} but the body has only {len(body)} bytes")
        head, binary = memoryview(body)[:n], memoryview(body)[n:]  # views: the tensors are not copied
    else:
        head, binary = body, b""
    try:
        request = json.loads(bytes(head) if isinstance(head, memoryview) else head)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(400, f"malformed JSON in the request: {e}") from None
    except RecursionError:
        raise RequestError(400, "malformed JSON in the request: nested too deeply") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise RequestError(400, "the request must be a JSON object with a non-empty 'inputs' list")
    parameters(request, "the request")
    if not isinstance(request.get("id", ""), str):
        raise RequestError(400, "the request's 'id' must be a string")
    return request, binary


def parameters(obj: dict, where: str) -> dict:
    """``obj["parameters"]``: absent, or an object."""
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise RequestError(400, f"'parameters' of {where} must be an object, got {type(params).__name__}")
    return params


def timeout_parameter(value: Any) -> float | None:
    """Triton's per-request ``timeout`` parameter (microseconds) as seconds; None when absent or not positive."""
    if not isinstance(value, (int, float, type(None))) or isinstance(value, bool):
        raise RequestError(400, "the 'timeout' parameter must be a number of microseconds")
    return value / 1e6 if value is not None and value > 0 else None


def is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


# ------------------------------------------------------------------------------------ input tensors
def tensor_header(name: Any, shape: Any, datatype: Any, runner: Runner, max_bytes: int) -> tuple[np.dtype, int]:
    """Dtype and element count of one input tensor, after checking its name, shape and datatype (HTTP and gRPC)."""
    if not isinstance(name, str) or name not in runner.inputs:
        raise RequestError(400, f"unknown input {str(name)[:100]!r}; the model's inputs are {list(runner.inputs)}")
    if not isinstance(shape, (list, tuple)) or not all(is_int(d) and d >= 0 for d in shape):
        raise RequestError(400, f"input {name!r}: 'shape' must be a list of non-negative integers, got "
                                f"{str(shape)[:100]}")
    try:
        expected = datatype_of(runner.inputs[name].dtype)
    except InputError as e:
        raise RequestError(400, str(e)) from None
    if datatype != expected:
        raise RequestError(400, f"input {name!r} has datatype {str(datatype)[:20]!r}; the model takes {expected}")
    dtype = DATATYPES[expected]
    count = math.prod(int(d) for d in shape)  # Python ints: no overflow
    if count * dtype.itemsize > max_bytes:
        raise RequestError(400, f"input {name!r}: shape {list(shape)} of {expected} is {count * dtype.itemsize} "
                                f"bytes, more than a request may hold ({max_bytes})")
    return dtype, count


def raw_tensor(name: str, shape, dtype: np.dtype, count: int, data, where: str = "data") -> np.ndarray:
    """A tensor over raw little-endian bytes (no copy), which must be exactly ``count`` items long."""
    if len(data) != count * dtype.itemsize:
        raise RequestError(400, f"input {name!r}: {len(data)} bytes of {where} for shape {list(shape)} of "
                                f"{datatype_of(dtype)} ({count * dtype.itemsize} bytes)")
    return np.frombuffer(data, dtype, count).reshape(shape)


#: Which kinds of values (numpy dtype kinds) an input of each kind accepts: no strings, no floats into ints.
_VALUE_KINDS = {"f": "iuf", "i": "iu", "u": "iu", "b": "b"}


def values_tensor(name: str, shape, values: Any, dtype: np.dtype, count: int) -> np.ndarray:
    """A tensor from a list of values (JSON ``data``, gRPC typed contents), checked for kind and count
    (no strings, no floats into integer inputs, nothing ragged)."""
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as e:  # ragged nesting
        raise RequestError(400, f"input {name!r}: 'data' is not a list of {datatype_of(dtype)} numbers "
                                f"(ragged nesting: {e})") from None
    if array.dtype.kind not in _VALUE_KINDS[dtype.kind] and array.size:
        raise RequestError(400, f"input {name!r}: 'data' is not a list of {datatype_of(dtype)} numbers (it holds "
                                f"{array.dtype.name} values)")
    if array.size != count:
        raise RequestError(400, f"input {name!r}: 'data' has {array.size} elements, shape needs {count}")
    return array.astype(dtype, copy=False).reshape(shape)


def decode_inputs(request: dict, binary, runner: Runner, max_bytes: int = 2**62) -> dict[str, np.ndarray]:
    """Input tensors of an HTTP request by name, each checked against its declared shape and the model's datatype."""
    feed, offset = {}, 0
    for i, tensor in enumerate(request["inputs"]):
        if not isinstance(tensor, dict):
            raise RequestError(400, f"inputs[{i}] must be an object with name, shape, datatype")
        name, shape = tensor.get("name"), tensor.get("shape")
        dtype, count = tensor_header(name, shape, tensor.get("datatype"), runner, max_bytes)
        if name in feed:
            raise RequestError(400, f"input {name!r} is given twice")
        size = parameters(tensor, f"input {name!r}").get("binary_data_size")
        if size is not None:
            if not is_int(size) or size != count * dtype.itemsize:
                raise RequestError(400, f"input {name!r}: binary_data_size {str(size)[:40]} does not match shape "
                                        f"{shape} ({count * dtype.itemsize} bytes)")
            if offset + size > len(binary):
                raise RequestError(400, f"input {name!r}: truncated binary payload ({len(binary) - offset} of "
                                        f"{size} bytes present)")
            feed[name] = raw_tensor(name, shape, dtype, count, binary[offset:offset + size])
            offset += size
        elif "data" in tensor:
            feed[name] = values_tensor(name, shape, tensor["data"], dtype, count)
        else:
            raise RequestError(400, f"input {name!r} has neither 'data' nor a binary_data_size parameter")
    if offset != len(binary):
        raise RequestError(400, f"{len(binary) - offset} bytes of binary payload belong to no input")
    return feed


# ----------------------------------------------------------------------------------- HTTP responses
def wanted_outputs(request: dict, outputs: Mapping[str, np.ndarray]) -> list[tuple[str, bool]]:
    """(name, binary?) of each output the request asks for (all, by default)."""
    default_binary = parameters(request, "the request").get("binary_data_output", False)
    wanted = request.get("outputs")
    if wanted is None:
        wanted = [{"name": n} for n in outputs]
    elif not isinstance(wanted, list):
        raise RequestError(400, "'outputs' must be a list")
    chosen = []
    for i, spec in enumerate(wanted):
        if not isinstance(spec, dict):
            raise RequestError(400, f"outputs[{i}] must be an object with a 'name'")
        name = spec.get("name")
        if not isinstance(name, str) or name not in outputs:
            raise RequestError(400, f"unknown output {str(name)[:100]!r}; the model's outputs are {list(outputs)}")
        binary = parameters(spec, f"output {name!r}").get("binary_data", default_binary)
        if not isinstance(binary, bool):
            raise RequestError(400, f"output {name!r}: binary_data must be true or false")
        chosen.append((name, binary))
    return chosen


def encode_outputs(request: dict, outputs: Mapping[str, np.ndarray], chosen: list[tuple[str, bool]], name: str,
                   version: str) -> tuple[bytes, dict]:
    """Response body and headers: the ``chosen`` outputs (:func:`wanted_outputs`) as JSON, or binary where asked.

    Non-finite values in JSON outputs are written as ``NaN``/``Infinity``/``-Infinity`` (what Python's
    ``json`` and tritonclient read)."""
    tensors, blobs = [], []
    for output, binary in chosen:
        value = np.ascontiguousarray(outputs[output])
        entry = {"name": output, "datatype": datatype_of(value.dtype), "shape": list(value.shape)}
        if binary:
            entry["parameters"] = {"binary_data_size": value.nbytes}
            blobs.append(value.reshape(-1).view(np.uint8))  # no copy: joined once, below
        else:
            entry["data"] = value.reshape(-1).tolist()
        tensors.append(entry)
    response = {"model_name": name, "model_version": version, "outputs": tensors}
    if "id" in request:
        response["id"] = request["id"]
    head = json.dumps(response).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    return b"".join([head, *blobs]), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
