"""The precision stage: an FP16 ONNX graph with FP32 inputs and outputs.

TensorRT >= 10.12 prefers strongly typed networks and TensorRT 11 builds nothing else (its
``BuilderFlag.FP16`` is gone), so FP16 is a property of the graph: the tensors' types say what
runs in half precision. The same file runs on ONNX Runtime's CPU provider, which is how FP16
numerics are tested without a GPU. The conversion is onnxconverter-common's ``float16`` pass
(casts at the edges, weights stored in FP16); ops named in ``op_block_list`` stay FP32.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx

from .. import metadata
from ..errors import ExportError, first_line
from ..files import atomic_output, check_writable
from ..metadata import read_metadata, set_metadata

log = logging.getLogger(__name__)

#: Ops kept in FP32 on top of onnxconverter-common's own list (which holds Resize, TopK, Min/Max, ...).
#: Empty by measurement (ONNX Runtime CPU, 2026-11, tests/export/test_precision.py checks the limits):
#: attention-branch rel-L2 of the EA block vs eager FP32 is 2.0e-4 with Softmax in FP16 and 2.0e-4 with
#: it kept in FP32; with inputs x100, 1.9e-3 vs 4.4e-3 - FP16 Softmax stays finite (max-subtracted,
#: outputs in [0, 1]). Trained ea_segnet_tiny: argmax agreement 99.98% either way; ea_resnet_tiny's
#: global mean: 3.1e-4 either way. Pass ``fp32_ops=("Softmax",)`` where a backend's FP16 softmax is worse.
DEFAULT_FP32_OPS: tuple[str, ...] = ()


def to_fp16(
    onnx_in: str | Path,
    onnx_out: str | Path,
    *,
    fp32_ops: Sequence[str] = DEFAULT_FP32_OPS,
    force: bool = False,
) -> Path:
    """Write an FP16 copy of ``onnx_in`` to ``onnx_out`` (FP32 I/O, FP16 weights, ``fp32_ops`` in FP32).

    The effattn metadata is carried over with ``effattn.precision = fp16``.
    """
    from onnxconverter_common import float16

    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    check_writable(onnx_out, force)
    meta = read_metadata(onnx_in)
    if (graph := metadata.precision_of(meta)) != "fp32":
        raise ExportError(f"{onnx_in} is already {graph}; convert the FP32 export instead")
    try:
        model = onnx.load(str(onnx_in))
    except Exception as e:  # protobuf decode errors, external data outside the file's folder, ...
        raise ExportError(f"cannot load {onnx_in}: {first_line(e)}") from None
    # The converter trusts value_info types; stale FP32 entries from export would leave a Concat of
    # FP16 and FP32 inputs behind a blocked op. Let it infer types afresh.
    del model.graph.value_info[:]
    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(fp32_ops))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # it warns about every value it clamps to the FP16 range
            half = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=block)
        onnx.checker.check_model(half, full_check=True)
    except Exception as e:  # the converter raises plain Exceptions and ValidationErrors
        raise ExportError(f"FP16 conversion of {onnx_in} failed: {first_line(e)}") from e
    set_metadata(half, {metadata.PRECISION: "fp16", metadata.FP32_OPS: ",".join(sorted(fp32_ops))})
    with atomic_output(onnx_out, force) as tmp:
        onnx.save(half, tmp)
    log.debug("wrote FP16 graph %s (FP32 ops: %s)", onnx_out, ", ".join(fp32_ops))
    return onnx_out
