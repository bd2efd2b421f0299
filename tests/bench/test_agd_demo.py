"""`python -m bench.agd_demo`: the harness follows the AGD paper's setup, the CLI writes its files, and
AGD trains a deep net with no learning rate (a small version of the demo's claim)."""
from __future__ import annotations

import csv
import math

import pytest
import torch

from agd_kernels.telemetry import read_csv
from bench import agd_demo


@pytest.fixture(scope="module")
def digits():
    return agd_demo.load_digits_split(seed=0)


def test_digits_split_and_standardisation(digits):
    x_train, y_train, x_test, y_test = digits
    assert (x_train.shape, x_test.shape) == ((1437, 64), (360, 64))  # 1,797 images, 80/20
    assert set(y_train.tolist()) == set(range(10))
    assert abs(x_train.mean().item()) < 1e-5 and x_train.std().item() == pytest.approx(1.0, rel=1e-5)


def test_fcn_is_bias_free_with_the_requested_depth():
    model = agd_demo.FCN(depth=4, width=16, d_in=64, classes=10)
    assert [tuple(p.shape) for p in model.parameters()] == [(16, 64), (16, 16), (16, 16), (10, 16)]
    assert agd_demo.FCN(depth=1, width=16, d_in=64, classes=10)(torch.zeros(2, 64)).shape == (2, 10)


def test_targets_are_scaled_one_hot():
    t = agd_demo.targets(torch.tensor([3, 0]), 10)
    assert t.shape == (2, 10) and t[0, 3] == pytest.approx(math.sqrt(10))
    assert t.sum(1).tolist() == pytest.approx([math.sqrt(10)] * 2) and t.count_nonzero() == 2


def test_agd_trains_a_deep_net_without_a_learning_rate(digits, tmp_path):
    """Depth 16, width 128, 8 epochs: loss 1.05 -> 0.26 and 88% train accuracy measured (chance: 10%)."""
    args = agd_demo.parser().parse_args(["--epochs", "8", "--width", "128", "--out", str(tmp_path)])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        history = agd_demo.train("AGD", 16, digits, args)
    finally:
        torch.set_num_threads(threads)
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["acc"][-1] >= 0.7
    steps = 8 * math.ceil(1437 / 128)
    assert len(history["eta"]) == steps and all(e > 0 for e in history["eta"])


def test_demo_cli_writes_plots_and_table(tmp_path, capsys):
    argv = ["--depths", "2", "3", "--width", "16", "--epochs", "1", "--out", str(tmp_path), "--threads", "1"]
    threads = torch.get_num_threads()
    try:
        assert agd_demo.main(argv) == 0
    finally:
        torch.set_num_threads(threads)  # the demo sets the process-wide thread count
    out = capsys.readouterr().out
    assert "| depth | optimizer | train loss | train acc % | test acc % | mean eta (last epoch) |" in out
    assert "claim 'AGD trains every depth with no learning rate'" in out
    with open(tmp_path / "agd_demo.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0][:2] == ["depth", "optimizer"]
    assert [(r[0], r[1]) for r in rows[1:]] == [(d, o) for d in ("2", "3") for o in agd_demo.OPTIMIZERS]
    for name in ("agd_demo_training.png", "agd_demo_eta.png", "agd_demo_telemetry.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # 1 epoch = 12 steps of 128 (1437 images): telemetry at steps 0, 5, 10, one row per layer and statistic
    for depth in (2, 3):
        series = read_csv(tmp_path / f"agd_demo_telemetry_depth{depth}.csv")
        assert series["eta"][""][0] == [0, 5, 10]
        assert sorted(series["update_ratio"]) == [f"layers.{i}.weight" for i in range(depth)]
        assert all(0 < r < 1 for _, values in series["update_ratio"].values() for r in values)


@pytest.mark.parametrize("argv", [["--depths", "0"], ["--epochs", "-1"], ["--width", "x"]])
def test_demo_rejects_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        agd_demo.main(argv)
    assert exc.value.code == 2 and f"{argv[0]}: expected an integer >= 1, got" in capsys.readouterr().err
