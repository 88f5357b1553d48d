"""What runs a Triton repository ``effattn triton`` wrote: the ``docker run`` line it prints, a container recipe
(``Dockerfile``) and a KServe ``InferenceService`` manifest, all on one pinned Triton image. Triton 26.08 (server
r26.08, build.py's version map) bundles ONNX Runtime 1.28.0 and OpenVINO 2026.3.0; its TensorRT is the one of
NVIDIA's 26.08 base container. See docs/serving.md#on-triton-inference-server."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from ..errors import ConfigError
from ..files import atomic_output

TRITON_TAG = "26.08-py3"
TRITON_IMAGE = f"nvcr.io/nvidia/tritonserver:{TRITON_TAG}"
#: storageUri until the user says where the repository was uploaded: kubectl applies it, the storage
#: initializer then fails on it by name (the manifest's comment says what to put there)
STORAGE_PLACEHOLDER = "s3://REPLACE-ME/path/to/the/repository"


def run_command(repository: str | Path, gpu: bool, trt_cache_path: str | None = None) -> str:
    """The ``docker run`` line serving ``repository``: ``--gpus all`` only for GPU instances; a named volume at
    ``trt_cache_path`` (the cache root: ONNX Runtime makes only the last folder of a cache path, one per model)
    keeps the TensorRT accelerator's engines across restarts."""
    gpus = "--gpus all " if gpu else ""
    cache = f"-v effattn-trt-cache:{trt_cache_path} " if trt_cache_path else ""
    models = shlex.quote(f"{Path(repository).resolve()}:/models")  # printed for a shell: a path with spaces stays one
    return (
        f"docker run {gpus}--rm -p 8000:8000 -p 8001:8001 -p 8002:8002 -v {models} "
        f"{cache}{TRITON_IMAGE} tritonserver --model-repository=/models"
    )


def dockerfile(trt_cache_path: str) -> str:
    """An image holding the repository (built with the repository as the context), with the TensorRT cache
    root made: ONNX Runtime's TensorRT provider creates only the last folder of its cache path."""
    return (
        f"# Triton {TRITON_TAG} serving this model repository (written by effattn triton --kserve).\n"
        f"# Build here: docker build -t my-models . ; run: docker run [--gpus all] -p 8000:8000 my-models\n"
        f"FROM {TRITON_IMAGE}\n"
        f"RUN {json.dumps(['mkdir', '-p', trt_cache_path])}\n"
        "COPY . /models\n"
        "EXPOSE 8000 8001 8002\n"
        'CMD ["tritonserver", "--model-repository=/models"]\n'
    )


def service_name(model: str) -> str:
    """A Kubernetes name (DNS-1035 label, as KServe requires of an InferenceService) for a Triton model name."""
    name = re.sub(r"[_.]", "-", model.lower())
    if not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", name):
        raise ConfigError(
            f"model name {model!r} gives no Kubernetes name ({name!r}: 1-63 lowercase letters, digits and '-', "
            "starting with a letter); choose another --name"
        )
    return name


def kserve_manifest(
    model: str,
    gpu: bool,
    storage_uri: str | None = None,
    cpus: int = 1,
    trt_cache_path: str | None = None,
) -> str:
    """A KServe ``InferenceService`` (serving.kserve.io/v1beta1) on the ``kserve-tritonserver`` runtime pinned to
    :data:`TRITON_TAG`, for the repository at ``storage_uri`` (a marked placeholder when None). Resources ask for
    ``cpus`` cores and, for GPU instances only, one ``nvidia.com/gpu``; the TensorRT engine cache gets a volume."""
    limits = {"cpu": str(cpus), "memory": "4Gi"} | ({"nvidia.com/gpu": "1"} if gpu else {})
    uri = json.dumps(storage_uri or STORAGE_PLACEHOLDER)  # a JSON string is a YAML double-quoted scalar
    lines = [
        f"# KServe InferenceService serving the Triton repository that holds model {model!r} "
        "(written by effattn triton --kserve).",
        "# Upload the whole repository folder, set storageUri to it, then: kubectl apply -f THIS_FILE",
        "apiVersion: serving.kserve.io/v1beta1",
        "kind: InferenceService",
        "metadata:",
        f"  name: {service_name(model)}",
        "spec:",
        "  predictor:",
        "    model:",
        "      modelFormat:",
        "        name: triton",  # a Triton repository: kserve-tritonserver's format "triton", version "2"
        '        version: "2"',
        "      runtime: kserve-tritonserver",
        f"      runtimeVersion: {json.dumps(TRITON_TAG)}",
        f"      storageUri: {uri}" + ("" if storage_uri else "  # PLACEHOLDER: where you uploaded the repository"),
        "      resources:",
        "        requests:",
        *(f"          {key}: {json.dumps(value)}" for key, value in {"cpu": str(cpus), "memory": "2Gi"}.items()),
        "        limits:",
        *(f"          {key}: {json.dumps(value)}" for key, value in limits.items()),
    ]
    if trt_cache_path:
        lines += [
            "      volumeMounts:",
            "        - name: trt-cache",
            f"          mountPath: {json.dumps(trt_cache_path)}",
            "    volumes:",
            "      - name: trt-cache  # engines built at the first load; a persistentVolumeClaim keeps them",
            "        emptyDir: {}",
        ]
    return "\n".join(lines) + "\n"


def write_deployment(
    repository: Path, model: str, manifest: str, trt_cache_path: str, force: bool = False
) -> list[Path]:
    """``REPOSITORY/Dockerfile`` and ``REPOSITORY/MODEL.kserve.yaml`` (Triton reads only the model folders of a
    repository, so both may sit at its top). A file already holding the same text is left as it is; another is
    replaced only with ``force``."""
    written = []
    for path, text in (
        (repository / "Dockerfile", dockerfile(trt_cache_path)),
        (repository / f"{model}.kserve.yaml", manifest),
    ):
        try:
            same = path.is_file() and not path.is_symlink() and path.read_text() == text
        except (OSError, UnicodeDecodeError):
            same = False
        if not same:
            with atomic_output(path, force) as tmp:
                tmp.write_text(text)
        written.append(path)
    return written
