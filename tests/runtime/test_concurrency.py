"""One Runner shared by many threads: every request gets its own answer (8 threads x 50 requests).

Each request has its own input (and shapes vary, so a runner that mixed up buffers between calls
or reused one thread's output for another would fail); each output is checked against the eager
reference computed beforehand for that very input. GPU runners (TensorRT context pool, ONNX
Runtime I/O binding, CUDA graphs) take the same test in the gpu-marked variants.
"""

from __future__ import annotations

import importlib.util
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from effattn.engines import available_devices
from effattn.export import export_onnx
from effattn.runtime import TOLERANCES
from effattn.runtime.torch_runner import TorchRunner
from effattn.shapes import ShapeProfile
from tests.conftest import rel_l2
from tests.fixtures import ONNX_MODELS

THREADS, REQUESTS = 8, 50
PROFILE = ONNX_MODELS["ea16"].profile
SHAPES = [(1, 16, 8, 8), (2, 16, 12, 12), (3, 16, 6, 10), (4, 16, 16, 16)]


@pytest.fixture(scope="module")
def block(onnx_models):
    return onnx_models["ea16"].fresh()  # GPU tests move it to CUDA


@pytest.fixture(scope="module")
def onnx_path(onnx_models):
    return onnx_models["ea16"].path


def _requests(block, count: int, shapes=SHAPES):
    """``count`` distinct inputs with their eager outputs, computed one at a time."""
    rng = np.random.default_rng()
    feeds = [rng.standard_normal(shapes[i % len(shapes)], dtype=np.float32) for i in range(count)]
    with torch.inference_mode():
        expected = [block(torch.from_numpy(x)).numpy() for x in feeds]
    return feeds, expected


def hammer(runner, block, tolerance: float, shapes=SHAPES) -> None:
    """Send THREADS x REQUESTS requests from THREADS threads at once; check each answer."""
    feeds, expected = _requests(block, THREADS * REQUESTS, shapes)

    def worker(start: int) -> list[tuple[int, float]]:
        errors = []
        for i in range(start, len(feeds), THREADS):
            out = runner.infer({"input": feeds[i]})["output"]
            if out.shape != expected[i].shape:
                errors.append((i, float("inf")))
            else:
                errors.append((i, rel_l2(out, expected[i])))
        return errors

    with ThreadPoolExecutor(THREADS) as pool:
        results = [e for chunk in pool.map(worker, range(THREADS)) for e in chunk]
    assert len(results) == THREADS * REQUESTS
    bad = [(i, err) for i, err in results if not err <= tolerance]
    assert not bad, f"{len(bad)} of {len(results)} answers wrong, e.g. request {bad[0][0]}: rel-L2 {bad[0][1]:.2e}"


@pytest.mark.parametrize("io_binding", [False, True], ids=["session.run", "io-binding"])
def test_onnxruntime_cpu_runner_is_thread_safe(onnx_path, block, io_binding):
    from effattn.runtime.onnxruntime_runner import OnnxRuntimeRunner

    with OnnxRuntimeRunner(onnx_path, device="cpu", threads=1, io_binding=io_binding) as runner:
        hammer(runner, block, tolerance=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_openvino_runner_is_thread_safe(onnx_path, block, precision):
    """Each call borrows its own InferRequest from the pool; BF16 only where the CPU has it."""
    pytest.importorskip("openvino", reason="openvino is not installed (the 'cpu' extra)")
    from effattn.runtime.openvino_runner import OpenVINORunner, cpu_has_bf16

    if precision == "bf16" and not cpu_has_bf16():
        pytest.skip("this CPU has no BF16 arithmetic (AVX512-BF16 or AMX)")
    with OpenVINORunner(onnx_path, precision=precision, threads=1) as runner:
        hammer(runner, block, tolerance=TOLERANCES[precision].rel_l2)


def test_torch_runner_is_thread_safe(block):
    hammer(TorchRunner(block, PROFILE), block, tolerance=1e-6)


def test_hammer_catches_crossed_answers(onnx_path, block):
    """The check itself can fail: a runner that answers with another request's output is caught."""

    class Crossed:
        last = None

        def infer(self, feed):
            previous, Crossed.last = Crossed.last, feed
            with torch.inference_mode():
                return {"output": block(torch.from_numpy((previous or feed)["input"])).numpy()}

    with pytest.raises(AssertionError, match="answers wrong"):
        hammer(Crossed(), block, tolerance=1e-5, shapes=[(1, 16, 8, 8)])


# ----------------------------------------------------------------------------------- GPU runners


@pytest.mark.gpu
def test_onnxruntime_cuda_runner_is_thread_safe(onnx_path, block):
    if "cuda" not in available_devices():
        pytest.skip("onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu)")
    from effattn.runtime.onnxruntime_runner import OnnxRuntimeRunner

    with OnnxRuntimeRunner(onnx_path, device="cuda") as runner:
        hammer(runner, block, tolerance=1e-5)  # FP32 stays FP32: the provider's TF32 is off


def _cuda_onnxruntime():
    if "cuda" not in available_devices():
        pytest.skip("onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu)")
    from effattn.runtime.onnxruntime_runner import OnnxRuntimeRunner

    return OnnxRuntimeRunner


@pytest.mark.gpu
def test_onnxruntime_cuda_session_computes_on_the_runners_torch_stream(onnx_path):
    """The I/O-binding fix on the GPU: ONNX Runtime took the runner's stream as its compute stream."""
    with _cuda_onnxruntime()(onnx_path, device="cuda") as runner:
        options = runner.session.get_provider_options()["CUDAExecutionProvider"]
        assert options["user_compute_stream"] == str(runner._stream.cuda_stream) != "0"


@pytest.mark.gpu
def test_onnxruntime_io_binding_reads_inputs_after_the_callers_stream_wrote_them(onnx_path, block):
    """The caller's stream is still busy (a GPU-side spin, then the real input copied over zeros) when it
    calls infer_torch; the runner adds no host wait, so only the stream order (its stream waits on the
    caller's) makes ONNX Runtime read the real input. Without that wait it reads the zeros."""
    x = torch.randn(2, 16, 12, 12)
    with torch.inference_mode():
        expected = block(x).numpy()
    with _cuda_onnxruntime()(onnx_path, device="cuda") as runner:
        runner.infer_torch({"input": x.cuda()})  # learn the output shape first
        for _ in range(3):
            staged = torch.zeros_like(x, device="cuda")
            torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time on the caller's stream
            staged.copy_(x.pin_memory(), non_blocking=True)
            out = runner.infer_torch({"input": staged})["output"]
            assert rel_l2(out.cpu().numpy(), expected) <= 1e-5


@pytest.mark.gpu
def test_onnxruntime_cuda_io_binding_with_device_tensors_is_thread_safe(onnx_path, block):
    """8 threads x 50 requests with torch CUDA tensors in and out; each caller's reduction of its output
    is still queued on torch's stream when the output is freed, so memory handed to the next request
    before that work ran would corrupt an answer."""
    feeds, expected = _requests(block, THREADS * REQUESTS)
    with _cuda_onnxruntime()(onnx_path, device="cuda") as runner:

        def worker(start: int) -> list[float]:
            errors = []
            for i in range(start, len(feeds), THREADS):
                out = runner.infer_torch({"input": torch.from_numpy(feeds[i]).cuda()})["output"]
                copy = out * 1  # queued on the caller's stream
                del out
                errors.append(rel_l2(copy.cpu().numpy(), expected[i]))
            return errors

        with ThreadPoolExecutor(THREADS) as pool:
            errors = [e for chunk in pool.map(worker, range(THREADS)) for e in chunk]
    bad = [e for e in errors if not e <= 1e-5]
    assert not bad, f"{len(bad)} of {len(errors)} answers wrong, worst rel-L2 {max(bad):.2e}"


@pytest.mark.gpu
def test_onnxruntime_cuda_graph_session_is_thread_safe(tmp_path, block):
    """A graph session keeps its graphs per thread and captures in the global mode: the runner runs it on
    one worker thread of its own, so 8 callers at once get their own answers (and one graph)."""
    if "cuda" not in available_devices():
        pytest.skip("onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu)")
    from effattn.runtime.onnxruntime_runner import OnnxRuntimeRunner

    shape = (2, 16, 12, 12)
    path = export_onnx(block, ShapeProfile.single(*["x".join(map(str, shape))] * 3), tmp_path / "static.onnx").path
    with OnnxRuntimeRunner(path, device="cuda") as runner:
        assert runner.cuda_graph
        hammer(runner, block, tolerance=1e-5, shapes=[shape])
        assert len(runner._graphs) == 1


@pytest.mark.gpu
def test_concurrent_cuda_graph_captures(block):
    """Eight torch runners capture CUDA graphs from eight threads at once (a new shape each round): one
    capture at a time in a process, or torch.cuda.graph's synchronise / empty-cache and the global
    capture mode break the others."""
    runners = [TorchRunner(block, PROFILE, device="cuda", cuda_graph=True) for _ in range(THREADS)]
    feeds, expected = _requests(block, THREADS * 12)

    def worker(i: int) -> list[float]:
        return [
            rel_l2(runners[i].infer({"input": feeds[j]})["output"], expected[j]) for j in range(i, len(feeds), THREADS)
        ]

    with ThreadPoolExecutor(THREADS) as pool:
        errors = [e for chunk in pool.map(worker, range(THREADS)) for e in chunk]
    assert max(errors) <= 1e-5, max(errors)
    assert sum(r._graphs.captures for r in runners) >= THREADS


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_tensorrt_context_pool_is_thread_safe(tmp_path, onnx_path, block, cuda_graph):
    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("tensorrt is not installed (pip install 'effattn[gpu]')")
    from effattn.engines import build_engine
    from effattn.runtime.tensorrt_runner import TensorRTRunner

    plan = build_engine(onnx_path, precision="fp32", cache_dir=tmp_path / "cache").plan
    runner = TensorRTRunner(plan, contexts=3, cuda_graph=cuda_graph)
    hammer(runner, block, tolerance=1e-3)  # TF32 may be on in TensorRT's FP32 tactics
    assert (runner.graph_counts["replays"] > 0) == cuda_graph
    runner.close()
