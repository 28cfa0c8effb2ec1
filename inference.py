"""From inputs to per-face results: images and video frames, the regions to
predict on in each (detected faces, or the whole image), and batched
prediction over them, in input order.

Each model sees each face as it was trained (its ``faces.ChipSpec``): the
squares of a region are cut once per distinct spec of the models in use, by
``faces.face_chip``, the function that made the training chips.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

import faces
from decode_pool import decoded_images
from images import BadImageError, resize_square
from inputs import collect_inputs, is_input_file  # noqa: F401 (re-exported: bench.py)
from prediction_models import ModelPredictor


@dataclass
class Region:
    """What to predict on in an image: a detected face, the whole image, or a 'no face' marker.

    box: (x0, y0, x1, y1) in image pixels (the face, or the central square of a
    whole image); squares: {ChipSpec: the RGB square that spec's models predict
    on, at its size}, None for no face.
    """
    face: int | None
    box: tuple | None
    score: float | None
    source: str  # "detector", "whole image" or "no face found"
    squares: dict | None

    @property
    def square(self) -> Image.Image | None:
        """The square of the first spec (all there is for one model)."""
        return None if self.squares is None else next(iter(self.squares.values()))


@dataclass
class Unit:
    """One image or video frame: its regions, or the error that stopped it."""
    file: str
    frame: int | None = None
    time: float | None = None
    fps: float | None = None  # of the video
    image: Image.Image | None = None  # kept only for --annotate
    regions: list = field(default_factory=list)
    error: str | None = None
    sampled: bool = True  # False: a video frame only carried along for the annotated video


def chip_specs(chips) -> list:
    """A list of ChipSpecs, or one int size: the framing of an unmeasured model of that size."""
    return [faces.ChipSpec(size=chips)] if isinstance(chips, int) else list(dict.fromkeys(chips))


def is_crop_for(img: Image.Image, found: list, spec: faces.ChipSpec, detector) -> bool:
    """Whether ``img`` is itself a face crop framed like ``spec``'s training images."""
    return faces.looks_like_crop(img.size, found, faces.crop_geometry(spec, detector))


def whole_image(img: Image.Image, chips, found: list = (), detector=None) -> Region:
    """The image as one face crop (box: its central square). Each spec's square: the image as the
    training pipeline decodes it (``resize_square``), unless a face was found and the image is not
    framed like that spec's training images, or the spec aligns: then its chip of the main face."""
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    main = faces.main_face(found, img.size) if found else None

    def square(c: faces.ChipSpec) -> Image.Image:
        if main is None or (c.mode == "off" and is_crop_for(img, found, c, detector)):
            return resize_square(img, c.size)
        return faces.face_chip(img, main, c, detector)
    return Region(0, (left, top, left + s, top + s), None, "whole image", {c: square(c) for c in chip_specs(chips)})


def find_regions(img: Image.Image, mode: str, detector, chips,
                 detect_size: int = faces.DETECT_SIZE, found: list | None = None) -> list[Region]:
    """RGB image -> regions to predict on, per ``mode`` (auto/on/off, see the module doc), with a square
    per ChipSpec of ``chips`` (``chip_specs``). ``auto`` predicts an image whole when it is framed like
    the training images of any of the specs (each spec still gets its own framing). ``found``: the
    image's faces when they were already searched (decode_pool.py), else they are searched here."""
    chips = chip_specs(chips)
    if mode == "off":
        return [whole_image(img, chips)]
    if found is None:
        found = faces.detect_faces(detector, img, detect_size)
    if mode == "auto" and any(is_crop_for(img, found, c, detector) for c in chips):
        return [whole_image(img, chips, found, detector)]
    if not found:
        return [Region(None, None, None, "no face found", None)]
    # each chip is framed on the detector's own box or landmarks (it may reach past the image
    # edge, as the face does); the box reported is clipped to the image
    return [Region(i, faces.clip_box(f.box, img.size), f.score, "detector",
                   {c: faces.face_chip(img, f, c, detector) for c in chips})
            for i, f in enumerate(found)]


def image_units(paths: list[str], mode: str, detector, workers: int, keep_image: bool, chips: list,
                detect_size: int = faces.DETECT_SIZE):
    """Decode images in ``workers`` processes, in order, and yield a Unit for each."""
    # whole images need only the largest chip's side (JPEGs decode at a reduced DCT scale); detection
    # wants detail
    min_side = max(c.size for c in chip_specs(chips)) if mode == "off" else None
    for i, img, err in decoded_images(paths, min_side, workers):
        if img is None:
            yield Unit(paths[i], error=err)
            continue
        try:
            regions = find_regions(img, mode, detector, chips, detect_size)
        except BadImageError as e:  # resize_square's pixel limit
            yield Unit(paths[i], error=str(e))
            continue
        yield Unit(paths[i], image=img if keep_image else None, regions=regions)


def video_units(path: str, every: int, mode: str, detector, keep_frames: bool, chips: list,
                detect_size: int = faces.DETECT_SIZE):
    """Yield a Unit per sampled frame of a video (and, with ``keep_frames``, the others too)."""
    try:
        video = faces.Video(path)
        for index, t, img, sampled in video.frames(every):
            if sampled:
                yield Unit(path, index, t, video.fps, img if keep_frames else None,
                           find_regions(img, mode, detector, chips, detect_size))
            elif keep_frames:
                yield Unit(path, index, t, video.fps, img, sampled=False)
    except faces.FaceError as e:
        yield Unit(path, error=str(e))


def all_units(paths: list[str], args, detector, workers: int, chips: list):
    """Units of every input, in input order: runs of images decoded in parallel, videos frame by frame;
    a square per ChipSpec of ``chips`` in each region."""
    keep = args.annotate is not None
    for video, group in itertools.groupby(paths, key=faces.is_video):
        group = list(group)
        if video:
            for path in group:
                yield from video_units(path, args.every, args.detect, detector, keep, chips, args.detect_size)
        else:
            yield from image_units(group, args.detect, detector, min(workers, len(group) // args.batch_size),
                                   keep, chips, args.detect_size)


def _predict_regions(regions: list[Region], predictors: dict, batch_size: int, tta: bool) -> list[dict]:
    """Regions (with squares) -> one {model key: result} per region, in batches; each model
    predicts on the squares of its own ChipSpec (``p.chips``)."""
    results = [{} for _ in regions]
    for s in range(0, len(regions), batch_size):
        chunk = regions[s:s + batch_size]
        batches = {}  # one uint8 (N,3,R,R) stack per ChipSpec
        for key, p in predictors.items():
            if p.chips not in batches:
                # uint8 (N, R, R, 3) -> (N, 3, R, R)
                batches[p.chips] = np.stack([np.asarray(g.squares[p.chips], dtype=np.uint8)
                                             for g in chunk]).transpose(0, 3, 1, 2)
            for j, res in enumerate(p.predict(batches[p.chips], tta)):
                results[s + j][key] = res
    return results


def predict_units(units, predictors: dict, batch_size: int, tta: bool = False, max_pending: int = 256):
    """Yield (unit, [{model key: result} or None per region]) in order, predicting faces in batches
    of ``batch_size`` across units (at most ``max_pending`` units held at once)."""
    pending, n = [], 0

    def flush():
        regions = [g for u in pending for g in u.regions if g.squares is not None]
        results = iter(_predict_regions(regions, predictors, batch_size, tta))
        for u in pending:
            yield u, [next(results) if g.squares is not None else None for g in u.regions]

    for unit in units:
        pending.append(unit)
        n += sum(g.squares is not None for g in unit.regions)
        if n >= batch_size or len(pending) >= max_pending:
            yield from flush()
            pending, n = [], 0
    yield from flush()


def predict_files(predictor: ModelPredictor, paths: list[str], batch_size: int, workers: int):
    """Yield (path, probabilities (C,) or None, error or None) in input order: whole images."""
    units = image_units(paths, "off", None, workers, False, [predictor.chips])
    for unit, results in predict_units(units, {"m": predictor}, batch_size):
        if unit.error is not None:
            yield unit.file, None, unit.error
        else:
            probs = results[0]["m"]["probabilities"]
            yield unit.file, np.array([probs[c] for c in predictor.classes]), None
