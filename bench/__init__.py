"""Benchmarks for agd_kernels, run from the repository root.

- `python -m bench`: the throughput report. Steps every optimizer provider (agd_kernels per backend,
  torch.optim foreach and fused, the authors' AGD and YellowFin references) on parameter-set presets,
  interleaved in one process, next to the machine's in-place memory bandwidth measured in the same
  run; prints a table, appends CSV rows and draws a chart (bench/cli.py; `--help`).
- `python -m bench.agd_demo`: AGD trains fully connected nets of depth 2-16 with no learning rate,
  next to Adam and SGD (bench/agd_demo.py).
- `python -m pytest bench/step_benchmarks.py`: the same cases under pytest-benchmark (not part of
  the CI test command).
"""
