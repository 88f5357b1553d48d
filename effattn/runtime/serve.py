"""``effattn serve``: a KServe v2 / Open Inference Protocol server over HTTP (Starlette + uvicorn).

It speaks the protocol Triton speaks, including the binary tensor data extension, so client code
written with ``tritonclient.http`` runs unchanged against this server and against Triton. Every
model gets a :class:`~effattn.runtime.batching.DynamicBatcher`. Every bad request is answered with
a status and a one-line ``{"error": ...}`` and the server goes on serving:

- 400: malformed JSON, unknown tensor name, wrong datatype/shape, truncated binary payload
  (and every input check of :meth:`Runner.check_feed`: out-of-profile sizes, ranks, ...);
- 404: unknown model; 413: request body over the limit; 503: queue full or shutting down;
- 504: the request waited longer than its timeout.

Prometheus text at ``/metrics``: requests by model and status, latency histogram, batch sizes.
With ``grpc_port`` the same models are served over KServe v2 gRPC too (:mod:`.serve_grpc`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import __version__
from ..errors import EffattnError, InputError
from .base import Runner
from .batching import DynamicBatcher, QueueFull

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


@dataclass
class ServedModel:
    name: str
    runner: Runner
    batcher: DynamicBatcher
    version: str = "1"
    ready: bool = True

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


@dataclass
class Metrics:
    """Prometheus metrics in a registry of their own (one per app, so tests can run several)."""

    registry: Any = None
    requests: Any = None
    latency: Any = None
    batch: Any = None
    queue: Any = None

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
        )

    def answered(self, served: Mapping[str, Any], model: str, status: int, seconds: float) -> None:
        """Count one answer; unknown model names share one label, so clients cannot grow the label set."""
        label = model if model in served else "(unknown)"
        self.requests.labels(label, str(status)).inc()
        if status == 200:
            self.latency.labels(label).observe(seconds)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# ------------------------------------------------------------------------------------- the protocol
def parse_infer_request(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON part and the binary part of an infer request body (binary tensor data extension)."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise RequestError(400, f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
        if not 0 <= n <= len(body):
            raise RequestError(400, f"{HEADER_LENGTH} is {n} but the body has only {len(body)} bytes")
        head, binary = body[:n], body[n:]
    else:
        head, binary = body, b""
    try:
        request = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(400, f"malformed JSON in the request: {e}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise RequestError(400, "the request must be a JSON object with a non-empty 'inputs' list")
    return request, binary


def decode_inputs(request: dict, binary: bytes, runner: Runner) -> dict[str, np.ndarray]:
    """Input tensors by name, each checked against its declared shape and the model's datatype."""
    feed, offset = {}, 0
    for i, tensor in enumerate(request["inputs"]):
        if not isinstance(tensor, dict):
            raise RequestError(400, f"inputs[{i}] must be an object with name, shape, datatype")
        name, shape, datatype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
        if name not in runner.inputs:
            raise RequestError(400, f"unknown input {name!r}; the model's inputs are {list(runner.inputs)}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise RequestError(400, f"input {name!r}: 'shape' must be a list of non-negative integers, got {shape!r}")
        expected = datatype_of(runner.inputs[name].dtype)
        if datatype != expected:
            raise RequestError(400, f"input {name!r} has datatype {datatype!r}; the model takes {expected}")
        dtype = np.dtype(DATATYPES[expected])
        count = int(np.prod(shape))
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if size != count * dtype.itemsize:
                raise RequestError(400, f"input {name!r}: binary_data_size {size} does not match shape {shape} of "
                                        f"{expected} ({count * dtype.itemsize} bytes)")
            if offset + size > len(binary):
                raise RequestError(400, f"input {name!r}: truncated binary payload ({len(binary) - offset} of "
                                        f"{size} bytes present)")
            array = np.frombuffer(binary, dtype, count, offset).reshape(shape)
            offset += size
        else:
            if "data" not in tensor:
                raise RequestError(400, f"input {name!r} has neither 'data' nor a binary_data_size parameter")
            try:
                array = np.asarray(tensor["data"], dtype=dtype)
            except (TypeError, ValueError) as e:
                raise RequestError(400, f"input {name!r}: 'data' is not a list of {expected} numbers ({e})") from None
            if array.size != count:
                raise RequestError(400, f"input {name!r}: 'data' has {array.size} elements, shape {shape} needs {count}")
            array = array.reshape(shape)
        if name in feed:
            raise RequestError(400, f"input {name!r} is given twice")
        feed[name] = array
    if offset != len(binary):
        raise RequestError(400, f"{len(binary) - offset} bytes of binary payload belong to no input")
    return feed


def encode_outputs(request: dict, outputs: Mapping[str, np.ndarray], model: ServedModel) -> tuple[bytes, dict]:
    """Response body and headers: JSON, plus binary outputs where the request asked for them."""
    wanted = request.get("outputs")
    default_binary = bool((request.get("parameters") or {}).get("binary_data_output", False))
    if wanted is None:
        wanted = [{"name": n} for n in outputs]
    elif not isinstance(wanted, list):
        raise RequestError(400, "'outputs' must be a list")
    tensors, blobs = [], []
    for spec in wanted:
        name = spec.get("name") if isinstance(spec, dict) else None
        if name not in outputs:
            raise RequestError(400, f"unknown output {name!r}; the model's outputs are {list(outputs)}")
        value = np.ascontiguousarray(outputs[name])
        entry = {"name": name, "datatype": datatype_of(value.dtype), "shape": list(value.shape)}
        if (spec.get("parameters") or {}).get("binary_data", default_binary):
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
    metrics.queue.labels(model.name).set(model.batcher.depth)
    if isinstance(timeout_us, (int, float)) and not isinstance(timeout_us, bool) and timeout_us > 0:
        timeout_s = min(timeout_s, timeout_us / 1e6)
    try:
        return await asyncio.wait_for(model.batcher.submit(feed), timeout_s)
    except QueueFull as e:
        raise RequestError(503, f"model {model.name!r} is overloaded: {e}; retry later") from None
    except asyncio.TimeoutError:
        raise RequestError(504, f"request timed out after {timeout_s:g} s waiting for model {model.name!r}") from None
    except EffattnError as e:
        raise RequestError(400, str(e)) from None


# ------------------------------------------------------------------------------------------ the app
def create_app(models: Mapping[str, Runner], options: ServeOptions | None = None):
    """A Starlette app serving ``models`` (name -> Runner)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    options = options or ServeOptions()
    metrics = Metrics.create()
    served: dict[str, ServedModel] = {}
    for name, runner in models.items():
        profile = runner.profile
        lo, hi = profile.batch_range if profile is not None else (1, 1)
        max_batch = min(options.max_batch_size, hi) if lo < hi else 1
        batcher = DynamicBatcher(runner.infer, max_batch_size=max_batch,
                                 max_queue_delay=options.max_queue_delay_ms / 1e3 if max_batch > 1 else 0.0,
                                 max_queue=options.max_queue, workers=options.instances,
                                 on_batch=lambda n, name=name: metrics.batch.labels(name).observe(n))
        served[name] = ServedModel(name, runner, batcher)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    def model_of(request: Request) -> ServedModel:
        name = request.path_params["name"]
        model = served.get(name)
        version = request.path_params.get("version")
        if model is None or (version is not None and version != model.version):
            raise RequestError(404, f"unknown model {name!r}" + (f" version {version}" if version else "")
                               + f"; serving {sorted(served)}")
        return model

    async def live(request: Request):
        return JSONResponse({"live": True})

    async def ready(request: Request):
        ok = all(m.ready for m in served.values()) and not state["closing"]
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_metadata(request: Request):
        return JSONResponse({"name": "effattn", "version": __version__, "extensions": ["binary_tensor_data"]})

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

    async def read_body(request: Request) -> bytes:
        """The body, or 413 once it passes the limit. The rest is read and dropped (not kept), so the
        client, still sending, gets the answer instead of a reset connection."""
        declared = request.headers.get("content-length")
        chunks, size = [], 0
        if declared and declared.isdigit() and int(declared) > options.max_request_bytes:
            size = int(declared)
        async for chunk in request.stream():
            if size <= options.max_request_bytes:
                size += len(chunk)
                chunks.append(chunk)
        if size > options.max_request_bytes:
            raise RequestError(413, f"request body of {size} bytes is over the limit of "
                                    f"{options.max_request_bytes} bytes (--max-request-mb)")
        return b"".join(chunks)

    async def infer(request: Request):
        start = time.perf_counter()
        name = request.path_params["name"]
        try:
            model = model_of(request)
            body = await read_body(request)
            payload, binary = parse_infer_request(body, request.headers.get(HEADER_LENGTH.lower()))
            feed = decode_inputs(payload, binary, model.runner)
            outputs = await run_inference(model, feed, (payload.get("parameters") or {}).get("timeout"),
                                          options.timeout_s, metrics)
            content, headers = encode_outputs(payload, outputs, model)
            response = Response(content, headers=headers)
        except RequestError as e:
            response = error(e.status, str(e))
        except Exception as e:  # an engine failure must not take the server down
            log.exception("inference on %s failed", name)
            response = error(500, f"inference failed: {type(e).__name__}: {e}")
        metrics.answered(served, name, response.status_code, time.perf_counter() - start)
        return response

    async def prometheus(request: Request):
        for name, model in served.items():
            metrics.queue.labels(name).set(model.batcher.depth)
        return Response(metrics.text(), media_type="text/plain; version=0.0.4")

    state = {"closing": False}

    @asynccontextmanager
    async def lifespan(app):
        for model in served.values():
            model.batcher.start()
        grpc_server = None
        if options.grpc_port is not None:
            from .serve_grpc import start_grpc

            grpc_server = await start_grpc(served, options.host, options.grpc_port, options.timeout_s, metrics,
                                           lambda: not state["closing"], options.max_request_bytes)
        yield
        state["closing"] = True
        if grpc_server is not None:
            await grpc_server.stop(options.graceful_seconds)  # in-flight gRPC calls finish first
        for model in served.values():
            await model.batcher.stop()
            model.runner.close()

    routes = [
        Route("/v2/health/live", live), Route("/v2/health/ready", ready), Route("/v2", server_metadata),
        Route("/v2/models/{name}", model_metadata), Route("/v2/models/{name}/versions/{version}", model_metadata),
        Route("/v2/models/{name}/ready", model_ready),
        Route("/v2/models/{name}/versions/{version}/ready", model_ready),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
        Route("/metrics", prometheus),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.served = served
    app.state.metrics = metrics
    return app


def serve(models: Mapping[str, Runner], port: int = 8000, options: ServeOptions | None = None,
          log_level: str = "info") -> None:
    """Run the server until SIGINT/SIGTERM; in-flight requests finish before it exits."""
    import uvicorn

    options = options or ServeOptions()
    app = create_app(models, options)
    config = uvicorn.Config(app, host=options.host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=options.graceful_seconds, lifespan="on")
    uvicorn.Server(config).run()
