"""The registered models: attention blocks (for studies and baselines) and host networks."""

from __future__ import annotations

from torch import nn

from ..shapes import ShapeProfile
from .attention import DotProductAttention, EfficientAttention, EfficientAttention1d, Normalization
from .hosts import EAResNet, EASegNet
from .registry import register_model
from .synthetic import images as synthetic_images

_block = ShapeProfile.single("1x64x16x16", "2x64x64x64", "8x64x128x128")


@register_model(_block, task="block")
def efficient_attention(
    in_channels: int = 64,
    key_channels: int = 32,
    head_count: int = 4,
    value_channels: int = 64,
    normalization: Normalization = "softmax",
) -> nn.Module:
    """EfficientAttention block, 64 channels, 4 heads (NCHW)."""
    return EfficientAttention(in_channels, key_channels, head_count, value_channels, normalization)


@register_model(ShapeProfile.single("1x64x64", "2x64x1024", "8x64x4096"), task="block")
def efficient_attention_1d(
    in_channels: int = 64,
    key_channels: int = 32,
    head_count: int = 4,
    value_channels: int = 64,
    normalization: Normalization = "softmax",
) -> nn.Module:
    """EfficientAttention1d block for (N, C, L) sequences, 64 channels, 4 heads."""
    return EfficientAttention1d(in_channels, key_channels, head_count, value_channels, normalization)


@register_model(ShapeProfile.single("1x64x8x8", "1x64x32x32", "2x64x48x48"), task="block")
def dot_product_attention(
    in_channels: int = 64,
    key_channels: int = 32,
    head_count: int = 4,
    value_channels: int = 64,
    normalization: Normalization = "softmax",
) -> nn.Module:
    """Dot-product (non-local) block with EA's parameters: the quadratic baseline."""
    return DotProductAttention(in_channels, key_channels, head_count, value_channels, normalization)


@register_model(ShapeProfile.single("1x3x32x32", "2x3x64x64", "8x3x128x128"), task="classification")
def ea_resnet_tiny(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ResNet-style classifier, 3 stages of 16/32/64 channels, EA after stages 2 and 3."""
    return EAResNet(num_classes, in_channels, widths=(16, 32, 64), depths=(1, 1, 1), attention_stages=(1, 2))


@register_model(ShapeProfile.single("1x3x64x64", "1x3x224x224", "4x3x256x256"), task="classification")
def ea_resnet(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """ResNet-18-sized classifier (64..512 channels) with EA after stages 3 and 4 (like res3/res4)."""
    return EAResNet(
        num_classes, in_channels, widths=(64, 128, 256, 512), depths=(2, 2, 2, 2), attention_stages=(2, 3), heads=8
    )


@register_model(
    ShapeProfile.single("1x3x32x32", "1x3x64x64", "8x3x256x256"),
    task="segmentation",
    pretrained="ea_segnet_tiny.safetensors",
    samples=synthetic_images,
)
def ea_segnet_tiny(num_classes: int = 3, in_channels: int = 3) -> nn.Module:
    """Tiny segmenter (16 channels), EA at 1/2 resolution; trained weights ship (synthetic shapes)."""
    return EASegNet(num_classes, in_channels, width=16, heads=2)


@register_model(ShapeProfile.single("1x3x64x64", "1x3x256x256", "2x3x512x512"), task="segmentation")
def ea_segnet(num_classes: int = 19, in_channels: int = 3) -> nn.Module:
    """Segmenter (64 channels), EA at 1/4 and 1/8 resolution, 19 classes (Cityscapes-sized)."""
    return EASegNet(num_classes, in_channels, width=64, heads=4, stem_downsample=2, deep_attention=True)
