"""From inputs to per-face results: images and video frames, the regions to
predict on in each (detected faces, or the whole image), and batched
prediction over them, in input order.

Each model sees each face as it was trained (its ``faces.ChipSpec``): the
squares of a region are cut once per distinct spec of the models in use, by
``faces.face_chip``, the function that made the training chips.
"""
from __future__ import annotations

import itertools
import numpy as np
from gender_age.faces import detectors
from gender_age.faces import geometry
from gender_age.faces import videos
from gender_age.predict.workers import decoded_images
from gender_age.core.images import BadImageError
from gender_age.predict.inputs import collect_inputs, is_input_file  # noqa: F401 (re-exported: bench.py)
from gender_age.predict.base import ModelPredictor
from gender_age.predict.units import Region, Unit, chip_specs, find_regions


def image_units(paths: list[str], mode: str, detector, workers: int, keep_image: bool, chips: list,
                detect_size: int = detectors.DETECT_SIZE):
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
                detect_size: int = detectors.DETECT_SIZE):
    """Yield a Unit per sampled frame of a video (and, with ``keep_frames``, the others too)."""
    try:
        video = videos.Video(path)
        for index, t, img, sampled in video.frames(every):
            if sampled:
                yield Unit(path, index, t, video.fps, img if keep_frames else None,
                           find_regions(img, mode, detector, chips, detect_size))
            elif keep_frames:
                yield Unit(path, index, t, video.fps, img, sampled=False)
    except geometry.FaceError as e:
        yield Unit(path, error=str(e))


def all_units(paths: list[str], args, detector, workers: int, chips: list):
    """Units of every input, in input order: runs of images decoded in parallel, videos frame by frame;
    a square per ChipSpec of ``chips`` in each region."""
    keep = args.annotate is not None
    for video, group in itertools.groupby(paths, key=videos.is_video):
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
