"""Writing output files whole or not at all: a hidden temporary file renamed into place, removed on error
or signal (:func:`atomic_output`). Only regular files are ever replaced; input files are checked the same
way (:func:`require_file`) and array files are read bounded. Outputs get the modes open() and mkdir() give,
less the umask, as any program's would. See docs/architecture.md#ground-floor."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import secrets
import shutil
import signal
import stat
import threading
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np

from .errors import FileExistsNoForceError, InputError, first_line

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


_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _lstat_mode(path: Path) -> int | None:
    """The mode of ``path`` itself (a link is not followed), None if nothing is there."""
    try:
        return path.lstat().st_mode
    except FileNotFoundError:
        return None


def require_file(path: str | Path, expected: str = "a file", error: type[Exception] = InputError) -> Path:
    """``path`` if it is a regular file (links followed), else ``error`` saying what it is instead; reading a
    device, a FIFO or a folder as a model or an input would block, never end, or fail obscurely."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise error(f"{path} does not exist; expected {expected}") from None
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        raise error(f"{path} is {_kind(mode)}, not a regular file; expected {expected}")
    return path


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file's bytes, read by the MiB (its identity: checkpoints, the ONNX file an IR stands for)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_writable(path: str | Path, force: bool) -> None:
    """Refuse to replace an existing ``path`` unless ``force`` (the message says how to allow it), and refuse
    anything there but a regular file even with it."""
    mode = _lstat_mode(Path(path))
    if mode is None:
        return
    if not stat.S_ISREG(mode):
        raise FileExistsNoForceError(
            f"{path} exists and is {_kind(mode)}; effattn replaces only regular files: "
            "choose another output or move it yourself"
        )
    if not force:
        raise FileExistsNoForceError(f"{path} exists; pass --force to overwrite it (force=True in Python)")


def _hidden_beside(path: Path, create: Callable[[str], object], suffix: str = "") -> Path:
    """A new hidden name beside ``path``, made by ``create`` (which must fail if the name exists): the kernel
    applies the umask to the mode ``create`` asks for, as for any file a program makes. tempfile's mkstemp and
    mkdtemp ask for 0o600 and 0o700 whatever the umask, so outputs came out private where others were not."""
    for _ in range(100):
        name = path.parent / f".{path.name}.{secrets.token_hex(6)}{suffix}"
        try:
            create(str(name))
        except FileExistsError:
            continue
        return name
    raise FileExistsError(f"no free hidden name beside {path} after 100 tries")


def _new_file(name: str) -> None:
    os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


@contextlib.contextmanager
def atomic_output(path: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path`` (same suffix) to write; it becomes ``path`` on success.

    Refuses an existing ``path`` without ``force`` (checked before and after writing)."""
    path = Path(path)
    check_writable(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _signals_raise():
        tmp = _hidden_beside(path, _new_file, path.suffix)
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
    ``owned`` (a regular file) - i.e. one this kind of command wrote - so nothing else is ever deleted."""
    path = Path(path)
    _check_folder_writable(path, force, owned)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _signals_raise():
        tmp = _hidden_beside(path, lambda name: os.mkdir(name, 0o777))
        old = path.parent / f"{tmp.name}.old"
        try:
            yield tmp
            _check_folder_writable(path, force, owned)
            if path.exists():
                os.rename(path, old)
            os.rename(tmp, path)
        finally:
            if old.exists() and not path.exists():  # stopped between the two renames: put the old one back
                os.rename(old, path)
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)


def _check_folder_writable(path: Path, force: bool, owned: str | None) -> None:
    mode = _lstat_mode(path)
    if mode is None:
        return
    if not force:
        raise FileExistsNoForceError(f"{path} exists; pass --force to overwrite it (force=True in Python)")
    ours = owned is None or stat.S_ISREG(_lstat_mode(path / owned) or 0)
    if not (stat.S_ISDIR(mode) and ours):
        raise FileExistsNoForceError(
            f"{path} exists and is not a folder effattn wrote (no {owned}); remove or rename it yourself"
        )


# ------------------------------------------------------------------------------------------ array files in
#: The most array data one read of ``.npy``/``.npz`` files may declare, checked from the headers before any
#: data is read: a 2 MB ``.npz`` of zeros can declare gigabytes, a 100-byte ``.npy`` header 10^12 items.
MAX_ARRAY_BYTES = 2**30


def open_regular(path: str | Path) -> BinaryIO:
    """``path`` opened for binary reading if it is a regular file, else :class:`InputError`. Opened with
    O_NONBLOCK and checked with fstat, so a FIFO (whose open or read would wait for a writer forever), a
    device (/dev/zero never ends) or a folder is refused without blocking."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None
    except OSError as e:
        raise InputError(f"cannot open {path}: {e.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise InputError(f"{path} is {_kind(mode)}, not a regular file")
    return os.fdopen(fd, "rb")


def _npy_size(f: IO[bytes], where: str, available: int, max_bytes: int) -> int:
    """The data bytes the ``.npy`` header at ``f``'s start declares, refused over ``max_bytes``, over what the
    file holds (``available`` bytes in all), or for Python objects; ``f`` is left at its start. ``where``
    names the array in messages."""
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(f)
    if dtype.hasobject:
        raise InputError(f"{where} holds Python objects; only numeric arrays are read (nothing is unpickled)")
    size = math.prod(shape) * dtype.itemsize
    if size > max_bytes:
        raise InputError(
            f"{where} declares a {dtype} array of shape {tuple(shape)} ({size} bytes): over the "
            f"{max_bytes} bytes left of the {MAX_ARRAY_BYTES}-byte limit on array data read at once"
        )
    if size > available - f.tell():
        raise InputError(f"{where} declares {size} bytes of array data but holds {max(available - f.tell(), 0)}")
    f.seek(0)
    return size


def _read_npz(f: BinaryIO, path: Path, names: Sequence[str] | None, max_bytes: int) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(f) as archive:
        members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
        missing = [n for n in names or () if n not in members]
        if missing:
            raise InputError(f"it lacks inputs {missing} (has {sorted(members)[:20]})")
        arrays = {}
        for name in names if names is not None else list(members):
            with archive.open(members[name]) as member:  # reads stop at the declared size (zipfile)
                max_bytes -= _npy_size(member, f"array {name!r}", members[name].file_size, max_bytes)
                arrays[name] = np.lib.format.read_array(member, allow_pickle=False)
        return arrays


def read_arrays(
    path: str | Path, names: Sequence[str] | None = None, max_bytes: int = MAX_ARRAY_BYTES
) -> np.ndarray | dict[str, np.ndarray]:
    """The array of an ``.npy`` file, or the arrays ``names`` (None: all) of an ``.npz``; never unpickles.

    Only regular files (:func:`open_regular`); every header is checked against ``max_bytes`` and against the
    bytes the file (or zip member, by its declared size, which zipfile never reads past) really holds before
    its data is read, so a lying or bomb-like file costs no memory. Anything unreadable is an InputError."""
    path = Path(path)
    with open_regular(path) as f:
        try:
            if f.read(2) == b"PK":
                f.seek(0)
                return _read_npz(f, path, names, max_bytes)
            f.seek(0)
            _npy_size(f, "the array", os.fstat(f.fileno()).st_size, max_bytes)
            return np.lib.format.read_array(f, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:  # InputError (a ValueError) included
            raise InputError(f"cannot read {path} as .npy/.npz: {first_line(e)}") from None


def write_arrays(path: str | Path, arrays: Mapping[str, np.ndarray], force: bool = False) -> Path:
    """An ``.npz`` of ``arrays`` by name at exactly ``path`` (what :func:`read_arrays` reads), written atomically."""
    with atomic_output(path, force) as tmp, open(tmp, "wb") as f:  # a file object: np.savez adds ".npz" to a name
        np.savez(f, **{name: np.asarray(value) for name, value in arrays.items()})  # type: ignore[arg-type]
    return Path(path)
