"""The reference AGD ops (backend="torch") against the independent oracle of tests/agd_oracle.py and the
identities of docs/agd.md §7: target scale, eta formula, per-tap sums of squares, the update with its
zero-norm, follower, gain, grad_scale and found_inf rules, and argument errors."""
from __future__ import annotations

import itertools
import math
from decimal import Decimal, localcontext

import pytest
import torch

from agd_kernels import ops
from agd_kernels.reference.agd import eta_from_g, target_scale
from tests.agd_oracle import agd_oracle, rounded, sv_of
from tests.tolerance import DTYPE_IDS, EPS, assert_within_2x_reference

BACKEND = "torch"
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
FLT_TRUE_MIN = 2.0 ** -149  # spacing of fp32 denormals


def exact_eta(G: float) -> Decimal:
    """log((1 + √(1 + 4G)) / 2) to about 50 significant digits: an oracle with no rounding to speak of.
    For small G, 1 + 4G needs |log10 G| more digits to keep 4G at all."""
    d = Decimal(G)
    with localcontext() as ctx:
        ctx.prec = 60 + max(0, -d.adjusted())
        return +((1 + (1 + 4 * d).sqrt()) / 2).ln()


def slot_table(shapes, owners):
    """(slice_sv, slice_start, slice_count, depth): weights get their taps in order, followers their owner's."""
    where, sv, pos = {}, [], 0
    for i, (shape, owner) in enumerate(zip(shapes, owners)):
        if owner is None:
            taps = math.prod(shape[2:])
            where[i] = (pos, taps)
            sv += [sv_of(shape)] * taps
            pos += taps
    starts = [where[i if o is None else o][0] for i, o in enumerate(owners)]
    counts = [where[i if o is None else o][1] for i, o in enumerate(owners)]
    return torch.tensor(sv, dtype=torch.float32), starts, counts, len(where)


def agd_step(params, grads, owners, gain=1.0, grad_scale=None, found_inf=None):
    """The two reference ops as AGD.step() chains them: per-tap sums of the weights, then the update."""
    sv, starts, counts, depth = slot_table([p.shape for p in params], owners)
    sumsq = torch.empty(sv.numel(), dtype=torch.float32)
    ops.slice_sumsq_([g for g, o in zip(grads, owners) if o is None], sumsq, backend=BACKEND)
    scale = None if grad_scale is None else torch.tensor(grad_scale)
    found = None if found_inf is None else torch.tensor(found_inf)
    return ops.agd_step_(params, grads, sumsq, sv, starts, counts, depth=depth, gain=gain, grad_scale=scale,
                         found_inf=found, backend=BACKEND)


# (shapes, owners): owners[i] is None for a weight, else the index of the weight it follows.
CASES = {
    # out > in, out < in, one element, (0, 3) = Linear(3, 0) and (5, 0) = Linear(0, 5): sv = 0
    "linear": ([(7, 5), (3, 7), (1, 1), (0, 3), (5, 0)], [None] * 5),
    # 3x3, 1x1, 7x7, non-square 2x3 kernel, grouped conv (in/groups = 2), Conv1d, Conv3d
    "conv": ([(4, 3, 3, 3), (6, 2, 1, 1), (2, 3, 7, 7), (3, 5, 2, 3), (6, 2, 3, 3), (5, 4, 3), (2, 3, 2, 2, 2)],
             [None] * 7),
    # biases, a norm scale and a 0-d scalar following the weight before them
    "followers": ([(7, 5), (7,), (3, 4, 3, 3), (3,), (3,), (), (2, 3)], [None, 0, None, 2, 2, 2, None]),
}


def random_grads(shapes, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]


# ---------------------------------------------------------------- target scale and eta
@pytest.mark.parametrize("shape, expected", [
    ((10, 256), math.sqrt(10 / 256)),          # classifier 256 -> 10: 0.198 (spec §2)
    ((256, 3072), math.sqrt(256 / 3072)),      # CIFAR input layer: 0.289
    ((64, 32, 3, 3), math.sqrt(2) / 3),        # conv: sqrt(out/in) / sqrt(kh*kw)
    ((6, 2, 1, 1), math.sqrt(3)),              # 1x1 conv = linear
    ((5, 4, 3), math.sqrt(5 / 12)),            # Conv1d: extension (decision 2)
    ((2, 3, 2, 2, 2), math.sqrt(2 / 24)),      # Conv3d
    ((0, 3), 0.0), ((5, 0), 0.0),              # no elements
])
def test_target_scale(shape, expected):
    assert math.isclose(target_scale(shape), expected, rel_tol=4 * EPS[torch.float64])


def test_target_scale_rejects_rank_below_2():
    with pytest.raises(ValueError, match=r"rank >= 2.*\(7,\)"):
        target_scale((7,))


def test_eta_fp64_matches_closed_form():
    G = torch.tensor([0.0, 1e-300, 1e-12, 1e-6, 0.1, 1.0, 7.5, 1e6, 1e300], dtype=torch.float64)
    eta = eta_from_g(G)
    assert eta[0] == 0  # G = 0 gives eta = 0 exactly
    for g, e in zip(G.tolist()[1:], eta.tolist()[1:]):
        exact = exact_eta(g)
        # sqrt, two adds, a divide and log1p, each within an ulp, through a condition number <= 1
        assert abs(Decimal(e) - exact) <= Decimal(6 * EPS[torch.float64]) * exact, (g, e, exact)


def test_eta_fp32_within_ulps_over_whole_range():
    G = torch.logspace(-44, 38.5, 1500, dtype=torch.float64).float()
    G = torch.cat([torch.tensor([0.0, torch.finfo(torch.float32).max]), G[torch.isfinite(G)]])
    eta = eta_from_g(G)
    assert eta[0] == 0
    for g, e in zip(G.double().tolist()[1:], eta.double().tolist()[1:]):
        exact = exact_eta(g)
        # 6 fp32 roundings as above; a denormal eta (G < 1.2e-38) also loses up to one denormal spacing
        bound = Decimal(6 * EPS[torch.float32]) * exact + Decimal(FLT_TRUE_MIN)
        assert abs(Decimal(e) - exact) <= bound, (g, e, exact)


def test_eta_agrees_with_spec_log1p_form():
    # The spec writes log1p(2G / (1 + sqrt(1 + 4G))); it is exact algebra away from fp32 overflow of 4G.
    G = torch.logspace(-30, 37, 400, dtype=torch.float64).float()
    spec = torch.log1p(2 * G / (1 + torch.sqrt(1 + 4 * G)))
    ours = eta_from_g(G)
    # both within 6 ulps of the exact value (test above), so within 12 of each other
    assert ((ours.double() - spec.double()).abs() <= 12 * EPS[torch.float32] * spec.double()).all()


def test_eta_small_g_is_g_and_large_g_is_finite():
    tiny = torch.tensor(1e-12)
    assert eta_from_g(tiny) == tiny  # eta = G - G^2 + ...: exact in fp32 below G ~ 6e-8
    big = eta_from_g(torch.tensor([1e38, 3e38]))
    assert torch.isfinite(big).all() and (big > 43).all()  # 0.5·log(1e38) = 43.7


# ---------------------------------------------------------------- per-tap sums of squares
SUMSQ_SHAPES = [(7, 5), (4, 3, 3, 3), (3, 5, 2, 3), (5, 4, 3), (2, 3, 2, 2, 2), (6, 2, 1, 1), (4097, 1), (9,),
                (), (0, 3), (3, 4, 0), (1, 1)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_slice_sumsq_matches_float64_per_tap(dtype):
    tensors = random_grads(SUMSQ_SHAPES, dtype, seed=1)
    expected, sizes = [], []
    for t in tensors:
        x = t.double()
        # one slice per position of the trailing dims, row-major; rank <= 1 is one slice
        slices = [x[(slice(None), slice(None), *index)] for index in itertools.product(*map(range, x.shape[2:]))] \
            if x.dim() >= 2 else [x]
        expected += [(s ** 2).sum().item() for s in slices]
        sizes += [s.numel() for s in slices]
    exact = torch.tensor(expected, dtype=torch.float64)
    out = torch.full((len(expected),), float("nan"), dtype=torch.float32)
    ops.slice_sumsq_(tensors, out, backend=BACKEND)
    # Worst-case fp32 summation of m non-negative squares: (m - 1) roundings of the sum plus one per
    # square, each at most eps of the exact sum (Higham, Accuracy and Stability, eq. 4.4).
    bound = (torch.tensor(sizes, dtype=torch.float64) + 1) * EPS[torch.float32] * exact
    assert ((out.double() - exact).abs() <= bound).all(), (out, exact)


def test_slice_sumsq_wrong_out_size_raises_and_writes_nothing():
    out = torch.full((3,), -1.0)
    with pytest.raises(ValueError, match="out has 3 slots but the tensors have 10 slices"):
        ops.slice_sumsq_([torch.ones(2, 2), torch.ones(2, 2, 3, 3)], out, backend=BACKEND)
    assert (out == -1).all()


# ---------------------------------------------------------------- the update against the oracle
@pytest.mark.parametrize("gain", [1.0, 3.7])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_step_matches_float64_oracle(dtype, case, gain):
    shapes, owners = CASES[case]
    grads = random_grads(shapes, dtype, seed=2)
    if case == "conv":  # zero taps: (1, 1) of the 3x3 conv and (0, 2) of the 2x3 kernel
        grads[0][:, :, 1, 1] = 0
        grads[3][:, :, 0, 2] = 0
    # Parameters start at 0, so the new value is -update itself: rounding of p cannot hide update errors.
    params = [torch.zeros(s, dtype=dtype) for s in shapes]
    gains = [gain] * len(shapes)
    oracle = agd_oracle(params, grads, owners, gains)
    same_dtype = agd_oracle(params, grads, owners, gains, math_dtype=torch.float32)
    eta, G = agd_step(params, grads, owners, gain=gain)
    for i, (got, ref, exact) in enumerate(zip(params, rounded(same_dtype, [dtype] * len(params)), oracle.params)):
        assert_within_2x_reference(got, ref, exact, name=f"{case} tensor {i} {tuple(got.shape)}")
    assert eta.dtype == G.dtype == torch.float32 and eta.dim() == G.dim() == 0
    assert_within_2x_reference(G, torch.tensor(same_dtype.G), torch.tensor(oracle.G), name="G")
    assert_within_2x_reference(eta, torch.tensor(same_dtype.eta, dtype=torch.float32), torch.tensor(oracle.eta),
                               name="eta")


def test_gain_scales_the_update_only():
    shapes, owners = CASES["followers"]
    grads = random_grads(shapes, torch.float32, seed=3)
    one = [torch.zeros(s) for s in shapes]
    three = [torch.zeros(s) for s in shapes]
    eta1, G1 = agd_step(one, grads, owners, gain=1.0)
    eta3, G3 = agd_step(three, grads, owners, gain=3.0)
    assert eta1 == eta3 and G1 == G3
    for a, b in zip(one, three):
        # 3·(step·c) vs (3·step)·c: a couple of fp32 roundings apart
        assert torch.allclose(b, 3 * a, rtol=4 * EPS[torch.float32], atol=0)


def test_grad_scale_power_of_two_is_exact():
    shapes, owners = CASES["followers"]
    grads = random_grads(shapes, torch.float32, seed=4)
    plain = [torch.zeros(s) for s in shapes]
    scaled = [torch.zeros(s) for s in shapes]
    eta, G = agd_step(plain, grads, owners)
    eta_s, G_s = agd_step(scaled, [g * 1024 for g in grads], owners, grad_scale=1024.0)
    # Scaling by 2^10 is exact in every product, square, square root and quotient involved.
    assert eta_s == eta and G_s == G
    assert all(torch.equal(a, b) for a, b in zip(plain, scaled))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_grad_scale_matches_oracle_on_unscaled_gradients(dtype):
    shapes, owners = CASES["conv"]
    raw = random_grads(shapes, torch.float64, seed=5)
    grads = [(g * 1000).to(dtype) for g in raw]
    params = [torch.zeros(s, dtype=dtype) for s in shapes]
    gains = [1.0] * len(shapes)
    oracle = agd_oracle(params, grads, owners, gains, grad_scale=1000.0)
    same_dtype = agd_oracle(params, grads, owners, gains, math_dtype=torch.float32, grad_scale=1000.0)
    eta, G = agd_step(params, grads, owners, grad_scale=1000.0)
    for got, ref, exact in zip(params, rounded(same_dtype, [dtype] * len(params)), oracle.params):
        assert_within_2x_reference(got, ref, exact)
    assert_within_2x_reference(G, torch.tensor(same_dtype.G), torch.tensor(oracle.G), name="G")


@pytest.mark.parametrize("bad", [0.0, float("nan"), float("inf")])
def test_found_inf_changes_nothing(bad):
    shapes, owners = CASES["followers"]
    grads = random_grads(shapes, torch.float32, seed=6)
    grads[0][0, 0] = bad  # what a GradScaler would have detected
    params = random_grads(shapes, torch.float32, seed=7)
    before = [p.clone() for p in params]
    eta, G = agd_step(params, grads, owners, grad_scale=8.0, found_inf=1.0)
    assert eta == 0 and G == 0
    assert all(torch.equal(a, b) for a, b in zip(params, before))


# ---------------------------------------------------------------- zero, tiny and non-finite gradients
def test_zero_norm_slices_get_zero_update_even_with_large_gain():
    # gain·eta/L > 1 here: the reference's nan_to_num(FLT_MAX)·scale overflows to inf and inf·0 = NaN.
    shapes, owners = [(4, 3, 3, 3), (4,), (5, 2), (5,)], [None, 0, None, 2]
    grads = random_grads(shapes, torch.float32, seed=8)
    grads[0][:, :, 2, 0] = 0
    grads[2].zero_()  # the whole weight: its follower gets a zero update too, whatever its own gradient
    params = random_grads(shapes, torch.float32, seed=9)
    before = [p.clone() for p in params]
    eta, _ = agd_step(params, grads, owners, gain=10.0)
    assert 10.0 * eta / 2 > 1
    assert all(torch.isfinite(p).all() for p in params)
    assert torch.equal(params[0][:, :, 2, 0], before[0][:, :, 2, 0])
    assert not torch.equal(params[0][:, :, 0, 0], before[0][:, :, 0, 0])
    assert torch.equal(params[2], before[2]) and torch.equal(params[3], before[3])


def test_all_zero_gradients_give_zero_eta_and_no_change():
    shapes, owners = CASES["followers"]
    grads = [torch.zeros(s) for s in shapes]
    params = random_grads(shapes, torch.float32, seed=10)
    before = [p.clone() for p in params]
    eta, G = agd_step(params, grads, owners)
    assert eta == 0 and G == 0
    assert all(torch.equal(a, b) for a, b in zip(params, before))


def test_tiny_gradients_never_give_a_huge_step():
    # |g| = 1e-30: every square underflows (< 1.4e-45), the sum is exactly 0, so the update is 0
    # (the reference would multiply FLT_MAX into the nonzero gradient: a ~3e8·g step; spec §4 item 3).
    params = [torch.zeros(6, 4), torch.zeros(3, 6)]
    grads = [torch.full((6, 4), 1e-30), torch.randn(3, 6)]
    agd_step(params, grads, [None, None])
    assert torch.equal(params[0], torch.zeros(6, 4))
    # |g| = 1e-20: squares are fp32 denormals (1e-40), the norm is tiny but nonzero and the update has
    # the normalised size gain·eta/L·sv, up to the denormal spacing of each square.
    params = [torch.zeros(6, 4), torch.zeros(3, 6)]
    grads = [torch.full((6, 4), 1e-20), torch.randn(3, 6)]
    eta, _ = agd_step(params, grads, [None, None])
    target = eta.item() / 2 * sv_of((6, 4))
    sumsq = 24 * 1e-40
    rel = 24 * FLT_TRUE_MIN / sumsq + 8 * EPS[torch.float32]  # per-square denormal rounding, then normal ops
    assert math.isclose(params[0].double().norm().item(), target, rel_tol=rel)


def test_nan_and_huge_gradients_propagate():
    # Without found_inf, non-finite statistics are not hidden (decision 8): eta becomes NaN and every
    # slice with a nonzero gradient turns NaN, as in the reference.
    shapes, owners = [(4, 3), (4,), (2, 3, 2, 2)], [None, 0, None]
    for poison in (float("nan"), 1e20):  # 1e20² overflows fp32: sum of squares inf, G inf
        grads = random_grads(shapes, torch.float32, seed=11)
        grads[0][1, 2] = poison
        params = [torch.zeros(s) for s in shapes]
        eta, G = agd_step(params, grads, owners)
        assert eta.isnan() and not torch.isfinite(G)
        assert all(p.isnan().all() for p in params)


# ---------------------------------------------------------------- bad arguments
def _valid_args():
    params = [torch.zeros(3, 2), torch.zeros(3), torch.zeros(2, 2, 3)]
    grads = [torch.ones(3, 2), torch.ones(3), torch.ones(2, 2, 3)]
    sv = torch.ones(4)
    sumsq = torch.ones(4)
    return dict(params=params, grads=grads, sumsq=sumsq, slice_sv=sv, slice_start=[0, 0, 1], slice_count=[1, 1, 3],
                depth=2)


@pytest.mark.parametrize("change, message", [
    (dict(grads=[torch.ones(3, 2)]), "grads has 1 entries; expected one per parameter \\(3\\)"),
    (dict(slice_start=[0, 0]), "slice_start has 2 entries"),
    (dict(depth=0), "depth must be >= 1"),
    (dict(slice_sv=torch.ones(5)), "sumsq and slice_sv must be 1-D with one entry per slot"),
    (dict(slice_count=[1, 1, 2]), "slice_count\\[2\\] = 2; a weight of shape \\(2, 2, 3\\) has 3 taps"),
    (dict(slice_start=[0, 0, 2]), "slots \\[2, 5\\) of params\\[2\\] lie outside sumsq \\(4 slots\\)"),
])
def test_bad_arguments_raise_naming_them_and_change_nothing(change, message):
    args = dict(_valid_args(), **change)
    before = [p.clone() for p in args["params"]]
    with pytest.raises(ValueError, match=message):
        ops.agd_step_(args["params"], args["grads"], args["sumsq"], args["slice_sv"], args["slice_start"],
                      args["slice_count"], depth=args["depth"], gain=1.0, backend=BACKEND)
    assert all(torch.equal(a, b) for a, b in zip(args["params"], before))


def test_grad_shape_mismatch_names_the_tensor():
    args = _valid_args()
    args["grads"][1] = torch.ones(4)
    with pytest.raises(ValueError, match=r"grads\[1\] has shape \(4,\); expected params\[1\]'s \(3,\)"):
        ops.agd_step_(args["params"], args["grads"], args["sumsq"], args["slice_sv"], args["slice_start"],
                      args["slice_count"], depth=2, gain=1.0, backend=BACKEND)
