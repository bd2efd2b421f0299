"""master_weights=True: bf16/fp16 parameters updated through fp32 copies (docs/mixed_precision.md).

Relative displacement error, the measure of how well a 16-bit run tracks fp32:
||(p_16 - p0) - (p_32 - p0)|| / ||p_32 - p0|| over all parameters, both runs from the same initial
weights (exact in bf16 and fp16, tests/models.py) on the same batches, each computing its own gradients.
The learning rates below are small enough that most updates are under half a bf16 ulp of their weight:
rounded to the parameter every step, they are lost (bf16 errors 0.15 to 0.39, measured); accumulated in
an fp32 master they are not (<= 0.061: what is left comes from the 16-bit forward and backward).
"""
from __future__ import annotations

import copy

import pytest
import torch

import agd_kernels as ak
from agd_kernels.optim._base import MASTER
from tests.models import (assert_same_bits, clone_model, compute_grads, make_model, snapshot, train,
                          two_groups)
from tests.optim.registry import entries
from tests.optim.test_checkpoint import save_load
from tests.optim.test_no_host_sync import host_copies_trapped

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 30
BOUND = 0.1  # the bound on the relative displacement error with master weights
HALVES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: Per optimizer, a learning rate (AGD: its lr factor) in the regime described above.
SMALL_LR = {"Adam": 1e-3, "AdamW": 1e-3, "SGD": 3e-3, "RMSprop": 1e-4, "Adagrad": 3e-3, "AGD": 0.1, "LAMB": 1e-3,
            "YellowFin": 1e-3}
#: YellowFin tunes its own lr from step 1 on, large enough that bf16 rounding loses little even
#: without master weights: only the bound applies to it.
TUNES_ITS_LR = {"YellowFin"}


def _make(entry, model, **kw):
    """entry's optimizer on the two groups of `model` at its small lr (the second group's lr too)."""
    second = {k: v for k, v in entry.second_group.items() if k != "lr"}
    return entry.make(two_groups(model, second), lr=SMALL_LR[entry.name], **kw)


def displacement_error(run: list[torch.Tensor], ref: list[torch.Tensor], start: list[torch.Tensor]) -> float:
    run, ref, start = ([t.detach().double() for t in ts] for ts in (run, ref, start))
    num = sum(((a - b) ** 2).sum() for a, b in zip(run, ref, strict=True))
    den = sum(((b - s) ** 2).sum() for b, s in zip(ref, start, strict=True))
    return float((num / den).sqrt())


def _masters(model, opt) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    return [(name, p, opt.state[p][MASTER]) for name, p in model.named_parameters()]


def _assert_rounded_masters(model, opt, what: str) -> None:
    """Every 16-bit parameter is its master rounded once, to nearest."""
    for name, p, master in _masters(model, opt):
        assert master.dtype == torch.float32 and master.shape == p.shape, f"{what}: master of {name}: {master!r}"
        assert torch.equal(p.view(torch.int16), master.to(p.dtype).view(torch.int16)), \
            f"{what}: {name} is not its master rounded to {p.dtype}"


def _assert_fp32_state(model, opt, what: str) -> None:
    for name, p in model.named_parameters():
        for key, value in opt.state[p].items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                assert value.dtype == torch.float32, f"{what}: state {key!r} of {name} is {value.dtype}"


def _run(entry, base, dtype, backend, steps=STEPS, **kw):
    model = clone_model(base, dtype)
    opt = _make(entry, model, backend=backend, **kw)
    for k in range(steps):
        compute_grads(model, k)
        opt.step()
        if kw.get("master_weights") and dtype != torch.float32:
            _assert_rounded_masters(model, opt, f"{entry.name} after step {k}")
    return model, opt


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("entry", entries())
def test_tracks_fp32(entry, half, backend):
    dtype = HALVES[half]
    base = make_model(edge_cases=True)
    start = [p.detach().clone() for p in base.parameters()]
    ref, _ = _run(entry, base, torch.float32, backend)
    master, opt = _run(entry, base, dtype, backend, master_weights=True)
    plain, _ = _run(entry, base, dtype, backend)
    _assert_fp32_state(master, opt, entry.name)
    ref, master, plain = (list(m.parameters()) for m in (ref, master, plain))
    with_master, without = displacement_error(master, ref, start), displacement_error(plain, ref, start)
    print(f"{entry.name} {half} {backend}: relative displacement error {with_master:.4f} with master weights, "
          f"{without:.4f} without")
    assert with_master <= BOUND, f"{entry.name} {half}: {with_master:.4f} > {BOUND} with master weights"
    assert with_master < without
    if half == "bf16" and entry.name not in TUNES_ITS_LR:
        assert without > BOUND, (f"{entry.name}: bf16 without master weights is within the bound too "
                                 f"({without:.4f}): this test no longer tells the two apart")


@pytest.mark.parametrize("entry", entries())
def test_fp32_parameters_unchanged(entry):
    """master_weights=True does nothing for fp32 parameters: no master, the same bits."""
    base = make_model(edge_cases=True)
    on, on_opt = _run(entry, base, torch.float32, "auto", steps=3, master_weights=True)
    off, off_opt = _run(entry, base, torch.float32, "auto", steps=3)
    assert not any(MASTER in s for s in on_opt.state.values())
    assert_same_bits(snapshot(on, on_opt), snapshot(off, off_opt), f"{entry.name} fp32 with master_weights")


@pytest.mark.parametrize("entry", entries())
def test_checkpoint_round_trip_is_bitwise(entry):
    base = make_model(edge_cases=True)
    whole_model, whole = _run(entry, base, torch.bfloat16, "auto", steps=6, master_weights=True)
    half_model, first = _run(entry, base, torch.bfloat16, "auto", steps=3, master_weights=True)
    saved = save_load({"model": half_model.state_dict(), "optimizer": first.state_dict()})
    for pid, state in saved["optimizer"]["state"].items():
        assert state[MASTER].dtype == torch.float32, f"param {pid}: saved master {state[MASTER].dtype}"
    assert all(g["master_weights"] is True for g in saved["optimizer"]["param_groups"])

    resumed_model = make_model(seed=1, edge_cases=True).to(torch.bfloat16)  # other weights until loaded
    resumed_model.load_state_dict(saved["model"])
    resumed = _make(entry, resumed_model, master_weights=True)
    resumed.load_state_dict(saved["optimizer"])
    _assert_fp32_state(resumed_model, resumed, f"{entry.name} loaded")
    train(resumed_model, resumed, range(3, 6))
    assert_same_bits(snapshot(resumed_model, resumed), snapshot(whole_model, whole), f"{entry.name} resumed")


@pytest.mark.parametrize("entry", entries())
def test_checkpoint_without_master_weights_key_loads_as_off(entry):
    """A checkpoint from before master_weights existed (no group key) loads as master_weights=False and
    continues as the run that saved it."""
    base = make_model(edge_cases=True)
    model, opt = _run(entry, base, torch.bfloat16, "auto", steps=2)
    old = copy.deepcopy(opt.state_dict())
    for group in old["param_groups"]:
        del group["master_weights"]
    twin_model = clone_model(model)
    twin = _make(entry, twin_model, master_weights=True)
    twin.load_state_dict(old)
    assert all(g["master_weights"] is False for g in twin.param_groups)
    train(model, opt, range(2, 4))
    train(twin_model, twin, range(2, 4))
    assert_same_bits(snapshot(twin_model, twin), snapshot(model, opt), f"{entry.name} after an old checkpoint")


@pytest.mark.parametrize("entry", entries())
def test_switched_on_after_steps(entry):
    """Turning master_weights on in a group that already has 16-bit state moves that state to fp32."""
    model, opt = _run(entry, make_model(edge_cases=True), torch.bfloat16, "auto", steps=2)
    for group in opt.param_groups:
        group["master_weights"] = True
    train(model, opt, range(2, 4))
    _assert_rounded_masters(model, opt, entry.name)
    _assert_fp32_state(model, opt, entry.name)


@pytest.mark.parametrize("entry", entries())
def test_switched_off_after_steps(entry):
    """Turning master_weights off drops the masters and returns the state to the parameters' dtype."""
    model, opt = _run(entry, make_model(edge_cases=True), torch.bfloat16, "auto", steps=2, master_weights=True)
    for group in opt.param_groups:
        group["master_weights"] = False
    train(model, opt, range(2, 4))
    for name, p in model.named_parameters():
        state = opt.state.get(p, {})
        assert MASTER not in state, name
        assert all(v.dtype == torch.bfloat16 for k, v in state.items() if k != "step" and torch.is_tensor(v)), name


@pytest.mark.parametrize("entry", entries())
def test_found_inf_changes_nothing(entry):
    model, opt = _run(entry, make_model(edge_cases=True), torch.bfloat16, "auto", steps=1, master_weights=True)
    compute_grads(model, 1, scale=64.0)
    before = snapshot(model, opt)  # masters and every counter included: they are state
    opt.grad_scale, opt.found_inf = torch.tensor(64.0), torch.tensor(1.0)
    opt.step()
    assert_same_bits(snapshot(model, opt), before, f"{entry.name} after a step with found_inf=1")


@pytest.mark.parametrize("entry", entries())
def test_found_inf_on_first_step(entry):
    model = make_model(edge_cases=True).to(torch.bfloat16)
    before = snapshot(model)
    opt = _make(entry, model, master_weights=True)
    compute_grads(model, 0)
    opt.found_inf = torch.tensor(1.0)
    opt.step()
    assert_same_bits(snapshot(model), before, "params after a skipped first step")
    _assert_rounded_masters(model, opt, entry.name)
    steps = [s["step"] for s in opt.state.values() if "step" in s]
    assert all(s.item() == 0 for s in steps), f"step counters advanced on a skipped step: {steps}"


# Both precision flags, which share the working-copy machinery of _base.py.
@pytest.mark.parametrize("flag", ["master_weights", "stochastic_rounding"])
@pytest.mark.parametrize("entry", entries())
def test_step_without_host_sync(entry, flag, monkeypatch):
    """Creating masters (or working copies), the fp32 gradients and the copy (or stochastic rounding) back
    add no host sync, found_inf included."""
    model = make_model(edge_cases=True).to(torch.bfloat16)
    opt = _make(entry, model, **{flag: True})
    compute_grads(model, 0)
    with host_copies_trapped(monkeypatch):
        opt.step()
    opt.grad_scale, opt.found_inf = torch.tensor(1024.0), torch.tensor(1.0)
    compute_grads(model, 1, scale=1024.0)
    with host_copies_trapped(monkeypatch):
        opt.step()


def test_per_group_and_mixed_dtypes():
    """master_weights per group; a group may mix bf16, fp16 and fp32 parameters (only the 16-bit
    ones get a master); state of the group without master weights stays in the parameters' dtype."""
    w16, h16, w32, off = (torch.nn.Parameter(torch.randn(4, 3).to(dt))
                          for dt in (torch.bfloat16, torch.float16, torch.float32, torch.bfloat16))
    opt = ak.Adam([{"params": [w16, h16, w32]}, {"params": [off], "master_weights": False}], lr=1e-3,
                  master_weights=True)
    for p in (w16, h16, w32, off):
        p.grad = torch.ones_like(p)
    opt.step()
    assert [MASTER in opt.state[p] for p in (w16, h16, w32, off)] == [True, True, False, False]
    assert [opt.state[p]["exp_avg"].dtype for p in (w16, h16, w32, off)] == [torch.float32] * 3 + [torch.bfloat16]
    assert torch.equal(h16, opt.state[h16][MASTER].half())


def test_agd_init_weights_refreshes_masters():
    model = make_model(edge_cases=True).to(torch.bfloat16)
    opt = ak.AGD(two_groups(model, named=True), bias_mode="follow", master_weights=True)
    compute_grads(model, 0)
    opt.step()
    opt.init_weights()
    _assert_rounded_masters(model, opt, "after init_weights")
    assert model.fc1.bias.abs().sum() == 0 and opt.state[model.fc1.bias][MASTER].abs().sum() == 0


# One check serves both precision flags (_base.check_precision_flags); so does this test.
@pytest.mark.parametrize("flag", ["master_weights", "stochastic_rounding"])
@pytest.mark.parametrize("value", [1, "yes", None])
def test_precision_flags_must_be_bools(flag, value):
    model = make_model()
    with pytest.raises(ValueError, match=rf"Invalid {flag}"):
        ak.SGD(model.parameters(), lr=0.1, **{flag: value})
    opt = ak.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=rf"param_groups\[1\].*{flag}"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], flag: value})
    bad = copy.deepcopy(opt.state_dict())
    bad["param_groups"][0][flag] = value
    with pytest.raises(ValueError, match=rf"loaded param_groups\[0\].*{flag}"):
        opt.load_state_dict(bad)


# The Triton interpreter is slow: a tiny model, two steps, every optimizer, against the reference.
@pytest.mark.parametrize("entry", entries())
def test_triton_backend(entry):
    torch.manual_seed(0)
    weights = [torch.randn(4, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)]
    results = {}
    for backend in ("torch", "triton"):
        params = [torch.nn.Parameter(w.to(torch.bfloat16)) for w in weights]
        opt = entry.make([{"params": params}], lr=SMALL_LR[entry.name], backend=backend, master_weights=True)
        for k in range(2):
            gen = torch.Generator().manual_seed(k)
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen).to(torch.bfloat16)
            opt.step()
        for p in params:
            master = opt.state[p][MASTER]
            # The op rounds the master into p; Triton's interpreter (CPU tensors) rounds fp32 -> bf16 by
            # truncation where the GPU rounds to nearest even (docs/design.md): the top 16 bits.
            rounded = master.to(torch.bfloat16) if backend == "torch" else \
                (master.view(torch.int32) & -65536).view(torch.float32).to(torch.bfloat16)
            assert torch.equal(p, rounded)
        results[backend] = [opt.state[p][MASTER] for p in params]
    for ref, got in zip(results["torch"], results["triton"]):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_compiled_step_equals_eager():
    """torch.compile(opt.step) traces the substitution and the copy back (aot_eager, as tests/test_compile.py)."""
    torch._dynamo.reset()
    base = make_model(edge_cases=True).to(torch.bfloat16)
    runs = {}
    for compiled in (False, True):
        model = clone_model(base)
        opt = ak.AdamW(two_groups(model), lr=1e-3, master_weights=True)
        step = torch.compile(opt.step, backend="aot_eager") if compiled else opt.step
        for k in range(3):
            compute_grads(model, k)
            step()
        runs[compiled] = snapshot(model, opt)
    torch._dynamo.reset()
    assert_same_bits(runs[True], runs[False], "compiled step with master weights")


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("entry", entries())
def test_fused_ops_give_the_bits_of_the_fp32_definition(entry, backend):
    """The ops read the 16-bit gradient and round each master into its parameter themselves (model_params):
    the same bits as the definition, the fp32 optimizer stepped on the masters with g.float(), then the
    masters rounded to nearest into the bf16 parameters."""
    model = make_model(torch.bfloat16)
    reference = clone_model(model, torch.float32)  # the masters start as the bf16 values, exactly
    fused, plain = _make(entry, model, backend=backend, master_weights=True), _make(entry, reference, backend=backend)
    for step in range(3):
        compute_grads(model, step)
        for p, q in zip(model.parameters(), reference.parameters()):
            q.grad = p.grad.float()
        fused.step()
        plain.step()
        for (name, p, master), q in zip(_masters(model, fused), reference.parameters()):
            assert torch.equal(master, q), f"step {step}: master of {name} differs from the fp32 definition"
            assert torch.equal(p.view(torch.int16), q.to(torch.bfloat16).view(torch.int16)), name


def test_ops_read_16_bit_gradients_and_write_the_parameters(monkeypatch):
    """No fp32 gradient copy and no copy-back pass: adam_step_ gets the bf16 gradients and the bf16
    parameters as model_params, the fp32 masters as params."""
    calls = []
    real = ak.ops.adam_step_

    def spy(params, grads, *args, model_params=(), **kw):
        calls.append(([t.dtype for t in params], [t.dtype for t in grads], [t.dtype for t in model_params]))
        return real(params, grads, *args, model_params=model_params, **kw)

    monkeypatch.setattr(ak.ops, "adam_step_", spy)
    model = make_model(torch.bfloat16)
    opt = ak.AdamW(model.parameters(), lr=1e-3, master_weights=True)
    compute_grads(model, 0)
    opt.step()
    n = len(list(model.parameters()))
    assert calls == [([torch.float32] * n, [torch.bfloat16] * n, [torch.bfloat16] * n)]
    _assert_rounded_masters(model, opt, "after one step")
