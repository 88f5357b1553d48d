"""effattn triton --kserve: the InferenceService checked against KServe's CRD schema (an excerpt,
tests/serving/data, cut by scripts/kserve_schema_excerpt.py), the Dockerfile on the same pinned Triton image."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from effattn.cli import main
from effattn.errors import ConfigError
from effattn.serving.deployment import STORAGE_PLACEHOLDER, TRITON_IMAGE, kserve_manifest

yaml = pytest.importorskip("yaml", reason="tests need pyyaml (the test extra) to read the manifests")
EXCERPT = json.loads((Path(__file__).parent / "data" / "kserve_isvc_v1beta1_excerpt.json").read_text())["schema"]


def check(value, schema: dict, where: str = "") -> None:
    """``value`` against an OpenAPI v3 schema as Kubernetes reads a CRD: types (int-or-string), required fields,
    and no field the schema does not name (unless it allows more). An object schema naming no fields is opaque
    (``metadata``: Kubernetes checks ObjectMeta itself)."""
    if schema.get("x-kubernetes-int-or-string") or "anyOf" in schema:
        assert isinstance(value, (int, str)) and not isinstance(value, bool), where
        if "pattern" in schema and isinstance(value, str):
            assert re.search(schema["pattern"], value), f"{where}: {value!r} does not match {schema['pattern']}"
        return
    kind = schema.get("type")
    types = {"object": dict, "array": list, "string": str, "integer": int, "boolean": bool}
    assert isinstance(value, types[kind]), f"{where}: {value!r} is not {kind}"
    if kind == "object" and ("properties" in schema or "additionalProperties" in schema):
        missing = set(schema.get("required", ())) - set(value)
        assert not missing, f"{where}: missing {missing}"
        for key, item in value.items():
            if key in schema.get("properties", {}):
                check(item, schema["properties"][key], f"{where}.{key}")
            elif "additionalProperties" in schema:
                check(item, schema["additionalProperties"], f"{where}.{key}")
            else:
                assert schema.get("x-kubernetes-preserve-unknown-fields"), f"{where}: unknown field {key!r}"
    elif kind == "array":
        for i, item in enumerate(value):
            check(item, schema["items"], f"{where}[{i}]")


def test_the_check_refuses_what_kubernetes_would():
    good = yaml.safe_load(kserve_manifest("seg", gpu=False))
    check(good, EXCERPT)
    for path, value in [
        (("spec", "predictor", "model", "storageURI"), "s3://x"),  # a typo: the field is storageUri
        (("spec", "predictor", "model", "resources", "limits", "cpu"), "two"),
        (("spec", "predictor", "model", "modelFormat"), {"version": "2"}),  # name is required
    ]:
        bad = yaml.safe_load(kserve_manifest("seg", gpu=False))
        node = bad
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        with pytest.raises(AssertionError):
            check(bad, EXCERPT)


@pytest.mark.parametrize("gpu, cache", [(False, None), (True, "/trt_cache")])
def test_the_manifest_fits_kserves_schema_and_asks_for_a_gpu_only_for_gpu_models(gpu, cache):
    text = kserve_manifest("seg_v2.int8", gpu, cpus=4, trt_cache_path=cache)
    manifest = yaml.safe_load(text)
    check(manifest, EXCERPT)
    assert manifest["apiVersion"] == "serving.kserve.io/v1beta1" and manifest["kind"] == "InferenceService"
    assert manifest["metadata"] == {"name": "seg-v2-int8"}  # a DNS-1035 label, as KServe requires
    model = manifest["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "triton", "version": "2"} and model["runtime"] == "kserve-tritonserver"
    assert model["runtimeVersion"] == TRITON_IMAGE.rpartition(":")[2] == "26.08-py3"
    assert model["storageUri"] == STORAGE_PLACEHOLDER and "# PLACEHOLDER" in text
    assert model["resources"]["requests"]["cpu"] == model["resources"]["limits"]["cpu"] == "4"
    assert ("nvidia.com/gpu" in model["resources"]["limits"]) == gpu
    assert ("volumeMounts" in model) == ("volumes" in manifest["spec"]["predictor"]) == (cache is not None)
    with pytest.raises(ConfigError, match="gives no Kubernetes name"):
        kserve_manifest("9lives", gpu)


def test_kserve_writes_a_manifest_and_a_dockerfile_beside_the_models(onnx_models, tmp_path, capsys):
    onnx_file = tmp_path / "block.onnx"
    shutil.copyfile(onnx_models["ea8"].path, onnx_file)
    repo = tmp_path / "repo"
    triton = ["triton", str(onnx_file), "--repository", str(repo), "--kserve"]
    assert main([*triton, "--storage-uri", "gs://bucket/repo", "--threads", "2", "--instances", "2"]) == 0
    out = capsys.readouterr().out
    manifest = yaml.safe_load((repo / "block.kserve.yaml").read_text())
    check(manifest, EXCERPT)
    model = manifest["spec"]["predictor"]["model"]
    assert model["storageUri"] == "gs://bucket/repo" and model["resources"]["limits"]["cpu"] == "4"
    assert "nvidia.com/gpu" not in model["resources"]["limits"] and "--gpus" not in out
    dockerfile = (repo / "Dockerfile").read_text()
    assert f"FROM {TRITON_IMAGE}\n" in dockerfile and 'RUN ["mkdir", "-p", "/trt_cache"]\n' in dockerfile
    assert 'CMD ["tritonserver", "--model-repository=/models"]' in dockerfile
    assert main([*triton, "--name", "gpu", "--trt-accelerator"]) == 0  # the same Dockerfile: no --force needed
    gpu = yaml.safe_load((repo / "gpu.kserve.yaml").read_text())
    check(gpu, EXCERPT)
    assert gpu["spec"]["predictor"]["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "set storageUri in" in capsys.readouterr().out
    (repo / "Dockerfile").write_text("FROM someone-elses\n")
    assert main([*triton, "--name", "third"]) == 2
    assert "Dockerfile exists; pass --force" in capsys.readouterr().err
    assert (repo / "Dockerfile").read_text() == "FROM someone-elses\n"
