"""The torch runner's host copies: pinned buffers on CUDA (answers equal the plain copies), none on the CPU; and
a model returning more or fewer outputs than the runner names is an error, not a silently dropped output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from effattn.errors import BackendError
from effattn.models import EfficientAttention
from effattn.runtime import torch_runner
from effattn.runtime.torch_runner import TorchRunner
from effattn.shapes import ShapeProfile

PROFILE = ShapeProfile.single("1x16x4x4", "2x16x12x12", "8x16x32x32")


def test_the_cpu_path_pins_nothing(monkeypatch, rng):
    def refuse(*args):
        raise AssertionError("a CPU runner asked for a pinned buffer (pin_memory needs CUDA)")

    monkeypatch.setattr(torch_runner, "pinned", refuse)
    block = EfficientAttention(16, 8, 2, 16).eval()
    x = rng.standard_normal((2, 16, 12, 12), dtype=np.float32)
    out = TorchRunner(block, PROFILE).infer({"input": x})["output"]
    with torch.inference_mode():
        np.testing.assert_array_equal(out, block(torch.from_numpy(x)).numpy())


class Pair(nn.Module):
    def forward(self, x):
        return x + 1, x * 2


def test_an_output_without_a_name_is_an_error_not_dropped():
    x = np.ones((1, 16, 4, 4), np.float32)
    with pytest.raises(BackendError, match=r"returned 2 output\(s\) but the runner names 1: \['output'\]"):
        TorchRunner(Pair(), PROFILE).infer(x)
    both = TorchRunner(Pair(), PROFILE, ["plus", "times"]).infer(x)
    assert both["plus"][0, 0, 0, 0] == 2 and both["times"][0, 0, 0, 0] == 2


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_pinned_copies_answer_as_the_plain_ones(dtype, rng):
    block = EfficientAttention(16, 8, 2, 16)
    plain = TorchRunner(block, PROFILE, device="cuda", dtype=dtype, pin_host=False)
    fast = TorchRunner(block, PROFILE, device="cuda", dtype=dtype)
    for shape in [(2, 16, 12, 12), (8, 16, 32, 32), (1, 16, 5, 7)]:
        x = rng.standard_normal(shape, dtype=np.float32)
        want = plain.infer({"input": x})["output"]
        got = fast.infer({"input": x})["output"]
        assert torch.from_numpy(got).is_pinned()  # the output is the pinned buffer the copy landed in
        assert not torch.from_numpy(want).is_pinned()
        np.testing.assert_array_equal(got, want)
        # a CUDA tensor goes in without a host copy; a CPU tensor through a pinned buffer
        np.testing.assert_array_equal(fast.infer({"input": torch.from_numpy(x).cuda()})["output"], want)
        np.testing.assert_array_equal(fast.infer({"input": torch.from_numpy(x)})["output"], want)


class Labels(nn.Module):
    def forward(self, x):
        return x.argmax(1)


def test_probe_declares_each_outputs_dtype_and_rank():
    runner = TorchRunner(Labels(), PROFILE, ["label"])
    assert runner.outputs["label"].shape is None  # eager code: unknown until it runs
    runner.probe("min")
    assert runner.outputs["label"].dtype == np.int64 and runner.outputs["label"].shape == (None, None, None)
