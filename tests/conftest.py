"""Shared fixtures: tiny generated image datasets (no real faces needed)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _pin_xdist_worker() -> None:
    """Under pytest-xdist (`make test` runs one worker per core), give each
    worker its own share of the cores before torch starts its thread pool.
    The code under test sizes its threads and decode workers from the CPU
    affinity, so two workers on two cores run one thread each instead of
    four threads fighting over two cores. Subprocesses inherit the affinity."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    share = cpus[int(worker[2:]) % count::count]
    if share:
        os.sched_setaffinity(0, share)


_pin_xdist_worker()
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


def make_bad_input_zoo(folder: Path, cls: int = 0) -> dict:
    """Every awkward input of the reliability issue in one folder.

    Returns {"good": [names that must be used], "bad": [names that must be
    reported], "ignored": [hidden names that are not images at all]}.
    """
    import io as _io
    folder.mkdir(parents=True, exist_ok=True)
    good, bad = [], []
    for mode in ("RGBA", "LA", "P"):
        good.append(make_image(folder / f"mode_{mode}.png", cls, 1, fmt="PNG", mode=mode).name)
    arr = (np.arange(40 * 48).reshape(48, 40) * 30).astype("<u2")
    Image.fromarray(arr).save(folder / "sixteen_bit.png")
    good.append("sixteen_bit.png")
    good.append(make_image(folder / "cmyk.jpg", cls, 2, fmt="JPEG", mode="CMYK").name)
    Image.new("RGB", (1, 1), (9, 9, 9)).save(folder / "one_pixel.png")
    good.append("one_pixel.png")
    good.append(make_image(folder / "with space.jpg", cls, 3).name)
    odd = os.fsdecode(b"caf\xe9.jpg")  # not UTF-8
    good.append(make_image(folder / odd, cls, 4).name)
    good.append(make_image(folder / "UPPER.JPG", cls, 5).name)
    (folder / "zero.jpg").write_bytes(b"")
    buf = _io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((200, 200, 3)) * 255).astype(np.uint8)).save(buf, "JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[:2000])
    (folder / "text.jpg").write_text("not an image\n")
    Image.new("1", (9000, 9000)).save(folder / "bomb.png")  # 81 Mpx, a few hundred kB
    bad += ["zero.jpg", "truncated.jpg", "text.jpg", "bomb.png"]
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / "._with space.jpg").write_bytes(b"\0\5\26\7")
    return {"good": good, "bad": bad, "ignored": [".DS_Store", "._with space.jpg"]}
