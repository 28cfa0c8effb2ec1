"""Train the gender, age-group or exact-age model.

    python gender_age_classifier.py [-a] [-b 64] [-ep 64] [-sgd]
    python gender_age_classifier.py --task exact-age --loss coral [--dataset utkface]

No flag trains the gender model on gender-data/{train,test}; -a trains the age
model on age-data/{train,test}, with any number of age-group folders. Outputs
go to checkpoints/<task>/ (see trainer.py for the files).

--task exact-age trains ordinal regression (CORAL, CORN, Niu et al. or
cross-entropy, see losses.py) on UTKFace (the CORAL paper's CSV split by
default), any CSV of paths and ages, or IMDB-WIKI file names; it reports MAE,
RMSE and CS@5 and keeps the best model by validation MAE.

Scale out with torchrun (gloo on CPU, NCCL on CUDA):
    torchrun --nproc_per_node=2 gender_age_classifier.py -ep 10

This file only parses the arguments and wires the parts together: data in
datasets.py, networks in models.py, losses and metrics in tasks.py, the epoch
in engine.py, the run (checkpoints, resume, final test) in trainer.py.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

from gender_age.data import age_groups
from gender_age.data import loading
from gender_age.data import selection
from gender_age.data import transforms
from gender_age.train import chip_cache as face_chips
from gender_age.train import run_folder
from gender_age.train import config as settings
from gender_age.data import sources
from gender_age.train import trainer
from gender_age.train.config import ArgumentError, validate_args
from gender_age.core.checkpointing import CheckpointError, load_checkpoint
from gender_age.train.engine import Stopper, TrainingDiverged, make_ema, make_optimizer, make_scheduler, steps_per_epoch
from gender_age.nets.models import ARCHITECTURES, build_model
from gender_age.train.run_setup import (base_context, describe_run, load_data, make_model, make_preset, make_task,
                                        preflight, start_runtime)
from gender_age.core.runtime import DeviceError, shutdown_distributed


# what "from the data" comes to with the default data
AGES_FROM_DATA = "exact-age on the CORAL UTKFace split: 21-60; age-gender on UTKFace names: 1-116"


def default_of(key: str, ordinal_only: bool = False) -> str:
    """A recipe-filled flag's default by task, from the recipe tables (config.describe_default)."""
    return settings.describe_default(key, ordinal_only)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default, except for those the recipe fills (default None): their help says it."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train a gender, age-group, exact-age or gender-and-age (--task age-gender) model.", add_help=add_help,
                                formatter_class=HelpFormatter)
    add_original_args(p)
    add_exact_age_args(p.add_argument_group("exact age (--task exact-age, age-gender)"))
    add_age_gender_args(p.add_argument_group("gender and age in one network (--task age-gender)"))
    add_run_args(p)
    face_chips.add_args(p.add_argument_group("face chips (the framing of training faces, stored for predict.py)"))
    return p


def add_original_args(p) -> None:
    """The original script's flags first, then the model and optimisation ones."""
    p.add_argument("-a", "--age", action="store_true", help="train the age-group model on age-data/ instead of gender")
    p.add_argument("-b", "--batch-size", type=int, default=None,
                   help="images per step, all processes together; " + default_of("batch_size"))
    p.add_argument("-ep", "--epochs", type=int, default=None, help="number of epochs; " + default_of("epochs"))
    p.add_argument("-sgd", "--sgd", action="store_true", help="SGD with momentum 0.9 instead of Adam")
    p.add_argument("--task", default=None, choices=("gender", "age", "exact-age", "age-gender"),
                   help="what to learn (default: gender, or age with -a); age-gender: one network with a "
                        "gender and an exact-age head, on several --source's at once")
    p.add_argument("--lr", type=float, default=None, help="initial (one-cycle: peak) learning rate; "
                                                          + default_of("lr"))
    p.add_argument("--lr-step", type=int, default=5, help="decay the learning rate every this many epochs")
    p.add_argument("--lr-gamma", type=float, default=None, help="learning-rate decay factor; " + default_of("lr_gamma"))
    p.add_argument("--weight-decay", type=float, default=None, help="L2 weight decay (decoupled with AdamW); "
                                                                    + default_of("weight_decay"))
    p.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing")
    p.add_argument("--aug", default=None, choices=("original", "strong"),
                   help="original: RandomCrop + flip, as the original; strong: also random scale, position "
                        "and colour (age-gender: strong, better on its validation); " + default_of("aug"))
    p.add_argument("--grey", type=float, default=None, metavar="P",
                   help="with --aug strong, turn this fraction of the training images grey (saturation 0), so "
                        "that skin colour, light and camera weigh less; " + default_of("grey"))
    p.add_argument("--arch", default=None, choices=ARCHITECTURES,
                   help="network; " + default_of("arch"))
    p.add_argument("--resize", type=int, default=None,
                   help="side of the decoded square; " + default_of("resize") + " (another --arch than the "
                        "recipe's: 256)")
    p.add_argument("--crop", type=int, default=None,
                   help="network input side; " + default_of("crop") + " (another --arch than the recipe's: 227 "
                        "for levi_hassner, 224 for the resnets)")
    p.add_argument("--optimizer", default=None, choices=("adam", "adamw", "sgd"),
                   help="-sgd picks sgd; " + default_of("optimizer"))
    p.add_argument("--schedule", default=None, choices=("step", "onecycle"),
                   help="step: lr x lr-gamma every lr-step epochs; onecycle: one-cycle per iteration; "
                        + default_of("schedule"))
    p.add_argument("--dropout", type=float, default=None,
                   help="dropout of the fully connected layers; " + default_of("dropout"))
    p.add_argument("--ema-epochs", type=float, default=None,
                   help="evaluate, keep and predict with an exponential moving average of the weights, with "
                        "a time constant of this many epochs; 0 = off, the raw weights; " + default_of("ema_epochs"))
    p.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA",
                   help="mixup (Zhang et al. 2018) with a Beta(ALPHA, ALPHA) mixing weight, classification "
                        "only (0 = off)")
    p.add_argument("--tta", action="store_true",
                   help="evaluate with the Levi-Hassner over-sampling (10 crops and mirrors) instead of the "
                        "centre crop")
    p.add_argument("--init-from", default=None, metavar="PATH",
                   help="start from the weights of another run's checkpoint of the same network (its output "
                        "layer too when it has the same classes); default: random initialisation")


def add_exact_age_args(g) -> None:
    g.add_argument("--recipe", default="cpu", choices=("cpu", "paper"),
                   help="the defaults of every unset flag: cpu, measured on a 2-core CPU (ResNet-18, 64 px, "
                        "14 epochs, one-cycle AdamW); paper, the CORAL paper's (ResNet-34, 120 px, 200 epochs)")
    g.add_argument("--loss", default=None, choices=("ce", "ordinal", "coral", "corn"),
                   help="ordinal loss (ordinal: Niu et al.); " + default_of("loss", True))
    g.add_argument("--imp-weight", type=int, default=0, choices=(0, 1),
                   help="CORAL paper's task importance weighting (1 = on)")
    g.add_argument("--bias-init", default="prior", choices=("prior", "default"),
                   help="start the head's biases at the training label prior (default) or at the "
                        "layer's own initialisation (CORAL: (K-1..1)/(K-1))")
    g.add_argument("--ce-mode", default=None, choices=("argmax", "expectation"),
                   help="how --loss ce predicts an age; " + default_of("ce_mode", True))
    g.add_argument("--dataset", default=None, choices=("imagefolder", "utkface", "csv", "imdb-wiki"),
                   help="utkface: ages from UTKFace names (with the paper's CSV split when its files exist; "
                        "the default for exact age), or with the gender task genders from the names and a "
                        "seeded --random-split test share (default 0.1); csv: --train-csv/--test-csv; "
                        "imdb-wiki: ages from <id>_<birth>_<year>.jpg names under --data-dir/train and "
                        "--data-dir/test; imagefolder: --data-dir/{train,test}/<class>/ (the default for "
                        "gender and age groups)")
    g.add_argument("--train-csv", default=None, help="CSV of training images (default for utkface: "
                                                      "utkface/utk_train.csv)")
    g.add_argument("--test-csv", default=None, help="CSV of test images (default for utkface: utkface/utk_test.csv)")
    g.add_argument("--image-dir", default=None, help="folder the CSV paths are relative to "
                                                      "(default for utkface: utkface/UTKFace)")
    g.add_argument("--path-column", default="file", help="CSV column of image paths")
    g.add_argument("--age-column", default="age", help="CSV column of ages")
    g.add_argument("--csv-age-offset", type=int, default=None,
                   help="added to the CSV age column (the CORAL paper's CSVs store age - min age; "
                        "default 21 for utkface's CSVs, else 0)")
    g.add_argument("--min-age", type=int, default=None, help="youngest age (rank 0); default: the youngest "
                   "training image's (" + AGES_FROM_DATA + ")")
    g.add_argument("--max-age", type=int, default=None, help="oldest age; default: the oldest training "
                   "image's (" + AGES_FROM_DATA + ")")
    g.add_argument("--random-split", type=float, default=None, metavar="FRACTION",
                   help="ignore the CSV split: a seeded random test split of this share over all ages")


def add_age_gender_args(g) -> None:
    g.add_argument("--source", action="append", default=None, metavar="KIND=DIR",
                   help="a data source, repeatable; KIND: utkface (DIR/UTKFace names, CORAL test CSV), gender "
                        "(an ImageFolder tree of female/male), age-groups (an ImageFolder tree of --age-groups "
                        "folders, IMDB-WIKI names); default: " + " ".join(sources.DEFAULT_SOURCES))
    g.add_argument("--age-groups", default=age_groups.DEFAULT, metavar="NAME=LO-HI,...",
                   help="age groups read off the predicted age (test figures, predict.py)")
    g.add_argument("--gender-weight", type=float, default=8.0,
                   help="weight of the gender loss (default: 8; the age loss sums over the age thresholds: 8 "
                        "beat 4 on validation gender and age MAE in the 40-epoch recipe, docs/results.md)")
    g.add_argument("--age-weight", type=float, default=1.0, help="weight of the age loss")
    g.add_argument("--pretrained", default=None, metavar="PATH|imagenet",
                   help="start a ResNet from ImageNet weights: torchvision's download and cache (TORCH_HOME), or "
                        "a state-dict file of torchvision's ResNet; default: random weights")


def add_run_args(p) -> None:
    p.add_argument("--data-dir", default=None,
                   help="folder with train/ and test/ class folders (default: gender-data or age-data)")
    p.add_argument("--checkpoint-dir", default=None, help="output folder (default: checkpoints/<task>)")
    p.add_argument("--val-split", type=float, default=0.1,
                   help="stratified share of train held out to pick the best model; 0 validates on test "
                        "(the original's behaviour)")
    p.add_argument("--seed", type=int, default=0, help="random seed (a seeded CPU run is reproducible)")
    p.add_argument("--split-seed", type=int, default=None,
                   help="seed of the validation split and of random test splits (default: --seed); runs that "
                        "differ in --seed only but share it hold out the same images (members of one ensemble.py)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--workers", type=int, default=None, help="decode workers (default: the CPU cores, at most 8)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per process (default: cores / processes)")
    p.add_argument("--cache", default="auto", choices=("auto", "memory", "stream"),
                   help="decode images once into memory, or decode every epoch in workers; auto picks "
                        "memory when it fits in half the free RAM")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast; default: on for CUDA GPUs of compute capability 8.0 or newer and for "
                        "CPUs with AMX/AVX512-BF16 (2.4x faster training measured here), off elsewhere")
    p.add_argument("--eval-every", type=int, default=None,
                   help="evaluate every this many epochs, and after the last; " + default_of("eval_every"))
    p.add_argument("--save-every", type=int, default=None,
                   help="save checkpoint<epoch>.tar every this many epochs; " + default_of("save_every"))
    p.add_argument("--resume", nargs="?", const="last", default=None, metavar="PATH",
                   help="continue a run: from checkpoint_last.tar of --checkpoint-dir, or from PATH")
    p.add_argument("--test-only", action="store_true",
                   help="only evaluate model_best.tar (or --resume PATH) on the test split")
    p.add_argument("--eval-split", default="test", choices=("test", "val"),
                   help="with --test-only, the split to evaluate: val is the run's validation split, drawn "
                        "again from the training data with the checkpoint's seed and --val-split, its files "
                        "named val_results.json, val_predictions.csv (to choose --tta without the test "
                        "split; default: test)")
    p.add_argument("--strict", action="store_true", help="stop on unreadable images instead of skipping them")
    p.add_argument("--max-per-class", type=int, default=None,
                   help="use at most this many images per class and split (quick experiments; age-gender: per "
                        "source, gender and age group)")
    p.add_argument("--dry-run", action="store_true", help="one epoch of two batches on at most a few hundred images (train "
                   f"{selection.DRY_RUN_IMAGES['train']}, val and test {selection.DRY_RUN_IMAGES['test']} each): check "
                   "that everything runs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in a --checkpoint-dir that holds another run: its files are replaced "
                        "once the new run saves its first checkpoint (default: refuse; --resume continues it)")
    p.add_argument("--resume-anyway", action="store_true",
                   help="--resume even though the data changed since the checkpoint (default: refuse)")


def evaluate_checkpoint(args, name: str, out: Path, source: Path, env) -> dict:
    """--test-only: the checkpoint on the test split, as it was trained (no training data read),
    or with --eval-split val on its validation split (the training data split again)."""
    ckpt = load_checkpoint(source)
    preset = transforms.Preset.from_dict(ckpt["preprocess"])
    if args.eval_split == "val":
        sel = selection.validation_only(selection.select_samples(args, name), list(ckpt["classes"]), source)
    else:
        sel = selection.select_samples(args, name, classes=list(ckpt["classes"]))
    sel, load, _ = face_chips.prepare(args, sel, preset, source, out, env)
    mode, why = loading.choose_cache_mode(args.cache, len(sel.test), preset.resize, processes=env["world"])
    env["log"](describe_run(name, sel, preset, mode, why, args, env))
    test_data, bad = selection.build_split(sel.test, preset, mode, env["workers"], False, env["rank"], env["world"], load)
    if env["rank"] == 0:
        loading.report_bad(bad, out, args.strict, env["log"])
    task, model_args = make_task(args, name, sel.classes, None, sel.label_names)
    model = build_model(**ckpt["model_args"]).to(env["device"]).to(memory_format=torch.channels_last)
    ctx = {**base_context(name, task, sel.classes, preset, mode, ckpt["model_args"], env),
           "label_names": sel.label_names}
    ran_on = (ckpt.get("args") or {}).get("val_split", 0.1)
    ctx["selected_on"] = "validation split" if ran_on else "test split (--val-split 0)"
    summary = trainer.test_best(model, test_data, source, args, ctx, out, env["log"], args.eval_split)
    shutdown_distributed()
    return summary


def main(args, given: set[str] | None = None) -> dict:
    """Train (or with --resume continue, with --test-only evaluate) and test once.
    ``given``: the flags the user set (default: those that differ from the parser's defaults)."""
    started = time.perf_counter()
    given = settings.given_flags(args, get_args_parser()) if given is None else given
    run_folder.use_temporary_folder(args)
    name, out, source = settings.resolve(args, given)
    settings.check_task_flags(given, name, args.dataset)
    validate_args(args)
    preflight(args, source)
    env = start_runtime(args)
    log, rank, world = env["log"], env["rank"], env["world"]
    torch.manual_seed(args.seed)
    if args.test_only:
        if rank == 0:
            run_folder.claim(out, args)  # writable and locked: test_results.json goes there
        return evaluate_checkpoint(args, name, out, source, env)
    preset = make_preset(args)
    sel = selection.select_samples(args, name)
    run_folder.check_outside_data(out, sel)  # before anything is created there
    stale = run_folder.claim(out, args) if rank == 0 else []  # writable, locked, no other run replaced
    mode, why = loading.choose_cache_mode(args.cache, len(sel.train) + len(sel.val or []) + len(sel.test), preset.resize,
                                     processes=world)
    log(describe_run(name, sel, preset, mode, why, args, env))
    if sel.problems and rank == 0:
        loading.write_bad_list(sel.problems, out / "label_problems.csv")
        log(f"warning: {len(sel.problems)} row(s) or file name(s) without a usable label, listed in "
            f"{out / 'label_problems.csv'}")
    chips_started = time.perf_counter()
    sel, load, chips = face_chips.prepare(args, sel, preset, source, out, env)
    timing = {"started": started, "chips_s": time.perf_counter() - chips_started}
    train_data, val_data, test_data = load_data(sel, preset, mode, env, args, out, load)
    task, model_args = make_task(args, name, sel.classes, train_data.targets, sel.label_names)
    model = make_model(args, model_args, task, sel.classes, train_data.targets, env["device"], log)
    steps = steps_per_epoch(len(train_data), args, world)
    optimizer = make_optimizer(model, args)
    scheduler = make_scheduler(optimizer, args, steps)
    ctx = {**base_context(name, task, sel.classes, preset, mode, model_args, env), "stopper": Stopper(),
           "aug_gen": torch.Generator().manual_seed(args.seed * 7919 + rank),
           "best": {"value": None, "metric": task.select_metric, "epoch": 0},
           "selected_on": "validation split" if sel.val else "test split (--val-split 0)",
           "ema": make_ema(model, args.ema_epochs, steps) if args.ema_epochs > 0 else None,
           "stale": stale, "data_fingerprint": run_folder.data_fingerprint(sel), "chips": chips,
           "label_names": sel.label_names, "timing": timing}
    state = {"epoch": 0, "next_batch": 0, "running": None, "iter_losses": []}
    history = trainer.resume(source, model, optimizer, scheduler, state, ctx, args, log) if source else []
    if world > 1:
        device = env["device"]
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    trainer.train_loop(model, optimizer, scheduler, train_data, val_data, state, history, ctx, args, out, log)
    summary = trainer.test_best(model, test_data, out / "model_best.tar", args, ctx, out, log)
    shutdown_distributed()
    return summary


def cli(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        main(args, settings.flags_on_command_line(get_args_parser(), argv))
    except (selection.DatasetError, CheckpointError, DeviceError, ArgumentError, run_folder.RunFolderError,
            TrainingDiverged) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before training started (or after it ended): nothing to save
        print("error: interrupted", file=sys.stderr)
        return 130
    finally:
        run_folder.release_locks()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
