"""What every agd_kernels optimizer shares: validation, grouping, device scalars, AMP, checkpoints.

A subclass declares its torch.optim-compatible defaults, creates its per-parameter state, and
implements `_launch` for one (param group, device, dtype) bucket by calling one op of
agd_kernels.ops. Everything that could leave a half-updated model (sparse gradients, mixed
devices, bad state shapes) is checked before the first kernel runs.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor

from .. import _backends, _ext, ops
from .._grouping import group_by_device_dtype
from ..distributed import Partials, flat_offset, is_dtensor, local
from ..reference.telemetry import NUM_SUMS
from ..telemetry import Telemetry, equilibrium_angular_update, layer_stats
from ._lr import LrTensors
from ._telemetry import StepTelemetry, layer_names, per_layer


#: The per-parameter state key of a master_weights group's fp32 copy of a 16-bit parameter.
MASTER = "master_param"
#: The parameter dtypes master_weights keeps an fp32 copy of.
HALF_DTYPES = (torch.bfloat16, torch.float16)
#: The parameter dtypes stochastic_rounding applies to: bf16 is fp32 with the low 16 bits cut, so adding 16
#: random bits rounds it (ops.stochastic_round_); fp16's narrower exponent and subnormals would need more.
ROUNDED_DTYPES = (torch.bfloat16,)
#: Per-parameter state key of the step counter stochastic rounding draws its bits with, for optimizers whose
#: state keeps no "step" (SGD, AGD, YellowFin); the others' "step" serves.
ROUNDING_STEP = "rounding_step"
#: Group key of the stochastic rounding seed (a Python int, so it is saved with the param groups).
SEED = "rounding_seed"


def describe_param(group: dict[str, Any], group_index: int, position: int, p: Tensor) -> str:
    """How errors name a parameter: its name when known (named_parameters()), else where it sits."""
    names = group.get("param_names")
    name = names[position] if names and position < len(names) else None
    where = f"param_groups[{group_index}]['params'][{position}]"
    return f"parameter {name!r} ({where}, shape {tuple(p.shape)})" if name else f"{where} (shape {tuple(p.shape)})"


def is_number(value: Any) -> bool:
    """A Python int or float: not a bool (isinstance(True, int) holds) and not a tensor."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_non_negative(name: str, value: float | Tensor) -> None:
    """torch.optim's ValueError for a hyper-parameter that must be >= 0."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element, got {value.numel()} elements")
        value = float(value.detach().cpu())  # construction, add_param_group and load only, never in step()
    if not 0.0 <= value:
        raise ValueError(f"Invalid {name}: {value}")


def check_betas(betas: tuple[float, float]) -> None:
    if len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    # torch.optim's rule and message. Unlike torch, an int beta (betas=(0, 0.999)) counts as a float.
    if isinstance(betas[0], Tensor) != isinstance(betas[1], Tensor):
        raise ValueError("betas must be either both floats or both Tensors")
    for i, b in enumerate(betas):
        if not 0.0 <= float(b) < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {b}")


def copy_locally_(dst: list[Tensor], src: list[Tensor]) -> None:
    """torch._foreach_copy_ on local shards: DTensor has no sharding rule for it, and a master is a
    DTensor placed exactly as its parameter (or both are plain tensors)."""
    torch._foreach_copy_([local(t) for t in dst], [local(t) for t in src])


def check_precision_flags(hparams: dict[str, Any]) -> None:
    """master_weights and stochastic_rounding are flags: a truthy non-bool (1, "yes") is more likely a
    mistake than a choice. A rounding seed is an int64."""
    for key in ("master_weights", "stochastic_rounding"):
        value = hparams.get(key, False)
        if not isinstance(value, bool):
            raise ValueError(f"Invalid {key}: {value!r}; expected True or False")
    seed = hparams.get(SEED)
    if seed is not None and not (isinstance(seed, int) and not isinstance(seed, bool) and -2**63 <= seed < 2**63):
        raise ValueError(f"Invalid {SEED}: {seed!r}; expected an int in [-2**63, 2**63)")


def mode(group: dict[str, Any]) -> tuple[bool, bool]:
    """(fp32 masters kept, stochastic rounding through transient fp32 copies) for `group`: master_weights
    wins over stochastic_rounding."""
    masters = group["master_weights"]
    return masters, group["stochastic_rounding"] and not masters


def fp32_state_dtypes(group: dict[str, Any]) -> tuple[torch.dtype, ...]:
    """The parameter dtypes whose state is fp32 in `group` (docs/mixed_precision.md)."""
    masters, rounding = mode(group)
    return HALF_DTYPES if masters else ROUNDED_DTYPES if rounding else ()


def check_flags(hparams: dict[str, Any]) -> None:
    """The implementation flags: torch.optim's RuntimeErrors for fused=True with differentiable=True or
    foreach=True (same messages, same order), then our ValueError for differentiable=True: the kernels
    update in place outside autograd, so it cannot be honoured."""
    if hparams.get("fused"):
        if hparams.get("differentiable"):
            raise RuntimeError("`fused` does not support `differentiable`")
        if hparams.get("foreach"):
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
    if hparams.get("differentiable"):
        raise ValueError("differentiable=True is not supported by agd_kernels optimizers")


class _BucketEntry(NamedTuple):
    """One slot's cached bucketing (see FusedOptimizer._bucket_entry)."""
    key: tuple[int, ...]  # ids of the parameters
    dtypes: list[torch.dtype]
    params: list[Tensor]  # held so the ids stay unique
    index: list[tuple[torch.device, list[int] | None]]  # per bucket: device, positions (None: all)


class Collected(NamedTuple):
    """One group's parameters that have gradients, and those gradients (FusedOptimizer._collect_grads)."""
    params: list[Tensor]
    grads: list[Tensor]
    uniform: bool  # all of one dtype and device: a single bucket


def _collect_group_grads(group_params: list[Tensor]) -> tuple[list[Tensor], list[Tensor], bool, int]:
    """What agd_kernels._C.collect_grads returns, in Python, also for DTensor parameters: (parameters
    with a gradient, their gradients, whether those share one dtype, device and DTensor-ness, the position
    in `group_params` of the first sparse gradient or one of another dtype than its parameter, else -1)."""
    params, grads = [], []
    for p in group_params:
        g = p.grad
        if g is not None:
            params.append(p)
            grads.append(g)
    bad = -1
    if [g.dtype for g in grads] != [p.dtype for p in params] or any(g.is_sparse for g in grads):
        bad = next(i for i, p in enumerate(group_params)
                   if p.grad is not None and (p.grad.is_sparse or p.grad.dtype != p.dtype))
    return params, grads, len({(p.dtype, p.device, is_dtensor(p)) for p in params}) <= 1, bad


class _Copy(NamedTuple):
    """One stochastic_rounding group's bf16 parameters and the fp32 working copies that stood for them
    this step, to round back."""
    group: int
    halves: list[Tensor]
    stand_ins: list[Tensor]


class FusedOptimizer(torch.optim.Optimizer):
    """Base class. Subclasses set the class attributes below that apply, check their
    hyper-parameters in `_check_hparams`, and implement `_init_state` and `_launch` (or their own
    `step`, as AGD and YellowFin do)."""

    #: GradScaler hands over `grad_scale` and `found_inf` instead of unscaling (torch's fused contract).
    _step_supports_amp_scaling = True
    #: Group keys torch.optim's class of the same name has but our kernels do not use; accepted for
    #: drop-in compatibility and kept so checkpoints round-trip.
    _COMPAT_KEYS: dict[str, Any] = {}
    #: Per-parameter state keys and whether each is a tensor shaped like the parameter.
    _STATE_SHAPES: dict[str, bool] = {}
    #: Why every parameter must share one device (a statistic spans all groups), or None when each
    #: group may sit on its own device.
    _ONE_DEVICE_BECAUSE: str | None = None

    def __init__(self, params, defaults: dict[str, Any], backend: str = "auto", telemetry: bool = False):
        defaults.setdefault("stochastic_rounding", False)
        check_precision_flags(defaults)
        self._check_hparams(defaults)
        self.backend = _backends.validate(backend)
        if not isinstance(telemetry, bool):
            raise ValueError(f"telemetry must be True or False; got {telemetry!r}")
        #: this step's telemetry buffers when telemetry=True (see telemetry())
        self._step_telemetry = StepTelemetry() if telemetry else None
        #: this step's fp32 masters and working copies, by id, -> the 16-bit parameters they stand for
        #: (see _use_masters)
        self._model_of: dict[int, Tensor] = {}
        #: the masters among them, id -> model parameter: the ops write these parameters (model_params)
        self._masters: dict[int, Tensor] = {}
        #: per group index, the mode (see `mode`) its state was last laid out for (see _settle_state)
        self._modes: dict[int, tuple[bool, bool]] = {}
        self._seeds: dict[tuple[int, torch.device], tuple[int, Tensor]] = {}  # (group, device) -> seed tensor
        # parameter ids, id -> index of its first element, id -> a DTensor shard's start in its tensor
        self._offsets: tuple[tuple[int, ...], dict[int, int], dict[int, int]] = ((), {}, {})
        self._lr_cache: dict[int, LrTensors] = {}  # by group index
        self._bucket_cache: dict[Any, _BucketEntry] = {}
        #: per partial-sums buffer: (ids of its tensors, the tensors, so the ids stay unique, their layout)
        self._layout_cache: dict[str, tuple[tuple[int, ...], list[Tensor], Partials]] = {}
        super().__init__(params, defaults)

    # ---------------------------------------------------------------- param groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        for key, value in self._COMPAT_KEYS.items():
            param_group.setdefault(key, value)
        super().add_param_group(param_group)
        index = len(self.param_groups) - 1
        try:
            self._validate_group(self.param_groups[index], index)
        except (ValueError, RuntimeError):  # RuntimeError: check_flags, as torch raises it
            self.param_groups.pop()  # a rejected group leaves the optimizer as it was
            raise
        if self.param_groups[index]["stochastic_rounding"]:
            self._seed_of(self.param_groups[index])  # drawn at construction, predictably, when asked for

    def _validate_group(self, group: dict[str, Any], index: int) -> None:
        devices = {p.device for p in group["params"]}
        if len(devices) > 1:
            raise ValueError(
                f"param_groups[{index}] mixes devices {sorted(map(str, devices))}: agd_kernels runs one "
                "multi-tensor kernel per group and device; put parameters of each device in their own group")
        if self._ONE_DEVICE_BECAUSE is not None:
            devices = {p.device for g in self.param_groups for p in g["params"]}
            if len(devices) > 1:
                raise ValueError(f"{type(self).__name__} needs all parameters on one device "
                                 f"({self._ONE_DEVICE_BECAUSE}); got {sorted(map(str, devices))}")
        for pos, p in enumerate(group["params"]):
            if not (p.is_floating_point() and not p.is_complex()):
                raise ValueError(f"{describe_param(group, index, pos, p)} has dtype {p.dtype}; "
                                 "agd_kernels optimizers need real floating-point parameters")
        try:
            check_precision_flags(group)
            self._check_hparams(group)
        except ValueError as exc:
            raise ValueError(f"param_groups[{index}]: {exc}") from None
        self._check_group(group, index)

    def _check_hparams(self, hparams: dict[str, Any]) -> None:
        """Subclass hook: torch.optim's hyper-parameter checks, run on the constructor's defaults, on
        every added group and on every loaded group, raising ValueError naming the parameter."""

    def _check_group(self, group: dict[str, Any], index: int) -> None:
        """Subclass hook: checks of a new group that need its parameters or the other groups (raise
        ValueError naming the key; add_param_group then drops the group)."""

    # ---------------------------------------------------------------- device scalars
    def _lr_tensor(self, group_index: int, group: dict[str, Any], device: torch.device,
                   param_dtype: torch.dtype) -> Tensor:
        """The group's lr as a 0-d tensor on `device` (fp64 for fp64 parameters, else fp32), without a
        host sync; a float lr lives in a cached tensor refilled when it changes (see _lr)."""
        cache = self._lr_cache.get(group_index)
        if cache is None:
            cache = self._lr_cache[group_index] = LrTensors()
        return cache.get(group["lr"], device, param_dtype)

    def _amp_scalars(self, device: torch.device) -> tuple[Tensor | None, Tensor | None]:
        """grad_scale and found_inf that GradScaler attached for this step, on `device`."""
        out = []
        for name in ("grad_scale", "found_inf"):
            t = getattr(self, name, None)
            if t is not None and t.device != device:
                t = t.to(device, non_blocking=True)
            out.append(t)
        return out[0], out[1]

    # ---------------------------------------------------------------- step
    # Per-step Python work is per parameter: on 640 small tensors each attribute read or dict lookup
    # costs ~60 us per step (more once a step's data has flushed the caches), against a fused RMSprop op
    # of ~3 ms. So gradients are collected in C++ (agd_kernels._C.collect_grads), a group of one dtype
    # and device skips the bucketing, other groups' bucketing is cached, and each state dict is looked
    # up once.
    def _collect_grads(self) -> list[Collected]:
        """The parameters with gradients and their gradients, per group; raises, changing nothing, on
        unsupported gradients.

        torch's .grad setter already enforces the parameter's shape and device; a different dtype is
        possible (Tensor.grad_dtype), so that and sparsity are what is checked here.
        """
        # torch.compile cannot trace into C++: it traces the Python version
        collect = None if torch.compiler.is_compiling() else getattr(_ext.MODULE, "collect_grads", None)
        collected = []
        for gi, group in enumerate(self.param_groups):
            found = NotImplemented if collect is None else collect(group["params"])
            if found is NotImplemented:  # no extension, tensor subclasses, or tracing
                found = _collect_group_grads(group["params"])
            params, grads, uniform, bad = found
            if bad >= 0:
                self._reject_grad(gi, group, bad)
            collected.append(Collected(params, grads, uniform))
        return collected

    def _reject_grad(self, gi: int, group: dict[str, Any], position: int) -> None:
        p = group["params"][position]
        where = describe_param(group, gi, position, p)
        g = p.grad
        if g.is_sparse:
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients: {where} has a sparse .grad")
        raise RuntimeError(f"{where} has a gradient of {g.dtype}/{tuple(g.shape)} on {g.device}; expected the "
                           f"parameter's {p.dtype}/{tuple(p.shape)} on {p.device}")

    def _bucket_entry(self, slot: Any, params: list[Tensor]) -> _BucketEntry:
        """The (device, dtype) buckets of `params`: grouping costs ~0.3 ms per step for 640 tensors, so
        it is cached.

        `slot` names the list (a group index, or a subclass's own key for all groups): one entry per
        slot, replaced when its parameters change, so any number of groups stays cached.
        """
        # The entry holds the parameters, so their ids stay unique while cached. module.to() swaps a
        # parameter's data in place: a changed dtype shows in the dtype list, a changed device in each
        # bucket's first parameter (a bucket split across devices by moving only some of its parameters
        # is refused by every op before it writes).
        key = tuple(map(id, params))
        dtypes = [p.dtype for p in params]
        hit = self._bucket_cache.get(slot)
        if (hit is None or hit.key != key or hit.dtypes != dtypes
                or any(params[0 if idx is None else idx[0]].device != device for device, idx in hit.index)):
            groups = list(group_by_device_dtype(params, self._masters).items())
            index = [(device, None if len(groups) == 1 else idx) for (device, *_), idx in groups]
            hit = self._bucket_cache[slot] = _BucketEntry(key, dtypes, params, index)
        return hit

    def _buckets(self, slot: Any, params: list[Tensor]) -> list[tuple[torch.device, list[Tensor]]]:
        """(device, parameters) per (device, dtype) bucket of `params` (cached, see `_bucket_entry`)."""
        return [(device, bucket) for device, bucket, _ in self._bucket_grads(slot, params, params)]

    def _bucket_grads(self, slot: Any, params: list[Tensor], grads: list[Tensor],
                      uniform: bool = False) -> list[tuple[torch.device, list[Tensor], list[Tensor]]]:
        """(device, parameters, their gradients) per (device, dtype) bucket of `params`; `uniform`
        (known to share one dtype and device) skips the grouping."""
        if uniform:
            return [(params[0].device, params, grads)] if params else []
        return [(device, params, grads) if idx is None else
                (device, [params[i] for i in idx], [grads[i] for i in idx])
                for device, idx in self._bucket_entry(slot, params).index]

    def _states(self, group: dict[str, Any], params: list[Tensor]) -> list[dict[str, Any]]:
        """The state dicts of `params` (the tensors the kernels update: a master stands for its
        parameter, whose state it lives in), created for parameters stepped for the first time."""
        model_of = self._model_of
        states = [self.state[model_of.get(id(t), t)] for t in params] if model_of else [self.state[p] for p in params]
        for p, state in zip(params, states):
            if not state:
                self._init_state(p, state, group)
        return states

    # A step has two phases around at most one collective (docs/design.md rule 8): `_partials` writes every
    # whole-tensor quantity (sums over elements) into one flat buffer, which `Partials.reduce_` completes
    # across ranks when parameters are sharded (one all-reduce, nothing otherwise), then `_apply` updates.
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        """One optimisation step. Returns the closure's loss, like torch.optim (AGD returns eta)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        collected = self._collect_grads()
        if self._step_telemetry is not None:
            self._step_telemetry.start()
        copies = self._use_masters(collected)
        partial = self._partials(collected)
        if partial is not None:
            buffer, layout = partial
            layout.reduce_(buffer)
        out = self._apply(collected)
        for copy in copies:
            # Working copies round stochastically into their parameters (masters are rounded to nearest by
            # the ops themselves, model_params). After a found_inf step the working copies are unchanged,
            # and so is what this writes: no host sync needed to skip it.
            self._round_stochastically(copy)
        if copies:
            self._forget_working_copies(copies)
        return out if out is not None and (closure is None or self._RESULT_OVER_LOSS) else loss

    #: Whether step() returns `_apply`'s result even when a closure's loss is there to return.
    _RESULT_OVER_LOSS = False

    # ---------------------------------------------------------------- master weights, stochastic rounding
    # master_weights=True (per group): a 16-bit parameter is updated through an fp32 copy kept in its
    # state under MASTER. Its entry in `collected` becomes that master, next to its own 16-bit gradient;
    # buckets keep masters apart (_grouping), and every op that writes parameters gets the bucket's 16-bit
    # parameters as model_params (`_models`): the kernel reads the gradient in 16 bits and rounds each
    # updated master into its parameter in the same pass (agd_kernels/ops.py, "Mixed precision"). State
    # stays keyed by the parameter: `_states` and `_param_of` map a master back.
    # stochastic_rounding=True (and master_weights off) substitutes, for bf16 parameters, a transient
    # working copy p.float() and g.float() for its gradient, and step() rounds the copy into the parameter
    # stochastically. The state of those parameters is fp32 in both modes.
    def _use_masters(self, collected: list[Collected]) -> list[_Copy]:
        """Substitutes in `collected` an fp32 stand-in for every parameter of a master_weights group (its
        master, created at its first step; its gradient stays 16-bit) or of a stochastic_rounding group (a
        working copy, with g.float()) that has a 16-bit dtype the mode covers; returns the working copies
        step() rounds back."""
        self._model_of = model_of = {}
        self._masters = fused = {}
        copies = []
        for gi, (group, found) in enumerate(zip(self.param_groups, collected)):
            masters, rounding = current = mode(group)
            if self._modes.get(gi, (False, False)) != current:
                self._settle_state(group)
                self._modes[gi] = current
            covered = fp32_state_dtypes(group)
            if not any(p.dtype in covered for p in found.params):
                continue
            if rounding:
                self._check_rounding_layout(gi, group, [p for p in found.params if p.dtype in covered])
            params, grads, halves, stand_ins = [], [], [], []
            for p, g in zip(found.params, found.grads):
                if p.dtype in covered:
                    state = self.state[p]
                    if masters:
                        stand_in = state.get(MASTER)
                        if stand_in is None:
                            stand_in = self._new_master(p, state, group)
                    else:
                        stand_in = p.detach().float()  # its state, if new, is made from it by _states
                    model_of[id(stand_in)] = p
                    if masters:  # the op reads g in 16 bits and rounds the master into p (model_params)
                        fused[id(stand_in)] = p
                    else:
                        halves.append(p)
                        stand_ins.append(stand_in)
                        g = g.float()
                    p = stand_in
                params.append(p)
                grads.append(g)
            # Working copies and fp32 parameters make one bucket: not grouped through the cache, which would
            # hold the copies until the next step.
            uniform = found.uniform or rounding and len({(t.dtype, t.device, is_dtensor(t)) for t in params}) == 1
            collected[gi] = Collected(params, grads, uniform)
            if rounding:
                copies.append(_Copy(gi, halves, stand_ins))
        return copies

    @staticmethod
    def _check_rounding_layout(gi: int, group: dict[str, Any], params: list[Tensor]) -> None:
        """Stochastic rounding numbers a shard's elements by their index in the whole tensor
        (distributed.flat_offset), which a shard has when only dim 0 is sharded; any other layout is
        refused naming the parameter, before anything changes."""
        for p in params:
            try:
                flat_offset(p)
            except ValueError as e:
                pos = next(i for i, q in enumerate(group["params"]) if q is p)
                raise ValueError(f"stochastic_rounding: {describe_param(group, gi, pos, p)} is a DTensor with "
                                 f"placements {tuple(p.placements)}: {e}; shard it on dim 0 (FSDP2's default) "
                                 "or use master_weights=True") from None

    def _new_master(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> Tensor:
        """p's fp32 master, stored in its state with the rest of a first step's state, made like the
        master (fp32). State made before it (Adagrad's, a checkpoint of a run without master weights,
        master_weights switched on after some steps) moves to fp32 instead."""
        first = not state
        self._to_state_dtype(p, state, torch.float32)
        master = state[MASTER] = p.detach().float()  # a DTensor's master is a DTensor, sharded alike
        if first:
            self._init_state(master, state, group)
        return master

    def _to_state_dtype(self, p: Tensor, state: dict[str, Any], dtype: torch.dtype) -> None:
        """p's state tensors (those shaped like it) in `dtype`."""
        for key, value in state.items():
            if self._STATE_SHAPES.get(key) and isinstance(value, Tensor) and value.dtype != dtype:
                state[key] = value.to(dtype)

    def _settle_state(self, group: dict[str, Any]) -> None:
        """`group`'s mode changed: masters go where master_weights is off (the parameters hold them,
        rounded), and the state of each parameter takes the dtype the new mode keeps it in (fp32 for the
        16-bit parameters the mode covers, else the parameter's, as torch.optim keeps it)."""
        fp32 = fp32_state_dtypes(group)
        for p in group["params"]:
            state = self.state.get(p)  # not self.state[p]: that would add an entry
            if not state:
                continue
            if not group["master_weights"]:
                state.pop(MASTER, None)
            self._to_state_dtype(p, state, torch.float32 if p.dtype in fp32 else p.dtype)
            if not state:  # the master was all (AGD, SGD without momentum): no empty entry in state_dict()
                del self.state[p]

    def _seed_of(self, group: dict[str, Any]) -> int:
        """The group's stochastic rounding seed, drawn from torch's default generator the first time one
        is needed; every group of an optimizer shares one (so sum of offsets number all its elements once)."""
        seed = group.get(SEED)
        if seed is None:
            seed = next((g[SEED] for g in self.param_groups if g.get(SEED) is not None), None)
            if seed is None:
                seed = int(torch.randint(-2**63, 2**63 - 1, (), dtype=torch.int64))  # a CPU draw, no device
            group[SEED] = seed
        return seed

    def _seed_tensor(self, gi: int, group: dict[str, Any], device: torch.device) -> Tensor:
        """The group's seed as the 0-d int64 tensor on `device` the rounding kernel reads (a fill, no copy
        from the host; refilled when the seed changed, e.g. by a load)."""
        seed = self._seed_of(group)
        hit = self._seeds.get((gi, device))
        if hit is None or hit[0] != seed:
            hit = self._seeds[(gi, device)] = (seed, torch.full((), seed, dtype=torch.int64, device=device))
        return hit[1]

    def _element_offsets(self, params: list[Tensor]) -> list[int]:
        """The index of each parameter's first element in one numbering of every element of the optimizer
        (its groups' parameters in order), so no two elements of a step draw the same bits. A DTensor
        counts its global elements, and its local shard starts where it sits in them
        (distributed.flat_offset): sharded, each element draws the bits it draws unsharded."""
        ids = tuple(id(p) for group in self.param_groups for p in group["params"])
        if self._offsets[0] != ids:
            first, offset = {}, 0
            for group in self.param_groups:
                for p in group["params"]:
                    first.setdefault(id(p), offset)
                    offset += p.numel()
            self._offsets = (ids, first, {})
        _, first, shard_start = self._offsets
        for p in params:  # only the rounded parameters: other placements are refused for them alone
            if id(p) not in shard_start:
                shard_start[id(p)] = flat_offset(p)
        return [first[id(p)] + shard_start[id(p)] for p in params]

    def _round_stochastically(self, copy: _Copy) -> None:
        """Rounds the working copies of one group into its bf16 parameters (ops.stochastic_round_), with
        each parameter's step counter: its state "step" where the optimizer keeps one (advanced by this
        step's op), else ROUNDING_STEP, advanced here unless found_inf is set."""
        group = self.param_groups[copy.group]
        device = copy.halves[0].device
        states = [self.state[p] for p in copy.halves]
        steps, own = [], []
        for p, state in zip(copy.halves, states):
            step = state.get("step")
            if step is None:
                step = state.get(ROUNDING_STEP)
                if step is None:
                    step = state[ROUNDING_STEP] = self._new_step(p)
                own.append(step)
            steps.append(step)
        if own:
            found_inf = self._amp_scalars(device)[1]
            torch._foreach_add_(own, 1 if found_inf is None else (found_inf == 0).to(torch.float32))
        ops.stochastic_round_(copy.halves, copy.stand_ins, self._seed_tensor(copy.group, group, device), steps,
                              self._element_offsets(copy.halves), backend=self.backend)

    def _forget_working_copies(self, copies: list[_Copy]) -> None:
        """Drops every reference this step's caches keep to working copies, so they are freed now (kept,
        they would cost what stochastic rounding saves): the layouts and bucketings built from them."""
        for copy in copies:
            self._bucket_cache.pop(copy.group, None)
            for t in copy.stand_ins:
                self._model_of.pop(id(t), None)
        self._layout_cache.clear()

    def _models(self, params: list[Tensor]) -> list[Tensor]:
        """model_params for an op call on one bucket: the 16-bit parameters of a bucket of masters (buckets
        never mix masters and other tensors: _grouping), else none."""
        masters = self._masters
        if not masters or not params or id(params[0]) not in masters:
            return []
        return [masters[id(p)] for p in params]

    def _param_of(self, t: Tensor) -> Tensor:
        """The parameter `t` (one of this step's lists) stands for: its own self unless it is a master."""
        return self._model_of.get(id(t), t)

    def _state_dtype(self, p: Tensor, group: dict[str, Any]) -> torch.dtype:
        """The dtype of p's state tensors: fp32 for a 16-bit parameter with master weights or stochastic
        rounding."""
        return torch.float32 if p.dtype in fp32_state_dtypes(group) else p.dtype

    @torch.no_grad()
    def refresh_master_weights(self) -> None:
        """Copies every 16-bit parameter into its master. Call it after changing parameters outside the
        optimizer (loading weights into the model, an init) once a step has created the masters: the
        next step would otherwise start from the old masters and overwrite the change."""
        halves, masters = [], []
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)  # not self.state[p]: that would add an entry
                master = state.get(MASTER) if state else None
                if master is not None:
                    halves.append(p)
                    masters.append(master)
        if masters:
            copy_locally_(masters, halves)

    def _partials(self, collected: list[Collected]) -> tuple[Tensor, Partials] | None:
        """Subclass hook, phase 1: launch the ops that write this step's whole-tensor partial sums into
        one flat buffer; return it with its layout (the base then reduces it across ranks), or None."""
        return None

    def _apply(self, collected: list[Collected]) -> Any:
        """Phase 2: one `_launch` per (group, device, dtype) bucket. Returns what step() returns
        (None: the closure's loss)."""
        for gi, (group, found) in enumerate(zip(self.param_groups, collected)):
            for device, bucket, bucket_grads in self._bucket_grads(gi, *found):
                grad_scale, found_inf = self._amp_scalars(device)
                self._launch(group, bucket, bucket_grads, self._states(group, bucket),
                             self._lr_tensor(gi, group, device, bucket[0].dtype), grad_scale, found_inf)
        return None

    def _describer(self, tensors: list[Tensor]) -> Callable[[int], str]:
        """describe(i): how errors name tensors[i], one of this optimizer's parameters."""
        def describe(i: int) -> str:
            target = self._param_of(tensors[i])
            for gi, group in enumerate(self.param_groups):
                for pos, p in enumerate(group["params"]):
                    if p is target:
                        return describe_param(group, gi, pos, p)
            return f"tensor {i} (shape {tuple(tensors[i].shape)})"
        return describe

    def _partials_layout(self, name: str, tensors: list[Tensor], spans: list[tuple[int, int]]) -> Partials:
        """The cross-rank layout of partial-sums buffer `name`, whose tensor i fills slots spans[i]; cached
        per name until the tensors change (building it walks every placement)."""
        key = tuple(map(id, tensors))
        hit = self._layout_cache.get(name)
        if hit is None or hit[0] != key:
            hit = self._layout_cache[name] = (key, tensors, Partials(tensors, spans, self._describer(tensors)))
        return hit[2]

    # ---------------------------------------------------------------- telemetry
    def _telemetry_buffer(self, params: list[Tensor]) -> Tensor | None:
        """The `telemetry` argument of an op call on `params`: None unless telemetry=True."""
        recorder = self._step_telemetry
        return None if recorder is None else recorder.buffer(params, self._param_of)

    def _telemetry_extras(self, params: list[Tensor], device: torch.device) -> tuple[dict[str, Tensor],
                                                                                     dict[str, Tensor]]:
        """Subclass hook: the algorithm's own quantities of the last step, from buffers the step already has
        (no pass, no sync): per-layer values (one per entry of `params`, NaN where it has none) and
        optimizer-wide 0-d scalars."""
        return {}, {}

    def _equilibrium(self, group: dict[str, Any]) -> tuple[float, bool] | None:
        """Subclass hook: (momentum, decoupled) of `group` for equilibrium_angular_update when its weight
        decay drives weights to an equilibrium norm (SGD, AdamW), else None."""
        return None

    def telemetry(self) -> Telemetry:
        """The last step's per-layer statistics, on the device, without a host sync (docs/telemetry.md).

        Layers are the parameters in group order, named by `param_names` when named parameters were given,
        else by index; `result[name]` gives one layer's statistics. Each layer has weight_norm, grad_norm,
        update_norm, update_ratio, grad_cosine and angular_update (agd_kernels.telemetry.layer_stats; NaN for
        a parameter the step did not update), and for groups with weight decay under SGD or AdamW the
        predicted equilibrium_angular_update and angular_update_vs_equilibrium (measured / predicted; NaN
        elsewhere). The statistics are the weights' before and after the step, the gradient unscaled by AMP.
        Sharded parameters (FSDP2) are summed across ranks here with one all-reduce: every rank must call it.
        """
        recorder = self._step_telemetry
        if recorder is None:
            raise RuntimeError(f"{type(self).__name__}.telemetry() needs the optimizer built with telemetry=True")
        if recorder.steps == 0:
            raise RuntimeError(f"{type(self).__name__}.telemetry(): no step has run yet")
        params = [p for group in self.param_groups for p in group["params"]]
        spans = [(NUM_SUMS * i, NUM_SUMS) for i in range(len(params))]
        sums = recorder.sums(params, self._partials_layout("telemetry", params, spans).reduce_)
        layers = layer_stats(sums)
        if any(self._equilibrium(group) is not None for group in self.param_groups):
            def predicted(group):
                found = self._equilibrium(group)
                if found is None or group["weight_decay"] == 0:
                    return math.nan
                momentum, decoupled = found
                if isinstance(momentum, Tensor):  # tensor betas: read on the host only where that is free
                    if momentum.device.type != "cpu":
                        return math.nan
                    momentum = momentum.item()
                if not 0 <= momentum < 1:  # no equilibrium: the momentum sum diverges
                    return math.nan
                return equilibrium_angular_update(group["lr"], group["weight_decay"], momentum, decoupled)
            layers["equilibrium_angular_update"] = per_layer(self.param_groups, predicted, sums.device)
            layers["angular_update_vs_equilibrium"] = layers["angular_update"] / layers["equilibrium_angular_update"]
        own_layers, scalars = self._telemetry_extras(params, sums.device)
        layers.update(own_layers)
        return Telemetry(layer_names(self.param_groups), layers, scalars)

    def _init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        raise NotImplementedError

    def _launch(self, group, params, grads, states, lr, grad_scale, found_inf) -> None:
        raise NotImplementedError

    @staticmethod
    def _new_step(p: Tensor) -> Tensor:
        """The torch.optim step counter: 0-d fp32, on the parameter's device so kernels read it there."""
        return torch.zeros((), dtype=torch.float32, device=p.device)

    # ---------------------------------------------------------------- checkpoints
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch.optim's load, after checking every group's hyper-parameters and every state entry
        against its parameter (nothing is changed when a check fails), then steps moved to the
        parameters' devices as 0-d fp32."""
        self._check_loadable(state_dict)
        state_dict, fp32 = self._set_aside_fp32(state_dict)
        super().load_state_dict(state_dict)
        for p, key, value in fp32:
            self.state[p][key] = value.to(device=p.device, dtype=torch.float32)
        for group in self.param_groups:
            group.setdefault("master_weights", False)
            group.setdefault("stochastic_rounding", False)
            for key, value in self._COMPAT_KEYS.items():
                group.setdefault(key, value)
        self._modes = {gi: mode(group) for gi, group in enumerate(self.param_groups)}  # as loaded
        for p, state in self.state.items():
            step = state.get("step")
            if step is not None:
                step = torch.as_tensor(step, dtype=torch.float32).reshape(())
                state["step"] = step.to(p.device)
        self._lr_cache.clear()

    def _set_aside_fp32(self, state_dict: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[Tensor, str, Any]]]:
        """(`state_dict` without the state torch.optim's load would round to a parameter's dtype, that
        state as (parameter, key, value)): the master and the other state tensors of 16-bit parameters in
        master_weights groups, and of bf16 parameters in stochastic_rounding groups, which stay fp32, and
        every ROUNDING_STEP counter. Masters where the loaded groups keep none (master_weights off,
        parameters of 32 or 64 bits) are dropped. The caller's dicts are not changed."""
        saved_state = dict(state_dict["state"])
        fp32 = []
        for saved, group in zip(state_dict["param_groups"], self.param_groups):
            flags = {key: saved.get(key, False) for key in ("master_weights", "stochastic_rounding")}
            covered = fp32_state_dtypes(flags)
            for pid, p in zip(saved["params"], group["params"]):
                entry = saved_state.get(pid)
                if not isinstance(entry, dict):
                    continue
                masters = flags["master_weights"] and p.dtype in covered
                keep = {k: v for k, v in entry.items() if isinstance(v, Tensor) and (k == ROUNDING_STEP or (
                    p.dtype in covered and (self._STATE_SHAPES.get(k) or masters and k == MASTER)))}
                fp32 += [(p, k, v) for k, v in keep.items()]
                saved_state[pid] = {k: v for k, v in entry.items() if k not in keep and (masters or k != MASTER)}
        return {**state_dict, "state": saved_state}, fp32

    def _check_loadable(self, state_dict: dict[str, Any]) -> None:
        saved_groups = state_dict.get("param_groups")
        saved_state = state_dict.get("state")
        if not isinstance(saved_groups, list) or not isinstance(saved_state, dict):
            raise ValueError("state_dict must have a 'state' dict and a 'param_groups' list")
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"loaded state dict has {len(saved_groups)} parameter groups; "
                             f"this optimizer has {len(self.param_groups)}")
        for gi, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            try:
                check_precision_flags(saved)  # absent in checkpoints from before the flags: False
                self._check_hparams({**self.defaults, **saved})  # as add_param_group would
            except ValueError as exc:
                raise ValueError(f"loaded param_groups[{gi}]: {exc}") from None
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"loaded param_groups[{gi}] has {len(saved['params'])} parameters; "
                                 f"this optimizer's has {len(group['params'])}")
            for pos, (pid, p) in enumerate(zip(saved["params"], group["params"])):
                entry = saved_state.get(pid)
                if entry is None:
                    continue
                for key, value in entry.items():
                    if key == "step":
                        if isinstance(value, Tensor) and value.numel() != 1:
                            raise ValueError(f"state 'step' of {describe_param(group, gi, pos, p)} has "
                                             f"{value.numel()} elements; expected a scalar")
                        continue
                    shaped = self._STATE_SHAPES.get(key) or key == MASTER
                    if shaped and (not isinstance(value, Tensor) or value.shape != p.shape):
                        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                        raise ValueError(f"state {key!r} of {describe_param(group, gi, pos, p)} has shape "
                                         f"{got}; expected the parameter's shape {tuple(p.shape)}")

