"""Two gloo ranks on CPU for the distributed tests (docs/design.md rule 8): the model, the data, the
optimizer cases, the single-process references and tolerances, and the worker jobs.

How a test gets its numbers: the parent (pytest) starts one *job* as two worker processes
(`python -m tests.distributed.harness JOB DIR RANK`), each with a hard timeout after which both are
killed, so a hang fails instead of blocking CI. A job runs many *cases* (one optimizer trained on
FSDP2 for 6 steps, the same with the collective disabled, a checkpoint round trip, ...) and saves
every rank's results to DIR/rank<r>.pt after each case, so a crash or a kill still returns what ran.
Process start-up (importing torch, ~3 s) is paid once per job; the tests then assert per case.

A case that raises on both ranks with the same error is recorded and the job goes on (an optimizer
that cannot take DTensor parameters fails so). Anything else (one rank failing, a collective
timing out, the ranks disagreeing on a check collective after the case) ends the job: the ranks'
collectives might no longer pair up, and later cases would report nonsense.

The parent computes the single-process runs itself (one thread, the same code as the workers).
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import subprocess
import sys
import time
import traceback
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
WORLD = 2
STEPS = 6
RESUME_AT = 3  # checkpoint after this many steps, then STEPS - RESUME_AT more
PER_RANK_BATCH = 4
IN_CHANNELS, SIDE = 2, 5
INIT_SEED = 1234  # torch.manual_seed before AGD.init_weights()
COLLECTIVE_TIMEOUT_S = 30  # gloo's timeout: a collective one rank never joins raises after this
JOB_TIMEOUT_S = 180  # the parent kills both workers after this (a job normally takes 5-20 s)
EPS32 = 2.0 ** -23


# ----------------------------------------------------------------------------- model and data
class Net(nn.Module):
    """Conv2d(2->3, 3x3) -> tanh -> Linear(27->7) -> tanh -> Linear(7->3) -> tanh -> Linear(3->1).

    Sharded over 2 ranks along dim 0: conv (3 rows: 2 + 1, each a 2x3x3 block of 9 taps), fc1 (7 rows:
    4 + 3), fc2 (3 rows: 2 + 1) and out (1 row: rank 1's local shards of out.weight and out.bias are
    empty), biases alike.
    """

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(IN_CHANNELS, 3, 3)
        self.fc1 = nn.Linear(3 * (SIDE - 2) ** 2, 7)
        self.fc2 = nn.Linear(7, 3)
        self.out = nn.Linear(3, 1)

    def forward(self, x):
        h = torch.tanh(self.conv(x)).flatten(1)
        return self.out(torch.tanh(self.fc2(torch.tanh(self.fc1(h)))))


SUBMODULES = ("conv", "fc1", "fc2", "out")


def make_model(dtype: torch.dtype = torch.float32, seed: int = 0) -> Net:
    """The same initial weights for every dtype: drawn in float64, rounded once to `dtype`."""
    torch.manual_seed(seed)
    return Net().double().to(dtype)


def batch(step: int, dtype: torch.dtype = torch.float32, rank: int | None = None):
    """Step `step`'s inputs and targets: the whole batch (WORLD * PER_RANK_BATCH rows), or rank
    `rank`'s rows of it."""
    gen = torch.Generator().manual_seed(1000 + step)
    n = WORLD * PER_RANK_BATCH
    x = torch.randn(n, IN_CHANNELS, SIDE, SIDE, generator=gen, dtype=torch.float64)
    y = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    if rank is not None:
        rows = slice(rank * PER_RANK_BATCH, (rank + 1) * PER_RANK_BATCH)
        x, y = x[rows], y[rows]
    return x.to(dtype), y.to(dtype)


# ----------------------------------------------------------------------------- optimizer cases
#: Clip threshold of the clipping LAMB case: below this model's global gradient norm at every one of
#: the STEPS steps (0.36-1.45 on the whole batch; test_harness.py checks it), so the clip is active.
LAMB_CLIP = 0.25


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    algo: str  # the tests/optim/registry.py entry
    overrides: dict
    collectives: int  # all-reduces per step() on FSDP2 (docs/design.md rule 8)
    norms: bool  # has whole-tensor sums: wrong without the all-reduce


CASES = {c.name: c for c in [
    Case("AGD", "AGD", {}, 1, True),  # registry: bias_mode="follow", second group gain 0.5
    Case("LAMB", "LAMB", {"max_grad_norm": None}, 1, True),
    Case("LAMB-clip", "LAMB", {"max_grad_norm": LAMB_CLIP}, 2, True),
    Case("YellowFin", "YellowFin", {}, 1, True),  # mu 0.5, curv_win_width 3, second group weight decay
    Case("Adam", "Adam", {}, 0, False),  # amsgrad, weight decay
    Case("AdamW", "AdamW", {}, 0, False),
    Case("SGD", "SGD", {}, 0, False),  # momentum 0.9, dampening 0.1, second group weight decay
    Case("RMSprop", "RMSprop", {}, 0, False),  # centered, momentum 0.5
    Case("Adagrad", "Adagrad", {}, 0, False),  # lr_decay
]}
NORM_CASES = [name for name, c in CASES.items() if c.norms]
#: Controls: torch.optim, which handles DTensor parameters itself, on the same FSDP2 model. If these fail,
#: the harness (model, sharding, data split, comparison, tolerance) is wrong, not agd_kernels.
CONTROLS = {
    "torch.Adam": lambda groups: torch.optim.Adam(groups, lr=1e-2, amsgrad=True, weight_decay=0.01, foreach=False),
    "torch.SGD": lambda groups: torch.optim.SGD(groups, lr=0.05, momentum=0.9, dampening=0.1, foreach=False),
}
CONTROL_SECOND_GROUP = {"lr": 5e-3}
BACKENDS = ("cpu", "torch")


def param_groups(model: nn.Module, second: dict, named: bool = False, reverse: bool = False) -> list[dict]:
    """[conv weight + bias], [the rest, with `second`'s hyper-parameters]: each group starts with a
    weight (AGD's bias_mode="follow" needs that) and per-group values are exercised. `reverse`: the
    second group first, its parameters in reverse order (the first parameter is then out.bias, whose
    shard on rank 1 is empty)."""
    def pick(first: bool):
        items = [(n, p) for n, p in model.named_parameters() if n.startswith("conv.") == first]
        return items if named else [p for _, p in items]
    groups = [{"params": pick(True)}, {"params": pick(False), **second}]
    if reverse:
        groups = [{**groups[1], "params": groups[1]["params"][::-1]}, groups[0]]
    return groups


#: Cases that only the checkpoint job runs: (algorithm case, reverse the parameter order).
CHECKPOINT_EXTRA = {"YellowFin-empty-first": ("YellowFin", True)}


def make_optimizer(case: str, model: nn.Module, backend: str, named: bool = False, **extra) -> torch.optim.Optimizer:
    """The optimizer of `case` on `model`; `extra`: more constructor arguments (master_weights=True)."""
    reverse = False
    if case in CHECKPOINT_EXTRA:
        case, reverse = CHECKPOINT_EXTRA[case]
    if case in CONTROLS:
        return CONTROLS[case](param_groups(model, CONTROL_SECOND_GROUP, named, reverse))
    from tests.optim.registry import REGISTRY
    c = CASES[case]
    entry = REGISTRY[c.algo]
    return entry.make(param_groups(model, entry.second_group, named, reverse), backend=backend, **c.overrides, **extra)


# ----------------------------------------------------------------------------- training
def local_loss(model: nn.Module, step: int, rank: int | None, dtype=torch.float32) -> torch.Tensor:
    x, y = batch(step, dtype, rank)
    return nn.functional.mse_loss(model(x), y)


def train_single(case: str, backend: str, variant: str = "whole", dtype=torch.float32,
                 steps: int = STEPS, **extra) -> dict[str, torch.Tensor]:
    """The single-process run: `variant` "whole" backpropagates the mean loss of the whole batch;
    "halves" accumulates each rank's half-batch mean loss / WORLD (the sums FSDP and DDP compute, in
    another order), "halves-reversed" the same from the last rank first. Returns the parameters."""
    model = make_model(dtype)
    opt = make_optimizer(case, model, backend, **extra)
    for k in range(steps):
        opt.zero_grad(set_to_none=True)
        if variant == "whole":
            local_loss(model, k, None, dtype).backward()
        else:
            ranks = range(WORLD) if variant == "halves" else reversed(range(WORLD))
            for r in ranks:
                (local_loss(model, k, r, dtype) / WORLD).backward()
        opt.step()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@contextmanager
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclasses.dataclass
class Reference:
    """The float64 oracle of a case (backend "torch", the spec) and the per-tensor tolerance of an
    fp32 run against it."""
    oracle: dict[str, torch.Tensor]
    tol: dict[str, float]
    fp32_err: dict[str, float]  # the largest fp32 single-process error, per tensor

    def errors(self, params: dict[str, torch.Tensor]) -> dict[str, float]:
        assert params.keys() == self.oracle.keys(), (sorted(params), sorted(self.oracle))
        return {n: (params[n].double() - self.oracle[n]).abs().max().item() if params[n].numel() else 0.0
                for n in self.oracle}

    def check(self, params: dict[str, torch.Tensor], what: str) -> None:
        """Every tensor's max error vs the float64 oracle within its tolerance."""
        errs = self.errors(params)
        bad = {n: e for n, e in errs.items() if not e <= self.tol[n]}  # NaN fails too
        assert not bad, f"{what}: max |error| vs the float64 single-process run exceeds the derived tolerance:\n" + \
            "\n".join(f"  {n}: {errs[n]:.3g} > tol {self.tol[n]:.3g} (fp32 single-process errors up to "
                      f"{self.fp32_err[n]:.3g})" for n in bad)

    def worst_ratio(self, params: dict[str, torch.Tensor]) -> tuple[float, str]:
        errs = self.errors(params)
        name = max(errs, key=lambda n: errs[n] / self.tol[n])
        return errs[name] / self.tol[name], name


_REFERENCES: dict[tuple[str, str], Reference] = {}
FP32_VARIANTS = ("whole", "halves", "halves-reversed")


def reference(case: str, backend: str) -> Reference:
    """Tolerance derived like tests/tolerance.py's assert_within_2x_reference: a distributed fp32 run
    differs from the single-process one only by where fp32 sums round (the gradient average over ranks,
    norms summed from per-shard partial sums). Three single-process fp32 runs that round those sums
    differently (whole batch; half batches accumulated in either order) measure how far such rounding
    moves this case's trajectory from the float64 oracle in STEPS steps; the distributed run may be 2x
    as far, plus a floor of 2 ulps of fp32 of the tensor's magnitude (an fp32 result is at least its own
    rounding away from the oracle; the floor only matters for a tensor all fp32 runs happen to get
    almost exactly right)."""
    key = (case, backend)
    if key not in _REFERENCES:
        with one_thread():
            oracle = {n: t.double() for n, t in train_single(case, "torch", "whole", torch.float64).items()}
            runs = [train_single(case, backend, v) for v in FP32_VARIANTS]
        fp32_err, tol = {}, {}
        for n, o in oracle.items():
            fp32_err[n] = max((r[n].double() - o).abs().max().item() for r in runs)
            floor = 2 * EPS32 * o.abs().max().item()
            tol[n] = 2 * fp32_err[n] + floor
        _REFERENCES[key] = Reference(oracle, tol, fp32_err)
    return _REFERENCES[key]


# ----------------------------------------------------------------------------- parent side: jobs
@dataclasses.dataclass
class Job:
    name: str
    dir: Path
    returncodes: list[int | None]
    timed_out: bool
    seconds: float
    timeout_s: float
    results: list[dict | None]  # per rank: {"meta": ..., "cases": {key: {...}}, "aborted": str | None}

    def logs(self, chars: int = 4000) -> str:
        out = []
        for r in range(WORLD):
            path = self.dir / f"rank{r}.log"
            text = path.read_text(errors="replace") if path.exists() else "(no log)"
            out.append(f"--- rank {r} log (last {chars} chars) ---\n{text[-chars:]}")
        return "\n".join(out)

    def status(self) -> str:
        if self.timed_out:
            head = f"job {self.name!r} killed after {self.timeout_s:.0f} s (a hang)"
        else:
            head = f"job {self.name!r} exited with return codes {self.returncodes} after {self.seconds:.1f} s"
        aborted = [r.get("aborted") for r in self.results if r is not None and r.get("aborted")]
        if aborted:
            head += "; aborted: " + "; ".join(aborted)
        return head

    def case(self, key: str) -> list[dict]:
        """Both ranks' results of case `key`; fails the test (with the error or the job's logs) when the
        case did not run or raised on a rank."""
        import pytest
        per_rank = [None if r is None else r["cases"].get(key) for r in self.results]
        if any(c is None for c in per_rank):
            pytest.fail(f"case {key!r} has no result on ranks "
                        f"{[r for r, c in enumerate(per_rank) if c is None]}: {self.status()}\n{self.logs()}")
        errors = [(r, c["error"]) for r, c in enumerate(per_rank) if not c["ok"]]
        if errors:
            pytest.fail(f"case {key!r} raised:\n" + "\n".join(f"--- rank {r} ---\n{e}" for r, e in errors))
        return per_rank


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    # The repository root goes after anything already on PYTHONPATH, so the workers import the same
    # agd_kernels as the parent (an installed one, or one put first on PYTHONPATH) and this tests package.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(ROOT)) if p)
    env["OMP_NUM_THREADS"] = "1"
    if "GLOO_SOCKET_IFNAME" not in env and Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"  # both ranks on this host: loopback, whatever the hostname resolves to
    return env


def run_job(name: str, directory: Path, timeout_s: float = JOB_TIMEOUT_S) -> Job:
    """Runs job `name` on WORLD worker processes rendezvousing through a file store in `directory`
    (no port to pick); kills both when the job outlives `timeout_s`."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in ["store", *(f"rank{r}.{ext}" for r in range(WORLD) for ext in ("pt", "tmp", "log"))]:
        (directory / stale).unlink(missing_ok=True)  # a reused file store would hold the last run's keys
    env = _worker_env()
    procs, logs = [], []
    start = time.monotonic()
    try:
        for rank in range(WORLD):
            log = open(directory / f"rank{rank}.log", "wb")
            logs.append(log)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "tests.distributed.harness", name, str(directory), str(rank)],
                cwd=directory, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT))
        timed_out = False
        for proc in procs:
            left = timeout_s - (time.monotonic() - start)
            try:
                proc.wait(timeout=max(left, 0.1))
            except subprocess.TimeoutExpired:
                timed_out = True
                break
    finally:
        for proc in procs:  # only the processes started above, by their handles
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    results = []
    for rank in range(WORLD):
        path = directory / f"rank{rank}.pt"
        results.append(torch.load(path, weights_only=False) if path.exists() else None)
    return Job(name, directory, [p.returncode for p in procs], timed_out, time.monotonic() - start, timeout_s,
               results)


class Jobs:
    """Runs each job once per session, on first use."""

    def __init__(self, base: Path):
        self.base = base
        self.done: dict[str, Job] = {}

    def get(self, name: str) -> Job:
        if name not in self.done:
            self.done[name] = run_job(name, self.base / name)
        return self.done[name]


# ----------------------------------------------------------------------------- worker side
def _dist():
    import torch.distributed as dist
    return dist


#: HSDP meshes (replicate, shard): "2x1" replicates every parameter on both ranks (the sums must not be
#: added over the replicas), "1x2" shards like FSDP on a 2-D mesh.
HSDP_MESHES = {"hsdp-2x1": (WORLD, 1), "hsdp-1x2": (1, WORLD)}


def _average_grad(p: torch.Tensor) -> None:
    """What DDP does for a replicated parameter: its gradient averaged over the ranks (gloo has no AVG)."""
    import torch.distributed as dist
    dist.all_reduce(p.grad)
    p.grad.div_(WORLD)


def shard(model: nn.Module, topology: str = "fsdp") -> nn.Module:
    """FSDP2: each layer, then the root, on a 1-D CPU mesh of WORLD ranks (or an HSDP mesh).
    "fsdp-mixed": conv, fc1 and fc2 sharded, `out` left as plain tensors replicated on both ranks
    (gradients averaged in backward), so one optimizer holds sharded and replicated parameters: the
    replicas' sums must count once in the all-reduce (agd_kernels.distributed.Partials)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    if topology == "fsdp-mixed":
        mesh = init_device_mesh("cpu", (WORLD,))
        for name in SUBMODULES[:-1]:
            fully_shard(getattr(model, name), mesh=mesh)
        for p in model.out.parameters():
            p.register_post_accumulate_grad_hook(_average_grad)
        return model
    if topology == "fsdp":
        mesh = init_device_mesh("cpu", (WORLD,))
    else:
        mesh = init_device_mesh("cpu", HSDP_MESHES[topology], mesh_dim_names=("replicate", "shard"))
    for name in SUBMODULES:
        fully_shard(getattr(model, name), mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def build(topology: str, case: str, backend: str, seed: int = 0, named: bool = False, dtype=torch.float32,
          **extra):
    """(model, module whose parameters the optimizer holds, optimizer) on `topology` "fsdp", "ddp" or
    one of HSDP_MESHES, with parameters of `dtype`; `extra` goes to the optimizer."""
    model = make_model(dtype, seed=seed)
    if topology != "ddp":
        model = shard(model, topology)
        inner = model
    else:
        from torch.nn.parallel import DistributedDataParallel
        inner = model
        model = DistributedDataParallel(model)
    return model, inner, make_optimizer(case, inner, backend, named, **extra)


def full_params(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter as a full tensor (DTensors gathered: a collective, on every rank)."""
    from torch.distributed.tensor import DTensor
    return {n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
            for n, p in module.named_parameters()}


COUNT_STEPS = 2  # steps of the CommDebugMode run (the first initialises state, the second does not)


def c10d_sequence_numbers() -> dict[Any, int]:
    """Every process group's collective sequence number: c10d increments it for each collective issued
    on the group, whatever issued it, without a dispatch mode that could change the code path."""
    dist = _dist()
    return {pg: pg._get_sequence_number_for_group() for pg in dist.distributed_c10d._world.pg_map}


def train_dist(model, opt, steps, rank: int, count: str | None = None) -> list:
    """Trains on rank `rank`'s rows of each step's batch; returns, per step, what step() issued:
    count="c10d": the number of collectives (sequence numbers of all process groups, groups created
    during step() included); count="mode": {op: count} from torch's CommDebugMode, which sees every
    c10d and functional collective the dispatcher runs (DTensor's own included)."""
    from torch.distributed.tensor.debug import CommDebugMode
    counts = []
    for k in steps:
        opt.zero_grad(set_to_none=True)
        local_loss(model, k, rank, next(model.parameters()).dtype).backward()
        if count == "mode":
            with CommDebugMode() as mode:
                opt.step()
            counts.append({str(op): n for op, n in mode.get_comm_counts().items() if n})
        elif count == "c10d":
            before = c10d_sequence_numbers()
            opt.step()
            after = c10d_sequence_numbers()
            counts.append(sum(n - before.get(pg, 0) for pg, n in after.items()))
        else:
            opt.step()
    return counts


@contextmanager
def collective_disabled(calls: list):
    """agd_kernels.distributed.all_reduce_ as a no-op (each call appended to `calls`): every rank keeps
    its per-shard partial sums."""
    import agd_kernels.distributed as ak_dist
    original = ak_dist.all_reduce_

    def no_op(buffer, *args, **kwargs):
        calls.append(tuple(buffer.shape))
        return buffer
    ak_dist.all_reduce_ = no_op
    try:
        yield
    finally:
        ak_dist.all_reduce_ = original


def case_train(topology: str, case: str, backend: str, rank: int) -> dict:
    """STEPS steps, counting each step()'s collectives at the c10d level; then a second model and
    optimizer for COUNT_STEPS steps under CommDebugMode (which kinds of collectives)."""
    model, inner, opt = build(topology, case, backend)
    counts = train_dist(model, opt, range(STEPS), rank, count="c10d")
    params = full_params(inner)
    model, inner, opt = build(topology, case, backend)
    ops = train_dist(model, opt, range(COUNT_STEPS), rank, count="mode")
    return {"params": params, "counts": counts, "ops": ops}


def case_no_collective(case: str, backend: str, rank: int) -> dict:
    calls: list = []
    model, inner, opt = build("fsdp", case, backend)
    with collective_disabled(calls):
        train_dist(model, opt, range(STEPS), rank)
    return {"params": full_params(inner), "calls": calls}


def case_layout(rank: int) -> dict:
    """The FSDP2 model's local shard shapes on this rank."""
    model = shard(make_model())
    return {"local_shapes": {n: tuple(p.to_local().shape) for n, p in model.named_parameters()},
            "placements": {n: str(p.placements) for n, p in model.named_parameters()}}


def case_init_weights(topology: str, rank: int) -> dict:
    from torch.distributed.tensor import DTensor
    model, inner, opt = build(topology, "AGD", "cpu", named=True)
    before = {n: (p, type(p), getattr(p, "placements", None), tuple(getattr(p, "_local_tensor", p).shape))
              for n, p in inner.named_parameters()}
    torch.manual_seed(INIT_SEED)
    opt.init_weights()
    changed = []
    for n, p in inner.named_parameters():
        obj, kind, placements, local_shape = before[n]
        now = (type(p), getattr(p, "placements", None), tuple(getattr(p, "_local_tensor", p).shape))
        if p is not obj or now != (kind, placements, local_shape):
            changed.append(f"{n}: {(kind.__name__, placements, local_shape)} -> {(now[0].__name__, *now[1:])}"
                           + ("" if p is obj else " (a new Parameter object)"))
    locals_ = {n: (p.to_local() if isinstance(p, DTensor) else p).detach().clone() for n, p in inner.named_parameters()}
    return {"params": full_params(inner), "local": locals_, "changed": changed}


def case_checkpoint(topology: str, case: str, backend: str, rank: int, directory: Path, **options) -> dict:
    """STEPS uninterrupted steps, and RESUME_AT steps + DCP save + load into a fresh model (another
    seed) and optimizer + the remaining steps. `options`: build()'s dtype and optimizer arguments."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    model, inner, opt = build(topology, case, backend, **options)
    train_dist(model, opt, range(STEPS), rank)
    straight = full_params(inner)

    model, inner, opt = build(topology, case, backend, **options)
    train_dist(model, opt, range(RESUME_AT), rank)
    model_sd, optim_sd = get_state_dict(model, opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(directory))
    saved = full_params(inner)
    del model, inner, opt, model_sd, optim_sd

    model, inner, opt = build(topology, case, backend, seed=1, **options)
    model_sd, optim_sd = get_state_dict(model, opt)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(directory))
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    loaded = full_params(inner)
    train_dist(model, opt, range(RESUME_AT, STEPS), rank)
    return {"straight": straight, "saved": saved, "loaded": loaded, "resumed": full_params(inner)}


#: bf16 parameters with master_weights=True on FSDP2 (docs/mixed_precision.md): an elementwise
#: optimizer, and AGD, whose per-tap sums over the masters' shards take its one all-reduce.
MASTER_CASES = ("AdamW", "AGD")
MASTER = dict(dtype=torch.bfloat16, master_weights=True)


def case_master(case: str, rank: int) -> dict:
    """STEPS steps of bf16 FSDP2 with master weights: the gathered parameters, and per parameter
    whether its master is an fp32 DTensor placed as the parameter and rounds to its local shard."""
    from torch.distributed.tensor import DTensor
    model, inner, opt = build("fsdp", case, "cpu", **MASTER)
    train_dist(model, opt, range(STEPS), rank)
    checks = {}
    for n, p in inner.named_parameters():
        m = opt.state[p]["master_param"]
        checks[n] = (isinstance(m, DTensor) and m.dtype == torch.float32 and m.placements == p.placements
                     and torch.equal(m.to_local().to(p.dtype), p.to_local()))
    return {"params": full_params(inner), "checks": checks}


#: bf16 parameters with stochastic_rounding=True on sharded meshes (docs/mixed_precision.md, section 6):
#: each shard draws the bits of its elements' indices in the whole tensor, so a run fed the same full
#: gradients rounds as the single-process one does. Two elementwise optimizers and AGD (whose per-tap
#: sums over shards add up in another order, so its fp32 updates may differ in the last bits).
ROUNDING_CASES = ("AdamW", "SGD", "AGD")
ROUNDING_TOPOLOGIES = ("fsdp", *HSDP_MESHES)
ROUNDING = dict(dtype=torch.bfloat16, stochastic_rounding=True)
ROUNDING_SEED = 20261205


def fixed_grad(name: str, shape: torch.Size, step: int) -> torch.Tensor:
    """Step `step`'s full bf16 gradient of parameter `name`: the same on every rank and in one process."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"{name}/{step}".encode()))  # not hash(): salted per process
    return (0.1 * torch.randn(shape, generator=gen, dtype=torch.float64)).to(torch.bfloat16)


def rounding_run(module: nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """STEPS steps on fixed_grad's gradients (a DTensor parameter gets them distributed as it is) with
    the groups' rounding_seed set to ROUNDING_SEED; returns the full parameters."""
    from torch.distributed.tensor import DTensor, distribute_tensor
    for group in opt.param_groups:
        group["rounding_seed"] = ROUNDING_SEED
    for k in range(STEPS):
        for n, p in module.named_parameters():
            g = fixed_grad(n, p.shape, k)
            p.grad = distribute_tensor(g, p.device_mesh, p.placements) if isinstance(p, DTensor) else g
        opt.step()
    return full_params(module)


def case_rounding(topology: str, case: str, rank: int) -> dict:
    _, inner, opt = build(topology, case, "cpu", **ROUNDING)
    return {"params": rounding_run(inner, opt)}


#: telemetry=True on sharded parameters (docs/telemetry.md): each rank's kernels sum over its shards and
#: opt.telemetry() completes the sums with one all-reduce (replicas counted once).
TELEMETRY_CASES = ("AdamW", "SGD", "AGD", "LAMB", "YellowFin")
TELEMETRY_TOPOLOGIES = ("fsdp", "fsdp-mixed", "hsdp-2x1")


def telemetry_layers(opt: torch.optim.Optimizer) -> dict[str, dict[str, float]]:
    """opt.telemetry() of the last step as {layer name: {statistic: value}} (a host copy); the optimizer-wide
    scalars (AGD's eta and G, YellowFin's tuner) under layer ""."""
    telemetry = opt.telemetry()
    out = {str(name): {stat: float(values[i]) for stat, values in telemetry.layers.items()}
           for i, name in enumerate(telemetry.names)}
    if telemetry.scalars:
        out[""] = {name: float(value) for name, value in telemetry.scalars.items()}
    return out


def case_telemetry(topology: str, case: str, rank: int) -> dict:
    model, inner, opt = build(topology, case, "cpu", named=True, telemetry=True)
    train_dist(model, opt, range(STEPS), rank)
    return {"layers": telemetry_layers(opt)}


def job_cases(job: str, rank: int, directory: Path) -> Iterator[tuple[str, Callable[[], dict]]]:
    """(case key, thunk) in the order every rank runs them."""
    kind, _, backend = job.partition("-")
    if job == "fsdp-triton":  # the optional interpreted-Triton case: slow, so one optimizer only
        yield "train/AGD", lambda: case_train("fsdp", "AGD", "triton", rank)
    elif job == "fsdp-master":
        for case in MASTER_CASES:
            yield f"train/{case}", lambda case=case: case_master(case, rank)
            yield f"dcp/{case}", lambda case=case: case_checkpoint(
                "fsdp", case, "cpu", rank, directory / "ckpt" / case, **MASTER)
        for topology in ROUNDING_TOPOLOGIES:
            for case in ROUNDING_CASES:
                yield f"rounding/{topology}/{case}", lambda t=topology, case=case: case_rounding(t, case, rank)
    elif kind == "fsdp":
        if backend == "cpu":
            yield "layout", lambda: case_layout(rank)
            for case in CONTROLS:
                yield f"train/{case}", lambda case=case: case_train("fsdp", case, backend, rank)
        for case in CASES:
            yield f"train/{case}", lambda case=case: case_train("fsdp", case, backend, rank)
        for case in NORM_CASES:
            yield f"no-collective/{case}", lambda case=case: case_no_collective(case, backend, rank)
        if backend == "cpu":
            yield "init_weights", lambda: case_init_weights("fsdp", rank)
            for topology in TELEMETRY_TOPOLOGIES:
                for case in TELEMETRY_CASES:
                    yield f"telemetry/{topology}/{case}", lambda t=topology, case=case: case_telemetry(t, case, rank)
            for topology in (*HSDP_MESHES, "fsdp-mixed"):
                for case in NORM_CASES:
                    yield f"{topology}/{case}", lambda t=topology, case=case: case_train(t, case, backend, rank)
    elif job == "ddp":  # both backends in one job: DDP cases are quick, process start-up is not
        for backend in BACKENDS:
            for case in CASES:
                yield f"train/{case}-{backend}", lambda case=case, b=backend: case_train("ddp", case, b, rank)
        yield "init_weights", lambda: case_init_weights("ddp", rank)
    elif kind == "dcp":
        for topology in ("fsdp", "ddp"):
            for case in [*CASES, *CHECKPOINT_EXTRA]:
                yield f"{topology}/{case}", lambda t=topology, case=case: case_checkpoint(
                    t, case, backend, rank, directory / "ckpt" / f"{t}-{case}")
    else:
        raise ValueError(f"unknown job {job!r}")


JOBS = [f"fsdp-{backend}" for backend in BACKENDS] + ["ddp", "dcp-cpu", "fsdp-triton", "fsdp-master"]


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else text


def worker(job: str, directory: Path, rank: int) -> int:
    dist = _dist()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{directory / 'store'}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    store = dist.distributed_c10d._get_default_store()
    import agd_kernels
    results: dict[str, Any] = {"meta": {"agd_kernels": agd_kernels.__file__, "torch": torch.__version__},
                               "cases": {}, "aborted": None}
    out_path = directory / f"rank{rank}.pt"

    def save():
        tmp = out_path.with_suffix(".tmp")
        torch.save(results, tmp)
        os.replace(tmp, out_path)

    for index, (key, thunk) in enumerate(job_cases(job, rank, directory)):
        start = time.monotonic()
        try:
            out = {"ok": True, **thunk()}
        except Exception:
            out = {"ok": False, "error": traceback.format_exc()}
        out["seconds"] = time.monotonic() - start
        results["cases"][key] = out
        save()
        print(f"[rank {rank}] {key}: {'ok' if out['ok'] else 'ERROR ' + _last_line(out['error'])} "
              f"({out['seconds']:.2f} s)", flush=True)
        # Agree on how the case ended before the next one: through the store, not a collective.
        mine = "ok" if out["ok"] else "error: " + _last_line(out["error"])
        store.set(f"status/{index}/{rank}", mine)
        theirs = [store.get(f"status/{index}/{r}").decode() for r in range(WORLD)]
        reason = None
        if len(set(theirs)) > 1:
            reason = f"after case {key!r} the ranks disagree: {theirs}"
        elif "timed out" in mine.lower() or "timeout" in mine.lower():
            reason = f"case {key!r} timed out in a collective: {mine}"
        else:
            try:  # both ranks still pair their collectives up?
                probe = torch.tensor([float(index), float(rank)])
                dist.all_reduce(probe)
                if probe.tolist() != [float(index * WORLD), float(sum(range(WORLD)))]:
                    reason = f"after case {key!r} the check collective returned {probe.tolist()}"
            except Exception as exc:  # noqa: BLE001
                reason = f"after case {key!r} the check collective raised {exc!r}"
        if reason is not None:
            results["aborted"] = reason
            save()
            print(f"[rank {rank}] aborting the job: {reason}", flush=True)
            sys.stdout.flush()
            os._exit(3)  # no destroy_process_group: it could wait on the other rank
    print(f"[rank {rank}] all cases done", flush=True)
    dist.destroy_process_group()
    print(f"[rank {rank}] process group destroyed", flush=True)
    sys.stderr.flush()
    os._exit(0)  # the results are saved; skip interpreter teardown, where gloo's threads once aborted


if __name__ == "__main__":
    job_name, job_dir, job_rank = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    sys.exit(worker(job_name, job_dir, job_rank))
