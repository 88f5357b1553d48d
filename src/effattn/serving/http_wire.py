"""The HTTP wire format of the KServe v2 protocol: request bodies (compression, the JSON head and the binary
tensor data extension's tail, ``Inference-Header-Content-Length``), the outputs a request asks for and in
which form (JSON or binary), response bodies and their headers, and the infer paths. No I/O: the front end
(:mod:`.http_server`) reads and writes; the checks shared with gRPC are :mod:`.protocol`.
"""

from __future__ import annotations

import json
import reprlib
import zlib
from collections.abc import Mapping
from typing import Any, cast

import numpy as np

from ..runtime.base import Runner
from .protocol import (
    RequestError,
    check_output,
    datatype_of,
    is_int,
    parameters,
    raw_tensor,
    tensor_header,
    values_tensor,
)

HEADER_LENGTH = "Inference-Header-Content-Length"


def error_body(message: str) -> bytes:
    """The body of every error answer: one JSON object with the one-line message."""
    return json.dumps({"error": message}, ensure_ascii=False).encode()


def infer_target(path: str) -> tuple[str, str | None] | None:
    """(model, version) of an infer path, ``/v2/models/NAME[/versions/V]/infer``; None for any other path."""
    parts = path.split("/")
    if len(parts) == 5 and parts[4] == "infer" and parts[1] == "v2" and parts[2] == "models" and parts[3]:
        return parts[3], None
    if (
        len(parts) == 7
        and parts[6] == "infer"
        and parts[4] == "versions"
        and parts[1] == "v2"
        and parts[2] == "models"
        and parts[3]
        and parts[5]
    ):
        return parts[3], parts[5]
    return None


# ------------------------------------------------------------------------------ request bodies
def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body before ``Content-Encoding`` (gzip or deflate, as tritonclient compresses), at most ``limit`` bytes."""
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
    if inflater.unused_data:  # a second gzip member or garbage: one stream is one request, nothing is skipped
        raise RequestError(
            400,
            f"the {encoding} request body has {len(inflater.unused_data)} bytes after its "
            "compressed stream (several members or trailing data); send one stream",
        )
    return data


#: The most digits a size header may have (2**64 has 20): more is no size this server could hold.
_SIZE_DIGITS = 20


def header_size(name: str, text: str) -> int:
    """A size header's value: ASCII digits only (``str.isdigit`` also takes '²' and other scripts' digits)."""
    if not (text.isascii() and text.isdigit() and len(text) <= _SIZE_DIGITS):
        raise RequestError(400, f"{name} must be a number of bytes, got {text[:40]!r}")
    return int(text)


def load_json(data, what: str):
    """``data`` parsed as JSON, or 400 naming ``what``: bad UTF-8 or syntax, integers of more than Python's
    4300 digits, nesting too deep for the parser."""
    try:
        return json.loads(bytes(data) if isinstance(data, memoryview) else data)
    except RecursionError:
        raise RequestError(400, f"malformed JSON in {what}: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, the int digits limit
        raise RequestError(400, f"malformed JSON in {what}: {str(e)[:200]}") from None


def parse_infer_request(body: bytes, header_length: str | None) -> tuple[dict, bytes | memoryview]:
    """The JSON part and the binary part of an infer request body (binary tensor data extension)."""
    head: bytes | memoryview
    binary: bytes | memoryview
    if header_length is not None:
        n = header_size(HEADER_LENGTH, header_length)
        if n > len(body):
            raise RequestError(400, f"{HEADER_LENGTH} is {n} but the body has only {len(body)} bytes")
        head, binary = memoryview(body)[:n], memoryview(body)[n:]  # views: the tensors are not copied
    else:
        head, binary = body, b""
    request = load_json(head, "the request")
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise RequestError(400, "the request must be a JSON object with a non-empty 'inputs' list")
    parameters(request, "the request")
    if not isinstance(request.get("id", ""), str):
        raise RequestError(400, "the request's 'id' must be a string")
    return request, binary


# ------------------------------------------------------------------------------ input tensors
def decode_inputs(request: dict, binary, runner: Runner, max_bytes: int = 2**62) -> dict[str, np.ndarray]:
    """Input tensors of an HTTP request by name, each checked against its declared shape and the model's datatype."""
    feed: dict[str, np.ndarray] = {}
    offset = 0
    for i, tensor in enumerate(request["inputs"]):
        if not isinstance(tensor, dict):
            raise RequestError(400, f"inputs[{i}] must be an object with name, shape, datatype")
        name, shape = cast(str, tensor.get("name")), tensor.get("shape")  # tensor_header refuses a non-str name
        dtype, count = tensor_header(name, shape, tensor.get("datatype"), runner, max_bytes)
        if name in feed:
            raise RequestError(400, f"input {name!r} is given twice")
        size = parameters(tensor, f"input {name!r}").get("binary_data_size")
        if size is not None and tensor.get("data") is not None:
            raise RequestError(400, f"input {name!r} has both 'data' and a binary_data_size parameter; send one")
        if size is not None:
            if not is_int(size):
                raise RequestError(
                    400,
                    f"input {name!r}: binary_data_size must be an integer number of bytes, got {reprlib.repr(size)}",
                )
            if size != count * dtype.itemsize:
                raise RequestError(
                    400,
                    f"input {name!r}: binary_data_size {size} does not match shape "
                    f"{shape} ({count * dtype.itemsize} bytes)",
                )
            if offset + size > len(binary):
                raise RequestError(
                    400, f"input {name!r}: truncated binary payload ({len(binary) - offset} of {size} bytes present)"
                )
            feed[name] = raw_tensor(name, shape, dtype, count, binary[offset : offset + size])
            offset += size
        elif "data" in tensor:
            feed[name] = values_tensor(name, shape, tensor["data"], dtype, count)
        else:
            raise RequestError(400, f"input {name!r} has neither 'data' nor a binary_data_size parameter")
    if offset != len(binary):
        raise RequestError(400, f"{len(binary) - offset} bytes of binary payload belong to no input")
    return feed


def read_infer_request(
    body: bytes, header_length: str | None, runner: Runner, max_bytes: int
) -> tuple[dict, dict[str, np.ndarray]]:
    """The JSON part of an infer request body and its input tensors, checked against ``runner``."""
    payload, binary = parse_infer_request(body, header_length)
    return payload, decode_inputs(payload, binary, runner, max_bytes)


# ------------------------------------------------------------------------------ responses
def wanted_outputs(request: dict, outputs: Mapping[str, object]) -> list[tuple[str, bool]]:
    """(name, binary?) of each output the request asks for (all of ``outputs``, by name, by default)."""
    default_binary = parameters(request, "the request").get("binary_data_output", False)
    wanted = request.get("outputs")
    if wanted is None:
        wanted = [{"name": n} for n in outputs]
    elif not isinstance(wanted, list):
        raise RequestError(400, "'outputs' must be a list")
    chosen: list[tuple[str, bool]] = []
    seen: set[str] = set()
    for i, spec in enumerate(wanted):
        if not isinstance(spec, dict):
            raise RequestError(400, f"outputs[{i}] must be an object with a 'name'")
        name = cast(str, spec.get("name"))  # check_output refuses a non-str name
        params = parameters(spec, f"output {str(name)[:100]!r}")
        check_output(name, outputs, seen, params)
        binary = params.get("binary_data", default_binary)
        if not isinstance(binary, bool):
            raise RequestError(400, f"output {name!r}: binary_data must be true or false")
        chosen.append((name, binary))
    return chosen


def encode_outputs(
    request: dict, outputs: Mapping[str, np.ndarray], chosen: list[tuple[str, bool]], name: str, version: str
) -> tuple[bytes, dict]:
    """Response body and headers: the ``chosen`` outputs (:func:`wanted_outputs`) as JSON, or binary where asked.

    Non-finite values in JSON outputs are written as ``NaN``/``Infinity``/``-Infinity`` (what Python's
    ``json`` and tritonclient read)."""
    tensors: list[dict[str, Any]] = []
    blobs: list[memoryview] = []
    for output, binary in chosen:
        value = np.asarray(outputs[output], order="C")  # ascontiguousarray makes a scalar 1-d
        entry: dict[str, Any] = {"name": output, "datatype": datatype_of(value.dtype), "shape": list(value.shape)}
        if binary:
            entry["parameters"] = {"binary_data_size": value.nbytes}
            blobs.append(value.reshape(-1).view(np.uint8).data)  # a view, no copy: joined once, below
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
