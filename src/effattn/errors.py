"""One exception hierarchy for effattn.

Every message says what was wrong, what was expected and, where it helps, what to do. The CLI
prints ``str(error)`` on one line and exits non-zero; nothing below a library boundary leaks out.
"""

from __future__ import annotations


def first_line(error: BaseException | str) -> str:
    """The first non-empty line of ``error``'s message (an exception's type name if it has none): library
    exceptions often carry pages of context, and a one-line message must not fail on an empty one. OpenVINO's
    ``Exception from src/....cpp:84:`` lines, where it was thrown, are skipped: the next line says what happened."""
    fallback = "" if isinstance(error, str) else type(error).__name__
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return next((line for line in lines if not line.startswith("Exception from src/")), lines[0] if lines else fallback)


class EffattnError(Exception):
    """Base of every error effattn raises on purpose."""


class ModelError(EffattnError, ValueError):
    """A model name, factory, argument or checkpoint is wrong."""


class CheckpointError(ModelError):
    """A checkpoint cannot be read or does not fit the model (keys or shapes)."""


class TrustError(ModelError):
    """A file names code to run (a model factory) that the user did not name: files are data, never code."""


class MetadataError(EffattnError, ValueError):
    """A file's effattn metadata is malformed or names something unknown (tampered or foreign file)."""


class ConfigError(EffattnError, ValueError):
    """An option is out of range or malformed (a batch size of 0, a port over 65535, an unsafe name)."""


class InputError(EffattnError, ValueError):
    """A tensor given to a runner does not fit its inputs (name, rank, dtype, shape, profile)."""


class ProfileError(EffattnError, ValueError):
    """A shape profile is malformed (min > opt > max, wrong rank, unparsable text)."""


class ExportError(EffattnError):
    """Export to ONNX failed, or the exported file failed its checks."""


class ParityError(ExportError):
    """A backend's outputs disagree with eager PyTorch beyond the stated tolerance."""


class BackendError(EffattnError):
    """A backend is unavailable here (missing package, no GPU) or cannot load the file."""


class FileExistsNoForceError(EffattnError, FileExistsError):
    """An output file exists and overwriting it was not asked for."""
