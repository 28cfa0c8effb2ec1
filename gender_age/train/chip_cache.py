"""A run's training images framed as its model will see faces at prediction time.

``--face-chips aligned`` turns every image of a run (ImageFolder, UTKFace, CSV,
IMDB-WIKI names; train, validation and test) into a chip with
``faces.chip_image``, which cuts with ``faces.face_chip``, the function
predict.py cuts faces with. Chips are made once and kept in an on-disk cache
(``--chip-cache``; default ``$GAC_CHIP_CACHE``, else
``~/.cache/gender-age-classifier/chips``; its files: ``faces.chip_store``). An
image without a detectable face is counted, listed in ``no_face_images.csv``
beside the run and skipped or centre-cropped (``--no-face``).

Every new run also measures where MTCNN's box lies in its training images
(``faces.framing_of``, medians): on the chipped training images, or with
``--face-chips off`` on a seeded sample of ``--framing-sample`` of them. The
checkpoint stores it in its chip spec, and predict.py frames faces for an
``off`` model with it instead of the IMDB-WIKI ``faces.GEOMETRY``.
``--test-only`` and ``--resume`` take the whole spec from the checkpoint.
"""
from __future__ import annotations

import dataclasses
import random
import time
from functools import partial
from pathlib import Path

import torch

from gender_age.data import loading
from gender_age.data import selection
from gender_age.data import transforms
from gender_age.faces import alignment
from gender_age.faces import chip_store
from gender_age.faces import detectors
from gender_age.faces import geometry
from gender_age.train import config
from gender_age.core.checkpointing import load_checkpoint
from gender_age.nets.metadata import check_metadata
from gender_age.core.runtime import all_gather_objects, progress_mode
from gender_age.data.samples import split_seed

NO_FACE_LIST = "no_face_images.csv"


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
    g.add_argument("--chip-template", default=None, choices=tuple(alignment.TEMPLATES),
                   help="aligned chips: where the landmarks go. wide: the face with hair and background around "
                        "it; utkface: cut as UTKFace cut its faces, eyebrows to chin (its tight crops then fill "
                        "the chip); " + config.describe_default("chip_template"))
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
    folder = Path(args.chip_cache or chip_store.default_cache()) / chip_store.spec_key(spec)
    chip_store.check_cache(folder)
    mine = paths[env["rank"]::env["world"]]
    made, failed, start = {}, {}, time.perf_counter()
    work = partial(chip_store.chip_entry, spec=spec, folder=folder, detector=make_detector())
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
    return sel, partial(chip_store.load_chip, chips=chips, failed=failed, size=spec.size), framing


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
    if args.face_chips != "aligned":
        return alignment.ChipSpec(args.face_chips, preset.resize, 0.0)
    return alignment.ChipSpec("aligned", preset.resize, args.chip_margin, alignment.TEMPLATES[args.chip_template])


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
