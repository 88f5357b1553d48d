"""Host networks for Efficient Attention blocks, so effattn needs no timm/torchvision: :class:`EAResNet`
(classifier, EA after chosen residual stages) and :class:`EASegNet` (encoder-decoder with EA at stride 2
or 4). NCHW float32 in, logits out. See docs/architecture.md#models."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import EfficientAttention


def conv_bn_relu(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


def ea_block(channels: int, heads: int) -> EfficientAttention:
    """The EA block the hosts insert: keys and values at half the width, ``heads`` heads."""
    inner = max(heads, channels // 2 // heads * heads)
    return EfficientAttention(channels, key_channels=inner, head_count=heads, value_channels=inner)


class BasicBlock(nn.Module):
    """ResNet's two-conv residual block."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(cin, cout, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class EAResNet(nn.Module):
    """ResNet-style classifier; ``attention_stages`` lists the stages (0-based) followed by an EA block."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: Sequence[int] = (16, 32, 64),
        depths: Sequence[int] = (1, 1, 1),
        attention_stages: Sequence[int] = (1, 2),
        heads: int = 2,
    ) -> None:
        super().__init__()
        if len(widths) != len(depths):
            raise ValueError(f"widths {tuple(widths)} and depths {tuple(depths)} must have the same length")
        bad = [s for s in attention_stages if not 0 <= s < len(widths)]
        if bad:
            raise ValueError(f"attention_stages {bad} are outside the {len(widths)} stages")
        self.in_channels = in_channels
        self.stem = conv_bn_relu(in_channels, widths[0], stride=2)
        stages: list[nn.Module] = []
        cin = widths[0]
        for i, (width, depth) in enumerate(zip(widths, depths)):
            blocks: list[nn.Module] = [
                BasicBlock(cin if j == 0 else width, width, 2 if i and j == 0 else 1) for j in range(depth)
            ]
            if i in attention_stages:
                blocks.append(ea_block(width, heads))
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        features = self.stages(self.stem(x))
        return self.head(features.mean(dim=(2, 3)))


class EASegNet(nn.Module):
    """Encoder-decoder segmenter with EA at the stem's resolution (stride ``2**stem_downsample``).

    The encoder adds one stride-2 stage (optionally with its own EA block); the decoder upsamples
    to the skip, fuses, classifies and resizes the logits back to the input size, so any H x W works.
    """

    def __init__(
        self,
        num_classes: int = 3,
        in_channels: int = 3,
        width: int = 16,
        heads: int = 2,
        stem_downsample: int = 1,
        deep_attention: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        stem: list[nn.Module] = [conv_bn_relu(in_channels, width, stride=2)]
        stem += [conv_bn_relu(width, width, stride=2) for _ in range(stem_downsample - 1)]
        stem.append(conv_bn_relu(width, width))
        self.stem = nn.Sequential(*stem)
        self.attention = ea_block(width, heads)  # the high-resolution block
        self.down = nn.Sequential(conv_bn_relu(width, 2 * width, stride=2), conv_bn_relu(2 * width, 2 * width))
        self.deep_attention = ea_block(2 * width, heads) if deep_attention else nn.Identity()
        self.fuse = conv_bn_relu(3 * width, width)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        skip = self.attention(self.stem(x))
        deep = self.deep_attention(self.down(skip))
        deep = F.interpolate(deep, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.classifier(self.fuse(torch.cat((skip, deep), dim=1)))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
