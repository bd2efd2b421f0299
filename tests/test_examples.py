"""examples/ run as a user would run them (README's "Sharded training" command)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
@pytest.mark.parametrize("optimizer", ["AGD", "YellowFin"])  # AGD: init_weights; YellowFin: the tuner in DCP
def test_fsdp2_example_trains_checkpoints_and_resumes(optimizer, tmp_path):
    torchrun = shutil.which("torchrun")
    command = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --standalone: torchrun picks a free port. Own process group: a hang kills the workers too.
    process = subprocess.Popen([*command, "--standalone", "--nproc-per-node", "2",
                                str(ROOT / "examples" / "fsdp2_train.py"), "--optimizer", optimizer, "--steps", "4",
                                "--checkpoint", str(tmp_path / "ckpt")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"the example hung for 180 s:\n{stdout[-3000:]}{stderr[-3000:]}")
    assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert f"{optimizer}: 4 steps on 2 ranks, resumed at step 2" in stdout
    assert any((tmp_path / "ckpt").glob("*.distcp")), "the checkpoint was not written"
