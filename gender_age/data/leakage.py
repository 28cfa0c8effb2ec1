"""Near-copies of test images among the training images: the perceptual leakage check.

A byte-for-byte comparison (``sources.drop_test_copies``) misses a test image that
was resized or saved again as a JPEG before it reached the training folder. The
rule here catches those copies:

* each image is decoded (a JPEG at a reduced scale, which is fast), converted to
  grayscale and shrunk to a THUMB x THUMB (16 x 16) thumbnail by area averaging;
* the thumbnail's mean is removed and it is scaled to unit length, so brightness
  and contrast changes do not matter;
* a training image is a near-copy of a test image when the correlation of their
  thumbnails (the dot product of the two unit vectors) is at least THRESHOLD
  (0.99).

A flat image (no variation at 16 x 16) has no direction and is never a near-copy;
an unreadable image is never one either (the decoder reports it later). The
correlations are matrix products over blocks of training images, so 20,000
training images against 3,000 test images take a moment, not minutes.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

THUMB = 16
THRESHOLD = 0.99
BLOCK = 4096  # training thumbnails per matrix product: bounds the memory of one block's correlations


def thumbnail(path) -> np.ndarray | None:
    """The unit-length, mean-removed THUMB x THUMB grayscale thumbnail of an image, flattened;
    None when the image cannot be read or is flat."""
    try:
        with Image.open(path) as img:
            # JPEG: decode at 1/2, 1/4 or 1/8 scale, to no less than 64 px (a speed hint: the box
            # average below gives the same thumbnail within JPEG noise, so no test can see it)
            img.draft("L", (THUMB * 4, THUMB * 4))  # pragma: no mutate
            small = img.convert("L").resize((THUMB, THUMB), Image.Resampling.BOX)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    v = np.asarray(small, dtype=np.float32).ravel()
    v = v - v.mean()
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else None  # 8-bit box averages: a flat image's v is exactly 0


def thumbnails(paths: list) -> tuple[np.ndarray, list[int]]:
    """(matrix of the readable, non-flat images' thumbnails, one row each; their indices in ``paths``)."""
    rows, index = [], []
    for i, p in enumerate(paths):
        t = thumbnail(p)
        if t is not None:
            rows.append(t)
            index.append(i)
    return (np.stack(rows) if rows else np.zeros((0, THUMB * THUMB), np.float32)), index


def near_copies(train_paths: list, test_paths: list, threshold: float = THRESHOLD) -> list[int]:
    """Indices (into ``train_paths``) of the training images whose thumbnail correlates at least
    ``threshold`` with some test image's thumbnail."""
    test, _ = thumbnails(test_paths)
    if not len(test) or not train_paths:
        return []
    train, index = thumbnails(train_paths)
    hits = []
    for start in range(0, len(train), BLOCK):
        best = (train[start:start + BLOCK] @ test.T).max(axis=1)
        hits += [index[start + j] for j in np.flatnonzero(best >= threshold - 1e-6)]
    return hits
