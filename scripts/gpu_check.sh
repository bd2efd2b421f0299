#!/usr/bin/env bash
# The GPU checks, for a machine with a CUDA GPU and torch + Triton already installed (no network needed):
# builds the extension in place (C++ CPU ops and the CUDA kernels, for this GPU's arch only), runs every
# cuda-marked test, probes Triton's fp64 math against torch, and runs the FSDP2 example on one GPU (nccl).
# Writes logs to ${OUT:-/tmp/agdk-gpu}. Results so far: docs/gpu_runs.md.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/agdk-gpu}; mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi -L; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
ln -sfn ../triton_kernels agd_kernels/triton_kernels  # the package layout an install gives (setup.py package_dir)
arch=$(python3 -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
TORCH_CUDA_ARCH_LIST=$arch MAX_JOBS=$(nproc) timeout 480 python3 setup.py build_ext --inplace >"$out/build.log" 2>&1
echo "build rc $?"
python3 -m agd_kernels.info 2>&1 | tail -6
timeout 420 python3 -m pytest -m cuda -q -p no:cacheprovider -rfE --junitxml="$out/junit.xml" \
  tests/backends/test_cuda.py tests/backends/test_triton_cuda.py tests/test_dispatch_parity.py \
  tests/optim/test_agd.py 2>&1 | tee "$out/pytest.log" | tail -40
python3 scripts/triton_fp64_probe.py 2>&1 | tee "$out/fp64_probe.log"
timeout 120 torchrun --standalone --nproc-per-node 1 examples/fsdp2_train.py --device cuda --optimizer AGD --steps 6 2>&1 | tail -2
timeout 120 torchrun --standalone --nproc-per-node 1 examples/fsdp2_train.py --device cuda --optimizer LAMB --steps 6 2>&1 | tail -2
