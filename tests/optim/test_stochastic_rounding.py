"""stochastic_rounding=True: bf16 parameters updated through transient fp32 copies rounded stochastically
(agd_kernels.ops.stochastic_round_, docs/mixed_precision.md).

The op's statistics (unbiased, two neighbours only, exact values kept), then the optimizers: bf16 with
stochastic rounding tracks an fp32 run far better than bf16 rounded to nearest where the updates are below
half an ulp of the weights (the relative displacement error of tests/optim/test_master_weights.py), and the
contracts: checkpoints resume to the bit, no host sync, found_inf changes nothing, fp32 state, flags
checked. Every backend's bits equal the reference's (tests/op_cases.py, EXACT).
"""
from __future__ import annotations

import copy

import pytest
import torch

import agd_kernels as ak
from agd_kernels import ops
from agd_kernels.optim._base import MASTER, ROUNDING_STEP, SEED
from agd_kernels.reference.stochastic_round import philox4x32_10
from tests.models import assert_same_bits, clone_model, compute_grads, make_model, snapshot, train, two_groups
from tests.optim.registry import REGISTRY, entries
from tests.optim.test_checkpoint import save_load
from tests.optim.test_master_weights import SMALL_LR, displacement_error

pytestmark = pytest.mark.usefixtures("one_thread")

ROUNDINGS = 10_000


@pytest.mark.parametrize("counter, key, expected", [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
], ids=["zeros", "ones", "pi"])
def test_philox_known_answers(counter, key, expected):
    """The reference's Philox4x32-10 against Random123's known-answer vectors (kat_vectors)."""
    words = philox4x32_10(tuple(torch.tensor(c, dtype=torch.int64) for c in counter), key)
    assert tuple(int(w) for w in words) == expected


def _round(src: torch.Tensor, steps, backend: str, offset: int = 0) -> torch.Tensor:
    """src (1-D fp32) rounded once per step of `steps`: a (len(steps), n) bf16 tensor."""
    seed = torch.tensor(1234, dtype=torch.int64)
    out = []
    for step in steps:
        dst = torch.empty(src.shape, dtype=torch.bfloat16)
        ops.stochastic_round_([dst], [src], seed, [torch.tensor(float(step))], [offset], backend=backend)
        out.append(dst)
    return torch.stack(out)


def _neighbours(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The bf16 values next to fp32 `x` towards zero and away from it (equal when x is one)."""
    bits = x.view(torch.int32)
    low = (bits & ~0xFFFF).view(torch.float32)
    high = ((bits & ~0xFFFF) + 0x10000).view(torch.float32)
    return low, torch.where((bits & 0xFFFF) == 0, low, high)


# 1/3 and others: one or both neighbours far from x, across a power of two, negative, subnormal
VALUES = [1 / 3, -2.0 ** -20 * 1.7, 1.0 + 2.0 ** -9, 255.99, 1e-39, -3e-40, 1.0 - 2.0 ** -20]


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_mean_rounding_error_is_zero(backend):
    """10k roundings of each value (100 steps x 100 elements) give only its two neighbours, each as often as
    the distance to the other says: the mean is within 4 standard errors of the value."""
    x = torch.tensor(VALUES, dtype=torch.float32)
    src = x.repeat_interleave(100)
    rounded = _round(src, range(1, 101), backend).float().reshape(100, len(VALUES), 100)
    low, high = _neighbours(x)
    for i, v in enumerate(VALUES):
        r = rounded[:, i].reshape(-1).double()
        lo, hi = float(low[i]), float(high[i])
        assert set(r.unique().tolist()) <= {lo, hi}, f"{v}: results {r.unique().tolist()} not in {{{lo}, {hi}}}"
        p = (float(x[i]) - lo) / (hi - lo)
        stderr = abs(hi - lo) * (p * (1 - p) / r.numel()) ** 0.5
        error = float(r.mean()) - float(x[i])
        print(f"{v!r}: mean error {error:.3g}, standard error {stderr:.3g}, round-to-nearest error "
              f"{float(x[i].to(torch.bfloat16)) - float(x[i]):.3g}")
        assert abs(error) <= 4 * stderr, f"{v}: mean error {error} over {r.numel()} roundings, stderr {stderr}"


def test_one_value_many_steps():
    """The same element rounded at 10k steps: the step alone decorrelates the bits."""
    x = torch.tensor([1 / 3], dtype=torch.float32)
    r = _round(x, range(ROUNDINGS), "auto").double().reshape(-1)
    low, high = (float(t) for t in _neighbours(x))
    p = (float(x) - low) / (high - low)
    stderr = (high - low) * (p * (1 - p) / ROUNDINGS) ** 0.5
    assert abs(float(r.mean()) - float(x)) <= 4 * stderr


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_exact_values_and_specials_round_as_round_to_nearest(backend):
    """bf16 values (every finite exponent, zeros, infinities) come back unchanged; every NaN becomes the
    canonical quiet NaN 0x7FC0 (.to(torch.bfloat16) writes 0xFFFF on CPU, 0x7FFF on CUDA)."""
    exact = torch.randint(-32768, 32767, (100_000,), dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    exact = torch.cat([exact, torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan")],
                                           dtype=torch.bfloat16)])
    src = exact.float()
    got = _round(src, [3], backend)[0]
    want = torch.where(src.isnan(), 0x7FC0, src.to(torch.bfloat16).view(torch.int16))
    assert torch.equal(got.view(torch.int16), want.to(torch.int16))


def test_offsets_and_seed_select_the_bits():
    """Shifting the global index or changing the seed gives other bits; an offset makes a slice of a call
    draw exactly what the same elements drew in the whole call (how shards would match the unsharded run)."""
    src = torch.full((4096,), 1 / 3)
    whole = _round(src, [5], "auto")[0]
    tail = _round(src[1000:].clone(), [5], "auto", offset=1000)[0]
    assert torch.equal(whole[1000:], tail)
    assert not torch.equal(whole[:3096], tail)
    other = torch.empty_like(whole)
    ops.stochastic_round_([other], [src], torch.tensor(4321), [torch.tensor(5.0)], [0])
    assert not torch.equal(other, whole)


def test_fp16_destination_is_refused():
    with pytest.raises(TypeError, match=r"dst\[0\] has dtype .*Half.*bfloat16|dst\[0\] has dtype torch.float16"):
        ops.stochastic_round_([torch.empty(3, dtype=torch.float16)], [torch.ones(3)], torch.tensor(1),
                              [torch.tensor(1.0)], [0])


# ---------------------------------------------------------------------------------------------- optimizers
def _run(entry, base, dtype, steps, lr=None, **kw):
    model = clone_model(base, dtype)
    second = {k: v for k, v in entry.second_group.items() if k != "lr"}
    torch.manual_seed(0)  # the rounding seed is drawn at construction: the same in every run
    opt = entry.make(two_groups(model, second), lr=SMALL_LR[entry.name] if lr is None else lr, **kw)
    train(model, opt, range(steps))
    return model, opt


def _errors(entry, steps, lr=None):
    base = make_model(edge_cases=True)
    start = [p.detach().clone() for p in base.parameters()]
    runs = {name: list(_run(entry, base, dtype, steps, lr, **kw)[0].parameters()) for name, dtype, kw in (
        ("fp32", torch.float32, {}), ("nearest", torch.bfloat16, {}),
        ("stochastic", torch.bfloat16, dict(stochastic_rounding=True)))}
    return (displacement_error(runs["stochastic"], runs["fp32"], start),
            displacement_error(runs["nearest"], runs["fp32"], start))


#: 200 steps at learning rates where round-to-nearest loses most updates. Measured (relative displacement
#: error; to nearest, stochastic, fp32 master weights): SGD 0.49, 0.105, 0.011; AdamW 0.97, 0.37, 0.070.
#: Stochastic rounding keeps the updates on average but adds a random walk of about an ulp per step that a
#: master does not; the bound asks for half the error of rounding to nearest. Where updates are not small
#: against an ulp (AGD's normalised steps), rounding to nearest loses little and its error, at most half an
#: ulp per step, is the smaller one (variance ulp²/12 against about ulp²/6).
LONG_RUNS = {"SGD": 1e-3, "AdamW": 1e-4}


@pytest.mark.parametrize("name", LONG_RUNS)
def test_tracks_fp32_far_better_than_round_to_nearest(name):
    entry = REGISTRY[name]
    stochastic, nearest = _errors(entry, 200, LONG_RUNS[name])
    print(f"{name}, 200 steps, lr {LONG_RUNS[name]}: relative displacement error {stochastic:.4f} with "
          f"stochastic rounding, {nearest:.4f} rounding to nearest")
    assert stochastic < 0.5 * nearest, f"{name}: {stochastic:.4f} vs {nearest:.4f} rounding to nearest"


def _assert_layout(model, opt, what):
    """No master and no other fp32 copy of a parameter kept; state tensors of bf16 parameters are fp32."""
    for name, p in model.named_parameters():
        state = opt.state.get(p, {})
        assert MASTER not in state, f"{what}: {name} has a master"
        for key, value in state.items():
            if torch.is_tensor(value) and value.is_floating_point() and key not in ("step", ROUNDING_STEP):
                assert value.dtype == torch.float32, f"{what}: state {key!r} of {name} is {value.dtype}"


@pytest.mark.parametrize("entry", entries())
def test_checkpoint_round_trip_is_bitwise(entry):
    """3 steps, save, a new optimizer (with another seed) loads, 3 more steps == 6 steps uninterrupted: the
    seed travels in the param groups, the counters in the state."""
    base = make_model(edge_cases=True)
    whole_model, whole = _run(entry, base, torch.bfloat16, 6, stochastic_rounding=True)
    half_model, first = _run(entry, base, torch.bfloat16, 3, stochastic_rounding=True)
    _assert_layout(half_model, first, entry.name)
    saved = save_load({"model": half_model.state_dict(), "optimizer": first.state_dict()})
    assert all(isinstance(g[SEED], int) for g in saved["optimizer"]["param_groups"])

    resumed_model = make_model(seed=1, edge_cases=True).to(torch.bfloat16)
    resumed_model.load_state_dict(saved["model"])
    torch.manual_seed(99)  # the new optimizer draws another seed: the loaded one must replace it
    second = {k: v for k, v in entry.second_group.items() if k != "lr"}
    resumed = entry.make(two_groups(resumed_model, second), lr=SMALL_LR[entry.name], stochastic_rounding=True)
    resumed.load_state_dict(saved["optimizer"])
    _assert_layout(resumed_model, resumed, f"{entry.name} loaded")
    train(resumed_model, resumed, range(3, 6))
    assert_same_bits(snapshot(resumed_model, resumed), snapshot(whole_model, whole), f"{entry.name} resumed")


@pytest.mark.parametrize("entry", entries())
def test_found_inf_changes_nothing(entry):
    model, opt = _run(entry, make_model(edge_cases=True), torch.bfloat16, 1, stochastic_rounding=True)
    compute_grads(model, 1, scale=64.0)
    before = snapshot(model, opt)  # every counter included
    opt.grad_scale, opt.found_inf = torch.tensor(64.0), torch.tensor(1.0)
    opt.step()
    assert_same_bits(snapshot(model, opt), before, f"{entry.name} after a step with found_inf=1")


@pytest.mark.parametrize("entry", entries())
def test_fp32_parameters_unchanged(entry):
    """stochastic_rounding=True does nothing for fp32 parameters: the same bits, the same state."""
    base = make_model(edge_cases=True)
    on, on_opt = _run(entry, base, torch.float32, 3, stochastic_rounding=True)
    off, off_opt = _run(entry, base, torch.float32, 3)
    assert_same_bits(snapshot(on, on_opt), snapshot(off, off_opt), f"{entry.name} fp32 with stochastic_rounding")


def test_master_weights_win():
    model = make_model(edge_cases=True).to(torch.bfloat16)
    opt = ak.Adam(model.parameters(), lr=1e-3, master_weights=True, stochastic_rounding=True)
    compute_grads(model, 0)
    opt.step()
    for p in model.parameters():
        assert torch.equal(p, opt.state[p][MASTER].to(torch.bfloat16))


def test_per_group_and_mixed_dtypes():
    """Only bf16 parameters of stochastic_rounding groups are rounded stochastically: fp16 and fp32 ones
    and other groups keep their dtype's state and round to nearest."""
    w16, h16, w32, off = (torch.nn.Parameter(torch.randn(64, 3).to(dt))
                          for dt in (torch.bfloat16, torch.float16, torch.float32, torch.bfloat16))
    opt = ak.Adam([{"params": [w16, h16, w32]}, {"params": [off], "stochastic_rounding": False}], lr=1e-3,
                  stochastic_rounding=True)
    twin = [p.detach().clone() for p in (w16, h16, w32, off)]
    for p in (w16, h16, w32, off):
        p.grad = torch.ones_like(p)
    opt.step()
    assert [opt.state[p]["exp_avg"].dtype for p in (w16, h16, w32, off)] == [
        torch.float32, torch.float16, torch.float32, torch.bfloat16]
    # Adam's first step moves every element by lr: 1e-3 is below half an ulp for |w| > 0.25, so to-nearest
    # leaves those bits alone while stochastic rounding moves some of them.
    moved = lambda p, t: int((p != t).sum())  # noqa: E731
    big = twin[0].abs() > 0.5
    assert moved(w16[big], twin[0][big]) > 0
    assert moved(off[twin[3].abs() > 0.5], twin[3][twin[3].abs() > 0.5]) == 0


def test_switching_modes_moves_the_state():
    model, opt = _run(REGISTRY["Adam"], make_model(edge_cases=True), torch.bfloat16, 2)
    for group in opt.param_groups:
        group["stochastic_rounding"] = True
    train(model, opt, range(2, 4))
    _assert_layout(model, opt, "switched on")
    for group in opt.param_groups:
        group["stochastic_rounding"] = False
    train(model, opt, range(4, 5))
    for name, p in model.named_parameters():
        for key, value in opt.state.get(p, {}).items():
            if torch.is_tensor(value) and value.shape == p.shape:
                assert value.dtype == torch.bfloat16, f"switched off: state {key!r} of {name} is {value.dtype}"


def test_checkpoint_without_the_key_loads_as_off():
    model, opt = _run(REGISTRY["Adam"], make_model(edge_cases=True), torch.bfloat16, 2)
    old = copy.deepcopy(opt.state_dict())
    for group in old["param_groups"]:
        del group["stochastic_rounding"]
    twin_model = clone_model(model)
    twin = REGISTRY["Adam"].make(two_groups(twin_model), lr=1e-3, stochastic_rounding=True)
    twin.load_state_dict(old)
    assert all(g["stochastic_rounding"] is False for g in twin.param_groups)


# The Triton interpreter is slow: a tiny model, two steps, against the reference, to the bit.
def test_triton_backend_gives_the_reference_bits():
    torch.manual_seed(0)
    weights = [torch.randn(4, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)]
    results = {}
    for backend in ("torch", "triton"):
        torch.manual_seed(5)  # the same seed drawn
        params = [torch.nn.Parameter(w.to(torch.bfloat16)) for w in weights]
        opt = ak.SGD(params, lr=1e-3, backend=backend, stochastic_rounding=True)
        for k in range(2):
            gen = torch.Generator().manual_seed(k)
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen).to(torch.bfloat16)
            opt.step()
        results[backend] = [p.detach().clone() for p in params]
    for ref, got in zip(results["torch"], results["triton"]):
        assert torch.equal(got.view(torch.int16), ref.view(torch.int16))
