"""Efficient Attention in two streaming passes (Triton): keys' softmax and context, then queries.
What each pass reads and computes: docs/architecture.md#models."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

#: tl.dot needs every dimension >= 16 on GPUs; channel counts are padded to a power of two >= this.
MIN_DOT = 16


@triton.jit
def _project(
    w_ptr,
    b_ptr,
    x_ptr,
    pos,
    n,
    rows,
    C,
    ROWS_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,
    IEEE: tl.constexpr,
):
    """(rows x C) weight @ (C x BLOCK_N) input tile + bias, accumulated in FP32 over channel chunks."""
    r = tl.arange(0, ROWS_P)
    acc = tl.zeros((ROWS_P, BLOCK_N), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        w = tl.load(w_ptr + r[:, None] * C + c[None, :], mask=(r[:, None] < rows) & (c[None, :] < C), other=0.0)
        x = tl.load(x_ptr + c[:, None] * n + pos[None, :], mask=(c[:, None] < C) & (pos[None, :] < n), other=0.0)
        if IEEE:
            acc += tl.dot(w, x, input_precision="ieee")
        else:
            acc += tl.dot(w, x)
    bias = tl.load(b_ptr + r, mask=r < rows, other=0.0).to(tl.float32)
    return acc + bias[:, None]


@triton.jit
def _context_kernel(
    x_ptr,
    wk_ptr,
    bk_ptr,
    wv_ptr,
    bv_ptr,
    m_ptr,
    l_ptr,
    ctx_ptr,
    C,
    n,
    group_k,
    group_v,
    split,
    splits,
    KP: tl.constexpr,
    VP: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SOFTMAX: tl.constexpr,
    IEEE: tl.constexpr,
):
    """Pass 1, one program per (batch, split, head group): running max, sum and context of its keys."""
    b = tl.program_id(0)
    s = tl.program_id(1)
    g = tl.program_id(2)
    x_base = x_ptr + b.to(tl.int64) * C * n
    wk = wk_ptr + g * group_k * C
    wv = wv_ptr + g * group_v * C
    start = s * split
    stop = tl.minimum(start + split, n)
    k = tl.arange(0, KP)
    v = tl.arange(0, VP)
    m = tl.full((KP,), float("-inf"), tl.float32)
    l = tl.zeros((KP,), tl.float32)
    ctx = tl.zeros((KP, VP), tl.float32)
    for p0 in range(start, stop, BLOCK_N):
        pos = p0 + tl.arange(0, BLOCK_N)
        inside = pos < stop
        keys = _project(wk, bk_ptr + g * group_k, x_base, pos, n, group_k, C, KP, BLOCK_C, BLOCK_N, IEEE)
        values = _project(wv, bv_ptr + g * group_v, x_base, pos, n, group_v, C, VP, BLOCK_C, BLOCK_N, IEEE)
        values = tl.where(inside[None, :], values, 0.0)
        if SOFTMAX:
            keys = tl.where(inside[None, :], keys, float("-inf"))
            m_new = tl.maximum(m, tl.max(keys, axis=1))
            alpha = tl.exp(m - m_new)
            weights = tl.exp(keys - m_new[:, None])
            l = l * alpha + tl.sum(weights, axis=1)
            ctx = ctx * alpha[:, None]
            m = m_new
        else:
            weights = tl.where(inside[None, :], keys, 0.0)
        if IEEE:
            ctx += tl.dot(weights, tl.trans(values), input_precision="ieee")
        else:
            ctx += tl.dot(weights.to(x_ptr.dtype.element_ty), tl.trans(values).to(x_ptr.dtype.element_ty))
    slot = (b * tl.num_programs(2) + g) * splits + s
    tl.store(m_ptr + slot * KP + k, m)
    tl.store(l_ptr + slot * KP + k, l)
    tl.store(ctx_ptr + slot * KP * VP + k[:, None] * VP + v[None, :], ctx)


@triton.jit
def _fold_kernel(
    m_ptr,
    l_ptr,
    ctx_ptr,
    wr_ptr,
    fold_ptr,
    C,
    n,
    VC,
    group_k,
    group_v,
    splits,
    d_k,
    d_v,
    KP: tl.constexpr,
    VP: tl.constexpr,
    FOLD_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
    SOFTMAX: tl.constexpr,
):
    """Combine, one program per (batch, head group): merge the splits, keep each head's block, fold it
    into the reprojection: fold[c, k] = sum_v reprojection[c, v] * context[k, v]."""
    b = tl.program_id(0)
    g = tl.program_id(1)
    k = tl.arange(0, KP)
    v = tl.arange(0, VP)
    first = (b * tl.num_programs(1) + g) * splits
    top = tl.full((KP,), float("-inf"), tl.float32)
    for s in range(splits):
        top = tl.maximum(top, tl.load(m_ptr + (first + s) * KP + k))
    total = tl.zeros((KP,), tl.float32)
    ctx = tl.zeros((KP, VP), tl.float32)
    for s in range(splits):
        if SOFTMAX:
            scale = tl.exp(tl.load(m_ptr + (first + s) * KP + k) - top)
        else:
            scale = tl.full((KP,), 1.0, tl.float32)
        total += tl.load(l_ptr + (first + s) * KP + k) * scale
        ctx += tl.load(ctx_ptr + (first + s) * KP * VP + k[:, None] * VP + v[None, :]) * scale[:, None]
    if SOFTMAX:
        ctx = ctx / tl.where(total > 0, total, 1.0)[:, None]
    else:
        ctx = ctx / n
    same_head = (k[:, None] // d_k == v[None, :] // d_v) & (k[:, None] < group_k) & (v[None, :] < group_v)
    ctx = tl.where(same_head, ctx, 0.0)
    columns = g * group_k + k
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        wr = tl.load(
            wr_ptr + c[:, None] * VC + g * group_v + v[None, :],
            mask=(c[:, None] < C) & (v[None, :] < group_v),
            other=0.0,
        )
        fold = tl.dot(wr.to(tl.float32), tl.trans(ctx), input_precision="ieee")
        tl.store(
            fold_ptr + b.to(tl.int64) * C * FOLD_K + c[:, None] * FOLD_K + columns[None, :],
            fold,
            mask=(c[:, None] < C) & (k[None, :] < group_k),
        )


@triton.jit
def _output_kernel(
    x_ptr,
    wq_ptr,
    bq_ptr,
    fold_ptr,
    br_ptr,
    out_ptr,
    C,
    n,
    KC,
    d_k,
    KP: tl.constexpr,
    HEADS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SOFTMAX: tl.constexpr,
    IEEE: tl.constexpr,
):
    """Pass 2, one program per (batch, tile of positions): queries, per-head softmax, fold, bias, residual."""
    b = tl.program_id(0)
    pos = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    base = b.to(tl.int64) * C * n
    k = tl.arange(0, KP)
    queries = _project(wq_ptr, bq_ptr, x_ptr + base, pos, n, KC, C, KP, BLOCK_C, BLOCK_N, IEEE)
    real = k[:, None] < KC
    if SOFTMAX:  # over each head's d_k channels, per position
        top = tl.zeros((KP, BLOCK_N), tl.float32)
        for h in tl.static_range(HEADS):
            rows = (k[:, None] // d_k == h) & real
            head_top = tl.max(tl.where(rows, queries, float("-inf")), axis=0)
            top = tl.where(rows, head_top[None, :], top)
        e = tl.where(real, tl.exp(queries - top), 0.0)
        total = tl.full((KP, BLOCK_N), 1.0, tl.float32)
        for h in tl.static_range(HEADS):
            rows = (k[:, None] // d_k == h) & real
            total = tl.where(rows, tl.sum(tl.where(rows, e, 0.0), axis=0)[None, :], total)
        queries = e / total
    else:
        queries = tl.where(real, queries, 0.0)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        fold = tl.load(
            fold_ptr + b.to(tl.int64) * C * KP + c[:, None] * KP + k[None, :], mask=c[:, None] < C, other=0.0
        )
        if IEEE:
            branch = tl.dot(fold, queries, input_precision="ieee")
        else:
            branch = tl.dot(fold.to(x_ptr.dtype.element_ty), queries.to(x_ptr.dtype.element_ty))
        bias = tl.load(br_ptr + c, mask=c < C, other=0.0).to(tl.float32)
        where = (c[:, None] < C) & (pos[None, :] < n)
        offsets = base + c[:, None] * n + pos[None, :]
        x = tl.load(x_ptr + offsets, mask=where, other=0.0).to(tl.float32)
        tl.store(out_ptr + offsets, (branch + bias[:, None] + x).to(out_ptr.dtype.element_ty), mask=where)


def _padded(channels: int) -> int:
    return max(MIN_DOT, triton.next_power_of_2(channels))


#: FP32 elements one program keeps in registers for a tile or a context: about 64 per thread at 4 warps.
TILE_ELEMENTS = 8192


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def head_group(head_count: int, d_k: int, d_v: int) -> int:
    """Heads per pass-1 program: the most that divide ``head_count`` with a padded context of <= 4096."""
    fits = [
        g
        for g in range(1, head_count + 1)
        if head_count % g == 0 and _padded(g * d_k) * _padded(g * d_v) <= TILE_ELEMENTS // 2
    ]
    return max(fits, default=1)


def tile_sizes(channels: int, rows: int) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_N) for tiles of ``rows`` projected channels: about TILE_ELEMENTS FP32 values each."""
    block_n = max(MIN_DOT, min(128, TILE_ELEMENTS // _padded(rows)))
    block_c = max(MIN_DOT, min(64, _padded(channels), TILE_ELEMENTS // block_n))
    return block_c, block_n


def split_count(programs: int, positions: int, block_n: int, device: torch.device) -> int:
    """Splits of the positions for pass 1: enough programs to fill the GPU, each at least one tile."""
    tiles = math.ceil(positions / block_n)
    wanted = math.ceil(4 * _multiprocessors(device) / programs)
    return max(1, min(tiles, wanted, 256))


Projection = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Layout:
    """How one call splits its work: head groups for pass 1, padded sizes, tiles and splits of the positions."""

    groups: int
    group_k: int  # key channels of one head group
    group_v: int  # value channels of one head group
    kp: int  # group_k padded
    vp: int  # group_v padded
    fold_k: int  # all key channels, padded (pass 2's query tile)
    block_c: int
    block_n: int
    splits: int
    split: int  # positions per split, a multiple of block_n


def layout(
    channels: int,
    positions: int,
    batch: int,
    key_channels: int,
    value_channels: int,
    head_count: int,
    device: torch.device,
    splits: int | None = None,
) -> Layout:
    """The work split for a call (``splits``: force pass 1's split count, as tests do)."""
    d_k, d_v = key_channels // head_count, value_channels // head_count
    heads_per_group = head_group(head_count, d_k, d_v)
    groups = head_count // heads_per_group
    group_k, group_v = heads_per_group * d_k, heads_per_group * d_v
    kp, vp = _padded(group_k), _padded(group_v)
    block_c, block_n = tile_sizes(channels, max(kp, vp))
    if splits is None:
        splits = split_count(batch * groups, positions, block_n, device)
    split = math.ceil(math.ceil(positions / splits) / block_n) * block_n
    return Layout(groups, group_k, group_v, kp, vp, _padded(key_channels), block_c, block_n, splits, split)


def efficient_attention(
    x: torch.Tensor,
    keys: Projection,
    queries: Projection,
    values: Projection,
    reprojection: Projection,
    head_count: int,
    softmax: bool = True,
    splits: int | None = None,
) -> torch.Tensor:
    """``x`` + the Efficient-Attention branch, for ``x`` of shape (N, C, *positions).

    Args:
        x: FP32 or FP16 input; the weights share its dtype and device.
        keys, queries, values, reprojection: (weight [out, in], bias [out]) of each 1x1 projection.
        head_count: heads; key and value channels split evenly among them.
        softmax: the paper's softmax normalisation; False for scaling (keys / n, queries as they are).
        splits: pass-1 splits of the positions (default: enough to fill the device); for tests.

    Returns:
        A tensor shaped and typed like ``x``.
    """
    batch, channels = x.shape[:2]
    x3 = x.contiguous().reshape(batch, channels, -1)
    n = x3.shape[2]
    out = torch.empty_like(x3)
    if batch == 0 or n == 0:
        return out.reshape(x.shape)
    key_channels, value_channels = keys[0].shape[0], values[0].shape[0]
    d_k, d_v = key_channels // head_count, value_channels // head_count
    p = layout(channels, n, batch, key_channels, value_channels, head_count, x.device, splits)
    ieee = x.dtype == torch.float32
    slots = batch * p.groups * p.splits

    def scratch(size: int) -> torch.Tensor:
        return torch.empty(size, device=x.device, dtype=torch.float32)

    m, total, ctx = scratch(slots * p.kp), scratch(slots * p.kp), scratch(slots * p.kp * p.vp)
    fold = scratch(batch * channels * p.fold_k).zero_()
    out_c, out_n = tile_sizes(channels, p.fold_k)
    # Kernel launches keep one argument list each, in the kernels' order:
    # fmt: off
    _context_kernel[(batch, p.splits, p.groups)](
        x3, keys[0], keys[1], values[0], values[1], m, total, ctx, channels, n, p.group_k, p.group_v, p.split,
        p.splits, KP=p.kp, VP=p.vp, BLOCK_C=p.block_c, BLOCK_N=p.block_n, SOFTMAX=softmax, IEEE=ieee)
    _fold_kernel[(batch, p.groups)](
        m, total, ctx, reprojection[0], fold, channels, n, value_channels, p.group_k, p.group_v, p.splits, d_k, d_v,
        KP=p.kp, VP=p.vp, FOLD_K=p.fold_k, BLOCK_C=p.block_c, SOFTMAX=softmax)
    _output_kernel[(batch, math.ceil(n / out_n))](
        x3, queries[0], queries[1], fold, reprojection[1], out, channels, n, key_channels, d_k,
        KP=p.fold_k, HEADS=head_count, BLOCK_C=out_c, BLOCK_N=out_n, SOFTMAX=softmax, IEEE=ieee)
    # fmt: on
    return out.reshape(x.shape)
