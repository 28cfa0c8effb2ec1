"""Predict gender, age group and exact age for every face in photos and videos.

    python predict.py            # checkpoints/gender/model_best.tar on gender-data/predict/
    python predict.py -a         # checkpoints/age/model_best.tar on age-data/predict/
    python predict.py photo.jpg faces/ --checkpoint run/model_best.tar --json
    python predict.py party.jpg clip.mp4 --gender-checkpoint g.tar --age-checkpoint a.tar \\
        --exact-age-checkpoint e.tar --csv --annotate out/ --every 10
    python predict.py photo.jpg --onnx model.onnx      # onnxruntime, from export.py

Faces (``--detect``): ``auto`` (default) runs the face detector (faces.py) and
predicts on a training-like square crop around each face; an image that is
itself a face crop (squarish, and no face found or the crop around its largest
face covers it) is predicted whole, exactly like the training data, so folders
of face crops give one line per image as before. ``on`` always detects (a
photo with no face gives a "no face found" record), ``off`` / ``--no-detect``
predicts every image whole (its central square), as the training did.

Output: one record per face (per image when nothing was located), with every
model's prediction. A single model on whole images prints ``file label
probability`` lines (``file age`` for an exact-age model); otherwise a table
with a header and face index and box columns. ``--json`` / ``--csv`` give the
same records; videos add frame and time. Images that cannot be read are
reported on stderr; the others are still predicted, and the exit status is 1
when any input failed (2 for a usage problem).
"""
from __future__ import annotations

import argparse
import csv
import functools
import io
import itertools
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

import datasets as ds
import faces
import losses
from checkpointing import CheckpointError, expect, load_checkpoint
from models import build_model

TASK_DATA = {"gender": "gender-data", "age": "age-data"}
# option -> the task its checkpoint must be for
MODEL_OPTIONS = {"gender_checkpoint": "gender", "age_checkpoint": "age", "exact_age_checkpoint": "exact-age"}
ONNX_FORMAT = "1"  # version of the metadata export.py writes into ONNX files
ANNOTATE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Predict gender, age group and exact age for faces in images and videos.",
                                add_help=add_help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("inputs", nargs="*", help="image or video files, or folders (any depth); "
                                             "default: <data>/predict/ of the task")
    m = p.add_argument_group("models (a .tar checkpoint or an .onnx file from export.py; several may be combined)")
    m.add_argument("-a", "--age", action="store_true", help="use the age model (checkpoints/age) instead of gender")
    one = m.add_mutually_exclusive_group()
    one.add_argument("--checkpoint", default=None, help="checkpoint to use (default: checkpoints/<task>/model_best.tar)")
    one.add_argument("--onnx", default=None, metavar="MODEL.onnx", help="ONNX model to run on onnxruntime")
    m.add_argument("--gender-checkpoint", default=None, metavar="PATH", help="gender model")
    m.add_argument("--age-checkpoint", default=None, metavar="PATH", help="age-group model (young/old, ...)")
    m.add_argument("--exact-age-checkpoint", default=None, metavar="PATH", help="exact-age (ordinal) model")
    m.add_argument("--tta", action="store_true",
                   help="average over 10 views (4 corner crops + centre, and their mirrors)")
    f = p.add_argument_group("faces and videos")
    f.add_argument("--detect", choices=("auto", "on", "off"), default="auto",
                   help="auto: detect faces, but predict face-crop images whole; on: always detect; "
                        "off: predict every image whole")
    f.add_argument("--no-detect", dest="detect", action="store_const", const="off",
                   help="same as --detect off: the inputs are face crops")
    f.add_argument("--detector", choices=faces.DETECTORS, default="mtcnn", help="face detector (see faces.py)")
    f.add_argument("--detect-size", type=int, default=faces.DETECT_SIZE,
                   help="search photos at most this many pixels on their longer side")
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


# --------------------------------------------------------------------------
# Models: PyTorch checkpoints and ONNX files behind one interface
# --------------------------------------------------------------------------

class Predictor:
    """A checkpoint, rebuilt and ready: uint8 (N,3,R,R) batches -> logits, probabilities, predictions.

    ``task`` is "gender", "age" or "exact-age"; an exact-age model has
    ``ordinal`` = {"loss", "min_age", "num_ranks"[, "ce_mode"]} and predicts
    min_age + losses.predict_rank(logits, loss).
    """

    def __init__(self, path: str | os.PathLike, device: torch.device, amp: bool = False):
        self.path = Path(path)
        self.ckpt = load_checkpoint(self.path)
        self._describe(self.ckpt)
        try:
            model = build_model(**self.ckpt["model_args"])
            model.load_state_dict(self.ckpt["model_state"])
        except (TypeError, ValueError, RuntimeError, KeyError) as e:
            msg = str(e).strip().splitlines()[0][:160]
            raise CheckpointError(f"{self.path}: the weights do not fit the stored architecture ({msg})") from None
        self.device, self.amp = device, amp
        self.model = model.to(device).eval().to(memory_format=torch.channels_last)

    def _describe(self, info: dict) -> None:
        """Task, classes, preprocessing and ordinal decoding from a checkpoint-like dict."""
        self.task = info.get("task")
        self.classes = list(info.get("classes") or [])
        try:
            self.preset = ds.Preset.from_dict(info["preprocess"])
        except (KeyError, TypeError, ValueError, IndexError):
            raise CheckpointError(f"{self.path} has no usable preprocessing settings ('preprocess')") from None
        self.ordinal = None
        if self.task == "exact-age":
            o = info.get("ordinal")
            if not isinstance(o, dict) or o.get("loss") not in losses.LOSSES or not isinstance(o.get("min_age"), (int, float)):
                raise CheckpointError(f"{self.path} is an exact-age model without usable 'ordinal' settings "
                                      f"(loss one of {', '.join(losses.LOSSES)}, min_age, num_ranks)")
            self.ordinal = dict(o)
        elif not self.classes:
            raise CheckpointError(f"{self.path} names no classes: it is not a classifier of this toolkit")

    @property
    def key(self) -> str:
        """Name of this model's fields in the output: gender, age or exact_age."""
        return str(self.task).replace("-", "_")

    def metadata(self) -> dict[str, str]:
        """What a model file needs besides its weights, as strings (ONNX metadata_props)."""
        meta = {"gac_format": ONNX_FORMAT, "task": str(self.task), "classes": json.dumps(self.classes),
                "preprocess": json.dumps(self.preset.as_dict()), "model_args": json.dumps(self.ckpt["model_args"]),
                "input": f"float32 (N,3,{self.preset.crop},{self.preset.crop}): RGB/255, minus mean, over std; "
                         f"from the central {self.preset.crop} px of the image resized to {self.preset.resize} px",
                "output": "logits (N, outputs)"}
        if self.ordinal is not None:
            meta["ordinal"] = json.dumps(self.ordinal)
        return meta

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float (N,3,C,C) on self.device -> float logits (N, outputs) on the CPU."""
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return self.model(x).float().cpu()

    @torch.no_grad()
    def view_logits(self, batch: torch.Tensor, tta: bool = False) -> torch.Tensor:
        """uint8 (N,3,R,R) -> logits (V, N, outputs): V=1 (centre crop) or 10 (``Preset.tta_batch``)."""
        batch = batch.to(self.device)
        views = self.preset.tta_batch(batch) if tta else self.preset.eval_batch(batch).unsqueeze(0)
        return torch.stack([self._forward(v) for v in views])

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (N,3,R,R) -> float logits (N, outputs), on the CPU."""
        return self.view_logits(batch)[0]

    def probabilities(self, batch: torch.Tensor, tta: bool = False) -> torch.Tensor:
        """uint8 (N,3,R,R) -> class probabilities (N, C): the softmax, averaged over the views."""
        return self.view_logits(batch, tta).softmax(-1).mean(0)

    def ages(self, batch: torch.Tensor, tta: bool = False) -> list[float | int]:
        """uint8 (N,3,R,R) -> N ages: min_age + predict_rank of the logits (averaged over the views).

        Integers, except the expectation of a 'ce' head (ce_mode "expectation"), rounded to 0.1.
        """
        o = self.ordinal
        mode = o.get("ce_mode", "argmax")
        ranks = losses.predict_rank(self.view_logits(batch, tta).mean(0), o["loss"], mode)
        if ranks.is_floating_point():
            return [round(float(r) + o["min_age"], 1) for r in ranks]
        return [int(r) + int(o["min_age"]) for r in ranks]

    def predict(self, batch: torch.Tensor, tta: bool = False) -> list[dict]:
        """uint8 (N,3,R,R) -> N results: {"age"} or {"label", "probability", "probabilities"}."""
        if self.ordinal is not None:
            return [{"age": a} for a in self.ages(batch, tta)]
        out = []
        for p in self.probabilities(batch, tta):
            k = int(p.argmax())
            out.append({"label": self.classes[k], "probability": float(p[k]),
                        "probabilities": {c: float(v) for c, v in zip(self.classes, p)}})
        return out


class OnnxPredictor(Predictor):
    """An ONNX file written by export.py, run on onnxruntime (CPU, fp32); same interface."""

    def __init__(self, path: str | os.PathLike, device: torch.device | None = None, amp: bool = False):
        self.path = Path(path)
        try:
            import onnxruntime as ort
        except ImportError:
            raise CheckpointError("ONNX models need onnxruntime: pip install onnxruntime") from None
        if not self.path.is_file():
            raise CheckpointError(f"ONNX model {self.path} not found: write one with python export.py CHECKPOINT")
        try:
            self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{self.path} is not a readable ONNX model ({msg})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("gac_format") != ONNX_FORMAT:
            raise CheckpointError(f"{self.path} lacks this toolkit's metadata (task, classes, preprocessing): "
                                  f"export it with python export.py")
        try:
            info = {k: json.loads(meta[k]) for k in ("classes", "preprocess", "model_args", "ordinal") if k in meta}
        except json.JSONDecodeError:
            raise CheckpointError(f"{self.path} has corrupt metadata: export it again") from None
        self.ckpt = {"task": meta.get("task"), **info}
        self._describe(self.ckpt)
        self.device, self.amp = torch.device("cpu"), False
        self.input_name = self.session.get_inputs()[0].name

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input_name: x.float().cpu().numpy()})[0])


def load_predictor(path: str | os.PathLike, device: torch.device, amp: bool = False) -> Predictor:
    """A Predictor for a .tar checkpoint, or an OnnxPredictor for an .onnx file."""
    cls = OnnxPredictor if str(path).lower().endswith(".onnx") else Predictor
    return cls(path, device, amp)


# --------------------------------------------------------------------------
# Inputs: images and video frames, and what to predict on in each
# --------------------------------------------------------------------------

@dataclass
class Region:
    """What to predict on in an image: a detected face, the whole image, or a 'no face' marker.

    box: (x0, y0, x1, y1) in image pixels (the face, or the square the model
    sees); square: the RGB square to predict on, already at the models' input
    size R (the largest ``preset.resize``), None for no face.
    """
    face: int | None
    box: tuple | None
    score: float | None
    source: str  # "detector", "whole image" or "no face found"
    square: Image.Image | None


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


def whole_image(img: Image.Image, size: int) -> Region:
    """The image as the training pipeline sees it: ``ds.resize_square`` to ``size``; box = its central square."""
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return Region(0, (left, top, left + s, top + s), None, "whole image", ds.resize_square(img, size))


def find_regions(img: Image.Image, mode: str, detector, size: int,
                 detect_size: int = faces.DETECT_SIZE) -> list[Region]:
    """RGB image -> regions to predict on, squares of ``size`` px, per ``mode`` (auto/on/off, see the module doc)."""
    if mode == "off":
        return [whole_image(img, size)]
    found = faces.detect_faces(detector, img, detect_size)
    if mode == "auto" and faces.looks_like_crop(img.size, found, detector.geometry):
        return [whole_image(img, size)]
    if not found:
        return [Region(None, None, None, "no face found", None)]
    return [Region(i, f.box, f.score, "detector",
                   ds.resize_square(faces.crop_face(img, faces.crop_square(f.box, detector.geometry)), size))
            for i, f in enumerate(found)]


def image_units(paths: list[str], mode: str, detector, workers: int, keep_image: bool, resize: int,
                detect_size: int = faces.DETECT_SIZE):
    """Decode images in ``workers`` processes, in order, and yield a Unit for each."""
    # whole images need only `resize` px (JPEGs decode at a reduced DCT scale); detection wants detail
    min_side = resize if mode == "off" else None
    for i, img, err in ds.load_all(paths, functools.partial(ds.load_rgb, min_side=min_side), workers):
        if img is None:
            yield Unit(paths[i], error=err)
        else:
            yield Unit(paths[i], image=img if keep_image else None,
                       regions=find_regions(img, mode, detector, resize, detect_size))


def video_units(path: str, every: int, mode: str, detector, keep_frames: bool, resize: int,
                detect_size: int = faces.DETECT_SIZE):
    """Yield a Unit per sampled frame of a video (and, with ``keep_frames``, the others too)."""
    try:
        video = faces.Video(path)
        for index, t, img, sampled in video.frames(every):
            if sampled:
                yield Unit(path, index, t, video.fps, img if keep_frames else None,
                           find_regions(img, mode, detector, resize, detect_size))
            elif keep_frames:
                yield Unit(path, index, t, video.fps, img, sampled=False)
    except faces.FaceError as e:
        yield Unit(path, error=str(e))


def _list_videos(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not ds.is_hidden(d)]
        found += [Path(dirpath) / f for f in filenames if not ds.is_hidden(f) and faces.is_video(f)]
    return found


def collect_inputs(inputs: list[str]) -> list[str]:
    """Files as given (any suffix: a bad one is reported later), folders searched at any depth
    for images and videos."""
    paths = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(ds.list_images(p) + _list_videos(p))
            if not found:
                raise ds.DatasetError(f"folder {p} has no images ({', '.join(ds.IMG_EXTENSIONS[:4])}, ...) "
                                      f"or videos ({', '.join(faces.VIDEO_EXTENSIONS[:2])}, ...)")
            paths += [str(f) for f in found]
        elif p.exists() or p.is_symlink():
            paths.append(str(p))
        else:
            raise ds.DatasetError(f"{p} does not exist")
    return paths


def all_units(paths: list[str], args, detector, workers: int, resize: int):
    """Units of every input, in input order: runs of images decoded in parallel, videos frame by frame."""
    keep = args.annotate is not None
    for video, group in itertools.groupby(paths, key=faces.is_video):
        group = list(group)
        if video:
            for path in group:
                yield from video_units(path, args.every, args.detect, detector, keep, resize, args.detect_size)
        else:
            yield from image_units(group, args.detect, detector, min(workers, len(group) // args.batch_size),
                                   keep, resize, args.detect_size)


# --------------------------------------------------------------------------
# Prediction over units, in batches of faces
# --------------------------------------------------------------------------

def _predict_regions(regions: list[Region], predictors: dict, batch_size: int, tta: bool) -> list[dict]:
    """Regions (with a square) -> one {model key: result} per region, in batches."""
    results = [{} for _ in regions]
    for s in range(0, len(regions), batch_size):
        chunk = regions[s:s + batch_size]
        batches = {}  # one uint8 (N,3,R,R) stack per input size R
        for key, p in predictors.items():
            r = p.preset.resize
            if r not in batches:
                batches[r] = torch.stack([ds.pil_to_uint8_tensor(ds.resize_square(g.square, r)) for g in chunk])
            for j, res in enumerate(p.predict(batches[r], tta)):
                results[s + j][key] = res
    return results


def predict_units(units, predictors: dict, batch_size: int, tta: bool = False, max_pending: int = 256):
    """Yield (unit, [{model key: result} or None per region]) in order, predicting faces in batches
    of ``batch_size`` across units (at most ``max_pending`` units held at once)."""
    pending, n = [], 0

    def flush():
        regions = [g for u in pending for g in u.regions if g.square is not None]
        results = iter(_predict_regions(regions, predictors, batch_size, tta))
        for u in pending:
            yield u, [next(results) if g.square is not None else None for g in u.regions]

    for unit in units:
        pending.append(unit)
        n += sum(g.square is not None for g in unit.regions)
        if n >= batch_size or len(pending) >= max_pending:
            yield from flush()
            pending, n = [], 0
    yield from flush()


def predict_files(predictor: Predictor, paths: list[str], batch_size: int, workers: int):
    """Yield (path, probabilities (C,) or None, error or None) in input order: whole images."""
    units = image_units(paths, "off", None, workers, False, predictor.preset.resize)
    for unit, results in predict_units(units, {"m": predictor}, batch_size):
        if unit.error is not None:
            yield unit.file, None, unit.error
        else:
            probs = results[0]["m"]["probabilities"]
            yield unit.file, torch.tensor([probs[c] for c in predictor.classes]), None


# --------------------------------------------------------------------------
# Records and their formats
# --------------------------------------------------------------------------

def field_names(p: Predictor, single: bool) -> tuple[str, str | None, str | None]:
    """(label or age field, probability field, probabilities field) of a model in the records:
    label/probability/probabilities (or age) for a single model; named after the model when
    several are combined (gender, gender_probability, gender_probabilities, ..., exact_age)."""
    if p.ordinal is not None:
        return ("age" if single else p.key), None, None
    pre = "" if single else f"{p.key}_"
    return ("label" if single else p.key), f"{pre}probability", f"{pre}probabilities"


def model_fields(p: Predictor, result: dict | None, single: bool) -> dict:
    """One model's result as record fields (none for a region without a face)."""
    if result is None:
        return {}
    label, prob, probs = field_names(p, single)
    if prob is None:
        return {label: result["age"]}
    return {label: result["label"], prob: round(result["probability"], 6),
            probs: {c: round(v, 6) for c, v in result["probabilities"].items()}}


def unit_records(unit: Unit, results: list, predictors: dict) -> list[dict]:
    """The records of one image or frame: one per region, with every model's fields."""
    base = {"file": unit.file}
    if unit.frame is not None:
        base.update(frame=unit.frame, time=unit.time)
    records = []
    for g, res in zip(unit.regions, results):
        rec = dict(base, face=g.face, box=None if g.box is None else [round(v) for v in g.box],
                   score=None if g.score is None else round(g.score, 4), source=g.source)
        for key, p in predictors.items():
            rec.update(model_fields(p, res and res[key], len(predictors) == 1))
        records.append(rec)
    return records


LOCATION_KEYS = ("face", "box", "score", "source")


def is_located(records: list[dict]) -> bool:
    """Whether face locations matter: something came from the detector, or a video."""
    return any(r["source"] != "whole image" or "frame" in r for r in records)


def strip_location(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in LOCATION_KEYS} for r in records]


def flat_row(r: dict) -> dict:
    """A record as CSV cells: box -> x0,y0,x1,y1; <prefix>probabilities -> <prefix>p_<class>."""
    out = {}
    for k, v in r.items():
        if k == "box":
            out.update(zip(("x0", "y0", "x1", "y1"), v or ["", "", "", ""]))
        elif k.endswith("probabilities"):
            pre = k[: -len("probabilities")]
            out.update({f"{pre}p_{c}": f"{x:.4f}" for c, x in v.items()})
        elif k.endswith("probability"):
            out[k] = f"{v:.4f}"
        else:
            out[k] = "" if v is None else v
    return out


def model_cell(r: dict, p: Predictor, single: bool) -> str:
    """'male 0.973' or '27': one model's result in a record, for text output."""
    label, prob, _ = field_names(p, single)
    return str(r[label]) if prob is None else f"{r[label]} {r[prob]:.3f}"


def text_table(records: list[dict], predictors: dict) -> str:
    """A readable table with a header: file, [frame, time], [face, box], one column per model."""
    single = len(predictors) == 1
    frames = any("frame" in r for r in records)
    located = "face" in records[0]
    rows = [["file"] + (["frame", "time"] if frames else []) + (["face", "box"] if located else [])
            + [field_names(p, single)[0] if p.ordinal is not None else p.key for p in predictors.values()]]
    for r in records:
        row = [r["file"]]
        if frames:
            row += [str(r.get("frame", "")), "" if r.get("time") is None else f"{r['time']:.3f}"]
        if located:
            row += ["-" if r["face"] is None else str(r["face"]), ",".join(map(str, r["box"] or [])) or "-"]
        if located and r["source"] == "no face found":
            row.append("(no face found)")
        else:
            row += [model_cell(r, p, single) for p in predictors.values()]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(len(rows[0]))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() + "\n" for row in rows)


def format_records(records: list[dict], as_json: bool, as_csv: bool, predictors: dict) -> str:
    """Records -> JSON, CSV, or text: ``file label probability`` lines for one model on whole
    images (the first predict.py's output), else a table with a header."""
    if as_json:
        return json.dumps(records, indent=2) + "\n"
    if as_csv:
        rows = [flat_row(r) for r in records]
        buf = io.StringIO()
        w = csv.DictWriter(buf, list(dict.fromkeys(k for row in rows for k in row)), restval="")
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue()
    if len(predictors) > 1 or "face" in records[0]:
        return text_table(records, predictors)
    (p,) = predictors.values()
    width = max([len(r["file"]) for r in records] + [4])
    if p.ordinal is not None:
        return "".join(f"{r['file']:<{width}}  {r['age']}\n" for r in records)
    return "".join(f"{r['file']:<{width}}  {r['label']:<10} {r['probability']:.3f}\n" for r in records)


# --------------------------------------------------------------------------
# Annotated outputs
# --------------------------------------------------------------------------

def face_label(result: dict | None, predictors: dict) -> str:
    """'male 0.97  young 0.81  age 27' for one region's results."""
    if result is None:
        return ""
    parts = []
    for key, p in predictors.items():
        r = result[key]
        parts.append(f"age {r['age']}" if "age" in r else f"{r['label']} {r['probability']:.2f}")
    return "  ".join(parts)


def _partial(final: Path) -> Path:
    """A hidden name beside ``final`` to write to before renaming (a crash leaves no half file)."""
    return final.with_name(f".{final.stem}.partial{final.suffix}")


class Annotator:
    """Writes annotated copies into ``out_dir``: images as they come, videos frame by frame
    (frames between sampled ones keep the last boxes). File names are kept; a clash gets -1, -2..."""

    def __init__(self, out_dir: str | os.PathLike, inputs: list[str]):
        self.out = Path(out_dir)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ds.DatasetError(f"--annotate folder {self.out} cannot be created ({e.strerror or e})") from None
        self.taken = {Path(p).resolve() for p in inputs}
        self.video = None  # (input path, writer, partial path, final path, last labels)

    def _target(self, path: str, suffix: str) -> Path:
        stem = Path(path).stem
        target, n = self.out / f"{stem}{suffix}", 0
        while target.resolve() in self.taken:
            n += 1
            target = self.out / f"{stem}-{n}{suffix}"
        self.taken.add(target.resolve())
        return target

    def add(self, unit: Unit, labelled: list[tuple]) -> None:
        """``labelled``: (box, text) of each region with a box."""
        if unit.image is None:
            return
        if unit.frame is None:
            self._finish_video()
            suffix = Path(unit.file).suffix.lower()
            target = self._target(unit.file, suffix if suffix in ANNOTATE_SUFFIXES else ".png")
            partial = _partial(target)
            faces.draw_faces(unit.image, labelled).save(partial, format=Image.registered_extensions()[target.suffix])
            os.replace(partial, target)
            return
        if self.video is None or self.video[0] != unit.file:
            self._finish_video()
            suffix = ".avi" if unit.file.lower().endswith(".avi") else ".mp4"
            final = self._target(unit.file, suffix)
            partial = _partial(final)
            self.video = [unit.file, faces.VideoWriter(partial, unit.fps or 25.0, unit.image.size), partial, final, []]
        if unit.sampled:
            self.video[4] = labelled
        self.video[1].write(faces.draw_faces(unit.image, self.video[4]))

    def _finish_video(self) -> None:
        if self.video is not None:
            _, writer, partial, final, _ = self.video
            writer.close()
            os.replace(partial, final)
            self.video = None

    def close(self) -> None:
        self._finish_video()


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def build_predictors(args, task: str, device: torch.device, amp: bool) -> dict:
    """{output key: Predictor} for the models asked for (the default checkpoint when none)."""
    asked = [(getattr(args, opt), want) for opt, want in MODEL_OPTIONS.items() if getattr(args, opt)]
    legacy = args.onnx or args.checkpoint
    if legacy or not asked:
        path = legacy or str(Path("checkpoints") / task / "model_best.tar")
        # the default (or -a) checkpoint, or any checkpoint on the default (or -a) folder,
        # must be of the task asked for; --checkpoint on explicit inputs may be of any task
        asked.insert(0, (path, task if (not legacy or args.age or not args.inputs) else None))
    predictors = {}
    for path, want in asked:
        p = load_predictor(path, device, amp)
        if want is not None:
            expect(p.ckpt, path, task=want)
        if p.key in predictors:
            raise CheckpointError(f"two models for the task '{p.task}' ({predictors[p.key].path} and {path}): "
                                  f"give one per task")
        predictors[p.key] = p
    return predictors


def main(args) -> int:
    task = "age" if args.age else "gender"
    inputs = args.inputs or [str(Path(TASK_DATA[task]) / "predict")]
    if not args.inputs and not Path(inputs[0]).is_dir():
        raise ds.DatasetError(f"default folder {inputs[0]} not found: pass image files or folders")
    for name, least in (("batch_size", 1), ("every", 1), ("detect_size", 32)):
        if getattr(args, name) < least:
            raise ds.DatasetError(f"--{name.replace('_', '-')} must be at least {least}")
    from gender_age_classifier import bf16_is_fast, resolve_device
    device = resolve_device(args.device)
    amp = bf16_is_fast(device) if args.amp is None else args.amp

    predictors = build_predictors(args, task, device, amp)
    if not args.inputs and task in predictors:
        train = Path(TASK_DATA[task]) / "train"
        if train.is_dir():
            found = sorted(d.name for d in train.iterdir() if d.is_dir() and not ds.is_hidden(d.name))
            p = predictors[task]
            expect(p.ckpt, p.path, classes=found)
    paths = collect_inputs(inputs)
    detector = None if args.detect == "off" else faces.make_detector(args.detector, device)
    annotator = Annotator(args.annotate, paths) if args.annotate else None
    workers = args.workers if args.workers is not None else min(8, ds.usable_cores())
    resize = max(p.preset.resize for p in predictors.values())

    records, failed = [], 0
    units = all_units(paths, args, detector, workers, resize)
    try:
        for unit, results in predict_units(units, predictors, args.batch_size, args.tta,
                                           max_pending=8 if annotator else 256):
            if unit.error is not None:
                failed += 1
                print(f"error: {unit.file}: {unit.error}", file=sys.stderr)
                continue
            if unit.sampled:
                records += unit_records(unit, results, predictors)
            if annotator:
                annotator.add(unit, [(g.box, face_label(r, predictors))
                                     for g, r in zip(unit.regions, results) if g.box is not None])
    finally:
        if annotator:
            annotator.close()
    if records:
        if not is_located(records):
            records = strip_location(records)
        sys.stdout.write(format_records(records, args.json, args.csv, predictors))
    if failed:
        print(f"error: {failed} of {len(paths)} input(s) could not be read", file=sys.stderr)
        return 1
    return 0


def cli(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        return main(args)
    except (ds.DatasetError, CheckpointError, faces.FaceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
