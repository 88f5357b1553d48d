"""effattn triton: every generated config.pbtxt parses into Triton's own ModelConfig protobuf."""

from __future__ import annotations

import numpy as np
import pytest

from effattn.cli import main
from effattn.errors import FileExistsNoForceError, InputError
from effattn.export import export_onnx
from effattn.models import EfficientAttention
from effattn.runtime.triton import TensorConfig, TritonOptions, model_config, write_repository
from effattn.shapes import ShapeProfile

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="tests need tritonclient[grpc] (the test extra) for Triton's ModelConfig")
from google.protobuf import text_format  # noqa: E402

PROFILE = ShapeProfile.single("1x8x4x4", "2x8x16x16", "4x8x32x32")


def parse(text: str):
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    return export_onnx(EfficientAttention(8, 4, 2, 8), PROFILE, tmp_path_factory.mktemp("triton") / "block.onnx").path


def test_the_validator_rejects_a_typo():
    with pytest.raises(text_format.ParseError, match="max_batch_sise"):
        parse('name: "m"\nmax_batch_sise: 8\n')


def test_onnx_repository(onnx_file, tmp_path):
    folder = write_repository(onnx_file, tmp_path / "repo", options=TritonOptions(preferred_batch_sizes=[2, 4]))
    assert (folder / "1" / "model.onnx").read_bytes() == onnx_file.read_bytes()
    config = parse((folder / "config.pbtxt").read_text())
    assert config.name == "block" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 4  # capped by the profile's max batch
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        ("input", model_config_pb2.TYPE_FP32, [8, -1, -1])]
    assert list(config.output[0].dims) == [8, -1, -1]
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    warm = config.model_warmup[0]
    assert warm.batch_size == 2 and list(warm.inputs["input"].dims) == [8, 16, 16] and warm.inputs["input"].random_data


def test_trt_accelerator_fp16_and_no_batching(onnx_file, tmp_path):
    options = TritonOptions(max_batch_size=0, trt_accelerator=True, fp16=True, instances=2, kind="KIND_CPU", warmup=False)
    config = parse((write_repository(onnx_file, tmp_path, "seg", options) / "config.pbtxt").read_text())
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [-1, 8, -1, -1]
    assert not config.HasField("dynamic_batching") and not config.model_warmup
    accel = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accel.name == "tensorrt" and accel.parameters["precision_mode"] == "FP16"
    assert config.instance_group[0].count == 2


def test_plan_config_from_a_sidecar_record():
    inputs = [TensorConfig("input", np.dtype(np.float32), [-1, 8, -1, -1])]
    outputs = [TensorConfig("output", np.dtype(np.float16), [-1, 8, -1, -1])]
    config = parse(model_config("block", "tensorrt", inputs, outputs, PROFILE, TritonOptions()))
    assert config.platform == "tensorrt_plan" and config.output[0].data_type == model_config_pb2.TYPE_FP16
    with pytest.raises(InputError, match="runs on the GPU only"):
        model_config("b", "tensorrt", inputs, outputs, PROFILE, TritonOptions(kind="KIND_CPU"))
    with pytest.raises(InputError, match="preferred batch size 16 is outside 1..max_batch_size"):
        model_config("b", "onnxruntime", inputs, outputs, PROFILE, TritonOptions(preferred_batch_sizes=[16]))


def test_cli_refuses_to_overwrite_and_names_bad_files(onnx_file, tmp_path, capsys):
    assert main(["triton", str(onnx_file), "--repository", str(tmp_path)]) == 0
    assert "tritonserver --model-repository" in capsys.readouterr().out
    assert main(["triton", str(onnx_file), "--repository", str(tmp_path)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["triton", str(onnx_file), "--repository", str(tmp_path), "--force"]) == 0
    with pytest.raises(InputError, match="no sidecar"):
        (tmp_path / "m.plan").write_bytes(b"plan")
        write_repository(tmp_path / "m.plan", tmp_path / "r")
    with pytest.raises(InputError, match="not a readable ONNX file"):
        (tmp_path / "bad.onnx").write_bytes(b"not onnx")
        write_repository(tmp_path / "bad.onnx", tmp_path / "r")
    with pytest.raises(FileExistsNoForceError):
        write_repository(onnx_file, tmp_path)
