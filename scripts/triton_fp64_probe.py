"""How far Triton's fp64 exp, log, sqrt and division are from torch's on this GPU, in fp64 ulps.

YellowFin's tuner (triton_kernels/yellowfin.py) is fp64 scalar math; on an H200 it differed from the
reference by ~1e-7 relative (docs/gpu_runs.md), which is fp32-sized: this finds which operation does it.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _probe(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=1.0)
    tl.store(out_ptr + offs, tl.exp(x), mask=mask)
    tl.store(out_ptr + n + offs, tl.log(x), mask=mask)
    tl.store(out_ptr + 2 * n + offs, tl.sqrt(x), mask=mask)
    tl.store(out_ptr + 3 * n + offs, 1.0 / (x + 3.0), mask=mask)


def main():
    n = 1 << 16
    x = torch.rand(n, dtype=torch.float64, device="cuda") * 4 + 0.01
    out = torch.empty(4 * n, dtype=torch.float64, device="cuda")
    _probe[(triton.cdiv(n, 1024),)](x, out, n, BLOCK=1024)
    want = torch.cat([x.exp(), x.log(), x.sqrt(), 1.0 / (x + 3.0)])
    for k, name in enumerate(["exp", "log", "sqrt", "1/(x+3)"]):
        got, ref = out[k * n:(k + 1) * n], want[k * n:(k + 1) * n]
        ulps = ((got - ref).abs() / torch.finfo(torch.float64).eps / ref.abs().clamp_min(1e-300)).max().item()
        print(f"fp64 {name:8s}: max {ulps:.3g} ulps from torch")


if __name__ == "__main__":
    main()
