"""`python -m bench`: argument handling, output files, and the pieces its numbers rest on (presets,
bytes per parameter, quantiles, interleaving, the authors' reference providers). Tiny sizes only."""
from __future__ import annotations

import csv
import math
import re

import pytest
import torch

import agd_kernels
from bench import cli, presets
from bench.authors_agd import AuthorsAGD
from bench.authors_yellowfin import AuthorsYellowFin, single_step_momentum
from bench.providers import ALGORITHMS
from bench.report import CSV_FIELDS
from bench.timing import interleaved, quantile, summary

TINY = ["--shapes", "[[9, 7], [5], [4, 3, 3, 3]]", "--reps", "2", "--warmup", "1", "--bandwidth-mib", "1",
        "--device", "cpu"]


def tiny_model():
    """A --model factory for the tests: shapes (6, 4), (6,), (3, 6)."""
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3, bias=False))


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------ parameter sets
def test_presets_have_the_published_sizes():
    gpt2 = presets.preset("gpt2-small")
    assert (len(gpt2.shapes), gpt2.numel) == (148, 124_439_808)  # HF GPT2LMHeadModel, lm_head tied
    assert (len(gpt2.matrices().shapes), gpt2.matrices().numel) == (50, 124_318_464)
    resnet = presets.preset("resnet50")
    assert (len(resnet.shapes), resnet.numel) == (161, 25_557_032)  # torchvision resnet50
    small = presets.preset("many-small")
    assert len(small.shapes) >= 600
    assert all(1_000 <= math.prod(s) < 10_000 for s in small.shapes)  # "a few thousand elements"


def test_shapes_json_inline_and_from_file(tmp_path):
    assert presets.from_json("[[3, 4], 5, [0]]").shapes == ((3, 4), (5,), (0,))
    path = tmp_path / "shapes.json"
    path.write_text("[[2, 2, 1, 1]]")
    assert presets.from_json(str(path)).shapes == ((2, 2, 1, 1),)


def test_model_factory_gives_its_parameter_shapes():
    pset = presets.from_model("tests.bench.test_cli:tiny_model")
    assert pset.shapes == ((6, 4), (6,), (3, 6))


NO_GPU = not torch.cuda.is_available()


@pytest.mark.parametrize("argv,message", [
    (["--preset", "nope"], "invalid choice: 'nope'"),
    (["--algorithms", "adamax"], "invalid choice: 'adamax'"),
    (["--dtypes", "float64"], "invalid choice: 'float64'"),
    (["--reps", "0"], "--reps: expected an integer >= 1, got 0"),
    (["--bandwidth-mib", "-3"], "--bandwidth-mib: expected a number > 0"),
    (["--shapes", "[[2, -1]]"], "--shapes entry 0 must be a list of non-negative ints"),
    (["--shapes", "{oops"], "--shapes must be a JSON list of shapes"),
    (["--shapes", "[]"], "--shapes must be a non-empty JSON list"),
    (["--model", "no_colon"], "--model must look like pkg.module:factory"),
    (["--model", "no_such_module_xyz:f"], "--model 'no_such_module_xyz:f': cannot load"),
    (["--model", "tests.bench.test_cli:read_csv"], "read_csv() raised TypeError: read_csv() missing 1 required"),
    (["--device", "cpu", "--backends", "cuda"], "--backends cuda: does not run on cpu tensors"),
] + ([(["--device", "cuda"], "--device cuda: no CUDA GPU is visible")] if NO_GPU else []))
def test_bad_arguments_exit_2_naming_the_option(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv + ["--out", str(tmp_path)])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "throughput.csv").exists()


# ------------------------------------------------------------------ a whole run
def test_run_prints_table_and_writes_csv_and_chart(tmp_path, capsys):
    argv = TINY + ["--algorithms", "agd", "adam", "sgd", "rmsprop", "--backends", "torch", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "machine:" in out and "a.sum() (read-only, 'rd') over 1 MiB" in out
    for line in ("agd        agd_kernels[torch]", "agd        authors", "adam       torch-fused",
                 "rmsprop    torch-foreach"):
        assert line in out
    assert "torch-fused: " in out and "rmsprop (torch.optim has no fused=True for it)" in out
    # each backend also runs with telemetry=True, and the cost is printed
    for algo in ("agd", "adam"):
        assert re.search(rf"shapes, float32, {algo}, agd_kernels\[torch\]: [\d.]+ -> [\d.]+ ms/step \([+-][\d.]+%\)",
                         out), out

    rows = read_csv(tmp_path / "throughput.csv")
    assert list(rows[0]) == CSV_FIELDS
    got = {(r["algorithm"], r["provider"]): r for r in rows}
    # agd: kernels (+ telemetry) + authors + floor; adam, sgd: kernels (+ telemetry) + foreach + fused; rmsprop:
    # kernels (+ telemetry) + foreach
    assert set(got) == {("agd", "agd_kernels[torch]"), ("agd", "agd_kernels[torch]+tel"), ("agd", "authors"),
                        ("agd", "floor"),
                        ("adam", "agd_kernels[torch]"), ("adam", "agd_kernels[torch]+tel"), ("adam", "torch-foreach"),
                        ("adam", "torch-fused"), ("sgd", "agd_kernels[torch]"), ("sgd", "agd_kernels[torch]+tel"),
                        ("sgd", "torch-foreach"), ("sgd", "torch-fused"), ("rmsprop", "agd_kernels[torch]"),
                        ("rmsprop", "agd_kernels[torch]+tel"), ("rmsprop", "torch-foreach")}
    for r in rows:
        assert r["status"] == "ok", r
        assert r["torch"] == torch.__version__ and r["git_commit"] and r["cpu"] and r["run_id"]
        n = 9 * 7 + 4 * 3 * 3 * 3 + (5 if r["algorithm"] != "agd" else 0)  # AGD steps matrices only
        assert int(r["n_params"]) == n
        assert int(r["bytes_per_param"]) == {"agd": 16, "adam": 28, "sgd": 20, "rmsprop": 20}[r["algorithm"]]
        med, p20, p80 = float(r["median_ms"]), float(r["p20_ms"]), float(r["p80_ms"])
        assert 0 < p20 <= med <= p80
        gbs = int(r["bytes_per_param"]) * n / (med / 1e3) / 1e9
        assert float(r["gb_per_s"]) == pytest.approx(gbs, rel=1e-3)
        assert float(r["pct_bandwidth"]) == pytest.approx(100 * gbs / float(r["bandwidth_gb_per_s"]), rel=1e-2)
        assert float(r["read_bandwidth_gb_per_s"]) > 0  # the read-only probe ran in the same rotation
    # every row carries its ratio to each baseline of its case, and the ratios agree with the medians
    speedups = dict(kv.split("=") for kv in got[("adam", "agd_kernels[torch]")]["speedup_vs"].split(";"))
    assert set(speedups) == {"torch-foreach", "torch-fused"}
    for peer, ratio in speedups.items():
        expected = float(got[("adam", peer)]["median_ms"]) / float(got[("adam", "agd_kernels[torch]")]["median_ms"])
        assert float(ratio) == pytest.approx(expected, rel=1e-3)
    assert got[("agd", "agd_kernels[torch]")]["speedup_vs"].startswith("authors=")
    assert (tmp_path / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert cli.main(argv) == 0  # a second run appends below the same header
    again = read_csv(tmp_path / "throughput.csv")
    assert len(again) == 2 * len(rows)
    assert sum(1 for line in (tmp_path / "throughput.csv").read_text().splitlines() if line.startswith("run_id")) == 1


def test_read_heavy_steps_are_reported_against_their_floor(tmp_path, capsys):
    """AGD, LAMB and YellowFin get a same-bytes floor row and a 'vs floor' ratio; other steps say why not."""
    assert cli.main(TINY + ["--algorithms", "agd", "lamb", "yellowfin", "adam", "--backends", "torch",
                            "--providers", "floor", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "vs floor" in out.splitlines()[out.splitlines().index("== shapes, float32") + 1]
    assert "floor: adam (no same-bytes floor: not a read-heavy step)" in out
    rows = {(r["algorithm"], r["provider"]): r for r in read_csv(tmp_path / "throughput.csv")}
    assert set(rows) == {(a, p) for a in ("agd", "lamb", "yellowfin")
                         for p in ("agd_kernels[torch]", "agd_kernels[torch]+tel", "floor")} \
        | {("adam", "agd_kernels[torch]"), ("adam", "agd_kernels[torch]+tel")}
    for algo, bytes_per_param in (("agd", 16), ("lamb", 44), ("yellowfin", 36)):
        floor, kernels = rows[(algo, "floor")], rows[(algo, "agd_kernels[torch]")]
        assert floor["status"] == "ok" and int(floor["bytes_per_param"]) == bytes_per_param
        assert floor["n_params"] == kernels["n_params"]  # the same element count (AGD: matrices only)
        (ratio,) = [kv.split("=")[1] for kv in kernels["speedup_vs"].split(";") if kv.startswith("floor=")]
        assert float(ratio) == pytest.approx(float(floor["median_ms"]) / float(kernels["median_ms"]), rel=1e-3)
    assert rows[("adam", "agd_kernels[torch]")]["speedup_vs"] == ""


@pytest.mark.parametrize("algo", ["agd", "lamb", "yellowfin"])
def test_floor_step_allocates_nothing_and_stays_bounded(algo):
    """The floor moves bytes only: its buffers are made once, and 50 steps keep them finite and
    away from denormals (which would slow the CPU and falsify the floor)."""
    from bench.providers import FLOOR, PROVIDERS

    p = torch.nn.Parameter(torch.randn(40, 30))
    p.grad = torch.randn(40, 30)
    step = PROVIDERS[FLOOR].build(ALGORITHMS[algo], [p])
    buffers = [c.cell_contents for c in step.__closure__ if isinstance(c.cell_contents, dict)][0]
    pointers = {k: b.data_ptr() for k, b in buffers.items()}
    for _ in range(50):
        step()
    assert {k: b.data_ptr() for k, b in buffers.items()} == pointers
    for b in buffers.values():
        assert b.numel() == 1200 and torch.isfinite(b).all() and (b.abs() > 1e-30).float().mean() > 0.99


def test_quick_keeps_torch_foreach_only_where_torch_has_no_fused(tmp_path, capsys):
    """--quick (here on tiny shapes, which replace its presets) drops the slow foreach baseline where
    the fused one exists, and says so."""
    assert cli.main(TINY + ["--quick", "--algorithms", "adam", "rmsprop", "--backends", "torch",
                            "--out", str(tmp_path)]) == 0
    assert "adam (--quick compares with torch-fused, the faster torch baseline)" in capsys.readouterr().out
    rows = {(r["algorithm"], r["provider"]) for r in read_csv(tmp_path / "throughput.csv")}
    assert rows == {("adam", "agd_kernels[torch]"), ("adam", "agd_kernels[torch]+tel"), ("adam", "torch-fused"),
                    ("rmsprop", "agd_kernels[torch]"), ("rmsprop", "agd_kernels[torch]+tel"), ("rmsprop", "torch-foreach")}


def test_missing_optimizer_is_listed_as_unavailable(tmp_path, capsys, monkeypatch):
    monkeypatch.delattr(agd_kernels, "LAMB", raising=False)
    # torch-fused has no LAMB: with the floor left out, the missing class leaves nothing to run
    assert cli.main(TINY + ["--algorithms", "lamb", "--backends", "torch", "--providers", "torch-fused",
                            "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "lamb       agd_kernels[torch]  unavailable: agd_kernels.LAMB does not exist in this build" in out
    assert "no chart (nothing ran)" in out
    rows = {(r["provider"], r["status"], r["median_ms"]) for r in read_csv(tmp_path / "throughput.csv")}
    assert rows == {("agd_kernels[torch]", "unavailable", ""), ("agd_kernels[torch]+tel", "unavailable", "")}


def test_provider_that_raises_is_reported_as_failed(tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded\nsecond line")

    monkeypatch.setattr(torch.optim, "Adagrad", broken)
    assert cli.main(TINY + ["--algorithms", "adagrad", "--providers", "torch-foreach", "--backends", "torch",
                            "--out", str(tmp_path)]) == 0
    assert "adagrad    torch-foreach       failed: RuntimeError: kernel exploded" in capsys.readouterr().out
    rows = {r["provider"]: r["status"] for r in read_csv(tmp_path / "throughput.csv")}
    assert rows == {"agd_kernels[torch]": "ok", "agd_kernels[torch]+tel": "ok", "torch-foreach": "failed"}


def test_csv_from_another_version_is_not_appended_to(tmp_path, capsys):
    (tmp_path / "throughput.csv").write_text("when,what\n1,2\n")
    with pytest.raises(SystemExit) as exc:
        cli.main(TINY + ["--out", str(tmp_path)])
    assert exc.value.code == 2 and "move it away or pass another --out" in capsys.readouterr().err
    assert (tmp_path / "throughput.csv").read_text() == "when,what\n1,2\n"


# ------------------------------------------------------------------ what the numbers rest on
def test_minimum_bytes_per_parameter():
    fp32 = {name: a.bytes_per_param(torch.float32) for name, a in ALGORITHMS.items()}
    # docs/torch_optim_semantics.md §9: Adam 28, SGD momentum 20, AGD 16, YellowFin 36, LAMB 11 passes
    assert fp32 == dict(agd=16, adam=28, adamw=28, sgd=20, rmsprop=20, adagrad=20, lamb=44, yellowfin=36)
    assert ALGORITHMS["adam"].bytes_per_param(torch.bfloat16) == 14
    assert ALGORITHMS["sgd"].bytes_per_param(torch.float16) == 10


def test_quantiles_interpolate_like_numpy():
    assert quantile([5.0, 1.0, 3.0, 2.0, 4.0], 0.2) == pytest.approx(1.8)
    assert summary([1.0, 2.0, 3.0, 4.0]) == pytest.approx((2.5, 1.6, 3.4))
    assert summary([7.0]) == (7.0, 7.0, 7.0)


def test_interleaving_rotates_the_order_each_repetition():
    calls = []

    class Clock:
        def time(self, fn):
            fn()
            return 1.0

    fns = {name: (lambda n=name: calls.append(n)) for name in "abc"}
    reps = []
    times = interleaved(fns, 4, Clock(), lambda: reps.append(len(calls)))
    assert calls == list("abc" "bca" "cab" "abc")
    assert reps == [3, 6, 9, 12] and times == {n: [1.0] * 4 for n in "abc"}


def _with_grads(tensors, grads):
    params = [torch.nn.Parameter(t.clone()) for t in tensors]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    return params


def test_authors_agd_is_the_agd_step():
    """One step of the authors' loop (float64) moves every tap by exactly eta/L·sv in Frobenius norm
    (docs/agd.md §7) and agrees with agd_kernels.AGD's reference backend, whose G and eta are fp32
    device scalars by design (§5 decision 3): agreement to a few fp32 ulps."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(7, 5), (4, 3, 3, 3), (6, 2, 1, 1), (3, 9)]
    start = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    grads = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    grads[1][:, :, 0, 2] = 0  # a zero tap: no update, no NaN
    authors, ours = _with_grads(start, grads), _with_grads(start, grads)
    eta = AuthorsAGD(authors).step()
    eta_ours = agd_kernels.AGD(ours, backend="torch").step()
    fp32_ulps = 8 * 2.0 ** -23
    assert eta == pytest.approx(float(eta_ours), rel=fp32_ulps)
    for a, o, p0 in zip(authors, ours, start):
        delta = a.detach() - p0
        torch.testing.assert_close(delta, o.detach() - p0, rtol=fp32_ulps, atol=0)
        taps = delta.reshape(a.shape[0], a.shape[1], -1)
        sv = math.sqrt(a.shape[0] / (a.shape[1] * math.prod(a.shape[2:])))
        for tap in range(taps.shape[2]):
            expected = 0.0 if a.dim() == 4 and a.shape[2] == 3 and tap == 2 else eta / len(shapes) * sv
            assert taps[:, :, tap].norm().item() == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_authors_agd_rejects_biases_naming_them():
    with pytest.raises(ValueError, match=r"params\[1\] has shape \(3,\)"):
        AuthorsAGD([torch.zeros(3, 2), torch.zeros(3)])


def _bisect_root(p: float) -> float:
    """The root in [0, 1] of p·x − (1 − x)³, increasing there."""
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if p * mid - (1 - mid) ** 3 > 0 else (mid, hi)
    return lo


def test_cubic_root_solves_the_yellowfin_equation():
    """x = √μ is the root of p·x = (1 − x)³ (docs/yellowfin.md §3) within the bias of the formula's
    eps = 1e-6 in w + eps: |δx| ≈ p·eps/(3w²), under 1e-6 for these p."""
    for D, C, h in [(1.0, 1.0, 1.0), (3.0, 0.5, 2.0), (0.1, 2.0, 0.5), (0.5, 1e-3, 1.0)]:
        p = (D + 1e-6) ** 2 * (h + 1e-6) ** 2 / (2 * (C + 1e-6))
        x = math.sqrt(single_step_momentum(D, C, h, h))  # h_max = h_min: mu_lo = 0, the root decides
        assert x == pytest.approx(_bisect_root(p), abs=1e-6)
    # a wide curvature range puts the robust-region bound above the root
    assert single_step_momentum(1e3, 1e-6, 1.0, 1e4) == pytest.approx(((100 - 1) / (100 + 1)) ** 2, rel=1e-5)


def test_authors_yellowfin_tracks_agd_kernels_yellowfin():
    """40 steps on a noisy least-squares problem, float64: the host-side reference and agd_kernels'
    device-side YellowFin (reference backend) apply the same lr, momentum and parameters."""
    gen = torch.Generator().manual_seed(1)
    A = torch.randn(12, 10, generator=gen, dtype=torch.float64)
    b = torch.randn(12, generator=gen, dtype=torch.float64)
    start = [torch.randn(10, generator=gen, dtype=torch.float64), torch.randn(4, 3, generator=gen, dtype=torch.float64)]
    noise = [[torch.randn(s.shape, generator=gen, dtype=torch.float64) * 0.1 for s in start] for _ in range(40)]
    authors, ours = _with_grads(start, [torch.zeros_like(s) for s in start]), \
        _with_grads(start, [torch.zeros_like(s) for s in start])
    ref_opt = AuthorsYellowFin(authors)
    our_opt = agd_kernels.YellowFin(ours, backend="torch")
    for step in range(40):
        for params in (authors, ours):
            x, w = params
            params[0].grad = A.T @ (A @ x.detach() - b) + noise[step][0]
            params[1].grad = w.detach() * 0.5 + noise[step][1]
        lr, mu = ref_opt.step()
        our_opt.step()
        for a, o in zip(authors, ours):
            torch.testing.assert_close(a.detach(), o.detach(), rtol=1e-9, atol=1e-12,
                                       msg=lambda m: f"step {step} (lr {lr}, mu {mu}): {m}")
    assert mu > 0 and lr != 1e-4  # the tuner ran: past step 0's constructor values (lr 1e-4, mu 0)


def test_pytest_benchmark_suite_collects_only_when_named():
    """bench/step_benchmarks.py stays a valid pytest-benchmark suite, and the CI command skips it."""
    import fnmatch
    import subprocess
    import sys

    named = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                            "bench/step_benchmarks.py"], capture_output=True, text=True, timeout=300)
    assert named.returncode == 0, named.stdout + named.stderr
    assert "test_step[adam-torch-fused-many-small-float32]" in named.stdout
    assert "test_step[agd-authors-gpt2-small-float32]" in named.stdout and "test_bandwidth" in named.stdout
    # the CI command collects tests/ only (pyproject testpaths), and this name matches no test pattern
    assert not any(fnmatch.fnmatch("step_benchmarks.py", pattern) for pattern in ("test_*.py", "*_test.py"))
