"""torchrun with 2 CPU processes (gloo): sharded training, rank-0 outputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from gender_age.core.checkpointing import load_checkpoint
from conftest import ROOT, make_folder_dataset
from gender_age.predict import cli as predict


def test_torchrun_two_processes(tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "d", n_train=8, n_test=3)
    out = tmp_path / "c"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           str(ROOT / "gender_age_classifier.py"), "--data-dir", str(data), "--checkpoint-dir", str(out),
           "-ep", "2", "-b", "8", "--no-progress", "--workers", "0", "--eval-every", "1",
           "--arch", "resnet18", "--resize", "40", "--crop", "32"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # rank 0 alone logs: one line per epoch, one test line
    assert proc.stdout.count("epoch   2/2") == 1 and proc.stdout.count("test: ") == 1
    assert "2 process(es)" in proc.stdout
    ckpt = load_checkpoint(out / "model_best.tar")
    assert not any(k.startswith("module.") for k in ckpt["model_state"])  # loads without DDP
    # 14 train images, 2 processes x 4 per step -> 2 steps an epoch on each rank
    assert len(ckpt["iter_losses"]) == 4
    result = json.loads((out / "test_results.json").read_text())
    assert result["test_n"] == 6  # all-reduced over both shards
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".tar") == [
        "checkpoint2.tar", "checkpoint_last.tar", "model_best.tar"]
    capsys.readouterr()
    assert predict.cli(["--checkpoint", str(out / "model_best.tar"), str(data / "predict")]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
