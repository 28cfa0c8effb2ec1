"""Faces in photos and videos: detection, training-like crops, drawing.

Two detectors, both shipped with their weights inside a PyPI package (nothing
is downloaded at run time):

* ``mtcnn`` (default): the MTCNN cascade (Zhang et al. 2016) of facenet-pytorch
  2.6.0, whose P/R/O-net weights are in the wheel. It is a PyTorch model, so
  it runs on the prediction device. facenet-pytorch pins torch<2.3 in its
  metadata but runs unchanged on torch 2.14: install it with
  ``pip install --no-deps facenet-pytorch==2.6.0`` (it needs ``requests``).
* ``haar``: OpenCV's frontal-face Haar cascade, bundled in
  opencv-python-headless 4.x (``cv2.data.haarcascades``; OpenCV 5 dropped it).

Chosen by measurement (bench_predict.py: 100 real face crops of
gender-data/test, 90-260 px, pasted onto 640x480 backgrounds; one thread of a
2-core CPU busy with a training run): MTCNN found 100/100 faces (IoU >= 0.5),
the Haar cascade 95/100; on 50 face-free backgrounds MTCNN made no false
detection, Haar one. Speed is similar: 167 vs 128 ms per photo. MediaPipe 1.x
ships no face model in its wheel and OpenCV's YuNet needs a separate model
file, so neither was usable here.

Crops. The models were trained on IMDB-WIKI face crops: square, with a wide
margin around the face. Each detector puts its box at a characteristic place
inside such a crop, measured on 300 training crops (``GEOMETRY``, re-measure
with ``python bench_predict.py --calibrate``); ``crop_square`` inverts that, so
the crop taken around a detected face frames it as the training crops did
(about 1.7x the MTCNN box height, the face a little above the centre).

Boxes everywhere are (x0, y0, x1, y1) floats in pixels of the (EXIF-rotated)
image, x1/y1 exclusive.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from images import BadImageError, check_image_size

# FFmpeg's own log lines ("moov atom not found") would bypass our one-line errors
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

DETECTORS = ("mtcnn", "haar")
# Photos are searched at most this many pixels on their longer side: MTCNN's
# cost grows with the pixel count, and a face smaller than 20 px at this scale
# (about 2% of the photo's width) is too small to classify anyway.
DETECT_SIZE = 1024
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm")


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
    it or the crop around its largest face covers it (IoU >= 0.5 with the whole
    image): then the whole image is what the model expects.
    """
    w, h = size
    if not 0.8 <= w / h <= 1.25:
        return False
    if not faces:
        return True
    largest = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
    return iou(crop_square(largest.box, geometry), (0, 0, w, h)) >= 0.5


def crop_face(img: Image.Image, square) -> Image.Image:
    """The square region of ``img`` (RGB); parts outside the image are black.

    Returns a PIL image of side round(x1 - x0) (at least 1).
    """
    x0, y0 = round(square[0]), round(square[1])
    side = max(1, round(square[2] - square[0]))
    return img.crop((x0, y0, x0 + side, y0 + side))


# --------------------------------------------------------------------------
# Detectors
# --------------------------------------------------------------------------

def _cv2():
    """OpenCV, or FaceError saying how to install it."""
    try:
        import cv2
    except ImportError:
        raise FaceError("the Haar detector and videos need OpenCV: "
                        "pip install opencv-python-headless==4.14.0.94") from None
    return cv2


class MtcnnDetector:
    """facenet-pytorch's MTCNN: RGB uint8 (H, W, 3) -> faces with score >= min_score."""

    name = "mtcnn"

    def __init__(self, device="cpu", min_score: float = 0.9, min_size: int = 20):
        try:
            from facenet_pytorch import MTCNN
        except ImportError as e:
            raise FaceError(f"the mtcnn detector needs facenet-pytorch ({e}): pip install --no-deps "
                            f"facenet-pytorch==2.6.0 requests, or use --detector haar") from None
        self.geometry = GEOMETRY[self.name]
        self.min_score, self.min_size = min_score, min_size
        self.model = MTCNN(keep_all=True, device=device, min_face_size=min_size, select_largest=False)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        if min(rgb.shape[:2]) < self.min_size:  # no face fits (and MTCNN's image pyramid would be empty)
            return []
        boxes, scores, marks = self.model.detect(rgb, landmarks=True)
        if boxes is None:
            return []
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        marks = np.asarray(marks, dtype=np.float64).reshape(-1, 5, 2)
        return [Face(tuple(b.tolist()), float(s), tuple(map(tuple, m.tolist())))
                for b, s, m in zip(boxes, scores, marks) if s >= self.min_score]


class HaarDetector:
    """OpenCV's frontal-face Haar cascade: RGB uint8 (H, W, 3) -> faces (score None)."""

    name = "haar"

    def __init__(self, min_size: int = 24, min_neighbors: int = 5):
        cv2 = _cv2()
        path = os.path.join(getattr(getattr(cv2, "data", None), "haarcascades", ""),
                            "haarcascade_frontalface_default.xml")
        self.cascade = cv2.CascadeClassifier(path) if hasattr(cv2, "CascadeClassifier") else None
        if self.cascade is None or self.cascade.empty():
            raise FaceError(f"OpenCV {cv2.__version__} has no frontal-face Haar cascade: "
                            f"pip install opencv-python-headless==4.14.0.94, or use --detector mtcnn")
        self.geometry = GEOMETRY[self.name]
        self.min_size, self.min_neighbors = min_size, min_neighbors

    def detect(self, rgb: np.ndarray) -> list[Face]:
        cv2 = _cv2()
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        found = self.cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=self.min_neighbors,
                                              minSize=(self.min_size, self.min_size))
        return [Face((float(x), float(y), float(x + w), float(y + h))) for x, y, w, h in found]


def make_detector(name: str, device="cpu"):
    """A detector by name (one of DETECTORS); FaceError when its package is missing."""
    if name == "mtcnn":
        return MtcnnDetector(device)
    if name == "haar":
        return HaarDetector()
    raise FaceError(f"unknown detector {name!r}: choose from {', '.join(DETECTORS)}")


def detect_faces(detector, img: Image.Image, max_side: int = DETECT_SIZE) -> list[Face]:
    """Faces in an RGB PIL image, left to right; searched at most ``max_side`` px,
    boxes mapped back to ``img``'s pixels."""
    scale = min(1.0, max_side / max(img.size))
    small = img if scale == 1.0 else img.resize((max(1, round(img.width * scale)),
                                                 max(1, round(img.height * scale))), Image.BILINEAR)
    faces = detector.detect(np.asarray(small))
    if scale != 1.0:
        faces = [Face(tuple(v / scale for v in f.box), f.score,
                      None if f.landmarks is None else tuple((x / scale, y / scale) for x, y in f.landmarks))
                 for f in faces]
    return sorted(faces, key=lambda f: (f.box[0], f.box[1]))


# --------------------------------------------------------------------------
# Videos
# --------------------------------------------------------------------------

def is_video(path) -> bool:
    return str(path).lower().endswith(VIDEO_EXTENSIONS)


class Video:
    """A video file opened with OpenCV: ``fps``, ``size`` (W, H) and ``frames()``.

    Raises FaceError when the file cannot be opened as a video.
    """

    def __init__(self, path):
        cv2 = _cv2()
        self._cv2, self.path = cv2, str(path)
        self.cap = cv2.VideoCapture(self.path)
        if not self.cap.isOpened():
            self.cap.release()
            raise FaceError("cannot open as a video (unreadable, or a codec OpenCV lacks)")
        self.fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.size = (int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        if self.size != (0, 0):  # 0 x 0: the container does not say; each frame is checked anyway
            self._check_size(self.size)

    def _check_size(self, size: tuple) -> None:
        """FaceError for frames no image would be allowed to have (images.check_image_size):
        a 12000 x 12000 video would hold gigabytes of frames in flight."""
        try:
            check_image_size(*size)
        except BadImageError as e:
            self.cap.release()
            raise FaceError(f"video frames {e}") from None

    def frames(self, every: int = 1):
        """Yield (index, time in s or None, RGB PIL image, sampled) for every frame, in order;
        ``sampled`` is True for every ``every``-th frame from frame 0. FaceError if none decodes."""
        index = 0
        try:
            while True:
                ok, frame = self.cap.read()
                if not ok:
                    break
                self._check_size((frame.shape[1], frame.shape[0]))
                rgb = Image.fromarray(self._cv2.cvtColor(frame, self._cv2.COLOR_BGR2RGB))
                yield index, (round(index / self.fps, 3) if self.fps > 0 else None), rgb, index % every == 0
                index += 1
        finally:
            self.cap.release()
        if index == 0:
            raise FaceError("no frame could be decoded")


class VideoWriter:
    """Writes RGB PIL frames to an .mp4 (mp4v) or .avi (MJPG) file."""

    def __init__(self, path, fps: float, size: tuple):
        cv2 = _cv2()
        self._cv2 = cv2
        codec = "MJPG" if str(path).lower().endswith(".avi") else "mp4v"
        self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, size)
        if not self.writer.isOpened():
            raise FaceError(f"cannot write video {path}")

    def write(self, img: Image.Image) -> None:
        self.writer.write(self._cv2.cvtColor(np.asarray(img), self._cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        self.writer.release()


# --------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------

COLOURS = ((255, 64, 64), (64, 200, 255), (255, 210, 0), (80, 230, 80), (230, 80, 230))


def draw_faces(img: Image.Image, labelled: list[tuple]) -> Image.Image:
    """A copy of ``img`` with each (box, text) drawn: a rectangle, its label above it
    (inside it when the box touches the top edge)."""
    out = img.copy()
    draw = ImageDraw.Draw(out)
    width = max(2, round(max(img.size) / 300))
    try:
        font = ImageFont.load_default(size=max(12, round(max(img.size) / 45)))
    except TypeError:  # Pillow without FreeType: fixed-size bitmap font
        font = ImageFont.load_default()
    for i, (box, text) in enumerate(labelled):
        colour = COLOURS[i % len(COLOURS)]
        draw.rectangle([round(v) for v in box], outline=colour, width=width)
        if not text:
            continue
        left, _, right, bottom = draw.textbbox((0, 0), text, font=font)
        x, y = round(box[0]), round(box[1]) - bottom - width
        if y < 0:
            y = round(box[1]) + width
        draw.rectangle((x, y, x + right + 2 * width, y + bottom + width), fill=colour)
        draw.text((x + width, y), text, fill=(0, 0, 0), font=font)
    return out


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
