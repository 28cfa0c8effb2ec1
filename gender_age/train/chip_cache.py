"""A run's training images framed as its model will see faces at prediction time.

``--face-chips aligned`` turns every image of a run (ImageFolder, UTKFace, CSV,
IMDB-WIKI names; train, validation and test) into a chip with
``faces.chip_image``, which cuts with ``faces.face_chip``, the function
predict.py cuts faces with. Chips are made once and kept in an on-disk cache
(``--chip-cache``; default ``$GAC_CHIP_CACHE``, else
``~/.cache/gender-age-classifier/chips``): a folder per chip spec, named by a
digest of everything that shapes a chip (``spec_key``), holding one file per
image named by the digest of the image file's bytes (``write_chip``: the
uint8 pixels as they are, 3 x size x size bytes, which read about 100 times
faster than a PNG). A changed image or spec is another name, so nothing stale
is ever read. Files are written atomically
(a temporary name, then a rename), so two runs can fill the cache at once. An
image without a detectable face gets an empty ``.none`` entry; such images
are counted, listed in ``no_face_images.csv`` beside the run and skipped or
centre-cropped (``--no-face``).

Every new run also measures where MTCNN's box lies in its training images
(``faces.framing_of``, medians): on the chipped training images, or with
``--face-chips off`` on a seeded sample of ``--framing-sample`` of them. The
checkpoint stores it in its chip spec, and predict.py frames faces for an
``off`` model with it instead of the IMDB-WIKI ``faces.GEOMETRY``.
``--test-only`` and ``--resume`` take the whole spec from the checkpoint.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gender_age.data import loading
from gender_age.data import selection
from gender_age.data import transforms
from gender_age.faces import alignment
from gender_age.faces import detectors
from gender_age.faces import geometry
from gender_age.train import config
from gender_age.core.checkpointing import atomic_write, load_checkpoint
from gender_age.core.images import BadImageError, decode_resized, file_digest, load_rgb
from gender_age.nets.metadata import check_metadata
from gender_age.core.runtime import all_gather_objects, progress_mode
from gender_age.data.samples import split_seed

CHIP_VERSION = 1  # bump when chips come out differently for the same spec (the cache then starts afresh)
NO_FACE_LIST = "no_face_images.csv"
MAGIC = b"GACCHIP1"  # then the framing (4 little-endian float32), then the chip (uint8, channels first)
HEADER = len(MAGIC) + 16


def add_args(g) -> None:
    """The training flags of face chips (an argparse group)."""
    g.add_argument("--face-chips", default=None, choices=alignment.CHIP_MODES,
                   help="aligned: train on MTCNN-aligned face chips of every image (made once, cached), as "
                        "predict.py cuts faces for the model; off: the images as they are (default: off, the "
                        "original's behaviour; age-gender: aligned, one framing for all sources); "
                        + config.describe_default("face_chips"))
    g.add_argument("--chip-margin", type=float, default=None,
                   help="aligned chips: space around the face template on each side, as a fraction of the "
                        "template's face square (age-gender's measured better on validation, docs/results.md); "
                        + config.describe_default("chip_margin"))
    g.add_argument("--no-face", default="center", choices=("center", "skip"),
                   help="aligned chips: an image without a detectable face is centre-cropped (what predict.py "
                        "--detect auto does with a face crop whose face it misses) or skipped (as --detect on)")
    g.add_argument("--chip-cache", default=None, metavar="DIR",
                   help="where chips are kept between runs (default: $GAC_CHIP_CACHE, else "
                        "~/.cache/gender-age-classifier/chips)")
    g.add_argument("--framing-sample", type=int, default=50, metavar="N",
                   help="--face-chips off: measure where faces lie in N training images (stored in the "
                        "checkpoint for predict.py); 0 = do not measure (predict.py then frames faces as "
                        "IMDB-WIKI crops)")


def default_cache() -> Path:
    if os.environ.get("GAC_CHIP_CACHE"):
        return Path(os.environ["GAC_CHIP_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gender-age-classifier" / "chips"


def spec_key(spec: alignment.ChipSpec) -> str:
    """The cache folder's name: the chip's mode and size, and a digest of all that shapes a chip."""
    what = {"mode": spec.mode, "size": spec.size, "margin": spec.margin, "template": spec.template,
            "detector": "mtcnn", "detect_size": detectors.DETECT_SIZE, "version": CHIP_VERSION}
    digest = hashlib.blake2b(json.dumps(what, sort_keys=True).encode(), digest_size=8).hexdigest()
    return f"{spec.mode}-{spec.size}px-{digest}"


def write_chip(path: Path, chip: Image.Image, framing: tuple) -> None:
    """A chip file, written atomically: MAGIC, the framing, the pixels (channels first)."""
    pixels = np.asarray(chip, dtype=np.uint8).transpose(2, 0, 1)
    with atomic_write(path) as f:
        f.write(MAGIC + np.asarray(framing, dtype="<f4").tobytes() + pixels.tobytes())


def read_framing(path: Path, size: int) -> tuple:
    """The framing stored in a chip file of ``size`` px; ValueError for a damaged file, OSError for none."""
    if path.stat().st_size != HEADER + 3 * size * size:
        raise ValueError("not a whole chip file")
    with open(path, "rb") as f:
        head = f.read(HEADER)
    if not head.startswith(MAGIC):
        raise ValueError("not a chip file")
    return tuple(float(v) for v in np.frombuffer(head, dtype="<f4", offset=len(MAGIC)))


def read_chip(path, size: int) -> torch.Tensor:
    """The chip of a chip file, uint8 (3, size, size); BadImageError when it is damaged."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise BadImageError(f"its face chip {path} cannot be read ({e.strerror or e})") from None
    if len(data) != HEADER + 3 * size * size or not data.startswith(MAGIC):
        raise BadImageError(f"its face chip {path} is damaged: delete it to have it made again")
    return torch.frombuffer(bytearray(data[HEADER:]), dtype=torch.uint8).view(3, size, size)


def chip_entry(path, spec: alignment.ChipSpec, folder: Path, detector) -> tuple:
    """(chip file or None when no face was found, framing of the face or None, made now?) for one
    image: from the cache, or made with ``faces.chip_image`` and stored. BadImageError for an
    unreadable image, or a chip that cannot be stored."""
    key = file_digest(path)
    chip_file, none = folder / key[:2] / f"{key}.chip", folder / key[:2] / f"{key}.none"
    if none.exists():
        return None, None, False
    try:
        return str(chip_file), read_framing(chip_file, spec.size), False
    except (OSError, ValueError):
        pass  # not there yet (or damaged): make it
    chip, framing = alignment.chip_image(load_rgb(path), detector, spec)
    try:
        if chip is None:
            with atomic_write(none):
                pass
            return None, None, True
        write_chip(chip_file, chip, framing)
    except OSError as e:
        raise BadImageError(f"its face chip cannot be stored in {folder} ({e.strerror or e})") from None
    return str(chip_file), framing, True


def load_chip(path, chips: dict, failed: dict, size: int):
    """uint8 (3, size, size) of a prepared image: its chip, or its central square when it has no
    face (``chips[path]`` None); BadImageError, with the reason, for one that failed."""
    if path not in chips:
        raise BadImageError(failed.get(path, "its face chip was not prepared"))
    return read_chip(chips[path], size) if chips[path] else decode_resized(path, size)


def check_cache(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test."):
            pass
    except OSError as e:
        raise selection.DatasetError(f"chip cache {folder} is not writable ({e.strerror or e}): choose another "
                              f"with --chip-cache") from None


MTCNN_INSTALL = "pip install --no-deps facenet-pytorch==2.6.0 requests"


def check_detector() -> None:
    """A one-line DatasetError, before any data is read, when MTCNN (facenet-pytorch) cannot be
    imported: the two things that work for training."""
    try:
        import facenet_pytorch  # noqa: F401
    except ImportError as e:
        raise selection.DatasetError(f"--face-chips aligned needs facenet-pytorch's MTCNN detector, which cannot "
                                     f"be imported ({e}): {MTCNN_INSTALL}, or train with --face-chips off") from None


def make_detector():
    """MTCNN, or a one-line DatasetError when it cannot be used."""
    check_detector()
    try:
        return detectors.make_detector("mtcnn")
    except geometry.FaceError as e:
        raise selection.DatasetError(f"--face-chips aligned needs the MTCNN detector ({e}); train with "
                                     f"--face-chips off instead") from None


def chip_all(paths: list, spec: alignment.ChipSpec, args, env) -> tuple[dict, dict]:
    """Every path's chip entry ({path: (chip, framing, made)}) and errors ({path: reason}): each
    process of a torchrun prepares its share, then all exchange them. Logs what it took."""
    folder = Path(args.chip_cache or default_cache()) / spec_key(spec)
    check_cache(folder)
    mine = paths[env["rank"]::env["world"]]
    made, failed, start = {}, {}, time.perf_counter()
    work = partial(chip_entry, spec=spec, folder=folder, detector=make_detector())
    progress = progress_mode(args.no_progress, env["rank"])
    for i, entry, err in loading.load_all(mine, work, min(env["workers"], len(mine) // 16), progress, "face chips"):
        if err is None:
            made[mine[i]] = entry
        else:
            failed[mine[i]] = err
    entries = {}
    for theirs, their_failed in all_gather_objects((made, failed)):
        entries.update(theirs)
        failed.update(their_failed)
    seconds = time.perf_counter() - start
    new = sum(e[2] for e in entries.values())
    env["log"](f"face chips: {spec.mode}, margin {spec.margin:g}, {spec.size} px: {len(paths)} images in "
               f"{seconds:.1f} s ({len(paths) / max(seconds, 1e-9):.1f} images/s), {new} made, "
               f"{len(entries) - new} from the cache {folder}")
    return entries, failed


def chip_selection(sel: selection.Selection, spec: alignment.ChipSpec, args, out: Path, env) -> tuple:
    """Chips for every split: -> (selection, loader for ds.build_split, training framing or None).
    Images without a face are listed beside the run and skipped or centre-cropped (--no-face)."""
    splits = {"train": sel.train, "val": sel.val, "test": sel.test}
    paths = [p for s in splits.values() if s is not None for p in s.paths]
    entries, failed = chip_all(paths, spec, args, env)
    faceless = [p for p in paths if p in entries and entries[p][0] is None]
    if faceless and env["rank"] == 0:
        what = "skipped" if args.no_face == "skip" else "centre-cropped"
        loading.write_bad_list([(p, f"no face detected: {what}") for p in faceless], out / NO_FACE_LIST)
        env["log"](f"face chips: {len(faceless)} image(s) without a detectable face, {what} (--no-face "
                   f"{args.no_face}), listed in {out / NO_FACE_LIST}")
    if args.no_face == "skip" and faceless:
        gone = [(p, "") for p in faceless]
        sel = dataclasses.replace(sel, train=loading.drop_bad(sel.train, gone), test=loading.drop_bad(sel.test, gone),
                                  val=sel.val and loading.drop_bad(sel.val, gone))
        if len(sel.train) == 0 and len(splits["train"]):
            raise selection.DatasetError("no training image has a detectable face: train with --no-face center or "
                                  "--face-chips off")
    framings = [entries[p][1] for p in sel.train.paths if p in entries and entries[p][1] is not None]
    framing = geometry.median_framing(framings) if len(framings) >= 5 else None
    chips = {p: e[0] for p, e in entries.items()}
    return sel, partial(load_chip, chips=chips, failed=failed, size=spec.size), framing


def sampled_framing(paths: list, args, log) -> geometry.Geometry | None:
    """--face-chips off: the framing of a seeded sample of --framing-sample training images."""
    sample = random.Random(split_seed(args)).sample(list(paths), min(args.framing_sample, len(paths)))
    if not sample:
        return None
    try:
        framing, found = detectors.measure_framing(sample, detectors.make_detector("mtcnn"))
    except geometry.FaceError as e:
        log(f"warning: framing not measured ({e}): predict.py will frame faces as IMDB-WIKI crops")
        return None
    if framing is None:
        log(f"framing: a face in only {found} of {len(sample)} sampled training images: predict.py will frame "
            f"faces as IMDB-WIKI crops")
    return framing


def describe_framing(g: geometry.Geometry) -> str:
    return f"MTCNN's face box is {g.w:.2f} x {g.h:.2f} of the image side, centred at ({g.cx:.2f}, {g.cy:.2f})"


def run_spec(args, preset: transforms.Preset, source: Path | None) -> alignment.ChipSpec:
    """The chip spec of the checkpoint a run continues or evaluates, else the one its flags ask for."""
    if source is not None:
        return check_metadata(load_checkpoint(source), source)["chips"]
    return alignment.ChipSpec(args.face_chips, preset.resize, args.chip_margin if args.face_chips == "aligned" else 0.0)


def prepare(args, sel: selection.Selection, preset: transforms.Preset, source: Path | None, out: Path, env) -> tuple:
    """A run's face chips: -> (selection, loader for ds.build_split or None, the chip spec as the
    checkpoint stores it). ``source``: the checkpoint that --resume or --test-only reads."""
    spec = run_spec(args, preset, source)
    load = framing = None
    # building the detector initialises its layers from torch's random generator before loading
    # their weights: fork it, so that a seeded run draws the same weights and batches with or
    # without the framing measurement (and every process keeps the same generator)
    with torch.random.fork_rng(devices=[]):
        if spec.mode == "aligned":
            sel, load, framing = chip_selection(sel, spec, args, out, env)
        elif source is None and args.framing_sample and env["rank"] == 0:
            framing = sampled_framing(sel.train.paths, args, env["log"])
    if source is None and framing is not None:
        spec = dataclasses.replace(spec, framing=framing)
        env["log"](f"framing: {describe_framing(framing)} in the training images (medians); predict.py frames "
                   f"faces the same way for this model")
    return sel, load, spec.as_dict()
