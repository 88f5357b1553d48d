"""The CPU's INT8 artifact: NNCF's post-training quantization of the FP32 export on OpenVINO, saved as OpenVINO IR
(``model.xml`` + ``model.bin``) that OpenVINO's runner loads. :func:`effattn.export.quantize` writes it for a
``.xml`` output; the QDQ graph stays what TensorRT runs. Why: docs/decisions.md#the-cpus-int8-artifact.

``nncf`` and ``openvino`` are optional (the ``nncf`` and ``cpu`` extras): imported inside the functions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from ... import metadata
from ...errors import ExportError, InputError, first_line
from ...files import atomic_output, check_writable
from ...precisions import NNCF_KEEP_FLOAT, NNCF_PRESETS
from ..precision import attention_projections

log = logging.getLogger("effattn")

#: metadata key in the IR: how NNCF made it (preset, what stayed float)
NNCF_RECIPE = metadata.NNCF
#: the OpenVINO rt_info section that holds an ONNX file's metadata_props after read_model (save_model keeps it)
RT_INFO = "framework"


def nncf_available() -> bool:
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def check_ir_output(xml_out: Path, force: bool, preset: str, keep_float: str, qdq_options: bool = False) -> None:
    """Refuse what cannot be written before calibration runs: the output names, the options (``qdq_options``:
    the caller gave options only the QDQ graph takes), a missing NNCF."""
    if qdq_options:
        raise InputError("OpenVINO IR (.xml) is INT8 as NNCF places it: precision, float_type and ops are for .onnx")
    if xml_out.suffix != ".xml":
        raise InputError(f"{xml_out}: OpenVINO IR is written to a .xml file (its weights beside it, .bin)")
    check_writable(xml_out, force)
    check_writable(xml_out.with_suffix(".bin"), force)
    if preset not in NNCF_PRESETS:
        raise InputError(f"preset must be one of {', '.join(NNCF_PRESETS)}; got {preset!r}")
    if keep_float not in NNCF_KEEP_FLOAT:
        raise InputError(f"keep_float must be one of {', '.join(NNCF_KEEP_FLOAT)}; got {keep_float!r}")
    if not nncf_available():
        raise ExportError("writing OpenVINO IR (.xml) needs NNCF and OpenVINO: pip install 'effattn[cpu,nncf]'")


def ignored_attention(model: onnx.ModelProto) -> list[str]:
    """The nodes NNCF must not quantize to keep the attention float: the MatMuls the EA softmaxes feed (NNCF puts
    its FakeQuantize on a MatMul's inputs, the softmax outputs among them). Names the graph's nodes first."""
    return sorted({p.matmul for p in attention_projections(model)})


@contextlib.contextmanager
def _named_onnx(path: Path, model: onnx.ModelProto, renamed: bool) -> Iterator[Path]:
    """``path`` itself when :func:`ignored_attention` renamed no node (OpenVINO keeps ONNX node names as friendly
    names, the names the ignored scope gives), else a temporary copy of ``model`` with the names it gave."""
    if not renamed:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="effattn-nncf-") as tmp:
        named = Path(tmp) / path.name
        onnx.save(model, str(named))
        yield named


def quantize_ir(
    onnx_in: Path,
    model: onnx.ModelProto,
    feeds: list[dict[str, np.ndarray]],
    xml_out: Path,
    values: dict[str, str],
    *,
    preset: str,
    keep_float: str,
    force: bool,
) -> dict[str, int]:
    """``nncf.quantize(Core().read_model(onnx_in), nncf.Dataset(feeds))`` on every feed (``subset_size``), with
    ``preset`` and ``keep_float``; writes the IR with the export's metadata (OpenVINO's ``framework`` rt_info)
    plus ``values``. ``model``: the loaded ``onnx_in``, checked by the caller. Returns op type -> nodes
    with a quantized input."""
    import nncf
    import openvino as ov

    before = [n.name for n in model.graph.node]
    ignored = ignored_attention(model) if keep_float == "attention" else []
    if keep_float == "attention" and not ignored:
        raise ExportError(
            f"{onnx_in} has no Efficient-Attention block (Conv -> Softmax -> MatMul) to keep float; "
            "use keep_float 'none' (--keep-float none)"
        )
    with _named_onnx(onnx_in, model, before != [n.name for n in model.graph.node]) as path:
        try:
            ir = ov.Core().read_model(str(path))
        except Exception as e:
            raise ExportError(f"OpenVINO cannot read {onnx_in}: {first_line(e)}") from None
    options = {} if preset == "default" else {"preset": nncf.QuantizationPreset(preset)}
    try:
        with _nncf_off_stdout():
            quantized = nncf.quantize(
                ir,
                nncf.Dataset(feeds),
                subset_size=len(feeds),
                ignored_scope=nncf.IgnoredScope(names=ignored) if ignored else None,
                **options,
            )
    except Exception as e:  # NNCF and OpenVINO raise many types
        raise ExportError(f"NNCF quantization of {onnx_in} failed: {first_line(e)}") from None
    recipe = metadata.nncf_recipe(preset, keep_float) + (f" ({', '.join(ignored)})" if ignored else "")
    _save(quantized, xml_out, {**values, NNCF_RECIPE: recipe}, force)
    return dict(Counter(op.get_type_name() for op in quantized.get_ordered_ops() if fake_quantized(op)))


def copy_ir(xml_in: Path, xml_out: Path, values: dict[str, str], force: bool) -> None:
    """Write the IR ``xml_in`` again as ``xml_out`` (+ ``.bin``), ``values`` added to its metadata: how
    ``quantize --cpu-ir`` keeps the IR it measured, with what it measured."""
    import openvino as ov

    _save(ov.Core().read_model(str(xml_in)), xml_out, values, force)


def _save(model, xml_out: Path, values: dict[str, str], force: bool) -> None:
    """``model`` with ``values`` in its ``framework`` rt_info (beside the export's metadata), as ``xml_out`` and its
    ``.bin``, each written atomically (:func:`effattn.files.atomic_output`)."""
    import openvino as ov

    for key, value in values.items():
        model.set_rt_info(value, [RT_INFO, key])
    with atomic_output(xml_out, force) as tmp_xml, atomic_output(xml_out.with_suffix(".bin"), force) as tmp_bin:
        ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
        os.replace(tmp_xml.with_suffix(".bin"), tmp_bin)  # the IR finds its weights by the .xml's name


#: OpenVINO's ops that compute in INT8 when an input is fake-quantized, and the layout ops between (NNCF's
#: FakeQuantize may sit before a Transpose or Reshape of the operand)
_GEMMS = frozenset({"Convolution", "GroupConvolution", "MatMul"})
_LAYOUT = frozenset({"Transpose", "Reshape", "Squeeze", "Unsqueeze"})


def fake_quantized(op) -> bool:
    """Whether an OpenVINO convolution or MatMul reads a FakeQuantize output (through layout ops): an INT8 operand
    once compiled. NNCF compresses the weights themselves to INT8 constants (Convert, Multiply), not FakeQuantize."""

    def from_fq(node) -> bool:
        kind = node.get_type_name()
        return kind == "FakeQuantize" or (kind in _LAYOUT and from_fq(node.input(0).get_source_output().get_node()))

    return op.get_type_name() in _GEMMS and any(from_fq(i.get_source_output().get_node()) for i in op.inputs())


@contextlib.contextmanager
def _nncf_off_stdout() -> Iterator[None]:
    """NNCF logs INFO lines and draws its progress bar on stdout, where ``--json`` output goes: both go to stderr,
    and its INFO lines only when effattn logs at debug level (``-v``)."""
    from nncf.common.logging import nncf_logger

    level = nncf_logger.level
    handlers = [h for h in nncf_logger.handlers if type(h) is logging.StreamHandler]
    streams = [h.stream for h in handlers]
    nncf_logger.setLevel(logging.INFO if log.isEnabledFor(logging.DEBUG) else logging.WARNING)
    for handler in handlers:
        handler.setStream(sys.stderr)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # rich's progress bar writes to the sys.stdout of the moment
            yield
    finally:
        nncf_logger.setLevel(level)
        for handler, stream in zip(handlers, streams):
            handler.setStream(stream)
