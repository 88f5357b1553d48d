"""TensorRT paths: import cleanly without TensorRT, say what is missing, and run for real on a GPU."""

import importlib.util

import pytest

from effattn.errors import BackendError


def test_modules_import_without_tensorrt():
    import effattn.engines.tensorrt_build  # noqa: F401
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
        report = compare(TorchRunner(source.model, source.profile, list(runner.outputs)), runner, feeds,
                         precision=precision, residuals=metadata.residuals_of({metadata.RESIDUAL: "output=input"}
                                                                               if name == "efficient_attention" else {}))
    assert report.passed, report
