"""@triton.jit helpers shared by the kernels: the program's chunk, pointers from a table row, the
last-program-to-arrive protocol, and scalar math torch does on the host in double."""
import triton
import triton.language as tl


@triton.jit
def program_chunk(blocks, CHUNK: tl.constexpr):
    """(tensor index, first element) of this program's chunk, from the launch's blocks table."""
    pid = tl.program_id(0)
    return tl.load(blocks + 2 * pid), tl.multiple_of(tl.load(blocks + 2 * pid + 1), CHUNK)


@triton.jit
def row_pointer(row, col, DTYPE: tl.constexpr, ALIGN: tl.constexpr):
    """Column `col` of a rows table, an int64 data pointer, as a pointer to DTYPE aligned to ALIGN bytes.

    A pointer loaded from memory has no known alignment, and without one Triton issues 4-byte loads; the
    launcher passes ALIGN = 16 when every pointer of the launch is 16-byte aligned (any tensor that owns its
    storage is), which lets full tiles use 16-byte vector loads and stores.
    """
    return tl.multiple_of(tl.load(row + col).to(tl.pointer_type(DTYPE)), ALIGN)


@triton.jit
def load(ptr, mask):
    """tl.load as float32, masked unless `mask` is None (full tiles: no mask, so loads can vectorize)."""
    if mask is None:
        return tl.load(ptr).to(tl.float32)
    else:
        return tl.load(ptr, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def store_param(p, model, offs, mask, pv, COPY: tl.constexpr):
    """Store an updated parameter, and with COPY (master weights) also into its 16-bit model parameter:
    `.to` rounds to nearest even on the GPU (the interpreter truncates to bf16, tests/backends/test_triton.py)."""
    tl.store(p + offs, pv.to(p.dtype.element_ty), mask=mask)
    if COPY:
        tl.store(model + offs, pv.to(model.dtype.element_ty), mask=mask)


@triton.jit
def last_to_arrive(counter, n_blocks, live):
    """True in exactly one program of a tensor: the last of its `n_blocks` programs to get here.

    The barrier orders every thread's stores before the (acq_rel, gpu-scope) atomic, so the last program
    sees all partial results its siblings wrote; it resets the counter to 0 for the next launch. Programs
    with `live` false (found_inf set) do not count, and then no program is last.
    """
    tl.debug_barrier()
    arrived = tl.atomic_add(counter, 1, mask=live)
    last = live & (arrived == n_blocks - 1)
    tl.store(counter, 0, mask=last)
    return last


@triton.jit
def pow_f64(base, exponent):
    """base ** exponent for base > 0 in float64, as torch evaluates beta ** step on host scalars."""
    return tl.exp(exponent * tl.log(base))


@triton.jit
def log1p_f64(x):
    """log(1 + x) for x >= 0, accurate for small x: the rounding of u = 1 + x is corrected by (u - 1 - x)/u."""
    u = 1.0 + x
    return tl.where(u == 1.0, x, tl.log(u) - ((u - 1.0) - x) / u)


@triton.jit
def lerp(start, end, weight):
    """torch.lerp's two-sided form (the one ATen uses): exact at weight 0 and 1."""
    return tl.where(weight < 0.5, start + weight * (end - start), end - (end - start) * (1.0 - weight))


@triton.jit
def scalar(x, DTYPE: tl.constexpr):
    """A float kernel argument as a DTYPE scalar tensor. Compiled, arguments are already typed (annotate fp64
    where double matters); the interpreter passes Python floats, which arithmetic would round to fp32.

    No module of triton_kernels may use `from __future__ import annotations`: it turns the annotation "fp64"
    into the string "'fp64'", which Triton does not recognise, and the argument then reaches the compiled
    kernel as fp32 (β2 = 0.999f makes 1 − β2 1.3e-5 off: the H200's Adam, LAMB and YellowFin mismatches,
    docs/gpu_runs.md). tests/backends/test_triton_signatures.py guards it."""
    return tl.full([], x, DTYPE)
