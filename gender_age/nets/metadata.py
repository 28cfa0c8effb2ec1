"""What a model file declares (task, classes, preprocessing, face chips, ordinal decoding, an
age-gender model's genders and age groups), checked before anything is built: a checkpoint's
fields, or the metadata export.py writes into an ONNX file. Numpy-free and torch-free; prediction
(predict/base.py), export, ensembles and the chip cache all read model files through it.
"""
from __future__ import annotations

import math
from gender_age.data import age_groups
from gender_age.faces import alignment
from gender_age.faces import geometry
from gender_age.core.checkpointing import CheckpointError
from gender_age.core.images import first_line
from gender_age.nets.ordinal import LOSSES, head_output_size
from gender_age.data.presets import EvalPreset
from gender_age.data.samples import AGE_RANGE

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

    def chips(self, c, preset: EvalPreset) -> alignment.ChipSpec:
        """The chip spec (faces.ChipSpec); files from before it existed: 'off', unmeasured framing."""
        if c is None:
            return alignment.ChipSpec("off", preset.resize)
        if not isinstance(c, dict) or c.get("mode") not in alignment.CHIP_MODES:
            raise self.fail(f"chips mode must be one of {', '.join(alignment.CHIP_MODES)}, not "
                            f"{(c.get('mode') if isinstance(c, dict) else c)!r:.40}")
        size = self.integer(c.get("size"), "chips size", *SIDE_RANGE)
        if size != preset.resize:
            raise self.fail(f"chips size {size} differs from the preprocess resize {preset.resize}")
        f = c.get("framing")
        if f is not None and (not isinstance(f, dict) or f.get("detector") != "mtcnn"):
            raise self.fail("chips framing must be null or the mtcnn box's cx, cy, w, h")
        framing = None if f is None else geometry.Geometry(
            *self.numbers([f.get(k) for k in ("cx", "cy")], "chips framing centre", -1, 2, n=2),
            *self.numbers([f.get(k) for k in ("w", "h")], "chips framing size", 0.01, 10, n=2))
        if c["mode"] == "off":
            return alignment.ChipSpec("off", size, framing=framing)
        margin = self.numbers([c.get("margin")], "chips margin", 0, 2, n=1)[0]
        t = c.get("template")
        if not isinstance(t, (list, tuple)) or len(t) != len(alignment.TEMPLATE):
            raise self.fail(f"chips template must be {len(alignment.TEMPLATE)} points (x, y), not {t!r:.60}")
        template = tuple(self.numbers(point, "chips template point", 0, 1, n=2) for point in t)
        if math.dist(template[0], template[1]) < 0.05:
            raise self.fail("chips template puts the eyes at one point")
        return alignment.ChipSpec("aligned", size, margin, template, framing)

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
