"""The KServe v2 / Open Inference Protocol without a transport: what the HTTP and gRPC front ends share.
Datatypes, request errors with their status, the byte budget, the extensions, and the checks every input
tensor goes through (:func:`tensor_header`, then :func:`raw_tensor` or :func:`values_tensor`).
The HTTP wire format is :mod:`.http_wire`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import dtypes
from ..errors import InputError
from ..runtime.base import Runner

#: KServe datatype -> numpy dtype of every type numpy can hold (what the server can receive and send).
DATATYPES = {row.kserve: np.dtype(row.numpy) for row in dtypes.TABLE if row.numpy is not None}

#: The most dimensions a tensor may have (numpy's limit; more was a 500 from numpy).
MAX_RANK = 64

#: Bodies larger than this are decompressed, parsed and decoded in a worker thread, off the event loop.
OFF_LOOP_BYTES = 64 * 1024

#: Protocol extensions the server implements (HTTP and gRPC server metadata).
EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics", "model_repository"]

#: What ``effattn serve`` answers for protocol extensions it does not implement (Triton's status for each).
UNSUPPORTED = {
    "model_control": (
        503,
        "explicit model load / unload is not supported: effattn serve loads its models when it "
        "starts (like Triton with --model-control-mode=none); restart it with other models",
    ),
    "shared_memory": (
        400,
        "shared memory is not supported by effattn serve; send tensors in the request body (binary tensor data)",
    ),
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
            raise RequestError(
                503,
                f"server busy: {self.used} bytes of requests in flight, {n} more would pass the "
                f"limit of {self.limit} (--max-inflight-mb); retry later",
            )
        self.used += n

    def give(self, n: int) -> None:
        self.used -= n


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
        raise RequestError(
            400, f"input {name!r}: 'shape' must be a list of non-negative integers, got {str(shape)[:100]}"
        )
    if len(shape) > MAX_RANK:
        raise RequestError(400, f"input {name!r}: 'shape' has {len(shape)} dimensions; an array has at most {MAX_RANK}")
    try:
        expected = datatype_of(runner.inputs[name].dtype)
    except InputError as e:
        raise RequestError(400, str(e)) from None
    if datatype != expected:
        raise RequestError(400, f"input {name!r} has datatype {str(datatype)[:20]!r}; the model takes {expected}")
    dtype = DATATYPES[expected]
    count = math.prod(int(d) for d in shape)  # Python ints: no overflow
    span = math.prod(max(int(d), 1) for d in shape)  # [10**30, 0] holds nothing, yet no array can have that shape
    if span * dtype.itemsize > max_bytes:
        raise RequestError(
            400,
            f"input {name!r}: shape {str(list(shape))[:100]} of {expected} spans "
            f"{span * dtype.itemsize} bytes, more than a request may hold ({max_bytes})",
        )
    return dtype, count


def raw_tensor(name: str, shape, dtype: np.dtype, count: int, data, where: str = "data") -> np.ndarray:
    """A tensor over raw little-endian bytes, which must be exactly ``count`` items long: no copy, unless
    the bytes sit off numpy's alignment (:data:`ALIGNMENT`; a binary tensor follows a JSON head of any length)."""
    if len(data) != count * dtype.itemsize:
        raise RequestError(
            400,
            f"input {name!r}: {len(data)} bytes of {where} for shape {list(shape)} of "
            f"{datatype_of(dtype)} ({count * dtype.itemsize} bytes)",
        )
    array = np.frombuffer(data, dtype, count).reshape(shape)
    return array.copy() if array.ctypes.data % ALIGNMENT else array


#: The alignment numpy gives every array it allocates. ONNX Runtime's CPU kernels take another path over
#: data off it: a ReduceSum of [0, 33554320, 268435488, 17] is 301989824 aligned, 301989856 at offset 4,
#: so a tensor read in place from a request body could answer other bits than the same array in `effattn run`.
ALIGNMENT = 16


#: Which kinds of values (numpy dtype kinds) an input of each kind accepts: no strings, no floats into ints.
_VALUE_KINDS = {"f": "iuf", "i": "iu", "u": "iu", "b": "b"}


def values_tensor(name: str, shape, values: Any, dtype: np.dtype, count: int) -> np.ndarray:
    """A tensor from a list of values (JSON ``data``, gRPC typed contents), checked for kind, range and count
    (no strings, no floats into integer inputs, nothing ragged, nothing the type would wrap or overflow)."""
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as e:  # ragged nesting
        raise RequestError(
            400, f"input {name!r}: 'data' is not a list of {datatype_of(dtype)} numbers (ragged nesting: {e})"
        ) from None
    if dtype.kind in "iu" and array.dtype.kind in "fO" and array.size:
        exact = np.asarray(values, dtype=object)  # numpy made ints float64 (0 beside 2**63) or objects (2**64)
        if all(is_int(v) for v in exact.flat):
            info = np.iinfo(dtype)
            _check_range(name, next((v for v in exact.flat if not info.min <= v <= info.max), None), dtype)
            array = exact.astype(dtype)
    _check_range(name, unrepresentable(array, dtype), dtype)
    if array.dtype.kind not in _VALUE_KINDS[dtype.kind] and array.size:
        raise RequestError(
            400,
            f"input {name!r}: 'data' is not a list of {datatype_of(dtype)} numbers (it holds "
            f"{array.dtype.name} values)",
        )
    if array.size != count:
        raise RequestError(400, f"input {name!r}: 'data' has {array.size} elements, shape needs {count}")
    return array.astype(dtype, copy=False).reshape(shape)


def _check_range(name: str, bad: Any, dtype: np.dtype) -> None:
    if bad is not None:
        raise RequestError(
            400,
            f"input {name!r}: {str(bad)[:40]} is out of the range of {datatype_of(dtype)}; "
            "values are never wrapped or rounded to infinity",
        )


def unrepresentable(array: np.ndarray, dtype: np.dtype) -> Any:
    """The first number in ``array`` that ``dtype`` cannot hold (an integer it would wrap, a finite number it
    would make infinite, a boolean other than 0 and 1), or None."""
    flat = array.reshape(-1)
    if dtype.kind in "iu" and array.dtype.kind in "iu":
        info = np.iinfo(dtype)
        bad = flat[(flat < info.min) | (flat > info.max)]
    elif dtype.kind == "b" and array.dtype.kind in "iu":
        bad = flat[(flat != 0) & (flat != 1)]
    elif dtype.kind == "f" and array.dtype.kind in "iuf" and array.dtype != dtype:
        with np.errstate(over="ignore"):
            bad = flat[np.isinf(flat.astype(dtype)) & np.isfinite(flat)]
    else:
        return None
    return bad[0].item() if bad.size else None


#: Output parameters of protocol extensions the server does not implement: answering the plain tensor instead
#: (tritonclient's ``class_count``, an output written to a shared-memory region) would be a wrong answer.
UNANSWERED_OUTPUT_PARAMETERS = {
    "classification": "the classification extension is not supported; ask for the tensor and take its top k",
    "shared_memory_region": UNSUPPORTED["shared_memory"][1],
}


def check_output(name: Any, outputs: Mapping, seen: set, params: Mapping | tuple = ()) -> None:
    """400 for a requested output the model lacks, one in ``seen`` (the names asked before; ``name`` joins
    them: each output is answered once), or one whose ``params`` ask for an extension the server lacks
    (HTTP and gRPC)."""
    if not isinstance(name, str) or name not in outputs:
        raise RequestError(400, f"unknown output {str(name)[:100]!r}; the model's outputs are {list(outputs)}")
    for key, why in UNANSWERED_OUTPUT_PARAMETERS.items():
        if key in params:
            raise RequestError(400, f"output {name!r}: {why}")
    if name in seen:
        raise RequestError(400, f"output {name!r} is requested twice; ask for each output once")
    seen.add(name)
