"""The algorithm and provider tables: what the benchmark can step, and who provides each step.

An algorithm names its agd_kernels class, its torch.optim class (if any), the hyper-parameters both
get, and the minimum bytes one step must move per parameter. A provider is one implementation
(agd_kernels on a backend, torch.optim foreach or fused, the authors' reference). A provider either
applies to an algorithm or not (torch.optim has no LAMB: not listed), and an applicable one is
either available here or unavailable with a reason (the agd_kernels class missing from this build,
the cpu backend not built): unavailable ones are reported, never dropped.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch

import agd_kernels
from agd_kernels import _backends

from .authors_agd import AuthorsAGD
from .authors_yellowfin import AuthorsYellowFin


@dataclass(frozen=True)
class Algorithm:
    name: str
    agd_kernels_class: str
    torch_class: str | None
    hyper: dict
    #: parameter-sized tensor passes (reads + writes) a step needs at least; x itemsize = bytes/param
    passes: int
    #: agd_kernels ops a step runs, checked per backend before building
    ops: tuple[str, ...]
    #: AGD normalises rank >= 2 weights only (its authors' reference rejects biases)
    matrices_only: bool = False

    def bytes_per_param(self, dtype: torch.dtype) -> int:
        """State tensors have the parameter's dtype (agd_kernels, torch.optim), so all passes scale."""
        return self.passes * torch.empty((), dtype=dtype).element_size()


# Passes, from docs/torch_optim_semantics.md §9 and the per-algorithm docs (fp32 bytes in brackets):
#   agd       grad read twice (norms, update), param read + write                        4 [16]
#   adam(w)   read p, g, m, v; write p, m, v                                             7 [28]
#   sgd       momentum 0.9: read p, g, buf; write p, buf                                 5 [20]
#   rmsprop   read p, g, square_avg; write p, square_avg                                 5 [20]
#   adagrad   read p, g, sum; write p, sum                                               5 [20]
#   lamb      grad-norm pass 1 + lamb_moments_ (read g, m, v, p; write m, v) 6
#             + lamb_apply_ (read m, v, p; write p) 4 (docs/lamb.md §3 items 6, 8)     11 [44]
#   yellowfin two-pass plan (docs/yellowfin.md §9)                                       9 [36]
ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (
    Algorithm("agd", "AGD", None, {}, 4, ("slice_sumsq_", "agd_step_"), matrices_only=True),
    Algorithm("adam", "Adam", "Adam", dict(lr=1e-3), 7, ("adam_step_",)),
    Algorithm("adamw", "AdamW", "AdamW", dict(lr=1e-3, weight_decay=1e-2), 7, ("adam_step_",)),
    Algorithm("sgd", "SGD", "SGD", dict(lr=1e-2, momentum=0.9), 5, ("sgd_step_",)),
    Algorithm("rmsprop", "RMSprop", "RMSprop", dict(lr=1e-2), 5, ("rmsprop_step_",)),
    Algorithm("adagrad", "Adagrad", "Adagrad", dict(lr=1e-2), 5, ("adagrad_step_",)),
    Algorithm("lamb", "LAMB", None, {}, 11, ("slice_sumsq_", "lamb_moments_", "lamb_apply_")),
    Algorithm("yellowfin", "YellowFin", None, {}, 9, ("yellowfin_stats_", "yellowfin_apply_")),
)}


@dataclass(frozen=True)
class Provider:
    name: str
    #: None when the provider applies to the algorithm, else why not (a fact, not a failure)
    not_applicable: Callable[[Algorithm], str | None]
    #: None when it can run on (device, dtype) here, else why not
    unavailable: Callable[[Algorithm, torch.device, torch.dtype], str | None]
    #: builds the step callable over parameters whose .grad is set
    build: Callable[[Algorithm, list[torch.Tensor]], Callable[[], object]]
    default: bool = True
    mutates_grads: bool = False
    peer: bool = True  # a baseline agd_kernels rows are compared against


#: Suffix of the providers that step with telemetry=True (docs/telemetry.md): the same step, its update
#: kernels also summing per-layer statistics; report.telemetry_costs sets them against the plain provider.
TELEMETRY = "+tel"


def _agd_kernels_provider(backend: str, default: bool, telemetry: bool = False) -> Provider:
    def not_applicable(algo: Algorithm) -> str | None:
        return None  # every agd_kernels optimizer takes telemetry=True

    def unavailable(algo: Algorithm, device: torch.device, dtype: torch.dtype) -> str | None:
        if getattr(agd_kernels, algo.agd_kernels_class, None) is None:
            return f"agd_kernels.{algo.agd_kernels_class} does not exist in this build"
        for op in algo.ops:
            reason = _backends.unavailable_reason(op, backend, device, dtype)
            if reason is not None:
                return reason
        return None

    def build(algo: Algorithm, params):
        extra = dict(telemetry=True) if telemetry else {}
        return getattr(agd_kernels, algo.agd_kernels_class)(params, **algo.hyper, backend=backend, **extra).step

    name = f"agd_kernels[{backend}]" + (TELEMETRY if telemetry else "")
    return Provider(name, not_applicable, unavailable, build, default=default, peer=False)


def _torch_provider(mode: str) -> Provider:
    def not_applicable(algo: Algorithm) -> str | None:
        if algo.torch_class is None:
            return "not in torch.optim"
        if mode == "fused" and "fused" not in inspect.signature(getattr(torch.optim, algo.torch_class)).parameters:
            return "torch.optim has no fused=True for it"
        return None

    def build(algo: Algorithm, params):
        return getattr(torch.optim, algo.torch_class)(params, **algo.hyper, **{mode: True}).step

    return Provider(f"torch-{mode}", not_applicable, lambda algo, device, dtype: None, build)


def _compiled_provider() -> Provider:
    """torch.optim (foreach) with its step under torch.compile. lr stays a float: it never changes
    here, so nothing recompiles. Opt-in: compiling takes minutes for hundreds of tensors on 2 cores."""
    def build(algo: Algorithm, params):
        return torch.compile(getattr(torch.optim, algo.torch_class)(params, **algo.hyper, foreach=True).step)

    return Provider("torch-compile", _torch_provider("foreach").not_applicable,
                    lambda algo, device, dtype: None, build, default=False)


#: the floor provider's name: a peer, so read-heavy rows get a 'vs floor' ratio (table column, CSV speedup_vs)
FLOOR = "floor"

# Same-bytes floors of the read-heavy steps: flat torch ops over flat buffers of the step's element
# count and dtype that move the algorithm's minimum bytes with its read/write mix (the passes above) and
# allocate nothing per step (dot writes into a preallocated 0-d tensor). Read-only passes run at a
# different bandwidth than read-modify-write ones on these machines (timing.BandwidthProbe), so a step
# is judged against a floor of its own mix rather than against a *= s. Scalars keep values bounded over
# any number of repetitions (a sign flip instead of a decay that would end in denormals).
#   agd        dot(g, g)                               read g                       R 1
#              p += c·g                                read p, g; write p           R 2, W 1   -> 4 [16]
#   lamb       dot(g, g)                               grad-norm pass               R 1
#              m += c·g; v += c·p                      stage 1: read p, g, m, v;
#                                                      write m, v                   R 4, W 2
#              p += c·m·v                              stage 2: read p, m, v;
#                                                      write p                      R 3, W 1   -> 11 [44]
#   yellowfin  dot(a, g)                               pass A: read g, ḡ            R 2
#              a += c·g; m *= -1; p *= -1              pass B: read p, g, ḡ, m;
#                                                      write p, ḡ, m                R 4, W 3   -> 9 [36]
_FLOOR_BUFFERS = {"agd": "pg", "lamb": "pgmv", "yellowfin": "pgam"}


def _floor_ops(name: str, b: dict, out: torch.Tensor, c: float) -> Callable[[], None]:
    if name == "agd":
        return lambda: (torch.dot(b["g"], b["g"], out=out), b["p"].add_(b["g"], alpha=c))
    if name == "lamb":
        return lambda: (torch.dot(b["g"], b["g"], out=out), b["m"].add_(b["g"], alpha=c),
                        b["v"].add_(b["p"], alpha=c), b["p"].addcmul_(b["m"], b["v"], value=c))
    return lambda: (torch.dot(b["a"], b["g"], out=out), b["a"].add_(b["g"], alpha=c), b["m"].mul_(-1.0),
                    b["p"].mul_(-1.0))


def _floor_provider() -> Provider:
    def not_applicable(algo: Algorithm) -> str | None:
        return None if algo.name in _FLOOR_BUFFERS else "no same-bytes floor: not a read-heavy step"

    def build(algo: Algorithm, params):
        n = sum(p.numel() for p in params)
        like = params[0].detach()
        gen = torch.Generator(device=like.device).manual_seed(0)
        buffers = {k: torch.randn(n, generator=gen, dtype=like.dtype, device=like.device)
                   for k in _FLOOR_BUFFERS[algo.name]}
        out = torch.empty((), dtype=like.dtype, device=like.device)
        return _floor_ops(algo.name, buffers, out, c=-1e-6)

    return Provider(FLOOR, not_applicable, lambda algo, device, dtype: None, build)

_AUTHORS = {"agd": AuthorsAGD, "yellowfin": AuthorsYellowFin}


def _authors_provider() -> Provider:
    def not_applicable(algo: Algorithm) -> str | None:
        return None if algo.name in _AUTHORS else "the specs give no authors' reference for it"

    def build(algo: Algorithm, params):
        return _AUTHORS[algo.name](params).step

    # The YellowFin reference clips .grad in place: it gets its own copy of the gradients.
    return Provider("authors", not_applicable, lambda algo, device, dtype: None, build, mutates_grads=True)


PROVIDERS: dict[str, Provider] = {p.name: p for p in (
    _agd_kernels_provider("cpu", default=True),
    _agd_kernels_provider("cuda", default=True),
    _agd_kernels_provider("triton", default=True),
    _agd_kernels_provider("torch", default=False),  # the pure-PyTorch reference: the spec, not fast
    _agd_kernels_provider("torch", default=False, telemetry=True),
    _agd_kernels_provider("cpu", default=True, telemetry=True),
    _agd_kernels_provider("cuda", default=True, telemetry=True),
    _agd_kernels_provider("triton", default=True, telemetry=True),
    _torch_provider("foreach"),
    _torch_provider("fused"),
    _compiled_provider(),
    _authors_provider(),
    _floor_provider(),
)}


def default_providers(device: torch.device) -> list[str]:
    return [name for name in select_providers(device, PROVIDERS) if PROVIDERS[name].default]


def select_providers(device: torch.device, names) -> list[str]:
    """`names` minus agd_kernels backends that never run on this device type (cuda on a CPU run)."""
    keep = []
    for name in names:
        backend = name[len("agd_kernels["):name.index("]")] if name.startswith("agd_kernels[") else None
        # auto's order lists exactly the backends that can run on the device type
        if backend is None or backend in _backends._auto_order(device):
            keep.append(name)
    return keep


def make_tensors(shapes, dtype: torch.dtype, device: torch.device, seed: int) -> tuple[list, list]:
    """(params, grads) drawn once per case: params ~ N(0, 0.02²) like a transformer init, grads ~ N(0, 1).

    Values are far from fp16/bf16 denormals, which would slow CPU arithmetic and falsify timings.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    params = [(torch.randn(s, generator=gen, device=device, dtype=dtype) * 0.02) for s in shapes]
    grads = [torch.randn(s, generator=gen, device=device, dtype=dtype) for s in shapes]
    return params, grads


def build_step(provider: Provider, algo: Algorithm, base_params, grads) -> Callable[[], object]:
    """The provider's step over its own copy of the parameters, .grad shared unless it writes it."""
    params = []
    for base, g in zip(base_params, grads):
        p = torch.nn.Parameter(base.clone())
        p.grad = g.clone() if provider.mutates_grads else g
        params.append(p)
    return provider.build(algo, params)
