"""examples/hf_trainer.py and examples/lightning_train.py: agd_kernels.AdamW and AGD inside Hugging Face
Trainer (its default LambdaLR schedule included) and Lightning (closure steps, a per-step scheduler).

Each runs in-process through the example's main() for a few steps on CPU and must lower the loss.
They skip where transformers / lightning are not installed (scripts/setup.sh installs both).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("optimizer", ["AdamW", "AGD"])
def test_hf_trainer_example_lowers_the_loss(optimizer):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # Trainer needs it
    first, last = _example("hf_trainer").main(["--optimizer", optimizer, "--steps", "20"])
    # measured over 30 steps: AdamW 3.91 -> 2.71, AGD 4.45 -> 3.05
    assert last < 0.9 * first, f"{optimizer}: loss {first:.3f} -> {last:.3f}"


@pytest.mark.parametrize("optimizer", ["AdamW", "AGD"])
def test_lightning_example_lowers_the_loss(optimizer):
    pytest.importorskip("lightning")
    first, last = _example("lightning_train").main(["--optimizer", optimizer, "--steps", "20"])
    assert last < 0.5 * first, f"{optimizer}: loss {first:.3f} -> {last:.3f}"
