"""Train the gender, age-group or exact-age model.

    python gender_age_classifier.py [-a] [-b 64] [-ep 64] [-sgd]
    python gender_age_classifier.py --task exact-age --loss coral [--dataset utkface]

No flag trains the gender model on gender-data/{train,test}; -a trains the age
model on age-data/{train,test}, with any number of age-group folders. Outputs
go to checkpoints/<task>/: checkpoint<epoch>.tar, checkpoint_last.tar,
model_best.tar (best validation accuracy), loss.png, performance.png,
metrics.jsonl, and after training confusion.png and test_results.json.

--task exact-age trains ordinal regression (CORAL, CORN, Niu et al. or
cross-entropy, see losses.py) on UTKFace (the CORAL paper's CSV split by
default), any CSV of paths and ages, or IMDB-WIKI file names; it reports MAE,
RMSE and CS@5, keeps the best model by validation MAE, and writes mae.png,
test_predictions.csv and test_scatter.png.

Scale out with torchrun (gloo on CPU, nccl on CUDA):
    torchrun --nproc_per_node=2 gender_age_classifier.py -ep 10
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import datasets as ds
import losses
import plots
from checkpointing import (CHECKPOINT_FORMAT, CheckpointError, atomic_torch_save, check_writable, expect,
                           load_checkpoint, transfer_weights)
from models import (ARCHITECTURES, build_model, default_input_geometry, feature_extractor, output_bias,
                    output_layer_names)
from tasks import ClassificationTask, OrdinalTask

TASK_DEFAULTS = {"gender": "gender-data", "age": "age-data"}

# --init-from auto: a Levi-Hassner network pretrained on the genders of the adult
# UTKFace faces (16-70 years, 16.8k training images, 12 epochs, 51 min on the
# README's 2-core CPU), re-framed (--reframe 0.53) so that their tight chips show
# the face at the scale of the wide-margin IMDB-WIKI crops of the default data.
# Before any fine-tuning it scores 0.935 on gender-data/test (0.880 after 4
# epochs, 0.565 without the re-framing). Fine-tuned on the default data it
# reaches 0.98-1.00 on the validation split but 0.935 and 0.926 on test (seeds
# 0 and 1, against 0.935, 0.907 and 0.917 from random weights), and young/old
# 0.892 (0.916 from random weights), so it is an option, not the default
# (README, Results).
PRETRAINED_DIR = Path("checkpoints") / "utkface-gender"
PRETRAIN_DATA = Path("utkface")
PRETRAIN_RECIPE = ["--dataset", "utkface", "--min-age", "16", "--max-age", "70", "--random-split", "0.05",
                   "--reframe", "0.53", "-ep", "12", "--eval-every", "1", "--save-every", "1", "--ema-epochs", "1",
                   "--val-split", "0.05", "--seed", "0", "--init-from", "none"]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train a gender or age-group classifier (Levi-Hassner CNN).",
                                add_help=add_help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-a", "--age", action="store_true", help="train the age-group model on age-data/ instead of gender")
    p.add_argument("--task", default=None, choices=("gender", "age", "exact-age"),
                   help="what to learn (default: gender, or age with -a)")
    p.add_argument("-b", "--batch-size", type=int, default=64, help="images per step (all processes together)")
    p.add_argument("-ep", "--epochs", type=int, default=64, help="number of epochs")
    p.add_argument("-sgd", "--sgd", action="store_true", help="SGD with momentum 0.9 instead of Adam")
    p.add_argument("--lr", type=float, default=1e-3, help="initial learning rate")
    p.add_argument("--lr-step", type=int, default=5, help="decay the learning rate every this many epochs")
    p.add_argument("--lr-gamma", type=float, default=0.9, help="learning-rate decay factor")
    p.add_argument("--weight-decay", type=float, default=0.0, help="L2 weight decay")
    p.add_argument("--feature-lr-scale", type=float, default=1.0, metavar="SCALE",
                   help="the convolutional layers learn at SCALE * lr, the fc layers at lr: a lower rate "
                        "keeps more of an --init-from start's features (default: 1.0)")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing")
    p.add_argument("--aug", default="original", choices=("original", "strong"),
                   help="original: RandomCrop + flip, as the original; strong: also random scale, position "
                        "and colour (datasets.Preset.train_batch_strong; measured no better on the default data)")
    p.add_argument("--arch", default=None, choices=ARCHITECTURES,
                   help="network (default: levi_hassner; resnet34 for exact-age, as in the CORAL paper)")
    p.add_argument("--resize", type=int, default=None, help="side of the decoded square (default: per arch)")
    p.add_argument("--crop", type=int, default=None, help="network input side (default: per arch)")
    p.add_argument("--optimizer", default=None, choices=("adam", "adamw", "sgd"),
                   help="default adam (-sgd picks sgd)")
    p.add_argument("--schedule", default="step", choices=("step", "onecycle"),
                   help="step: lr x lr-gamma every lr-step epochs; onecycle: one-cycle per iteration")
    g = p.add_argument_group("exact age (--task exact-age)")
    g.add_argument("--loss", default="coral", choices=("ce", "ordinal", "coral", "corn"), help="ordinal loss")
    g.add_argument("--imp-weight", type=int, default=0, choices=(0, 1),
                   help="CORAL paper's task importance weighting (1 = on)")
    g.add_argument("--bias-init", default="prior", choices=("prior", "default"),
                   help="start the head's biases at the training label prior (default) or at the "
                        "layer's own initialisation (CORAL: (K-1..1)/(K-1))")
    g.add_argument("--ce-mode", default="argmax", choices=("argmax", "expectation"),
                   help="how --loss ce predicts an age")
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
    g.add_argument("--min-age", type=int, default=None, help="youngest age (rank 0); default: from the data")
    g.add_argument("--max-age", type=int, default=None, help="oldest age; default: from the data")
    g.add_argument("--random-split", type=float, default=None, metavar="FRACTION",
                   help="ignore the CSV split: a seeded random test split of this share over all ages")
    p.add_argument("--reframe", type=float, default=1.0, metavar="SCALE",
                   help="train on tight face chips (UTKFace) as if they were wide-margin crops (IMDB-WIKI): "
                        "each image shrunk to SCALE of the side, its edges smeared and blurred around it "
                        "(default 1: off; 0.53 matches UTKFace faces to IMDB-WIKI's)")
    p.add_argument("--dropout", type=float, default=0.5, help="dropout of the fully connected layers")
    p.add_argument("--data-dir", default=None,
                   help="folder with train/ and test/ class folders (default: gender-data or age-data)")
    p.add_argument("--checkpoint-dir", default=None, help="output folder (default: checkpoints/<task>)")
    p.add_argument("--val-split", type=float, default=0.1,
                   help="stratified share of train held out to pick the best model; 0 validates on test "
                        "(the original's behaviour)")
    p.add_argument("--seed", type=int, default=0, help="random seed (a seeded CPU run is reproducible)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--workers", type=int, default=None, help="decode workers (default: the CPU cores, at most 8)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per process (default: cores / processes)")
    p.add_argument("--cache", default="auto", choices=("auto", "memory", "stream"),
                   help="decode images once into memory, or decode every epoch in workers; auto picks "
                        "memory when it fits in half the free RAM")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast; default: on for CUDA with bf16 and for CPUs with AMX/AVX512-BF16 "
                        "(2.4x faster training measured here), off elsewhere")
    p.add_argument("--ema-epochs", type=float, default=None,
                   help="evaluate, keep and predict with an exponential moving average of the weights, with "
                        "a time constant of this many epochs; 0 = off, the raw weights (default: 5 for gender "
                        "and age, 0 for exact-age)")
    p.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA",
                   help="mixup (Zhang et al. 2018) with a Beta(ALPHA, ALPHA) mixing weight, classification "
                        "only (0 = off)")
    p.add_argument("--tta", action="store_true",
                   help="evaluate with the Levi-Hassner over-sampling (10 crops and mirrors) instead of the "
                        "centre crop")
    p.add_argument("--eval-every", type=int, default=5, help="evaluate every this many epochs (and after the last)")
    p.add_argument("--save-every", type=int, default=5, help="save checkpoint<epoch>.tar every this many epochs")
    p.add_argument("--resume", nargs="?", const="last", default=None, metavar="PATH",
                   help="continue a run: from checkpoint_last.tar of --checkpoint-dir, or from PATH")
    p.add_argument("--init-from", default="none", metavar="PATH|auto|none",
                   help="start from the weights of another run's checkpoint of the same network (its output "
                        "layer too when it has the same classes); auto: for the Levi-Hassner gender and "
                        "age-group models, the network pretrained on UTKFace genders in "
                        "checkpoints/utkface-gender/, trained there first (once) when missing and utkface/ is "
                        "present; none (default): random initialisation")
    p.add_argument("--test-only", action="store_true",
                   help="only evaluate model_best.tar (or --resume PATH) on the test split")
    p.add_argument("--strict", action="store_true", help="stop on unreadable images instead of skipping them")
    p.add_argument("--max-per-class", type=int, default=None,
                   help="use at most this many images per class and split (quick experiments)")
    p.add_argument("--dry-run", action="store_true", help="one epoch of two batches: check that everything runs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


# --------------------------------------------------------------------------
# Distributed helpers: all are no-ops in a single process
# --------------------------------------------------------------------------

def init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world_size); joins the torchrun process group when launched by it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 autocast speeds training up on this device (measured: a
    Levi-Hassner step went from 37 to 88 img/s on a 2-core AMX Xeon)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ds.DatasetError("--device cuda asked for, but no CUDA device is available: use --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return dev


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------

def limit_per_class(samples: ds.SampleSet, n: int | None) -> ds.SampleSet:
    if not n:
        return samples
    seen: dict[int, int] = {}
    keep = []
    for i, t in enumerate(samples.targets):
        if seen.get(t, 0) < n:
            seen[t] = seen.get(t, 0) + 1
            keep.append(i)
    return samples.subset(keep)


def report_bad(bad: list, out_dir: Path, strict: bool, log) -> None:
    """One warning that counts and lists the skipped images (to a file when many)."""
    if not bad:
        return
    if strict:
        p, why = bad[0]
        raise ds.DatasetError(f"{len(bad)} unreadable image(s), first {p}: {why} "
                              f"(fix or remove them, or drop --strict to skip them)")
    if len(bad) <= 5:
        listing = "; ".join(f"{p} ({why})" for p, why in bad)
    else:
        listing_file = out_dir / "skipped_images.csv"
        ds.write_bad_list(bad, listing_file)
        listing = f"listed in {listing_file}"
    log(f"warning: skipped {len(bad)} unreadable image(s): {listing}")


def exact_age_samples(args) -> tuple[ds.SampleSet, ds.SampleSet, list]:
    """(train, test, problems) for --task exact-age: ranks = age - min_age."""
    if args.dataset == "imagefolder":
        raise ds.DatasetError("exact age needs ages: --dataset utkface, csv or imdb-wiki "
                              "(class folders are for --task gender or age)")
    if args.dataset == "utkface":
        base = Path(args.data_dir or "utkface")
        image_dir = Path(args.image_dir or base / "UTKFace")
        train_csv = Path(args.train_csv or base / "utk_train.csv")
        test_csv = Path(args.test_csv or base / "utk_test.csv")
        offset = 21 if args.csv_age_offset is None else args.csv_age_offset
        if args.random_split is not None:
            parts = split_ages(ds.ages_from_names(image_dir, "utkface"), args.random_split, args.seed)
        else:
            parts = (ds.ages_from_csv(train_csv, image_dir, args.path_column, args.age_column, offset),
                     ds.ages_from_csv(test_csv, image_dir, args.path_column, args.age_column, offset))
    elif args.dataset == "csv":
        if not (args.train_csv and args.test_csv):
            raise ds.DatasetError("--dataset csv needs --train-csv and --test-csv (and --image-dir)")
        image_dir = Path(args.image_dir or Path(args.train_csv).parent)
        offset = args.csv_age_offset or 0
        parts = tuple(ds.ages_from_csv(c, image_dir, args.path_column, args.age_column, offset)
                      for c in (args.train_csv, args.test_csv))
        if args.random_split is not None:
            merged = ds.AgeSamples(parts[0].paths + parts[1].paths, parts[0].ages + parts[1].ages,
                                   parts[0].problems + parts[1].problems)
            parts = split_ages(merged, args.random_split, args.seed)
    else:
        base = Path(args.data_dir or "age-data")
        if args.random_split is not None:
            parts = split_ages(ds.ages_from_names(base, "imdb-wiki"), args.random_split, args.seed)
        else:
            parts = (ds.ages_from_names(base / "train", "imdb-wiki"), ds.ages_from_names(base / "test", "imdb-wiki"))
    train, test = parts
    ages = train.ages + test.ages
    lo = args.min_age if args.min_age is not None else min(ages)
    hi = args.max_age if args.max_age is not None else max(ages)
    if hi <= lo:
        raise ds.DatasetError(f"age range {lo}-{hi} is empty: check --min-age/--max-age")
    tr, te = ds.to_ranks(train, lo, hi, "train"), ds.to_ranks(test, lo, hi, "test")
    if len(tr) < 2 or len(te) < 1:
        raise ds.DatasetError(f"too few images in the age range {lo}-{hi} (train {len(tr)}, test {len(te)})")
    return tr, te, tr.skipped + te.skipped


def pretrained_start(args, name: str, world: int, log) -> str | None:
    """The checkpoint to start from (--init-from), or None for random weights.

    auto: for a Levi-Hassner gender or age-group run (not a resumed, test-only,
    dry or pretraining run), PRETRAINED_DIR's model once its run has finished
    (test_results.json written) with PRETRAIN_RECIPE's epochs; when it is missing
    and PRETRAIN_DATA is there, train it first with PRETRAIN_RECIPE (resuming an
    interrupted or shorter one), in this process. Without the UTKFace data the run starts from random weights, and
    says so.
    """
    if args.resume or args.test_only or args.init_from == "none":
        return None
    if args.init_from != "auto":
        return args.init_from
    if name == "exact-age" or args.arch != "levi_hassner" or args.dataset != "imagefolder":
        return None
    best = PRETRAINED_DIR / "model_best.tar"
    epochs = int(PRETRAIN_RECIPE[PRETRAIN_RECIPE.index("-ep") + 1])
    why = "missing"
    if (PRETRAINED_DIR / "test_results.json").is_file() and best.is_file():
        # epochs run, from the last checkpoint: model_best keeps the arguments of
        # the run that last improved it, which may be a shorter one trained on
        trained = load_checkpoint(latest_checkpoint(PRETRAINED_DIR))["epoch"]
        if trained >= epochs:
            return str(best)
        # a finished pretraining of an older, shorter recipe: its other arguments
        # are the same, so resuming it to the new epoch count gives exactly the
        # run the new recipe would (a resumed run is bit-exact)
        why = f"trained for {trained} epochs, the recipe has {epochs}"
    command = "python gender_age_classifier.py " + " ".join(PRETRAIN_RECIPE) + f" --checkpoint-dir {PRETRAINED_DIR}"
    if not (PRETRAIN_DATA / "UTKFace").is_dir() or args.dry_run:
        log(f"note: no pretrained start ({best} {why}"
            + (", and --dry-run does not train it" if args.dry_run else f"; it needs {PRETRAIN_DATA / 'UTKFace'}")
            + "): starting from random weights")
        return None
    if world > 1:
        raise ds.DatasetError(f"the pretrained start {best} is {why}: train it once in one process "
                              f"({command}), or pass --init-from none")
    log(f"pretrained start {best} {why}: training it first, once, on UTKFace genders (51 min on the "
        f"README's 2-core CPU): {command}")
    argv = [*PRETRAIN_RECIPE, "--checkpoint-dir", str(PRETRAINED_DIR), "--data-dir", str(PRETRAIN_DATA),
            "--device", args.device, "--cache", args.cache, "--amp" if args.amp else "--no-amp"]
    argv += ["--threads", str(args.threads)] if args.threads else []
    argv += ["--workers", str(args.workers)] if args.workers is not None else []
    argv += ["--no-progress"] if args.no_progress else []
    if latest_checkpoint(PRETRAINED_DIR).is_file():
        argv.append("--resume")
    main(get_args_parser().parse_args(argv))
    log(f"pretrained start ready: {best}")
    return str(best)


def utkface_gender_samples(image_dir: Path, args) -> tuple[ds.SampleSet, ds.SampleSet, list]:
    """(train, test, problems) for --task gender --dataset utkface: genders from
    the file names (ages --min-age to --max-age), a seeded stratified test share."""
    everything = ds.genders_from_utkface(image_dir, args.min_age, args.max_age)
    share = 0.1 if args.random_split is None else args.random_split
    if not 0 < share < 1:
        raise ds.DatasetError(f"--random-split must be between 0 and 1 for a test share, got {share}")
    keep, test = ds.stratified_split(everything.targets, share, args.seed)
    return everything.subset(keep), everything.subset(test), everything.skipped


def split_ages(samples: ds.AgeSamples, fraction: float, seed: int) -> tuple[ds.AgeSamples, ds.AgeSamples]:
    """A seeded random split of one labelled set, stratified by age."""
    keep, held = ds.stratified_split(samples.ages, fraction, seed)
    pick = lambda idx: ds.AgeSamples([samples.paths[i] for i in idx], [samples.ages[i] for i in idx])
    train, test = pick(keep), pick(held)
    train.problems = samples.problems
    return train, test


def build_split(samples: ds.SampleSet, preset: ds.Preset, mode: str, workers: int, progress: bool,
                reframe_scale: float = 1.0):
    """SampleSet -> (dataset, bad list): decoded into memory, or streaming."""
    if mode == "memory":
        data = ds.CachedImages(samples, preset.resize, workers, progress, reframe_scale)
        return data, data.bad
    bad = ds.check_files(samples.paths, workers)
    data = ds.StreamingImages(ds.drop_bad(samples, bad), preset.resize, reframe_scale)
    return data, bad


def iterate_batches(data, indices: list[int], batch_size: int, workers: int, pin: bool):
    """Yield (uint8 (B,3,R,R), targets (B,)) over ``indices`` in order."""
    if isinstance(data, ds.CachedImages):
        # already decoded: slicing the big uint8 tensor is all the loading there is
        for s in range(0, len(indices), batch_size):
            idx = torch.tensor(indices[s:s + batch_size])
            x, y = data.images[idx], data.targets[idx]
            yield (x.pin_memory(), y) if pin else (x, y)
        return
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(data, indices), batch_size=batch_size, shuffle=False,
        num_workers=workers, collate_fn=ds.collate_skip_bad, pin_memory=pin,
        persistent_workers=False, prefetch_factor=4 if workers else None)
    yield from loader


def shard(indices: list[int], rank: int, world: int) -> list[int]:
    return indices[rank::world]


def epoch_order(n: int, seed: int, epoch: int, rank: int, world: int) -> list[int]:
    """This process's shuffled indices for an epoch: a seeded permutation, padded
    to a multiple of the world size (as DistributedSampler does), then sharded."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    pad = (-n) % world
    order += order[:pad]
    return shard(order, rank, world)


# --------------------------------------------------------------------------
# Train and evaluate
# --------------------------------------------------------------------------

class StopRequested(Exception):
    pass


def stop_requested(ctx) -> bool:
    """True on every process as soon as any one of them got SIGINT/SIGTERM, so
    all processes stop at the same batch (no rank is left waiting in DDP)."""
    flag = ctx["stopper"].signal is not None
    if ctx["world"] > 1:
        flag = all_reduce_sum(torch.tensor([float(flag)])).item() > 0
    return flag


class Stopper:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint and exits cleanly."""

    def __init__(self):
        self.signal = None

    def install(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, self._handler)

    def _handler(self, signum, frame):
        if self.signal is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name


class WeightAverage:
    """Exponential moving average of a model's parameters and BatchNorm buffers.

    decay per step = 1 - 1 / (epochs * steps_per_epoch), warmed up as
    min(decay, (1 + t) / (10 + t)) so that early averages are not dominated by
    the random initialisation. ``module`` is a full copy of the network that
    evaluation, model_best.tar and predict.py use.
    """

    def __init__(self, model: nn.Module, epochs: float, steps_per_epoch: int):
        import copy
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = 1.0 - 1.0 / max(1.0, epochs * steps_per_epoch)
        self.steps = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        src = model.state_dict()
        avg, new = [], []
        for k, v in self.module.state_dict().items():
            if v.is_floating_point():
                avg.append(v)
                new.append(src[k])
            else:
                v.copy_(src[k])  # BatchNorm's num_batches_tracked
        torch._foreach_lerp_(avg, new, 1.0 - d)  # one fused pass: memory-bound, ~20 ms for ResNet-18


def mixup(x: torch.Tensor, y: torch.Tensor, alpha: float, gen: torch.Generator):
    """(mixed x, y, y of the partners, lam): x <- lam x + (1 - lam) x[perm], with
    lam ~ Beta(alpha, alpha), all draws from ``gen`` (so a resumed run repeats them)."""
    import numpy as np
    seed = int(torch.randint(2 ** 31 - 1, (1,), generator=gen))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=gen).to(x.device)
    return x.mul(lam).add_(x[perm], alpha=1.0 - lam), y, y[perm], lam


def train_one_epoch(model, optimizer, scheduler, data, state: dict, args, ctx) -> dict:
    """One epoch (or the rest of an interrupted one). ``state`` is resumable:
    epoch, next_batch, the running statistics, and the aug generator."""
    model.train()
    device, preset, task = ctx["device"], ctx["preset"], ctx["task"]
    order = epoch_order(len(data), args.seed, state["epoch"], ctx["rank"], ctx["world"])
    per_proc = max(1, args.batch_size // ctx["world"])
    n_batches = steps_per_epoch(len(data), args, ctx["world"])
    start = state["next_batch"]
    gen = ctx["aug_gen"]
    bar = None
    if ctx["rank"] == 0 and not args.no_progress:
        from tqdm import tqdm
        bar = tqdm(total=n_batches, initial=start, desc=f"epoch {state['epoch'] + 1}/{args.epochs}",
                   unit="batch", leave=False, mininterval=1.0, file=sys.stderr)
    t0, imgs = time.perf_counter(), 0
    running = state["running"]
    batches = iterate_batches(data, order[start * per_proc:n_batches * per_proc], per_proc,
                              ctx["workers"], device.type == "cuda")
    for b, (x, y) in enumerate(batches, start=start):
        if stop_requested(ctx):
            state["next_batch"] = b
            raise StopRequested
        if len(y) == 0:
            continue
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        # crop + flip (+ colour) + normalise on the device, from the CPU generator's draws
        x = preset.train_batch_strong(x, gen) if args.aug == "strong" else preset.train_batch(x, gen)
        if ctx["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        mix = args.mixup > 0 and task.kind != "ordinal"
        if mix:
            x, y, y_partner, lam = mixup(x, y, args.mixup, gen)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
            logits = model(x)
        loss = task.loss(logits, y)
        if mix:
            loss = lam * loss + (1.0 - lam) * task.loss(logits, y_partner)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ctx["ema"] is not None:
            ctx["ema"].update(model.module if hasattr(model, "module") else model)
        if args.schedule == "onecycle":
            scheduler.step()
        state["iter_losses"].append(loss.item())
        stats = task.stats(logits.detach().float().cpu(), y.cpu())
        running = stats if running is None else running + stats
        state["running"] = running
        imgs += len(y)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{state['iter_losses'][-1]:.3f}",
                            img_s=f"{imgs * ctx['world'] / (time.perf_counter() - t0):.0f}")
    if bar is not None:
        bar.close()
    state["next_batch"] = n_batches
    seconds = time.perf_counter() - t0
    total = all_reduce_sum(running.clone()) if running is not None else None
    m = task.metrics(total) if total is not None else {}
    return {**{f"train_{k}": v for k, v in m.items() if k not in ("confusion", "n")},
            "images_per_s": imgs * ctx["world"] / max(seconds, 1e-9), "seconds": seconds}


def steps_per_epoch(n: int, args, world: int) -> int:
    per_proc = max(1, args.batch_size // world)
    per_shard = math.ceil(n / world)
    steps = math.ceil(per_shard / per_proc)
    if steps > 1 and per_shard % per_proc == 1:
        # a last batch of one image: BatchNorm cannot train on it (a ResNet's 1x1
        # final maps have one value per channel) and its gradient is mostly noise;
        # drop it, as drop_last would (the shuffle puts that image elsewhere next epoch)
        steps -= 1
    return min(steps, 2) if args.dry_run else steps


@torch.no_grad()
def eval_logits(model, x: torch.Tensor, args, ctx) -> torch.Tensor:
    """uint8 (N,3,R,R) -> float logits (N, outputs) on the CPU. With --tta, the
    Levi-Hassner over-sampling: 10 views (4 corners + centre, and mirrors);
    classification averages their softmax (returned as log-probabilities, so
    argmax and cross-entropy still apply), ordinal heads average their logits."""
    preset = ctx["preset"]
    n = x.shape[0]
    views = preset.tta_batch(x).flatten(0, 1) if args.tta else preset.eval_batch(x)  # (V*N, 3, c, c)
    if ctx["channels_last"]:
        views = views.contiguous(memory_format=torch.channels_last)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=args.amp):
        logits = model(views).float().cpu()
    if not args.tta:
        return logits
    logits = logits.view(10, n, -1)
    if ctx["task"].kind == "ordinal":
        return logits.mean(0)
    return logits.softmax(-1).mean(0).log()


@torch.no_grad()
def evaluate(model, data, args, ctx, rows: list | None = None) -> dict:
    """The task's metrics in eval mode (dropout off, BatchNorm running
    statistics), sharded over processes and all-reduced. When ``rows`` is a
    list, per-image (index, logits) pairs are appended to it."""
    model.eval()
    device, task = ctx["device"], ctx["task"]
    indices = shard(list(range(len(data))), ctx["rank"], ctx["world"])
    total = None
    pos = 0
    for x, y in iterate_batches(data, indices, max(64, args.batch_size), ctx["workers"], device.type == "cuda"):
        if len(y) == 0:
            continue
        logits = eval_logits(model, x.to(device, non_blocking=True), args, ctx)
        stats = task.stats(logits, y)
        total = stats if total is None else total + stats
        if rows is not None:
            rows.extend(zip(indices[pos:pos + len(y)], logits))
        pos += len(y)
    if total is None:
        total = task.stats(torch.zeros((0, ctx["num_outputs"])), torch.zeros((0,), dtype=torch.long))
    return task.metrics(all_reduce_sum(total))


# --------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------

def plain_args(args) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def make_checkpoint(model, optimizer, scheduler, state, history, ctx, args) -> dict:
    raw = model.module if hasattr(model, "module") else model
    task, ema = ctx["task"], ctx["ema"]
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "task": ctx["task_name"],
        "classes": list(ctx["classes"]),
        "model_args": dict(ctx["model_args"]),
        "preprocess": ctx["preset"].as_dict(),
        # model_state is what evaluation and predict.py use: the averaged weights when
        # --ema-epochs is on, and then train_state holds the raw ones to resume from
        "model_state": {k: v.detach().cpu() for k, v in (ema.module if ema else raw).state_dict().items()},
        "optimizer_state": optimizer.state_dict(),
        "scheduler_state": scheduler.state_dict(),
        # epoch: completed epochs; progress: where the epoch in flight stands
        "epoch": state["epoch"],
        "progress": {k: state[k] for k in ("epoch", "next_batch", "running")},
        "iter_losses": list(state["iter_losses"]),
        "history": history,
        "best": dict(ctx["best"]),
        "rng": {"torch": torch.get_rng_state(), "aug": ctx["aug_gen"].get_state()},
        "args": plain_args(args),
        "metrics": history[-1] if history else {},
    }
    if ema is not None:
        ckpt["train_state"] = {k: v.detach().cpu() for k, v in raw.state_dict().items()}
        ckpt["ema_steps"] = ema.steps
    if task.kind == "ordinal":
        ckpt["ordinal"] = {"loss": task.loss_name, "min_age": task.min_age, "num_ranks": task.k,
                           "ce_mode": task.ce_mode}
    return ckpt


def write_outputs(ckpt: dict, out: Path, ctx) -> None:
    """Plots and the metrics log: rewritten atomically after each evaluation."""
    hist, name = ckpt["history"], ctx["task_name"]
    plots.write_jsonl(hist, out / "metrics.jsonl")
    if ckpt["iter_losses"]:
        plots.plot_loss(ckpt["iter_losses"], out / "loss.png", f"{name}: training loss")
    if ctx["task"].kind == "ordinal":
        plots.plot_curves(hist, {"train_mae": "train (running, augmented)", "val_mae": "validation"},
                          out / "mae.png", "MAE (years)", f"{name}: mean absolute error")
        plots.plot_curves(hist, {"train_cs5": "train CS@5", "val_cs5": "validation CS@5"},
                          out / "performance.png", "share within 5 years", f"{name}: CS@5")
    else:
        plots.plot_curves(hist, {"train_acc": "train (running, augmented)", "val_acc": "validation"},
                          out / "performance.png", "accuracy", f"{name}: accuracy")


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def task_name(args) -> str:
    if args.task:
        if args.age and args.task != "age":
            raise ds.DatasetError(f"-a means --task age, not --task {args.task}")
        return args.task
    return "age" if args.age else "gender"


def main(args) -> dict:
    name = task_name(args)
    ordinal = name == "exact-age"
    out = Path(args.checkpoint_dir or Path("checkpoints") / name)
    if args.dry_run:
        args.epochs = 1
    if not 0 < args.reframe <= 1:
        raise ds.DatasetError(f"--reframe must be in (0, 1], got {args.reframe}")
    for opt in ("batch_size", "epochs", "eval_every", "save_every", "lr_step"):
        if getattr(args, opt) < 1:
            raise ds.DatasetError(f"--{opt.replace('_', '-')} must be at least 1, got {getattr(args, opt)}")
    args.arch = args.arch or ("resnet34" if ordinal else "levi_hassner")
    args.dataset = args.dataset or ("utkface" if ordinal else "imagefolder")
    args.optimizer = args.optimizer or ("sgd" if args.sgd else "adam")
    if args.ema_epochs is None:
        args.ema_epochs = 0.0 if ordinal else 5.0

    device = resolve_device(args.device)
    if args.amp is None:
        args.amp = bf16_is_fast(device)
    rank, world = init_distributed(device)
    log = print if rank == 0 else (lambda *a, **k: None)
    cores = ds.usable_cores()
    torch.set_num_threads(args.threads or max(1, cores // world))
    workers = args.workers if args.workers is not None else min(8, cores)
    start = pretrained_start(args, name, world, log)  # may train it first: before this run seeds its RNG
    args.init_from = start or "none"  # what the checkpoint records: the start actually used
    torch.manual_seed(args.seed)

    if rank == 0:
        check_writable(out, need_bytes=200 << 20)
    resize, crop = default_input_geometry(args.arch)
    preset = ds.Preset(args.resize or resize, args.crop or crop)
    if preset.crop > preset.resize:
        raise ds.DatasetError(f"--crop {preset.crop} is larger than --resize {preset.resize}")
    if args.arch == "levi_hassner" and preset.crop != 227:
        raise ds.DatasetError("the Levi-Hassner network takes 227x227 inputs: use --crop 227")

    # ---- data: structure first (one-line errors), then decode once ----
    if ordinal:
        train_all, test_samples, problems = exact_age_samples(args)
    elif args.dataset == "utkface" and name == "gender":
        data_dir = Path(args.image_dir or Path(args.data_dir or "utkface") / "UTKFace")
        train_all, test_samples, problems = utkface_gender_samples(data_dir, args)
    elif args.dataset != "imagefolder":
        raise ds.DatasetError(f"--dataset {args.dataset} labels exact ages: use it with --task exact-age "
                              f"(the gender task also takes --dataset utkface)")
    else:
        data_dir = Path(args.data_dir or TASK_DEFAULTS[name])
        train_all = ds.scan_image_folder(data_dir / "train", split_name="train")
        test_samples = ds.scan_image_folder(data_dir / "test", classes=train_all.classes, split_name="test")
        problems = []
    classes = train_all.classes
    train_all = limit_per_class(train_all, args.max_per_class)
    test_samples = limit_per_class(test_samples, args.max_per_class)
    keep, held = ds.stratified_split(train_all.targets, args.val_split, args.seed)
    train_samples, val_samples = train_all.subset(keep), train_all.subset(held)
    mode, why = ds.choose_cache_mode(args.cache, len(train_all) + len(test_samples), preset.resize)
    what = f"ages {classes[0]}-{classes[-1]} ({len(classes)} ranks), loss {args.loss}" if ordinal \
        else f"{len(classes)} classes {classes}"
    log(f"{name}: {what}; {args.arch} {preset.crop}x{preset.crop}; train {len(train_samples)}, "
        f"val {len(val_samples) if held else '(test)'}, test {len(test_samples)}; "
        f"data: {mode} ({why}); device {device}{' bf16' if args.amp else ''}, {world} process(es), "
        f"{torch.get_num_threads()} threads each")
    if problems and rank == 0:
        listing = out / "label_problems.csv"
        ds.write_bad_list(problems, listing)
        log(f"warning: {len(problems)} row(s) or file name(s) without a usable label, listed in {listing}")
    progress = rank == 0 and not args.no_progress
    split = lambda samples: build_split(samples, preset, mode, workers, progress, args.reframe)
    train_data, bad = split(train_samples)
    test_data, bad_test = split(test_samples)
    val_data, bad_val = split(val_samples) if held else (test_data, [])
    if rank == 0:
        report_bad(bad + bad_val + bad_test, out, args.strict, log)
        if bad + bad_val + bad_test:
            log(f"images used: train {len(train_data)}, val {len(val_data) if held else '(test)'}, "
                f"test {len(test_data)}")
    elif bad + bad_val + bad_test and args.strict:
        raise ds.DatasetError("unreadable images (see rank 0)")
    if not ordinal and len(set(train_data.targets.tolist())) < 2:
        raise ds.DatasetError(f"fewer than 2 classes have readable training images in {data_dir / 'train'}")
    if len(train_data) == 0:
        raise ds.DatasetError("no readable training images")

    if ordinal:
        k = len(classes)
        weights = losses.task_importance_weights(train_data.targets, k) if args.imp_weight else None
        task = OrdinalTask(args.loss, k, int(classes[0]), weights, args.ce_mode)
        model_args = {"arch": args.arch, "num_outputs": losses.head_output_size(args.loss, k),
                      "dropout": args.dropout, "head": args.loss, "num_ranks": k}
    else:
        task = ClassificationTask(classes, args.label_smoothing)
        model_args = {"arch": args.arch, "num_outputs": len(classes), "dropout": args.dropout}
    model = build_model(**model_args).to(device)
    if start:
        source = load_checkpoint(start)
        fresh = transfer_weights(model, source, start, args.arch, classes, output_layer_names(model))
        log(f"initialised from {start} ({source.get('task')}, classes {source.get('classes')}); "
            f"own initialisation kept for: {', '.join(sorted(fresh)) or 'nothing'}")
    if ordinal and args.bias_init == "prior":
        with torch.no_grad():
            output_bias(model).copy_(losses.prior_bias(args.loss, train_data.targets, task.k))
    # channels_last: measured 41 vs 29 img/s for a CPU training step here (oneDNN
    # prefers NHWC), and the usual win on CUDA tensor cores
    channels_last = True
    model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, args)
    scheduler = make_scheduler(optimizer, args, steps_per_epoch(len(train_data), args, world))

    ctx = {"task_name": name, "task": task, "classes": classes, "device": device, "preset": preset, "rank": rank,
           "world": world, "workers": workers if mode == "stream" else 0, "model_args": model_args,
           "num_outputs": model_args["num_outputs"], "channels_last": channels_last, "stopper": Stopper(),
           "aug_gen": torch.Generator().manual_seed(args.seed * 7919 + rank),
           "best": {"value": None, "metric": task.select_metric, "epoch": 0},
           "ema": WeightAverage(model, args.ema_epochs, steps_per_epoch(len(train_data), args, world))
           if args.ema_epochs > 0 else None}
    state = {"epoch": 0, "next_batch": 0, "running": None, "iter_losses": []}
    history: list[dict] = []

    if args.resume and not args.test_only:
        path = latest_checkpoint(out) if args.resume == "last" else Path(args.resume)
        ckpt = load_checkpoint(path)
        expect(ckpt, path, task=name, arch=args.arch, classes=classes)
        model.load_state_dict(ckpt.get("train_state", ckpt["model_state"]))
        if ctx["ema"] is not None:
            ctx["ema"].module.load_state_dict(ckpt["model_state"])
            ctx["ema"].steps = int(ckpt.get("ema_steps", 0))
        try:
            optimizer.load_state_dict(ckpt["optimizer_state"])
        except ValueError as e:  # another optimizer or parameter grouping than the run had
            ran = {k: ckpt["args"].get(k) for k in ("optimizer", "feature_lr_scale")}
            raise CheckpointError(f"{path}: its optimizer state does not fit this run's ({e}); resume with the "
                                  f"run's own optimizer flags: {ran}") from None
        scheduler.load_state_dict(ckpt["scheduler_state"])
        state.update(ckpt["progress"])
        state["iter_losses"] = list(ckpt["iter_losses"])
        history = list(ckpt["history"])
        ctx["best"] = dict(ckpt["best"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        ctx["aug_gen"].set_state(ckpt["rng"]["aug"])
        log(f"resumed from {path}: epoch {state['epoch'] + 1}, batch {state['next_batch']}")

    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    if not args.test_only:
        train_loop(model, optimizer, scheduler, train_data, val_data, state, history, ctx, args, out, log)

    # ---- final: the chosen model, once, on test ----
    if world > 1:
        dist.barrier()  # rank 0 has finished writing model_best.tar
    best_path = Path(args.resume) if (args.test_only and args.resume and args.resume != "last") else out / "model_best.tar"
    ckpt = load_checkpoint(best_path)
    expect(ckpt, best_path, task=name, classes=classes)
    (model.module if hasattr(model, "module") else model).load_state_dict(ckpt["model_state"])
    rows: list = []
    result = evaluate(model, test_data, args, ctx, rows=rows if ordinal else None)
    summary = {"task": name, "checkpoint": str(best_path), "epoch": ckpt["epoch"],
               "val": ckpt["best"], "test": {k: v for k, v in result.items() if k != "confusion"},
               "selected_on": "validation split" if held else "test split (--val-split 0)"}
    if not ordinal:
        summary.update(test_acc=result["acc"], test_n=result["n"], classes=classes, confusion=result["confusion"])
    if world > 1:  # per-image rows of the other shards
        gathered = [None] * world
        dist.all_gather_object(gathered, rows)
        rows = [r for part in gathered for r in part]
    if rank == 0:
        log(f"test: {task.describe(result)} on {result['n']} images with {best_path.name} "
            f"(epoch {ckpt['epoch']}, chosen on {summary['selected_on']})")
        if ordinal:
            write_test_predictions(rows, test_data, task, out)
        else:
            log(f"test: accuracy {result['acc']:.4f}")
            log("confusion matrix (rows true, columns predicted; " + ", ".join(classes) + "):")
            for cname, row in zip(classes, result["confusion"]):
                log(f"  {cname:>12}: " + " ".join(f"{v:5d}" for v in row))
            plots.plot_confusion(result["confusion"], classes, out / "confusion.png",
                                 f"{name} test: accuracy {result['acc']:.3f}")
        plots.write_json(summary, out / "test_results.json")
    if world > 1:
        dist.destroy_process_group()
    return summary


def write_test_predictions(rows: list, data, task, out: Path) -> None:
    """test_predictions.csv (file, true age, predicted age, rank probabilities) and test_scatter.png."""
    import csv
    import io
    rows = sorted(rows, key=lambda r: r[0])
    logits = torch.stack([r[1] for r in rows]) if rows else torch.zeros((0, 1))
    probs = losses.rank_probabilities(logits, task.loss_name) if rows else torch.zeros((0, task.k))
    pred = task.predict(logits) + task.min_age if rows else torch.zeros(0)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["file", "true_age", "predicted_age"] + [f"p_{task.min_age + j}" for j in range(task.k)])
    true_ages = []
    for (i, _), p, pr in zip(rows, pred.tolist(), probs.tolist()):
        true_age = int(data.targets[i]) + task.min_age
        true_ages.append(true_age)
        w.writerow([data.paths[i], true_age, round(p, 2)] + [f"{v:.5f}" for v in pr])
    from checkpointing import atomic_write_text
    atomic_write_text(out / "test_predictions.csv", buf.getvalue())
    if rows:
        plots.plot_scatter(true_ages, pred.tolist(), out / "test_scatter.png", "test: predicted against true age")


def latest_checkpoint(out: Path) -> Path:
    """checkpoint_last.tar, or (if a crash came before it was ever written) the
    highest-numbered checkpoint<N>.tar; the path to report when neither exists."""
    last = out / "checkpoint_last.tar"
    if last.is_file():
        return last
    numbered = [(int(p.stem[10:]), p) for p in out.glob("checkpoint*.tar") if p.stem[10:].isdigit()]
    return max(numbered)[1] if numbered else last


def make_optimizer(model, args):
    params = model.parameters()
    if args.feature_lr_scale != 1.0:
        # two groups: the conv layers at lr * scale, the rest (the fc layers) at lr;
        # StepLR and OneCycleLR scale each group from its own initial lr
        features = list(feature_extractor(model).parameters())
        ids = {id(p) for p in features}
        params = [{"params": features, "lr": args.lr * args.feature_lr_scale},
                  {"params": [p for p in model.parameters() if id(p) not in ids]}]
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    if args.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    return torch.optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay)


def make_scheduler(optimizer, args, steps: int):
    """One optimizer for the whole run (Adam keeps its moments), decayed by a scheduler:
    step (per epoch, the original's 0.9 every 5 epochs) or one-cycle (per iteration)."""
    if args.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                                   total_steps=max(1, steps * args.epochs),
                                                   pct_start=0.25)
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.lr_step, gamma=args.lr_gamma)


def train_loop(model, optimizer, scheduler, train_data, val_data, state, history, ctx, args, out, log):
    stopper = ctx["stopper"]
    stopper.install()
    rank, task = ctx["rank"], ctx["task"]
    metric = task.select_metric

    def save(path_names):
        if rank != 0:
            return None
        ckpt = make_checkpoint(model, optimizer, scheduler, state, history, ctx, args)
        atomic_torch_save(ckpt, *(out / fname for fname in path_names))
        return ckpt

    try:
        while state["epoch"] < args.epochs:
            e = state["epoch"]
            if state["next_batch"] == 0:
                # per-epoch reseed: dropout and augmentation draws depend only on (seed, epoch)
                torch.manual_seed(args.seed * 1_000_003 + e * 101 + ctx["rank"])
                ctx["aug_gen"].manual_seed(args.seed * 7919 + e * 31 + ctx["rank"])
            lr = optimizer.param_groups[-1]["lr"]
            stats = train_one_epoch(model, optimizer, scheduler, train_data, state, args, ctx)
            if args.schedule == "step":
                scheduler.step()
            epoch_no = e + 1
            record = {"epoch": epoch_no, "lr": lr, **stats}
            last = epoch_no == args.epochs
            is_best = False
            if epoch_no % args.eval_every == 0 or last:
                val = evaluate(ctx["ema"].module if ctx["ema"] else model, val_data, args, ctx)
                record.update({f"val_{k}": v for k, v in val.items() if k not in ("confusion", "n")})
                is_best = task.is_better(val[metric], ctx["best"]["value"], val["loss"], ctx["best"].get("loss"))
                if is_best:
                    ctx["best"] = {"value": val[metric], "metric": metric, "epoch": epoch_no, "loss": val["loss"]}
                train_desc = " ".join(f"{k[6:]} {v:.4f}" for k, v in stats.items()
                                      if k.startswith("train_") and k[6:] in ("loss", "acc", "mae"))
                log(f"epoch {epoch_no:3d}/{args.epochs}: train {train_desc} | val {task.describe(val)}"
                    f"{' (best)' if is_best else ''} | lr {lr:.2e} | {stats['images_per_s']:.0f} img/s")
            history.append(record)
            state.update(epoch=epoch_no, next_batch=0, running=None)
            # write order matters for kill -9: model_best before checkpoint_last (a resume
            # from an older last re-runs the epoch and rewrites the same best), and
            # checkpoint_last before checkpoint<N> (so last is never older than any N)
            names = ["model_best.tar"] if is_best else []
            if epoch_no % args.save_every == 0 or last:
                names += ["checkpoint_last.tar", f"checkpoint{epoch_no}.tar"]
            if names:
                ckpt = save(names)
                if ckpt is not None and (epoch_no % args.eval_every == 0 or last):
                    write_outputs(ckpt, out, ctx)
    except (StopRequested, KeyboardInterrupt):
        ckpt = save(["checkpoint_last.tar"])
        if ckpt is not None:
            write_outputs(ckpt, out, ctx)
        log(f"stopped by {stopper.signal or 'SIGINT'}: state saved to {out / 'checkpoint_last.tar'} "
            f"(epoch {state['epoch'] + 1}, batch {state['next_batch']}); continue with --resume")
        raise SystemExit(130)
    if rank == 0 and not (out / "model_best.tar").exists():
        raise CheckpointError("no model_best.tar was written (no evaluation ran)")


def cli(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        main(args)
    except (ds.DatasetError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
