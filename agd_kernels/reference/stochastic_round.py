"""Stochastic rounding of fp32 tensors into bf16 ones, with Philox4x32-10 bits (the spec of
agd_kernels.ops.stochastic_round_; the C++ backends share csrc/include/agd_kernels/stochastic_round.h).

Everything is integer arithmetic on int64 tensors holding uint32 values (masked with 0xFFFFFFFF), so
the bits are the same on every device; a 32x32-bit product, which could overflow int64, is formed from
16-bit halves of one factor.
"""
from __future__ import annotations

import torch
from torch import Tensor

MASK32 = 0xFFFFFFFF
PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)
BF16_NAN = 0x7FC0  # what every NaN becomes: the canonical quiet NaN (see stochastic_round.h)


def _mulhilo(m: int, a: Tensor) -> tuple[Tensor, Tensor]:
    """(high, low) 32 bits of the 64-bit product m·a, m a uint32 constant and a uint32 values."""
    lo_part = a & 0xFFFF
    hi_part = a >> 16
    p_lo = lo_part * m  # < 2^48
    p_hi = hi_part * m  # < 2^48; the product is p_hi·2^16 + p_lo
    low = (p_lo + ((p_hi & 0xFFFF) << 16)) & MASK32
    high = (p_hi + (p_lo >> 16)) >> 16
    return high, low


def philox4x32_10(counter: tuple[Tensor, Tensor, Tensor, Tensor], key: tuple[int | Tensor, int | Tensor]
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Philox4x32-10 of uint32 counters (4 int64 tensors, broadcast together) under a 2-word key."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        hi0, lo0 = _mulhilo(PHILOX_M[0], c0)
        hi1, lo1 = _mulhilo(PHILOX_M[1], c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + PHILOX_W[0]) & MASK32
        k1 = (k1 + PHILOX_W[1]) & MASK32
    return c0, c1, c2, c3


def rounding_bits(index: Tensor, step: Tensor, seed: Tensor) -> Tensor:
    """The 16 random bits (int64 in [0, 65536)) of global element indices `index` (int64) at `step` under
    `seed`: the low half of the first word of Philox4x32-10 with key (seed low, seed high) and counter
    (index low, index high, step, 0)."""
    seed = seed.to(index.device).reshape(())
    key = (seed & MASK32, (seed >> 32) & MASK32)
    step = step_word(step).to(index.device)
    counter = (index & MASK32, (index >> 32) & MASK32, step.expand_as(index), torch.zeros_like(index))
    return philox4x32_10(counter, key)[0] & 0xFFFF


def step_word(step: Tensor) -> Tensor:
    """A step tensor's value as the counter's uint32 word: truncated to an integer, modulo 2^32."""
    return step.reshape(()).to(torch.int64) & MASK32


def round_bits(x: Tensor, r: Tensor) -> Tensor:
    """bf16 bits (int64) of fp32 bits `x` (int64 holding uint32) rounded with random bits `r`: the upper
    half of x + r, NaN -> BF16_NAN (the why: csrc/include/agd_kernels/stochastic_round.h)."""
    nan = (x & 0x7FFFFFFF) > 0x7F800000
    return torch.where(nan, BF16_NAN, ((x + r) & MASK32) >> 16)


def memory_order(t: Tensor) -> Tensor:
    """A dense tensor's elements as a 1-D view in memory order, the order the kernels number them in."""
    return t.as_strided((t.numel(),), (1,), t.storage_offset())


def check(dst: list[Tensor], src: list[Tensor], seed: Tensor, steps: list[Tensor], offsets: list[int]) -> None:
    """The argument checks every backend makes (raised before anything is written)."""
    op = "stochastic_round_"
    if not (len(src) == len(steps) == len(offsets) == len(dst)):
        raise ValueError(f"{op}: dst has {len(dst)} tensors; src, steps and offsets need as many, got "
                         f"{len(src)}, {len(steps)} and {len(offsets)}")
    if seed.numel() != 1 or seed.dtype != torch.int64:
        raise ValueError(f"{op}: seed must be a one-element int64 tensor; got {seed.dtype} of shape "
                         f"{tuple(seed.shape)}")
    for i, (d, s, step, offset) in enumerate(zip(dst, src, steps, offsets)):
        if d.dtype != torch.bfloat16:
            raise TypeError(f"{op}: dst[{i}] has dtype {d.dtype}; stochastic rounding writes bfloat16 tensors")
        if s.dtype != torch.float32 or s.shape != d.shape or s.device != d.device:
            raise ValueError(f"{op}: src[{i}] is {s.dtype}{list(s.shape)} on {s.device}; expected float32 "
                             f"{list(d.shape)} on {d.device} (dst[{i}]'s shape and device)")
        same_layout = (d.is_contiguous() and s.is_contiguous()) or d.stride() == s.stride()
        if not (same_layout and _dense(d)):
            raise ValueError(f"{op}: src[{i}] has strides {s.stride()}, dst[{i}] has {d.stride()}; both must be "
                             "dense with the same memory layout")
        if step.numel() != 1 or step.dtype not in (torch.float32, torch.float64) or step.dtype != steps[0].dtype:
            raise ValueError(f"{op}: steps[{i}] must be a one-element float32 or float64 tensor of steps[0]'s "
                             f"dtype; got {step.dtype} of shape {tuple(step.shape)}")
        if offset < 0:
            raise ValueError(f"{op}: offsets[{i}] is {offset}; expected >= 0")


def _dense(t: Tensor) -> bool:
    """Non-overlapping and dense: the elements fill storage[offset : offset + numel] exactly once."""
    expected = 1
    for stride, size in sorted((s, n) for s, n in zip(t.stride(), t.shape) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def stochastic_round_(dst: list[Tensor], src: list[Tensor], seed: Tensor, steps: list[Tensor],
                      offsets: list[int]) -> None:
    """dst[i] <- src[i] rounded to bf16 stochastically (see agd_kernels.ops.stochastic_round_)."""
    check(dst, src, seed, steps, offsets)
    for d, s, step, offset in zip(dst, src, steps, offsets):
        if s.numel() == 0:
            continue
        x = memory_order(s).view(torch.int32).to(torch.int64) & MASK32
        index = offset + torch.arange(s.numel(), dtype=torch.int64, device=s.device)
        bits = round_bits(x, rounding_bits(index, step, seed))
        # uint16 values as int16 (two's complement), then reinterpreted as bf16
        signed = torch.where(bits >= 0x8000, bits - 0x10000, bits).to(torch.int16)
        memory_order(d).copy_(signed.view(torch.bfloat16))
