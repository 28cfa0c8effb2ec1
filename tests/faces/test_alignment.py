"""alignment.py by known values: which framing a detector gets, the similarity fit on mirrored
and degenerate landmarks, the box filter's crop at the image's corner and outside it, and the
messages of chips that cannot be cut."""
from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from gender_age.faces import alignment
from gender_age.faces.geometry import GEOMETRY, Face, FaceError, Geometry

FRAMING = Geometry(0.5, 0.4, 0.6, 0.7)


def test_a_detector_without_a_name_takes_the_measured_framing_as_mtcnn_does():
    spec = alignment.ChipSpec("off", 64, framing=FRAMING)
    nameless = SimpleNamespace(geometry=GEOMETRY["haar"])
    assert alignment.crop_geometry(spec, nameless) == FRAMING
    assert alignment.crop_geometry(spec, SimpleNamespace(name="mtcnn", geometry=GEOMETRY["mtcnn"])) == FRAMING
    haar = alignment.crop_geometry(spec, SimpleNamespace(name="haar", geometry=GEOMETRY["haar"]))
    m, h = GEOMETRY["mtcnn"], GEOMETRY["haar"]
    assert haar == pytest.approx(Geometry(0.5 + (h.cx - m.cx) / m.w * 0.6, 0.4 + (h.cy - m.cy) / m.h * 0.7,
                                          h.w / m.w * 0.6, h.h / m.h * 0.7))
    assert alignment.crop_geometry(alignment.ChipSpec("off", 64), nameless) == GEOMETRY["haar"]  # unmeasured


def test_mirrored_landmarks_get_a_rotation_not_a_reflection():
    dst = np.array(alignment.TEMPLATE) * 100
    src = dst * [-1, 1] + [300, 20]  # the template mirrored left to right, then moved
    m = alignment.fit_similarity(src, dst)
    a = m[:, :2]
    scale2 = np.linalg.det(a)
    assert scale2 > 0 and np.allclose(a @ a.T, scale2 * np.eye(2))  # a scaled rotation
    assert m.dtype == np.float64


def test_float32_landmarks_are_fitted_in_float64():
    dst = np.array(alignment.TEMPLATE) * 64
    src = (dst * 3 + [1000.25, 2000.5]).astype(np.float32)
    dst32 = dst.astype(np.float32)
    m = alignment.fit_similarity(src, dst32)
    want = alignment.fit_similarity(src.astype(np.float64), dst32.astype(np.float64))  # the same points, exactly
    assert m.dtype == np.float64 and np.abs(m - want).max() < 1e-10
    assert np.allclose(m[:, :2], np.eye(2) / 3, atol=1e-6)


def test_degenerate_and_missing_landmarks_are_named():
    with pytest.raises(FaceError, match="^degenerate landmarks: all at one point$"):
        alignment.fit_similarity(np.ones((5, 2)) * 7, np.array(alignment.TEMPLATE))
    img = Image.new("RGB", (50, 50))
    with pytest.raises(FaceError, match="^" + re.escape("aligned face chips need face landmarks: use --detector "
                                                        "mtcnn") + "$"):
        alignment.face_chip(img, Face((10, 10, 40, 40)), alignment.ChipSpec("aligned", 32, 0.05), None)


def noise(size, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.mark.parametrize("k", [2, 3])
def test_the_box_filter_of_a_square_at_the_corner_uses_the_whole_grid(k):
    # a k-times shrink of the image's top-left part: the crop must start at pixel 0, on the same grid as
    # reducing the whole image
    img = noise(96)
    size = 96 // k // 2
    m = np.array([[1 / k, 0, 0], [0, 1 / k, 0]])
    got = np.asarray(alignment.warp_square(img, m, size), dtype=np.int16)
    reduced = img.reduce(k)
    want = np.asarray(reduced.transform((size, size), Image.AFFINE, (1, 0, 0, 0, 1, 0), resample=Image.BILINEAR),
                      dtype=np.int16)
    assert np.abs(got - want).max() <= 1


@pytest.mark.parametrize("tx,ty", [(-1000, -1000), (0, -1000), (-1000, 0), (-17, 0), (0, -17)])
def test_a_square_wholly_outside_the_image_is_black(tx, ty):
    # a 4x shrink of a place outside the image: far away, beside it in one direction only, or starting
    # exactly where the image ends (-17: 4 * 17 = 68 = 64 + the filter's 4-pixel border)
    img = noise(64)
    m = np.array([[0.25, 0, tx], [0, 0.25, ty]], dtype=np.float64)
    assert np.asarray(alignment.warp_square(img, m, 16)).max() == 0


class FixedDetector:
    """A detector that always finds one face at a fixed box, with a Haar-like framing."""
    name, geometry = "haar", GEOMETRY["haar"]

    def detect(self, array):
        return [Face((20.0, 20.0, 60.0, 60.0), 0.9)]


def test_chip_image_frames_with_the_detector_it_was_given():
    img = noise(80, seed=3)
    spec = alignment.ChipSpec("off", 32)
    chip, framing = alignment.chip_image(img, FixedDetector(), spec)
    want = alignment.face_chip(img, Face((20.0, 20.0, 60.0, 60.0), 0.9), spec, FixedDetector())
    assert np.array_equal(np.asarray(chip), np.asarray(want)) and framing == (0.5, 0.5, 0.5, 0.5)
    assert alignment.chip_image(img, SimpleNamespace(detect=lambda a: []), spec) == (None, None)


def test_templates_by_name():
    assert alignment.template_name([list(p) for p in alignment.UTKFACE_TEMPLATE]) == "utkface"
    assert alignment.template_name(alignment.TEMPLATE) == "wide"
    assert alignment.template_name([[0.3, 0.4]] * 5) is None
    utk = alignment.ChipSpec("aligned", 100, 0.0, alignment.UTKFACE_TEMPLATE).points()
    assert utk[1, 0] - utk[0, 0] == pytest.approx(45.0) and utk[0, 1] == pytest.approx(20.9)  # eyes 0.45 apart


def test_a_spec_as_the_checkpoint_stores_it():
    aligned = alignment.ChipSpec("aligned", 72, 0.05, framing=FRAMING)
    assert aligned.as_dict() == {"mode": "aligned", "size": 72, "margin": 0.05,
                                 "template": [list(p) for p in alignment.TEMPLATE],
                                 "framing": {"detector": "mtcnn", "cx": 0.5, "cy": 0.4, "w": 0.6, "h": 0.7}}
    assert alignment.ChipSpec("off", 64, 0.3).as_dict() == {"mode": "off", "size": 64, "framing": None}
