"""Model names that never escape their folder or URL: one safe path component, as Triton requires.

A name becomes a folder (``REPO/NAME`` for Triton) and a URL segment (``/v2/models/NAME``), so it is
letters, digits, ``_``, ``.`` and ``-`` only, starting with a letter, digit or ``_`` (no ``.``/``..``,
no hidden folders, no options), at most 128 characters.
"""

from __future__ import annotations

import re
import reprlib
from pathlib import Path

from .errors import ConfigError

_SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def check_model_name(name: str) -> str:
    """``name`` if it is one safe path component and URL segment, else :class:`ConfigError` saying why."""
    if not isinstance(name, str) or not _SAFE.fullmatch(name):
        raise ConfigError(
            f"model name {reprlib.repr(name)} is not allowed: use 1-128 letters, digits, '_', '.' "
            "or '-', starting with a letter, digit or '_' (it becomes a folder and a URL segment)"
        )
    return name


def name_from_file(path) -> str:
    """The default model name: the file name before its first dot (``seg.fp16.onnx`` -> ``seg``)."""
    try:
        return check_model_name(path.name.split(".")[0])
    except ConfigError:
        raise ConfigError(
            f"cannot name a model after the file {path.name!r}; give a name (--name, or NAME=FILE)"
        ) from None


def parse_model_spec(spec: str) -> tuple[str, Path]:
    """``[NAME=]FILE`` -> (name, path). An existing file is a FILE even if its name holds ``=``; a NAME never does."""
    path = Path(spec)
    if path.is_file() or "=" not in spec:
        return name_from_file(path), path
    name, _, file = spec.partition("=")
    return check_model_name(name), Path(file)
