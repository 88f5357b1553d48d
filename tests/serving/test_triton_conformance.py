"""benchmarks/triton_conformance.py without a Triton: the Python-backend repository it writes and its verdicts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from effattn.export import export_onnx
from effattn.models import EfficientAttention
from effattn.shapes import ShapeProfile

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient[grpc]")
from google.protobuf import text_format  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "triton_conformance.py"


@pytest.fixture(scope="module")
def conformance():
    spec = importlib.util.spec_from_file_location("triton_conformance", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_triton_side_is_a_python_backend_model_with_effattns_config(conformance, tmp_path):
    torch.manual_seed(0)
    onnx = export_onnx(
        EfficientAttention(8, 4, 2, 8), ShapeProfile.single("1x8x4x4", "2x8x8x8", "4x8x16x16"), tmp_path / "b.onnx"
    ).path
    conformance.write_repository(onnx, tmp_path / "repo", "seg", 8, threads=2)
    config = text_format.Parse((tmp_path / "repo" / "seg" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.backend == "python" and not config.platform and config.max_batch_size == 4
    assert config.parameters["threads"].string_value == "2" and list(config.input[0].dims) == [8, -1, -1]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert (tmp_path / "repo" / "seg" / "1" / "model.py").exists() and (
        tmp_path / "repo" / "seg" / "1" / "model.onnx"
    ).exists()


def test_verdicts_compare_statuses_outputs_and_statistics_counts(conformance):
    ok = {"status": "ok", "outputs": {"logits": np.zeros((1, 3))}}
    assert conformance.compare("infer", ok, ok)["match"]
    off = {"status": "ok", "outputs": {"logits": np.ones((1, 3))}}
    assert not conformance.compare("infer", ok, off)["match"]
    assert not conformance.compare("x", {"status": "404"}, {"status": "400"})["match"]

    def stats(fail: int) -> dict:
        return {
            "status": "ok",
            "value": {
                "model_stats": [
                    {
                        "inference_count": 2,
                        "execution_count": 1,
                        "batch_stats": [{"batch_size": 2, "compute_infer": {"count": 1}}],
                        "inference_stats": {"fail": {"count": fail}},
                    }
                ]
            },
        }

    assert conformance.compare("get_inference_statistics", stats(0), stats(0))["match"]
    assert not conformance.compare("get_inference_statistics", stats(0), stats(1))["match"]
    assert conformance.schema({"a": [{"b": 1}], "c": "x"}) == {"a": [{"b": "int"}], "c": "str"}
