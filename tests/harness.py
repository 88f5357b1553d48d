"""Start ``effattn serve`` in a subprocess on 127.0.0.1 and a free port, and plain HTTP calls to it: a harness for
the tests and the serving benchmarks (benchmarks/serve_*.py, triton_*.py), not part of the package."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager, nullcontext
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 30):
    """(status, headers, body) of a plain HTTP call; error statuses are returned, not raised."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def error_of(body: bytes) -> str:
    return json.loads(body)["error"]


@contextmanager
def running_server(models: dict[str, Path], *args: str, startup_timeout: float = 60.0, log: Path | None = None):
    """Yield (process, base_url) of a server serving ``models``; stop it (SIGTERM) afterwards.

    ``log``: write the server's stderr to this file (to read while it runs) instead of a pipe."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "effattn",
        "serve",
        *(f"{n}={p}" for n, p in models.items()),
        "--port",
        str(port),
        "--device",
        "cpu",
        "--threads",
        "1",
        "-q",
        *args,
    ]
    # the server holds its own descriptor of the log; ours closes once it has started
    with open(log, "w") if log is not None else nullcontext(subprocess.PIPE) as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"}
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + startup_timeout
    try:
        while True:
            if process.poll() is not None:
                said = process.stderr.read() if log is None else Path(log).read_text()
                raise RuntimeError(f"server exited with {process.returncode}: {said[-2000:]}")
            try:
                if http("GET", base + "/v2/health/ready", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become ready in time")
            time.sleep(0.1)
        yield process, base
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        process.stdout.close()
        if process.stderr is not None:
            process.stderr.close()
