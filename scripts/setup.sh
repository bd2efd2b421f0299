#!/usr/bin/env bash
# Fresh-machine setup: torch 2.14.1 (CUDA 13.0 build, pulls triton 3.8.0), the tools the tests and
# benchmarks use, then agd_kernels built against that torch (C++ CPU ops, plus the CUDA sources when
# a CUDA toolkit is on PATH). Idempotent: a second run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet torch==2.14.1
python -m pip install --quiet pybind11 ninja pytest pytest-benchmark numpy scikit-learn matplotlib tqdm \
    transformers accelerate lightning  # examples/ and tests/test_integrations.py
python -m pip install --quiet --no-build-isolation -e .
python -m agd_kernels.info
