"""The near-copy rule's thumbnail, on lossless images of known pixels: grey by ITU-R 601 weights,
averaged over 4x4 boxes to 16x16, mean removed, unit length; unreadable and flat images give none."""
from __future__ import annotations

import numpy as np
from PIL import Image

from gender_age.data import leakage


def save(tmp_path, name, rgb: np.ndarray):
    path = tmp_path / name
    Image.fromarray(rgb.astype(np.uint8)).save(path)  # PNG: no loss, no JPEG draft scaling
    return path


def expected(grey16: np.ndarray) -> np.ndarray:
    v = grey16.astype(np.float64).ravel()
    v -= v.mean()
    return v / np.linalg.norm(v)


def test_a_thumbnail_has_known_values(tmp_path):
    rgb = np.zeros((64, 64, 3))
    rgb[:, :16] = (255, 0, 0)    # red: grey 76
    rgb[:, 16:32] = (0, 255, 0)  # green: grey 150
    rgb[:32, 32:] = (0, 0, 255)  # blue: grey 29, in the top half only
    grey = np.zeros((16, 16))
    grey[:, :4], grey[:, 4:8], grey[:8, 8:] = 76, 150, 29
    t = leakage.thumbnail(save(tmp_path, "a.png", rgb))
    assert t.shape == (leakage.THUMB * leakage.THUMB,) and t.dtype == np.float32
    np.testing.assert_allclose(t, expected(grey), atol=2e-3)
    assert abs(float(np.linalg.norm(t)) - 1) < 1e-5 and abs(float(t.mean())) < 1e-6


def test_box_averaging_of_a_fine_pattern(tmp_path):
    """Alternate columns of 0 and 200 average to a flat 100 in every 4x4 box: nothing but the
    coarse left/right split (0 vs 100 average) remains."""
    rgb = np.zeros((64, 64, 3))
    rgb[:, 32::2] = 200
    grey = np.zeros((16, 16))
    grey[:, 8:] = 100
    np.testing.assert_allclose(leakage.thumbnail(save(tmp_path, "b.png", rgb)), expected(grey), atol=2e-3)


def test_flat_and_unreadable_images_have_no_thumbnail(tmp_path):
    assert leakage.thumbnail(save(tmp_path, "flat.png", np.full((40, 40, 3), 90))) is None
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    assert leakage.thumbnail(tmp_path / "bad.jpg") is None
    nearly = np.full((64, 64, 3), 90)
    nearly[:4, :4] = 91  # one box one grey level brighter: a thumbnail still
    assert leakage.thumbnail(save(tmp_path, "nearly.png", nearly)) is not None


def test_thumbnails_skip_what_has_none_and_keep_the_indices(tmp_path):
    good = save(tmp_path, "g.png", np.arange(64 * 64 * 3).reshape(64, 64, 3) % 251)
    flat = save(tmp_path, "f.png", np.full((40, 40, 3), 7))
    matrix, index = leakage.thumbnails([flat, good, flat, good])
    assert index == [1, 3] and matrix.shape == (2, leakage.THUMB * leakage.THUMB)
    empty, none = leakage.thumbnails([flat])
    assert empty.shape == (0, leakage.THUMB * leakage.THUMB) and none == []
    assert empty.dtype == matrix.dtype == np.float32  # one dtype for the products, empty or not
    assert leakage.near_copies([good], [flat]) == [] and leakage.near_copies([], [good]) == []
    assert leakage.near_copies([flat, good], [good]) == [1]
