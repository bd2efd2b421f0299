"""Timing: one clock per device, providers interleaved repetition by repetition, quantiles.

Memory bandwidth on shared machines swings ~1.7x over minutes (docs/build.md#measuring-on-shared-machines),
so providers of one case are never timed one after another: every repetition runs each of them once, in an order that
rotates, together with the in-place bandwidth probe, and each keeps its own list of times.
"""
from __future__ import annotations

import time
from typing import Callable

import torch


def quantile(xs: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of a non-empty list."""
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summary(xs: list[float]) -> tuple[float, float, float]:
    """(median, p20, p80)."""
    return quantile(xs, 0.5), quantile(xs, 0.2), quantile(xs, 0.8)


class CpuClock:
    """Wall time of one call; CPU ops return only when done."""

    def time(self, fn: Callable[[], object]) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start


class CudaClock:
    """CUDA events around one call, after zeroing a buffer twice the L2 size so no repetition starts
    with the previous one's data cached (an optimizer step over a few MB would otherwise run from L2)."""

    def __init__(self, device: torch.device):
        l2 = torch.cuda.get_device_properties(device).L2_cache_size
        self.flush = torch.empty(2 * l2, dtype=torch.uint8, device=device)
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)

    def time(self, fn: Callable[[], object]) -> float:
        self.flush.zero_()
        self.start.record()
        fn()
        self.end.record()
        self.end.synchronize()
        return self.start.elapsed_time(self.end) / 1e3


def clock_for(device: torch.device):
    return CudaClock(device) if device.type == "cuda" else CpuClock()


class BandwidthProbe:
    """In-place read-modify-write bandwidth: a *= s over one fp32 buffer (512 MiB by default, far
    beyond any cache). Moves 2 bytes per buffer byte, the pattern of an optimizer step.

    `read` sums the same buffer: the read-only bandwidth a gradient-norm pass (AGD, LAMB) is bound
    by, reported beside it because on the 2-core build VM reads are the scarce resource (a *= s
    reads ~15 GB/s while writing as much, a.sum() reads ~19): read-heavy steps (AGD, 12 of 16 bytes
    read) score lower against a *= s than write-heavy ones (Adam, 16 of 28)."""

    def __init__(self, mib: float, device: torch.device):
        self.buffer = torch.ones(max(1, int(mib * 2 ** 20) // 4), dtype=torch.float32, device=device)
        self.bytes = 2 * self.buffer.numel() * 4
        self.read_bytes = self.buffer.numel() * 4

    def step(self) -> None:
        self.buffer.mul_(1.0)

    def read(self) -> None:
        self.buffer.sum()


def interleaved(fns: dict[str, Callable[[], object]], reps: int, clock, on_rep: Callable[[], None]) -> dict:
    """{name: [seconds per repetition]}: each repetition calls every fn once, the order rotated by
    one per repetition so no provider always runs right after the same neighbour."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(clock.time(fns[name]))
        on_rep()
    return times
