"""Shared fixtures: tiny models and reference implementations written from the paper's equations."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tests.fixtures import OnnxModels

# Triton kernels run through Triton's interpreter on the CPU when no CUDA device exists. Set here, before any
# test imports triton (torch.compile does): a triton imported first would leave nested @triton.jit helpers
# compiled-only, and the interpreted kernels calling them fail.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


class LoopEfficientAttention(nn.Module):
    """The reference's layout and math, one head at a time (a Python loop, as the original code does).

    Kept here only as the oracle: parameter names ``keys``/``queries``/``values``/``reprojection``.
    """

    def __init__(self, in_channels, key_channels, head_count, value_channels):
        super().__init__()
        self.key_channels, self.head_count, self.value_channels = key_channels, head_count, value_channels
        self.keys = nn.Conv2d(in_channels, key_channels, 1)
        self.queries = nn.Conv2d(in_channels, key_channels, 1)
        self.values = nn.Conv2d(in_channels, value_channels, 1)
        self.reprojection = nn.Conv2d(value_channels, in_channels, 1)

    def forward(self, x):
        n, _, h, w = x.shape
        k_all = self.keys(x).reshape(n, self.key_channels, h * w)
        q_all = self.queries(x).reshape(n, self.key_channels, h * w)
        v_all = self.values(x).reshape(n, self.value_channels, h * w)
        dk, dv = self.key_channels // self.head_count, self.value_channels // self.head_count
        heads = []
        for i in range(self.head_count):
            k = F.softmax(k_all[:, i * dk : (i + 1) * dk], dim=2)  # over positions
            q = F.softmax(q_all[:, i * dk : (i + 1) * dk], dim=1)  # over channels
            v = v_all[:, i * dv : (i + 1) * dv]
            context = torch.bmm(k, v.transpose(1, 2))  # dk x dv
            heads.append(torch.bmm(context.transpose(1, 2), q).reshape(n, dv, h, w))
        return self.reprojection(torch.cat(heads, dim=1)) + x


def dot_product_reference(block, x, normalization):
    """Non-local attention with an explicit n x n map per head, from the block's own projections."""
    n, _, h, w = x.shape
    q = block.queries(x).reshape(n, block.key_channels, h * w)
    k = block.keys(x).reshape(n, block.key_channels, h * w)
    v = block.values(x).reshape(n, block.value_channels, h * w)
    dk, dv = block.key_channels // block.head_count, block.value_channels // block.head_count
    outs = []
    for i in range(block.head_count):
        qi, ki, vi = q[:, i * dk : (i + 1) * dk], k[:, i * dk : (i + 1) * dk], v[:, i * dv : (i + 1) * dv]
        scores = torch.einsum("nci,ncj->nij", qi, ki)  # query position i, key position j
        weights = scores.softmax(-1) if normalization == "softmax" else scores / (h * w)
        outs.append(torch.einsum("nij,ncj->nci", weights, vi))
    return block.reprojection(torch.cat(outs, 1).reshape(n, block.value_channels, h, w)) + x


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


@pytest.fixture
def rng(request):
    """Fresh random inputs each run; a failing test's report names the seed, and ``EFFATTN_SEED=N``
    replays it."""
    seed = int(os.environ.get("EFFATTN_SEED") or np.random.SeedSequence().entropy % 2**32)
    request.node.user_properties.append(("seed", seed))
    return np.random.default_rng(seed)


@pytest.fixture(scope="session")
def onnx_models(tmp_path_factory) -> OnnxModels:
    """The shared networks of tests/fixtures.py, each exported once per session on first use."""
    return OnnxModels(tmp_path_factory.mktemp("onnx_models"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    seeds = [value for key, value in item.user_properties if key == "seed"]
    if report.failed and seeds:
        report.sections.append(("rng seed", f"seed {seeds[0]}: rerun with EFFATTN_SEED={seeds[0]}"))


def pytest_runtest_setup(item):
    """``gpu`` tests need a CUDA GPU; each test checks the rest it needs (onnxruntime-gpu, tensorrt) itself."""
    if item.get_closest_marker("gpu") and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to torch (a gpu test)")


def make_user_model(channels: int = 8):
    """A user-defined network, loaded by the tests as ``tests.conftest:make_user_model``."""
    from effattn.models import EfficientAttention

    return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), EfficientAttention(channels, 4, 2, 4))


def not_a_model():
    return 42
