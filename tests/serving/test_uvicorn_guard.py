"""The uvicorn internals effattn.serving.uvicorn_guard relies on are there in the installed uvicorn: a uvicorn
outside the tested range (pyproject.toml's bound) fails here, naming what it lacks. (What the guard does
is tested against a running server: tests/serving/test_hostile.py.)"""

from __future__ import annotations

import asyncio
import operator

import pytest
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from effattn.errors import BackendError
from effattn.serving import uvicorn_guard
from effattn.serving.uvicorn_guard import ATTRIBUTES, HeadWithBody, guarded_protocol, missing_internals


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _app(scope, receive, send) -> None:
    await asyncio.sleep(3600)  # the test looks at the connection while its request is open


@pytest.mark.parametrize("base", [H11Protocol, HttpToolsProtocol])
def test_the_installed_uvicorn_has_every_method_the_guard_uses(base):
    assert missing_internals(base) == [], f"uvicorn {uvicorn.__version__} lacks these; see pyproject.toml's bound"


@pytest.mark.parametrize("protocol", [uvicorn_guard.GuardedH11Protocol, guarded_protocol()], ids=["h11", "httptools"])
def test_a_live_connection_has_every_attribute_the_guard_uses(protocol):
    base = next(c for c in protocol.__mro__ if c.__name__ in ATTRIBUTES)

    async def connection():
        config = uvicorn.Config(_app, lifespan="off", timeout_keep_alive=5)
        config.load()
        guarded = protocol(config, ServerState(), {})
        guarded.connection_made(Transport())
        guarded.data_received(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0)
        for name in ATTRIBUTES[base.__name__]:
            try:
                value = operator.attrgetter(name)(guarded)
            except AttributeError:
                pytest.fail(
                    f"uvicorn {uvicorn.__version__}: a {base.__name__} connection has no {name!r}, which "
                    "effattn.serving.uvicorn_guard relies on; install a release in pyproject.toml's range"
                )
            assert value is not None or name == "timeout_keep_alive_task", name
        if base is HttpToolsProtocol:
            assert isinstance(guarded.cycle.transport, HeadWithBody)  # the answer leaves head and body together
        for task in list(guarded.tasks):
            task.cancel()
        guarded.connection_lost(None)

    asyncio.run(connection())


def test_a_uvicorn_without_an_internal_is_refused_by_name(monkeypatch):
    monkeypatch.delattr(HttpToolsProtocol, "_unset_keepalive_if_required")
    assert missing_internals(HttpToolsProtocol) == ["HttpToolsProtocol._unset_keepalive_if_required"]
    with pytest.raises(
        BackendError,
        match=r"lacks HttpToolsProtocol\._unset_keepalive_if_required, .*pip install "
        r"'uvicorn[<>=.,0-9]*<0\.56[<>=.,0-9]*'",
    ):  # pyproject.toml's bound
        guarded_protocol()
