"""The fused Efficient-Attention kernel and `fuse()`: against eager PyTorch, on the CPU through Triton's
interpreter (CUDA when present). Tolerances: FP32 branch rel-L2 <= 1e-5; FP16 I/O within the FP16 row."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from effattn.errors import ModelError
from effattn.models import EfficientAttention, EfficientAttention1d, create_model
from effattn.models.fused import FusedEfficientAttention, fuse, kernel_runs_on
from effattn.runtime.parity import TOLERANCES
from effattn.shapes import ShapeProfile
from tests.conftest import LoopEfficientAttention

triton = pytest.importorskip("triton", reason="the fused kernel needs the `triton` package (Linux; the test extra)")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(not kernel_runs_on(DEVICE), reason="needs CUDA or TRITON_INTERPRET=1")


def relative_l2(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.double() - expected.double()).norm() / expected.double().norm()).item()


def kernel_branch(block: nn.Module, x: torch.Tensor, splits: int | None = None) -> torch.Tensor:
    from effattn.models.fused_kernel import efficient_attention

    def weights(conv: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        return conv.weight.reshape(conv.weight.shape[0], -1).contiguous(), conv.bias

    out = efficient_attention(
        x,
        weights(block.keys),
        weights(block.queries),
        weights(block.values),
        weights(block.reprojection),
        block.head_count,
        block.normalization == "softmax",
        splits=splits,
    )
    return out - x


def random_block(cls: type[nn.Module], *args, seed: int, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    block = cls(*args, **kwargs).eval().to(DEVICE)
    with torch.no_grad():  # biases away from zero, so a dropped bias shows
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return block


# (in, key, heads, value), spatial shape, batch, splits: partial tiles, one position, empty splits, head layouts.
CASES = [
    ((16, 8, 2, 8), (5, 7), 2, None),
    ((3, 6, 3, 3), (1, 1), 1, None),  # one position; channels far below the dot minimum of 16
    ((16, 8, 2, 8), (9, 9), 2, 5),  # 81 positions in 5 splits of one 128 tile: four empty splits
    ((16, 8, 2, 8), (17, 33), 3, 3),  # 561 positions: partial last tile
    ((64, 32, 4, 64), (16, 16), 2, None),  # the benchmark block's head layout
    ((24, 24, 1, 40), (6, 5), 2, 2),  # one head, value channels not a power of two
    ((33, 12, 4, 20), (7, 3), 2, 1),  # odd channel counts
]


@pytest.mark.parametrize(("channels", "spatial", "batch", "splits"), CASES)
@pytest.mark.parametrize("normalization", ["softmax", "scaling"])
def test_kernel_matches_eager_fp32(channels, spatial, batch, splits, normalization):
    block = random_block(EfficientAttention, *channels, normalization=normalization, seed=len(spatial) + batch)
    x = torch.randn(batch, channels[0], *spatial, device=DEVICE)
    with torch.no_grad():
        error = relative_l2(kernel_branch(block, x, splits), block.branch(x))
    assert error <= TOLERANCES["fp32"].branch_rel_l2


def test_zoo_head_layouts_fp32():
    """Every Efficient-Attention block of the zoo (ea_resnet's 512-channel, 8-head block included)."""
    for name in ("efficient_attention", "ea_resnet", "ea_resnet_tiny", "ea_segnet", "ea_segnet_tiny"):
        for path, block in create_model(name).named_modules():
            if isinstance(block, EfficientAttention):
                block = block.to(DEVICE)
                x = torch.randn(1, block.in_channels, 6, 5, device=DEVICE)
                with torch.no_grad():
                    error = relative_l2(kernel_branch(block, x), block.branch(x))
                assert error <= TOLERANCES["fp32"].branch_rel_l2, f"{name}.{path}: {error:.2e}"


def test_1d_is_the_same_kernel():
    block = random_block(EfficientAttention1d, 24, 16, 2, 8, seed=3)
    x = torch.randn(3, 24, 37, device=DEVICE)
    with torch.no_grad():
        assert relative_l2(kernel_branch(block, x, splits=2), block.branch(x)) <= 1e-5


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_fp16_io_within_the_fp16_row(scale):
    """FP16 in and out, FP32 accumulation: against the FP32 block, inputs in distribution and x100."""
    block = random_block(EfficientAttention, 64, 32, 4, 64, seed=7)
    x = scale * torch.randn(2, 64, 16, 16, device=DEVICE)
    with torch.no_grad():
        expected = block.branch(x.half().float())
        got = kernel_branch(block.half(), x.half())
    assert got.dtype == torch.float16
    assert torch.isfinite(got).all()
    assert relative_l2(got, expected) <= TOLERANCES["fp16"].branch_rel_l2


def test_fuse_zoo_with_trained_weights():
    """The trained segmenter, fused: same state_dict, same logits (1e-5) and same argmax on fresh inputs."""
    model = create_model("ea_segnet_tiny", pretrained=True).to(DEVICE)
    fused = fuse(model)
    assert isinstance(fused.attention, FusedEfficientAttention)
    original, copied = model.state_dict(), fused.state_dict()
    assert list(original) == list(copied)
    assert all(torch.equal(original[k], copied[k]) for k in original)
    x = torch.rand(2, 3, 48, 40, device=DEVICE)
    with torch.no_grad():
        expected, got = model(x), fused(x)
    assert relative_l2(got, expected) <= 1e-5
    assert torch.equal(got.argmax(1), expected.argmax(1))


class UNet(nn.Module):
    """A user's network: the authors' per-head block between a down and an up convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, 32, 3, stride=2, padding=1)
        self.bottleneck = nn.Sequential(nn.ReLU(), LoopEfficientAttention(32, 16, 4, 16))
        self.up = nn.ConvTranspose2d(32, 2, 2, stride=2)

    def forward(self, x):
        return self.up(self.bottleneck(self.down(x)))


def test_fuse_a_user_network_written_the_authors_way():
    torch.manual_seed(0)
    net = UNet().eval().to(DEVICE)
    fused = fuse(net)
    assert isinstance(fused.bottleneck[1], FusedEfficientAttention)
    assert not isinstance(net.bottleneck[1], FusedEfficientAttention)  # the original is left as it was
    assert fused.state_dict().keys() == net.state_dict().keys()
    x = torch.randn(2, 3, 30, 22, device=DEVICE)
    with torch.no_grad():
        assert relative_l2(fused(x), net(x)) <= 1e-5


class NoResidual(LoopEfficientAttention):
    """Looks like the reference, computes something else: must be left alone."""

    def forward(self, x):
        return super().forward(x) - x


def test_a_block_that_differs_is_left_alone_and_said_why(caplog):
    net = nn.Sequential(NoResidual(16, 8, 2, 8), EfficientAttention(16, 8, 2, 8)).eval().to(DEVICE)
    with caplog.at_level(logging.INFO, logger="effattn.models.fused"):
        fused = fuse(net)
    assert type(fused[0]) is NoResidual
    assert isinstance(fused[1], FusedEfficientAttention)
    assert "differs from Efficient Attention" in caplog.text


def test_nothing_to_fuse_is_a_clear_error():
    with pytest.raises(ModelError, match="nothing to fuse in Sequential: 0: it differs"):
        fuse(nn.Sequential(NoResidual(16, 8, 2, 8)))
    with pytest.raises(ModelError, match="no module has keys/queries/values/reprojection"):
        fuse(nn.Sequential(nn.Conv2d(3, 3, 1)))


def test_training_and_other_dtypes_use_the_blocks_own_forward():
    block = fuse(EfficientAttention(16, 8, 2, 8).to(DEVICE))
    x = torch.randn(1, 16, 4, 4, device=DEVICE, requires_grad=True)
    block(x).sum().backward()  # the kernel has no backward: with grad enabled the block's own forward runs
    assert x.grad is not None
    with pytest.raises(ValueError, match="expects 16 input channels"), torch.no_grad():
        block(torch.randn(1, 8, 4, 4, device=DEVICE))


@pytest.mark.skipif(DEVICE.type == "cuda", reason="the CPU fallback")
def test_without_the_interpreter_the_cpu_runs_the_blocks_own_forward(monkeypatch, caplog):
    monkeypatch.delenv("TRITON_INTERPRET")
    model = EfficientAttention(16, 8, 2, 8).eval()
    with caplog.at_level(logging.WARNING, logger="effattn.models.fused"):
        fused = fuse(model)
    assert "runs only on CUDA" in caplog.text
    x = torch.randn(1, 16, 5, 5)
    with torch.no_grad():
        assert torch.equal(fused(x), model(x))  # bit for bit: the same forward, not the kernel


def test_the_torch_runner_runs_the_fused_network():
    """`load(model, backend="torch", fused=True)`: what `effattn bench`'s torch-fused rows run."""
    from effattn.errors import BackendError
    from effattn.runtime import load

    source = create_model("ea_segnet_tiny", pretrained=True)
    profile = ShapeProfile.single("1x3x32x32", "1x3x48x48", "2x3x64x64")
    x = torch.rand(2, 3, 40, 56)
    with (
        load(source, backend="torch", device=DEVICE.type, profile=profile, output_names=["logits"]) as eager,
        load(
            source, backend="torch", device=DEVICE.type, profile=profile, output_names=["logits"], fused=True
        ) as fused,
    ):
        assert fused.backend.endswith("-fused")
        assert isinstance(fused.model.attention, FusedEfficientAttention)
        expected, got = eager.infer({"input": x})["logits"], fused.infer({"input": x})["logits"]
    assert relative_l2(torch.from_numpy(got), torch.from_numpy(expected)) <= 1e-5
    assert not isinstance(source.attention, FusedEfficientAttention)  # the module given is left as it was
    with pytest.raises(BackendError, match="compile and fused are two ways"):
        load(source, backend="torch", profile=profile, fused=True, compile=True)
