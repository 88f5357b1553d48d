"""``effattn serve`` over HTTP (Starlette + uvicorn): KServe v2 / Open Inference Protocol, binary tensor data
included, so ``tritonclient.http`` code runs unchanged here and against Triton. The wire format is
:mod:`.http_wire`, the shared checks :mod:`.protocol`, the limits uvicorn lacks :mod:`.uvicorn_guard`; models,
batchers and metrics are one :class:`~.server.Server`. Statuses, limits and endpoints: docs/serving.md."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping
from contextlib import asynccontextmanager

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from ..runtime.base import Runner
from .grpc_server import start_grpc
from .http_wire import (
    HEADER_LENGTH,
    decompress,
    encode_outputs,
    error_body,
    header_size,
    infer_target,
    load_json,
    read_infer_request,
    wanted_outputs,
)
from .protocol import EXTENSIONS, OFF_LOOP_BYTES, UNSUPPORTED, RequestError, parameters, timeout_parameter
from .server import ServedModel, ServeOptions, Server, deadline, listen
from .uvicorn_guard import guarded_protocol

__all__ = ["HttpApi", "ServeOptions", "create_app", "listen", "serve"]

log = logging.getLogger(__name__)

_JSON = [(b"content-type", b"application/json")]
_WANTED = {b"content-length", b"content-encoding", HEADER_LENGTH.lower().encode()}


class ClientGone(Exception):
    """The client hung up before its request body arrived."""


async def off_loop(size: int, fn, *args):
    """``fn(*args)``, in a worker thread when the data is big enough to stall the event loop."""
    return await asyncio.to_thread(fn, *args) if size > OFF_LOOP_BYTES else fn(*args)


class HttpApi:
    """The HTTP front end: an ASGI app that answers infer requests itself and hands the rest to Starlette."""

    def __init__(self, server: Server) -> None:
        self.server, self.options = server, server.options
        self.grpc = None
        self.stopping: asyncio.Future | None = None
        self.app = Starlette(
            routes=self.routes(),
            lifespan=self.lifespan,
            exception_handlers={404: self.not_routed, 405: self.not_routed},
        )
        self.app.state.server = server

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            target = infer_target(scope["path"])
            if target is not None:
                return await self.infer(receive, send, scope["headers"], *target)
        await self.app(scope, receive, send)

    @asynccontextmanager
    async def lifespan(self, app):
        self.server.start()
        if self.options.grpc_port is not None:
            self.grpc = await start_grpc(self.server)
        yield
        await self.begin_shutdown()

    def begin_shutdown(self) -> asyncio.Future:
        """Stop gRPC and the models, each within ``graceful_seconds`` from now, while HTTP connections drain
        (called when uvicorn's shutdown starts, and by the lifespan's end, which waits for it)."""
        stopping = self.stopping
        if stopping is None:
            self.server.closing = True  # not ready from now on
            grace = self.options.graceful_seconds
            stops = [self.server.stop(grace)] + ([self.grpc.stop(grace)] if self.grpc is not None else [])
            stopping = self.stopping = asyncio.ensure_future(asyncio.gather(*stops))
        return stopping

    # ------------------------------------------------------------------------------- inference
    async def infer(self, receive, send, headers, name: str, version: str | None) -> None:
        start, held = time.perf_counter(), list[int]()
        try:
            body, response_headers = await self.answer(receive, headers, name, version, held)
            status = 200
        except RequestError as e:
            status, body, response_headers = e.status, error_body(str(e)), _JSON
        except ClientGone:  # the client hung up: nothing to answer, nothing wrong here
            status, body, response_headers = 499, b"", []
        except Exception as e:  # an engine failure must not take the server down
            log.exception("inference on %s failed", name)
            status, body, response_headers = 500, error_body(f"inference failed: {type(e).__name__}: {e}"), _JSON
        finally:
            self.server.budget.give(sum(held))
        self.server.answered(name, status, time.perf_counter() - start)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*response_headers, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def answer(self, receive, raw_headers, name: str, version: str | None, held: list[int]):
        """Body and headers of the answer to one infer request; failures as RequestError."""
        model = self.server.model(name, version)
        headers = {}
        for key, value in raw_headers:
            if key in _WANTED and key.decode() not in headers:
                headers[key.decode()] = value.decode("latin-1")
        body = await self.read_body(receive, headers.get("content-length", ""), held)
        if "content-encoding" in headers:
            inflated = await off_loop(
                len(body), decompress, body, headers["content-encoding"], self.options.max_request_bytes
            )
            if inflated is not body:
                self.server.budget.take(len(inflated))
                held.append(len(inflated))
            body = inflated
        header_length = headers.get(HEADER_LENGTH.lower())
        json_size = header_size(HEADER_LENGTH, header_length) if header_length is not None else len(body)
        payload, feed = await off_loop(
            min(json_size, len(body)),
            read_infer_request,
            body,
            header_length,
            model.runner,
            self.options.max_request_bytes,
        )
        timeout = timeout_parameter(parameters(payload, "the request").get("timeout"))
        chosen = wanted_outputs(payload, model.runner.outputs)  # before the model runs: a bad list costs no run
        outputs = await self.server.infer(model, feed, timeout)
        json_size = sum(outputs[n].nbytes for n, binary in chosen if not binary)
        content, response_headers = await off_loop(
            json_size, encode_outputs, payload, outputs, chosen, model.name, model.version
        )
        return content, [(k.lower().encode(), v.encode()) for k, v in response_headers.items()]

    async def read_body(self, receive, declared: str, held: list[int]) -> bytes:
        """The body, or 413 once it passes the limit, 503 if the server holds too many bytes already, 408 if
        it arrives slower than the timeout. A refused body is still read (and dropped, never kept), so the
        client, still sending, gets the answer. ``held`` collects the bytes taken from the in-flight budget."""
        refusal = self.admit(header_size("Content-Length", declared), held) if declared else None
        limit, chunks, total = self.options.max_request_bytes, [], 0
        try:
            with deadline(self.options.timeout_s):
                more = True
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise ClientGone
                    chunk, more = message.get("body", b""), message.get("more_body", False)
                    total += len(chunk)
                    if refusal is None and total <= limit:
                        chunks.append(chunk)
        except TimeoutError:
            raise RequestError(408, f"the request body did not arrive within {self.options.timeout_s:g} s") from None
        refusal = refusal or (self.admit(total, held) if not held else None)
        if refusal is not None:
            raise refusal
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def admit(self, size: int, held: list[int]) -> RequestError | None:
        """None if a body of ``size`` bytes may be held (and it is then taken from the budget), else why not."""
        if size > self.options.max_request_bytes:
            return RequestError(
                413,
                f"request body of {size} bytes is over the limit of "
                f"{self.options.max_request_bytes} bytes (--max-request-mb)",
            )
        try:
            self.server.budget.take(size)
        except RequestError as e:
            return e
        held.append(size)
        return None

    # ---------------------------------------------------------------------------- control routes
    def routes(self) -> list[Route]:
        answering = self.answering
        infer = InferRoute(self)
        return [
            Route("/v2/health/live", self.live),
            Route("/v2/health/ready", self.ready),
            Route("/v2", self.server_metadata),
            Route("/v2/models/stats", answering(self.statistics)),  # before /v2/models/{name}, as in Triton
            Route("/v2/models/{name}", answering(self.model_metadata)),
            Route("/v2/models/{name}/versions/{version}", answering(self.model_metadata)),
            Route("/v2/models/{name}/ready", self.model_ready),
            Route("/v2/models/{name}/versions/{version}/ready", self.model_ready),
            Route("/v2/models/{name}/infer", infer, methods=["POST"]),
            Route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
            Route("/v2/models/{name}/config", answering(self.model_config)),
            Route("/v2/models/{name}/versions/{version}/config", answering(self.model_config)),
            Route("/v2/models/{name}/stats", answering(self.statistics)),
            Route("/v2/models/{name}/versions/{version}/stats", answering(self.statistics)),
            Route("/v2/repository/index", answering(self.index), methods=["POST"]),
            *unsupported_routes(),
            Route("/metrics", self.prometheus),
        ]

    @staticmethod
    def answering(handler):
        """``handler(request)``'s JSON answer, or its RequestError as a JSON error."""

        async def endpoint(request: Request):
            try:
                return JSONResponse(await handler(request))
            except RequestError as e:
                return error(e.status, str(e))

        return endpoint

    def model_of(self, request: Request) -> ServedModel:
        return self.server.model(request.path_params["name"], request.path_params.get("version"))

    async def model_config(self, request: Request) -> dict:
        return self.model_of(request).config

    async def model_metadata(self, request: Request) -> dict:
        return self.model_of(request).metadata()

    async def statistics(self, request: Request) -> dict:
        return self.server.statistics(request.path_params.get("name", ""), request.path_params.get("version", ""))

    async def index(self, request: Request) -> list:
        body = await small_body(request)
        query = load_json(body, "the repository index request") if body.strip() else {}
        if not isinstance(query, dict):
            raise RequestError(400, "the repository index request must be empty or a JSON object")
        return self.server.index(query.get("ready") is True)

    async def live(self, request: Request):
        return JSONResponse({"live": True})

    async def ready(self, request: Request):
        ok = self.server.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_metadata(self, request: Request):
        return JSONResponse({"name": "effattn", "version": __version__, "extensions": EXTENSIONS})

    async def model_ready(self, request: Request):
        try:
            model = self.model_of(request)
        except RequestError as e:
            return error(e.status, str(e))
        ok = self.server.model_ready(model)
        return JSONResponse({"name": model.name, "ready": ok}, status_code=200 if ok else 503)

    async def prometheus(self, request: Request):
        return Response(self.server.prometheus(), media_type="text/plain; version=0.0.4")

    @staticmethod
    async def not_routed(request: Request, exc):
        return error(exc.status_code, exc.detail)  # 404 and 405 as JSON, like every other error


class InferRoute:
    """The infer routes as Starlette sees them (methods other than POST get its 405); POSTs normally
    take the short path in :meth:`HttpApi.__call__` and never reach the router."""

    def __init__(self, api: HttpApi) -> None:
        self.api = api

    async def __call__(self, scope, receive, send) -> None:
        params = scope["path_params"]
        await self.api.infer(receive, send, scope["headers"], params["name"], params.get("version"))


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


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
    return Response(status_code=200, media_type="application/json")  # nothing to unregister (Triton: none registered)


def unsupported_routes() -> list[Route]:
    """Routes of the extensions effattn does not implement, answered as Triton answers without them."""
    routes = [
        Route(f"/v2/repository/models/{{name}}/{action}", unsupported("model_control"), methods=["POST"])
        for action in ("load", "unload")
    ]
    status, unregister = shared_memory_status, shared_memory_unregister
    for kind in ("systemsharedmemory", "cudasharedmemory"):
        routes += [
            Route(f"/v2/{kind}/status", status),
            Route(f"/v2/{kind}/region/{{region}}/status", status),
            Route(f"/v2/{kind}/register", unsupported("shared_memory"), methods=["POST"]),
            Route(f"/v2/{kind}/region/{{region}}/register", unsupported("shared_memory"), methods=["POST"]),
            Route(f"/v2/{kind}/unregister", unregister, methods=["POST"]),
            Route(f"/v2/{kind}/region/{{region}}/unregister", unregister, methods=["POST"]),
        ]
    routes += [
        Route(path, unsupported(ext), methods=["GET", "POST"])
        for path, ext in (
            ("/v2/trace/setting", "trace"),
            ("/v2/models/{name}/trace/setting", "trace"),
            ("/v2/logging", "logging"),
        )
    ]
    return routes


def create_app(models: Mapping[str, Runner], options: ServeOptions | None = None) -> HttpApi:
    """The ASGI app serving ``models`` (name -> Runner) over HTTP (and gRPC with ``options.grpc_port``)."""
    return HttpApi(Server(models, options))


def serve(
    models: Mapping[str, Runner],
    port: int = 8000,
    options: ServeOptions | None = None,
    log_level: str = "info",
    sock: socket.socket | None = None,
) -> None:
    """Run the server until SIGINT/SIGTERM; in-flight requests finish before it exits.

    ``sock``: a socket from :func:`listen` (bound before the models were loaded); else one is opened here."""
    options = options or ServeOptions()
    sock = sock or listen(options.host, port, "HTTP port")
    _raise_file_limit()
    app = create_app(models, options)
    # asyncio's loop even where uvloop is installed: why, docs/decisions.md#serving
    # uvicorn's hints say int seconds for both timeouts; it waits with asyncio, which takes fractions too
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        http=guarded_protocol(),
        loop="asyncio",
        limit_concurrency=options.max_connections,
        timeout_graceful_shutdown=options.graceful_seconds + ANSWER_MARGIN_S,  # type: ignore[arg-type]
        timeout_keep_alive=options.keep_alive_s,  # type: ignore[arg-type]
    )
    with sock:
        try:
            Uvicorn(config, app).run(sockets=[sock])
        finally:
            if app.server.abandoned:  # a thread stuck in an engine call would hold the interpreter's exit forever
                logging.shutdown()
                os._exit(1)


#: Past the grace, requests still waiting get their 503 within this long, before uvicorn drops connections.
ANSWER_MARGIN_S = 1.5


class Uvicorn(uvicorn.Server):
    """uvicorn's server, whose shutdown starts the app's own (:meth:`HttpApi.begin_shutdown`) at once, so models
    and gRPC drain while HTTP connections do, and the whole takes ``graceful_seconds`` plus a margin."""

    def __init__(self, config: uvicorn.Config, api: HttpApi) -> None:
        super().__init__(config)
        self.api = api

    async def shutdown(self, sockets=None) -> None:
        self.api.begin_shutdown()
        await super().shutdown(sockets)


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
