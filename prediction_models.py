"""Trained models for prediction, behind one interface, without torch: what a model file
declares (task, classes, preprocessing, face chips, ordinal decoding), checked before anything
is built; the decoding of a network's outputs into predictions (numpy); and ONNX files from
export.py, run on onnxruntime. A run whose models are all ONNX files never imports torch
(start-up: see predict.py); ``predictor.Predictor`` runs a PyTorch checkpoint behind the
same interface, and ``load_predictor`` picks one by the file's name.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

import age_groups
import faces
from checkpointing import CheckpointError
from images import first_line
from ordinal import LOSSES, head_output_size, rank_of, softmax
from presets import EvalPreset
from samples import AGE_RANGE

ONNX_FORMAT = "1"  # version of the metadata export.py writes into ONNX files
TASKS = ("gender", "age", "exact-age", "age-gender")
AGE_TASKS = ("exact-age", "age-gender")  # tasks with an ordinal age head
SIDE_RANGE = (8, 1024)  # preprocess resize and crop, in pixels
MAX_OUTPUTS = 10_000  # classes or ranks
MAX_MEMBERS = 16  # networks of an ensemble (ensemble.py); each costs one network's time per image


class _Checker:
    """Checks one model file's metadata; every failure is a one-line CheckpointError naming the field."""

    def __init__(self, path):
        self.path = path

    def fail(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self.path} has unusable metadata: {what}; re-export or retrain it")

    def integer(self, value, what: str, lo: int, hi: int) -> int:
        """An int, or an integral float (JSON), within lo..hi."""
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
            and float(value).is_integer() and lo <= value <= hi
        if not ok:
            raise self.fail(f"{what} must be an integer {lo}-{hi}, not {value!r:.40}")
        return int(value)

    def numbers(self, value, what: str, lo: float, hi: float, n: int = 3) -> tuple:
        """``n`` finite numbers within lo..hi (a per-channel mean or std, a point)."""
        ok = isinstance(value, (list, tuple)) and len(value) == n and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi
            for v in value)
        if not ok:
            raise self.fail(f"{what} must be {n} finite numbers in [{lo}, {hi}], not {value!r:.60}")
        return tuple(float(v) for v in value)

    def preprocess(self, d) -> EvalPreset:
        if not isinstance(d, dict):
            raise self.fail("no 'preprocess' settings (resize, crop, mean, std)")
        resize = self.integer(d.get("resize"), "preprocess resize", *SIDE_RANGE)
        crop = self.integer(d.get("crop"), "preprocess crop", SIDE_RANGE[0], resize)
        return EvalPreset(resize, crop, self.numbers(d.get("mean"), "preprocess mean", -10, 10),
                      self.numbers(d.get("std"), "preprocess std", 1e-3, 10))

    def chips(self, c, preset: EvalPreset) -> faces.ChipSpec:
        """The chip spec (faces.ChipSpec); files from before it existed: 'off', unmeasured framing."""
        if c is None:
            return faces.ChipSpec("off", preset.resize)
        if not isinstance(c, dict) or c.get("mode") not in faces.CHIP_MODES:
            raise self.fail(f"chips mode must be one of {', '.join(faces.CHIP_MODES)}, not "
                            f"{(c.get('mode') if isinstance(c, dict) else c)!r:.40}")
        size = self.integer(c.get("size"), "chips size", *SIDE_RANGE)
        if size != preset.resize:
            raise self.fail(f"chips size {size} differs from the preprocess resize {preset.resize}")
        f = c.get("framing")
        if f is not None and (not isinstance(f, dict) or f.get("detector") != "mtcnn"):
            raise self.fail("chips framing must be null or the mtcnn box's cx, cy, w, h")
        framing = None if f is None else faces.Geometry(
            *self.numbers([f.get(k) for k in ("cx", "cy")], "chips framing centre", -1, 2, n=2),
            *self.numbers([f.get(k) for k in ("w", "h")], "chips framing size", 0.01, 10, n=2))
        if c["mode"] == "off":
            return faces.ChipSpec("off", size, framing=framing)
        margin = self.numbers([c.get("margin")], "chips margin", 0, 2, n=1)[0]
        t = c.get("template")
        if not isinstance(t, (list, tuple)) or len(t) != len(faces.TEMPLATE):
            raise self.fail(f"chips template must be {len(faces.TEMPLATE)} points (x, y), not {t!r:.60}")
        template = tuple(self.numbers(point, "chips template point", 0, 1, n=2) for point in t)
        if math.dist(template[0], template[1]) < 0.05:
            raise self.fail("chips template puts the eyes at one point")
        return faces.ChipSpec("aligned", size, margin, template, framing)

    def ordinal(self, o, model_args: dict, task: str) -> dict:
        if not isinstance(o, dict) or o.get("loss") not in LOSSES:
            raise self.fail(f"an {task} model needs 'ordinal' settings with a loss among "
                            f"{', '.join(LOSSES)}")
        out = {"loss": o["loss"], "min_age": self.integer(o.get("min_age"), "ordinal min_age", *AGE_RANGE),
               "num_ranks": self.integer(o.get("num_ranks"), "ordinal num_ranks", 2, MAX_OUTPUTS)}
        if o.get("ce_mode") not in (None, "argmax", "expectation"):
            raise self.fail(f"ordinal ce_mode must be argmax or expectation, not {o.get('ce_mode')!r:.40}")
        if "ce_mode" in o:
            out["ce_mode"] = o["ce_mode"]
        if model_args.get("head") != out["loss"] or model_args.get("num_ranks") != out["num_ranks"]:
            raise self.fail(f"model_args (head {model_args.get('head')!r:.20}, num_ranks "
                            f"{model_args.get('num_ranks')!r:.20}) differ from the ordinal settings "
                            f"({out['loss']}, {out['num_ranks']})")
        return out

    def classes(self, c, ordinal: dict | None) -> list:
        ok = isinstance(c, (list, tuple)) and len(c) <= MAX_OUTPUTS and all(
            isinstance(x, str) and 0 < len(x) <= 200 for x in c) and len(set(c)) == len(c)
        if not ok:
            raise self.fail(f"classes must be a list of distinct names (strings), not {c!r:.60}")
        if ordinal is None and not c:
            raise self.fail("a classifier names no classes")
        if ordinal is not None and c and len(c) != ordinal["num_ranks"]:
            raise self.fail(f"{len(c)} class names for {ordinal['num_ranks']} ranks")
        return list(c)

    def genders(self, g) -> list:
        """An age-gender model's gender names: 2 or more distinct short strings."""
        ok = isinstance(g, (list, tuple)) and 2 <= len(g) <= 100 and all(
            isinstance(x, str) and 0 < len(x) <= 100 for x in g) and len(set(g)) == len(g)
        if not ok:
            raise self.fail(f"genders must be a list of 2 or more distinct names (strings), not {g!r:.60}")
        return list(g)

    def age_groups(self, groups) -> list[dict]:
        try:
            return age_groups.check(groups)
        except age_groups.AgeGroupError as e:
            raise self.fail(first_line(e)) from None


def check_metadata(info: dict, path) -> dict:
    """What a model file declares (a checkpoint, or the metadata of an ONNX file), checked before
    anything is built: task, classes, preprocessing, face chips, model_args and the ordinal head.

    Returns {"task", "classes", "preset", "chips", "ordinal" (None for classifiers), "genders",
    "age_groups" (None but for age-gender models), "outputs"}: chips is a faces.ChipSpec, outputs
    the number of values the network must give per image (the classes; the ordinal head's size;
    the gender logits and then the ordinal head's outputs).
    Raises a one-line CheckpointError naming the first unusable field.
    """
    check = _Checker(path)
    task = info.get("task")
    if task not in TASKS:
        raise check.fail(f"task {task!r:.40} is not one of {', '.join(TASKS)}")
    model_args = info.get("model_args")
    if not isinstance(model_args, dict):
        raise check.fail("no 'model_args'")
    check.integer(model_args.get("members", 1), "model_args members", 1, MAX_MEMBERS)
    preset = check.preprocess(info.get("preprocess"))
    chips = check.chips(info.get("chips"), preset)
    ordinal = check.ordinal(info.get("ordinal"), model_args, task) if task in AGE_TASKS else None
    classes = check.classes(info.get("classes") or [], ordinal)
    genders = groups = None
    if task == "age-gender":
        genders, groups = check.genders(info.get("genders")), check.age_groups(info.get("age_groups"))
    declared = model_args.get("genders", 0)
    if declared != len(genders or ()):
        raise check.fail(f"model_args declares {declared!r:.20} gender outputs, but the file names "
                         f"{len(genders or ())} genders")
    if ordinal is not None:
        outputs = len(genders or ()) + head_output_size(ordinal["loss"], ordinal["num_ranks"])
    else:
        outputs = len(classes)
        if model_args.get("head", "linear") != "linear" or model_args.get("num_outputs") != outputs:
            raise check.fail(f"{outputs} class names, but model_args declares {model_args.get('num_outputs')!r:.20} "
                             f"outputs (head {model_args.get('head', 'linear')!r:.20})")
    return {"task": task, "classes": classes, "preset": preset, "chips": chips, "ordinal": ordinal,
            "genders": genders, "age_groups": groups, "outputs": outputs}


class ModelPredictor:
    """A model file, checked and ready: uint8 (N,3,R,R) batches -> logits, probabilities, predictions.

    ``task`` is "gender", "age", "exact-age" or "age-gender"; ``chips`` (faces.ChipSpec)
    says how its input is cut around a face (inference.py does it); an exact-age model
    has ``ordinal`` = {"loss", "min_age", "num_ranks"[, "ce_mode"]} and predicts
    min_age + ordinal.rank_of(outputs, loss). An age-gender model (one network, two
    heads) has ``genders`` (names of its first len(genders) outputs, the gender logits),
    ``ordinal`` for the age head's outputs that follow, and ``age_groups`` (ranges of the
    predicted age, ``age_groups.group_of``). Everything the file declares is checked on
    load (``check_metadata``), and a blank image must give ``outputs`` finite values
    (``_probe``). Subclasses load the network and give ``_forward``; batches may be numpy
    arrays or CPU tensors, and results are numpy.
    """
    path: Path
    ckpt: dict

    def _describe(self, info: dict) -> None:
        """Task, classes, preprocessing and ordinal decoding from a checkpoint-like dict (checked)."""
        m = check_metadata(info, self.path)
        self.task, self.classes, self.preset, self.chips = m["task"], m["classes"], m["preset"], m["chips"]
        self.ordinal, self.outputs = m["ordinal"], m["outputs"]
        self.genders, self.age_groups = m["genders"], m["age_groups"]

    def _forward(self, x: np.ndarray) -> np.ndarray:
        """Normalised float32 (N,3,C,C) -> float32 logits (N, outputs)."""
        raise NotImplementedError

    def _probe(self) -> None:
        """Run one blank image through the network: it must accept its declared input and give
        ``outputs`` finite values (an ONNX graph with other metadata than its weights, or
        non-finite weights, fail here)."""
        r = self.preset.resize
        try:
            out = self._forward(self.preset.eval_batch(np.zeros((1, 3, r, r), dtype=np.uint8)))
        except Exception as e:  # noqa: BLE001 - torch and onnxruntime raise many types for a bad graph
            raise CheckpointError(f"{self.path} does not run on its declared {self.preset.crop} px input "
                                  f"({type(e).__name__}: {first_line(e)})") from None
        if tuple(out.shape) != (1, self.outputs):
            what = f"{len(self.genders)} gender logits and the ordinal head" if self.genders else \
                "ordinal head size" if self.ordinal else f"{len(self.classes)} classes"
            raise CheckpointError(f"{self.path} gives {tuple(out.shape)[1:]} outputs per image, but its metadata "
                                  f"declares {self.outputs} ({what}): re-export or retrain it")
        if not np.isfinite(out).all():
            raise CheckpointError(f"{self.path} gives non-finite outputs (NaN or infinity): its weights or "
                                  f"preprocessing are broken; re-export or retrain it")

    @property
    def key(self) -> str:
        """Name of this model's fields in the output: gender, age, exact_age or age_gender."""
        return str(self.task).replace("-", "_")

    def metadata(self) -> dict[str, str]:
        """What a model file needs besides its weights, as strings (ONNX metadata_props)."""
        meta = {"gac_format": ONNX_FORMAT, "task": str(self.task), "classes": json.dumps(self.classes),
                "preprocess": json.dumps(self.preset.as_dict()), "chips": json.dumps(self.chips.as_dict()),
                "model_args": json.dumps(self.ckpt["model_args"]),
                "input": f"float32 (N,3,{self.preset.crop},{self.preset.crop}): RGB/255, minus mean, over std; "
                         f"the central {self.preset.crop} px of the {self.preset.resize} px face chip that 'chips' "
                         f"describes",
                "output": "logits (N, outputs)"}
        if self.ordinal is not None:
            meta["ordinal"] = json.dumps(self.ordinal)
        if self.genders is not None:
            meta.update(genders=json.dumps(self.genders), age_groups=json.dumps(self.age_groups),
                        output=f"logits (N, outputs): {len(self.genders)} gender logits (softmax over 'genders'), "
                               f"then the '{self.ordinal['loss']}' age head's outputs ('ordinal')")
        return meta

    def view_logits(self, batch, tta: bool = False) -> np.ndarray:
        """uint8 (N,3,R,R) -> float32 logits (V, N, outputs): V=1 (centre crop) or 10 (``tta_batch``)."""
        batch = np.asarray(batch, dtype=np.uint8)
        views = self.preset.tta_batch(batch) if tta else self.preset.eval_batch(batch)[None]
        return np.stack([self._forward(np.ascontiguousarray(v)) for v in views])

    def logits(self, batch) -> np.ndarray:
        """uint8 (N,3,R,R) -> float32 logits (N, outputs)."""
        return self.view_logits(batch)[0]

    def probabilities(self, batch, tta: bool = False) -> np.ndarray:
        """uint8 (N,3,R,R) -> class probabilities (N, C) of a classifier: the softmax, averaged over the views."""
        return softmax(self.view_logits(batch, tta)).mean(0)

    def _ages(self, outputs: np.ndarray) -> list[float | int]:
        """The age head's outputs (N, H), averaged over the views -> N ages: min_age + rank_of.

        Integers, except the expectation of a 'ce' head (ce_mode "expectation"), rounded to 0.1.
        """
        o = self.ordinal
        ranks = rank_of(outputs, o["loss"], o.get("ce_mode") or "argmax")
        if ranks.dtype.kind == "f":
            return [round(float(r) + o["min_age"], 1) for r in ranks]
        return [int(r) + int(o["min_age"]) for r in ranks]

    @staticmethod
    def _labelled(probs: np.ndarray, names: list[str]) -> list[dict]:
        """Probabilities (N, C) -> N {"label", "probability", "probabilities"}."""
        out = []
        for p in probs:
            k = int(p.argmax())
            out.append({"label": names[k], "probability": float(p[k]),
                        "probabilities": {c: float(v) for c, v in zip(names, p)}})
        return out

    def predict(self, batch, tta: bool = False) -> list[dict]:
        """uint8 (N,3,R,R) -> N results: {"age"} (exact-age), {"label", "probability",
        "probabilities"} (classifiers), or both and "age_group" (age-gender: the label is the
        gender; the age group is None for an age outside every group)."""
        views = self.view_logits(batch, tta)
        if self.genders is not None:
            g = len(self.genders)
            out = self._labelled(softmax(views[..., :g]).mean(0), self.genders)
            for r, age in zip(out, self._ages(views[..., g:].mean(0))):
                r.update(age=age, age_group=age_groups.group_of(age, self.age_groups))
            return out
        if self.ordinal is not None:
            return [{"age": a} for a in self._ages(views.mean(0))]
        return self._labelled(softmax(views).mean(0), self.classes)


class OnnxPredictor(ModelPredictor):
    """An ONNX file written by export.py, run on onnxruntime (CPU, fp32)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            import onnxruntime as ort
        except ImportError:
            raise CheckpointError("ONNX models need onnxruntime: pip install onnxruntime") from None
        if not self.path.is_file():
            raise CheckpointError(f"ONNX model {self.path} not found: write one with python export.py CHECKPOINT")
        try:
            # its threads wait without spinning, as torch's (predict.py): the decode pool shares the
            # cores (100 crops, 2 cores busy with training: 1.92-2.04 s vs 2.07-2.19 s spinning)
            options = ort.SessionOptions()
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise CheckpointError(f"{self.path} is not a readable ONNX model ({first_line(e)})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("gac_format") != ONNX_FORMAT:
            raise CheckpointError(f"{self.path} lacks this toolkit's metadata (task, classes, preprocessing): "
                                  f"export it with python export.py")
        try:
            info = {k: json.loads(meta[k]) for k in ("classes", "preprocess", "chips", "model_args", "ordinal",
                                                     "genders", "age_groups") if k in meta}
        except json.JSONDecodeError:
            raise CheckpointError(f"{self.path} has corrupt metadata: export it again") from None
        self.ckpt = {"task": meta.get("task"), **info}
        self._describe(self.ckpt)
        self.input_name = self.session.get_inputs()[0].name
        self._probe()

    def _forward(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.asarray(x, dtype=np.float32)})[0]


def is_onnx(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(".onnx")


def load_predictor(path: str | os.PathLike, device=None, amp: bool = False) -> ModelPredictor:
    """An OnnxPredictor for an .onnx file (no torch), else a ``predictor.Predictor`` for a .tar
    checkpoint on ``device`` (a torch.device; imports torch)."""
    if is_onnx(path):
        return OnnxPredictor(path)
    from predictor import Predictor
    return Predictor(path, device, amp)
