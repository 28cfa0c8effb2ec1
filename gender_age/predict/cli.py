"""Predict gender, age group and exact age for every face in photos and videos.

    python predict.py            # checkpoints/gender/model_best.tar on gender-data/predict/
    python predict.py -a         # checkpoints/age/model_best.tar on age-data/predict/
    python predict.py photo.jpg faces/ --checkpoint run/model_best.tar --json
    python predict.py party.jpg clip.mp4 --gender-checkpoint g.tar --age-checkpoint a.tar \\
        --exact-age-checkpoint e.tar --csv --annotate out/ --every 10
    python predict.py photo.jpg --onnx model.onnx      # onnxruntime, from export.py
    python predict.py photo.jpg --checkpoint checkpoints/age-gender/model_best.tar   # one network: both

Faces (``--detect``): ``auto`` (default) runs the face detector (faces.py) and
cuts each face for each model as that model was trained (the chip spec in its
checkpoint or ONNX metadata: an aligned chip, or a square framed like its
training images); an image that is itself a face crop (squarish, and no face
found or the crop around its main face covers it) is predicted whole, exactly
like the training data, so folders of face crops give one line per image as
before (a model trained on aligned chips gets the chip of its main face). ``on``
always detects (a photo with no face gives a "no face found" record), ``off`` /
``--no-detect`` predicts every image whole (its central square).

Output: one record per face (per image when nothing was located), with every
model's prediction. A single model on whole images prints ``file label
probability`` lines (``file age`` for an exact-age model, ``file gender
probability age age_group`` for an age-gender model); otherwise a table with a
header and face index and box columns, in fixed-width columns. An age-gender
model's fields are gender, gender_probability, gender_probabilities, age and
age_group (prefixed with age_gender_ beside other models).
``--json`` / ``--csv`` give the same records; videos add frame and time.
Records are printed as inputs finish (with ``--detect auto``, whole-image
records wait for the first detected face, which decides the layout, or for the
end); JSON is a list closed at the end. Control characters in names are
escaped, and CSV text cells that a spreadsheet would run as a formula start
with a quote. Images that cannot be read are reported on stderr; the others are
still predicted, and the exit status is 1 when any input failed, 2 for a usage
problem, a bad model file or an output that cannot be written, and 130 after
Ctrl-C (what was printed is complete and kept).
"""
from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

from gender_age.faces import detectors
from gender_age.faces import geometry
from gender_age.faces import videos
from gender_age.core.cores import usable_cores
from gender_age.predict.workers import MIN_FACE, Feed, detected_units, pool_size
from gender_age.core.images import is_hidden
from gender_age.predict.inputs import collect_inputs
from gender_age.predict.loading import is_onnx
from gender_age.data import age_groups
from gender_age.data.samples import TASK_DATA, DatasetError

# Start-up: this module imports neither torch nor OpenCV, ONNX or a detector's package. main()
# lists the inputs, makes the detector and starts the decode pool first (its processes need no
# torch with the yunet detector), then imports the modules that load torch (inside the functions
# that use them), so decoding and detection overlap torch's import and the models' loading; with
# --no-detect, nothing of a detector is imported at all. When every model is an ONNX file, torch
# is not imported at all (prediction_models.py: onnxruntime and numpy), unless MTCNN needs it.

# torch's OpenMP threads spin while they wait; on cores shared with the decode pool or any other
# work that made a forward pass up to 30x slower (ResNet-18, one 64 px image: 638 ms vs 19 ms;
# predict.py --no-detect on 100 crops: 8.2 s vs 3.2 s). Passive waiting, unless the user set
# it; read when torch is imported, which this module does not do.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# option -> the task its checkpoint must be for
MODEL_OPTIONS = {"gender_checkpoint": "gender", "age_checkpoint": "age", "exact_age_checkpoint": "exact-age",
                 "age_gender_checkpoint": "age-gender"}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" where it tells something: to options that take a value and have one by
    default, unless their help already states the default (a flag, or a default of None, says
    nothing; --no-detect's "default" would be --detect's)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.nargs == 0 or action.default in (None, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Predict gender, age group and exact age for faces in images and videos.",
                                add_help=add_help, formatter_class=HelpFormatter)
    p.add_argument("inputs", nargs="*", help="image or video files, or folders (any depth); default: "
                                             f"{TASK_DATA['gender']}/predict/ ({TASK_DATA['age']}/predict/ with -a); "
                                             "other models have no default folder")
    m = p.add_argument_group("models (a .tar checkpoint or an .onnx file from export.py; several may be combined)")
    m.add_argument("-a", "--age", action="store_true", help="use the age model (checkpoints/age) instead of gender")
    one = m.add_mutually_exclusive_group()
    one.add_argument("--checkpoint", default=None, help="checkpoint to use (default, when no other model is given: checkpoints/gender/model_best.tar, "
                          "or checkpoints/age/model_best.tar with -a)")
    one.add_argument("--onnx", default=None, metavar="MODEL.onnx", help="ONNX model to run on onnxruntime")
    m.add_argument("--gender-checkpoint", default=None, metavar="PATH", help="gender model")
    m.add_argument("--age-checkpoint", default=None, metavar="PATH", help="age-group model (young/old, ...)")
    m.add_argument("--exact-age-checkpoint", default=None, metavar="PATH", help="exact-age (ordinal) model")
    m.add_argument("--age-gender-checkpoint", default=None, metavar="PATH",
                   help="age-gender model (one network: gender, exact age and its age group)")
    m.add_argument("--age-groups", default=None, metavar="NAME=LO-HI,...",
                   help="age groups to read off an age-gender model's predicted age, e.g. child=0-12,adult=13- "
                        "(default: the groups it was trained with)")
    m.add_argument("--tta", action="store_true",
                   help="average over 10 views (4 corner crops + centre, and their mirrors)")
    f = p.add_argument_group("faces and videos")
    f.add_argument("--detect", choices=("auto", "on", "off"), default="auto",
                   help="auto: detect faces, but predict face-crop images whole; on: always detect; "
                        "off: predict every image whole")
    f.add_argument("--no-detect", dest="detect", action="store_const", const="off",
                   help="same as --detect off: the inputs are face crops")
    f.add_argument("--detector", choices=detectors.DETECTORS, default=None,
                   help="face detector: yunet (fast), mtcnn, haar (see detectors.py); default: yunet, or mtcnn "
                        "for models trained on aligned chips (cut on its landmarks)")
    f.add_argument("--detect-size", type=int, default=detectors.DETECT_SIZE,
                   help="search photos at most this many pixels on their longer side")
    f.add_argument("--min-face", type=float, default=MIN_FACE, metavar="FRACTION",
                   help="smallest face to look for, as a fraction of the image's shorter side: photos are searched "
                        "at the size where such a face is 20 px (0: search at --detect-size)")
    f.add_argument("--every", type=int, default=1, metavar="N", help="in videos, predict every N-th frame")
    f.add_argument("--annotate", default=None, metavar="OUT_DIR",
                   help="write each image (and video) with boxes and labels drawn into OUT_DIR")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON records instead of lines")
    fmt.add_argument("--csv", action="store_true", help="print CSV instead of lines")
    p.add_argument("-b", "--batch-size", type=int, default=64, help="faces per forward pass")
    p.add_argument("--workers", type=int, default=None, help="decode workers (default: CPU cores, at most 8)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast; default: on where bf16 is fast (AMX CPUs, CUDA)")
    return p


def asked_models(args, task: str) -> list[tuple[str, str | None]]:
    """[(model file, the task it must be for, or None)] for the models asked for (the default
    checkpoint when none)."""
    asked = [(getattr(args, opt), want) for opt, want in MODEL_OPTIONS.items() if getattr(args, opt)]
    legacy = args.onnx or args.checkpoint
    if legacy or not asked:
        path = legacy or str(Path("checkpoints") / task / "model_best.tar")
        # the default (or -a) checkpoint, or any checkpoint on the default (or -a) folder,
        # must be of the task asked for; --checkpoint on explicit inputs may be of any task
        asked.insert(0, (path, task if (not legacy or args.age or not args.inputs) else None))
    return asked


def build_predictors(args, task: str, device, amp: bool) -> dict:
    """{output key: ModelPredictor} for the models asked for (``asked_models``); device: a
    torch.device, or None when every model is an ONNX file. An age-gender model gets the
    --age-groups, if given, and each of its groups must overlap the ages it predicts."""
    from gender_age.core.checkpointing import CheckpointError, expect
    from gender_age.predict.loading import load_predictor
    loaded = [(load_predictor(path, device, amp), path, want) for path, want in asked_models(args, task)]
    if not args.inputs and all(p.task != task for p, _, _ in loaded):
        other = next((p for p, _, _ in loaded if p.task not in TASK_DATA), None)
        if other is not None:  # a model with no default folder: the inputs were forgotten
            raise DatasetError(f"no inputs given: name the image or video files or folders to predict on, e.g. "
                               f"python predict.py photo.jpg faces/ ... ({other.path} is a '{other.task}' model; "
                               f"only gender and age models have a default folder, <data>/predict/)")
    predictors = {}
    for p, path, want in loaded:
        if want is not None:
            expect(p.ckpt, path, task=want)
        if p.key in predictors:
            raise CheckpointError(f"two models for the task '{p.task}' ({predictors[p.key].path} and {path}): "
                                  f"give one per task")
        predictors[p.key] = p
    set_age_groups(args.age_groups, predictors)
    return predictors


def set_age_groups(text: str | None, predictors: dict) -> None:
    """Give the age-gender model ``text``'s groups (--age-groups) when given, and refuse a group
    that lies wholly outside the ages it predicts: no face could ever be put in it."""
    with_groups = [p for p in predictors.values() if p.genders is not None]
    if text is not None and not with_groups:
        raise DatasetError("--age-groups is for age-gender models (their groups are read off the predicted "
                           "age); an age-group model's groups are its classes")
    for p in with_groups:
        if text is not None:
            p.age_groups = age_groups.parse(text)
        age_groups.check_within(p.age_groups, *p.age_range, what=str(p.path))


def main(args) -> int:
    task = "age" if args.age else "gender"
    inputs = args.inputs or [str(default_folder(task) / "predict")]
    if not args.inputs and not Path(inputs[0]).is_dir():
        raise DatasetError(f"no inputs given, and the default folder {inputs[0]} is not there: name the image or "
                           f"video files or folders to predict on, e.g. python predict.py photo.jpg faces/")
    for name, least in (("batch_size", 1), ("every", 1), ("detect_size", 32)):
        if getattr(args, name) < least:
            raise DatasetError(f"--{name.replace('_', '-')} must be at least {least}")
    if not 0 <= args.min_face < 1:
        raise DatasetError(f"--min-face must be a fraction of the image's side, 0 to 1, not {args.min_face}")
    paths = collect_inputs(inputs)
    # MTCNN is a torch model that runs on the device; the other detectors run on the CPU, and need
    # no torch, so their decode pool starts before torch is imported
    device = resolve_device(args.device) if args.detector == "mtcnn" and args.detect != "off" else None
    workers = args.workers if args.workers is not None else min(8, usable_cores())
    detector = feed = None
    if args.detect != "off":
        try:
            detector = detectors.make_detector(args.detector or "yunet", device or "cpu")
        except detectors.MissingDetector:
            pass  # the models decide which detector fits and what to advise (settle_detector)
        else:
            feed = Feed(paths, args, detector, pool_size(paths, workers, detector, device))
    try:
        if all(is_onnx(path) for path, _ in asked_models(args, task)):
            amp = False  # onnxruntime, fp32 on the CPU: torch is not imported (unless MTCNN needs it)
        else:
            from gender_age.core.runtime import bf16_is_fast
            device = device or resolve_device(args.device)
            amp = bf16_is_fast(device) if args.amp is None else args.amp
        return predict_paths(args, task, paths, detector, feed, workers, device, amp)
    finally:
        if feed is not None:
            feed.close()


def default_folder(task: str) -> Path:
    """The task's default data folder (gender-data, age-data)."""
    from gender_age.data.samples import TASK_DATA
    return Path(TASK_DATA[task])


def resolve_device(name: str):
    """runtime.resolve_device (imported here: it loads torch)."""
    from gender_age.core.runtime import resolve_device as resolve
    return resolve(name)


def predict_units(units, predictors: dict, batch_size: int, tta: bool = False, max_pending: int = 256):
    """inference.predict_units (imported here: it loads torch)."""
    from gender_age.predict.pipeline import predict_units as predict
    return predict(units, predictors, batch_size, tta, max_pending)


def predict_paths(args, task: str, paths: list[str], detector, feed: Feed | None, workers: int, device, amp) -> int:
    """Load the models and predict on ``paths``, faces found by ``feed`` (None with --detect off)."""
    from gender_age.core.checkpointing import expect
    from gender_age.predict.pipeline import all_units
    from gender_age.predict.annotate import Annotator
    from gender_age.predict.records import RecordStream, SafeWriter
    predictors = build_predictors(args, task, device, amp)
    if not args.inputs and task in predictors:
        train = default_folder(task) / "train"
        if train.is_dir():
            found = sorted(d.name for d in train.iterdir() if d.is_dir() and not is_hidden(d.name))
            p = predictors[task]
            expect(p.ckpt, p.path, classes=found)
    detector, feed = settle_detector(args, predictors, paths, workers, device, detector, feed)
    annotator = Annotator(args.annotate, paths) if args.annotate else None
    # face index and box columns: always with detection or videos, never without; --detect auto
    # decides on the first face the detector finds (RecordStream holds whole images until then)
    located = True if args.detect == "on" or any(videos.is_video(p) for p in paths) else \
        (False if args.detect == "off" else None)
    fmt = "json" if args.json else "csv" if args.csv else "text"
    stream = RecordStream(SafeWriter(sys.stdout), fmt, predictors, paths, located)
    chips = [p.chips for p in predictors.values()]
    units = all_units(paths, args, None, workers, chips) if feed is None else \
        detected_units(feed, args, detector, chips)
    try:
        failed = predict_all(predict_units(units, predictors, args.batch_size, args.tta,
                                           max_pending=8 if annotator else 256), predictors, stream, annotator)
    finally:
        if feed is not None:
            feed.close()  # main's, or the one settle_detector made in its place (closing twice is harmless)
    if failed:
        print(f"error: {failed} of {len(paths)} input(s) could not be read", file=sys.stderr)
        return 1
    return 0


def settle_detector(args, predictors: dict, paths: list[str], workers: int, device, detector, feed):
    """(detector, feed) that fit the models: --detector, else YuNet, or MTCNN for models trained on
    aligned chips; main's, or a new one. A missing package is a one-line error naming what works
    for these models (never Haar, which has no landmarks, for aligned-chip models)."""
    if args.detect == "off":
        return None, None
    aligned = [str(p.path) for p in predictors.values() if p.chips.mode == "aligned"]
    if aligned and args.detector == "haar":  # the one detector without landmarks
        raise geometry.FaceError(f"{aligned[0]} was trained on aligned face chips, which need face landmarks: "
                                 f"{detectors.with_landmarks()}")
    if detector is not None and not aligned:  # main's: --detector, or yunet
        return detector, feed
    name = args.detector or ("mtcnn" if aligned else "yunet")
    if feed is not None:
        feed.close()
    # aligned chips were made from MTCNN's landmarks on the whole image: find faces the same way
    # (another detector's landmarks, or a coarse search, shift the chip: 100/108 instead of 102/108)
    try:
        detector = detectors.make_detector(name, device or "cpu")
    except detectors.MissingDetector as e:
        raise detectors.with_alternative(e, name, landmarks=bool(aligned)) from None
    return detector, Feed(paths, args, detector, pool_size(paths, workers, detector, device), exact=bool(aligned))


def predict_all(predicted, predictors: dict, stream, annotator) -> int:
    """Print the records of each (unit, results) of ``predicted`` as it comes and annotate it;
    report unreadable inputs on stderr. Returns their number. After an error or an interrupt the
    records so far are still printed and no half-written annotated file is left."""
    from gender_age.predict.annotate import face_label
    from gender_age.predict.escaping import printable
    from gender_age.predict.records import unit_records
    failed = 0
    try:
        for unit, results in predicted:
            if unit.error is not None:
                failed += 1
                print(f"error: {printable(unit.file)}: {printable(unit.error)}", file=sys.stderr)
                continue
            if unit.sampled:
                stream.add(unit_records(unit, results, predictors))
            if annotator:
                annotator.add(unit, [(g.box, face_label(r, predictors))
                                     for g, r in zip(unit.regions, results) if g.box is not None])
    except BaseException:
        if annotator:
            annotator.abort()
        raise
    finally:
        stream.close()
    if annotator:
        annotator.close()
    return failed


def usage_errors() -> tuple:
    """The errors that are a one-line message and exit status 2 (their modules are imported when
    one is being handled: they load torch)."""
    from gender_age.core.checkpointing import CheckpointError
    from gender_age.predict.records import OutputError
    from gender_age.core.runtime import DeviceError
    return DatasetError, CheckpointError, DeviceError, geometry.FaceError, OutputError


def cli(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        return main(args)
    except usage_errors() as e:
        from gender_age.predict.escaping import printable
        print(f"error: {printable(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; the results printed above are complete", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (predict.py ... | head): stop quietly
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            pass
        return 1


if __name__ == "__main__":
    sys.exit(cli())
