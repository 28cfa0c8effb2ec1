"""What prediction works on: a ``Unit`` per image or video frame, with its ``Region``s
(detected faces, the whole image, or a 'no face' marker), each cut once per chip spec of
the models in use by ``alignment.face_chip``, the function that made the training chips
(``find_regions``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from PIL import Image
from gender_age.faces import alignment
from gender_age.faces import detectors
from gender_age.faces import geometry
from gender_age.core.images import resize_square
from gender_age.predict.inputs import collect_inputs, is_input_file  # noqa: F401 (re-exported: bench.py)


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
    return [alignment.ChipSpec(size=chips)] if isinstance(chips, int) else list(dict.fromkeys(chips))


def is_crop_for(img: Image.Image, found: list, spec: alignment.ChipSpec, detector) -> bool:
    """Whether ``img`` is itself a face crop framed like ``spec``'s training images."""
    return geometry.looks_like_crop(img.size, found, alignment.crop_geometry(spec, detector))


def whole_image(img: Image.Image, chips, found: list = (), detector=None) -> Region:
    """The image as one face crop (box: its central square). Each spec's square: the image as the
    training pipeline decodes it (``resize_square``), unless a face was found and the image is not
    framed like that spec's training images, or the spec aligns: then its chip of the main face."""
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    main = geometry.main_face(found, img.size) if found else None

    def square(c: alignment.ChipSpec) -> Image.Image:
        if main is None or (c.mode == "off" and is_crop_for(img, found, c, detector)):
            return resize_square(img, c.size)
        return alignment.face_chip(img, main, c, detector)
    return Region(0, (left, top, left + s, top + s), None, "whole image", {c: square(c) for c in chip_specs(chips)})


def find_regions(img: Image.Image, mode: str, detector, chips,
                 detect_size: int = detectors.DETECT_SIZE, found: list | None = None) -> list[Region]:
    """RGB image -> regions to predict on, per ``mode`` (auto/on/off, see the module doc), with a square
    per ChipSpec of ``chips`` (``chip_specs``). ``auto`` predicts an image whole when it is framed like
    the training images of any of the specs (each spec still gets its own framing). ``found``: the
    image's faces when they were already searched (decode_pool.py), else they are searched here."""
    chips = chip_specs(chips)
    if mode == "off":
        return [whole_image(img, chips)]
    if found is None:
        found = detectors.detect_faces(detector, img, detect_size)
    if mode == "auto" and any(is_crop_for(img, found, c, detector) for c in chips):
        return [whole_image(img, chips, found, detector)]
    if not found:
        return [Region(None, None, None, "no face found", None)]
    # each chip is framed on the detector's own box or landmarks (it may reach past the image
    # edge, as the face does); the box reported is clipped to the image
    return [Region(i, geometry.clip_box(f.box, img.size), f.score, "detector",
                   {c: alignment.face_chip(img, f, c, detector) for c in chips})
            for i, f in enumerate(found)]
