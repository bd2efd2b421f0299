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


# ------------------------------------------------------------------------------------------ telemetry
# With TELEMETRY (a constexpr: the launcher was given a buffer, agd_kernels/ops.py "Telemetry") a program sums
# the five columns of agd_kernels/reference/telemetry.py SUMS over its tiles in fp32 (one tl.sum tree per tile,
# then tile order), stores them as one fp64 partial row of its own, and the last program of the tensor to
# arrive adds the tensor's rows in program order into telemetry[tensor]: no float atomics, the same bits for
# any arrival order, and no launch beyond the update's. Without TELEMETRY the sums are never formed.
NUM_SUMS = tl.constexpr(5)
# Partial rows the last program adds per step: one row per thread of a 4-warp program.
SUM_ROWS = tl.constexpr(128)


@triton.jit
def no_sums():
    """The five running sums of a program before its first tile."""
    z = tl.zeros([], dtype=tl.float32)
    return z, z, z, z, z


@triton.jit
def _add5(a0, a1, a2, a3, a4, b0, b1, b2, b3, b4):
    return a0 + b0, a1 + b1, a2 + b2, a3 + b3, a4 + b4


@triton.jit
def _delta(w, new, p, mask):
    """Δw: `new` rounded as it is stored into p, minus w; 0 in masked lanes (an update of zeros need not be 0)."""
    d = new.to(p.dtype.element_ty).to(tl.float32) - w
    if mask is not None:
        d = tl.where(mask, d, 0.0)
    return d


@triton.jit
def add_tile_sums(sums, w, g, new, p, mask, TELEMETRY: tl.constexpr):
    """`sums` plus one tile's five sums: w the weights before the update, g the gradient divided by grad_scale
    (not negated by maximize, before weight decay), Δw = `new` rounded as it is stored into p, minus w.
    Masked lanes loaded w = g = 0; their Δw is zeroed too (an update of zeros need not be zero)."""
    if TELEMETRY:
        d = _delta(w, new, p, mask)
        t = tl.reduce((w * w, g * g, w * g, d * d, w * d), 0, _add5)
        return sums[0] + t[0], sums[1] + t[1], sums[2] + t[2], sums[3] + t[3], sums[4] + t[4]
    else:
        return sums


@triton.jit
def _add2(a0, a1, b0, b1):
    return a0 + b0, a1 + b1


@triton.jit
def add_read_sums(sums, w, g, TELEMETRY: tl.constexpr):
    """`sums` plus one tile's g_sq and w_g, for lamb_moments_ (READ_SUMS: it writes no weight, and its w_sq is
    the Σp² it reduces for `norms` anyway). Masked lanes loaded w = g = 0."""
    if TELEMETRY:
        t = tl.reduce((g * g, w * g), 0, _add2)
        return sums[0], sums[1] + t[0], sums[2] + t[1], sums[3], sums[4]
    else:
        return sums


@triton.jit
def add_update_sums(sums, w, new, p, mask, TELEMETRY: tl.constexpr):
    """`sums` plus one tile's d_sq and w_d, for lamb_apply_ (UPDATE_SUMS: its fp32 path reads no gradient);
    w, Δw as in add_tile_sums."""
    if TELEMETRY:
        d = _delta(w, new, p, mask)
        t = tl.reduce((d * d, w * d), 0, _add2)
        return sums[0], sums[1], sums[2], sums[3] + t[0], sums[4] + t[1]
    else:
        return sums


@triton.jit
def store_sums(sums, scratch, block, FIRST: tl.constexpr = 0, END: tl.constexpr = NUM_SUMS):
    """This program's sums as partial row `block` (fp64 slots) of the launch's scratch: columns FIRST .. END
    (an op that adds only some columns stores only those)."""
    row = scratch + block.to(tl.int64) * NUM_SUMS
    for c in tl.static_range(FIRST, END):
        tl.store(row + c, sums[c].to(tl.float64))


@triton.jit
def add_tensor_sums(scratch, first_block, n_blocks, out, FIRST: tl.constexpr = 0, END: tl.constexpr = NUM_SUMS):
    """out[FIRST:END] (fp32, of one tensor's telemetry row) += the sums of partial rows first_block .. +
    n_blocks, in that order: SUM_ROWS rows at a time by tl.sum's fixed tree, then in sequence, in fp64; the
    other columns of out are not touched. Runs in the tensor's last program (last_to_arrive), which sees every
    sibling's row; .cg reads them from L2."""
    k = tl.arange(0, SUM_ROWS)
    for c in tl.static_range(FIRST, END):
        total = tl.zeros([], dtype=tl.float64)
        for b in range(first_block, first_block + n_blocks, SUM_ROWS):
            rows = b + k
            total += tl.sum(tl.load(scratch + rows.to(tl.int64) * NUM_SUMS + c, mask=rows < first_block + n_blocks,
                                    other=0.0, cache_modifier=".cg"))
        tl.store(out + c, tl.load(out + c) + total.to(tl.float32))
