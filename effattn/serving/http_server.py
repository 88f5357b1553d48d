"""``effattn serve``: a KServe v2 / Open Inference Protocol server over HTTP (Starlette + uvicorn).

It speaks the protocol Triton speaks, including the binary tensor data extension, so client code
written with ``tritonclient.http`` runs unchanged against this server and against Triton. Every
model gets a :class:`~effattn.serving.batching.DynamicBatcher`. Every bad request is answered with
a status and a one-line ``{"error": ...}`` and the server goes on serving:

- 400: malformed JSON, unknown tensor name, wrong datatype/shape, truncated binary payload
  (and every input check of :meth:`Runner.check_feed`: out-of-profile sizes, ranks, ...);
- 404: unknown model; 413: request body over the limit; 503: queue full or shutting down;
- 504: the request waited longer than its timeout; 408: its body arrived too slowly;
- 415: a ``Content-Encoding`` other than gzip, deflate or identity.

Resources are bounded: request bytes in flight (``--max-inflight-mb``, 503 beyond), connections
(``--max-connections``, 503 beyond), idle or half-sent connections (closed after ``--keep-alive-s``),
and request bodies are parsed off the event loop, so health checks answer while a big JSON body is
decoded. A client that hangs up is counted as ``499`` and not logged as an error. JSON replies write
non-finite outputs as ``NaN``, ``Infinity`` and ``-Infinity`` (what Python's ``json`` and tritonclient
read; strict JSON has no such tokens, so strict parsers should ask for binary outputs).

Triton's management endpoints too: the model's ``ModelConfig`` as JSON (``/v2/models/NAME/config``,
the dict :func:`.triton.config_dict` builds for ``effattn triton``), statistics in Triton's schema
(``/v2/models[/NAME]/stats``, :mod:`.stats`, fed by the batcher) and ``POST /v2/repository/index``;
extensions it lacks (model load/unload, shared memory, trace, logging) get the status Triton gives
without them (:data:`UNSUPPORTED`), and unknown routes and methods a JSON 404/405.

Prometheus text at ``/metrics``: requests by model and status, latency histogram, batch sizes.
With ``grpc_port`` the same models are served over KServe v2 gRPC too (:mod:`.serve_grpc`).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import math
import socket
import time
import zlib
from collections.abc import Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import __version__
from ..errors import BackendError, ConfigError, InputError
from ..names import check_model_name
from ..runtime.base import Runner
from .batching import DynamicBatcher, QueueFull
from .stats import ModelStats
from .repository import served_config

log = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
DATATYPES = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32,
             "INT16": np.int16, "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}
_NAMES = {np.dtype(v): k for k, v in DATATYPES.items()}


def datatype_of(dtype) -> str:
    return _NAMES.get(np.dtype(dtype), "FP32")


class RequestError(Exception):
    """A request the server answers with ``status`` and ``message`` (it keeps serving)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


#: Bodies larger than this are decompressed, parsed and decoded in a worker thread, off the event loop.
OFF_LOOP_BYTES = 64 * 1024


@dataclass
class ServeOptions:
    max_batch_size: int = 8
    max_queue_delay_ms: float = 2.0
    max_queue: int = 64
    timeout_s: float = 30.0
    max_request_bytes: int = 64 * 2**20
    instances: int = 1  # engine calls in flight at once per model
    grpc_port: int | None = None  # also serve KServe v2 over gRPC on this port
    host: str = "127.0.0.1"  # the gRPC server binds here too
    graceful_seconds: float = 30.0
    max_inflight_bytes: int = 256 * 2**20  # request bytes held at once (HTTP and gRPC together); 503 beyond
    max_connections: int = 512  # concurrent connections (HTTP) and calls (gRPC); 503 / RESOURCE_EXHAUSTED beyond
    keep_alive_s: float = 5.0  # idle or half-sent (request head) connections are closed after this long

    def __post_init__(self) -> None:
        positive = {"max_batch_size": self.max_batch_size, "max_queue": self.max_queue, "instances": self.instances,
                    "timeout": self.timeout_s, "max_request_bytes": self.max_request_bytes,
                    "max_connections": self.max_connections, "keep_alive_s": self.keep_alive_s}
        bad = [f"{k} {v}" for k, v in positive.items() if not (v > 0 and math.isfinite(v))]
        bad += [f"{k} {v}" for k, v in {"max_queue_delay_ms": self.max_queue_delay_ms,
                                          "graceful_seconds": self.graceful_seconds}.items()
                if not (v >= 0 and math.isfinite(v))]
        if bad:
            raise ConfigError(f"serve options out of range: {', '.join(bad)} (sizes, counts and times must be "
                              "positive and finite; delays may be 0)")
        if self.max_inflight_bytes < self.max_request_bytes:
            raise ConfigError(f"max_inflight_bytes ({self.max_inflight_bytes}) must be at least max_request_bytes "
                              f"({self.max_request_bytes}), or no request of the largest size could ever run")
        if self.grpc_port is not None:
            check_port(self.grpc_port, "gRPC port")


def check_port(port: int, what: str = "port") -> int:
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"{what} {port!r} is not a TCP port (1-65535)")
    return port


def listen(host: str, port: int, what: str = "port") -> socket.socket:
    """A listening socket on ``host:port`` without SO_REUSEPORT, so a port in use is refused, not shared."""
    check_port(port, what)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)  # proto IPPROTO_TCP: asyncio then sets TCP_NODELAY on connections
    except OSError as e:
        raise BackendError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # only TIME_WAIT leftovers, never a live server
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        busy = " (is another server running there?)" if e.errno == errno.EADDRINUSE else ""
        raise BackendError(f"cannot listen on {what} {host}:{port}: {e.strerror or e}{busy}") from None
    return sock


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


#: Protocol extensions the server implements (HTTP and gRPC server metadata).
EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics", "model_repository"]


@dataclass
class ServedModel:
    name: str
    runner: Runner
    batcher: DynamicBatcher
    version: str = "1"
    ready: bool = True
    stats: ModelStats = field(default_factory=ModelStats)
    config: dict = field(default_factory=dict)  # Triton's ModelConfig (JSON form), the one `effattn triton` writes

    def metadata(self) -> dict:
        def tensor(spec, with_profile: bool) -> dict:
            shape = [-1 if not isinstance(d, int) else d for d in (spec.shape or [])]
            out = {"name": spec.name, "datatype": datatype_of(spec.dtype), "shape": shape}
            if with_profile and spec.profile is not None:
                out["parameters"] = {"min": list(spec.profile.min), "opt": list(spec.profile.opt),
                                     "max": list(spec.profile.max)}
            return out

        return {"name": self.name, "versions": [self.version], "platform": f"effattn_{self.runner.backend}",
                "inputs": [tensor(s, True) for s in self.runner.inputs.values()],
                "outputs": [tensor(s, False) for s in self.runner.outputs.values()],
                "parameters": {"max_batch_size": self.batcher.max_batch_size,
                               "max_queue_delay_ms": self.batcher.max_queue_delay * 1e3}}


def find_model(served: Mapping[str, ServedModel], name: str, version: str | None = None) -> ServedModel:
    """The served model ``name`` (at ``version``, if given), or a 404 naming the models served."""
    model = served.get(name)
    if model is None or (version and version != model.version):
        raise RequestError(404, f"unknown model {name!r}" + (f" version {version}" if version else "")
                           + f"; serving {sorted(served)}")
    return model


def model_statistics(served: Mapping[str, ServedModel], name: str = "", version: str = "") -> dict:
    """Triton's statistics response for one model, or for all when ``name`` is empty (400 if unknown, as Triton)."""
    if not name:
        return {"model_stats": [m.stats.json(m.name, m.version) for m in served.values()]}
    model = served.get(name)
    if model is None or (version and version != model.version):
        raise RequestError(400, f"requested model {name!r}" + (f" version {version}" if version else "")
                           + f" is not available; serving {sorted(served)}")
    return {"model_stats": [model.stats.json(model.name, model.version)]}


def repository_index(served: Mapping[str, ServedModel], ready_only: bool = False) -> list[dict]:
    """Triton's repository index: every served model, READY or UNAVAILABLE."""
    return [{"name": m.name, "version": m.version, "state": "READY" if m.ready else "UNAVAILABLE"}
            for m in served.values() if m.ready or not ready_only]


#: What ``effattn serve`` answers for protocol extensions it does not implement (Triton's status for each).
UNSUPPORTED = {
    "model_control": (503, "explicit model load / unload is not supported: effattn serve loads its models when it "
                           "starts (like Triton with --model-control-mode=none); restart it with other models"),
    "shared_memory": (400, "shared memory is not supported by effattn serve; send tensors in the request body "
                           "(binary tensor data)"),
    "trace": (400, "trace is not supported by effattn serve; use /metrics or the statistics extension"),
    "logging": (400, "logging settings are not supported by effattn serve; set -q or the log level at start"),
}


@dataclass
class Metrics:
    """Prometheus metrics in a registry of their own (one per app, so tests can run several)."""

    registry: Any = None
    requests: Any = None
    latency: Any = None
    batch: Any = None
    queue: Any = None
    inflight: Any = None

    @classmethod
    def create(cls) -> Metrics:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        registry = CollectorRegistry()
        return cls(
            registry,
            Counter("effattn_requests", "Inference requests by model and HTTP status", ["model", "code"],
                    registry=registry),
            Histogram("effattn_request_seconds", "Inference request latency, arrival to answer", ["model"],
                      buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10), registry=registry),
            Histogram("effattn_batch_size", "Items per engine call (dynamic batching)", ["model"],
                      buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64), registry=registry),
            Gauge("effattn_queue_depth", "Requests waiting to be batched", ["model"], registry=registry),
            Gauge("effattn_inflight_bytes", "Request bytes held by the server (HTTP and gRPC)", registry=registry),
        )

    def answered(self, served: Mapping[str, Any], model: str, status: int, seconds: float) -> None:
        """Count one answer (and feed the model's statistics: successes, and failures of the server's side
        (5xx) -- a request refused for its own fault (4xx) never reached the model, so Triton counts it in
        neither); unknown model names share one label, so clients cannot grow the label set."""
        label = model if model in served else "(unknown)"
        if model in served and (status == 200 or status >= 500):
            served[model].stats.answered(status == 200, int(seconds * 1e9))
        self.requests.labels(label, str(status)).inc()
        if status == 200:
            self.latency.labels(label).observe(seconds)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# ------------------------------------------------------------------------------------- the protocol
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
        head, binary = body[:n], body[n:]
    else:
        head, binary = body, b""
    try:
        request = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(400, f"malformed JSON in the request: {e}") from None
    except RecursionError:
        raise RequestError(400, "malformed JSON in the request: nested too deeply") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise RequestError(400, "the request must be a JSON object with a non-empty 'inputs' list")
    _parameters(request, "the request")
    if not isinstance(request.get("id", ""), str):
        raise RequestError(400, "the request's 'id' must be a string")
    return request, binary


def _parameters(obj: dict, where: str) -> dict:
    """``obj["parameters"]``: absent, or an object."""
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise RequestError(400, f"'parameters' of {where} must be an object, got {type(params).__name__}")
    return params


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def tensor_header(name: Any, shape: Any, datatype: Any, runner: Runner, max_bytes: int) -> tuple[np.dtype, int]:
    """Dtype and element count of one input tensor, after checking its name, shape and datatype (HTTP and gRPC)."""
    if not isinstance(name, str) or name not in runner.inputs:
        raise RequestError(400, f"unknown input {str(name)[:100]!r}; the model's inputs are {list(runner.inputs)}")
    if not isinstance(shape, (list, tuple)) or not all(_is_int(d) and d >= 0 for d in shape):
        raise RequestError(400, f"input {name!r}: 'shape' must be a list of non-negative integers, got "
                                f"{str(shape)[:100]}")
    expected = datatype_of(runner.inputs[name].dtype)
    if datatype != expected:
        raise RequestError(400, f"input {name!r} has datatype {str(datatype)[:20]!r}; the model takes {expected}")
    dtype = np.dtype(DATATYPES[expected])
    count = math.prod(int(d) for d in shape)  # Python ints: no overflow
    if count * dtype.itemsize > max_bytes:
        raise RequestError(400, f"input {name!r}: shape {list(shape)} of {expected} is {count * dtype.itemsize} "
                                f"bytes, more than a request may hold ({max_bytes})")
    return dtype, count


#: Which kinds of JSON numbers (numpy dtype kinds) an input of each kind accepts: no strings, no floats into ints.
_JSON_KINDS = {"f": "iuf", "i": "iu", "u": "iu", "b": "b"}


def _json_array(name: str, data: Any, dtype: np.dtype, count: int) -> np.ndarray:
    try:
        array = np.asarray(data)
    except (TypeError, ValueError) as e:  # ragged nesting
        raise RequestError(400, f"input {name!r}: 'data' is not a list of {datatype_of(dtype)} numbers "
                                f"(ragged nesting: {e})") from None
    if array.dtype.kind not in _JSON_KINDS[dtype.kind] and array.size:
        raise RequestError(400, f"input {name!r}: 'data' is not a list of {datatype_of(dtype)} numbers (it holds "
                                f"{array.dtype.name} values)")
    if array.size != count:
        raise RequestError(400, f"input {name!r}: 'data' has {array.size} elements, shape needs {count}")
    return array.astype(dtype, copy=False)


def decode_inputs(request: dict, binary: bytes, runner: Runner, max_bytes: int = 2**62) -> dict[str, np.ndarray]:
    """Input tensors by name, each checked against its declared shape and the model's datatype."""
    feed, offset = {}, 0
    for i, tensor in enumerate(request["inputs"]):
        if not isinstance(tensor, dict):
            raise RequestError(400, f"inputs[{i}] must be an object with name, shape, datatype")
        name, shape = tensor.get("name"), tensor.get("shape")
        dtype, count = tensor_header(name, shape, tensor.get("datatype"), runner, max_bytes)
        if name in feed:
            raise RequestError(400, f"input {name!r} is given twice")
        size = _parameters(tensor, f"input {name!r}").get("binary_data_size")
        if size is not None:
            if not _is_int(size) or size != count * dtype.itemsize:
                raise RequestError(400, f"input {name!r}: binary_data_size {str(size)[:40]} does not match shape "
                                        f"{shape} ({count * dtype.itemsize} bytes)")
            if offset + size > len(binary):
                raise RequestError(400, f"input {name!r}: truncated binary payload ({len(binary) - offset} of "
                                        f"{size} bytes present)")
            array = np.frombuffer(binary, dtype, count, offset)
            offset += size
        elif "data" in tensor:
            array = _json_array(name, tensor["data"], dtype, count)
        else:
            raise RequestError(400, f"input {name!r} has neither 'data' nor a binary_data_size parameter")
        feed[name] = array.reshape(shape)
    if offset != len(binary):
        raise RequestError(400, f"{len(binary) - offset} bytes of binary payload belong to no input")
    return feed


def _wanted_outputs(request: dict, outputs: Mapping[str, np.ndarray]) -> list[tuple[str, bool]]:
    """(name, binary?) of each output the request asks for (all, by default)."""
    default_binary = _parameters(request, "the request").get("binary_data_output", False)
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
        binary = _parameters(spec, f"output {name!r}").get("binary_data", default_binary)
        if not isinstance(binary, bool):
            raise RequestError(400, f"output {name!r}: binary_data must be true or false")
        chosen.append((name, binary))
    return chosen


def encode_outputs(request: dict, outputs: Mapping[str, np.ndarray], model: ServedModel) -> tuple[bytes, dict]:
    """Response body and headers: JSON, plus binary outputs where the request asked for them.

    Non-finite values in JSON outputs are written as ``NaN``/``Infinity``/``-Infinity`` (see the module doc)."""
    tensors, blobs = [], []
    for name, binary in _wanted_outputs(request, outputs):
        value = np.ascontiguousarray(outputs[name])
        entry = {"name": name, "datatype": datatype_of(value.dtype), "shape": list(value.shape)}
        if binary:
            blob = value.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = value.reshape(-1).tolist()
        tensors.append(entry)
    response = {"model_name": model.name, "model_version": model.version, "outputs": tensors}
    if "id" in request:
        response["id"] = request["id"]
    head = json.dumps(response).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(head))}


async def run_inference(model: ServedModel, feed: dict[str, np.ndarray], timeout_us: Any, timeout_s: float,
                        metrics: Metrics) -> dict[str, np.ndarray]:
    """Check the feed, queue it for the batcher and wait for its outputs; failures as RequestError.

    ``timeout_us`` is Triton's per-request ``timeout`` parameter (microseconds); it can only shorten
    the server's own ``timeout_s``. Shared by the HTTP and the gRPC front ends."""
    try:
        feed = model.runner.check_feed(feed)
    except InputError as e:
        raise RequestError(400, str(e)) from None
    if not isinstance(timeout_us, (int, float, type(None))) or isinstance(timeout_us, bool):
        raise RequestError(400, "the 'timeout' parameter must be a number of microseconds")
    metrics.queue.labels(model.name).set(model.batcher.depth)
    if isinstance(timeout_us, (int, float)) and not isinstance(timeout_us, bool) and timeout_us > 0:
        timeout_s = min(timeout_s, timeout_us / 1e6)
    try:
        return await asyncio.wait_for(model.batcher.submit(feed), timeout_s)
    except QueueFull as e:
        raise RequestError(503, f"model {model.name!r} is overloaded: {e}; retry later") from None
    except asyncio.TimeoutError:
        raise RequestError(504, f"request timed out after {timeout_s:g} s waiting for model {model.name!r}") from None
    except InputError as e:  # the request's fault; anything else from the engine is the server's (500)
        raise RequestError(400, str(e)) from None


# ------------------------------------------------------------------------------------------ the app
def create_app(models: Mapping[str, Runner], options: ServeOptions | None = None):
    """A Starlette app serving ``models`` (name -> Runner)."""
    from starlette.applications import Starlette
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    options = options or ServeOptions()
    metrics = Metrics.create()
    budget = ByteBudget(options.max_inflight_bytes)
    served: dict[str, ServedModel] = {}
    for name, runner in models.items():
        check_model_name(name)
        profile = runner.profile
        lo, hi = profile.batch_range if profile is not None else (1, 1)
        max_batch = min(options.max_batch_size, hi) if lo < hi else 1
        delay = options.max_queue_delay_ms / 1e3 if max_batch > 1 else 0.0
        stats = ModelStats()
        batcher = DynamicBatcher(runner.infer, max_batch_size=max_batch, max_queue_delay=delay,
                                 max_queue=options.max_queue, workers=options.instances,
                                 on_batch=lambda n, name=name: metrics.batch.labels(name).observe(n), stats=stats)
        config = served_config(name, runner, max_batch, round(delay * 1e6), options.instances)
        served[name] = ServedModel(name, runner, batcher, stats=stats, config=config)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    def model_of(request: Request) -> ServedModel:
        return find_model(served, request.path_params["name"], request.path_params.get("version"))

    def answering(handler):
        """``handler(request)``'s JSON answer, or its RequestError as a JSON error."""
        async def endpoint(request: Request):
            try:
                return JSONResponse(await handler(request))
            except RequestError as e:
                return error(e.status, str(e))
        return endpoint

    async def model_config(request: Request) -> dict:
        return model_of(request).config

    async def statistics(request: Request) -> dict:
        return model_statistics(served, request.path_params.get("name", ""), request.path_params.get("version", ""))

    async def index(request: Request) -> list:
        body = await small_body(request)
        try:
            ready_only = bool(body.strip()) and json.loads(body).get("ready") is True
        except (ValueError, AttributeError):
            raise RequestError(400, "the repository index request must be empty or a JSON object") from None
        return repository_index(served, ready_only)

    async def small_body(request: Request, limit: int = 64 * 1024) -> bytes:
        """The body of a control request (a few bytes of JSON), or 413 past ``limit``."""
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"a repository request body may hold at most {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def unsupported(extension: str):
        async def endpoint(request: Request):
            return error(*UNSUPPORTED[extension])
        return endpoint

    async def shared_memory_status(request: Request):
        return JSONResponse([])  # no region is ever registered (as Triton answers with none)

    async def shared_memory_unregister(request: Request):
        return Response(status_code=200, media_type="application/json")  # nothing to unregister (as Triton answers with none registered)

    async def live(request: Request):
        return JSONResponse({"live": True})

    async def ready(request: Request):
        ok = all(m.ready for m in served.values()) and not state["closing"]
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_metadata(request: Request):
        return JSONResponse({"name": "effattn", "version": __version__, "extensions": EXTENSIONS})

    async def model_metadata(request: Request):
        try:
            return JSONResponse(model_of(request).metadata())
        except RequestError as e:
            return error(e.status, str(e))

    async def model_ready(request: Request):
        try:
            model = model_of(request)
        except RequestError as e:
            return error(e.status, str(e))
        return JSONResponse({"name": model.name, "ready": model.ready}, status_code=200 if model.ready else 503)

    async def read_body(request: Request, held: list[int]) -> bytes:
        """The body, or 413 once it passes the limit, 503 if the server holds too many bytes already, 408 if
        it arrives slower than the timeout. A refused body is still read (and dropped, never kept), so the
        client, still sending, gets the answer. ``held`` collects the bytes taken from the in-flight budget."""
        declared = request.headers.get("content-length", "")
        refusal = _admit(int(declared), held) if declared.isdigit() else None
        chunks: list[bytes] = []

        async def collect() -> int:
            total = 0
            async for chunk in request.stream():
                total += len(chunk)
                if refusal is None and total <= options.max_request_bytes:
                    chunks.append(chunk)
            return total

        try:
            size = await asyncio.wait_for(collect(), options.timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(408, f"the request body did not arrive within {options.timeout_s:g} s") from None
        refusal = refusal or (_admit(size, held) if not held else None)
        if refusal is not None:
            raise refusal
        return b"".join(chunks)

    def _admit(size: int, held: list[int]) -> RequestError | None:
        """None if a body of ``size`` bytes may be held (and it is then taken from the budget), else why not."""
        if size > options.max_request_bytes:
            return RequestError(413, f"request body of {size} bytes is over the limit of "
                                     f"{options.max_request_bytes} bytes (--max-request-mb)")
        try:
            budget.take(size)
        except RequestError as e:
            return e
        held.append(size)
        return None

    def decode(model: ServedModel, body: bytes, header_length: str | None) -> tuple[dict, dict[str, np.ndarray]]:
        payload, binary = parse_infer_request(body, header_length)
        return payload, decode_inputs(payload, binary, model.runner, options.max_request_bytes)

    async def off_loop(size: int, fn, *args):
        """``fn(*args)``, in a worker thread when the data is big enough to stall the event loop."""
        return await asyncio.to_thread(fn, *args) if size > OFF_LOOP_BYTES else fn(*args)

    async def answer(request: Request, held: list[int]) -> Response:
        model = model_of(request)
        body = await read_body(request, held)
        encoding = request.headers.get("content-encoding")
        if encoding:
            inflated = await off_loop(len(body), decompress, body, encoding, options.max_request_bytes)
            if inflated is not body:
                budget.take(len(inflated))
                held.append(len(inflated))
            body = inflated
        payload, feed = await off_loop(len(body), decode, model, body, request.headers.get(HEADER_LENGTH.lower()))
        outputs = await run_inference(model, feed, _parameters(payload, "the request").get("timeout"),
                                      options.timeout_s, metrics)
        size = sum(v.nbytes for v in outputs.values())
        content, headers = await off_loop(size, encode_outputs, payload, outputs, model)
        return Response(content, headers=headers)

    async def infer(request: Request):
        start, held = time.perf_counter(), []
        name = request.path_params["name"]
        try:
            response = await answer(request, held)
        except RequestError as e:
            response = error(e.status, str(e))
        except ClientDisconnect:  # the client hung up: nothing to answer, nothing wrong here
            response = Response(status_code=499)
        except Exception as e:  # an engine failure must not take the server down
            log.exception("inference on %s failed", name)
            response = error(500, f"inference failed: {type(e).__name__}: {e}")
        finally:
            budget.give(sum(held))
        metrics.answered(served, name, response.status_code, time.perf_counter() - start)
        return response

    async def prometheus(request: Request):
        for name, model in served.items():
            metrics.queue.labels(name).set(model.batcher.depth)
        metrics.inflight.set(budget.used)
        return Response(metrics.text(), media_type="text/plain; version=0.0.4")

    state = {"closing": False}

    @asynccontextmanager
    async def lifespan(app):
        for model in served.values():
            model.batcher.start()
        grpc_server = None
        if options.grpc_port is not None:
            from .grpc_server import start_grpc

            grpc_server = await start_grpc(served, options, metrics, lambda: not state["closing"], budget)
        yield
        state["closing"] = True
        if grpc_server is not None:
            await grpc_server.stop(options.graceful_seconds)  # in-flight gRPC calls finish first
        for model in served.values():
            await model.batcher.stop()
            model.runner.close()

    routes = [
        Route("/v2/health/live", live), Route("/v2/health/ready", ready), Route("/v2", server_metadata),
        Route("/v2/models/stats", answering(statistics)),  # before /v2/models/{name}, as in Triton
        Route("/v2/models/{name}", model_metadata), Route("/v2/models/{name}/versions/{version}", model_metadata),
        Route("/v2/models/{name}/ready", model_ready),
        Route("/v2/models/{name}/versions/{version}/ready", model_ready),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
        Route("/v2/models/{name}/config", answering(model_config)),
        Route("/v2/models/{name}/versions/{version}/config", answering(model_config)),
        Route("/v2/models/{name}/stats", answering(statistics)),
        Route("/v2/models/{name}/versions/{version}/stats", answering(statistics)),
        Route("/v2/repository/index", answering(index), methods=["POST"]),
        *unsupported_routes(unsupported, shared_memory_status, shared_memory_unregister),
        Route("/metrics", prometheus),
    ]
    async def not_routed(request: Request, exc):
        return error(exc.status_code, exc.detail)  # 404 and 405 as JSON, like every other error

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_routed, 405: not_routed})
    app.state.served = served
    app.state.metrics = metrics
    return app


def unsupported_routes(unsupported, status, unregister) -> list:
    """Routes of the extensions effattn does not implement, answered as Triton answers without them."""
    from starlette.routing import Route

    routes = [Route(f"/v2/repository/models/{{name}}/{action}", unsupported("model_control"), methods=["POST"])
              for action in ("load", "unload")]
    for kind in ("systemsharedmemory", "cudasharedmemory"):
        routes += [Route(f"/v2/{kind}/status", status), Route(f"/v2/{kind}/region/{{region}}/status", status),
                   Route(f"/v2/{kind}/register", unsupported("shared_memory"), methods=["POST"]),
                   Route(f"/v2/{kind}/region/{{region}}/register", unsupported("shared_memory"), methods=["POST"]),
                   Route(f"/v2/{kind}/unregister", unregister, methods=["POST"]),
                   Route(f"/v2/{kind}/region/{{region}}/unregister", unregister, methods=["POST"])]
    routes += [Route(path, unsupported(ext), methods=["GET", "POST"]) for path, ext in (
        ("/v2/trace/setting", "trace"), ("/v2/models/{name}/trace/setting", "trace"), ("/v2/logging", "logging"))]
    return routes


def serve(models: Mapping[str, Runner], port: int = 8000, options: ServeOptions | None = None,
          log_level: str = "info", sock: socket.socket | None = None) -> None:
    """Run the server until SIGINT/SIGTERM; in-flight requests finish before it exits.

    ``sock``: a socket from :func:`listen` (bound before the models were loaded); else one is opened here."""
    import uvicorn

    options = options or ServeOptions()
    sock = sock or listen(options.host, port, "HTTP port")
    _raise_file_limit()
    app = create_app(models, options)
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on", http=_guarded_h11(),
                            timeout_graceful_shutdown=options.graceful_seconds,
                            limit_concurrency=options.max_connections, timeout_keep_alive=options.keep_alive_s)
    with sock:
        uvicorn.Server(config).run(sockets=[sock])


def _raise_file_limit() -> None:
    """Let the process hold as many sockets as the system allows: the soft limit on open files (often 1024)
    up to the hard one, so a flood of connections meets the connection limit and the head deadline first."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            log.info("could not raise the open-file limit from %d to %d", soft, hard)


def _guarded_h11():
    """uvicorn's h11 protocol with a deadline on each request's head: a connection that stays idle, or sends
    its request line and headers slowly, is closed ``timeout_keep_alive`` seconds after it opened (or after
    its last answer). uvicorn alone times only the idle gap after an answer, and any byte resets it."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._head_deadline = self.loop.time() + self.timeout_keep_alive
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._head_deadline = self.loop.time() + self.timeout_keep_alive

        def data_received(self, data: bytes) -> None:
            super().data_received(data)  # cancels the timer on any byte
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self._arm()  # the request head is not complete yet: the deadline still holds

        def _arm(self) -> None:
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_at(self._head_deadline, self.timeout_keep_alive_handler)

    return GuardedH11Protocol
