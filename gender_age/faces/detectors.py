"""Face detectors behind one interface (``detect(rgb) -> list[Face]``, optional
``detect_batch``): YuNet (the default), MTCNN and OpenCV's Haar cascade; ``make_detector``
picks one by name, ``detect_faces`` runs one on a PIL image at a bounded size.

YuNet, the default face detector: libfacedetection's CNN, run from the PyPI
package yuface (nothing is downloaded at run time).

libfacedetection (Shiqi Yu et al., BSD 3-Clause licence, weights included)
is a small CNN compiled into C++: yuface 2023.5.1 ships it as a wheel for
CPython 3.6-3.11 on Linux x86-64 and Windows. Its licence is in the wheel
(``yuface-2023.5.1.dist-info/LICENSE``).

Chosen by measurement (``python bench_predict.py``, docs/benchmarks.md): on the
benchmark's 100 pasted faces it finds as many faces as MTCNN (100/100), makes
no more false detections (6 other detections on those photos against MTCNN's
7, none on 50 photos without a face), and takes about half of MTCNN's time
at the same search size (19 vs 36 ms per 640x480 photo searched at 427 px);
it needs neither torch nor torchvision, so predict.py's decode pool runs it
while torch is still being imported. It finds faces down to about 20 px wide
(the size MTCNN is set to, ``min_size=20``): 16-19 px faces 93% of the time,
12-15 px 77% (faces of the benchmark, downscaled). Its landmarks are not
MTCNN's points exactly (the detectors were trained on different annotations):
on the tests' faces they differ by up to 15% of the face's width, most at the
eyes.

What it gives per face: a box, a score (its confidence, 0-1 in steps of 0.01)
and five landmarks, in this order: the eye on the image's left, the eye on the
image's right, the tip of the nose, the mouth corner on the image's left and
the one on the image's right. That is MTCNN's order (``Face``), so the
landmark-aligned chips work with either detector. Coordinates are whole pixels.

Threads: the library parallelises one image with OpenMP, whose waiting
threads spin. Once torch is imported, its OpenMP calls go to torch's OpenMP
runtime (torch loads it for every library), so it takes torch's thread count:
with 2 threads on 2 cores and the other core busy, a 640x480 photo took 430 ms
instead of 30 ms on one thread. So each call runs on one thread (torch's count
is set to one around it, the library's own runtime to one when it is loaded),
and predict.py runs it in several processes instead (``decode_pool``).
"""
from __future__ import annotations

import contextlib
import os
import sys

import numpy as np
from PIL import Image

from gender_age.core.images import BadImageError, load_rgb
from gender_age.faces.geometry import GEOMETRY, Face, FaceError, framing_of, main_face, median_framing

DETECTORS = ("yunet", "mtcnn", "haar")
# Photos are searched at most this many pixels on their longer side: MTCNN's
# cost grows with the pixel count, and a face smaller than 20 px at this scale
# (about 2% of the photo's width) is too small to classify anyway.
DETECT_SIZE = 1024


# --------------------------------------------------------------------------
# Detectors
# --------------------------------------------------------------------------

YUFACE_PIN = "yuface==2023.5.1"
INSTALL = {"mtcnn": "pip install --no-deps facenet-pytorch==2.6.0 requests",
           "yunet": f"pip install {YUFACE_PIN} (CPython 3.10-3.11)",
           "haar": "pip install opencv-python-headless==4.14.0.94"}


class MissingDetector(FaceError):
    """A detector whose package is not installed (the message says how to install it)."""


def _cv2():
    """OpenCV, or MissingDetector saying how to install it."""
    try:
        import cv2
    except ImportError:
        raise MissingDetector(f"the Haar detector and videos need OpenCV: {INSTALL['haar']}") from None
    return cv2


def _mtcnn_class():
    """facenet-pytorch's MTCNN class (imports torch), or MissingDetector saying how to install it."""
    try:
        from facenet_pytorch import MTCNN
    except ImportError as e:
        raise MissingDetector(f"the mtcnn detector needs facenet-pytorch ({e}): {INSTALL['mtcnn']}") from None
    return MTCNN


def usable(name: str) -> bool:
    """Whether the package of detector ``name`` imports here (nothing is built)."""
    try:
        {"mtcnn": _mtcnn_class, "yunet": _import_yuface, "haar": _cv2}[name]()
    except MissingDetector:
        return False
    return True


def other_detector(failed: str, landmarks: bool) -> str | None:
    """The first detector besides ``failed`` whose package imports here, among those that suit the
    models (``landmarks``: models trained on aligned chips, which Haar cannot cut); None when none."""
    return next((n for n in ("yunet", "mtcnn", "haar")
                 if n != failed and not (landmarks and n == "haar") and usable(n)), None)


def with_landmarks() -> str:
    """What to do for a detector with face landmarks: 'use --detector NAME' for one whose package
    imports here (MTCNN first: aligned chips were cut on its landmarks), else how to install MTCNN."""
    name = next((n for n in ("mtcnn", "yunet") if usable(n)), None)
    return f"use --detector {name}" if name else INSTALL["mtcnn"]


class MtcnnDetector:
    """facenet-pytorch's MTCNN: RGB uint8 (H, W, 3) -> faces with score >= min_score."""

    name = "mtcnn"

    def __init__(self, device="cpu", min_score: float = 0.9, min_size: int = 20):
        MTCNN = _mtcnn_class()
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
    """A detector by name (one of DETECTORS); MissingDetector, saying how to install it, when its
    package is missing (``with_alternative`` adds the other detector that works here)."""
    makers = {"yunet": YunetDetector, "mtcnn": lambda: MtcnnDetector(device), "haar": HaarDetector}
    if name not in makers:
        raise FaceError(f"unknown detector {name!r}: choose from {', '.join(DETECTORS)}")
    return makers[name]()


def with_alternative(error: MissingDetector, name: str, landmarks: bool) -> MissingDetector:
    """``error`` (detector ``name``'s package is missing) naming the other detector that works here,
    if one does: one whose package imports, and not Haar when ``landmarks`` (models trained on
    aligned chips)."""
    other = other_detector(name, landmarks)
    return MissingDetector(f"{error}, or use --detector {other}" if other else str(error))


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



def _import_yuface():
    """The compiled yuface module, with its own OpenMP runtime set to one thread; FaceError
    saying how to install it when it is missing."""
    old = os.environ.get("OMP_NUM_THREADS")
    # the library's OpenMP copy (yuface.libs/libgomp-*.so, separate from torch's) reads this
    # when it is loaded, i.e. at this import; torch's thread count is not affected
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        from yuface import yuface as compiled
    except ImportError as e:
        raise MissingDetector(f"the yunet detector needs the yuface package ({e}): {INSTALL['yunet']}") from None
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old
    return compiled


@contextlib.contextmanager
def _one_thread():
    """torch's OpenMP runtime (which the library uses once torch is loaded) on one thread."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else 1
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)


class YunetDetector:
    """libfacedetection's YuNet: RGB uint8 (H, W, 3) -> faces with score >= min_score,
    each with a box, a score and five landmarks (see the module doc)."""

    name = "yunet"

    # On the benchmark's 100 pasted faces every threshold from 0.5 to 0.8 kept 100/100 and none
    # found a face in the 50 empty photos; the other detections on the photos (mostly real faces
    # in the crops' own backgrounds) were 8 at 0.5, 6 at 0.6, 4 at 0.7, 3 at 0.8 (MTCNN: 7).
    def __init__(self, min_score: float = 0.6):
        self._detect = _import_yuface().detect
        self.geometry = GEOMETRY[self.name]
        self.min_score = min_score

    def detect(self, rgb: np.ndarray) -> list[Face]:
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise FaceError(f"the yunet detector needs an RGB image, not an array of shape {rgb.shape}")
        # rows: score (0-100), x, y, w, h, 5 landmarks (x, y), one unused value
        with _one_thread():
            rows = self._detect(np.ascontiguousarray(rgb[:, :, ::-1]))
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, 16)
        found = []
        for r in rows:
            score = float(r[0]) / 100
            if score >= self.min_score:
                x, y, w, h = r[1:5].tolist()
                marks = r[5:15].reshape(5, 2)
                found.append(Face((x, y, x + w, y + h), score, tuple(map(tuple, marks.tolist()))))
        return found

    def detect_batch(self, rgbs: list[np.ndarray]) -> list[list[Face]]:
        """One list of faces per image. The library takes one image per call: this is a loop
        (``decode_pool`` spreads the images over processes instead)."""
        return [self.detect(a) for a in rgbs]
