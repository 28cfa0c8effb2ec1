"""Helpers shared by test files of several folders: tiny age-gender sources, checkpoint
forward passes written out from the papers' rules, a one-thread fixture, and a probe of
which heavy packages a process imports."""
from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import ROOT, make_image

from gender_age.core import images
from gender_age.data import age_groups, transforms
from gender_age.nets.models import build_model


def checkpoint_logits(ckpt: dict, batch: torch.Tensor, state: str = "model_state", amp: bool = False) -> torch.Tensor:
    """uint8 (N,3,R,R) -> float logits of a checkpoint's weights (``state``) on the centre crop,
    by a plain eval-mode forward pass (channels_last and bf16 as the toolkit runs it)."""
    preset = transforms.Preset.from_dict(ckpt["preprocess"])
    model = build_model(**ckpt["model_args"])
    model.load_state_dict(ckpt[state])
    model.eval().to(memory_format=torch.channels_last)
    x = preset.eval_batch(batch).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        return model(x).float()


def ordinal_rank(logits: torch.Tensor, loss: str, ce_mode: str = "argmax") -> torch.Tensor:
    """The rank each ordinal head decodes to, written out from the papers' rules:
    ce: the most probable rank, or the expected one; coral/ordinal: the number of
    P(y > k) over 1/2, with P(y > k) = sigmoid (coral, ordinal) or its running product (corn)."""
    if loss == "ce":
        if ce_mode == "expectation":
            return logits.softmax(1) @ torch.arange(logits.shape[1], dtype=logits.dtype)
        return logits.argmax(1)
    p = torch.sigmoid(logits)
    if loss == "corn":
        p = torch.cumprod(p, 1)
    return (p > 0.5).sum(1)


def decode(paths, size: int) -> torch.Tensor:
    return torch.stack([images.decode_resized(p, size) for p in paths])


@pytest.fixture
def age_csvs(tmp_path):
    """A tiny UTKFace-like folder with the paper's CSV layout (rank = age - 21)."""
    img = tmp_path / "UTKFace"
    rows = {"train": [], "test": []}
    for i in range(24):
        age = 21 + (i % 8) * 5
        name = f"{age}_{i % 2}_0_2017010{i:03d}.jpg.chip.jpg"
        make_image(img / name, (i % 8) // 3, i)
        rows["test" if i % 4 == 0 else "train"].append((i, name, age - 21))
    for split, rs in rows.items():
        with open(tmp_path / f"utk_{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["", "file", "age"])
            w.writerows(rs)
    return tmp_path


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: MTCNN's many small convolutions ran 25x slower with 2 threads on a
    2-core machine busy with other work (0.8 s vs 0.03 s per photo)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


LIGHT = ["--arch", "resnet18", "--resize", "40", "--crop", "32", "--no-progress", "--workers", "0", "-b", "8",
         "--face-chips", "off", "--framing-sample", "0"]


def make_sources(root: Path) -> dict:
    """A UTKFace folder (names, CORAL-style test CSV), a gender tree and an age-group tree, IMDB-WIKI names."""
    utk = root / "utk" / "UTKFace"
    names = [f"{age}_{g}_0_2017010{i}.jpg.chip.jpg" for i, (age, g) in
             enumerate([(22, 0), (25, 1), (30, 0), (35, 1), (50, 0), (55, 1), (5, 0), (70, 1)] * 2)]
    for i, name in enumerate(names):
        make_image(utk / name.replace("0_2017", f"{i}_2017"), i % 2, seed=i)
    files = sorted(p.name for p in utk.iterdir())
    with open(root / "utk" / "utk_test.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "file", "age"])
        for j, name in enumerate(files[:4]):
            w.writerow([j, name, int(name.split("_")[0]) - 21])
    (utk / "39_1_20170116174525125.jpg.chip.jpg").write_bytes((utk / files[5]).read_bytes())  # no gender field
    for split, n in (("train", 4), ("test", 2)):
        for c, name in enumerate(("female", "male")):
            for i in range(n):
                make_image(root / "g" / split / name / f"{100 + i}_1990-03-01_2015.jpg", c, seed=50 + c * 10 + i +
                           (5 if split == "test" else 0))
        for c, (name, year) in enumerate((("old", 1960), ("young", 1990))):
            for i in range(n):
                make_image(root / "a" / split / name / f"{200 + i}_{year}-03-01_2014.jpg", c, seed=90 + c * 10 + i +
                           (5 if split == "test" else 0))
    # a test image of the gender tree copied into the age tree's training folder: a leak
    leak = root / "a" / "train" / "young" / "999_1991-03-01_2015.jpg"
    shutil.copy(root / "g" / "test" / "male" / "100_1990-03-01_2015.jpg", leak)
    make_image(root / "a" / "train" / "old" / "no_age_name.jpg", 0, seed=3)
    return {"utk": root / "utk", "g": root / "g", "a": root / "a", "leak": leak}


def source_args(d: dict, **kw) -> SimpleNamespace:
    base = dict(source=[f"utkface={d['utk']}", f"gender={d['g']}", f"age-groups={d['a']}"],
                age_groups=age_groups.DEFAULT, min_age=None, max_age=None, val_split=0.25, seed=0)
    return SimpleNamespace(**{**base, **kw})


def loaded_modules(code: str) -> set:
    """Of the heavy packages, those a python process has imported after running ``code``."""
    probe = code + "\nimport sys; print(sorted(m for m in ('torch', 'torchvision', 'cv2', 'onnxruntime', " \
                   "'facenet_pytorch', 'yuface') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return set(eval(out.strip().splitlines()[-1]))  # noqa: S307 - our own printed list


def record_probe_folders(monkeypatch, module) -> list:
    """Patch ``module.tempfile.NamedTemporaryFile`` to note the folder of every file it makes; returns the notes."""
    made, real = [], module.tempfile.NamedTemporaryFile

    def spy(*a, **k):
        f = real(*a, **k)
        made.append(Path(f.name).parent)
        return f
    monkeypatch.setattr(module.tempfile, "NamedTemporaryFile", spy)
    return made
