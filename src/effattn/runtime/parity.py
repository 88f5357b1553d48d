"""Parity: run eager PyTorch and any runners on the same inputs and report how far apart they are.

Comparisons are data (a :class:`Report` of rows with tolerances), not ad-hoc asserts. Residual
connections hide errors, so for outputs that are ``input + branch`` the branch is measured too;
for logits the task-level check is argmax agreement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .. import precisions
from ..errors import InputError
from ..precisions import Tolerance
from ..shapes import ShapeProfile, format_shape, profile_inputs, random_inputs  # noqa: F401 (re-exported)
from .base import Runner

#: DESIGN.md's defaults, relative to eager FP32: each precision's tolerance row (effattn.precisions).
TOLERANCES: dict[str, Tolerance] = {p.name: p.tolerance for p in precisions.TABLE}


def _as_float64(value: Any) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


@dataclass
class Row:
    candidate: str
    output: str
    metric: str  # "output" | "branch" | "argmax"
    value: float  # rel L2 error, or argmax agreement (fraction)
    limit: float
    max_abs: float | None = None
    cosine: float | None = None
    shapes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        ok = self.value >= self.limit if self.metric == "argmax" else self.value <= self.limit
        return bool(ok) and np.isfinite(self.value)


@dataclass
class Report:
    rows: list[Row]
    precision: str

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    @property
    def failures(self) -> list[Row]:
        return [r for r in self.rows if not r.passed]

    def to_dict(self) -> dict:
        return {
            "precision": self.precision,
            "passed": self.passed,
            "rows": [asdict(r) | {"passed": r.passed} for r in self.rows],
        }

    def __str__(self) -> str:
        # the limit sits beside the value it bounds (rel L2 or argmax agreement); max abs and cosine inform only
        header = ("backend", "output", "check", "rel L2 / agree", "limit", "result", "max abs", "cosine")
        lines = [header]
        for r in self.rows:
            check = {"output": "output", "branch": "attention branch", "argmax": "argmax agreement"}[r.metric]
            value = f"{r.value:.4%}" if r.metric == "argmax" else f"{r.value:.2e}"
            limit = (">= " if r.metric == "argmax" else "<= ") + (
                f"{r.limit:.1%}" if r.metric == "argmax" else f"{r.limit:.0e}"
            )
            lines.append(
                (
                    r.candidate,
                    r.output,
                    check,
                    value,
                    limit,
                    "PASS" if r.passed else "FAIL",
                    "" if r.max_abs is None else f"{r.max_abs:.2e}",
                    "" if r.cosine is None else f"{r.cosine:.8f}",
                )
            )
        widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
        text = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines]
        text.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(text)


class Accumulator:
    """Worst-case errors over several feeds for one (candidate, output, metric); parity and
    :mod:`effattn.runtime.bisect` (one per tensor) keep their numbers here. ``nan``/``inf``: counts in ``got``."""

    def __init__(self) -> None:
        self.rel_l2 = 0.0
        self.max_abs = 0.0
        self.cosine = 1.0
        self.agree = 0
        self.total = 0
        self.nan = 0
        self.inf = 0
        self.shapes: list[str] = []

    def add_error(self, ref: np.ndarray, got: np.ndarray) -> None:
        self.nan += int(np.isnan(got).sum())
        self.inf += int(np.isinf(got).sum())
        diff = got - ref
        finite = bool(np.isfinite(got).all())
        ref_norm = float(np.linalg.norm(ref))
        rel = float(np.linalg.norm(diff)) / max(ref_norm, 1e-30) if finite else float("inf")
        cos = (
            float(np.dot(ref.ravel(), got.ravel()) / max(ref_norm * float(np.linalg.norm(got)), 1e-30))
            if finite
            else float("nan")
        )
        self.rel_l2 = max(self.rel_l2, rel)
        self.max_abs = max(self.max_abs, float(np.abs(diff).max()) if finite else float("inf"))
        self.cosine = min(self.cosine, cos) if np.isfinite(cos) else float("nan")
        shape = format_shape(ref.shape)
        if shape not in self.shapes:
            self.shapes.append(shape)

    def add_argmax(self, ref: np.ndarray, got: np.ndarray) -> None:
        self.agree += int((ref.argmax(axis=1) == got.argmax(axis=1)).sum())
        self.total += ref.size // ref.shape[1]


def compare(
    reference: Runner,
    candidates: Runner | Sequence[Runner] | Mapping[str, Runner],
    inputs: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    precision: str = "fp32",
    residuals: Mapping[str, str] | None = None,
    tolerance: Tolerance | None = None,
    argmax_outputs: Sequence[str] = ("logits",),
) -> Report:
    """Errors of each candidate against ``reference`` over every feed in ``inputs``.

    ``residuals`` maps an output to the input it adds (``{"output": "input"}`` for an attention
    block): the branch ``output - input`` is compared as well. Outputs named in ``argmax_outputs``
    (class logits on axis 1) also get argmax agreement, the task-level check.
    """
    if tolerance is None and precision not in TOLERANCES:
        raise InputError(
            f"no parity tolerances for precision {precision!r}; use one of {', '.join(TOLERANCES)} or pass tolerance="
        )
    tol = tolerance or TOLERANCES[precision]
    if isinstance(candidates, Runner):
        candidates = {candidates.name: candidates}
    elif not isinstance(candidates, Mapping):
        candidates = {c.name: c for c in candidates}
    feeds = [inputs] if isinstance(inputs, Mapping) else list(inputs)
    residuals = dict(residuals or {})
    acc: dict[tuple[str, str, str], Accumulator] = {}
    for feed in feeds:
        expected = {k: _as_float64(v) for k, v in reference.infer(feed).items()}
        for cand_name, runner in candidates.items():
            got = {k: _as_float64(v) for k, v in runner.infer(feed).items()}
            for out, ref in expected.items():
                if out not in got:
                    continue
                acc.setdefault((cand_name, out, "output"), Accumulator()).add_error(ref, got[out])
                if out in residuals:
                    x = _as_float64(feed[residuals[out]])
                    acc.setdefault((cand_name, out, "branch"), Accumulator()).add_error(ref - x, got[out] - x)
                if out in argmax_outputs and ref.ndim >= 2:
                    acc.setdefault((cand_name, out, "argmax"), Accumulator()).add_argmax(ref, got[out])
    rows = []
    for (cand_name, out, metric), a in acc.items():
        if metric == "argmax":
            rows.append(Row(cand_name, out, metric, a.agree / max(a.total, 1), tol.argmax_agreement))
        else:
            limit = tol.branch_rel_l2 if metric == "branch" else tol.rel_l2
            rows.append(Row(cand_name, out, metric, a.rel_l2, limit, a.max_abs, a.cosine, a.shapes))
    return Report(rows, precision)
