"""Shared pytest setup: the `cuda` marker skips cleanly without a GPU; Triton caches go to a temp dir."""
import os
import tempfile

import pytest
import torch

# Triton writes compiled kernels to ~/.triton by default; tests must not depend on or pollute it.
os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="agdk-triton-cache-"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible on this machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
