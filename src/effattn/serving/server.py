"""What ``effattn serve`` is apart from its transports: options, served models, metrics, and one :class:`Server`.
HTTP and gRPC hold the same :class:`Server`: models, batchers, byte budget, metrics, a "closing" flag and one
inference path (:meth:`Server.infer`)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import math
import reprlib
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ..errors import BackendError, ConfigError, InputError
from ..names import check_model_name
from ..runtime.base import Runner
from .batching import DynamicBatcher, QueueFull
from .protocol import ByteBudget, RequestError, datatype_of
from .repository import batch_limit, runner_tensors, served_config
from .stats import ModelStats

log = logging.getLogger(__name__)


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
        positive = {
            "max_batch_size": self.max_batch_size,
            "max_queue": self.max_queue,
            "instances": self.instances,
            "timeout": self.timeout_s,
            "max_request_bytes": self.max_request_bytes,
            "max_connections": self.max_connections,
            "keep_alive_s": self.keep_alive_s,
        }
        bad = [f"{k} {v}" for k, v in positive.items() if not (v > 0 and math.isfinite(v))]
        bad += [
            f"{k} {v}"
            for k, v in {
                "max_queue_delay_ms": self.max_queue_delay_ms,
                "graceful_seconds": self.graceful_seconds,
            }.items()
            if not (v >= 0 and math.isfinite(v))
        ]
        if bad:
            raise ConfigError(
                f"serve options out of range: {', '.join(bad)} (sizes, counts and times must be "
                "positive and finite; delays may be 0)"
            )
        if self.max_inflight_bytes < self.max_request_bytes:
            raise ConfigError(
                f"max_inflight_bytes ({self.max_inflight_bytes}) must be at least max_request_bytes "
                f"({self.max_request_bytes}), or no request of the largest size could ever run"
            )
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


def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS, Windows)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None


class TrimmingBudget(ByteBudget):
    """The byte budget, which also hands freed request memory back to the system once the server holds no request
    bytes: glibc keeps freed blocks in its arenas (one per thread that allocated: gRPC's, the decoding threads'),
    so big requests left the resting RSS up by about the budget (60 refused 32 MiB gRPC calls: 292 -> 712 MiB
    at rest; ``malloc_trim(0)`` brought it back to 284 MiB). A trim waits ``TRIM_DELAY_S`` for the answers
    to be sent and their buffers freed, and runs off the event loop."""

    TRIM_AFTER = 64 * 2**20  # bytes taken since the last trim before the next is worth it
    TRIM_DELAY_S = 0.5

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.passed, self.trims, self._trim = 0, 0, _malloc_trim()
        self._timer: asyncio.TimerHandle | None = None

    def take(self, n: int) -> None:
        super().take(n)
        self.passed += n

    def give(self, n: int) -> None:
        super().give(n)
        if self.used == 0 and self.passed >= self.TRIM_AFTER and self._timer is None and self._trim is not None:
            with contextlib.suppress(RuntimeError):  # no event loop (a budget outside a server): nothing to schedule
                self._timer = asyncio.get_running_loop().call_later(self.TRIM_DELAY_S, self._idle)

    def _idle(self) -> None:
        self._timer = None
        if self.used == 0:
            self.passed, self.trims = 0, self.trims + 1
            asyncio.get_running_loop().run_in_executor(None, self._trim, 0)


@dataclass
class ServedModel:
    name: str
    runner: Runner
    batcher: DynamicBatcher
    version: str = "1"
    stats: ModelStats = field(default_factory=ModelStats)
    config: dict = field(default_factory=dict)  # Triton's ModelConfig (JSON form), the one `effattn triton` writes

    @property
    def ready(self) -> bool:
        """Not while an engine call is stuck past the timeout (a client should go elsewhere, as for Triton)."""
        return not self.batcher.stuck

    def metadata(self) -> dict:
        def tensor(spec, with_profile: bool) -> dict:
            shape = [-1 if not isinstance(d, int) else d for d in (spec.shape or [])]
            out = {"name": spec.name, "datatype": datatype_of(spec.dtype), "shape": shape}
            if with_profile and spec.profile is not None:
                out["parameters"] = {
                    "min": list(spec.profile.min),
                    "opt": list(spec.profile.opt),
                    "max": list(spec.profile.max),
                }
            return out

        return {
            "name": self.name,
            "versions": [self.version],
            "platform": f"effattn_{self.runner.backend}",
            "inputs": [tensor(s, True) for s in self.runner.inputs.values()],
            "outputs": [tensor(s, False) for s in self.runner.outputs.values()],
            "parameters": {
                "max_batch_size": self.batcher.max_batch_size,
                "max_queue_delay_ms": self.batcher.max_queue_delay * 1e3,
            },
        }


@dataclass
class Metrics:
    """Prometheus metrics in a registry of their own (one per server, so tests can run several)."""

    registry: Any = None
    requests: Any = None
    latency: Any = None
    batch: Any = None
    queue: Any = None
    inflight: Any = None
    running: Any = None

    @classmethod
    def create(cls) -> Metrics:
        registry = CollectorRegistry()
        return cls(
            registry,
            Counter(
                "effattn_requests", "Inference requests by model and HTTP status", ["model", "code"], registry=registry
            ),
            Histogram(
                "effattn_request_seconds",
                "Inference request latency, arrival to answer",
                ["model"],
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                registry=registry,
            ),
            Histogram(
                "effattn_batch_size",
                "Items per engine call (dynamic batching)",
                ["model"],
                buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
                registry=registry,
            ),
            Gauge("effattn_queue_depth", "Requests waiting to be batched", ["model"], registry=registry),
            Gauge("effattn_inflight_bytes", "Request bytes held by the server (HTTP and gRPC)", registry=registry),
            Gauge("effattn_engine_calls", "Engine calls in progress", ["model"], registry=registry),
        )

    def text(self) -> bytes:
        return generate_latest(self.registry)


def serve_model(name: str, runner: Runner, options: ServeOptions, metrics: Metrics) -> ServedModel:
    """``runner`` with its batcher and its Triton config: batching up to the limit :func:`.repository.batch_limit`
    sets from the graph (none for a model without a shape profile: nothing says which batch sizes it takes).
    The runner's idle threads stop spinning (:meth:`Runner.stop_spinning`: ONNX Runtime on the CPU): between
    engine calls the server's own threads (HTTP, gRPC, batching) need the cores, and spinning threads took them
    (docs/benchmarks.md#serving)."""
    check_model_name(name)
    runner.stop_spinning()
    requested = options.max_batch_size if runner.profile is not None else 1
    tensors = runner_tensors(runner.inputs) + runner_tensors(runner.outputs)
    max_batch = max(1, batch_limit(requested, tensors, runner.profile))
    delay = options.max_queue_delay_ms / 1e3 if max_batch > 1 else 0.0
    stats = ModelStats()
    batch = metrics.batch.labels(name)
    batcher = DynamicBatcher(
        runner.infer,
        max_batch_size=max_batch,
        max_queue_delay=delay,
        max_queue=options.max_queue,
        workers=options.instances,
        on_batch=batch.observe,
        stats=stats,
        stuck_after=options.timeout_s,
        terminate=runner.terminate,
    )
    config = served_config(name, runner, max_batch, round(delay * 1e6), options.instances)
    return ServedModel(name, runner, batcher, stats=stats, config=config)


class Server:
    """The served models and everything the HTTP and gRPC front ends share."""

    def __init__(self, models: Mapping[str, Runner], options: ServeOptions | None = None) -> None:
        self.options = options or ServeOptions()
        self.metrics = Metrics.create()
        self.budget = TrimmingBudget(self.options.max_inflight_bytes)
        self.models = {name: serve_model(name, runner, self.options, self.metrics) for name, runner in models.items()}
        self.closing = False
        self.abandoned = 0  # engine calls left running at shutdown (their threads never returned)
        self._answers: dict[tuple[str, int], Any] = {}  # (model label, status) -> its counter child
        self._latency = {name: self.metrics.latency.labels(name) for name in self.models}

    def ready(self) -> bool:
        return not self.closing and all(m.ready for m in self.models.values())

    def model_ready(self, model: ServedModel) -> bool:
        return not self.closing and model.ready

    def start(self) -> None:
        for model in self.models.values():
            model.batcher.start()

    async def stop(self, grace: float | None = None) -> None:
        """Let every model finish what it holds within ``grace`` seconds, then stop it (:meth:`DynamicBatcher.stop`);
        a model with an engine call that never returned is left open and named in the log (:attr:`abandoned`)."""
        self.closing = True
        models = list(self.models.values())
        left = await asyncio.gather(*(m.batcher.stop(grace) for m in models))
        for model, calls in zip(models, left):
            if calls:
                log.warning(
                    "shutdown: abandoned %d engine call(s) of model %r still running after %g s (%s cannot "
                    "stop a run, or did not in time); the process exits without waiting for them",
                    calls,
                    model.name,
                    grace,
                    model.runner.backend,
                )
            else:
                model.runner.close()
        self.abandoned = sum(left)

    def model(self, name: str, version: str | None = None) -> ServedModel:
        """The served model ``name`` (at ``version``, if given), or a 404 naming the models served (400 for a
        name no model may have)."""
        model = self.models.get(name)
        if model is None or (version and version != model.version):
            try:
                check_model_name(name)  # a name no model could have (100 KB of it) is refused, not echoed whole
            except ConfigError as e:
                raise RequestError(400, str(e)) from None
            raise RequestError(
                404,
                f"unknown model {name!r}"
                + (f" version {version[:40]}" if version else "")
                + f"; serving {sorted(self.models)}",
            )
        return model

    def statistics(self, name: str = "", version: str = "") -> dict:
        """Triton's statistics response for one model, or for all when ``name`` is empty (400 if unknown, as Triton)."""
        if not name:
            return {"model_stats": [m.stats.json(m.name, m.version) for m in self.models.values()]}
        model = self.models.get(name)
        if model is None or (version and version != model.version):
            raise RequestError(
                400,
                f"requested model {reprlib.repr(name)}"
                + (f" version {version[:40]}" if version else "")
                + f" is not available; serving {sorted(self.models)}",
            )
        return {"model_stats": [model.stats.json(model.name, model.version)]}

    def index(self, ready_only: bool = False) -> list[dict]:
        """Triton's repository index: every served model, READY or UNAVAILABLE."""
        return [
            {"name": m.name, "version": m.version, "state": "READY" if m.ready else "UNAVAILABLE"}
            for m in self.models.values()
            if m.ready or not ready_only
        ]

    def answered(self, model: str, status: int, seconds: float) -> None:
        """Count one answer (and feed the model's statistics: successes, and failures of the server's side
        (5xx) -- a request refused for its own fault (4xx) never reached the model, so Triton counts it in
        neither); unknown model names share one label, so clients cannot grow the label set."""
        served = self.models.get(model)
        label = model if served is not None else "(unknown)"
        if served is not None and (status == 200 or status >= 500):
            served.stats.answered(status == 200, int(seconds * 1e9))
        counter = self._answers.get((label, status))
        if counter is None:
            counter = self._answers[label, status] = self.metrics.requests.labels(label, str(status))
        counter.inc()
        if status == 200:
            self._latency[label].observe(seconds)

    def prometheus(self) -> bytes:
        for name, model in self.models.items():
            self.metrics.queue.labels(name).set(model.batcher.depth)
            self.metrics.running.labels(name).set(model.batcher.running)
        self.metrics.inflight.set(self.budget.used)
        return self.metrics.text()

    async def infer(
        self, model: ServedModel, feed: dict[str, np.ndarray], timeout_s: float | None = None
    ) -> dict[str, np.ndarray]:
        """Check the feed, queue it for the batcher and wait for its outputs; failures as RequestError.

        ``timeout_s`` (from Triton's per-request ``timeout``) can only shorten the server's own timeout."""
        try:
            feed = model.runner.check_feed(feed)
            check_dimensions(feed, model.runner.inputs)
        except InputError as e:
            raise RequestError(400, str(e)) from None
        limit = min(self.options.timeout_s, timeout_s) if timeout_s else self.options.timeout_s
        try:
            with deadline(limit):
                return await model.batcher.submit(feed)
        except QueueFull as e:
            raise RequestError(503, f"model {model.name!r} is overloaded: {e}; retry later") from None
        except TimeoutError:
            raise RequestError(504, f"request timed out after {limit:g} s waiting for model {model.name!r}") from None
        except InputError as e:  # the request's fault; anything else from the engine is the server's (500)
            raise RequestError(400, str(e)) from None


def check_dimensions(feed: Mapping[str, np.ndarray], specs: Mapping) -> None:
    """InputError naming both inputs when a symbolic dimension of the graph has two sizes in one request
    (as Triton refuses inputs whose batch sizes differ): the graph says they are one size, and a batch
    would stack one request's rows against another's."""
    seen: dict[str, tuple[str, int, int]] = {}
    for name, spec in specs.items():
        for axis, dim in enumerate(spec.shape or ()):
            if not isinstance(dim, str):
                continue
            size = feed[name].shape[axis]
            first, first_axis, first_size = seen.setdefault(dim, (name, axis, size))
            if size != first_size:
                raise InputError(
                    f"inputs {first!r} and {name!r} disagree on dimension {dim!r}: {first_size} in "
                    f"{first!r} (axis {first_axis}), {size} in {name!r} (axis {axis}); the model's "
                    "graph says they are the same size"
                )


class deadline:  # noqa: N801  (used as a function: ``with deadline(s):``, like asyncio.timeout)
    """``with deadline(s):`` -- the block's await is cancelled after ``s`` seconds and TimeoutError raised
    (asyncio.timeout, also on Python 3.10): one timer per use, no task, so it is cheap per request."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __enter__(self) -> deadline:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("deadline() is for a block inside an asyncio task")
        self.task, self.fired = task, False
        self.handle = self.task.get_loop().call_later(self.seconds, self._fire)
        return self

    def _fire(self) -> None:
        self.fired = True
        self.task.cancel()

    def __exit__(self, kind, exc, tb) -> None:  # None: exceptions go on
        self.handle.cancel()
        if self.fired and kind is asyncio.CancelledError:  # our cancel, not one from outside
            if hasattr(self.task, "uncancel"):
                self.task.uncancel()
            raise TimeoutError from None
