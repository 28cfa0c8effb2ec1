"""YuNet, the default face detector: libfacedetection's CNN, run from the PyPI
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
the one on the image's right. That is MTCNN's order (``faces.Face``), so the
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

import faces

YUFACE_PIN = "yuface==2023.5.1"


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
        raise faces.FaceError(f"the yunet detector needs the yuface package ({e}): pip install {YUFACE_PIN} "
                              f"(CPython 3.10-3.11), or use --detector mtcnn") from None
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
        self.geometry = faces.GEOMETRY[self.name]
        self.min_score = min_score

    def detect(self, rgb: np.ndarray) -> list[faces.Face]:
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise faces.FaceError(f"the yunet detector needs an RGB image, not an array of shape {rgb.shape}")
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
                found.append(faces.Face((x, y, x + w, y + h), score, tuple(map(tuple, marks.tolist()))))
        return found

    def detect_batch(self, rgbs: list[np.ndarray]) -> list[list[faces.Face]]:
        """One list of faces per image. The library takes one image per call: this is a loop
        (``decode_pool`` spreads the images over processes instead)."""
        return [self.detect(a) for a in rgbs]
