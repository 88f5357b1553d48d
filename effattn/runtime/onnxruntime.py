"""A Runner over an ONNX Runtime session (CPU by default; CUDA when asked or chosen by ``auto``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import metadata
from ..engines.onnxruntime import create_session
from .base import Runner, TensorSpec

_ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
}


class OnnxRuntimeRunner(Runner):
    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None) -> None:
        self.path = Path(path)
        self.device = device
        self.backend = f"onnxruntime-{device}"
        self.session = create_session(self.path, device, threads)
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        profile = metadata.profile_of(self.metadata)

        def spec(arg, with_profile: bool) -> TensorSpec:
            shape = tuple(d if isinstance(d, int) else (d or None) for d in arg.shape)
            prof = profile[arg.name] if with_profile and profile and arg.name in profile else None
            return TensorSpec(arg.name, np.dtype(_ORT_DTYPES.get(arg.type, np.float32)), shape, prof)

        super().__init__([spec(a, True) for a in self.session.get_inputs()],
                         [spec(a, False) for a in self.session.get_outputs()])

    def _infer(self, feed: dict[str, Any]) -> dict[str, np.ndarray]:
        arrays = {k: v if isinstance(v, np.ndarray) else v.detach().cpu().numpy() for k, v in feed.items()}
        values = self.session.run(list(self.outputs), arrays)
        return dict(zip(self.outputs, values))

    def close(self) -> None:
        self.session = None
