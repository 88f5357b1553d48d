"""Efficient Attention (Shen et al., WACV 2021) and the dot-product (non-local) block it replaces.
Parameter names (``keys``, ``queries``, ``values``, ``reprojection``) match the reference implementation, so
its checkpoints load with ``strict=True``; all heads are one batched reshape. See docs/architecture.md#models."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

Normalization = Literal["softmax", "scaling"]


def _positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class _AttentionBlock(nn.Module):
    """1x1 projections, an attention rule over flattened positions, reprojection and residual add."""

    conv: type[nn.Module] = nn.Conv2d
    rank = 4
    layout = "NCHW"
    #: The block's output is ``input + attention branch``; parity checks measure the branch too.
    residual = True

    def __init__(
        self,
        in_channels: int,
        key_channels: int = 2,
        head_count: int = 2,
        value_channels: int = 2,
        normalization: Normalization = "softmax",
    ) -> None:
        super().__init__()
        self.in_channels = _positive("in_channels", in_channels)
        self.key_channels = _positive("key_channels", key_channels)
        self.head_count = _positive("head_count", head_count)
        self.value_channels = _positive("value_channels", value_channels)
        for name, channels in (("key_channels", key_channels), ("value_channels", value_channels)):
            if channels % head_count:
                raise ValueError(
                    f"{name}={channels} is not divisible by head_count={head_count}: "
                    "each head needs the same number of channels"
                )
        if normalization not in ("softmax", "scaling"):
            raise ValueError(f"normalization must be 'softmax' or 'scaling', got {normalization!r}")
        self.normalization = normalization

        self.keys = self.conv(in_channels, key_channels, 1)
        self.queries = self.conv(in_channels, key_channels, 1)
        self.values = self.conv(in_channels, value_channels, 1)
        self.reprojection = self.conv(value_channels, in_channels, 1)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, key_channels={self.key_channels}, head_count={self.head_count}, "
            f"value_channels={self.value_channels}, normalization={self.normalization!r}"
        )

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != self.rank:
            raise ValueError(
                f"{type(self).__name__} expects a {self.rank}-D {self.layout} tensor, got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects {self.in_channels} input channels, got {x.shape[1]} "
                f"(shape {tuple(x.shape)})"
            )

    def _heads(self, t: Tensor, channels: int) -> Tensor:
        """(N, C, *spatial) -> (N, heads, C // heads, positions): every head in one reshape."""
        return t.reshape(t.shape[0], self.head_count, channels // self.head_count, -1)

    def attend(self, queries: Tensor, keys: Tensor, values: Tensor) -> Tensor:
        """(N, h, d_k, n) queries/keys and (N, h, d_v, n) values -> (N, h, d_v, n)."""
        raise NotImplementedError

    def branch(self, x: Tensor) -> Tensor:
        """The attention branch alone (the block output minus its residual input)."""
        self._check_input(x)
        queries = self._heads(self.queries(x), self.key_channels)
        keys = self._heads(self.keys(x), self.key_channels)
        values = self._heads(self.values(x), self.value_channels)
        attended = self.attend(queries, keys, values).reshape(x.shape[0], self.value_channels, *x.shape[2:])
        return self.reprojection(attended)

    def forward(self, x: Tensor) -> Tensor:
        return self.branch(x) + x


class _EfficientRule:
    normalization: Normalization  # set by _AttentionBlock.__init__

    def attend(self, queries: Tensor, keys: Tensor, values: Tensor) -> Tensor:
        if self.normalization == "softmax":
            keys = keys.softmax(dim=-1)  # over positions
            queries = queries.softmax(dim=-2)  # over channels
        else:  # scaling normalisation: Q K^T V / n, the form equal to dot-product attention
            n = keys.shape[-1]
            keys = keys / n
        context = keys @ values.transpose(-1, -2)  # (N, h, d_k, d_v): the global context
        return context.transpose(-1, -2) @ queries  # (N, h, d_v, n)


class _DotProductRule:
    normalization: Normalization  # set by _AttentionBlock.__init__

    def attend(self, queries: Tensor, keys: Tensor, values: Tensor) -> Tensor:
        scores = queries.transpose(-1, -2) @ keys  # (N, h, n_query, n_key): quadratic in n
        if self.normalization == "softmax":  # noqa: SIM108 (each branch's comment names its form)
            weights = scores.softmax(dim=-1)  # embedded-Gaussian non-local block
        else:
            weights = scores / keys.shape[-1]
        return values @ weights.transpose(-1, -2)  # (N, h, d_v, n_query)


class EfficientAttention(_EfficientRule, _AttentionBlock):
    """Efficient Attention over the positions of an NCHW feature map (the paper's 2D module)."""


class EfficientAttention1d(_EfficientRule, _AttentionBlock):
    """Efficient Attention over an (N, C, L) sequence (the paper's temporal use)."""

    conv = nn.Conv1d
    rank = 3
    layout = "NCL"


class DotProductAttention(_DotProductRule, _AttentionBlock):
    """The non-local (dot-product) block with the same parameters: the quadratic baseline."""


class DotProductAttention1d(_DotProductRule, _AttentionBlock):
    """The non-local block over (N, C, L) sequences."""

    conv = nn.Conv1d
    rank = 3
    layout = "NCL"
