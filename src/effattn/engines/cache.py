"""The engine cache: a plan is reused only for the exact ONNX bytes, precision, profiles, builder options,
TensorRT version and GPU it was built for; a JSON sidecar beside the raw plan records them with its size and
sha256, so a stale, foreign or corrupt plan is caught first. See docs/gpu-tensorrt.md#the-engine-cache."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import BackendError
from ..files import atomic_output

log = logging.getLogger(__name__)

SIDECAR_SCHEMA = "effattn.engine/1"
#: where build_engine keeps engines unless told otherwise
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "effattn" / "engines"


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on. Enums are stored by name: TensorRT 11 renumbered them."""

    onnx_sha256: str
    precision: str
    profiles: tuple[str, ...]  # ShapeProfile.to_json() of each optimization profile
    builder_options: str  # canonical JSON of the options that change the plan
    backend: str  # "tensorrt" or "tensorrt_rtx"
    backend_version: str
    gpu_name: str
    compute_capability: str

    @classmethod
    def create(
        cls,
        onnx_bytes: bytes,
        precision: str,
        profiles: list[str],
        builder_options: Mapping,
        backend: str,
        backend_version: str,
        gpu_name: str,
        compute_capability: str,
    ) -> EngineKey:
        return cls(
            hashlib.sha256(onnx_bytes).hexdigest(),
            precision,
            tuple(profiles),
            json.dumps(dict(builder_options), sort_keys=True, separators=(",", ":")),
            backend,
            backend_version,
            gpu_name,
            compute_capability,
        )

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def mismatch(self, other: Mapping) -> list[str]:
        """Fields in which a sidecar's key differs from this one, as readable phrases."""
        mine = json.loads(json.dumps(asdict(self)))  # tuples as lists, as a sidecar stores them
        return [f"{k}: engine has {other.get(k)!r}, wanted {v!r}" for k, v in mine.items() if other.get(k) != v]


@dataclass
class Sidecar:
    key: dict
    digest: str
    plan_sha256: str
    plan_bytes: int
    io: list[dict] = field(default_factory=list)
    layers: dict = field(default_factory=dict)  # precision census from the engine inspector
    metadata: dict = field(default_factory=dict)  # the ONNX file's effattn.* metadata (model, profile, residuals)
    created: str = ""
    timing_cache: str = ""  # file name (under the cache root) of the timing cache the build loaded and merged into
    schema: str = SIDECAR_SCHEMA

    @classmethod
    def read(cls, path: Path) -> Sidecar:
        try:
            data = json.loads(path.read_text())
            if data.get("schema") != SIDECAR_SCHEMA:
                raise ValueError(f"schema {data.get('schema')!r}")
            return cls(**data)
        except FileNotFoundError:
            raise BackendError(
                f"{path} is missing: effattn loads an engine only with the sidecar written when it "
                "was built (it records the TensorRT version and GPU); "
                "rebuild with 'effattn build'"
            ) from None
        except (ValueError, TypeError) as e:
            raise BackendError(f"{path} is not an effattn engine sidecar ({e}); rebuild with 'effattn build'") from None

    def write(self, path: Path) -> None:
        _atomic_write(path, (json.dumps(asdict(self), indent=2) + "\n").encode())

    @staticmethod
    def named_shape(tensor: dict) -> list[int | str | None]:
        """One ``io`` entry's shape: fixed sizes, the ONNX graph's name for a dynamic axis (``axes``, recorded
        at build time), None for a dynamic axis without one (sidecars written before names were kept)."""
        axes = tensor.get("axes") or []
        return [
            d if d >= 0 else (axes[i] if i < len(axes) and isinstance(axes[i], str) else None)
            for i, d in enumerate(tensor["shape"])
        ]


def sidecar_path(plan: Path) -> Path:
    return plan.with_name(plan.name + ".json")


def _atomic_write(path: Path, data: bytes) -> None:
    with atomic_output(path, force=True) as tmp:
        tmp.write_bytes(data)


def plan_backend(plan: Path) -> str | None:
    """``tensorrt`` or ``tensorrt_rtx``: which library built ``plan``, as its sidecar says (None if unreadable)."""
    try:
        return Sidecar.read(sidecar_path(plan)).key.get("backend")
    except BackendError:
        return None


def verify_plan(plan: Path, *, backend: str, backend_version: str, gpu_name: str, compute_capability: str) -> Sidecar:
    """The sidecar of ``plan`` if the plan is whole and was built by this TensorRT on this GPU; else a clear error."""
    if not plan.is_file():
        raise BackendError(f"engine {plan} does not exist")
    sidecar = Sidecar.read(sidecar_path(plan))
    size = plan.stat().st_size
    if size != sidecar.plan_bytes:
        raise BackendError(
            f"engine {plan} is {size} bytes but was written as {sidecar.plan_bytes}: truncated or replaced; rebuild it"
        )
    if hashlib.sha256(plan.read_bytes()).hexdigest() != sidecar.plan_sha256:
        raise BackendError(f"engine {plan} does not match the checksum in its sidecar: corrupt; rebuild it")
    built = sidecar.key
    here = {
        "backend": backend,
        "backend_version": backend_version,
        "gpu_name": gpu_name,
        "compute_capability": compute_capability,
    }
    wrong = [f"{k} {built.get(k)!r} (here {v!r})" for k, v in here.items() if built.get(k) != v]
    if wrong:
        raise BackendError(
            f"engine {plan} was built for another setup: {', '.join(wrong)}. Plans are tied to the "
            "TensorRT version and the GPU; rebuild it here with 'effattn build'"
        )
    return sidecar


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+|\.{2,}")


def timing_cache_name(backend: str, backend_version: str, gpu_name: str, compute_capability: str) -> str:
    """The timing cache file for one TensorRT flavour, version and GPU, e.g.
    ``timing.tensorrt-10.13.3.9.sm90.NVIDIA_H100_80GB_HBM3.cache``. TensorRT refuses a timing cache whose
    "CUDA device property" differs from the current device (``IBuilderConfig.set_timing_cache``, and Polygraphy
    loads it with ``ignore_mismatch=False``), and tactics differ between versions and between TensorRT and
    TensorRT-RTX: one file per (flavour, version, compute capability, GPU name), never shared between them."""
    parts = {"backend": backend, "backend_version": backend_version, "gpu_name": gpu_name}
    for what, value in (*parts.items(), ("compute_capability", compute_capability)):
        if not isinstance(value, str) or not value.strip():
            raise BackendError(f"timing cache: {what} is empty ({value!r}); cannot tell which timing cache to use")
    if not re.fullmatch(r"\d+\.\d+", compute_capability):
        raise BackendError(f"timing cache: compute capability {compute_capability!r} is not of the form '9.0'")
    safe = {k: _UNSAFE.sub("_", v.strip()).strip("._") or "_" for k, v in parts.items()}
    sm = "sm" + compute_capability.replace(".", "")
    return f"timing.{safe['backend']}-{safe['backend_version']}.{sm}.{safe['gpu_name'][:64]}.cache"


class EngineCache:
    """Plans and sidecars under ``root``, named by key digest; timing caches (one per TensorRT flavour, version
    and GPU: :func:`timing_cache_name`) live beside them."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def timing_cache(self, key: EngineKey) -> Path:
        """The timing cache file a build for ``key`` loads and merges into."""
        return self.root / timing_cache_name(key.backend, key.backend_version, key.gpu_name, key.compute_capability)

    def plan_path(self, key: EngineKey) -> Path:
        return self.root / f"{key.digest[:24]}.plan"

    def lookup(self, key: EngineKey) -> Path | None:
        """The cached plan for ``key``, or None (a stale or damaged entry is logged and ignored)."""
        plan = self.plan_path(key)
        if not plan.exists():
            return None
        try:
            sidecar = verify_plan(
                plan,
                backend=key.backend,
                backend_version=key.backend_version,
                gpu_name=key.gpu_name,
                compute_capability=key.compute_capability,
            )
        except BackendError as e:
            log.warning("engine cache: ignoring %s (%s); rebuilding", plan.name, e)
            return None
        differs = key.mismatch(sidecar.key)
        if differs or sidecar.digest != key.digest:
            log.warning(
                "engine cache: %s was built from something else (%s); rebuilding",
                plan.name,
                "; ".join(differs) or "digest differs",
            )
            return None
        log.info("engine cache hit: %s", plan)
        return plan

    def store(
        self,
        key: EngineKey,
        plan_bytes: bytes,
        io: list[dict] | None = None,
        layers: dict | None = None,
        metadata: Mapping[str, str] | None = None,
        timing_cache: Path | None = None,
    ) -> Path:
        plan = self.plan_path(key)
        _atomic_write(plan, plan_bytes)
        Sidecar(
            asdict(key),
            key.digest,
            hashlib.sha256(plan_bytes).hexdigest(),
            len(plan_bytes),
            io or [],
            layers or {},
            dict(metadata or {}),
            _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            timing_cache.name if timing_cache is not None else "",
        ).write(sidecar_path(plan))
        return plan
