"""What the real GPU build contains, read statically: kernels, registers, local memory, load widths.

A thin reader of `cuobjdump -res-usage -sass`, which takes a cubin or any ELF with embedded cubins (our
`_C*.so`). Triton ships cuobjdump and nvdisasm in `triton/backends/nvidia/bin`, so this works on any machine
with the CUDA build of torch, GPU or not. Per kernel and arch it reports:

  registers  REG per thread (ptxas' allocation; 255 is the hardware limit, and more registers mean fewer
             resident warps);
  stack, local  bytes of per-thread stack frame and local memory: both live in DRAM (cached in L1/L2), so
             anything non-zero is a spill or a dynamically indexed array. ld.local/st.local (LDL/STL) in
             the SASS are counted too;
  shared     static shared memory per block, in bytes;
  calls      CALL instructions: ptxas moves rare paths (the correctly rounded division's special cases)
             into subroutines, and values live across a call may be saved on the stack;
  loads, stores  global load/store instructions (LDG/STG) by access width in bits: 128 is a 16-byte vector
             access (LDG.E.128), 32 a scalar fp32 one. A memory-bound fp32 kernel that only issues 32-bit
             loads needs 4x the instructions for the same bytes.
  generic    LD/ST through a generic address (resolved to global, shared or local at run time): nvcc emits
             them for pointers it cannot prove global, e.g. ones read from a device-side table.
"""
from __future__ import annotations

import os
import re
import subprocess
from collections import Counter
from dataclasses import dataclass, field


def tool_dir() -> str:
    """Folder of the cuobjdump/nvdisasm that the installed Triton ships (found from the package, so it
    follows whatever Triton is installed)."""
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def tool(name: str) -> str:
    path = os.path.join(tool_dir(), name)
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"{name} not found at {path} (Triton's NVIDIA backend ships it)")
    return path


@dataclass
class Kernel:
    """One kernel of one cubin (an ELF with several archs gives one Kernel per arch)."""
    name: str  # as in the ELF: mangled for C++ kernels (see base_name), plain for Triton's
    arch: str  # "sm_80", "sm_90a", ...
    registers: int = 0
    stack: int = 0
    local: int = 0
    shared: int = 0
    loads: Counter = field(default_factory=Counter)  # global loads: width in bits -> instructions
    stores: Counter = field(default_factory=Counter)  # global stores: width in bits -> instructions
    generic: int = 0  # LD/ST instructions (generic addressing)
    local_ops: int = 0  # LDL/STL instructions
    local_ops_in_loops: int = 0  # of those, inside a loop (between a backward branch and its target)
    calls: int = 0  # CALL instructions (ptxas' subroutines, e.g. the slow path of div.rn.f32)
    _local_at: list = field(default_factory=list, repr=False)
    _loops: list = field(default_factory=list, repr=False)

    @property
    def uses_local_memory(self) -> bool:
        return bool(self.stack or self.local or self.local_ops)


# " Function NAME:" then "  REG:24 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:568 ..."
_RESOURCE_FN = re.compile(r"^ Function (\S+):\s*$")
_RESOURCE = re.compile(r"\b(REG|STACK|SHARED|LOCAL):(\d+)")
_CODE_FOR = re.compile(r"^\s*code for (sm_\w+)")
_SASS_FN = re.compile(r"^\s*Function : (\S+)")
# "/*0050*/  @!P0 LDG.E.128 R4, desc[UR4][R2.64] ;" -> "LDG.E.128"
_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)(.*)")
_TARGET = re.compile(r"0x([0-9a-f]+)")
# width modifiers of LDG/STG; no modifier is a 32-bit access
_WIDTHS = {"256": 256, "128": 128, "64": 64, "U16": 16, "S16": 16, "U8": 8, "S8": 8}


def _width(modifiers: list[str]) -> int:
    return next((_WIDTHS[m] for m in modifiers if m in _WIDTHS), 32)


def _close(kernel: Kernel | None) -> None:
    """Count the kernel's local-memory instructions that sit inside a loop: a backward branch at address a
    to t <= a makes [t, a] a loop body (a spill there costs local traffic per iteration, not per program)."""
    if kernel is not None:
        kernel.local_ops_in_loops = sum(any(t <= at <= a for t, a in kernel._loops) for at in kernel._local_at)


def parse(text: str) -> list[Kernel]:
    """Kernels from the output of `cuobjdump -res-usage -sass` (one "Resource usage:" block, then the SASS
    of that ELF, per embedded cubin)."""
    kernels: list[Kernel] = []
    resources: dict[str, dict[str, int]] = {}
    pending: str | None = None  # a resource "Function" line waiting for its numbers
    current: Kernel | None = None
    arch = "unknown"
    for line in text.splitlines():
        if line.startswith("Resource usage:"):
            _close(current)
            resources, current = {}, None
            continue
        match = _RESOURCE_FN.match(line)
        if match:
            pending = match.group(1)
            continue
        if pending is not None and "REG:" in line:
            resources[pending] = {k: int(v) for k, v in _RESOURCE.findall(line)}
            pending = None
            continue
        match = _CODE_FOR.match(line)
        if match:
            _close(current)
            arch, current = match.group(1), None
            continue
        match = _SASS_FN.match(line)
        if match:
            name = match.group(1)
            _close(current)
            res = resources.get(name, {})
            current = Kernel(name, arch, res.get("REG", 0), res.get("STACK", 0), res.get("LOCAL", 0),
                             res.get("SHARED", 0))
            kernels.append(current)
            continue
        if current is None:
            continue
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        address, (op, *modifiers), rest = int(match.group(1), 16), match.group(2).split("."), match.group(3)
        if op == "BRA":
            target = _TARGET.search(rest)
            if target and int(target.group(1), 16) <= address:
                current._loops.append((int(target.group(1), 16), address))
        elif op == "CALL":
            current.calls += 1
        elif op == "LDG":
            current.loads[_width(modifiers)] += 1
        elif op == "STG":
            current.stores[_width(modifiers)] += 1
        elif op in ("LD", "ST"):
            current.generic += 1
        elif op in ("LDL", "STL"):
            current.local_ops += 1
            current._local_at.append(address)
    _close(current)
    return kernels


def inspect(path: str) -> list[Kernel]:
    """Every kernel of every cubin in `path` (a .cubin, or an ELF such as a .so with embedded cubins); an
    ELF without device code gives []."""
    out = subprocess.run([tool("cuobjdump"), "-res-usage", "-sass", path], capture_output=True, text=True)
    if out.returncode != 0:
        if "does not contain device code" in out.stderr:
            return []
        raise RuntimeError(f"cuobjdump failed on {path}: {out.stderr.strip()}")
    return parse(out.stdout)


def embedded_archs(path: str) -> list[str]:
    """Archs of the cubins embedded in an ELF ("sm_80", ...), kernels or not; [] without device code."""
    out = subprocess.run([tool("cuobjdump"), "-lelf", path], capture_output=True, text=True)
    return sorted(set(re.findall(r"\.(sm_\w+)\.cubin", out.stdout)))


def base_name(symbol: str) -> str:
    """The unqualified name of an Itanium-mangled function ("_ZN11agd_kernels4cuda11adam_kernelIfEEvPf" ->
    "adam_kernel", "_Z6kernelPf" -> "kernel"); an unmangled name (extern "C", Triton) as it is."""
    match = re.match(r"_Z(N?)", symbol)
    if not match:
        return symbol
    pos, nested, name = match.end(), bool(match.group(1)), symbol
    while pos < len(symbol) and symbol[pos].isdigit():
        digits = re.match(r"\d+", symbol[pos:]).group(0)
        start = pos + len(digits)
        name = symbol[start:start + int(digits)]
        pos = start + int(digits)
        if not nested:
            break
    return name
