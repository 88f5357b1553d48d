"""Limits uvicorn lacks, mixed into its HTTP protocols: a deadline and a size cap on each request head, and a
response head that leaves with its body. They rely on uvicorn internals (:data:`METHODS`, :data:`ATTRIBUTES`),
so pyproject.toml bounds uvicorn to the tested range and :func:`guarded_protocol` refuses a uvicorn that lacks
one, naming it (tests/serving/test_uvicorn_guard.py checks the installed uvicorn on a live connection).
"""

from __future__ import annotations

import asyncio
from importlib.metadata import PackageNotFoundError, requires
from typing import TYPE_CHECKING, Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import BackendError
from .http_wire import error_body

__all__ = ["ATTRIBUTES", "MAX_HEAD_BYTES", "METHODS", "HeadWithBody", "guarded_protocol", "missing_internals"]

#: The most bytes a request head (request line and headers) may take, as common servers cap it (64 KiB).
MAX_HEAD_BYTES = 64 * 1024

#: Methods of uvicorn's HTTP protocol classes the guard overrides or calls (``on_headers_complete``: httptools).
METHODS = (
    "connection_made",
    "data_received",
    "on_response_complete",
    "_unset_keepalive_if_required",
    "timeout_keep_alive_handler",
)

#: Attributes a uvicorn connection has, which the guard reads or sets (``conn``: h11's connection;
#: ``cycle.transport``: where httptools' current request writes its answer).
ATTRIBUTES = {
    "H11Protocol": ("loop", "transport", "timeout_keep_alive", "timeout_keep_alive_task", "conn"),
    "HttpToolsProtocol": (
        "loop",
        "transport",
        "timeout_keep_alive",
        "timeout_keep_alive_task",
        "cycle",
        "cycle.transport",
    ),
}


def missing_internals(protocol: type) -> list[str]:
    """``protocol``'s missing :data:`METHODS`, as ``Class.name`` (attributes are set per connection, so only a
    live connection shows them: the tests check those)."""
    methods = METHODS + (("on_headers_complete",) if protocol.__name__ == "HttpToolsProtocol" else ())
    return [f"{protocol.__name__}.{name}" for name in methods if not callable(getattr(protocol, name, None))]


def tested_uvicorn() -> str:
    """The uvicorn requirement effattn is installed with (pyproject.toml's bound: the releases tested)."""
    try:
        found = [r.split(";")[0].strip() for r in requires("effattn") or () if r.startswith("uvicorn")]
    except PackageNotFoundError:  # pragma: no cover - run from a source tree that was never installed
        found = []
    return found[0] if found else "uvicorn"


def _checked(protocol: type) -> type:
    missing = missing_internals(protocol)
    if missing:
        raise BackendError(
            f"uvicorn {uvicorn.__version__} lacks {', '.join(missing)}, which effattn serve's "
            f"request limits rely on; install a tested release: pip install '{tested_uvicorn()}'"
        )
    return protocol


if TYPE_CHECKING:

    class _Connection:
        """What the mixins below use of the uvicorn protocol they are mixed into (for type checkers only)."""

        loop: asyncio.AbstractEventLoop
        transport: asyncio.Transport
        timeout_keep_alive: int
        timeout_keep_alive_task: asyncio.TimerHandle | None

        def connection_made(self, transport: asyncio.BaseTransport) -> None: ...
        def data_received(self, data: bytes) -> None: ...
        def on_response_complete(self) -> None: ...
        def timeout_keep_alive_handler(self) -> None: ...
        def _unset_keepalive_if_required(self) -> None: ...
        def head_open(self) -> bool: ...
else:
    _Connection = object


class HeadDeadline(_Connection):
    """A deadline on each request's head, mixed into uvicorn's HTTP protocols: a connection that stays idle,
    or sends its request line and headers slowly, is closed ``timeout_keep_alive`` seconds after it opened
    (or after its last answer). uvicorn alone times only the idle gap after an answer, and any byte resets it.

    A protocol class says whether the head is still open (:meth:`head_open`); the rest is shared."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._head_deadline = self.loop.time() + self.timeout_keep_alive
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._head_deadline = self.loop.time() + self.timeout_keep_alive
        if self.head_open() and not self.transport.is_closing():
            self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # cancels the timer on any byte
        if self.head_open() and not self.transport.is_closing():
            self._arm()  # the request head is not complete yet: the deadline still holds

    def _arm(self) -> None:
        self._unset_keepalive_if_required()
        self.timeout_keep_alive_task = self.loop.call_at(self._head_deadline, self.timeout_keep_alive_handler)


class HeadLimit(_Connection):
    """A cap on each request head, mixed into uvicorn's HTTP protocols: httptools buffers a head without
    limit (a 39 MiB header was accepted), so a head that passes :data:`MAX_HEAD_BYTES` is answered 431 and
    its connection closed, unparsed. Head bytes are those that arrive while :meth:`head_open` holds, up to
    the blank line that ends the head."""

    _head_bytes = 0

    def data_received(self, data: bytes) -> None:
        if self.head_open():
            end = data.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else end + 4
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse_head()
                return
        super().data_received(data)
        if not self.head_open():
            self._head_bytes = 0

    def _refuse_head(self) -> None:
        body = error_body(f"the request head (request line and headers) is over {MAX_HEAD_BYTES} bytes")
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        self.transport.close()


class GuardedH11Protocol(HeadLimit, HeadDeadline, H11Protocol):
    def head_open(self) -> bool:
        return self.conn.their_state is h11.IDLE


class HeadWithBody:
    """A response's transport that holds its head until the body's first write in the same loop turn, so
    head and body leave in one send (one packet and one wake-up for the client, not two); a head with
    no body in that turn is written at its end. Everything else is the connection's own transport."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport, self._loop = transport, loop
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head + data)
        elif data[:5] == b"HTTP/":
            self._head = data
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def guarded_protocol() -> type:
    """uvicorn's httptools protocol with the head deadline where httptools is installed, else its h11 one;
    :class:`~effattn.errors.BackendError` naming what is missing if this uvicorn lacks an internal they use."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return _checked(GuardedH11Protocol)
    _checked(HttpToolsProtocol)

    class GuardedHttpToolsProtocol(HeadLimit, HeadDeadline, HttpToolsProtocol):
        """Heads parsed against answers sent: equal while the connection waits for (the rest of) a head."""

        _heads = _answers = 0

        def on_headers_complete(self) -> None:
            self._heads += 1
            cycle = self.cycle
            super().on_headers_complete()
            if self.cycle is not cycle:  # a new request: its answer goes out through a coalescing transport
                self.cycle.transport = HeadWithBody(self.transport, self.loop)  # type: ignore[assignment]

        def on_response_complete(self) -> None:
            self._answers += 1
            super().on_response_complete()

        def head_open(self) -> bool:
            return self._heads == self._answers

    return GuardedHttpToolsProtocol
