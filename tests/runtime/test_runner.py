"""Runners: every bad input gets a clear error before it reaches the backend; loading refuses bad files."""

import numpy as np
import pytest
import torch

from effattn.engines import available_devices
from effattn.errors import BackendError, InputError
from effattn.models import EfficientAttention
from effattn.runtime import load, random_inputs
from effattn.runtime.torch_runner import TorchRunner
from tests.fixtures import ONNX_MODELS

PROFILE = ONNX_MODELS["ea8"].profile


@pytest.fixture(scope="module")
def onnx_path(onnx_models):
    return onnx_models["ea8"].path


@pytest.fixture(scope="module", params=["onnxruntime", "openvino", "torch"])
def runner(request, onnx_path):
    if request.param == "torch":
        return TorchRunner(EfficientAttention(8, 4, 2, 8), PROFILE)
    if request.param == "openvino":
        pytest.importorskip("openvino", reason="openvino is not installed (the 'cpu' extra)")
        return load(onnx_path, backend="openvino", precision="fp32")
    return load(onnx_path, device="cpu")


def test_runner_reads_specs_and_profile_from_the_file(onnx_path):
    with load(onnx_path, device="cpu") as runner:
        assert runner.backend == "onnxruntime-cpu"
        spec = runner.inputs["input"]
        assert spec.shape == ("batch", 8, "height", "width")
        assert runner.profile == PROFILE
        assert list(runner.outputs) == ["output"]
        assert "input: float32[batchx8xheightxwidth]" in repr(runner)


def test_accepts_numpy_torch_and_bare_arrays(runner):
    x = np.random.default_rng().standard_normal((2, 8, 6, 10), dtype=np.float32)
    a = runner.infer({"input": x})["output"]
    b = runner.infer({"input": torch.from_numpy(x)})["output"]
    c = runner.infer(x)["output"]
    assert a.shape == (2, 8, 6, 10) and np.array_equal(a, b) and np.array_equal(a, c)


@pytest.mark.parametrize(
    "feed,match",
    [
        (
            {"image": np.zeros((1, 8, 8, 8), np.float32)},
            r"do not match the model's inputs \['input'\]; missing \['input'\]; unknown \['image'\]",
        ),
        (
            {"input": np.zeros((1, 8, 8, 8), np.float64)},
            r"input 'input' has dtype float64, expected float32; convert it",
        ),
        ({"input": np.zeros((1, 8, 8, 8), np.float16)}, "has dtype float16, expected float32"),
        ({"input": np.zeros((8, 8, 8), np.float32)}, r"has rank 3 \(shape 8x8x8\), expected rank 4"),
        ({"input": np.zeros((1, 3, 8, 8), np.float32)}, r"axis 1 \(channels\) is 3, expected 8"),
        (
            {"input": np.zeros((1, 8, 64, 8), np.float32)},
            r"axis 2 \(height\) is 64; it must be in \[4, 32\].*re-export",
        ),
        ({"input": np.zeros((5, 8, 8, 8), np.float32)}, r"axis 0 \(batch\) is 5; it must be in \[1, 4\]"),
        ({"input": np.zeros((1, 8, 2, 8), np.float32)}, r"axis 2 \(height\) is 2; it must be in \[4, 32\]"),
        ({"input": [[1.0]]}, "is a list; pass a numpy array or torch tensor"),
        ("not a feed", "feed must map input names to arrays"),
    ],
)
def test_bad_inputs_are_refused_with_a_clear_message(runner, feed, match):
    with pytest.raises(InputError, match=match):
        runner.infer(feed)


def test_load_refuses_unknown_backends_and_foreign_files(tmp_path, onnx_path):
    with pytest.raises(BackendError, match="unknown backend 'tensorrtx'"):
        load(onnx_path, backend="tensorrtx")
    with pytest.raises(
        BackendError, match=r"expected an \.onnx file, OpenVINO IR \(\.xml\) or a TensorRT \.plan/\.engine"
    ):
        load(tmp_path / "model.txt")
    with pytest.raises(BackendError, match="does not exist"):
        load(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07garbage" * 50)
    with pytest.raises(BackendError, match=r"junk\.onnx is not an ONNX model"):  # refused before any backend
        load(junk)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(onnx_path.read_bytes()[:300])
    with pytest.raises(BackendError, match=r"truncated\.onnx is not an ONNX model"):
        load(truncated)
    with pytest.raises(BackendError, match="needs a ShapeProfile"):
        load(EfficientAttention(8), backend="torch")


def test_load_refuses_an_option_the_backend_does_not_take_by_name(onnx_path):
    with pytest.raises(
        BackendError,
        match=r"the onnxruntime backend does not take contexts=3; its options are "
        r"cuda_graph, io_binding, spinning",
    ):
        load(onnx_path, backend="onnxruntime", device="cpu", contexts=3)
    with pytest.raises(BackendError, match=r"the torch backend does not take static_shapes=False"):
        load(EfficientAttention(8, 4, 2, 8), backend="torch", profile=PROFILE, static_shapes=False)
    with pytest.raises(BackendError, match=r"rtx=True \(--rtx\) is for TensorRT; backend 'torch' is not"):
        load(EfficientAttention(8, 4, 2, 8), backend="torch", profile=PROFILE, rtx=True)
    with pytest.raises(TypeError, match="unexpected keyword argument 'io_bindings'"):  # a typo is Python's error
        load(onnx_path, io_bindings=True)
    with load(onnx_path, backend="onnxruntime", device="cpu", io_binding=True, spinning=False) as runner:
        assert runner.io_binding and not runner.spinning  # options a backend takes reach its runner


def test_load_options_are_the_runners_own_keywords():
    """RUNNER_OPTIONS names only keywords of each backend's runner (so load can pass them on unchanged)."""
    import inspect

    from effattn.runtime import RUNNER_OPTIONS
    from effattn.runtime.onnxruntime_runner import OnnxRuntimeRunner
    from effattn.runtime.openvino_runner import OpenVINORunner
    from effattn.runtime.tensorrt_runner import TensorRTRunner

    runners = {
        "tensorrt": TensorRTRunner,
        "onnxruntime": OnnxRuntimeRunner,
        "openvino": OpenVINORunner,
        "torch": TorchRunner,
    }
    assert set(RUNNER_OPTIONS) == set(runners)
    for backend, options in RUNNER_OPTIONS.items():
        keywords = inspect.signature(runners[backend]).parameters
        assert set(options) <= set(keywords), backend
        assert set(options) <= set(inspect.signature(load).parameters), backend


@pytest.mark.skipif("cuda" in available_devices(), reason="this onnxruntime has the CUDA provider")
def test_forcing_cuda_without_the_provider_says_what_to_install(onnx_path):
    with pytest.raises(BackendError, match=r"CUDAExecutionProvider is not in this onnxruntime build.*effattn\[gpu\]"):
        load(onnx_path, device="cuda")


def test_warmup_and_close(onnx_path):
    runner = load(onnx_path)  # auto: the CPU here, ONNX Runtime CUDA or TensorRT on a GPU machine
    runner.warmup(2)
    feed = random_inputs(PROFILE, "max", seed=1)
    assert runner.infer(feed)["output"].shape == PROFILE["input"].max
    runner.close()
    runner.close()  # idempotent


@pytest.mark.gpu
def test_onnxruntime_cuda_matches_eager(onnx_models):
    if "cuda" not in available_devices():
        pytest.skip("onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu on a CUDA machine)")
    block = onnx_models["ea8"].fresh()
    from effattn.runtime import compare

    with load(onnx_models["ea8"].path, device="cuda") as runner:
        report = compare(
            TorchRunner(block, PROFILE),
            runner,
            [random_inputs(PROFILE, w) for w in ("min", "opt", "max")],
            residuals={"output": "input"},
        )
    assert report.passed, report


def test_io_binding_path_equals_plain_run(onnx_path):
    """The I/O-binding path GPUs use (buffers bound by address, output shapes learnt per input shape),
    exercised on the CPU: same answers as session.run, for several shapes and repeated shapes."""
    from effattn.runtime.onnxruntime_runner import OnnxRuntimeRunner

    plain, bound = OnnxRuntimeRunner(onnx_path), OnnxRuntimeRunner(onnx_path, io_binding=True)
    rng = np.random.default_rng()
    for shape in [(2, 8, 16, 16), (2, 8, 16, 16), (1, 8, 4, 12), (4, 8, 32, 32), (1, 8, 4, 12)]:
        x = rng.standard_normal(shape, dtype=np.float32)
        out = bound.infer_torch({"input": torch.from_numpy(x)})["output"]
        assert isinstance(out, torch.Tensor) and tuple(out.shape) == shape
        np.testing.assert_array_equal(out.numpy(), plain.infer(x)["output"])
        np.testing.assert_array_equal(bound.infer(x)["output"], plain.infer(x)["output"])
    assert len(bound._output_shapes) == 3
