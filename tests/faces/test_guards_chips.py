"""Framing and chips: the stored framing is a median (a few bad detections do not move
it), the chip cache's key changes with every field that shapes a chip and with the image's
bytes, and the chip resampler box-filters from a 2x shrink on, not before."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from gender_age.faces import alignment, geometry
from gender_age.faces.geometry import Face, Geometry
from gender_age.faces import chip_store


def test_median_framing_ignores_a_few_bad_detections():
    good = [(0.5, 0.45, 0.6, 0.7)] * 4 + [(0.52, 0.47, 0.62, 0.72)]
    bad = [(0.0, 0.0, 5.0, 5.0), (0.99, 0.99, 0.01, 0.01)]
    assert geometry.median_framing(good + bad) == Geometry(0.5, 0.45, 0.6, 0.7)
    # each of the four values is its own median, not taken from one observation
    mixed = [(0.1, 0.9, 0.3, 0.4), (0.2, 0.8, 0.2, 0.5), (0.3, 0.7, 0.1, 0.6)]
    assert geometry.median_framing(mixed) == Geometry(0.2, 0.8, 0.2, 0.5)
    assert geometry.median_framing([(0.1, 0.2, 0.3, 0.4), (0.3, 0.4, 0.5, 0.6)]) == Geometry(0.2, 0.3, 0.4, 0.5)


BASE = alignment.ChipSpec("aligned", 40, 0.25)


@pytest.mark.parametrize("change", [{"mode": "off"}, {"size": 41}, {"margin": 0.3}, {"margin": 0.0},
                                    {"template": tuple((x, y + 0.01) for x, y in alignment.TEMPLATE)},
                                    {"template": alignment.TEMPLATE[:4] + ((0.63, 0.83),)}])
def test_every_field_that_shapes_a_chip_changes_the_cache_key(change):
    other = dataclasses.replace(BASE, **change)
    assert chip_store.spec_key(other) != chip_store.spec_key(BASE)
    assert chip_store.spec_key(dataclasses.replace(BASE)) == chip_store.spec_key(BASE)  # and is stable


def test_cache_key_changes_with_the_chip_version_and_detector_size(monkeypatch):
    before = chip_store.spec_key(BASE)
    monkeypatch.setattr(chip_store, "CHIP_VERSION", chip_store.CHIP_VERSION + 1)
    assert chip_store.spec_key(BASE) != before
    monkeypatch.undo()
    monkeypatch.setattr(chip_store.detectors, "DETECT_SIZE", chip_store.detectors.DETECT_SIZE + 1)
    assert chip_store.spec_key(BASE) != before


class OneFace:
    """A detector that finds one face, landmarks on the template, in any image."""
    name, geometry = "mtcnn", geometry.GEOMETRY["mtcnn"]

    def __init__(self):
        self.calls = 0

    def detect(self, array):
        self.calls += 1
        pts = tuple((10 + 20 * x, 10 + 20 * y) for x, y in alignment.TEMPLATE)
        return [Face((10, 10, 30, 30), 0.99, pts)]


def test_the_cache_entry_follows_the_image_bytes(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    a, same, changed = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    Image.fromarray(pixels).save(a)
    Image.fromarray(pixels).save(same)
    pixels[0, 0, 0] ^= 1
    Image.fromarray(pixels).save(changed)
    det, folder = OneFace(), tmp_path / chip_store.spec_key(BASE)
    first = chip_store.chip_entry(a, BASE, folder, det)
    assert first[2] and det.calls == 1
    again = chip_store.chip_entry(same, BASE, folder, det)  # the same bytes elsewhere: the cached chip
    assert again[0] == first[0] and not again[2] and det.calls == 1
    other = chip_store.chip_entry(changed, BASE, folder, det)  # one changed byte: a new chip
    assert other[0] != first[0] and other[2] and det.calls == 2


def stripes(width=64):
    """One-pixel black and white columns: aliasing turns them all white (or black), a box filter grey."""
    col = np.where(np.arange(width) % 2, 255, 0).astype(np.uint8)
    return Image.fromarray(np.repeat(np.tile(col, (width, 1))[:, :, None], 3, 2))


def shrink(scale, t=-0.25):
    return np.array([[scale, 0.0, t], [0.0, scale, t]])


def test_a_2x_shrink_is_box_filtered():
    chip = np.asarray(alignment.warp_square(stripes(), shrink(0.5), 24), dtype=np.float64)[2:-2, 2:-2]
    assert abs(chip.mean() - 127.5) < 3 and chip.std() < 3


@pytest.mark.parametrize("scale,k", [(0.5, 2), (0.25, 4), (0.2, 5), (0.26, 3), (0.34, 2), (0.51, None),
                                     (0.9, None), (1.0, None), (2.0, None)])
def test_the_box_filter_starts_at_exactly_a_2x_shrink(monkeypatch, scale, k):
    seen = []
    reduce = Image.Image.reduce
    monkeypatch.setattr(Image.Image, "reduce", lambda self, f, *a: seen.append(f) or reduce(self, f, *a))
    alignment.warp_square(stripes(), shrink(scale), 16)
    assert seen == ([] if k is None else [k])
