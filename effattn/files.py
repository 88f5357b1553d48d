"""Writing output files whole or not at all, even when the process is told to stop.

Every file effattn writes goes through :func:`atomic_output`: the data goes to a hidden temporary
file beside the target, which replaces the target in one rename only when everything succeeded. On
an error, Ctrl-C, SIGTERM or SIGHUP the temporary file is removed; a signal is then delivered again
with its previous handler, so the process ends as it would have, minus the partial file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from .errors import FileExistsNoForceError

_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class _Terminated(BaseException):
    """Raised in the main thread by SIGTERM/SIGHUP while an output is being written."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum, frame) -> None:
    raise _Terminated(signum)


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into an exception (main thread, default handlers only) so cleanup runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    replaced = [s for s, h in previous.items() if h is signal.SIG_DFL]
    for s in replaced:
        signal.signal(s, _raise_terminated)
    try:
        yield
    except _Terminated as e:
        for s in replaced:
            signal.signal(s, previous[s])
        replaced = []
        os.kill(os.getpid(), e.signum)  # the default action now: the process ends by the signal it got
        raise
    finally:
        for s in replaced:
            signal.signal(s, previous[s])


def check_writable(path: str | Path, force: bool) -> None:
    """Refuse to replace an existing ``path`` unless ``force``; the message says how to allow it."""
    if Path(path).exists() and not force:
        raise FileExistsNoForceError(f"{path} exists; pass --force to overwrite it (force=True in Python)")


@contextlib.contextmanager
def atomic_output(path: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path`` (same suffix) to write; it becomes ``path`` on success.

    Refuses an existing ``path`` without ``force`` (checked before and after writing)."""
    path = Path(path)
    check_writable(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _signals_raise():
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        try:
            yield tmp
            check_writable(path, force)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(path: str | Path, force: bool = False, owned: str | None = None) -> Iterator[Path]:
    """Like :func:`atomic_output` for a folder: fill the yielded hidden folder; it then replaces ``path``.

    With ``force`` an existing ``path`` is replaced only if it is a real folder (not a link) holding the file
    ``owned`` - i.e. one this kind of command wrote - so nothing else is ever deleted."""
    path = Path(path)
    check_writable(path, force)
    if path.is_symlink() or (path.exists() and not (path.is_dir() and (owned is None or (path / owned).is_file()))):
        raise FileExistsNoForceError(f"{path} exists and is not a folder effattn wrote (no {owned}); "
                                     "remove or rename it yourself")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _signals_raise():
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        old = path.parent / f"{tmp.name}.old"
        try:
            yield tmp
            check_writable(path, force)
            if path.exists():
                os.rename(path, old)
            os.rename(tmp, path)
        finally:
            if old.exists() and not path.exists():  # stopped between the two renames: put the old one back
                os.rename(old, path)
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
