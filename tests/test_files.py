"""Outputs are written whole or not at all: errors, Ctrl-C and SIGTERM/SIGHUP leave no partial or hidden file."""

import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest

from effattn.errors import FileExistsNoForceError, InputError
from effattn.files import atomic_folder, atomic_output, check_writable, require_file


def test_an_error_while_writing_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_output(tmp_path / "out.bin") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_force(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"mine")
    with pytest.raises(FileExistsNoForceError, match="pass --force"), atomic_output(path) as tmp:
        tmp.write_bytes(b"theirs")
    assert path.read_bytes() == b"mine"
    with atomic_output(path, force=True) as tmp:
        tmp.write_bytes(b"new")
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def _not_a_regular_file(tmp_path, kind):
    """tmp/out as a ``kind`` that is not a regular file; tmp/elsewhere/ holds someone's data."""
    import os

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "data").write_bytes(b"someone's")
    out = tmp_path / "out"
    {
        "fifo": lambda: os.mkfifo(out),
        "folder": out.mkdir,
        "dangling link": lambda: out.symlink_to(tmp_path / "nowhere"),
        "link to a file": lambda: out.symlink_to(tmp_path / "elsewhere" / "data"),
        "link to a folder": lambda: out.symlink_to(tmp_path / "elsewhere"),
    }[kind]()
    return out


def _state(root):
    import os

    return {str(p): (os.lstat(p).st_mode, os.readlink(p) if p.is_symlink() else None) for p in root.rglob("*")}


@pytest.mark.parametrize(
    "kind,says",
    [
        ("fifo", "is a FIFO"),
        ("folder", "is a folder"),
        ("dangling link", "is a symbolic link"),
        ("link to a file", "is a symbolic link"),
        ("link to a folder", "is a symbolic link"),
    ],
)
def test_force_replaces_only_regular_files(tmp_path, kind, says):
    """A rename puts a regular file in place of a FIFO, a device or a link (as root, ``--output /dev/null --force``
    would replace /dev/null): refused even with force, with the user's path in the message, nothing changed."""
    out = _not_a_regular_file(tmp_path, kind)
    before = _state(tmp_path)
    with (
        pytest.raises(FileExistsNoForceError, match=f"{out} exists and {says}.*; effattn replaces only regular"),
        atomic_output(out, force=True) as tmp,
    ):
        tmp.write_bytes(b"new")
    assert _state(tmp_path) == before and (tmp_path / "elsewhere" / "data").read_bytes() == b"someone's"


def test_a_device_is_never_replaced():
    with pytest.raises(FileExistsNoForceError, match="/dev/null exists and is a character device"):
        check_writable("/dev/null", force=True)


def test_a_folder_is_replaced_only_if_its_own_file_is_a_regular_file(tmp_path):
    (tmp_path / "theirs.txt").write_text("not effattn's")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.pbtxt").symlink_to(tmp_path / "theirs.txt")
    with (
        pytest.raises(FileExistsNoForceError, match="is not a folder effattn wrote"),
        atomic_folder(tmp_path / "model", force=True, owned="config.pbtxt") as tmp,
    ):
        (tmp / "config.pbtxt").write_text("new")
    assert (tmp_path / "model" / "config.pbtxt").is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == [
        "model",
        "theirs.txt",
    ]


@pytest.mark.parametrize(
    "path,says",
    [
        ("/dev/zero", "/dev/zero is a character device, not a regular file"),
        ("/", "/ is a folder, not a regular file"),
        ("/nonexistent-effattn", "/nonexistent-effattn does not exist"),
    ],
)
def test_inputs_must_be_regular_files(path, says):
    with pytest.raises(InputError, match=f"^{says}; expected an .onnx file$"):
        require_file(path, "an .onnx file")


def _export_signalled(tmp_path, signum: int, disposition: str) -> subprocess.CompletedProcess:
    """An export that sends itself ``signum`` from inside its validation step, while its temporary file exists
    (so the moment is exact), with the signal's disposition set first: ``SIG_DFL``, or ``SIG_IGN`` as nohup
    leaves SIGHUP (and a child inherits it: a test run under nohup once saw SIGHUP ignored, by design)."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        import effattn.pipeline
        from effattn.cli import main

        signal.signal({int(signum)}, signal.{disposition})
        validate_export = effattn.pipeline.validate_export

        def validate(*args, **kwargs):
            assert any(p.name.startswith(".block.onnx.") for p in os.scandir({str(tmp_path)!r}))
            os.kill(os.getpid(), {int(signum)})
            if signal.getsignal({int(signum)}) is not signal.SIG_IGN:
                raise AssertionError("the signal did not stop the export")
            return validate_export(*args, **kwargs)

        effattn.pipeline.validate_export = validate
        sys.exit(main(["export", "efficient_attention", "--random-weights", "-q",
                       "-o", {str(tmp_path / "block.onnx")!r},
                       "--arg", "in_channels=8", "--arg", "key_channels=4", "--arg", "value_channels=8",
                       "--min", "1x8x4x4", "--opt", "1x8x8x8", "--max", "2x8x8x8"]))
    """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_during_export_leaves_no_partial_or_hidden_file(tmp_path, signum):
    """Stopped by ``signum`` (default disposition) mid-export: the process dies by that signal, the folder is empty."""
    done = _export_signalled(tmp_path, signum, "SIG_DFL")
    assert done.returncode == -signum, done.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []


def test_an_ignored_hangup_stays_ignored(tmp_path):
    """Under nohup (SIGHUP ignored) a hangup does not stop the export: effattn turns only default-disposition
    signals into its cleanup, so the file is written whole and nothing hidden is left beside it."""
    done = _export_signalled(tmp_path, signal.SIGHUP, "SIG_IGN")
    assert done.returncode == 0, done.stderr[-2000:]
    assert [p.name for p in tmp_path.iterdir()] == ["block.onnx"]


def test_a_folder_stopped_between_its_two_renames_keeps_the_old_one(tmp_path, monkeypatch):
    import os

    from effattn.files import atomic_folder

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.pbtxt").write_text("old")
    renames = []

    def rename(src, dst):  # the first rename (old folder away) happens, the second is "interrupted"
        renames.append((src, dst))
        if len(renames) == 2:
            raise KeyboardInterrupt
        real_rename(src, dst)

    real_rename = os.rename
    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(KeyboardInterrupt), atomic_folder(folder, force=True, owned="config.pbtxt") as tmp:
        (tmp / "config.pbtxt").write_text("new")
    monkeypatch.setattr(os, "rename", real_rename)
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and (folder / "config.pbtxt").read_text() == "old"


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_get_the_modes_open_gives_under_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        with atomic_output(tmp_path / "out.onnx") as tmp:
            tmp.write_bytes(b"model")
        with atomic_folder(tmp_path / "repo") as tmp:
            (tmp / "config.pbtxt").write_text("name")
        (tmp_path / "by-open").write_bytes(b"x")
        (tmp_path / "by-mkdir").mkdir()
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {
        "out.onnx": 0o666 & ~umask,
        "repo": 0o777 & ~umask,
        "by-open": 0o666 & ~umask,
        "by-mkdir": 0o777 & ~umask,
    }
