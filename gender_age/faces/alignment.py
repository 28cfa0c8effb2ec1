"""Face chips: how a model sees a face, the same in training and prediction.

A ``ChipSpec`` (mode, size, margin, framing) is part of a model. ``face_chip`` cuts one
face: with landmarks, a least-squares similarity onto the five-point ``TEMPLATE``
(``fit_similarity``, ``warp_square``), so rolled faces come out upright; otherwise the
square around the box that the training images' framing implies (``crop_geometry``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
import numpy as np
from PIL import Image
from gender_age.core.images import resize_square
from gender_age.faces.detectors import detect_faces
from gender_age.faces.geometry import Face, FaceError, GEOMETRY, Geometry, crop_face, crop_square, framing_of, main_face


# --------------------------------------------------------------------------
# Chips: a model's input cut around a face, as the model was trained
# --------------------------------------------------------------------------

CHIP_MODES = ("off", "aligned")
# Where MTCNN's five landmarks (left eye, right eye, nose, left and right mouth
# corner, as seen in the image) go, as fractions of a face square: a symmetric
# frontal face, eyes level at 0.46 of the height and 0.32 of the side apart.
TEMPLATE = ((0.34, 0.46), (0.66, 0.46), (0.50, 0.64), (0.37, 0.82), (0.63, 0.82))
# The same landmarks in UTKFace's aligned-and-cropped faces: the median over 400 of its training
# images, as fractions of the image side, made left-right symmetric (eyes 0.45 of the side apart,
# at 0.21 of the height). With margin 0 a chip is cut as UTKFace cut its faces, eyebrows to chin:
# its chips are then filled (with TEMPLATE half of each was black, the part of the square a tight
# crop does not hold), and no source's chips can be told from another's by their black border.
UTKFACE_TEMPLATE = ((0.275, 0.209), (0.725, 0.209), (0.50, 0.474), (0.30, 0.674), (0.70, 0.674))
TEMPLATES = {"wide": TEMPLATE, "utkface": UTKFACE_TEMPLATE}


def template_name(points) -> str | None:
    """The TEMPLATES name of a stored template (lists or tuples), None for another."""
    as_tuple = tuple(tuple(float(v) for v in p) for p in points)
    return next((name for name, t in TEMPLATES.items() if t == as_tuple), None)


@dataclass(frozen=True)
class ChipSpec:
    """How one model's input is cut around a face (stored in its checkpoint as ``chips``).

    mode: "off" (the square framed like the training images) or "aligned"
    (landmarks warped onto ``template``); size: the chip's side in pixels (the
    model's resize); margin: for aligned chips, the space around the template's
    face square on each side, as a fraction of that square; framing: where
    MTCNN's box sat in the model's training images (the central square the
    model saw), or None (unmeasured: the detector's ``GEOMETRY``).
    """
    mode: str = "off"
    size: int = 256
    margin: float = 0.0
    template: tuple = TEMPLATE
    framing: Geometry | None = None

    def as_dict(self) -> dict:
        d = {"mode": self.mode, "size": self.size}
        if self.mode == "aligned":
            d.update(margin=self.margin, template=[list(p) for p in self.template])
        g = self.framing
        d["framing"] = None if g is None else {"detector": "mtcnn", "cx": g.cx, "cy": g.cy, "w": g.w, "h": g.h}
        return d

    def points(self) -> np.ndarray:
        """The template's landmarks in chip pixels (5, 2)."""
        return (np.asarray(self.template, dtype=np.float64) + self.margin) / (1 + 2 * self.margin) * self.size


def crop_geometry(spec: ChipSpec, detector) -> Geometry:
    """Where ``detector``'s box sits in a square framed like ``spec``'s training images:
    the measured MTCNN framing (moved to another detector's box by the relation of the
    two detectors' boxes in ``GEOMETRY``), or the detector's own geometry when unmeasured."""
    g, own = spec.framing, detector.geometry
    if g is None or getattr(detector, "name", "mtcnn") == "mtcnn":
        return g or own
    m = GEOMETRY["mtcnn"]
    return Geometry(g.cx + (own.cx - m.cx) / m.w * g.w, g.cy + (own.cy - m.cy) / m.h * g.h,
                    own.w / m.w * g.w, own.h / m.h * g.h)


def fit_similarity(src, dst) -> np.ndarray:
    """The least-squares similarity (rotation, uniform scale, translation, no
    reflection; Umeyama 1991) taking points ``src`` (N, 2) to ``dst`` (N, 2):
    a 2x3 matrix M with dst ~ M @ (x, y, 1)."""
    src, dst = np.asarray(src, dtype=np.float64), np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    s, d = src - src_mean, dst - dst_mean
    u, sigma, vt = np.linalg.svd(d.T @ s / len(src))
    sign = np.array([1.0, -1.0 if np.linalg.det(u) * np.linalg.det(vt) < 0 else 1.0])
    rotation = u @ np.diag(sign) @ vt
    variance = (s ** 2).sum() / len(src)
    if variance < 1e-9:
        raise FaceError("degenerate landmarks: all at one point")
    scale = float((sigma * sign).sum() / variance)
    return np.hstack([scale * rotation, (dst_mean - scale * rotation @ src_mean)[:, None]])


def warp_square(img: Image.Image, matrix: np.ndarray, size: int) -> Image.Image:
    """The ``size`` square whose pixels come from ``img`` through ``matrix`` (2x3, image ->
    chip coordinates); outside the image is black. A face shrunk 2x or more is box-filtered
    first (``Image.reduce`` of the part the square covers), so it is not aliased."""
    a, t = matrix[:, :2], matrix[:, 2]
    k = int(1 / math.sqrt(abs(np.linalg.det(a))))
    if k >= 2:
        corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], dtype=np.float64)
        seen = (np.linalg.inv(a) @ (corners - t).T).T
        x0, y0 = (max(0, math.floor(v) - k) for v in seen.min(0))
        x1, y1 = (min(lim, math.ceil(v) + k) for v, lim in zip(seen.max(0), img.size))
        if x1 > x0 and y1 > y0:
            img = img.crop((x0, y0, x1, y1)).reduce(k)  # image x = x0 + k * (reduced x)
            a, t = k * a, a @ np.array([x0, y0], dtype=np.float64) + t
    inv = np.linalg.inv(a)
    shift = -inv @ t
    coeffs = (inv[0, 0], inv[0, 1], shift[0], inv[1, 0], inv[1, 1], shift[1])
    return img.transform((size, size), Image.AFFINE, coeffs, resample=Image.BILINEAR)


def face_chip(img: Image.Image, face: Face, spec: ChipSpec, detector) -> Image.Image:
    """The one chip function: ``img``'s face as ``spec``'s model was trained on it, a
    ``spec.size`` RGB square. Aligned chips need the face's landmarks (MTCNN's)."""
    if spec.mode == "aligned":
        if face.landmarks is None:
            raise FaceError("aligned face chips need face landmarks: use --detector mtcnn")
        return warp_square(img, fit_similarity(face.landmarks, spec.points()), spec.size)
    return resize_square(crop_face(img, crop_square(face.box, crop_geometry(spec, detector))), spec.size)


def chip_image(img: Image.Image, detector, spec: ChipSpec) -> tuple:
    """Training's view of one image: (chip of its main face, ``framing_of`` that face),
    or (None, None) when no face is found."""
    found = detect_faces(detector, img)
    if not found:
        return None, None
    face = main_face(found, img.size)
    return face_chip(img, face, spec, detector), framing_of(face, img.size)
