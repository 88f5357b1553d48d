"""`fuse(network)`: the same network with its Efficient-Attention blocks on the fused Triton kernel.

A block is swapped only after it matched the fused computation on a small random input; the swapped
block keeps the original's parameters under the same names, so ``state_dict`` is unchanged.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import ModelError
from .attention import EfficientAttention, EfficientAttention1d

log = logging.getLogger(__name__)

#: Relative L2 error (FP32) above which a candidate block is not the Efficient Attention we fuse.
MATCH_TOLERANCE = 1e-5
_PROJECTIONS = ("keys", "queries", "values", "reprojection")
#: What the kernel computes in; BF16 is not among them: Triton's interpreter cannot check it on a CPU.
KERNEL_DTYPES = (torch.float32, torch.float16)


def interpreted() -> bool:
    """True when Triton kernels run on the CPU through Triton's interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def kernel_runs_on(device: torch.device) -> bool:
    """Whether the Triton kernel can run on tensors of this device here."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and interpreted()


@dataclass(frozen=True)
class _Layout:
    head_count: int
    softmax: bool
    rank: int  # 4 for NCHW blocks, 3 for (N, C, L)


Conv = nn.Conv1d | nn.Conv2d


def _weights(conv: Conv) -> tuple[Tensor, Tensor]:
    weight = conv.weight.reshape(conv.weight.shape[0], -1).contiguous()
    bias = (
        conv.bias if conv.bias is not None else torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
    )
    return weight, bias


def efficient_attention_math(x: Tensor, block: nn.Module, layout: _Layout) -> Tensor:
    """The computation the kernel performs, in plain torch: what a candidate block must equal."""
    n, channels = x.shape[:2]
    flat = x.reshape(n, channels, -1)

    def project(name: str, heads: int) -> Tensor:
        weight, bias = _weights(getattr(block, name))
        return (torch.einsum("oc,ncp->nop", weight, flat) + bias[:, None]).reshape(n, heads, -1, flat.shape[2])

    keys = project("keys", layout.head_count)
    queries = project("queries", layout.head_count)
    values = project("values", layout.head_count)
    if layout.softmax:
        keys, queries = keys.softmax(dim=-1), queries.softmax(dim=-2)
    else:
        keys = keys / flat.shape[2]
    attended = (keys @ values.transpose(-1, -2)).transpose(-1, -2) @ queries
    weight, bias = _weights(getattr(block, "reprojection"))  # noqa: B009  (any candidate module)
    branch = torch.einsum("cv,nvp->ncp", weight, attended.reshape(n, -1, flat.shape[2])) + bias[:, None]
    return (branch + flat).reshape(x.shape)


class FusedEfficientAttention(nn.Module):
    """An Efficient-Attention block whose forward runs the fused kernel (same parameters, same names)."""

    keys: Conv
    queries: Conv
    values: Conv
    reprojection: Conv
    original: nn.Module

    def __init__(self, original: nn.Module, layout: _Layout) -> None:
        super().__init__()
        for name in _PROJECTIONS:
            setattr(self, name, getattr(original, name))
        self.head_count = layout.head_count
        self.key_channels = self.keys.out_channels
        self.value_channels = self.values.out_channels
        self.layout = layout
        # The original block (sharing these convs) stays reachable for the fallback, outside the registry
        # of submodules, so the state_dict keeps its names.
        self.__dict__["original"] = original

    def extra_repr(self) -> str:
        return f"head_count={self.head_count}, softmax={self.layout.softmax}, kernel=triton"

    def _kernel_takes(self, x: Tensor) -> bool:
        weight = self.keys.weight
        training = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
        return bool(
            not training
            and x.dim() == self.layout.rank
            and x.shape[1] == weight.shape[1]
            and x.dtype == weight.dtype
            and x.dtype in KERNEL_DTYPES
            and x.device == weight.device
            and kernel_runs_on(x.device)
        )

    def forward(self, x: Tensor) -> Tensor:
        """The kernel for inference; the block's own forward for training, odd inputs and devices it cannot use."""
        if not self._kernel_takes(x):
            return self.original(x)
        from .fused_kernel import efficient_attention

        return efficient_attention(
            x,
            _weights(self.keys),
            _weights(self.queries),
            _weights(self.values),
            _weights(self.reprojection),
            self.head_count,
            self.layout.softmax,
        )


def _is_pointwise(conv: object, kind: type[Conv]) -> bool:
    return (
        isinstance(conv, kind)
        and all(k == 1 for k in conv.kernel_size)
        and all(s == 1 for s in conv.stride)
        and all(p == 0 for p in conv.padding)
        and conv.groups == 1
    )


def describe(module: nn.Module) -> _Layout | str:
    """The block's layout if it looks like Efficient Attention, else why it does not (a log line)."""
    if isinstance(module, (EfficientAttention, EfficientAttention1d)):
        return _Layout(module.head_count, module.normalization == "softmax", module.rank)
    found = [getattr(module, name, None) for name in _PROJECTIONS]
    kind: type[Conv] = nn.Conv2d if isinstance(found[0], nn.Conv2d) else nn.Conv1d
    convs = [conv for conv in found if isinstance(conv, (nn.Conv1d, nn.Conv2d)) and _is_pointwise(conv, kind)]
    if len(convs) != len(_PROJECTIONS):
        return "its keys/queries/values/reprojection are not all 1x1 convolutions of one kind"
    heads = getattr(module, "head_count", None)
    if not isinstance(heads, int) or heads <= 0:
        return "it has no positive integer head_count"
    keys, values = convs[0].out_channels, convs[2].out_channels
    if (
        keys % heads
        or values % heads
        or getattr(module, "key_channels", keys) != keys
        or getattr(module, "value_channels", values) != values
    ):
        return f"its key/value channels ({keys}, {values}) do not split into head_count={heads} heads"
    if convs[1].out_channels != keys or convs[3].in_channels != values or convs[3].out_channels != convs[0].in_channels:
        return "its projections' channel counts do not chain like Efficient Attention's"
    normalization = getattr(module, "normalization", "softmax")
    return _Layout(heads, normalization == "softmax", 4 if kind is nn.Conv2d else 3)


def _mismatch(module: nn.Module, layout: _Layout, compute: Callable[[Tensor, nn.Module], Tensor]) -> str | None:
    """Run the block and the fused computation on one small random input; why they differ, if they do."""
    parameter = next(module.parameters())
    probe = copy.deepcopy(module).float()
    channels = getattr(module, "keys").in_channels  # noqa: B009  (a candidate's conv, checked by describe)
    spatial = (5, 7) if layout.rank == 4 else (13,)
    x = torch.randn(2, channels, *spatial, generator=torch.Generator().manual_seed(0)).to(parameter.device)
    with torch.no_grad():
        try:
            expected = probe(x).double()
        except Exception as exc:  # a user's block may raise anything: a reason not to fuse
            return f"its forward failed on a {tuple(x.shape)} input: {exc}"
        got = compute(x, probe).double()
    if expected.shape != got.shape:
        return f"its output shape {tuple(expected.shape)} is not the input's {tuple(got.shape)}"
    error = ((got - expected).norm() / expected.norm().clamp_min(1e-30)).item()
    if not error <= MATCH_TOLERANCE:
        return f"it differs from Efficient Attention (relative L2 {error:.2e} > {MATCH_TOLERANCE:g})"
    return None


def _fused_or_reason(module: nn.Module) -> FusedEfficientAttention | str:
    layout = describe(module)
    if isinstance(layout, str):
        return layout
    parameter = next(module.parameters())
    if kernel_runs_on(parameter.device):

        def compute(x: Tensor, probe: nn.Module) -> Tensor:
            return FusedEfficientAttention(probe, layout)(x)
    else:

        def compute(x: Tensor, probe: nn.Module) -> Tensor:
            return efficient_attention_math(x, probe, layout)

    reason = _mismatch(module, layout, compute)
    return reason if reason is not None else FusedEfficientAttention(module, layout)


def _candidates(network: nn.Module) -> list[tuple[str, nn.Module]]:
    found = []
    for name, module in network.named_modules():
        if isinstance(module, FusedEfficientAttention):
            continue
        if all(isinstance(getattr(module, p, None), (nn.Conv1d, nn.Conv2d)) for p in _PROJECTIONS):
            found.append((name, module))
    return found


def fuse(network: nn.Module) -> nn.Module:
    """A copy of ``network`` whose Efficient-Attention blocks run the fused Triton kernel.

    Args:
        network: any torch module; effattn's ``EfficientAttention`` blocks and blocks written like the
            authors' reference (``keys``/``queries``/``values``/``reprojection`` 1x1 convs, ``head_count``)
            are candidates, each checked numerically before it is swapped.

    Returns:
        The copy (``state_dict`` identical to ``network``'s). Off CUDA the fused blocks run their own
        forward unless ``TRITON_INTERPRET=1``.

    Raises:
        ModelError: no block could be fused (the reasons are in the message).
    """
    fused = copy.deepcopy(network)
    swapped, reasons = 0, []
    for name, module in _candidates(fused):
        result = _fused_or_reason(module)
        label = name or type(module).__name__
        if isinstance(result, str):
            log.info("fuse: left %s (%s) alone: %s", label, type(module).__name__, result)
            reasons.append(f"{label}: {result}")
            continue
        if name:
            parent_name, _, child = name.rpartition(".")
            setattr(fused.get_submodule(parent_name), child, result)
        else:  # the network is itself one block
            fused = result
        swapped += 1
    if not swapped:
        detail = "; ".join(reasons) if reasons else "no module has keys/queries/values/reprojection convolutions"
        raise ModelError(f"fuse: nothing to fuse in {type(network).__name__}: {detail}")
    device = next(fused.parameters()).device
    if not kernel_runs_on(device):
        log.warning(
            "fuse: %d block(s) fused, but the Triton kernel runs only on CUDA (or on the CPU with "
            "TRITON_INTERPRET=1); on %s they run their own forward",
            swapped,
            device,
        )
    return fused
