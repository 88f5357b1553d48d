"""EfficientAttention against the per-head reference, the paper's equivalence claim, and argument checks."""

import pytest
import torch

from effattn.models import DotProductAttention, EfficientAttention, EfficientAttention1d
from tests.conftest import LoopEfficientAttention, dot_product_reference


@pytest.mark.parametrize("heads", [1, 2, 4, 8])
@pytest.mark.parametrize("shape", [(1, 16, 8, 8), (3, 16, 12, 20)])
def test_reference_state_dict_loads_strict_and_matches(heads, shape):
    reference = LoopEfficientAttention(16, 8, heads, 16).eval()
    ours = EfficientAttention(16, 8, heads, 16).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(*shape)
    with torch.no_grad():
        diff = (ours(x) - reference(x)).abs().max().item()
    assert diff <= 1e-5, f"max abs diff {diff:.2e} vs the per-head reference (limit 1e-5, FP32)"


def test_defaults_match_the_reference_signature():
    block = EfficientAttention(4)
    assert (block.key_channels, block.head_count, block.value_channels) == (2, 2, 2)
    assert set(block.state_dict()) == {
        f"{m}.{p}" for m in ("keys", "queries", "values", "reprojection") for p in ("weight", "bias")
    }


def test_branch_is_output_minus_residual():
    block = EfficientAttention(8, 4, 2, 8).eval()
    x = torch.randn(2, 8, 5, 7)
    with torch.no_grad():
        torch.testing.assert_close(block.branch(x) + x, block(x))


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_scaling_normalization_equals_dot_product_attention(heads):
    """The paper's claim: with scaling normalisation EA is exactly dot-product attention."""
    torch.manual_seed(0)
    ea = EfficientAttention(8, 8, heads, 8, normalization="scaling").double().eval()
    dp = DotProductAttention(8, 8, heads, 8, normalization="scaling").double().eval()
    dp.load_state_dict(ea.state_dict(), strict=True)
    x = torch.randn(2, 8, 9, 11, dtype=torch.float64)
    with torch.no_grad():
        explicit = dot_product_reference(ea, x, "scaling")
        assert (ea(x) - explicit).abs().max().item() < 1e-12
        assert (dp(x) - explicit).abs().max().item() < 1e-12


def test_softmax_efficient_attention_is_only_an_approximation_of_dot_product():
    """The equivalence holds for scaling normalisation only; with softmax they must differ (the test can fail)."""
    torch.manual_seed(0)
    ea = EfficientAttention(8, 8, 2, 8).double().eval()
    dp = DotProductAttention(8, 8, 2, 8).double().eval()
    dp.load_state_dict(ea.state_dict())
    x = torch.randn(1, 8, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        assert (dp(x) - dot_product_reference(dp, x, "softmax")).abs().max().item() < 1e-12
        assert (ea(x) - dp(x)).abs().max().item() > 1e-3


def test_1d_block_equals_2d_block_on_a_single_row():
    b2 = EfficientAttention(8, 4, 2, 8).eval()
    b1 = EfficientAttention1d(8, 4, 2, 8).eval()
    b1.load_state_dict({k: v.squeeze(-1) for k, v in b2.state_dict().items()}, strict=True)
    x = torch.randn(3, 8, 50)
    with torch.no_grad():
        torch.testing.assert_close(b1(x), b2(x.unsqueeze(2)).squeeze(2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(in_channels=8, key_channels=6, head_count=4), "key_channels=6 is not divisible by head_count=4"),
        (dict(in_channels=8, key_channels=4, head_count=2, value_channels=3), "value_channels=3 is not divisible"),
        (dict(in_channels=0), "in_channels must be a positive integer, got 0"),
        (dict(in_channels=8, head_count=-1), "head_count must be a positive integer"),
        (dict(in_channels=8.0), "in_channels must be a positive integer"),
        (dict(in_channels=8, normalization="relu"), "normalization must be 'softmax' or 'scaling'"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EfficientAttention(**kwargs)


def test_wrong_input_rank_and_channels_at_call_time():
    block = EfficientAttention(8, 4, 2, 8)
    with pytest.raises(ValueError, match=r"expects a 4-D NCHW tensor, got shape \(8, 16, 16\)"):
        block(torch.randn(8, 16, 16))
    with pytest.raises(ValueError, match="expects 8 input channels, got 3"):
        block(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="expects a 3-D NCL tensor"):
        EfficientAttention1d(8, 4, 2, 8)(torch.randn(1, 8, 4, 4))
