"""pytest-benchmark suite: one optimizer step per (parameter set, dtype, algorithm, provider), plus
the two bandwidth probes, from the same tables as `python -m bench`.

    python -m pytest bench/step_benchmarks.py                       # every case (long on a CPU)
    python -m pytest bench/step_benchmarks.py -k "many-small and adam" --benchmark-columns=median,iqr,ops
    BENCH_PRESETS=gpt2-small python -m pytest bench/step_benchmarks.py --benchmark-json=steps.json

Not part of the CI test command: pytest's testpaths is tests/, and this file's name matches no
test pattern, so it runs only when named. pytest-benchmark times one case after another; for
interleaved, bandwidth-relative numbers use `python -m bench`. Cases that cannot run here skip
with the provider's reason; cases that do not apply (torch-fused RMSprop) are not generated.
"""
from __future__ import annotations

import math
import os

import pytest
import torch

from bench.cli import DTYPES
from bench.presets import preset
from bench.providers import ALGORITHMS, PROVIDERS, build_step, default_providers, make_tensors
from bench.timing import BandwidthProbe

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
PRESETS = os.environ.get("BENCH_PRESETS", "many-small,gpt2-small").split(",")
DTYPE_NAMES = os.environ.get("BENCH_DTYPES", "float32").split(",")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))

CASES = [pytest.param(algo, provider, id=f"{algo}-{provider}")
         for algo in ALGORITHMS for provider in default_providers(DEVICE)
         if PROVIDERS[provider].not_applicable(ALGORITHMS[algo]) is None]


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("dtype_name", DTYPE_NAMES)
@pytest.mark.parametrize("preset_name", PRESETS)
@pytest.mark.parametrize("algo_name,provider_name", CASES)
def test_step(benchmark, preset_name, dtype_name, algo_name, provider_name):
    algo, provider, dtype = ALGORITHMS[algo_name], PROVIDERS[provider_name], DTYPES[dtype_name]
    pset = preset(preset_name)
    shapes = pset.matrices().shapes if algo.matrices_only else pset.shapes
    reason = provider.unavailable(algo, DEVICE, dtype)
    if reason is not None:
        pytest.skip(reason)
    params, grads = make_tensors(shapes, dtype, DEVICE, seed=0)
    step = build_step(provider, algo, params, grads)
    del params
    numel = sum(math.prod(s) for s in shapes)
    benchmark.extra_info.update(n_tensors=len(shapes), n_params=numel, bytes_per_param=algo.bytes_per_param(dtype))

    def timed():
        step()
        _sync()

    benchmark.pedantic(timed, rounds=ROUNDS, warmup_rounds=1, iterations=1)


@pytest.mark.parametrize("kind", ["in-place", "read-only"])
def test_bandwidth(benchmark, kind):
    """Over 512 MiB fp32: a *= s, the in-place read-modify-write bandwidth the steps are held to, and
    a.sum(), the read-only bandwidth a gradient-norm pass is bound by."""
    probe = BandwidthProbe(512, DEVICE)
    run = probe.step if kind == "in-place" else probe.read
    benchmark.extra_info["bytes"] = probe.bytes if kind == "in-place" else probe.read_bytes

    def timed():
        run()
        _sync()

    benchmark.pedantic(timed, rounds=ROUNDS, warmup_rounds=1, iterations=1)
