"""Calibration data: read, check and generate the feeds whose activation ranges set the quantization scales.

From, in order: the caller (a folder of ``.npy``/``.npz`` files, one ``.npz``, or arrays), the zoo model's
own sample generator (the data its shipped weights were trained on), or random normal inputs with a warning,
because noise has other activation ranges than real images and its scales may clip real activations.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from ... import metadata, precisions
from ...errors import InputError, ModelError
from ...files import MAX_ARRAY_BYTES, read_arrays
from ...shapes import ShapeProfile, random_inputs

log = logging.getLogger("effattn.export.quantize")

DEFAULT_SAMPLES = precisions.CALIBRATION_SAMPLES
#: The most calibration samples one run takes (:data:`effattn.precisions.MAX_CALIBRATION_SAMPLES`).
MAX_SAMPLES = precisions.MAX_CALIBRATION_SAMPLES


def _check_finite(value: np.ndarray, name: str, where: str) -> None:
    """Refuse NaN or infinity in a calibration batch, naming the first bad sample: one gives a scale of inf or
    NaN (ONNX Runtime's MinMax takes the range as it comes), and with it a file that answers garbage."""
    with np.errstate(over="ignore", invalid="ignore"):  # finite as the model reads it: float64 1e300 is inf in FP32
        bad = ~np.isfinite(value.astype(np.float32)).reshape(len(value), -1).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"calibration input {name!r} from {where} holds NaN or infinity (as float32) in sample "
            f"{first} ({int(bad.sum())} of {len(value)} samples); calibrate on finite data"
        )


def _split(value: np.ndarray, name: str, where: str, profile: ShapeProfile | None) -> list[np.ndarray]:
    """One array (batch axis first) -> batch-1 items, checked against the input's profile."""
    if not np.issubdtype(value.dtype, np.floating):
        raise InputError(f"calibration input {name!r} from {where} has dtype {value.dtype}; expected float32 images")
    rank = profile[name].rank if profile is not None and name in profile else max(value.ndim, 1)
    if value.ndim != rank or not value.size:
        raise InputError(
            f"calibration input {name!r} from {where} has shape {value.shape}; expected rank {rank} "
            "with the batch axis first"
        )
    _check_finite(value, name, where)
    items = [x[None] for x in value.astype(np.float32, copy=False)]
    if profile is not None and name in profile:
        profile[name].check(items[0].shape)
    return items


def _read_npz_or_npy(
    path: Path, names: list[str], profile: ShapeProfile | None, max_bytes: int
) -> tuple[list[dict[str, np.ndarray]], int]:
    """The batch-1 feeds of one file and the array bytes it held (counted against ``max_bytes``)."""
    data = read_arrays(path, names, max_bytes)
    if isinstance(data, np.ndarray):
        if len(names) != 1:
            raise InputError(f"{path} holds one array but the model has inputs {names}; use .npz files keyed by name")
        data = {names[0]: data}
    columns = {n: _split(np.asarray(data[n]), n, str(path), profile) for n in names}
    return [dict(zip(names, row)) for row in zip(*columns.values())], sum(a.nbytes for a in data.values())


def read_calibration(
    source: str | Path, names: list[str], profile: ShapeProfile | None = None
) -> list[dict[str, np.ndarray]]:
    """Batch-1 feeds from a folder of ``.npy``/``.npz`` files or one ``.npz``/``.npy`` file (batch axis first):
    at most :data:`~effattn.files.MAX_ARRAY_BYTES` of array data and :data:`MAX_SAMPLES` samples in all,
    regular files only (a FIFO or device among them is refused, never waited on)."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix in (".npy", ".npz"))
        if not files:
            raise InputError(f"calibration folder {source} holds no .npy or .npz files")
    else:
        files = [source]
    feeds: list[dict[str, np.ndarray]] = []
    budget = MAX_ARRAY_BYTES
    for path in files:
        more, size = _read_npz_or_npy(path, names, profile, budget)
        feeds += more
        budget -= size
        if len(feeds) > MAX_SAMPLES:
            raise InputError(
                f"calibration data {source} holds more than {MAX_SAMPLES} samples (the most one "
                "calibration uses); pass a subset"
            )
    if not feeds:
        raise InputError(f"calibration data {source} holds no samples")
    return feeds


def zoo_samples(
    meta: Mapping[str, str], profile: ShapeProfile, count: int, seed: int = 0
) -> list[dict[str, np.ndarray]] | None:
    """``count`` images from the zoo model's sample generator (None if the file's model has none). The zoo and
    torch load here, not with the module: the engines read this stage's QDQ checks where torch is not installed."""
    name = meta.get(metadata.MODEL, "")
    if not name or ":" in name or len(profile) != 1:
        return None
    import torch

    from ...models import get_entry

    try:
        entry = get_entry(name)
    except ModelError:
        return None
    if entry.samples is None or not meta.get(metadata.CHECKPOINT_SHA256):
        return None
    ((input_name, p),) = profile.items()
    g = torch.Generator().manual_seed(seed)
    sizes = [p.opt[2:], p.min[2:], p.max[2:]]  # activation ranges depend on the image size too
    return [{input_name: entry.samples(1, *sizes[i % 3], g).numpy()} for i in range(count)]


def random_samples(profile: ShapeProfile, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` single-item random feeds at the profile's opt, min and max sizes in turn: activation ranges
    depend on the size (the attention averages over fewer positions at min, so its outputs are larger), and
    scales calibrated at one size clipped the EA block's reprojection input at another."""

    def at(which: str) -> ShapeProfile:
        shapes = profile.shapes(which)
        return ShapeProfile.from_dict({n: dict.fromkeys(("min", "opt", "max"), (1, *s[1:])) for n, s in shapes.items()})

    sizes = [at("opt"), at("min"), at("max")]
    return [random_inputs(sizes[i % 3], "opt", seed + i) for i in range(count)]


def calibration_feeds(
    calibration, meta: Mapping[str, str], names: list[str], profile: ShapeProfile | None, samples: int, seed: int = 0
) -> tuple[list[dict[str, np.ndarray]], str]:
    """The calibration feeds and what they were, with their count (recorded in the file, said by the CLI): "64
    samples from images.npz", "32 task images of ea_segnet_tiny", "32 random draws from the profile"."""
    if calibration is not None:
        if isinstance(calibration, (str, Path)):
            feeds = read_calibration(calibration, names, profile)
            return feeds, f"{len(feeds)} samples from {Path(calibration).name}"
        feeds = [{k: np.asarray(v, np.float32) for k, v in feed.items()} for feed in calibration]
        for k, feed in enumerate(feeds):
            for name, value in feed.items():
                _check_finite(np.atleast_1d(value), name, f"calibration feed {k}")
        return feeds, f"{len(feeds)} feeds given as arrays"
    if profile is None:
        raise InputError("the file has no effattn shape profile: pass calibration data (--calibration)")
    zoo = zoo_samples(meta, profile, samples, seed)
    if zoo is not None:
        return zoo, f"{samples} task images of {meta[metadata.MODEL]} (its sample generator)"
    log.warning(
        "calibrating on %d random normal inputs: real images have other activation ranges, so the "
        "quantization scales may clip them or waste range; pass real inputs with --calibration",
        samples,
    )
    return random_samples(profile, samples, seed), f"{samples} random draws from the profile (normal noise)"


def _refuse_constant(feeds: list[dict[str, np.ndarray]]) -> None:
    """Refuse an input that holds one value in every sample. All zeros is a range of width 0: its scale would be
    0, which ONNX Runtime replaces by 1.0 (``compute_scale_zp``), so real inputs round to a few levels. A
    non-zero constant c gets a valid scale |c|/127, but only for that one value: every activation behind it is
    calibrated on one point, and any other input is clipped to those ranges. Neither is calibration."""
    for name in feeds[0]:
        low = min(float(feed[name].min()) for feed in feeds)
        high = max(float(feed[name].max()) for feed in feeds)
        if low == high:
            why = (
                "a range of width 0 has no scale (ONNX Runtime would write 1.0)"
                if high == 0
                else "scales calibrated on one value clip every other input"
            )
            raise InputError(
                f"calibration input {name!r} is the constant {high:g} in all {len(feeds)} samples: "
                f"{why}; calibrate on real inputs"
            )


class _Reader:
    """ONNX Runtime's CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it: Iterator = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def __len__(self) -> int:  # pragma: no cover - some ORT versions ask
        return 0
