"""Multi-tensor launches: one Triton launch covers a whole tensor list through device tables.

A launch over n tensors reads
  rows   int64 [n, ncol]   per tensor: its numel, first program, program count, then op-specific
                           columns (data pointers of the lists that keep their storage from step to step:
                           params, optimizer state, step counters; slot numbers ...);
  blocks int64 [m, 2]      per program: (tensor index, first element of its chunk). A tensor of numel
                           elements gets max(1, cdiv(numel, CHUNK)) programs, so an empty tensor still has
                           one (its step counter advances, its slice sums are written as 0);
  ptrs   int64 [n]         data pointers of the list that may move every step (gradients);
  models int64 [n]         with master weights, the model parameters' data pointers (the 16-bit copies a
                           kernel writes; a list of its own, as LAMB's two ops share one rows table and only
                           lamb_apply_ writes them); without, the gradient pointers stand in, never read;
  counters int32 [n]       arrival counters: the last program of a tensor to finish does its per-tensor
                           epilogue (step counter, final reduction) and resets its counter to 0.
Tables are cached by content (pointers and sizes), so a step whose tensors did not move reuses them with no
host-to-device copy, and a moved gradient list costs one small copy of its pointers only. Under CUDA-graph
capture a table that is not cached cannot be uploaded (no H2D copy may be captured): the step must have run
once eagerly first (the usual warm-up), and every table a capture used stays cached for good.

Under torch.compile, make_fx or fake-tensor propagation (`traced`), tensors have no data pointers: the
launchers then run one launch per tensor through `torch.library.wrap_triton`, which Inductor can see.
"""

import functools
import itertools
import operator
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake
from torch.library import wrap_triton
from torch.utils._python_dispatch import _get_current_dispatch_mode

import triton.language as tl

#: Triton element type of each supported parameter dtype.
TL_DTYPE = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
#: Gradient (and model parameter) dtypes that may sit beside float32 params (master weights).
HALF = (torch.bfloat16, torch.float16)

# Common leading columns of every rows table (kernels read them through these constexpr indices).
NUMEL = tl.constexpr(0)
FIRST = tl.constexpr(1)
NBLOCKS = tl.constexpr(2)
HEAD = 3


@dataclass(frozen=True)
class Config:
    """Tile sizes of one launch. BLOCK elements per tile, CHUNK (a multiple of BLOCK) per program;
    telemetry_maxnreg: ptxas' register cap for the TELEMETRY variants (None: no cap)."""
    block: int
    chunk: int
    num_warps: int
    telemetry_maxnreg: int | None = None


# GPU: 1024-element tiles over 4 warps are 8 elements (two 16-byte vectors of fp32) per thread; 8 tiles per
# program give 15k programs for 124M parameters, enough to fill any GPU, and few per-chunk partials to reduce.
# With TELEMETRY, ptxas gives fp32 Adam 168 registers on sm_90 uncapped (96 on sm_80; 80 without telemetry):
# capped at 128 (tests/backends/test_sass_census.py MAX_REGISTERS) it keeps 4 programs per SM, at 8 bytes of
# stack saved outside the loops (docs/sass_census.md).
GPU = Config(block=1024, chunk=8192, num_warps=4, telemetry_maxnreg=128)
# Interpreter: it runs every tile operation as one numpy call, so big tiles are fast; chunks of 2 tiles keep
# the multi-chunk and multi-tile paths exercised by small test tensors (4097 elements = 3 chunks, 5 tiles).
INTERPRETER = Config(block=1024, chunk=2048, num_warps=1)


def config(device: torch.device) -> Config:
    return GPU if device.type == "cuda" else INTERPRETER


def tracing() -> bool:
    """True while torch.compile, make_fx or fake-tensor propagation runs (a dispatch mode is active)."""
    return torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None


def traced(tensor: Tensor) -> bool:
    """True when a launcher runs on tensors without data pointers: tracing, or fake tensors."""
    return tracing() or is_fake(tensor)


# ----------------------------------------------------------------------------------------------- tables
@dataclass
class Table:
    rows: Tensor
    blocks: Tensor
    counters: Tensor
    n_blocks: int
    scratch: Tensor | None


class _Cache:
    """LRU of device tables keyed by content; entries used under CUDA-graph capture are never evicted
    (the graph reads their memory on every replay)."""

    def __init__(self, size: int):
        self.size = size
        self.entries: OrderedDict = OrderedDict()
        self.pinned: dict = {}

    def get(self, key, device: torch.device, build):
        capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
        entry = self.pinned.get(key)
        if entry is None:
            entry = self.entries.get(key)
            if entry is None:
                if capturing:
                    raise RuntimeError(
                        "agd_kernels (triton): this tensor list has no multi-tensor table yet, and building one "
                        "copies host memory to the device, which cannot be captured in a CUDA graph; run the "
                        "step once eagerly with the same tensors before capturing it")
                entry = build()
                self.entries[key] = entry
                while len(self.entries) > self.size:
                    self.entries.popitem(last=False)
            else:
                self.entries.move_to_end(key)
            if capturing:
                self.pinned[key] = self.entries.pop(key)
        return entry


# A model has a few gradient layouts at most (the caching allocator hands the same addresses back); 64
# entries keep every layout of a few optimizers without holding memory worth mentioning.
_TABLES = _Cache(64)
_POINTERS = _Cache(64)
_CONSTANTS: dict[tuple[torch.device, float], Tensor] = {}


def _upload(values: list[int], device: torch.device) -> Tensor:
    host = torch.tensor(values, dtype=torch.int64)
    if device.type != "cuda":
        return host.to(device)
    # From pinned memory the copy is asynchronous: a pageable source would make the host wait for the stream.
    return host.pin_memory().to(device, non_blocking=True)


def table(op: str, device: torch.device, numels: Sequence[int], payload: Sequence[Sequence[int]], chunk: int,
          scratch_per_block: int = 0) -> Table:
    """The rows/blocks/counters of `op`'s launch over tensors of `numels` elements, each row followed by
    its `payload` integers. `scratch_per_block` reserves that many fp64 scratch slots per program. Keyed by
    op too: two ops never share counters or scratch."""
    key = (op, device, chunk, scratch_per_block, tuple(numels), tuple(map(tuple, payload)))

    def build() -> Table:
        rows, blocks = [], []
        for t, (numel, extra) in enumerate(zip(numels, payload)):
            count = n_programs(numel, chunk)
            rows += [numel, len(blocks) // 2, count, *extra]
            for b in range(count):
                blocks += [t, b * chunk]
        n_blocks = len(blocks) // 2
        scratch = (torch.empty(n_blocks * scratch_per_block, dtype=torch.float64, device=device)
                   if scratch_per_block else None)
        return Table(_upload(rows, device), _upload(blocks, device),
                     torch.zeros(len(numels), dtype=torch.int32, device=device), n_blocks, scratch)

    return _TABLES.get(key, device, build)


def n_programs(numel: int, chunk: int) -> int:
    """Programs of a tensor: one per chunk, at least one. Integer math: numel may be a SymInt (torch.compile)."""
    return max(1, (numel + chunk - 1) // chunk)


def alignment(addresses) -> int:
    """16 when every address is 16-byte aligned (kernels may then use vector loads), else 1."""
    return 1 if functools.reduce(operator.or_, addresses, 0) & 15 else 16


def elementwise_table(op: str, params: Sequence[Tensor], grads: Sequence[Tensor],
                      states: Sequence[Sequence[Tensor] | None], steps: Sequence[Tensor] | None, chunk: int,
                      scratch_per_block: int = 0, model_params: Sequence[Tensor] = ()) -> tuple[Table, Tensor, int]:
    """(table, gradient pointers, alignment of the tensor pointers, model params' included) of an elementwise
    optimizer launch. Row payload: the data pointers of params and of each state list (0 for an absent list),
    then the step counter's."""
    data = [(p.data_ptr(), *(0 if s is None else s[i].data_ptr() for s in states)) for i, p in enumerate(params)]
    payload = data if steps is None else [(*row, s.data_ptr()) for row, s in zip(data, steps)]
    device = params[0].device
    grad_ptrs = pointers(grads, device)
    align = alignment(itertools.chain(itertools.chain.from_iterable(data),
                                      (t.data_ptr() for t in itertools.chain(grads, model_params))))
    tab = table(op, device, [p.numel() for p in params], payload, chunk, scratch_per_block)
    return tab, grad_ptrs, align


def tensor_launches(params: Sequence[Tensor], grads: Sequence[Tensor], states: Sequence[Sequence[Tensor] | None],
                    steps: Sequence[Tensor] | None, chunk: int, model_params: Sequence[Tensor] = (),
                    counter: bool = False):
    """(grid, args) of the per-tensor launches replacing one elementwise table launch while tracing:
    args = (p, g, model param, *states, [step, arrival counter], numel); p stands in for an absent list or
    model param, never read (COPY false). With `counter` (telemetry on) an op without step counters gets the
    arrival counter too, after its states."""
    for i, (p, g) in enumerate(zip(params, grads)):
        args = [p, g, model_params[i] if model_params else p, *(p if s is None else s[i] for s in states)]
        if steps is not None:
            args += [steps[i], torch.zeros(1, dtype=torch.int32, device=p.device)]
        elif counter:
            args.append(torch.zeros(1, dtype=torch.int32, device=p.device))
        yield (n_programs(p.numel(), chunk),), (*args, p.numel())


def model_pointers(model_params: Sequence[Tensor], grad_ptrs: Tensor, device: torch.device) -> Tensor:
    """The models pointer list of a table launch; without model_params the gradients' stands in (never read)."""
    return pointers(model_params, device) if model_params else grad_ptrs


def telemetry_meta(cfg: Config, on: bool) -> dict:
    """The launch meta-parameters of a kernel with a TELEMETRY constexpr: TELEMETRY, and ptxas' register cap
    for the telemetry variants (Config.telemetry_maxnreg)."""
    return dict(TELEMETRY=on, **({"maxnreg": cfg.telemetry_maxnreg} if on and cfg.telemetry_maxnreg else {}))


def launch_elementwise(op: str, kernel, tensor_kernel, params: Sequence[Tensor], grads: Sequence[Tensor],
                       states: Sequence[Sequence[Tensor] | None], steps: Sequence[Tensor] | None,
                       hyper: Sequence, model_params: Sequence[Tensor] = (), telemetry: Tensor | None = None) -> None:
    """The launch of an elementwise optimizer op: `kernel` once over the pointer table (arguments rows, gradient
    pointers, model-param pointers, blocks, arrival counters, then `hyper`), or while tracing `tensor_kernel`
    once per tensor (the arguments of tensor_launches, then `hyper`). Kernels are specialised on COPY
    (model_params given: store each updated master into its model param) and, in the table kernel, GDTYPE (the
    gradients' and model params' dtype): (T, T, no copy) and (fp32, 16-bit, copy).

    Telemetry (adam, sgd, rmsprop, adagrad, yellowfin_apply_): the kernels also take, after the arrival
    counters (ops without step counters, SGD and YellowFin, use them for telemetry only), a scratch of 5 fp64
    slots per program and the `telemetry` buffer (per tensor: the scratch, the buffer and the tensor's row),
    and TELEMETRY: each program stores its five sums as a scratch row and the tensor's last program adds the
    rows into its telemetry row (_common.py), in the same launch. Without a buffer, scratch and buffer are
    stand-ins, never read, and TELEMETRY=False compiles to the kernel without telemetry."""
    cfg = config(params[0].device)
    on = telemetry is not None
    meta = dict(BLOCK=cfg.block, CHUNK=cfg.chunk, num_warps=cfg.num_warps, COPY=bool(model_params),
                **telemetry_meta(cfg, on))
    if traced(params[0]):
        for i, (grid, args) in enumerate(tensor_launches(params, grads, states, steps, cfg.chunk, model_params,
                                                         counter=on)):
            if steps is None and not on:  # the counter's place (p stands in, never read)
                args = (*args[:-1], args[0], args[-1])
            scratch = torch.empty(grid[0] * 5, dtype=torch.float64, device=params[0].device) if on else args[0]
            wrap_triton(tensor_kernel)[grid](*args, scratch, telemetry if on else args[0], i, *hyper, **meta)
        return
    tab, grad_ptrs, align = elementwise_table(op, params, grads, states, steps, cfg.chunk,
                                              scratch_per_block=5 if on else 0, model_params=model_params)
    extra = (tab.counters, tab.scratch if on else grad_ptrs, telemetry if on else grad_ptrs)
    wrap_triton(kernel)[(tab.n_blocks,)](tab.rows, grad_ptrs, model_pointers(model_params, grad_ptrs, params[0].device),
                                         tab.blocks, *extra, *hyper, DTYPE=TL_DTYPE[params[0].dtype],
                                         GDTYPE=TL_DTYPE[grads[0].dtype], ALIGN=align, **meta)


def pointers(tensors: Sequence[Tensor], device: torch.device) -> Tensor:
    """int64 device tensor of the tensors' data pointers (the per-step list: gradients)."""
    key = (device, tuple(t.data_ptr() for t in tensors))
    return _POINTERS.get(key, device, lambda: _upload(list(key[1]), device))


def constant(value: float, device: torch.device) -> Tensor:
    """A cached 0-d fp32 device tensor: grad_scale = 1 and found_inf = 0 when the caller passes None, so
    kernels always read both through a pointer and never need a variant without them. While tracing it is
    a fresh tensor of the trace (a cached real one would leak into the graph, a fake one out of it)."""
    if tracing():
        return torch.full((), value, dtype=torch.float32, device=device)
    key = (device, value)
    t = _CONSTANTS.get(key)
    if t is None:
        t = _CONSTANTS[key] = torch.full((), value, dtype=torch.float32, device=device)
    return t


def amp_scalars(grad_scale: Tensor | None, found_inf: Tensor | None, device: torch.device,
                op: str) -> tuple[Tensor, Tensor]:
    check_scalar(op, "grad_scale", grad_scale, device)
    check_scalar(op, "found_inf", found_inf, device)
    return (constant(1.0, device) if grad_scale is None else grad_scale,
            constant(0.0, device) if found_inf is None else found_inf)


# ------------------------------------------------------------------------------------------ validation
def _dense(t: Tensor) -> bool:
    """Non-overlapping and dense: its elements fill storage[offset : offset + numel] exactly once, in some
    dimension order (contiguous, channels_last, ...), so a flat index walks every element."""
    if t.numel() == 0:
        return True
    dims = sorted((s, n) for s, n in zip(t.stride(), t.shape) if n != 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def check_scalar(op: str, name: str, t: Tensor | None, device: torch.device) -> None:
    if t is None:
        return
    if t.numel() != 1 or t.device != device or not t.is_floating_point():
        raise ValueError(f"{op}: {name} must be a one-element floating-point tensor on {device}; got "
                         f"{t.dtype} with {t.numel()} elements on {t.device}")


def grad_dtype(op: str, params: Sequence[Tensor], grads: Sequence[Tensor], model_params: Sequence[Tensor] | None,
               first: str = "params") -> torch.dtype:
    """The dtype `op` reads `grads` in: `first`'s, or one 16-bit dtype beside float32 `first` (csrc/checks.h
    check_grads). `model_params` is None for an op that writes no parameter; for one that does, 16-bit grads
    need model_params (nothing else would carry the update to the model), and model_params need float32 params
    and 16-bit grads (check_grads_and_model_params). Dtypes and model_params' count: check_lists does the rest."""
    p, g = params[0].dtype, grads[0].dtype
    mixed = p == torch.float32 and g in HALF
    if g != p and not mixed:
        raise ValueError(f"{op}: grads[0] is {g}, {first}[0] is {p}; grads must have the {first}' dtype, or be "
                         f"float16 or bfloat16 beside float32 {first}")
    for i, t in enumerate(grads):
        if t.dtype != g:
            raise ValueError(f"{op}: grads[{i}] is {t.dtype} but grads[0] is {g}; one call takes one gradient dtype")
    if model_params is None:
        return g
    if not model_params:
        if mixed:
            raise ValueError(f"{op}: grads are {g} beside {p} params; pass the model's {g} parameters as "
                             f"model_params (master weights), or grads of the params' dtype")
        return g
    if len(model_params) != len(params):
        raise ValueError(f"{op}: model_params has {len(model_params)} tensors, params has {len(params)}; pass one "
                         f"per param, or none")
    if not mixed:
        raise ValueError(f"{op}: model_params needs float32 params (the masters) and float16 or bfloat16 grads; got "
                         f"{p} params and {g} grads")
    return g


def check_lists(op: str, params: Sequence[Tensor], lists: dict[str, Sequence[Tensor]], *,
                grads: Sequence[Tensor] | None = None, model_params: Sequence[Tensor] | None = None,
                steps: Sequence[Tensor] | None = None, contiguous: bool = False, first: str = "params") -> None:
    """Raise ValueError, naming the list and index, unless every tensor of `lists`, `grads` and `model_params`
    matches its parameter (device, shape, strides; dtype: the parameter's, the gradients' for grads and
    model_params, see grad_dtype), parameters are dense, and the dtype has a Triton kernel. With `contiguous`,
    slices are logical (AGD taps), so row-major memory is required. `first` names `params`; model_params is
    None for an op that writes no parameter.

    Runs every step: about 1 µs per tensor (get_device() is an int where .device builds an object).
    """
    if grads is not None and len(grads) != len(params):
        raise ValueError(f"{op}: grads has {len(grads)} tensors; expected one per tensor of {first} ({len(params)})")
    if not params:
        return
    device, dtype = params[0].get_device(), params[0].dtype
    if dtype not in TL_DTYPE:
        raise ValueError(f"{op}: the triton backend supports {sorted(map(str, TL_DTYPE))} tensors; got {dtype}")
    gdtype = dtype if grads is None else grad_dtype(op, params, grads, model_params, first)
    named = [(first, params, dtype), *((name, t, dtype) for name, t in lists.items()),
             *((name, t, gdtype) for name, t in (("grads", grads), ("model_params", model_params)) if t)]
    for name, tensors, _ in named:
        if len(tensors) != len(params):
            raise ValueError(f"{op}: {name} has {len(tensors)} tensors; expected one per tensor of {first} "
                             f"({len(params)})")
    for i, p in enumerate(params):
        shape, stride = p.shape, p.stride()
        for name, tensors, want in named:
            t = tensors[i]
            if t.get_device() != device or t.dtype != want or t.shape != shape:
                raise ValueError(f"{op}: {name}[{i}] is {t.dtype}{list(t.shape)} on {t.device}; expected "
                                 f"{want}{list(shape)} on {params[0].device} (the shape of {first}[{i}])")
            if t.stride() != stride:
                raise ValueError(f"{op}: {name}[{i}] has strides {t.stride()}; expected {first}[{i}]'s {stride}")
        if not p.is_contiguous() and (contiguous or not _dense(p)):
            what = "contiguous (slices are taken over logical dims)" if contiguous else "dense in memory"
            raise ValueError(f"{op}: {first}[{i}] must be {what}; got strides {stride}")
    if steps is not None:
        if len(steps) != len(params):
            raise ValueError(f"{op}: state_steps has {len(steps)} tensors; expected one per tensor of {first} "
                             f"({len(params)})")
        for i, s in enumerate(steps):
            if s.numel() != 1 or s.dtype != torch.float32 or s.get_device() != device:
                raise ValueError(f"{op}: state_steps[{i}] is {s.dtype} with {s.numel()} elements on {s.device}; "
                                 f"expected a one-element float32 tensor on {params[0].device}")
