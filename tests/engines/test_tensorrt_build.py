"""TensorRT paths: import cleanly without TensorRT, say what is missing, and run for real on a GPU."""

import importlib.util

import numpy as np
import pytest
import torch

from effattn.errors import BackendError


def test_modules_import_without_tensorrt():
    import effattn.engines.tensorrt_build
    import effattn.runtime.tensorrt_runner  # noqa: F401


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_missing_tensorrt_is_a_clear_error(tmp_path):
    from effattn.engines import build_engine, tensorrt_available
    from effattn.runtime import load

    assert not tensorrt_available()
    with pytest.raises(BackendError, match=r"tensorrt is not installed .*pip install 'effattn\[gpu\]'"):
        build_engine(tmp_path / "m.onnx")
    with pytest.raises(BackendError, match="tensorrt is not installed"):
        load(tmp_path / "m.plan")


def _needs_tensorrt():
    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("tensorrt is not installed (pip install 'effattn[gpu]' on a CUDA machine)")


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["efficient_attention", "ea_segnet_tiny", "ea_resnet_tiny"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_matches_eager(tmp_path, name, precision):
    _needs_tensorrt()
    from effattn import metadata
    from effattn.engines import build_engine
    from effattn.export import export_onnx, to_fp16
    from effattn.models import load_model
    from effattn.runtime import compare, load, random_inputs
    from effattn.runtime.torch_runner import TorchRunner

    source = load_model(name, pretrained=name == "ea_segnet_tiny")
    path = export_onnx(source, source.profile, tmp_path / f"{name}.onnx").path
    if precision == "fp16":
        path = to_fp16(path, tmp_path / f"{name}.fp16.onnx")
    build = build_engine(path, precision=precision, cache_dir=tmp_path / "cache")
    assert not build.cache_hit
    assert build_engine(path, precision=precision, cache_dir=tmp_path / "cache").cache_hit
    if precision == "fp16":
        assert build.sidecar.layers.get("fp16", 0) > 0, build.sidecar.layers
    feeds = [random_inputs(source.profile, w) for w in ("min", "opt", "max")] + source.task_inputs(source.profile)
    with load(build.plan) as runner:
        report = compare(
            TorchRunner(source.model, source.profile, list(runner.outputs)),
            runner,
            feeds,
            precision=precision,
            residuals=metadata.residuals_of(
                {metadata.RESIDUAL: "output=input"} if name == "efficient_attention" else {}
            ),
        )
    assert report.passed, report


def _needs_fp8_tensor_cores():
    _needs_tensorrt()
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 engines need a GPU of compute capability 8.9+ (Ada, Hopper, Blackwell)")


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["int8", "bf16", "fp8"])
def test_low_precision_engine_of_the_segmenter_matches_eager(tmp_path, precision):
    """INT8 and FP8 by explicit quantization (the QDQ graphs of effattn quantize) and BF16 (the graph of
    to_bf16), built strongly typed with the precision read from the graph: the inspector must show layers
    running in that precision, parity with eager FP32 within the precision's tolerance, and task-level argmax
    agreement >= 99 % on held-out task images as on ONNX Runtime (tests/export/test_quantize.py)."""
    _needs_fp8_tensor_cores() if precision == "fp8" else _needs_tensorrt()
    from effattn.engines import build_engine
    from effattn.export import export_onnx, quantize, to_bf16
    from effattn.models import load_model
    from effattn.models.synthetic import shapes_batch
    from effattn.runtime import compare, load, random_inputs
    from effattn.runtime.torch_runner import TorchRunner

    source = load_model("ea_segnet_tiny", pretrained=True)
    fp32 = export_onnx(source, source.profile, tmp_path / "seg.onnx").path
    path = (
        to_bf16(fp32, tmp_path / "seg.bf16.onnx")
        if precision == "bf16"
        else quantize(fp32, tmp_path / f"seg.{precision}.onnx", precision=precision).path
    )
    build = build_engine(path, cache_dir=tmp_path / "cache")  # no precision: the graph's own
    assert build.sidecar.key["precision"] == precision
    assert build.sidecar.layers.get(precision, 0) > 0, build.sidecar.layers
    assert build_engine(path, precision=precision, cache_dir=tmp_path / "cache").cache_hit
    feeds = [random_inputs(source.profile, w) for w in ("min", "opt", "max")] + source.task_inputs(source.profile)
    images, _ = shapes_batch(32, 64, 64)
    with load(build.plan) as runner:
        report = compare(
            TorchRunner(source.model, source.profile, list(runner.outputs)), runner, feeds, precision=precision
        )
        engine = np.concatenate([runner.infer(images[i : i + 8].numpy())["logits"] for i in range(0, 32, 8)])
    assert report.passed, report
    with torch.inference_mode():
        eager = source.model(images).argmax(1).numpy()
    assert (engine.argmax(1) == eager).mean() >= 0.99


@pytest.mark.gpu
def test_an_int8_graph_is_not_built_as_anything_else(tmp_path):
    _needs_tensorrt()
    from effattn.engines import build_engine
    from effattn.export import export_onnx, quantize
    from effattn.models import load_model

    source = load_model("ea_segnet_tiny", pretrained=True)
    fp32 = export_onnx(source, source.profile, tmp_path / "seg.onnx").path
    int8 = quantize(fp32, tmp_path / "seg.int8.onnx", samples=4).path
    with pytest.raises(BackendError, match="the graph is int8, so its engine is int8"):
        build_engine(int8, precision="fp16", cache_dir=tmp_path / "cache")
    with pytest.raises(BackendError, match="an INT8 engine needs an INT8 QDQ graph"):
        build_engine(fp32, precision="int8", cache_dir=tmp_path / "cache")


@pytest.mark.gpu
def test_an_fp8_graph_is_refused_before_the_build_without_fp8_tensor_cores(tmp_path):
    _needs_tensorrt()
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() >= (8, 9):
        pytest.skip("this GPU has FP8 tensor cores (test_low_precision_engine_of_the_segmenter_matches_eager[fp8])")
    from effattn.engines import build_engine
    from effattn.export import export_onnx, quantize
    from effattn.models import load_model

    source = load_model("ea_segnet_tiny", pretrained=True)
    fp32 = export_onnx(source, source.profile, tmp_path / "seg.onnx").path
    fp8 = quantize(fp32, tmp_path / "seg.fp8.onnx", samples=4, precision="fp8").path
    with pytest.raises(BackendError, match=r"FP8 engines need FP8 tensor cores \(compute capability 8.9\+"):
        build_engine(fp8, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("*.plan"))
