"""Shared pytest setup: the `cuda` marker skips cleanly without a GPU; Triton caches go to a temp dir; without a
GPU, Triton kernels run in the interpreter."""
import os
import tempfile

import pytest
import torch

# Triton writes compiled kernels to ~/.triton by default; tests must not depend on or pollute it.
os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="agdk-triton-cache-"))
# Without a GPU the Triton backend runs on CPU tensors in the interpreter (tests/backends/test_triton.py). It
# must be set before any @triton.jit kernel is decorated, i.e. before agd_kernels.triton_kernels is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible on this machine)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:  # not item.keywords: ids like "cuda" would match
            item.add_marker(skip)
