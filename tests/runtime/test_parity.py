"""The parity report: metrics computed right, and residual-hidden errors caught on the branch."""

import copy

import numpy as np
import pytest
import torch

from effattn.models import EfficientAttention
from effattn.runtime import TOLERANCES, compare, random_inputs
from effattn.runtime.base import Runner, TensorSpec
from effattn.runtime.torch_runner import TorchRunner
from effattn.shapes import ShapeProfile

PROFILE = ShapeProfile.single("1x16x8x8", "2x16x16x16", "2x16x24x24")


class Shifted(Runner):
    """A candidate whose output is the reference's plus a known error, to check the arithmetic."""

    backend = "shifted"

    def __init__(self, reference, error):
        self.reference, self.error = reference, error
        super().__init__(list(reference.inputs.values()), [TensorSpec("output", np.dtype(np.float32), None)])

    def _infer(self, feed):
        out = self.reference.infer(feed)["output"]
        return {"output": out + self.error(out)}


def test_metrics_are_exact_for_a_known_error():
    ref = TorchRunner(EfficientAttention(16, 8, 2, 16), PROFILE)
    feed = random_inputs(PROFILE, "opt", seed=0)
    report = compare(ref, Shifted(ref, lambda o: 0.01 * o), feed)
    (row,) = report.rows
    assert row.value == pytest.approx(0.01, rel=1e-4)
    assert row.cosine == pytest.approx(1.0, abs=1e-9)
    assert row.max_abs == pytest.approx(float(np.abs(0.01 * ref.infer(feed)["output"]).max()), rel=1e-3)
    assert not row.passed and not report.passed and "FAIL" in str(report)


def test_residual_hides_an_error_that_the_branch_check_catches():
    """A 5e-4 relative error in the reprojection passes on the block output but fails on the branch."""
    torch.manual_seed(0)
    block = EfficientAttention(16, 8, 2, 16).eval()
    with torch.no_grad():
        block.reprojection.weight.mul_(0.05)  # a small branch next to a large residual, as in trained nets
        block.reprojection.bias.zero_()
    bad = copy.deepcopy(block)
    with torch.no_grad():
        bad.reprojection.weight.mul_(1 + 5e-4)
    feeds = [random_inputs(PROFILE, w) for w in ("min", "opt", "max")]
    report = compare(
        TorchRunner(block, PROFILE), {"bad": TorchRunner(bad, PROFILE)}, feeds, residuals={"output": "input"}
    )
    rows = {r.metric: r for r in report.rows}
    assert rows["output"].passed, report  # the residual hides it...
    assert not rows["branch"].passed, report  # ...the branch does not
    assert rows["branch"].value == pytest.approx(5e-4, rel=0.05)
    assert rows["output"].shapes == ["1x16x8x8", "2x16x16x16", "2x16x24x24"]


def test_argmax_agreement_counts_pixels():
    class Logits(Runner):
        backend = "logits"

        def __init__(self, flip):
            self.flip = flip
            super().__init__(
                [TensorSpec("input", np.dtype(np.float32), (1, 2, 4, 4))],
                [TensorSpec("logits", np.dtype(np.float32), None)],
            )

        def _infer(self, feed):
            x = np.array(feed["input"], copy=True)
            if self.flip:
                x[0, :, 0, 0] = x[0, ::-1, 0, 0]  # change one pixel's winner
            return {"logits": x}

    x = np.zeros((1, 2, 4, 4), np.float32)
    x[0, 0] = 1.0
    report = compare(Logits(False), Logits(True), {"input": x})
    row = next(r for r in report.rows if r.metric == "argmax")
    assert row.value == pytest.approx(15 / 16)
    assert not row.passed and row.limit == TOLERANCES["fp32"].argmax_agreement


def test_non_finite_outputs_fail():
    ref = TorchRunner(EfficientAttention(16, 8, 2, 16), PROFILE)
    report = compare(
        ref,
        Shifted(ref, lambda o: np.where(o > 0, np.inf, 0).astype(np.float32)),
        random_inputs(PROFILE, "min", seed=0),
    )
    assert not report.passed


def test_report_to_dict_schema():
    ref = TorchRunner(EfficientAttention(16, 8, 2, 16), PROFILE)
    d = compare(ref, Shifted(ref, lambda o: 0 * o), random_inputs(PROFILE, "min", seed=0)).to_dict()
    assert d["passed"] is True and d["precision"] == "fp32"
    assert set(d["rows"][0]) >= {"candidate", "output", "metric", "value", "limit", "max_abs", "cosine", "passed"}


def test_an_unknown_precision_is_one_line_error():
    from effattn.errors import InputError

    ref = TorchRunner(EfficientAttention(8, 4, 2, 8), PROFILE)
    with pytest.raises(InputError, match="no parity tolerances for precision 'int3'"):
        compare(ref, ref, random_inputs(PROFILE, "min", seed=0), precision="int3")
