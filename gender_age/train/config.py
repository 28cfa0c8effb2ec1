"""A run's settings: the recipe that fills the flags left unset, and the
settings that a checkpoint fixes.

``--test-only`` and ``--resume`` take the task, network, loss, decoding
(ordinal rule, age range), preprocessing and face chips from the checkpoint, and resume
also its training recipe (optimizer, schedule, batch, seed, ...): a flag that
contradicts the checkpoint is an error, never a silent re-interpretation of
its weights. Where the data lies is taken from the checkpoint unless given
(data folders may move).

Flag checks: The training flags' allowed values, checked in one place right after
parsing, before any data is read: a bad number is a one-line error (exit 2),
never a traceback after every image was decoded, and never silently "off".
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from gender_age.core.checkpointing import CheckpointError, check_trainable, load_checkpoint
from gender_age.data.samples import DatasetError
from gender_age.faces import alignment
from gender_age.nets.models import default_input_geometry
from gender_age.train.run_folder import latest_checkpoint

# The recipe fills every flag left unset. Gender and age groups train with the
# original's recipe. Exact age trains with the one measured on a 2-core CPU
# (bench_age.py: ordinal loss, UTKFace CORAL split, test MAE 5.005 in 29 min),
# or with the CORAL paper's (--recipe paper: ResNet-34 on 120 px crops of
# 128 px images, Adam 5e-4 without decay, batch 256, 200 epochs; about
# 1 image/s on that CPU, a GPU recipe).
RECIPES = {
    "original": {"arch": "levi_hassner", "batch_size": 64, "epochs": 64, "lr": 1e-3, "weight_decay": 0.0,
                 "schedule": "step", "dropout": 0.5, "ema_epochs": 5.0, "eval_every": 5, "save_every": 5},
    "cpu": {"arch": "resnet18", "resize": 68, "crop": 64, "batch_size": 128, "epochs": 14, "optimizer": "adamw",
            "lr": 2e-3, "weight_decay": 0.05, "schedule": "onecycle", "dropout": 0.0, "ema_epochs": 1.0,
            "eval_every": 1, "save_every": 7, "loss": "ordinal", "ce_mode": "expectation"},
    "paper": {"arch": "resnet34", "resize": 128, "crop": 120, "batch_size": 256, "epochs": 200, "lr": 5e-4,
              "weight_decay": 0.0, "schedule": "step", "lr_gamma": 1.0, "dropout": 0.0, "ema_epochs": 0.0,
              "eval_every": 5, "save_every": 5, "loss": "coral", "ce_mode": "argmax"},
}
# --task age-gender: the cpu recipe on all the sources (about 18,600 training images, all ages) at
# 64 px from 72-px chips, for the epochs that fit in an hour of training on a 2-core AVX2 CPU in fp32:
# 18 epochs with the validation and the test took 46.3-58.5 min on an AVX2-only EPYC, and 74.5 min on a
# slower day of that CPU (15 epochs lost validation accuracy: docs/results.md, round 21); 64 px
# trains 1.85x as fast as 96 px on AVX2 (benchmarks/bench_compute.py).
# With the strong augmentation (docs/results.md, "A model for every face"), a fifth of its images grey
# (rounds 22-23: the worst UTKFace race group on validation +0.8 points over two seeds, +1.6 and +0.1).
AGE_GENDER = {"cpu": {"epochs": 18, "resize": 72, "crop": 64, "aug": "strong", "grey": 0.2}}
# space around the aligned chip's face template: 0.25 of its side on the wide template. Age-gender
# cuts on the utkface template (alignment.UTKFACE_TEMPLATE) at margin 0, UTKFace's own crop, so that
# its tight crops fill their chips: on the wide template at margin 0.05 three fifths of a UTKFace chip
# were black, a border that named the source (docs/results.md, round 20).
CHIP_MARGIN, AGE_GENDER_CHIP_MARGIN = 0.25, 0.0
# when no recipe sets it
LAST_RESORT = {"optimizer": "adam", "loss": "coral", "ce_mode": "argmax", "lr_gamma": 0.9, "aug": "original",
               "grey": 0.0}


# fixed by a checkpoint: evaluation and resume take them from it
MODEL_KEYS = ("task", "arch", "dropout", "resize", "crop", "loss", "ce_mode", "min_age", "max_age", "face_chips",
              "chip_margin", "chip_template", "no_face", "age_groups")
# the run's training recipe: resume takes it from the checkpoint
TRAINING_KEYS = ("recipe", "optimizer", "lr", "lr_step", "lr_gamma", "weight_decay", "schedule", "batch_size",
                 "mixup", "aug", "ema_epochs", "label_smoothing", "imp_weight", "val_split", "bias_init",
                 "init_from", "seed", "split_seed", "max_per_class", "gender_weight", "age_weight", "pretrained",
                 "grey")
# taken from the checkpoint unless given: where the data is, and (on resume) the run's length and rhythm
DATA_KEYS = ("dataset", "data_dir", "train_csv", "test_csv", "image_dir", "path_column", "age_column",
             "csv_age_offset", "random_split", "source")
RHYTHM_KEYS = ("epochs", "eval_every", "save_every", "tta")


def task_name(args) -> str:
    if args.task:
        if args.age and args.task != "age":
            raise DatasetError(f"-a means --task age, not --task {args.task}")
        return args.task
    return "age" if args.age else "gender"


def given_flags(args, parser: argparse.ArgumentParser) -> set[str]:
    """The flags whose values differ from the parser's defaults: what a caller
    that built ``args`` itself (not from a command line) asked for."""
    return {k for k, v in vars(args).items() if v != parser.get_default(k)}


def flags_on_command_line(throwaway: argparse.ArgumentParser, argv) -> set[str]:
    """The destinations of the flags given in ``argv``, whatever their values
    (``throwaway``: a fresh parser of the same flags; its defaults are changed)."""
    for action in throwaway._actions:
        action.default = argparse.SUPPRESS
    return set(vars(throwaway.parse_args(argv)))


def checkpoint_settings(ckpt: dict) -> dict:
    """The settings a checkpoint was made with, by flag name (None: not applicable)."""
    ran = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    out = {k: ran.get(k) for k in TRAINING_KEYS + DATA_KEYS + RHYTHM_KEYS}
    if ran and ran.get("grey") is None:
        out["grey"] = 0.0  # runs from before the flag turned no image grey
    model_args, preprocess = ckpt["model_args"], ckpt.get("preprocess") or {}
    out.update(task=ckpt.get("task"), arch=model_args.get("arch"), dropout=model_args.get("dropout"),
               resize=preprocess.get("resize"), crop=preprocess.get("crop"),
               loss=None, ce_mode=None, min_age=None, max_age=None)
    chips = ckpt.get("chips") if isinstance(ckpt.get("chips"), dict) else {"mode": "off"}  # older: off
    template = chips.get("template") if chips.get("mode") == "aligned" else None
    out.update(face_chips=chips.get("mode"), chip_margin=chips.get("margin"),
               chip_template=alignment.template_name(template) if template else None,
               no_face=ran.get("no_face") if chips.get("mode") == "aligned" else None,
               age_groups=ran.get("age_groups") if ckpt.get("task") == "age-gender" else None)
    ordinal = ckpt.get("ordinal")
    if isinstance(ordinal, dict):
        out.update(loss=ordinal.get("loss"), ce_mode=ordinal.get("ce_mode", "argmax"),
                   min_age=int(ordinal["min_age"]), max_age=int(ordinal["min_age"]) + int(ordinal["num_ranks"]) - 1)
    return out


def same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    return a == b


def adopt_checkpoint(args, ckpt: dict, path: Path, given: set[str]) -> str:
    """Take the checkpoint's settings into ``args`` (in place); returns its task.

    Fixed settings (MODEL_KEYS, and TRAINING_KEYS on resume) that a given flag
    contradicts raise a one-line DatasetError naming both values."""
    ran = checkpoint_settings(ckpt)
    if args.sgd and "optimizer" not in given:
        args.optimizer = "sgd"
        given = given | {"optimizer"}
    asked_task = task_name(args) if given & {"task", "age"} else None
    fixed = MODEL_KEYS + (TRAINING_KEYS if not args.test_only else ())
    for key in fixed:
        value = asked_task if key == "task" else getattr(args, key)
        if ran[key] is not None and (key in given or key == "task") and value is not None \
                and not same(value, ran[key]):
            flag = "--task" if key == "task" else "--" + key.replace("_", "-")
            raise DatasetError(f"{path} was trained with {flag} {ran[key]}, but this run asks for {value}: "
                               f"drop {flag} ({'evaluation' if args.test_only else 'resume'} takes it from the "
                               f"checkpoint)")
    # evaluation keeps the run's seeds and --val-split: --eval-split val draws the same validation split again
    defaults = DATA_KEYS + (("seed", "split_seed", "max_per_class", "val_split", "tta") if args.test_only
                            else TRAINING_KEYS + RHYTHM_KEYS)
    for key in fixed + defaults:
        if key != "task" and key not in given and ran.get(key) is not None:
            setattr(args, key, ran[key])
    args.task, args.age = ran["task"], ran["task"] == "age"
    return ran["task"]


def checkpoint_to_use(args, out: Path) -> Path:
    """--test-only: --resume PATH, else model_best.tar of the run's folder;
    --resume: PATH, else the run's newest checkpoint."""
    if args.resume not in (None, "last"):
        return Path(args.resume)
    return out / "model_best.tar" if args.test_only else latest_checkpoint(out)


def task_recipe(name: str, recipe: str = "cpu") -> dict:
    """Every value the recipe gives a ``name`` run's unset flags (``recipe``: --recipe, for the
    ordinal tasks); resize and crop absent where the network's own input size applies."""
    ordinal = name in ORDINAL_TASKS
    return {**LAST_RESORT, **RECIPES[recipe if ordinal else "original"],
            **(AGE_GENDER.get(recipe, {}) if name == "age-gender" else {}),
            "dataset": "utkface" if ordinal else "imagefolder",
            "face_chips": "aligned" if name == "age-gender" else "off",
            # age-gender: UTKFace's tight crops fill its chips (docs/results.md)
            "chip_margin": AGE_GENDER_CHIP_MARGIN if name == "age-gender" else CHIP_MARGIN,
            "chip_template": "utkface" if name == "age-gender" else "wide"}


def resolve_defaults(args, name: str) -> None:
    """Fill every unset flag from the task's recipe (task_recipe), in place (validate_args checks them)."""
    if args.sgd and args.optimizer is None:
        args.optimizer = "sgd"
    recipe = task_recipe(name, args.recipe)
    other_arch = args.arch not in (None, recipe["arch"])
    grey_given = args.grey is not None
    for key, value in recipe.items():
        if getattr(args, key) is None and not (other_arch and key in ("resize", "crop")):
            setattr(args, key, value)  # another network keeps its own input size
    if not grey_given and args.aug != "strong":
        args.grey = 0.0  # the recipe's grey share is part of its strong augmentation (a given one is checked)
    if args.dry_run:
        args.epochs = 1


def describe_default(key: str, ordinal_only: bool = False) -> str:
    """A recipe-filled flag's default as each task uses it, for --help: 'default: gender, age: 64;
    exact-age: 14; age-gender: 40; --recipe paper: 200'."""
    def shown(name, recipe="cpu"):
        value = task_recipe(name, recipe).get(key)
        if value is None and key in ("resize", "crop"):
            value = default_input_geometry(task_recipe(name, recipe)["arch"])[key == "crop"]
        return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
    parts = [] if ordinal_only else [f"gender, age: {shown('gender')}"]
    parts += [f"exact-age: {shown('exact-age')}", f"age-gender: {shown('age-gender')}"]
    if key in RECIPES["paper"]:
        parts.append(f"--recipe paper: {shown('exact-age', 'paper')}")
    return "default: " + "; ".join(parts)


TASKS = ("gender", "age", "exact-age", "age-gender")
ORDINAL_TASKS = ("exact-age", "age-gender")
# flags (argparse destinations) that act for some tasks only; every other flag acts for all four.
# Given to another task, such a flag is refused before any data is read (check_task_flags).
TASK_FLAGS = {
    "age": ("age",),
    "label_smoothing": ("gender", "age"), "mixup": ("gender", "age"),
    **dict.fromkeys(("recipe", "loss", "imp_weight", "bias_init", "ce_mode"), ORDINAL_TASKS),
    **dict.fromkeys(("dataset", "data_dir"), ("gender", "age", "exact-age")),
    **dict.fromkeys(("image_dir", "random_split"), ("gender", "exact-age")),
    **dict.fromkeys(("min_age", "max_age"), ("gender", "exact-age", "age-gender")),
    **dict.fromkeys(("train_csv", "test_csv", "path_column", "age_column", "csv_age_offset"), ("exact-age",)),
    **dict.fromkeys(("source", "age_groups", "gender_weight", "age_weight"), ("age-gender",)),
}
# the gender task reads these with --dataset utkface only (genders from UTKFace names)
UTKFACE_GENDER_FLAGS = ("image_dir", "random_split", "min_age", "max_age")
DATA_HINT = {"age-gender": " (age-gender reads its data from --source KIND=DIR)"}


def check_task_flags(given: set[str], name: str, dataset: str | None) -> None:
    """ArgumentError for the first given flag that does nothing for task ``name`` (TASK_FLAGS), or
    that the gender task reads only with --dataset utkface."""
    for dest in sorted(given):
        flag = "--" + dest.replace("_", "-")
        tasks = TASK_FLAGS.get(dest, TASKS)
        if name not in tasks:
            hint = DATA_HINT.get(name, "") if dest in ("dataset", "data_dir", "train_csv", "test_csv",
                                                        "image_dir", "random_split") else ""
            raise ArgumentError(f"{flag} does nothing with --task {name}{hint}: it acts with --task "
                                f"{' or '.join(tasks)}; drop it")
        if name == "gender" and dest in UTKFACE_GENDER_FLAGS and dataset != "utkface":
            raise ArgumentError(f"{flag} does nothing with --task gender --dataset {dataset or 'imagefolder'}: "
                                f"it acts with --dataset utkface (genders from UTKFace names); drop it")


def resolve(args, given: set[str]) -> tuple[str, Path, Path | None]:
    """Settle a run's settings in place: the checkpoint's (evaluation,
    resume), then the recipe's. -> (task, output folder, checkpoint or None)."""
    name = task_name(args)
    out = Path(args.checkpoint_dir or Path("checkpoints") / name)
    source = None
    if args.test_only or args.resume:
        source = checkpoint_to_use(args, out)
        ckpt = load_checkpoint(source)
        if not args.test_only:
            check_trainable(ckpt, source, "resumed")
        try:
            name = adopt_checkpoint(args, ckpt, source, given)
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{source} does not say how it was trained (task, model_args, preprocess): "
                                  f"it cannot be evaluated or resumed") from None
        out = Path(args.checkpoint_dir or Path("checkpoints") / name)
    resolve_defaults(args, name)
    return name, out, source


class ArgumentError(ValueError):
    """A flag's value cannot be used; the message names the flag and its range."""


def _at_least(low):
    return lambda v: v >= low, f"at least {low}"


def _between(low, high, low_open=False, high_open=False):
    ok = lambda v: (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    return ok, f"{'above' if low_open else 'at least'} {low} and {'below' if high_open else 'at most'} {high}"


# flag (argparse destination) -> (test, what it must be); None values are "not given"
RANGES = {
    "batch_size": _at_least(1),
    "epochs": _at_least(1),
    "eval_every": _at_least(1),
    "save_every": _at_least(1),
    "lr_step": _at_least(1),
    "max_per_class": _at_least(1),
    "lr": (lambda v: v > 0, "above 0"),
    "lr_gamma": (lambda v: v > 0, "above 0"),
    "weight_decay": _at_least(0),
    "dropout": _between(0, 1, high_open=True),
    "label_smoothing": _between(0, 1, high_open=True),
    "mixup": _at_least(0),
    "ema_epochs": _at_least(0),
    "val_split": _between(0, 1, high_open=True),
    "random_split": _between(0, 1, low_open=True, high_open=True),
    "workers": _between(0, 64),
    "threads": _between(1, 1024),
    "resize": _between(16, 2048),
    "crop": _between(16, 2048),
    "grey": _between(0, 1),
    "seed": _between(0, 2 ** 32 - 1),
    "split_seed": _between(0, 2 ** 32 - 1),
    "min_age": _between(0, 150),
    "max_age": _between(0, 150),
    "csv_age_offset": _between(-150, 150),
    "chip_margin": _between(0, 2),
    "framing_sample": _between(0, 100_000),
}
# --imp-weight weights the K-1 binary tasks of these heads only
IMPORTANCE_WEIGHTED_LOSSES = ("coral", "ordinal")


def validate_args(args) -> None:
    """Raise ArgumentError for the first flag outside its range (RANGES), a
    NaN or infinite number, or flags that do not go together."""
    for dest, (ok, what) in RANGES.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        flag = "--" + dest.replace("_", "-")
        if isinstance(value, float) and not math.isfinite(value):
            raise ArgumentError(f"{flag} must be a finite number, got {value}")
        if not ok(value):
            raise ArgumentError(f"{flag} must be {what}, got {value}")
    if getattr(args, "grey", None) and getattr(args, "aug", "strong") != "strong":
        raise ArgumentError(f"--grey turns images grey within --aug strong, not --aug {args.aug}: add --aug strong "
                            f"or drop --grey")
    loss = getattr(args, "loss", None)
    if getattr(args, "imp_weight", 0) and loss is not None and loss not in IMPORTANCE_WEIGHTED_LOSSES:
        raise ArgumentError(f"--imp-weight 1 weights the binary tasks of --loss coral or ordinal, not --loss {loss}: "
                            f"drop --imp-weight or choose one of those losses")
    if getattr(args, "eval_split", "test") != "test" and not getattr(args, "test_only", False):
        raise ArgumentError(f"--eval-split {args.eval_split} chooses what --test-only evaluates: add --test-only "
                            f"(training validates on its own split every --eval-every epochs)")
