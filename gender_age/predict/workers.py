"""The decode pool: predict.py's inputs decoded and searched for faces in worker
processes, while the main process loads the models and runs them.

Work goes out in chunks of ``CHUNK`` images (file names, decoded in the
worker) or sampled video frames (decoded in the main process, which reads the
video in order); each comes back as the decoded images with their faces, in
input order. The pool starts before the models are loaded, so decoding and
detection overlap the start-up as well as the networks. At most
``IN_FLIGHT_PIXELS`` of images are in flight, which bounds the memory a long
video or a folder of large photos can take.

Detection in a chunk is batched (``faces.detect_faces_batch``): images that
are searched at one size go through the detector together (MTCNN runs them as
one batch; YuNet's library takes one image per call). With ``--detect auto``
a squarish image is first searched at ``COARSE_SIZE`` px: when that finds a
face that makes it a face crop (``faces.looks_like_crop`` with the detector's
own geometry), the image will be predicted whole, and those faces are kept;
otherwise it is searched again at full detail (up to ``--detect-size``), so
faces too small to see at the coarse size are still found in photos.

Workers are forked from the main process (they share its detector and
modules) and ignore Ctrl-C: the main process stops them. With YuNet or the
Haar cascade they are forked before torch is imported and never load it;
MTCNN's workers come after it and run torch on one thread each; MTCNN on a
GPU runs in the main process (``pool_size``).
"""
from __future__ import annotations

import collections
import itertools
import math
import multiprocessing
import signal
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from PIL import Image

from gender_age.faces import detectors
from gender_age.faces import geometry
from gender_age.faces import videos
from gender_age.core.images import BadImageError, load_rgb

CHUNK = 8
# Decoded images (and video frames) waiting for the main process: at most about this many pixels
# (300 MB as RGB), so the pool works ahead through a folder of photos while torch loads, but a
# long video or a folder of 12-megapixel photos is not held in memory whole.
IN_FLIGHT_PIXELS = 100_000_000
COARSE_SIZE = 160
FACE_PX = 20  # the smallest faces the detectors find reliably (MTCNN's min_size; YuNet measured)
MIN_FACE = 1 / 16  # --min-face: smallest face looked for, as a fraction of the image's shorter side


@dataclass(frozen=True)
class Search:
    """How faces are searched: ``mode`` (predict.py's --detect: auto or on; off: none, the images
    are decoded whole, at ``min_side``), ``detect_size`` (the longest side searched) and
    ``min_face`` (the smallest face looked for, as a fraction of the image's shorter side; 0: down
    to FACE_PX at ``detect_size``)."""
    mode: str = "on"
    detect_size: int = detectors.DETECT_SIZE
    min_face: float = MIN_FACE
    exact: bool = False  # as training chips are made: every image at detect_size, no coarse pass
    min_side: int | None = None  # mode off: JPEGs decode at a reduced DCT scale down to this side

    def side(self, size: tuple) -> int:
        """The longer side an image of ``size`` (W, H) is searched at: at most ``detect_size``, and
        no more than a face of ``min_face`` times its shorter side needs to be FACE_PX."""
        w, h = size
        if self.min_face <= 0 or self.exact:
            return self.detect_size
        return max(32, min(self.detect_size, math.ceil(max(w, h) * FACE_PX / (self.min_face * min(w, h)))))


def find_faces(imgs: list, detector, search: Search) -> list[list]:
    """The faces of each RGB PIL image (``faces.detect_faces`` order), batched, each searched at
    ``search.side``; mode "auto" searches squarish images at ``COARSE_SIZE`` first (module doc)."""
    found = [None] * len(imgs)
    if search.mode == "auto" and not search.exact:
        coarse = min(COARSE_SIZE, search.detect_size)
        squarish = [i for i, img in enumerate(imgs) if 0.8 <= img.width / img.height <= 1.25]
        for i, f in zip(squarish, detectors.detect_faces_batch(detector, [imgs[i] for i in squarish], coarse)):
            if max(imgs[i].size) <= coarse or (f and geometry.looks_like_crop(imgs[i].size, f, detector.geometry)):
                found[i] = f
    rest = [i for i, f in enumerate(found) if f is None]
    sides = [search.side(imgs[i].size) for i in rest]
    for i, f in zip(rest, detectors.detect_faces_batch(detector, [imgs[i] for i in rest], sides)):
        found[i] = f
    return found


def _decode(item, min_side: int | None = None):
    """A file name -> (RGB image, None) or (None, why it is unreadable); an image passes through."""
    if not isinstance(item, str):
        return item, None
    try:
        return load_rgb(item, min_side=min_side), None
    except BadImageError as e:
        return None, str(e)


def process_chunk(items: list, detector, search: Search) -> list[tuple]:
    """Decode ``items`` (file names or images) and find their faces. -> one (image decoded here,
    or None for an image given or a file that could not be read; faces or None; error or None)
    per item."""
    decoded = [_decode(item, search.min_side if search.mode == "off" else None) for item in items]
    ok = [i for i, (img, _) in enumerate(decoded) if img is not None and search.mode != "off"]
    found = dict(zip(ok, find_faces([decoded[i][0] for i in ok], detector, search)))
    return [(img if isinstance(item, str) else None, found.get(i), err)
            for i, (item, (img, err)) in enumerate(zip(items, decoded))]


_WORKER = {}


def _start_worker(detector, search: Search) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    torch = sys.modules.get("torch")  # loaded when the pool started after it (MTCNN): not imported here
    if torch is not None:
        torch.set_num_threads(1)  # one process per core: MTCNN runs on one thread in each
    _WORKER.update(detector=detector, search=search)


def _worker_chunk(items: list) -> list[tuple]:
    return process_chunk(items, _WORKER["detector"], _WORKER["search"])


class Pool:
    """Chunks of work, done in ``workers`` forked processes (or, with 0, in this process when
    their results are asked for), given back in the order they were put in."""

    def __init__(self, detector, search: Search, workers: int):
        self.detector, self.search = detector, search
        self.executor = None
        if workers > 0:
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else None)
            self.executor = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                                initargs=(detector, search))

    def submit(self, items: list):
        """Start a chunk (in a worker) -> a handle for ``result``."""
        if self.executor is None:
            return items
        return self.executor.submit(_worker_chunk, items)

    def result(self, handle) -> list[tuple]:
        if self.executor is None:
            return process_chunk(handle, self.detector, self.search)
        try:
            return handle.result()
        except BrokenProcessPool:
            raise geometry.FaceError("a decode worker died (out of memory?): try --workers 0") from None

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None


def decoded_images(paths: list[str], min_side: int | None, workers: int):
    """Yield (index, RGB image or None, error or None) of each of ``paths`` in order, decoded whole
    (``load_rgb(min_side=...)``, no face search) in ``workers`` forked processes (0: here), a few
    chunks ahead. Needs no torch (predict.py --no-detect with ONNX models)."""
    pool = Pool(None, Search("off", min_side=min_side), workers)
    pending, index = collections.deque(), 0
    try:
        for s in range(0, len(paths), CHUNK):
            pending.append(pool.submit(paths[s:s + CHUNK]))
            while pending and (len(pending) > 2 * max(workers, 1) or s + CHUNK >= len(paths)):
                for img, _, err in pool.result(pending.popleft()):
                    yield index, img, err
                    index += 1
    finally:
        pool.close()


def pool_size(paths: list[str], workers: int, detector, device) -> int:
    """How many worker processes the inputs need: none for a single chunk of images, or when the
    detector is a torch model on a GPU (forked processes cannot use the parent's CUDA context)."""
    if getattr(detector, "name", None) == "mtcnn" and getattr(device, "type", "cpu") != "cpu":
        return 0
    if any(videos.is_video(p) for p in paths):
        return workers
    chunks = -(-len(paths) // CHUNK)
    return 0 if chunks <= 1 else min(workers, chunks)


def _pixels(path: str) -> int:
    """An image file's pixel count, from its header (0 when it cannot be read: decoding says why)."""
    try:
        with warnings.catch_warnings(), Image.open(path) as img:
            warnings.simplefilter("ignore")  # a decompression-bomb warning: load_rgb reports the file
            return img.width * img.height
    except Exception:  # noqa: BLE001 - any unreadable file is reported by the decoding worker
        return 0


def _image_entries(paths: list[str]):
    for s in range(0, len(paths), CHUNK):
        chunk = paths[s:s + CHUNK]
        yield [("image", p) for p in chunk], chunk, sum(_pixels(p) for p in chunk)


def _video_entries(path: str, every: int, keep_frames: bool):
    """(metas, frames to search) of a video, CHUNK sampled frames at a time; frames that are not
    sampled travel (for --annotate) in the metas only."""
    metas, frames = [], []
    try:
        video = videos.Video(path)
        for index, t, img, sampled in video.frames(every):
            if sampled:
                metas.append(("frame", path, index, t, video.fps, img if keep_frames else None))
                frames.append(img)
            elif keep_frames:
                metas.append(("skipped", path, index, t, video.fps, img))
            if len(frames) == CHUNK:
                yield metas, frames, sum(f.width * f.height for f in frames)
                metas, frames = [], []
    except geometry.FaceError as e:
        metas.append(("error", path, str(e)))
    yield metas, frames, sum(f.width * f.height for f in frames)


def entries(paths: list[str], every: int, keep_frames: bool):
    """(metas, items, pixels) chunks of every input in order: runs of images, then videos frame by frame."""
    for video, group in itertools.groupby(paths, key=videos.is_video):
        if video:
            for path in group:
                yield from _video_entries(path, every, keep_frames)
        else:
            yield from _image_entries(list(group))


class Feed:
    """Decoded inputs and their faces, computed ahead in a ``Pool``: iterate over ``results()``
    for (meta, image, faces, error) in input order; ``close()`` stops the workers."""

    def __init__(self, paths: list[str], args, detector, workers: int, exact: bool = False):
        self.source = entries(paths, args.every, args.annotate is not None)
        self.pool = Pool(detector, Search(args.detect, args.detect_size, args.min_face, exact), workers)
        self.exhausted, self.held = False, 0
        self.pending = collections.deque()
        self._fill()

    def _fill(self) -> None:
        """Submit chunks while less than IN_FLIGHT_PIXELS are submitted and not yet taken."""
        while not self.exhausted and (self.held < IN_FLIGHT_PIXELS or not self.pending):
            entry = next(self.source, None)
            if entry is None:
                self.exhausted = True
                return
            metas, items, pixels = entry
            self.held += pixels
            self.pending.append((metas, items, pixels, self.pool.submit(items) if items else None))

    def results(self):
        try:
            while self.pending:
                metas, items, pixels, handle = self.pending.popleft()
                out = zip(items, self.pool.result(handle) if handle is not None else ())
                self.held -= pixels
                self._fill()
                for meta in metas:
                    if meta[0] in ("image", "frame"):
                        item, (img, found, err) = next(out)
                        yield meta, (img if isinstance(item, str) else item), found, err
                    else:
                        yield meta, None, None, None
        finally:
            self.close()

    def close(self) -> None:
        self.pool.close()


def detected_units(feed: Feed, args, detector, chips):
    """inference.Units of ``feed``'s results, in input order, their regions (chips) cut here."""
    from gender_age.predict.units import Unit, find_regions  # loads torch: after the pool has started
    keep = args.annotate is not None
    for meta, img, found, err in feed.results():
        kind, path = meta[0], meta[1]
        if kind == "error":
            yield Unit(path, error=meta[2])
        elif kind == "skipped":
            yield Unit(path, *meta[2:5], image=meta[5], sampled=False)
        elif img is None:
            yield Unit(path, error=err)
        else:
            try:
                regions = find_regions(img, args.detect, detector, chips, args.detect_size, found=found)
            except BadImageError as e:  # resize_square's pixel limit
                yield Unit(path, error=str(e))
                continue
            if kind == "image":
                yield Unit(path, image=img if keep else None, regions=regions)
            else:
                yield Unit(path, *meta[2:5], image=meta[5], regions=regions)
