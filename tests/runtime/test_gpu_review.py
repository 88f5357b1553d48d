"""Defects a review of the GPU path against the real packages found, checked where no GPU is needed.

Each test here failed on the code before the fix (issue: GPU correctness); the GPU halves of the same
checks are the gpu-marked tests in test_concurrency.py, test_cudagraphs.py and engines/test_tensorrt.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from effattn.engines.onnxruntime_session import provider_options
from effattn.errors import BackendError
from effattn.export import export_onnx
from effattn.models import EfficientAttention
from effattn.runtime.base import Runner
from effattn.runtime.onnxruntime_runner import OnnxRuntimeRunner, wants_cuda_graph
from effattn.runtime.tensorrt_runner import io_dtypes
from effattn.runtime.torch_runner import TorchRunner
from effattn.shapes import ShapeProfile

PROFILE = ShapeProfile.single("1x8x8x8", "1x8x8x8", "1x8x8x8")  # static: CUDA graphs would be automatic


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_torch_runner_leaves_the_callers_module_as_it_was(dtype, rng):
    model = EfficientAttention(8, 4, 2, 8).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    runner = TorchRunner(model, PROFILE, dtype=dtype)
    assert model.training and all(p.dtype == torch.float32 for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x = rng.standard_normal((1, 8, 8, 8), dtype=np.float32)
    assert runner.infer(x)["output"].dtype == np.float32
    assert TorchRunner(model.eval(), PROFILE).model is model  # nothing to convert: no copy


def test_torch_runner_keeps_integer_outputs_integer():
    class Argmax(torch.nn.Module):
        def forward(self, x):
            return x.argmax(1)

    out = TorchRunner(Argmax(), PROFILE, ["label"]).infer(np.ones((1, 8, 8, 8), np.float32))["label"]
    assert out.dtype == np.int64


def test_fp32_graphs_on_onnxruntime_cuda_are_not_lowered_to_tf32():
    assert provider_options("cuda")["use_tf32"] == "0"
    assert provider_options("cuda", cuda_graph=True)["use_tf32"] == "0"


def test_onnxruntime_cuda_graphs_only_with_io_binding():
    assert not wants_cuda_graph("cuda", None, io_binding=False, static_profile=True)
    assert wants_cuda_graph("cuda", None, io_binding=True, static_profile=True)
    assert not wants_cuda_graph("cuda", None, io_binding=True, static_profile=False)
    assert not wants_cuda_graph("cpu", True, io_binding=True, static_profile=True)
    with pytest.raises(BackendError, match="CUDA graphs need I/O binding"):
        wants_cuda_graph("cuda", True, io_binding=False, static_profile=True)


def test_runner_without_io_binding_never_asks_for_a_graph_session(tmp_path, monkeypatch):
    """device='cuda' with a static profile and io_binding=False: before the fix the runner asked ONNX
    Runtime for a CUDA-graph session anyway, whose replays ignore the feeds given to session.run."""
    import effattn.runtime.onnxruntime_runner as ort_runner
    from effattn.engines.onnxruntime_session import create_session

    path = export_onnx(EfficientAttention(8, 4, 2, 8), PROFILE, tmp_path / "static.onnx").path
    asked = []

    def fake_session(path, device, threads=None, cuda_graph=False, spinning=True, compute_stream=None):
        asked.append(cuda_graph)
        return create_session(path, "cpu", threads)

    monkeypatch.setattr(ort_runner, "create_session", fake_session)
    runner = OnnxRuntimeRunner(path, device="cuda", io_binding=False)
    assert asked == [False] and not runner.cuda_graph


def test_onnxruntime_gpu_providers_compute_on_the_stream_they_are_given():
    """``user_compute_stream`` (an address, as ONNX Runtime parses it) for both GPU providers; the CPU has none."""
    assert provider_options("cuda", compute_stream=0x7F00)["user_compute_stream"] == str(0x7F00)
    assert provider_options("tensorrt", compute_stream=0x7F00)["user_compute_stream"] == str(0x7F00)
    assert "user_compute_stream" not in provider_options("cuda")
    with pytest.raises(BackendError, match="compute stream needs device"):
        provider_options("cpu", compute_stream=0x7F00)


class _FakeStream:
    cuda_stream = 0x7F00


class _RecordingBinding:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append(name)


@pytest.mark.parametrize("io_binding", [True, False])
def test_onnxruntime_cuda_runner_orders_its_session_by_stream_not_by_barrier(tmp_path, monkeypatch, io_binding):
    """The I/O-binding race (docs/gpu-tensorrt.md#open-items), pinned where no GPU is: with I/O binding on
    CUDA the session computes on the runner's own torch stream (its address given as the provider's
    ``user_compute_stream``), and a bound run is ``run_with_iobinding`` alone, with no device-wide
    ``synchronize_outputs()`` after it. The old runner (own stream per provider, then cudaDeviceSynchronize)
    fails both asserts; without I/O binding ``session.run`` copies through the host and needs no stream."""
    import effattn.runtime.onnxruntime_runner as ort_runner
    from effattn.engines.onnxruntime_session import create_session

    path = export_onnx(
        EfficientAttention(8, 4, 2, 8), ShapeProfile.single("1x8x4x4", "1x8x8x8", "2x8x8x8"), tmp_path / "m.onnx"
    ).path
    asked = []

    def fake_session(path, device, threads=None, cuda_graph=False, spinning=True, compute_stream=None):
        asked.append(compute_stream)
        return create_session(path, "cpu", threads)

    monkeypatch.setattr(ort_runner, "create_session", fake_session)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: _FakeStream())
    runner = OnnxRuntimeRunner(path, device="cuda", io_binding=io_binding)
    assert asked == ([0x7F00] if io_binding else [None])

    calls = []
    monkeypatch.setattr(runner, "session", type("S", (), {"run_with_iobinding": lambda s, b, o: calls.append("run")})())
    binding = _RecordingBinding()
    runner._run(binding, -1, None)
    assert calls == ["run"] and binding.calls == []  # no synchronize_outputs / synchronize_inputs


def test_every_runner_has_metadata():
    class Bare(Runner):
        def _infer(self, feed):
            return {}

    assert dict(Bare([], []).metadata) == {}
    assert dict(TorchRunner(EfficientAttention(8, 4, 2, 8), PROFILE).metadata) == {}


def test_tensorrt_io_types_are_mapped_or_refused_by_name():
    assert io_dtypes("FLOAT", "x") == ("float32", "float32")
    assert io_dtypes("HALF", "x") == ("float16", "float16")
    assert io_dtypes("BF16", "x") == ("bfloat16", "float32")  # numpy has no bfloat16: fed as float32
    assert io_dtypes("INT64", "x") == ("int64", "int64")
    for name in ("FP8", "INT4", "FP4", "E8M0"):
        with pytest.raises(BackendError, match=f"'logits' has TensorRT type {name}, which effattn cannot"):
            io_dtypes(name, "logits")


def test_demo_works_with_a_runner_that_is_not_onnx_runtime(tmp_path, monkeypatch, capsys):
    """demo read ``runner.metadata``, which only the ONNX Runtime runner had (AttributeError when auto
    picked TensorRT). Here auto 'picks' a runner that wraps ONNX Runtime but is no OnnxRuntimeRunner."""
    import effattn.pipeline
    from effattn.cli import main

    real_load = effattn.pipeline.load

    class Wrapped(Runner):
        backend = "wrapped"

        def __init__(self, inner):
            super().__init__(list(inner.inputs.values()), list(inner.outputs.values()))
            self.inner = inner

        def _infer(self, feed):
            return self.inner.infer(feed)

    monkeypatch.setattr(effattn.pipeline, "load", lambda *a, **k: Wrapped(real_load(*a, **k)))
    assert main(["demo", "--out", str(tmp_path), "--seconds", "0.05", "-q"]) == 0
    assert "wrapped fp16" in capsys.readouterr().out


def test_gpu_rows_time_device_tensors_between_cuda_events(monkeypatch):
    """Before the fix a CUDA row timed ``infer(numpy)`` with perf_counter: pageable copies and input
    conversion were in the median that was then divided by on-device copy bandwidth."""
    from effattn.bench import timing

    calls = []

    class Recorder:
        def infer(self, feed):
            calls.append(("infer", type(next(iter(feed.values())))))

        def infer_torch(self, feed):
            calls.append(("infer_torch", type(next(iter(feed.values())))))

    monkeypatch.setattr(timing, "to_device", lambda value, device: torch.as_tensor(value))  # no GPU here
    feed = {"input": np.zeros((1, 8, 8, 8), np.float32)}
    timing.timed_call(Recorder(), feed, "cuda")()
    timing.timed_call(Recorder(), feed, "cpu")()
    assert calls == [("infer_torch", torch.Tensor), ("infer", np.ndarray)]
    assert timing.clock_for("cuda") is timing.cuda_event_seconds
    assert timing.clock_for("cpu") is timing.wall_seconds


def test_both_onnxruntime_packages_installed_is_named_with_the_fix(tmp_path, monkeypatch):
    """onnxruntime and onnxruntime-gpu share one folder; the old README's uninstall of one broke the other.
    A machine with both gets told so when it asks for CUDA (here the CPU build answers the import)."""
    from importlib import metadata

    from effattn.engines import onnxruntime_session as engines

    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "1.31.1" if name == "onnxruntime-gpu" else real(name))
    assert [n.split()[0] for n in engines.conflicting_installs()] == ["onnxruntime", "onnxruntime-gpu"]
    path = export_onnx(EfficientAttention(8, 4, 2, 8), PROFILE, tmp_path / "b.onnx").path
    if "cuda" in engines.available_devices():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(
        BackendError,
        match="are both installed and share one folder: pip uninstall -y onnxruntime "
        "onnxruntime-gpu, then pip install 'effattn\\[gpu\\]'",
    ):
        engines.create_session(path, "cuda")
