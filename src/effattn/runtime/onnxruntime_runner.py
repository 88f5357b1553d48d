"""A Runner over an ONNX Runtime session (CPU by default; CUDA when asked or chosen by ``auto``).
On CUDA it binds torch tensors by address (I/O binding) on a torch stream the session computes on (torch is
imported by those paths alone: the CPU path runs where torch is not installed), and can
replay the provider's CUDA graphs (at most ``MAX_GRAPHS`` shapes, on one worker thread, under
:data:`~.cudagraphs.CAPTURE_LOCK`); every run can be stopped from another thread (:meth:`~OnnxRuntimeRunner.terminate`).
See docs/gpu-tensorrt.md#onnx-runtime-on-cuda."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .. import dtypes, metadata
from ..engines.onnxruntime_session import create_session, import_onnxruntime
from ..errors import BackendError, InputError
from .base import Runner, TensorSpec
from .cudagraphs import CAPTURE_LOCK, ShapeKey, shape_key

log = logging.getLogger(__name__)


def _host_dtype(arg) -> np.dtype:
    """The numpy dtype of an ONNX Runtime input or output; a type numpy cannot hold is refused by name."""
    try:
        row = dtypes.lookup("ort", arg.type, f"ONNX tensor {arg.name!r}")
    except InputError as e:
        raise BackendError(str(e)) from None
    if row.numpy is None:
        raise BackendError(f"ONNX tensor {arg.name!r} is {arg.type}, which has no numpy type to feed or read")
    return np.dtype(row.numpy)


def _ort_device(device) -> tuple[str, int]:
    """ONNX Runtime's (device_type, device_id) for a torch device."""
    return ("cuda", device.index or 0) if device.type == "cuda" else ("cpu", 0)


def wants_cuda_graph(device: str, cuda_graph: bool | None, io_binding: bool, static_profile: bool) -> bool:
    """Whether a session should capture CUDA graphs: only on a GPU, only with I/O binding (without it a
    replay would answer from stale buffers), and in ``auto`` (None) only for static profiles."""
    if device == "cpu" or cuda_graph is False:
        return False
    if not io_binding:
        if cuda_graph:
            raise BackendError(
                "ONNX Runtime CUDA graphs need I/O binding (a replay ignores the feeds given to "
                "session.run); pass io_binding=True or cuda_graph=False"
            )
        return False
    return bool(cuda_graph) or static_profile


class OnnxRuntimeRunner(Runner):
    #: shapes captured per graph session (ONNX Runtime frees a session's graphs only with the session)
    MAX_GRAPHS = 8

    def __init__(
        self,
        path: str | Path,
        device: str = "cpu",
        threads: int | None = None,
        cuda_graph: bool | None = None,
        io_binding: bool | None = None,
        spinning: bool = True,
    ) -> None:
        """``cuda_graph`` (CUDA only): True, False, or None to use graphs when the profile is static;
        ``io_binding``: bind buffers by address (default: on for GPU devices); ``spinning``: ONNX Runtime's
        idle threads spin for the next run (its default) or sleep (:func:`create_session`)."""
        self.path: Path = Path(path)
        self.device = device
        self.threads, self.spinning = threads, spinning
        self.io_binding = device != "cpu" if io_binding is None else io_binding
        self.backend = f"onnxruntime-{device}"
        self._stream = self._own_stream()  # torch and ONNX Runtime share it: ordered on the GPU, no barriers
        self._compute_stream = None if self._stream is None else int(self._stream.cuda_stream)
        self.session = create_session(
            self.path, device, threads, spinning=spinning, compute_stream=self._compute_stream
        )
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        profile = metadata.profile_of(self.metadata)

        def spec(arg, with_profile: bool) -> TensorSpec:
            shape = tuple(d if isinstance(d, int) else (d or None) for d in arg.shape)
            prof = profile[arg.name] if with_profile and profile and arg.name in profile else None
            return TensorSpec(arg.name, _host_dtype(arg), shape, prof)

        super().__init__(
            [spec(a, True) for a in self.session.get_inputs()], [spec(a, False) for a in self.session.get_outputs()]
        )
        self._output_shapes: dict[ShapeKey, list[tuple[int, ...]]] = {}
        self._graphs: dict[ShapeKey, tuple[int, dict, dict]] = {}  # shape -> (graph id, inputs, outputs)
        self._worker: ThreadPoolExecutor | None = None  # the one thread that runs a graph session
        self._runs: dict[int, Any] = {}  # calling thread -> the options of the run it is in
        self.cuda_graph = False
        static = self.profile is not None and self.profile.static
        if wants_cuda_graph(device, cuda_graph, self.io_binding, static):
            try:
                self.session = create_session(
                    self.path, device, threads, cuda_graph=True, spinning=spinning, compute_stream=self._compute_stream
                )
                self.cuda_graph = True
                self._worker = ThreadPoolExecutor(1, thread_name_prefix="effattn-ort-graph")
            except BackendError as e:
                if cuda_graph:
                    raise
                log.info("CUDA graphs off for %s: %s", self.path, e)

    def _own_stream(self):
        """A torch CUDA stream of the runner's own, for bound runs on a GPU (None on the CPU or without I/O
        binding: ``session.run`` copies through the host and waits for its outputs itself). I/O binding binds
        torch tensors, so it is where this runner needs torch."""
        if not self.io_binding:
            return None
        try:
            import torch
        except ImportError:
            raise BackendError(
                "ONNX Runtime I/O binding (on by default on a GPU) binds torch tensors: install torch, or pass "
                "io_binding=False"
            ) from None
        if self.device == "cpu" or not torch.cuda.is_available():
            return None  # without CUDA in torch, create_session says what is missing
        return torch.cuda.Stream(device=torch.device("cuda", torch.cuda.current_device()))

    def stop_spinning(self) -> None:
        """Reopen the session with sleeping idle threads (``spinning=False``), if it spins; CPU sessions only
        (a graph session keeps its captured graphs)."""
        if self.spinning and self.device == "cpu":
            self.session = create_session(self.path, self.device, self.threads, spinning=False)
            self.spinning = False

    # ------------------------------------------------------------------ stopping a run
    @contextmanager
    def _run_options(self):
        """Fresh RunOptions for one run, findable by the calling thread while the run lasts."""
        options, thread = import_onnxruntime().RunOptions(), threading.get_ident()
        self._runs[thread] = options
        try:
            yield options
        finally:
            del self._runs[thread]

    def terminate(self, thread: int) -> bool:
        options = self._runs.get(thread)
        if options is None:
            return False
        options.terminate = True  # read by the run's own thread between nodes (onnxruntime's RunOptions docs)
        return True

    # ------------------------------------------------------------------ numpy in, numpy out
    def _infer(self, feed: dict[str, Any]) -> dict[str, np.ndarray]:
        if self.io_binding:
            return {k: v.cpu().numpy() for k, v in self._infer_torch(feed).items()}
        arrays = {k: v if isinstance(v, np.ndarray) else v.detach().cpu().numpy() for k, v in feed.items()}
        with self._run_options() as options:
            values = self.session.run(list(self.outputs), arrays, options)
        return dict(zip(self.outputs, values))

    # ------------------------------------------------------------------ I/O binding (CUDA)
    def _torch_dtype(self, name: str):
        import torch

        spec = self.inputs.get(name) or self.outputs[name]
        return torch.from_numpy(np.empty(0, spec.dtype)).dtype

    def _infer_torch(self, feed: dict[str, Any]) -> dict[str, Any]:
        if not self.io_binding:
            return super()._infer_torch(feed)
        import torch

        on_gpu = self.device != "cpu"
        device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
        cast = {k: torch.as_tensor(v).to(device).contiguous() for k, v in feed.items()}  # on the caller's stream
        caller = torch.cuda.current_stream() if self._stream is not None else None
        if caller is not None:
            self._stream.wait_stream(caller)  # the session's kernels come after the caller's writes of the inputs
        with self._run_options() as options:
            if self._worker is not None:
                outputs = self._worker.submit(self._run_bound, cast, device, options).result()
            else:
                outputs = self._run_bound(cast, device, options)
        if caller is not None:
            caller.wait_stream(self._stream)  # what the caller does next comes after the outputs are written
            for out in outputs.values():
                out.record_stream(caller)  # freed, their memory is not reused on our stream before the caller is done
        return outputs

    def _run_bound(self, cast: dict[str, Any], device, options) -> dict[str, Any]:
        """One bound run, with every torch operation on the runner's stream (the thread's current stream
        is per thread, and a graph session runs on the worker thread)."""
        if self._stream is None:
            return self._run_bound_here(cast, device, options)
        import torch

        with torch.cuda.stream(self._stream):
            return self._run_bound_here(cast, device, options)

    def _run_bound_here(self, cast: dict[str, Any], device, options) -> dict[str, Any]:
        key = shape_key(cast)
        if key not in self._output_shapes:
            return self._first_run(cast, key, options)
        entry = self._graphs.get(key)
        if entry is None and self.cuda_graph and len(self._graphs) < self.MAX_GRAPHS:
            entry = self._new_graph(cast, key, device, options)
        if entry is None:
            outputs = self._empty_outputs(key, device)
            self._run(self._bind(cast, outputs), -1, options)
            return outputs
        graph_id, inputs, outputs = entry
        for name, value in cast.items():
            inputs[name].copy_(value)  # on the session's stream: the replay reads them after the copy
        self._run(self._bind(inputs, outputs), graph_id, options)
        return {name: out.clone() for name, out in outputs.items()}

    def _first_run(self, feed: dict[str, Any], key: ShapeKey, options) -> dict[str, Any]:
        """Let ONNX Runtime allocate the outputs once to learn their shapes (no graph capture)."""
        import torch

        device = next(iter(feed.values())).device
        binding = self._bind(feed, {})
        for name in self.outputs:
            binding.bind_output(name, *_ort_device(device))
        self._run(binding, -1, options)
        values = binding.copy_outputs_to_cpu()  # once per new input shape
        self._output_shapes[key] = [tuple(v.shape) for v in values]
        return {name: torch.from_numpy(v).to(device) for name, v in zip(self.outputs, values)}

    def _empty_outputs(self, key: ShapeKey, device) -> dict[str, Any]:
        import torch

        return {
            name: torch.empty(shape, dtype=self._torch_dtype(name), device=device)
            for name, shape in zip(self.outputs, self._output_shapes[key])
        }

    def _new_graph(self, feed: dict[str, Any], key: ShapeKey, device, options) -> tuple[int, dict, dict]:
        """Capture a graph for ``key``: the first run with a new id captures (id 0 is ONNX Runtime's own)."""
        import torch

        graph_id, inputs = len(self._graphs) + 1, {k: v.clone() for k, v in feed.items()}
        outputs = self._empty_outputs(key, device)
        with CAPTURE_LOCK:
            torch.cuda.current_stream().synchronize()  # the runner's stream: nothing pending when capture begins
            self._run(self._bind(inputs, outputs), graph_id, options)
        self._graphs[key] = (graph_id, inputs, outputs)
        return self._graphs[key]

    def _bind(self, inputs: dict[str, Any], outputs: dict[str, Any]):
        binding = self.session.io_binding()
        for name, x in inputs.items():
            binding.bind_input(name, *_ort_device(x.device), self.inputs[name].dtype.type, tuple(x.shape), x.data_ptr())
        for name, y in outputs.items():
            binding.bind_output(
                name, *_ort_device(y.device), self.outputs[name].dtype.type, tuple(y.shape), y.data_ptr()
            )
        return binding

    def _run(self, binding, graph_id: int, options) -> None:
        """Run a bound session. On a GPU it computes on the runner's stream (``user_compute_stream``), the
        stream torch wrote the inputs and allocated the outputs on, so no barrier is needed: no
        ``synchronize_outputs()`` (a device-wide ``cudaDeviceSynchronize``). Why: docs/gpu-tensorrt.md#open-items."""
        if self.cuda_graph:
            options.add_run_config_entry("gpu_graph_id", str(graph_id))  # -1: run without capture or replay
        self.session.run_with_iobinding(binding, options)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None
        with CAPTURE_LOCK:  # the session's graphs go with it
            self._graphs.clear()
            self.session = None
