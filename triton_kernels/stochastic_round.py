"""Stochastic rounding of fp32 tensors into bf16 ones (`stochastic_round_`, agd_kernels.ops): one launch.

Philox4x32-10 is written out in uint32 operations (tl.umulhi for the high word of each product) so the bits
are those of the reference and the C++ backends, agd_kernels/reference/stochastic_round.py being the spec;
tl.randint's Philox is not used, since nothing pins its counter layout to ours. Bytes per element: 4 read,
2 written.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import wrap_triton

from agd_kernels.reference.stochastic_round import check

from . import multi_tensor as mt
from ._common import program_chunk, row_pointer

# rows payload columns
_DST = tl.constexpr(mt.HEAD + 0)
_STEP = tl.constexpr(mt.HEAD + 1)
_OFFSET = tl.constexpr(mt.HEAD + 2)
_NCOL = tl.constexpr(mt.HEAD + 3)


@triton.jit
def _philox_first_word(c0, c1, c2, c3, k0, k1):
    """The first word of Philox4x32-10(counter (c0, c1, c2, c3), key (k0, k1)), all uint32."""
    m0 = tl.full([], 0xD2511F53, tl.uint32)
    m1 = tl.full([], 0xCD9E8D57, tl.uint32)
    w0 = tl.full([], 0x9E3779B9, tl.uint32)
    w1 = tl.full([], 0xBB67AE85, tl.uint32)
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, m0)
        lo0 = c0 * m0
        hi1 = tl.umulhi(c2, m1)
        lo1 = c2 * m1
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = k0 + w0
        k1 = k1 + w1
    return c0


@triton.jit
def _round_tile(dst, src, offs, mask, first, step, k0, k1):
    if mask is None:  # full tiles: no mask, so loads and stores can vectorize
        x = tl.load(src + offs).to(tl.uint32, bitcast=True)
    else:
        x = tl.load(src + offs, mask=mask, other=0.0).to(tl.uint32, bitcast=True)
    index = first + offs
    lo = (index & 0xFFFFFFFF).to(tl.uint32)
    hi = (index >> 32).to(tl.uint32)
    r = _philox_first_word(lo, hi, tl.zeros_like(lo) + step, tl.zeros_like(lo), k0, k1) & 0xFFFF
    nan = (x & 0x7FFFFFFF) > 0x7F800000
    bits = tl.where(nan, 0x7FC0, (x + r) >> 16).to(tl.uint16)
    tl.store(dst + offs, bits.to(dst.dtype.element_ty, bitcast=True), mask=mask)


@triton.jit
def _round_chunk(dst, src, step_ptr, first, numel, start, seed_ptr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    seed = tl.load(seed_ptr)
    k0 = (seed & 0xFFFFFFFF).to(tl.uint32)
    k1 = ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32)
    step = (tl.load(step_ptr).to(tl.int64) & 0xFFFFFFFF).to(tl.uint32)
    for off in range(0, CHUNK, BLOCK):
        offs = start + off + tl.arange(0, BLOCK)
        if start + off + BLOCK <= numel:
            _round_tile(dst, src, offs, None, first, step, k0, k1)
        else:
            _round_tile(dst, src, offs, offs < numel, first, step, k0, k1)


@triton.jit
def _stochastic_round_kernel(rows, srcs, blocks, seed_ptr, STEP_DTYPE: tl.constexpr, ALIGN: tl.constexpr,
                             BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    t, start = program_chunk(blocks, CHUNK)
    row = rows + t * _NCOL
    step_ptr = tl.load(row + _STEP).to(tl.pointer_type(STEP_DTYPE))
    _round_chunk(row_pointer(row, _DST, tl.bfloat16, ALIGN), row_pointer(srcs, t, tl.float32, ALIGN), step_ptr,
                 tl.load(row + _OFFSET), tl.load(row + mt.NUMEL), start, seed_ptr, BLOCK, CHUNK)


@triton.jit
def _stochastic_round_tensor_kernel(dst, src, step_ptr, first, numel, seed_ptr, BLOCK: tl.constexpr,
                                    CHUNK: tl.constexpr):
    _round_chunk(dst, src, step_ptr, first, numel, tl.program_id(0).to(tl.int64) * CHUNK, seed_ptr, BLOCK, CHUNK)


def stochastic_round_triton(dst: list[Tensor], src: list[Tensor], seed: Tensor, steps: list[Tensor],
                            offsets: list[int]) -> None:
    """Triton `stochastic_round_` (see agd_kernels.ops.stochastic_round_)."""
    check(dst, src, seed, steps, offsets)
    if not dst:
        return
    device = dst[0].device
    for name, tensors in (("src", src), ("steps", steps), ("seed", [seed])):
        for i, t in enumerate(tensors):
            if t.device != device:
                raise ValueError(f"stochastic_round_: {name}[{i}] is on {t.device}; expected dst[0]'s {device}")
    cfg = mt.config(device)
    meta = dict(BLOCK=cfg.block, CHUNK=cfg.chunk, num_warps=cfg.num_warps)
    if mt.traced(dst[0]):
        for d, s, step, offset in zip(dst, src, steps, offsets):
            wrap_triton(_stochastic_round_tensor_kernel)[(mt.n_programs(d.numel(), cfg.chunk),)](
                d, s, step, offset, d.numel(), seed, **meta)
        return
    payload = [(d.data_ptr(), step.data_ptr(), offset) for d, step, offset in zip(dst, steps, offsets)]
    tab = mt.table("stochastic_round_", device, [d.numel() for d in dst], payload, cfg.chunk)
    align = mt.alignment([d.data_ptr() for d in dst] + [s.data_ptr() for s in src])
    step_dtype = tl.float64 if steps[0].dtype == torch.float64 else tl.float32  # one dtype for all (checked)
    wrap_triton(_stochastic_round_kernel)[(tab.n_blocks,)](tab.rows, mt.pointers(src, device), tab.blocks, seed,
                                                           STEP_DTYPE=step_dtype, ALIGN=align, **meta)
