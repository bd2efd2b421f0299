"""Static evidence from the real GPU build, no GPU needed: what the sm_80/sm_90 cubins contain.

Triton kernels: the AOT cubins of every launch (tests/backends/triton_aot.py, compiled once per session).
Extension: the `_C*.so` nvcc built (csrc/cuda), read with the same tool; EXPECTED_CUDA_KERNELS is the one list
to extend when a CUDA kernel lands. The tool itself is checked on a probe nvcc compiles here.
"""
import functools
import re
import shutil
import subprocess

import pytest

from tests import sass_tools
from tests.backends.triton_aot import ARCHS, KERNELS

# ------------------------------------------------------------------------------------- limits
# 128 registers per thread: a 128-thread program then takes 16K of an SM's 64K registers, so 4 programs
# (16 warps) fit per SM, enough outstanding 16-byte loads to stream at full bandwidth. The most today: 117.
MAX_REGISTERS = 128
# Per-thread stack + local bytes. Some variants keep one or two 64-bit values (a table pointer, a partial
# sum) on the stack across ptxas' subroutine CALLs (the correctly rounded division/sqrt slow paths, up to
# 100 per kernel): 8-16 bytes saved once and reloaded once per program, outside the element loops. More
# than 16 bytes would be new spilling.
MAX_STACK_BYTES = 16
# The master-weights TELEMETRY variants spill under the 128-register cap of telemetry launches
# (multi_tensor.GPU.telemetry_maxnreg) on sm_90: f32+f16 Adam 64 B with 42 local ops in its loops, RMSprop
# 24 B with 8 (measured 2026-12-05, docs/telemetry.md). A known cost of telemetry on, bounded here so it
# cannot grow unseen; the kernels without telemetry keep MAX_STACK_BYTES.
MAX_TELEMETRY_STACK_BYTES = 64

#: fp32 elementwise kernels: (streams read, streams written) per element on the full-tile path, where every
#: pointer is 16-byte aligned. Each stream must be moved by 16-byte vector accesses only: BLOCK/(32·warps)
#: = 8 elements per thread per tile are exactly 2 LDG.E.128 per stream (tails and ALIGN=1 use scalar ones).
#: Runtime flags are not constexprs, so a kernel holds every optional stream (amsgrad's vmax, centered
#: RMSprop's average, momentum buffers).
STREAMS = {
    "adam._adam_kernel": (5, 4), "adam._adam_tensor_kernel": (5, 4),  # p g m v vmax / p m v vmax
    "sgd._sgd_kernel": (3, 2), "sgd._sgd_tensor_kernel": (3, 2),  # p g buf / p buf
    "rmsprop._rmsprop_kernel": (5, 4), "rmsprop._rmsprop_tensor_kernel": (5, 4),  # p g sq gavg buf
    "adagrad._adagrad_kernel": (3, 2), "adagrad._adagrad_tensor_kernel": (3, 2),  # p g sum / p sum
    "agd._agd_update_kernel": (2, 1), "agd._agd_update_tensor_kernel": (2, 1),  # p g / p
    "lamb._lamb_moments_kernel": (4, 2), "lamb._lamb_moments_tensor_kernel": (4, 2),  # p g m v / m v
    "lamb._lamb_apply_kernel": (3, 1), "lamb._lamb_apply_tensor_kernel": (3, 1),  # p m v / p
    "yellowfin._yellowfin_apply_kernel": (4, 3), "yellowfin._yellowfin_apply_tensor_kernel": (4, 3),
    "yellowfin._yellowfin_stats_kernel": (2, 0), "yellowfin._yellowfin_stats_tensor_kernel": (2, 0),  # g avg
    "sumsq._slice_sumsq_kernel": (1, 0), "sumsq._slice_sumsq_tensor_kernel": (1, 0),  # KP=1 (matrices)
}

#: Master-weights launches (dtype "f32+bf16" / "f32+f16"): (16-bit streams read, 16-bit streams written) of each
#: kernel's STREAMS: the gradient (lamb_apply_ reads none: fp32 masters never defer the moments) and the model
#: params (ops that write parameters). 8 elements of 2 bytes per thread per tile: 1 LDG.E.128 per 16-bit stream.
MIXED_STREAMS = {
    "adam._adam_kernel": (1, 1), "adam._adam_tensor_kernel": (1, 1),
    "sgd._sgd_kernel": (1, 1), "sgd._sgd_tensor_kernel": (1, 1),
    "rmsprop._rmsprop_kernel": (1, 1), "rmsprop._rmsprop_tensor_kernel": (1, 1),
    "adagrad._adagrad_kernel": (1, 1), "adagrad._adagrad_tensor_kernel": (1, 1),
    "agd._agd_update_kernel": (1, 1), "agd._agd_update_tensor_kernel": (1, 1),
    "lamb._lamb_moments_kernel": (1, 0), "lamb._lamb_moments_tensor_kernel": (1, 0),
    "lamb._lamb_apply_kernel": (0, 1), "lamb._lamb_apply_tensor_kernel": (0, 1),
    "yellowfin._yellowfin_apply_kernel": (1, 1), "yellowfin._yellowfin_apply_tensor_kernel": (1, 1),
    "yellowfin._yellowfin_stats_kernel": (1, 0), "yellowfin._yellowfin_stats_tensor_kernel": (1, 0),
}


@pytest.fixture(scope="module")
def census(triton_aot):
    """[(job, arch, Kernel)] of every compiled launch."""
    out = []
    for job_id, job in triton_aot.jobs.items():
        for arch in ARCHS:
            if not triton_aot.errors[arch][job_id]:  # test_triton_aot.py reports compile errors
                out += [(job, arch, k) for k in sass_tools.inspect(triton_aot.cubin(job_id, arch))]
    return out


def _label(job, arch) -> str:
    constexprs = {k: v.get("value", v.get("tl")) for k, v in job["args"].items() if k.isupper()}
    return f"{job['kernel']} {job['dtype']} {constexprs} sm_{arch}"


@pytest.mark.parametrize("kernel", KERNELS)
def test_every_kernel_has_sm80_and_sm90_sass(census, kernel):
    name = kernel.split(".")[1]
    archs = {k.arch for job, _, k in census if job["kernel"] == kernel and k.name == name}
    assert {"sm_80", "sm_90a"} <= archs, f"{kernel}: SASS for {sorted(archs)} only"


def test_registers_within_limit(census):
    over = [f"{_label(job, arch)}: {k.registers}" for job, arch, k in census if k.registers > MAX_REGISTERS]
    assert not over, "\n".join(over)


def test_local_memory_bounded_and_outside_fp32_loops(census):
    """Stack + local <= MAX_STACK_BYTES everywhere; no fp32 kernel touches local memory inside a loop. (Two
    bf16 variants reload a saved value inside their loops today: docs/sass_census.md, README.)"""
    def limit(job):
        return MAX_TELEMETRY_STACK_BYTES if job["args"].get("TELEMETRY", {}).get("value") else MAX_STACK_BYTES
    bad = [f"{_label(job, arch)}: {k.stack + k.local} B, {k.local_ops_in_loops} local ops in loops"
           for job, arch, k in census
           if k.stack + k.local > limit(job) or (job["dtype"] == "f32" and k.local_ops_in_loops)]
    assert not bad, "\n".join(bad)


def test_fp32_elementwise_kernels_use_128_bit_accesses(census):
    checked, bad = set(), []
    for job, arch, k in census:
        args = job["args"]
        if job["kernel"] not in STREAMS or job["dtype"] != "f32" or args.get("KP", {}).get("value", 1) != 1:
            continue
        aligned = args.get("ALIGN", {"value": 16})["value"] == 16 and all(
            v["aligned"] for v in args.values() if "tensor" in v)
        per_stream = args["BLOCK"]["value"] // (32 * job["options"].get("num_warps", 4)) // 4
        reads, writes = STREAMS[job["kernel"]]
        want = (reads * per_stream, writes * per_stream) if aligned else (0, 0)
        got = (k.loads[128], k.stores[128])
        checked.add(job["kernel"])
        if got != want:
            bad.append(f"{_label(job, arch)}: 128-bit loads/stores {got}, expected {want}")
    assert not bad, "\n".join(bad)
    assert checked == set(STREAMS), f"no fp32 launch of {sorted(set(STREAMS) - checked)} was compiled"


def test_master_weights_kernels_use_128_bit_accesses(census):
    """fp32 streams as in STREAMS, plus the 16-bit gradient read and model-param write, all 16-byte vectors."""
    checked, bad = set(), []
    for job, arch, k in census:
        args = job["args"]
        if job["kernel"] not in MIXED_STREAMS or "+" not in job["dtype"]:
            continue
        aligned = args.get("ALIGN", {"value": 16})["value"] == 16 and all(
            v["aligned"] for v in args.values() if "tensor" in v)
        per_thread = args["BLOCK"]["value"] // (32 * job["options"].get("num_warps", 4))
        # STREAMS counts the gradient among the reads; the model params are written besides the fp32 streams
        (reads, writes), (half_reads, half_writes) = STREAMS[job["kernel"]], MIXED_STREAMS[job["kernel"]]
        want = ((reads - half_reads) * per_thread // 4 + half_reads * per_thread // 8,
                writes * per_thread // 4 + half_writes * per_thread // 8) if aligned else (0, 0)
        got = (k.loads[128], k.stores[128])
        checked.add(job["kernel"])
        if got != want:
            bad.append(f"{_label(job, arch)}: 128-bit loads/stores {got}, expected {want}")
    assert not bad, "\n".join(bad)
    assert checked == set(MIXED_STREAMS), f"no master-weights launch of {sorted(set(MIXED_STREAMS) - checked)}"


#: Triton kernels with a TELEMETRY constexpr (triton_kernels/_common.py, "telemetry"): the census bounds above
#: hold for both variants of each, so both must be compiled, for every dtype (telemetry launches: under
#: ptxas' register cap multi_tensor.GPU.telemetry_maxnreg, MAX_TELEMETRY_STACK_BYTES).
TELEMETRY_TRITON_KERNELS = {f"{mod}.{name}" for mod, names in {
    "adam": ("_adam",), "sgd": ("_sgd",), "rmsprop": ("_rmsprop",), "adagrad": ("_adagrad",),
    "agd": ("_agd_update",), "lamb": ("_lamb_moments", "_lamb_apply"), "yellowfin": ("_yellowfin_apply",),
}.items() for base in names for name in (f"{base}_kernel", f"{base}_tensor_kernel")}


def test_telemetry_kernels_compiled_with_and_without_telemetry(census):
    from agd_kernels.triton_kernels.multi_tensor import GPU
    from tests.backends.triton_aot import DTYPES, MIXED

    flagged = {job["kernel"] for job, _, _ in census if "TELEMETRY" in job["args"]}
    assert flagged == TELEMETRY_TRITON_KERNELS, f"kernels with TELEMETRY: {sorted(flagged)}"
    seen = {(job["kernel"], job["dtype"], job["args"]["TELEMETRY"]["value"]) for job, _, _ in census
            if "TELEMETRY" in job["args"]}
    missing = [f"{kernel} {dtype} TELEMETRY={on}" for kernel in sorted(TELEMETRY_TRITON_KERNELS)
               for dtype in (*DTYPES.values(), *MIXED.values()) for on in (False, True)
               if (kernel, dtype, on) not in seen]
    assert not missing, "not compiled:\n" + "\n".join(missing)
    capped = [_label(job, arch) for job, arch, _ in census if "TELEMETRY" in job["args"]
              and job["options"].get("maxnreg") != (GPU.telemetry_maxnreg if job["args"]["TELEMETRY"]["value"]
                                                     else None)]
    assert not capped, "maxnreg must be telemetry_maxnreg exactly for the telemetry launches:\n" + "\n".join(capped)


def test_census_file_is_current(triton_aot):
    from scripts.sass_census import CENSUS, render

    with open(CENSUS) as f:
        current = f.read()
    assert current == render(triton_aot), "docs/sass_census.md is stale: run `python -m scripts.sass_census`"


# ------------------------------------------------------------------------------------- extension
#: base names (sass_tools.base_name) of the CUDA kernels csrc/cuda must contain for every built arch.
#: csrc/cuda/runtime_info.cu is host code only: none yet. Add a name here when its kernel lands.
#: Every CUDA kernel is one template, agdk_kernel<grid::XKernel<...>>; the census names it by XKernel.
EXPECTED_CUDA_KERNELS: set[str] = {
    "AdamKernel", "SgdKernel", "RmspropKernel", "AdagradKernel", "SliceSumsqKernel", "AgdScalarsKernel",
    "AgdUpdateKernel", "LambMomentsKernel", "LambApplyKernel", "YellowfinStatsKernel", "YellowfinTuneKernel",
    "YellowfinApplyKernel", "StochasticRoundKernel"}
#: Stack the 16-bit CUDA kernels may keep (bf16 YellowfinStatsKernel on sm_80: 8 B), as for the Triton ones.
MAX_16BIT_STACK = 16


def _grid_kernel(symbol: str) -> str:
    """"_ZN11agd_kernels4cuda11agdk_kernelINS_4grid9SgdKernelIfLb1ELb0EEEEEvNT_4ArgsE" -> "SgdKernel"."""
    match = re.search(r"4grid(\d+)", symbol)
    if not match:
        return sass_tools.base_name(symbol)
    start = match.end()
    return symbol[start:start + int(match.group(1))]


def _fp32(symbol: str) -> bool:
    """A kernel instantiated for float (its first template argument after the kernel name is `f`)."""
    name = _grid_kernel(symbol)
    return symbol[symbol.index(name) + len(name):].startswith("If")


def _extension():
    """(path of the imported agd_kernels' _C*.so, the archs it was built for), or skip when it has no CUDA
    part."""
    import importlib.util

    from agd_kernels import _ext

    info = _ext._read_build_info()
    if "cuda" not in info.get("parts", []):
        pytest.skip(f"agd_kernels was built without its CUDA part ({info.get('cuda_reason', 'no build info')})")
    spec = importlib.util.find_spec("agd_kernels._C")
    assert spec is not None and spec.origin, "the build info says CUDA was built, but agd_kernels._C is missing"
    # TORCH_CUDA_ARCH_LIST syntax: "8.0;9.0+PTX" -> sm_80, sm_90
    archs = {f"sm_{a.strip().removesuffix('+PTX').replace('.', '')}" for a in info["cuda_arch_list"].split(";")}
    return spec.origin, archs


@functools.lru_cache(maxsize=1)
def _extension_kernels(path: str) -> tuple[sass_tools.Kernel, ...]:
    """The extension's kernels, read once for the four tests below (cuobjdump and parsing take ~22 s)."""
    return tuple(sass_tools.inspect(path))


def test_extension_has_sass_for_its_archs_and_the_expected_kernels():
    path, archs = _extension()
    assert archs <= set(sass_tools.embedded_archs(path)), f"{path}: no cubin for {archs}"
    kernels = _extension_kernels(path)
    for arch in sorted(archs):
        found = {_grid_kernel(k.name) for k in kernels if k.arch == arch}
        assert found == EXPECTED_CUDA_KERNELS, (f"{arch}: kernels {sorted(found)}; expected "
                                                f"{sorted(EXPECTED_CUDA_KERNELS)} (update EXPECTED_CUDA_KERNELS)")
    bad = [f"{k.arch} {k.name}: {k.registers} regs, {k.stack + k.local} B stack+local" for k in kernels
           if k.registers > MAX_REGISTERS or (k.uses_local_memory and ((_fp32(k.name) and not _telemetry(k.name))
                                                                      or k.local_ops_in_loops
                                                                      or k.stack + k.local > MAX_16BIT_STACK))]
    assert not bad, "\n".join(bad)


def _telemetry(symbol: str) -> bool:
    """A kTelemetry = true instantiation. Those may keep a few bytes of stack outside their loops, as the
    16-bit kernels may: nvcc saves one 8-byte value across the fp64 pow's slow-path call in thread 0's
    prologue (fp32 Adam and Adagrad with telemetry on sm_80/sm_90: 8 B, one STL and one LDL per block, the
    element loop untouched), where the same kernels without telemetry keep none."""
    return _grid_kernel(symbol) in TELEMETRY_KERNELS and _template_flags(symbol)[-1] == 1


def _template_flags(symbol: str) -> list[int]:
    """The bool/int template arguments after the element type: "...SgdKernelIfLb1ELb0EEE..." -> [1, 0]."""
    name = _grid_kernel(symbol)
    return [int(v) for v in re.findall(r"L[bi](\d+)E", symbol[symbol.index(name) + len(name):])]


#: fp32 grid kernels: (streams read, streams written) by 128-bit accesses on the vector path, from the
#: template flags (csrc/include/agd_kernels/grid/*.h): one vector per stream per copy of the vector loop; a
#: third value counts the 128-bit loads of a loop that only reads (AGD with telemetry: the sums of a tensor
#: without slots, p and g).
CUDA_STREAMS = {
    # kTelemetry (the last flag of TELEMETRY_KERNELS) adds no stream: the sums ride on the values already loaded.
    "AdamKernel": lambda l2, ams, end, tel: (4 + ams, 3 + ams),  # p g m v [vmax] / p m v [vmax]
    "SgdKernel": lambda wd, mom, tel: (2 + mom, 1 + mom),  # p g [buf]
    "RmspropKernel": lambda wd, centering, mom, tel: (3 + (centering > 0) + mom, 2 + (centering > 0) + mom),
    "AdagradKernel": lambda wd, tel: (3, 2),  # p g sum / p sum
    "AgdUpdateKernel": lambda tel: (2, 1, 2 * tel),  # p g / p
    "LambMomentsKernel": lambda l2, dec, tel: (4, 2),  # p g m v / m v
    "LambApplyKernel": lambda l2, dec, tel: (3, 1),  # p m v / p
    "YellowfinApplyKernel": lambda wd, tel: (4, 3),  # p g avg buf / p avg buf
    "YellowfinStatsKernel": lambda: (2, 0),  # g avg
    "SliceSumsqKernel": lambda: (1, 0),
}


#: Master-weights kernels (fp32 params, 16-bit grads and model params, grid/block.h kCopies): (fp32 streams
#: read, written) by 128-bit accesses and (16-bit streams read, written) by 64-bit ones, 4 elements per
#: thread for both. LAMB apply reads no gradient (fp32 moments are stored by lamb_moments_). Two more values:
#: the 128-bit and 64-bit loads of a loop that only reads (as in CUDA_STREAMS).
CUDA_MIXED_STREAMS = {
    "AdamKernel": lambda l2, ams, end, tel: (3 + ams, 3 + ams, 1, 1),  # p m v [vmax] / g / model
    "SgdKernel": lambda wd, mom, tel: (1 + mom, 1 + mom, 1, 1),  # p [buf]
    "RmspropKernel": lambda wd, centering, mom, tel: (2 + (centering > 0) + mom, 2 + (centering > 0) + mom, 1, 1),
    "AdagradKernel": lambda wd, tel: (2, 2, 1, 1),  # p sum
    "AgdUpdateKernel": lambda tel: (1, 1, 1, 1, tel, tel),  # p; with telemetry, the read-only loop's p and g
    "LambMomentsKernel": lambda l2, dec, tel: (3, 2, 1, 0),  # p m v / m v / g
    "LambApplyKernel": lambda l2, dec, tel: (3, 1, 0, 1),  # p m v / p / model
    "YellowfinApplyKernel": lambda wd, tel: (3, 3, 1, 1),  # p avg buf
    "YellowfinStatsKernel": lambda: (1, 0, 1, 0),  # avg / g
}
#: The 16-bit grad type right after `If` in a master-weights kernel's symbol: AdamKernel<float,
#: c10::BFloat16, ...> is "AdamKernelIfN3c108BFloat16ELb0E...", its fp32 twin "AdamKernelIffLb0E...".
_GRADS_16 = ("N3c108BFloat16E", "N3c104HalfE")


def _fp32_twin(symbol: str) -> str | None:
    """The symbol of the all-fp32 kernel with the same flags as a master-weights kernel; None for others."""
    name = _grid_kernel(symbol)
    for grad in _GRADS_16:
        if name + "If" + grad in symbol:
            return symbol.replace(name + "If" + grad, name + "Iff", 1)
    return None


def test_extension_fp32_kernels_use_128_bit_global_accesses():
    """Every stream of every fp32 grid kernel moves through LDG.E.128/STG.E.128, and no kernel addresses
    memory generically (LD/ST): table pointers are declared global (grid/block.h Table::ptr)."""
    path, _ = _extension()
    bad, checked = [], set()
    for k in _extension_kernels(path):
        name = _grid_kernel(k.name)
        if k.generic:
            bad.append(f"{k.arch} {k.name}: {k.generic} generic LD/ST")
        if not _fp32(k.name) or name not in CUDA_STREAMS or _fp32_twin(k.name):
            continue
        checked.add(name)
        reads, writes, *read_only = CUDA_STREAMS[name](*_template_flags(k.name))
        got = (k.loads[128] - sum(read_only), k.stores[128])
        copies = got[0] // reads  # nvcc may version a loop (AGD: conv taps vs one coefficient): 2 copies
        if copies < 1 or got != (copies * reads, copies * writes):
            bad.append(f"{k.arch} {k.name}: 128-bit loads/stores {got}, expected a multiple of {(reads, writes)}")
    assert not bad, "\n".join(bad)
    assert checked == set(CUDA_STREAMS), f"no fp32 kernel found for {sorted(set(CUDA_STREAMS) - checked)}"


def test_extension_master_weights_kernels_use_128_bit_fp32_and_64_bit_16_bit_accesses():
    """fp32 streams of a master-weights kernel still move through LDG.E.128/STG.E.128, its 16-bit grad and
    model-param streams through LDG.E.64/STG.E.64 (4 elements). Scalars and table words are 64-bit loads
    too, so those count beyond the fp32 twin's (same flags, same scalar reads), less the model-param
    pointer: one more table word, loaded once per block."""
    path, _ = _extension()
    kernels = _extension_kernels(path)
    by_symbol = {(k.arch, k.name): k for k in kernels}
    bad, checked = [], set()
    for k in kernels:
        twin_symbol = _fp32_twin(k.name)
        name = _grid_kernel(k.name)
        if twin_symbol is None or name not in CUDA_MIXED_STREAMS:
            continue
        checked.add(name)
        twin = by_symbol.get((k.arch, twin_symbol))
        if twin is None:
            bad.append(f"{k.arch} {k.name}: no fp32 twin {twin_symbol}")
            continue
        r32, w32, r16, w16, *read_only = CUDA_MIXED_STREAMS[name](*_template_flags(k.name))
        ro32, ro16 = read_only or (0, 0)
        copies = (k.loads[128] - ro32) // r32
        got = (k.loads[128] - ro32, k.stores[128], k.loads[64] - twin.loads[64] - w16 - ro16,
               k.stores[64] - twin.stores[64])
        if copies < 1 or got != (copies * r32, copies * w32, copies * r16, copies * w16):
            bad.append(f"{k.arch} {k.name}: 128-bit loads/stores, 64-bit loads/stores beyond the fp32 twin's "
                       f"{got}, expected a multiple of {(r32, w32, r16, w16)}")
    assert not bad, "\n".join(bad)
    assert checked == set(CUDA_MIXED_STREAMS), f"no master-weights kernel for {sorted(set(CUDA_MIXED_STREAMS) - checked)}"


#: The grid kernels with a kTelemetry flag (grid/telemetry.h), always their last template argument, and the
#: shared memory of its block reduction: the sums it carries x 256 threads x 8 bytes (LAMB's phases carry two
#: each: lamb_moments_'s w_sq is its norms' Σp², reduced already).
TELEMETRY_SHARED = {"AdamKernel": 5 * 256 * 8, "SgdKernel": 5 * 256 * 8, "RmspropKernel": 5 * 256 * 8,
                    "AdagradKernel": 5 * 256 * 8, "AgdUpdateKernel": 5 * 256 * 8, "YellowfinApplyKernel": 5 * 256 * 8,
                    "LambMomentsKernel": 2 * 256 * 8, "LambApplyKernel": 2 * 256 * 8}
TELEMETRY_KERNELS = set(TELEMETRY_SHARED)


def test_extension_telemetry_is_a_separate_instantiation():
    """Each telemetry kernel comes in pairs that differ in kTelemetry only: the off one has none of the
    reduction's shared memory (its Args and Shared are today's: grid/telemetry.h), the on one has it besides
    the off one's."""
    path, _ = _extension()
    kernels = _extension_kernels(path)
    by_symbol = {(k.arch, k.name): k for k in kernels}
    bad, pairs = [], set()
    for k in kernels:
        name = _grid_kernel(k.name)
        if name not in TELEMETRY_KERNELS or not _template_flags(k.name)[-1]:
            continue
        off_symbol = k.name[::-1].replace("E1bL", "E0bL", 1)[::-1]  # the last flag, Lb1E -> Lb0E
        off = by_symbol.get((k.arch, off_symbol))
        if off is None or k.shared - off.shared < TELEMETRY_SHARED[name]:
            bad.append(f"{k.arch} {k.name}: {k.shared} B shared; twin {off_symbol}: "
                       f"{off.shared if off else 'missing'} B")
        pairs.add(name)
    assert not bad, "\n".join(bad)
    assert pairs == TELEMETRY_KERNELS, f"no kernel instantiated with kTelemetry = true: {TELEMETRY_KERNELS - pairs}"


# ------------------------------------------------------------------------------------- the tool itself
_PROBE = r"""
namespace probe {
__global__ void vec4_copy(const float4* __restrict__ x, float4* __restrict__ y, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = x[i];
}
template <typename T> __global__ void block_sum(const T* x, T* y) {
  __shared__ T s[256];
  s[threadIdx.x] = x[threadIdx.x];
  __syncthreads();
  if (threadIdx.x == 0) { T a = 0; for (int j = 0; j < 256; ++j) a += s[j]; y[blockIdx.x] = a; }
}
template __global__ void block_sum<double>(const double*, double*);
}
// a dynamically indexed array cannot live in registers: 1 KiB of stack, stored to inside a loop of
// run-time length (one ptxas cannot unroll)
extern "C" __global__ void scattered(const float* x, float* y, const int* idx, int n) {
  float buf[256];
  for (int j = 0; j < n; ++j) buf[idx[j] & 255] = x[j * 32 + threadIdx.x];
  y[threadIdx.x] = buf[idx[threadIdx.x] & 255];
}
// a pointer that may point to shared or to global memory: generic LD/ST (nvcc resolves the space at run time)
extern "C" __global__ void either_space(float* y, int pick) {
  __shared__ float s[64];
  float* p = (threadIdx.x & pick) ? s : y;
  p[threadIdx.x & 63] = 1.0f;
  __syncthreads();
  y[threadIdx.x] = p[(threadIdx.x + 1) & 63];
}
"""


def test_tool_reads_an_nvcc_built_library(tmp_path):
    """cuobjdump's view of a probe library with known properties, for both archs."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not on PATH")
    (tmp_path / "probe.cu").write_text(_PROBE)
    so = tmp_path / "probe.so"
    subprocess.run([nvcc, "-shared", "-Xcompiler", "-fPIC", "-gencode", "arch=compute_80,code=sm_80",
                    "-gencode", "arch=compute_90,code=sm_90", str(tmp_path / "probe.cu"), "-o", str(so)],
                   check=True, capture_output=True)
    assert sass_tools.embedded_archs(str(so)) == ["sm_80", "sm_90"]
    kernels = {(sass_tools.base_name(k.name), k.arch): k for k in sass_tools.inspect(str(so))}
    assert set(kernels) == {(n, a) for n in ("vec4_copy", "block_sum", "scattered", "either_space") for a in ("sm_80", "sm_90")}
    for arch in ("sm_80", "sm_90"):
        vec, block, scattered = (kernels[n, arch] for n in ("vec4_copy", "block_sum", "scattered"))
        assert vec.loads == {128: 1} and vec.stores == {128: 1} and not vec.uses_local_memory and not vec.generic
        assert kernels["either_space", arch].generic == 2
        assert block.shared >= 256 * 8  # 256 doubles (sm_90 adds 1 KiB it reserves)
        assert block.loads == {64: 1} and block.registers > 0
        assert scattered.stack >= 1024 and scattered.local_ops_in_loops > 0 and scattered.uses_local_memory


def test_base_name():
    assert sass_tools.base_name("_ZN11agd_kernels4cuda11adam_kernelIfEEvPf") == "adam_kernel"
    assert sass_tools.base_name("_Z6kernelPf") == "kernel"
    assert sass_tools.base_name("_ZN12_GLOBAL__N_16kernelEv") == "kernel"
    assert sass_tools.base_name("_adam_kernel") == "_adam_kernel"
