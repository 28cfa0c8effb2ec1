"""scripts/gpu_check.sh: its CPU mode runs every step and prints each step's rates; without a GPU
and without --cpu, and when a step fails, it stops with a one-line error; its work folder goes."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "gpu_check.sh"
STEPS = ("train", "resume", "torchrun", "exact-age", "predict", "export", "predict-onnx", "age-gender",
         "age-gender-predict", "age-gender-export")


def run(tmp_path, *args, python=sys.executable, env=None, timeout=900):
    """The script with $PYTHON and $TMPDIR set (the work folder lands in tmp_path)."""
    env = {**os.environ, "PYTHON": str(python), "TMPDIR": str(tmp_path), **(env or {})}
    env.pop("GPU_CHECK_KEEP", None)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=tmp_path)


def work_folders(tmp_path):
    return [p.name for p in tmp_path.iterdir() if p.name.startswith("gpu-check.")]


def test_cpu_mode_runs_every_step_and_prints_its_rates(tmp_path):
    r = run(tmp_path, "--cpu")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = r.stdout
    for name in STEPS:
        assert f"gpu-check: {name} ok (" in out, name
    rate = r"[0-9.]+ img/s"
    for name in ("train", "resume", "torchrun", "exact-age", "predict", "predict-onnx", "age-gender",
                 "age-gender-predict"):
        assert re.search(rf"^gpu-check: {name} +{rate} .*\| compute-only: {rate} ", out, re.M), (name, out)
    for name, onnx in (("export", "gender"), ("age-gender-export", "dual")):
        assert re.search(rf"^gpu-check: {name} +wrote \S+{onnx}\.onnx .*onnxruntime matches PyTorch", out, re.M), out
    # the dual-task model's predictions: one per test crop at least (a crop is predicted without a face)
    assert int(re.search(r"^gpu-check: age-gender-predict +\S+ img/s \((\d+) records", out, re.M)[1]) >= 4, out
    assert re.search(r"^gpu-check: resume +[0-9.]+ img/s \(epoch 3,", out, re.M)  # the run went on to epoch 3
    assert out.rstrip().endswith("gpu-check: all steps passed")
    assert work_folders(tmp_path) == []  # the temporary work folder was removed


def _one_line_error(r, match: str, code: int) -> None:
    err = r.stderr.strip()
    assert r.returncode == code and len(err.splitlines()) == 1 and err.startswith("error:") and match in err, r


def test_without_a_gpu_and_without_cpu_mode_it_refuses(tmp_path):
    r = run(tmp_path, env={"CUDA_VISIBLE_DEVICES": ""})  # no GPU, even on a GPU machine
    _one_line_error(r, "no CUDA GPU", 2)
    assert "--cpu" in r.stderr and r.stdout == ""
    _one_line_error(run(tmp_path, "--gpu"), "unknown argument '--gpu'", 2)
    _one_line_error(run(tmp_path, "--cpu", python=tmp_path / "no-python"), "no python", 2)
    assert work_folders(tmp_path) == []


def test_a_failing_step_stops_the_check_with_one_error_line(tmp_path):
    fake = tmp_path / "python"  # the real python, except that training fails at once
    fake.write_text(f'#!/bin/bash\nif [[ " $* " == *" gender_age_classifier.py "* ]]; then\n'
                    f'  echo "error: disk on fire" >&2; exit 3\nfi\nexec {sys.executable} "$@"\n')
    fake.chmod(0o755)
    r = run(tmp_path, "--cpu", python=fake)
    assert r.returncode == 1 and "gpu-check: train ok" not in r.stdout
    last = r.stderr.strip().splitlines()
    assert "error: disk on fire" in last  # the step's own last lines come first
    assert last[-1].startswith("error: step 'train' failed with exit status 3")
    assert work_folders(tmp_path) == []
