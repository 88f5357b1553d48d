"""Cut the part of KServe's InferenceService CRD schema that `effattn triton --kserve` manifests touch, for the
tests (tests/serving/data/kserve_isvc_v1beta1_excerpt.json): the kserve PyPI package would bring its models
but also pandas, kubernetes, grpcio-tools and more, and the full CRD is 2 MB.

Every object on the manifests' paths keeps all its property names (types only for the ones not used), its
`required` list and its constraints, so a misspelled or unknown key is still refused. Refresh it when KServe's
CRD changes:

    python scripts/kserve_schema_excerpt.py KSERVE_CHECKOUT/config/crd/full/serving.kserve.io_inferenceservices.yaml \
        COMMIT > tests/serving/data/kserve_isvc_v1beta1_excerpt.json
"""

from __future__ import annotations

import json
import sys

import yaml

from effattn.serving.deployment import kserve_manifest

TYPES = ("type", "anyOf", "x-kubernetes-int-or-string")
KEEP = ("type", "required", "pattern", "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields", "anyOf")


def prune(schema: dict, used) -> dict:
    """``schema`` cut to what ``used`` (a value of a manifest) touches."""
    out = {k: schema[k] for k in KEEP if k in schema}
    if isinstance(used, dict):
        if "properties" in schema:
            props = schema["properties"]
            unknown = set(used) - set(props)
            if unknown and "additionalProperties" not in schema:
                raise SystemExit(f"the CRD has no {sorted(unknown)} here")
            out["properties"] = {
                k: prune(v, used[k]) if k in used else {t: v[t] for t in TYPES if t in v} for k, v in props.items()
            }
        if "additionalProperties" in schema:
            values = [v for k, v in used.items() if k not in schema.get("properties", {})]
            out["additionalProperties"] = prune(schema["additionalProperties"], values[0] if values else None)
    elif isinstance(used, list) and "items" in schema:
        merged: dict = {}
        for item in used:
            merged |= item if isinstance(item, dict) else {}
        out["items"] = prune(schema["items"], merged or (used[0] if used else None))
    return out


def main(crd_path: str, commit: str) -> None:
    with open(crd_path) as f:
        crd = yaml.safe_load(f)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")
    manifest = yaml.safe_load(kserve_manifest("m", gpu=True, storage_uri="s3://b/r", cpus=2, trt_cache_path="/c"))
    excerpt = prune(version["schema"]["openAPIV3Schema"], manifest)
    source = f"github.com/kserve/kserve@{commit} config/crd/full/serving.kserve.io_inferenceservices.yaml v1beta1"
    json.dump({"source": source, "schema": excerpt}, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main(*sys.argv[1:])
