"""Where a low-precision graph leaves its FP32 counterpart: Polygraphy's per-layer comparison
(``--onnx-outputs mark all``, ``debug precision``) for effattn files. Every float tensor the two graphs share by
name is marked as an output of both, both run on ONNX Runtime's CPU on the same feeds, and each tensor's error is
reported in graph order with the first one that leaves its tolerance.

Names match because the low-precision stages keep them: the FP16/BF16 pass (onnxconverter-common) and the QDQ
pass (ONNX Runtime's quantizer) add Cast and Q/DQ nodes with new output names beside the original tensors, which
keep theirs. One exception: onnxconverter-common renames output ``i`` of a node it keeps FP32 to
``NODE_output_cast_i`` (``insert_cast16_after_node`` in its float16.py), and where no FP16 consumer needs the
original name back it is gone; such a tensor is matched under that name. A tensor a rewrite removed (a Conv split
by ``split_concat_convs``) is counted as unmatched.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .. import metadata, precisions
from ..errors import ExportError, InputError, first_line
from ..shapes import random_inputs
from .base import Runner
from .onnxruntime_runner import OnnxRuntimeRunner
from .parity import Accumulator

_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}

#: What arithmetic ONNX Runtime's CPU provider gives each graph precision it runs
#: (docs/precision.md#bisect-where-a-low-precision-graph-leaves-fp32); BF16 it cannot (no BF16 Conv).
ARITHMETIC = {
    "fp32": "FP32",
    "fp16": "FP16 weights and tensors between nodes, but most nodes computed in FP32 (ONNX Runtime's CPU "
    "provider; docs/precision.md#fp16-arithmetic-on-a-cpu): this finds where FP16 rounding of weights and "
    "activations hurts, not FP16 accumulation",
    "int8": "INT8 Q/DQ rounding as written, float math in FP32 (ONNX Runtime's CPU provider runs the QDQ "
    "graph's Convs in float: no Q after them to fuse)",
    "fp8": "FP8 E4M3 Q/DQ rounding emulated, float math in FP32 (ONNX Runtime's CPU provider)",
}


@dataclass
class TensorError:
    """One tensor both graphs compute: worst errors over the feeds, and non-finite counts in each graph."""

    index: int  # its place in the reference graph's order
    name: str
    node: str
    op: str
    shape: str
    rel_l2: float
    max_abs: float
    cosine: float
    nan: int  # in the candidate
    inf: int
    reference_nan: int
    reference_inf: int
    limit: float

    @property
    def passed(self) -> bool:
        """Within the rel-L2 limit, and no NaN or infinity the reference does not have."""
        new_nonfinite = self.nan > self.reference_nan or self.inf > self.reference_inf
        return math.isfinite(self.rel_l2) and self.rel_l2 <= self.limit and not new_nonfinite


@dataclass
class Bisection:
    """The per-tensor comparison of a candidate graph with its reference, in the reference's graph order."""

    candidate: str
    reference: str
    precision: str  # the candidate's
    arithmetic: str
    tolerance: str  # the precision row whose limit applies
    limit: float
    feeds: list[dict[str, np.ndarray]]  # the inputs both graphs ran on
    rows: list[TensorError] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)  # reference float tensors the candidate lacks

    @property
    def first(self) -> TensorError | None:
        """The first tensor, in graph order, that leaves its tolerance (None: all within)."""
        return next((r for r in self.rows if not r.passed), None)

    @property
    def passed(self) -> bool:
        return self.first is None

    def to_dict(self) -> dict[str, Any]:
        first = self.first
        return {
            "candidate": self.candidate,
            "reference": self.reference,
            "precision": self.precision,
            "arithmetic": self.arithmetic,
            "tolerance": self.tolerance,
            "limit": self.limit,
            "feeds": len(self.feeds),
            "passed": self.passed,
            "first": None if first is None else first.name,
            "tensors": [asdict(r) | {"passed": r.passed} for r in self.rows],
            "unmatched": self.unmatched,
        }

    def __str__(self) -> str:
        header = ("#", "tensor", "op", "shape", "rel L2", "max abs", "cosine", "nan", "inf", "result")
        lines = [header] + [
            (
                str(r.index),
                r.name,
                r.op,
                r.shape,
                f"{r.rel_l2:.2e}",
                f"{r.max_abs:.2e}",
                f"{r.cosine:.6f}",
                str(r.nan),
                str(r.inf),
                "ok" if r.passed else "FAIL",
            )
            for r in self.rows
        ]
        widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
        table = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines]
        table.insert(1, "  ".join("-" * w for w in widths))
        first = self.first
        verdict = (
            f"every matched tensor within rel L2 {self.limit:.0e}"
            if first is None
            else f"first tensor out of tolerance: #{first.index} {first.name!r} (node {first.node!r}, {first.op}): "
            f"rel L2 {first.rel_l2:.2e} > {self.limit:.0e}"
            + (f", {first.nan} NaN, {first.inf} inf" if first.nan or first.inf else "")
        )
        return "\n".join(
            [
                f"{self.candidate} ({self.precision}) vs {self.reference} (fp32), tensor by tensor in graph order, "
                f"{len(self.feeds)} feed(s), on ONNX Runtime CPU",
                f"arithmetic: {self.arithmetic}",
                f"tolerance: rel L2 <= {self.limit:.0e} per tensor (the {self.tolerance} row); "
                f"{len(self.rows)} tensors matched by name, {len(self.unmatched)} unmatched",
                *table,
                verdict,
            ]
        )


def _load(path: Path, role: str) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except Exception as e:  # protobuf decode errors, external data outside the folder, ...
        raise ExportError(f"{role} {path} is not a loadable ONNX model: {first_line(e)}") from None


def _float_tensors(model: onnx.ModelProto) -> dict[str, tuple[int, onnx.NodeProto]]:
    """Node outputs of a float type, in graph order: name -> (element type, producing node)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as e:  # shape inference raises its own error types
        raise ExportError(f"shape inference failed, so tensor types are unknown: {first_line(e)}") from None
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in (*inferred.graph.value_info, *inferred.graph.output)
        if v.type.HasField("tensor_type")
    }
    return {
        out: (types[out], node) for node in model.graph.node for out in node.output if out and types.get(out) in _FLOATS
    }


def _check_same_model(candidate: Path, cand_meta: Mapping[str, str], reference: Path, ref_meta: Mapping[str, str]):
    """Refuse two files whose metadata name different models, arguments or checkpoints: exporters name tensors
    generically (``conv2d_2``, ``relu``), so unrelated graphs share names that mean nothing."""
    for key in (metadata.MODEL, metadata.MODEL_ARGS, metadata.CHECKPOINT_SHA256):
        if cand_meta.get(key) != ref_meta.get(key):
            raise InputError(
                f"{candidate} and {reference} record different {key} ({cand_meta.get(key)!r:.80} vs "
                f"{ref_meta.get(key)!r:.80}): bisect compares a file with the FP32 export it was made from"
            )


def _counterpart(name: str, node: onnx.NodeProto, tensors: Mapping[str, Any]) -> str | None:
    """The candidate's name for the reference tensor ``name`` (output of ``node``): the same, or the name
    onnxconverter-common gives the FP32 output of a node it keeps FP32; None if it has neither."""
    if name in tensors:
        return name
    renamed = f"{node.name}_output_cast_{list(node.output).index(name)}"
    return renamed if renamed in tensors else None


def _marked(model: onnx.ModelProto, tensors: Mapping[str, int], folder: Path, stem: str) -> Path:
    """A copy of ``model`` whose outputs are ``tensors`` (name -> element type), saved in ``folder``."""
    marked = onnx.ModelProto.FromString(model.SerializeToString())
    del marked.graph.output[:]
    marked.graph.output.extend(onnx.helper.make_tensor_value_info(n, t, None) for n, t in tensors.items())
    path = folder / f"{stem}.onnx"
    onnx.save(marked, str(path))
    return path


def bisect(
    candidate: str | Path,
    reference: str | Path,
    feeds: Sequence[Mapping[str, np.ndarray]] | None = None,
    tolerance: str | None = None,
    seed: int | None = None,
) -> Bisection:
    """Compare every float tensor of ``candidate`` (a low-precision file: FP16, BF16, INT8 or FP8 QDQ) with the
    tensor of the same name in ``reference`` (its FP32 export) on ONNX Runtime's CPU, over ``feeds`` (default:
    one random feed at the candidate's opt shape), in the reference's graph order. A tensor leaves its tolerance
    when its relative L2 error passes the ``tolerance`` row's output limit (default: the candidate's precision)
    or it holds NaN or infinity the reference does not."""
    candidate, reference = Path(candidate), Path(reference)
    cand_meta, ref_meta = metadata.read_metadata(candidate), metadata.read_metadata(reference)
    precision = metadata.precision_of(cand_meta)
    if (ref_precision := metadata.precision_of(ref_meta)) != "fp32":
        raise InputError(f"the reference {reference} is {ref_precision}; give the FP32 export it was made from")
    if precision not in ARITHMETIC:
        raise InputError(
            f"{candidate} is {precision}: ONNX Runtime's CPU provider, which bisect runs on, has no {precision} "
            "Conv; bisect the FP16 graph of the same FP32 export instead"
        )
    _check_same_model(candidate, cand_meta, reference, ref_meta)
    row = precisions.get(tolerance or precision)
    cand_model, ref_model = _load(candidate, "candidate"), _load(reference, "reference")
    ref_tensors = _float_tensors(ref_model)
    cand_tensors = _float_tensors(cand_model)
    shared = {
        name: found for name, (_, node) in ref_tensors.items() if (found := _counterpart(name, node, cand_tensors))
    }
    if not shared:
        raise InputError(
            f"{candidate} and {reference} share no float tensor names: is {reference} the FP32 export "
            f"{candidate} was converted or quantized from?"
        )
    with tempfile.TemporaryDirectory(prefix="effattn-bisect-") as tmp:
        folder = Path(tmp)
        with (
            OnnxRuntimeRunner(
                _marked(cand_model, {n: cand_tensors[n][0] for n in shared.values()}, folder, "c")
            ) as cand,
            OnnxRuntimeRunner(_marked(ref_model, {n: ref_tensors[n][0] for n in shared}, folder, "r")) as ref,
        ):
            if list(cand.inputs) != list(ref.inputs):
                raise InputError(f"{candidate} takes inputs {list(cand.inputs)}, {reference} {list(ref.inputs)}")
            if feeds is None:
                if cand.profile is None:
                    raise InputError(f"{candidate} has no shape profile: give inputs (--load-inputs FILE.npz)")
                feeds = [random_inputs(cand.profile, "opt", seed)]
            checked = [cand.check_feed(feed) for feed in feeds]  # every feed, before the first run
            return _measure(candidate, reference, precision, row, shared, ref_tensors, cand, ref, checked)


def _measure(
    candidate: Path,
    reference: Path,
    precision: str,
    row: precisions.Precision,
    shared: Mapping[str, str],
    ref_tensors: Mapping[str, tuple[int, onnx.NodeProto]],
    cand: Runner,
    ref: Runner,
    feeds: list[dict[str, Any]],
) -> Bisection:
    acc = {name: Accumulator() for name in shared}
    ref_nonfinite = dict.fromkeys(shared, (0, 0))
    for feed in feeds:
        got, want = cand.infer(feed), ref.infer(feed)
        for name, theirs in shared.items():
            expected = np.asarray(want[name], np.float64)
            acc[name].add_error(expected, np.asarray(got[theirs], np.float64))
            nan, inf = ref_nonfinite[name]
            ref_nonfinite[name] = (nan + int(np.isnan(expected).sum()), inf + int(np.isinf(expected).sum()))
    order = {name: i for i, name in enumerate(ref_tensors)}
    rows = []
    for name in shared:
        node, a = ref_tensors[name][1], acc[name]
        rows.append(
            TensorError(
                order[name], name, node.name, node.op_type, ", ".join(a.shapes), a.rel_l2, a.max_abs, a.cosine,
                a.nan, a.inf, *ref_nonfinite[name], row.tolerance.rel_l2,
            )
        )  # fmt: skip
    unmatched = [name for name in ref_tensors if name not in acc]
    return Bisection(
        str(candidate), str(reference), precision, ARITHMETIC[precision], row.name, row.tolerance.rel_l2,
        feeds, rows, unmatched,
    )  # fmt: skip
