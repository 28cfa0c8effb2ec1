"""Synthetic photos for tests, benchmarks and scripts/gpu_check.sh: face-free
backgrounds, and face crops pasted onto them at known places."""
from __future__ import annotations

import numpy as np
from PIL import Image


# --------------------------------------------------------------------------
# Synthetic photos (tests and bench_predict.py)
# --------------------------------------------------------------------------

def background(size: tuple, seed: int) -> Image.Image:
    """A face-free RGB picture of ``size`` (W, H): a smooth random colour field plus noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    field = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    noisy = np.asarray(field, dtype=np.float64) + rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def paste_crops(canvas: Image.Image, crops: list[Image.Image], places: list[tuple]) -> tuple:
    """Paste square face crops onto a copy of ``canvas``: place (x, y, side) per crop.

    Returns (photo, squares): squares[i] = (x, y, x + side, y + side), where crop i now lies.
    """
    photo = canvas.copy()
    squares = []
    for crop, (x, y, side) in zip(crops, places):
        photo.paste(crop.resize((side, side), Image.BILINEAR), (x, y))
        squares.append((x, y, x + side, y + side))
    return photo, squares
