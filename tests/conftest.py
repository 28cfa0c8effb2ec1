"""Shared fixtures: tiny generated image datasets (no real faces needed)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_DATA = Path(os.environ.get("GAC_SHARED_DATA", ROOT.parent / "shared" / "data"))


def make_image(path: Path, cls: int, seed: int, size=(40, 48), fmt: str | None = None, mode: str = "RGB") -> Path:
    """A small picture whose colour and stripes depend on its class, so a
    network can learn the classes in a few steps."""
    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    base = np.zeros((h, w, 3), dtype=np.float64)
    base[..., cls % 3] = 200
    if cls % 2:
        base[::4] = 40  # horizontal stripes for odd classes
    img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).convert(mode).save(path, format=fmt)
    return path


def make_folder_dataset(root: Path, classes=("female", "male"), n_train=6, n_test=3, predict=3) -> Path:
    for split, n in (("train", n_train), ("test", n_test)):
        for c, name in enumerate(classes):
            for i in range(n):
                make_image(root / split / name / f"{name}_{i}.jpg", c, seed=c * 1000 + i + (500 if split == "test" else 0))
    for i in range(predict):
        make_image(root / "predict" / "set" / f"p{i}.jpg", i % len(classes), seed=1000 + i)
    return root


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return make_folder_dataset(tmp_path / "data")


@pytest.fixture
def shared_data() -> Path:
    """The real shared dataset. Missing data fails the test loudly, never skips."""
    if not (SHARED_DATA / "gender-data" / "train").is_dir():
        pytest.fail(f"shared data not found at {SHARED_DATA}: put ../shared/data beside the repository "
                    f"or set GAC_SHARED_DATA")
    return SHARED_DATA
