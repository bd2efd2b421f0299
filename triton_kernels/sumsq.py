"""Per-slice sums of squares (`slice_sumsq_`): one launch, deterministic (atomics only count arrivals).

A tensor of rank >= 2 and shape (o, i, *k) has K = prod(k) slices (taps); element e belongs to tap e % K.
Each program squares and sums one chunk, viewed as rows of W = K·⌊KP/K⌋ elements (KP = the launch's
power-of-two tap width): column c of a row holds tap c % K, so a (o, i) matrix (K = 1) fills all KP lanes
instead of one. The program stores its KP column sums (fp64) as one partial row; the last program of the
tensor to arrive adds the tensor's partial rows in chunk order, folds columns c ≡ tap (mod K) together and
writes the K sums. The result has the same bits for any launch order: fixed order everywhere.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton

from agd_kernels.reference.sumsq import num_slices

from . import multi_tensor as mt
from ._common import last_to_arrive, load, program_chunk, row_pointer

# rows payload columns
_TAPS = tl.constexpr(mt.HEAD + 0)
_WIDTH = tl.constexpr(mt.HEAD + 1)
_SLOT = tl.constexpr(mt.HEAD + 2)
_ELEMENTS = tl.constexpr(mt.HEAD + 3)  # the tensor's numel (the NUMEL column counts rows · KP, see below)


@triton.jit
def _slice_sumsq_chunk(x, out, partials, counter, numel, taps, width, first_block, n_blocks, block, start,
                       KP: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    k = tl.arange(0, KP)
    if KP == 1:  # only matrices: one flat run of elements, full tiles unmasked so loads vectorize
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for off in range(0, CHUNK, BLOCK):
            offs = start + off + tl.arange(0, BLOCK)
            if start + off + BLOCK <= numel:
                v = load(x + offs, None)
            else:
                v = load(x + offs, offs < numel)
            acc += v * v
        colsum = tl.zeros([KP], dtype=tl.float64) + tl.sum(acc, axis=0).to(tl.float64)
    else:
        ROWS: tl.constexpr = BLOCK // KP
        rows = tl.arange(0, ROWS)[:, None]
        cols = tl.arange(0, KP)[None, :]
        first_row = start // KP  # a chunk holds CHUNK // KP rows of `width` <= KP elements
        acc2 = tl.zeros([ROWS, KP], dtype=tl.float32)
        for r in range(0, CHUNK // KP, ROWS):
            offs2 = (first_row + r + rows) * width + cols
            v2 = load(x + offs2, (cols < width) & (offs2 < numel))
            acc2 += v2 * v2
        colsum = tl.sum(acc2, axis=0).to(tl.float64)
    tl.store(partials + block * KP + k, colsum)
    if last_to_arrive(counter, n_blocks, tl.full([], 1, dtype=tl.int1)):  # sums have no found_inf
        total = tl.zeros([KP], dtype=tl.float64)
        for b in range(first_block, first_block + n_blocks):
            total += tl.load(partials + b * KP + k, cache_modifier=".cg")
        # Fold columns onto taps through memory (a register gather would need a KP x KP one-hot).
        tl.store(partials + first_block * KP + k, total)
        tl.debug_barrier()
        sums = tl.zeros([KP], dtype=tl.float64)
        for j in range(0, width // taps):
            sums += tl.load(partials + first_block * KP + j * taps + k, mask=k < taps, other=0.0,
                            cache_modifier=".cg")
        tl.store(out + k, sums.to(tl.float32), mask=k < taps)


@triton.jit
def _slice_sumsq_kernel(rows, ptrs, blocks, out, partials, counters, NCOL: tl.constexpr, DTYPE: tl.constexpr,
                        ALIGN: tl.constexpr, KP: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    t, start = program_chunk(blocks, CHUNK)
    row = rows + t * NCOL
    _slice_sumsq_chunk(row_pointer(ptrs, t, DTYPE, ALIGN), out + tl.load(row + _SLOT), partials, counters + t,
                       tl.load(row + _ELEMENTS), tl.load(row + _TAPS), tl.load(row + _WIDTH),
                       tl.load(row + mt.FIRST), tl.load(row + mt.NBLOCKS), tl.program_id(0), start,
                       KP, BLOCK, CHUNK)


@triton.jit
def _slice_sumsq_tensor_kernel(x, out, slot, partials, counter, numel, taps, width, KP: tl.constexpr,
                               BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    block = tl.program_id(0)
    _slice_sumsq_chunk(x, out + slot, partials, counter, numel, taps, width, 0, tl.num_programs(0), block,
                       block.to(tl.int64) * CHUNK, KP, BLOCK, CHUNK)


def _tap_width(max_taps: int) -> int:
    return triton.next_power_of_2(max(max_taps, 1))


def slice_sumsq_triton(tensors: list[Tensor], out: Tensor) -> None:
    """Triton `slice_sumsq_` (see agd_kernels.ops.slice_sumsq_)."""
    if not tensors:
        return
    device = tensors[0].device
    taps = [num_slices(t.shape) for t in tensors]
    if sum(taps) != out.numel():
        raise ValueError(f"slice_sumsq_: out has {out.numel()} slots but the tensors have {sum(taps)} slices")
    if out.dtype != torch.float32 or out.device != device or not out.is_contiguous():
        raise ValueError(f"slice_sumsq_: out must be a contiguous float32 tensor on {device}; "
                         f"got {out.dtype} on {out.device}")
    mt.check_lists("slice_sumsq_", tensors, {}, contiguous=True, first="tensors")
    slots = [0]
    for k in taps[:-1]:
        slots.append(slots[-1] + k)
    # A weight with a zero-size kernel dim has no slices (and no elements): it takes no part in the launch.
    tensors, taps, slots = zip(*[(x, k, s) for x, k, s in zip(tensors, taps, slots) if k > 0]) if out.numel() \
        else ((), (), ())
    if not tensors:
        return
    kp = _tap_width(max(taps))
    cfg = mt.config(device)
    block = max(cfg.block, kp)
    chunk = max(cfg.chunk, block)
    widths = [k * (kp // k) for k in taps]
    # Chunks are CHUNK // KP rows of at most KP elements: count a tensor as rows · KP for the block map.
    spans = [triton.cdiv(x.numel(), w) * kp for x, w in zip(tensors, widths)]
    meta = dict(KP=kp, BLOCK=block, CHUNK=chunk, num_warps=cfg.num_warps)
    if mt.traced(out):
        for x, k, w, slot, span in zip(tensors, taps, widths, slots, spans):
            n_blocks = mt.n_programs(span, chunk)
            partials = torch.empty(n_blocks * kp, dtype=torch.float64, device=device)
            counter = torch.zeros(1, dtype=torch.int32, device=device)
            wrap_triton(_slice_sumsq_tensor_kernel)[(n_blocks,)](x, out, slot, partials, counter, x.numel(), k, w,
                                                                 **meta)
        return
    tab = mt.table("slice_sumsq_", device, spans,
                   [(k, w, s, x.numel()) for x, k, w, s in zip(tensors, taps, widths, slots)], chunk,
                   scratch_per_block=kp)
    wrap_triton(_slice_sumsq_kernel)[(tab.n_blocks,)](
        tab.rows, mt.pointers(tensors, device), tab.blocks, out, tab.scratch, tab.counters, NCOL=mt.HEAD + 4,
        DTYPE=mt.TL_DTYPE[tensors[0].dtype], ALIGN=mt.alignment(t.data_ptr() for t in tensors), **meta)
