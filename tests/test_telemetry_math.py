"""The telemetry sums (reference), the statistics derived from them, the equilibrium prediction, and the
CSV/TensorBoard writer and plot (agd_kernels/telemetry.py; docs/telemetry.md)."""
from __future__ import annotations

import math
import sys
import types

import pytest
import torch

from agd_kernels.reference.telemetry import NUM_SUMS, telemetry_sums
from agd_kernels.telemetry import (Telemetry, TelemetryWriter, equilibrium_angular_update, layer_stats, plot_csv,
                                   read_csv)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_sums_are_the_five_dot_products_of_the_stored_values(dtype):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(37, 5, generator=gen).to(dtype)
    g = torch.randn(37, 5, generator=gen).to(dtype)
    w_new = (w.double() - 0.01 * g.double()).to(dtype)
    scale = torch.tensor(1024.0)
    got = telemetry_sums(w, g * 1024, w_new, grad_scale=scale)
    wd, gd, d = w.double().flatten(), g.double().flatten(), (w_new.double() - w.double()).flatten()
    want = torch.stack([(wd * wd).sum(), (gd * gd).sum(), (wd * gd).sum(), (d * d).sum(), (wd * d).sum()])
    assert got.dtype == torch.float64 and got.shape == (NUM_SUMS,)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def _rotated(w: torch.Tensor, angle: float, gen: torch.Generator) -> torch.Tensor:
    """w turned by `angle` radians in the plane of w and a random direction, its norm kept."""
    u = torch.randn(w.shape, generator=gen, dtype=torch.float64)
    u -= u.dot(w) / w.dot(w) * w
    u *= w.norm() / u.norm()
    return math.cos(angle) * w + math.sin(angle) * u


@pytest.mark.parametrize("angle", [1e-7, 1e-4, 0.3, 2.5])
def test_angular_update_is_the_angle_between_w_and_w_new_at_every_scale(angle):
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(1000, generator=gen, dtype=torch.float64) * 3
    w_new = _rotated(w, angle, gen)
    stats = layer_stats(telemetry_sums(w, torch.zeros_like(w), w_new)[None])
    assert stats["angular_update"].item() == pytest.approx(angle, rel=1e-6)
    if angle == 1e-7:  # why not arccos of the cosine: in fp32 the cosine rounds to 1 and the angle to 0
        cosine = (w.dot(w_new) / (w.norm() * w_new.norm())).float()
        assert torch.arccos(cosine.clamp(-1, 1)).item() == 0.0


def test_layer_stats_match_direct_computation():
    gen = torch.Generator().manual_seed(2)
    ws = [torch.randn(n, generator=gen, dtype=torch.float64) for n in (1, 7, 4097)]
    gs = [torch.randn(w.shape, generator=gen, dtype=torch.float64) for w in ws]
    news = [w - 0.1 * g + 0.01 * w for w, g in zip(ws, gs)]
    stats = layer_stats(torch.stack([telemetry_sums(w, g, n) for w, g, n in zip(ws, gs, news)]))
    for i, (w, g, n) in enumerate(zip(ws, gs, news)):
        d = n - w
        assert stats["weight_norm"][i].item() == pytest.approx(w.norm().item(), rel=1e-12)
        assert stats["grad_norm"][i].item() == pytest.approx(g.norm().item(), rel=1e-12)
        assert stats["update_norm"][i].item() == pytest.approx(d.norm().item(), rel=1e-12)
        assert stats["update_ratio"][i].item() == pytest.approx((d.norm() / w.norm()).item(), rel=1e-12)
        assert stats["grad_cosine"][i].item() == pytest.approx((w.dot(g) / (w.norm() * g.norm())).item(),
                                                              rel=1e-9, abs=1e-12)
        want = torch.arccos((w.dot(n) / (w.norm() * n.norm())).clamp(-1, 1)).item()
        assert stats["angular_update"][i].item() == pytest.approx(want, rel=1e-6, abs=1e-9)


def test_zero_weight_and_empty_tensor():
    w, g = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    empty = torch.zeros(0)
    stats = layer_stats(torch.stack([telemetry_sums(w, g, w - g), telemetry_sums(empty, empty, empty)]))
    assert stats["update_ratio"][0].item() == math.inf and math.isnan(stats["update_ratio"][1].item())
    assert stats["grad_cosine"].tolist() == [0.0, 0.0]
    assert stats["angular_update"].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match=r"sums must have shape \(tensors, 5\)"):
        layer_stats(torch.zeros(3, 4))


def _equilibrium_run(make_opt, steps: int, d: int = 300) -> float:
    """Mean angular update over the second half of a run on a scale-invariant loss: the gradient is
    isotropic noise orthogonal to w, scaled by 1/‖w‖."""
    gen = torch.Generator().manual_seed(3)
    w = torch.nn.Parameter(torch.randn(d, generator=gen, dtype=torch.float64))
    opt = make_opt([w])
    angles = []
    for t in range(steps):
        xi = torch.randn(d, generator=gen, dtype=torch.float64)
        old = w.detach().clone()
        xi -= xi.dot(old) / old.dot(old) * old
        w.grad = xi / old.norm()
        opt.step()
        if t >= steps // 2:
            angles.append(telemetry_sums(old, w.grad, w.detach()))
    return layer_stats(torch.stack(angles))["angular_update"].mean().item()


@pytest.mark.parametrize("case", ["sgd-momentum", "sgd", "adamw"])
def test_equilibrium_prediction_matches_a_simulated_scale_invariant_layer(case):
    # Weight decay large enough that equilibrium comes within ~(1 - momentum)/(lr * wd) = 20..100 steps.
    if case == "sgd-momentum":
        lr, wd, mu, decoupled = 0.1, 0.05, 0.9, False
        make = lambda p: torch.optim.SGD(p, lr=lr, weight_decay=wd, momentum=mu)  # noqa: E731
    elif case == "sgd":
        lr, wd, mu, decoupled = 0.1, 0.05, 0.0, False
        make = lambda p: torch.optim.SGD(p, lr=lr, weight_decay=wd)  # noqa: E731
    else:
        lr, wd, mu, decoupled = 1e-2, 0.5, 0.9, True
        make = lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=wd, betas=(mu, 0.999))  # noqa: E731
    measured = _equilibrium_run(make, steps=3000)
    predicted = equilibrium_angular_update(lr, wd, mu, decoupled=decoupled)
    assert measured == pytest.approx(predicted, rel=0.03)
    tensor_lr = equilibrium_angular_update(torch.tensor(lr, dtype=torch.float64), wd, mu, decoupled=decoupled)
    assert tensor_lr.item() == pytest.approx(predicted, rel=1e-12)


def test_equilibrium_rejects_bad_hyper_parameters():
    with pytest.raises(ValueError, match="momentum in"):
        equilibrium_angular_update(0.1, 1e-4, momentum=1.0)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        equilibrium_angular_update(0.1, -1.0)


def _telemetry(step: int) -> Telemetry:
    sums = torch.tensor([[4.0, 1.0, 0.0, 0.01 * step, 0.0], [9.0, 4.0, 1.0, 0.09, -0.01]], dtype=torch.float64)
    return Telemetry(["fc.weight", "fc.bias"], layer_stats(sums), {"eta": torch.tensor(0.5 * step)})


def test_telemetry_indexes_layers_by_name_and_flattens_to_rows():
    t = _telemetry(1)
    assert t["fc.bias"]["weight_norm"].item() == 3.0
    with pytest.raises(KeyError, match="no layer 'head'"):
        t["head"]
    rows = t.rows()
    assert ("fc.weight", "weight_norm", 2.0) in rows and ("", "eta", 0.5) in rows
    assert len(rows) == 2 * len(t.layers) + 1


def test_writer_writes_every_nth_step_and_the_plot_reads_it(tmp_path):
    path = tmp_path / "telemetry.csv"
    with TelemetryWriter(csv_path=path, every=2) as writer:
        written = [writer.write(step, _telemetry(step)) for step in range(1, 7)]
    assert written == [False, True, False, True, False, True]
    series = read_csv(path)
    steps, values = series["update_norm"]["fc.weight"]
    assert steps == [2, 4, 6]
    assert values == pytest.approx([math.sqrt(0.01 * s) for s in steps])
    assert series["eta"][""] == ([2, 4, 6], [1.0, 2.0, 3.0])
    out = plot_csv(path, tmp_path / "telemetry.png")
    assert out.stat().st_size > 1000
    with pytest.raises(ValueError, match="has no"):
        plot_csv(path, tmp_path / "x.png", stats=("trust_ratio",))


def test_writer_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="needs csv_path, tensorboard_dir or both"):
        TelemetryWriter()
    with pytest.raises(ValueError, match="every must be a positive int"):
        TelemetryWriter(csv_path=tmp_path / "a.csv", every=0)


def test_writer_sends_tensorboard_scalars_tagged_stat_slash_layer(tmp_path, monkeypatch):
    # tensorboard is not a dependency: a stand-in SummaryWriter records what the writer sends it
    sent, closed = [], []

    class FakeSummaryWriter:
        def __init__(self, log_dir):
            assert log_dir == str(tmp_path)

        def add_scalar(self, tag, value, step):
            sent.append((tag, value, step))

        def close(self):
            closed.append(True)

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeSummaryWriter))
    with TelemetryWriter(tensorboard_dir=tmp_path, every=3) as writer:
        for step in range(1, 4):
            writer.write(step, _telemetry(step))
    assert ("weight_norm/fc.bias", 3.0, 3) in sent and ("eta", 1.5, 3) in sent
    assert {step for _, _, step in sent} == {3} and closed == [True]
