"""CUDA graphs for fixed shapes: capture one call, replay it while the input shapes stay the same.
One capture at a time per process (:data:`CAPTURE_LOCK`, ``capture_error_mode="thread_local"``);
:class:`GraphPolicy` decides when to capture, :class:`ShapeGraphs` holds the graphs per shape for one
execution context. Rules: docs/gpu-tensorrt.md#cuda-graphs."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

ShapeKey = tuple[tuple[int, ...], ...]

#: held by every CUDA-graph capture and teardown in this process (see the module docstring)
CAPTURE_LOCK = threading.RLock()


def shape_key(feed: Mapping[str, Any]) -> ShapeKey:
    return tuple(tuple(v.shape) for v in feed.values())


@dataclass
class CapturedGraph:
    graph: Any  # torch.cuda.CUDAGraph
    inputs: dict[str, Any]  # static input buffers the graph reads
    outputs: dict[str, Any]  # buffers the graph writes

    def replay(self, feed: Mapping[str, Any], stream) -> dict[str, Any]:
        """Copy ``feed`` into the captured inputs, replay, and return copies of the outputs."""
        import torch

        stream.wait_stream(torch.cuda.current_stream())  # the feed may still be in flight on the caller's stream
        with torch.cuda.stream(stream):
            for name, value in feed.items():
                self.inputs[name].copy_(value, non_blocking=True)
            self.graph.replay()
            outputs = {name: out.clone() for name, out in self.outputs.items()}
        stream.synchronize()
        return outputs


def capture(run: Callable[[dict[str, Any]], dict[str, Any]], feed: Mapping[str, Any], stream) -> CapturedGraph:
    """Capture ``run(inputs) -> outputs`` (which must issue its GPU work on ``stream``) for ``feed``'s shapes."""
    import torch

    with CAPTURE_LOCK:
        static = {name: value.clone() for name, value in feed.items()}
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            run(static)  # the warm-up run: lazy allocations must not happen inside the capture
        stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
            outputs = run(static)
    return CapturedGraph(graph, static, outputs)


class GraphPolicy:
    """When to capture: ``True`` always, ``False`` never, ``None`` (auto) for static profiles at once and
    for dynamic ones when the same shapes arrive twice in a row."""

    def __init__(self, mode: bool | None, static_profile: bool) -> None:
        self.mode = mode
        self.static_profile = static_profile

    @property
    def enabled(self) -> bool:
        return self.mode is not False

    def wants_capture(self, key: ShapeKey, previous: ShapeKey | None) -> bool:
        if self.mode is None and not self.static_profile:
            return key == previous
        return bool(self.enabled)


class ShapeGraphs:
    """Captured graphs by input shapes for one execution context (at most ``capacity``, least recently
    used dropped first); :meth:`run` replays, captures or runs plainly as the policy says.

    ``exclusive``: the context holds one shape at a time (a TensorRT execution context), so running it
    at another shape, plainly or in a new capture, drops the graphs captured before.
    """

    def __init__(self, policy: GraphPolicy, capacity: int = 4, exclusive: bool = False) -> None:
        self.policy = policy
        self.capacity = 1 if exclusive else capacity
        self.exclusive = exclusive
        self.graphs: OrderedDict[ShapeKey, CapturedGraph] = OrderedDict()
        self.previous: ShapeKey | None = None
        self.captures = 0
        self.replays = 0

    def run(self, run: Callable[[dict[str, Any]], dict[str, Any]], feed: dict[str, Any], stream) -> dict[str, Any]:
        key = shape_key(feed)
        previous, self.previous = self.previous, key
        if not self.policy.enabled:
            return self._plain(run, feed, stream)
        graph = self.graphs.get(key)
        if graph is None:
            if self.exclusive:
                self.clear(keep_previous=True)
            if not self.policy.wants_capture(key, previous):
                return self._plain(run, feed, stream)
            if len(self.graphs) >= self.capacity:
                with CAPTURE_LOCK:
                    self.graphs.popitem(last=False)
            graph = self.graphs[key] = capture(run, feed, stream)
            self.captures += 1
        self.graphs.move_to_end(key)
        self.replays += 1
        return graph.replay(feed, stream)

    @staticmethod
    def _plain(run, feed, stream) -> dict[str, Any]:
        import torch

        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            outputs = run(feed)
        stream.synchronize()
        return outputs

    def clear(self, keep_previous: bool = False) -> None:
        """Drop the captured graphs (under the capture lock: a graph's teardown frees pool memory)."""
        with CAPTURE_LOCK:
            self.graphs.clear()
        if not keep_previous:
            self.previous = None
