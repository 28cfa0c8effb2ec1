"""Data: datasets, transforms, and which samples a run trains and tests on.

* ``Preset`` does all preprocessing after the one decode step
  (``images.decode_resized``), on tensors, batch-wise and on any device:
  random crop + horizontal flip for training, centre crop for evaluation,
  then normalisation. Resize(256) + CenterCrop(227) on a PIL image gives the
  same pixels as ``decode_resized`` + ``Preset.eval_batch``. Training and
  evaluation use it; prediction uses its numpy form, ``presets.EvalPreset``,
  whose crops it shares.
* ``CachedImages`` decodes every image once into memory; ``StreamingImages``
  decodes in workers every epoch when memory is short.
* ``select_samples`` picks a run's train/validation/test samples from its
  arguments (ImageFolder trees, UTKFace genders, exact-age sources);
  ``iterate_batches`` and ``epoch_order`` batch and shard them.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path
from gender_age.data import sources
from gender_age.data.samples import AgeSamples, DatasetError, SampleSet, ages_from_csv, ages_from_names, genders_from_utkface, scan_image_folder, split_seed, stratified_split, to_ranks
from gender_age.data.loading import CachedImages, StreamingImages, check_files, drop_bad
from gender_age.data.samples import TASK_DATA
from gender_age.data.transforms import Preset


# --------------------------------------------------------------------------
# Which samples a run uses
# --------------------------------------------------------------------------

def limit_per_class(samples: SampleSet, n: int | None, key=lambda target: target) -> SampleSet:
    """The first ``n`` samples of each class (``key`` of a target: its class)."""
    if not n:
        return samples
    seen: dict = {}
    keep = []
    for i, t in enumerate(samples.targets):
        k = key(t)
        if seen.get(k, 0) < n:
            seen[k] = seen.get(k, 0) + 1
            keep.append(i)
    return samples.subset(keep)


def source_gender_group(target: tuple) -> tuple:
    """age-gender's class for --max-per-class: the source, the gender and the age group (one of
    them is MISSING for most sources)."""
    gender, _, source, group = target
    return source, gender, group


# --dry-run: at most this many images per split, drawn before face chips, decoding and hashing
# (two batches of the largest recipe batch train, the checks run on the others)
DRY_RUN_IMAGES = {"train": 256, "val": 64, "test": 64}


def dry_run_subset(samples: SampleSet | None, n: int, seed: int) -> SampleSet | None:
    """A seeded random ``n`` of ``samples`` (in their order), so that every class likely stays."""
    if samples is None or len(samples) <= n:
        return samples
    keep = sorted(random.Random(seed).sample(range(len(samples)), n))
    return samples.subset(keep)


def cap_for_dry_run(sel: "Selection", args) -> "Selection":
    """The selection of a --dry-run: DRY_RUN_IMAGES per split."""
    if not getattr(args, "dry_run", False):
        return sel
    seed = split_seed(args)
    return dataclasses.replace(sel, train=dry_run_subset(sel.train, DRY_RUN_IMAGES["train"], seed),
                               val=dry_run_subset(sel.val, DRY_RUN_IMAGES["val"], seed),
                               test=dry_run_subset(sel.test, DRY_RUN_IMAGES["test"], seed))


def exact_age_samples(args, test_only: bool = False) -> tuple[SampleSet, SampleSet, list]:
    """(train, test, problems) for --task exact-age: ranks = age - min_age.
    ``test_only``: the training part is not read (empty) where it is a file or folder of its own."""
    nothing = AgeSamples([], [])
    if args.dataset == "imagefolder":
        raise DatasetError("exact age needs ages: --dataset utkface, csv or imdb-wiki "
                              "(class folders are for --task gender or age)")
    if args.dataset == "utkface":
        base = Path(args.data_dir or "utkface")
        image_dir = Path(args.image_dir or base / "UTKFace")
        train_csv = Path(args.train_csv or base / "utk_train.csv")
        test_csv = Path(args.test_csv or base / "utk_test.csv")
        offset = 21 if args.csv_age_offset is None else args.csv_age_offset
        if args.random_split is not None:
            parts = split_ages(ages_from_names(image_dir, "utkface"), args.random_split, split_seed(args))
        else:
            parts = (nothing if test_only else ages_from_csv(train_csv, image_dir, args.path_column,
                                                             args.age_column, offset),
                     ages_from_csv(test_csv, image_dir, args.path_column, args.age_column, offset))
    elif args.dataset == "csv":
        if not (args.train_csv and args.test_csv):
            raise DatasetError("--dataset csv needs --train-csv and --test-csv (and --image-dir)")
        image_dir = Path(args.image_dir or Path(args.train_csv).parent)
        offset = args.csv_age_offset or 0
        parts = tuple(nothing if test_only and c == args.train_csv and args.random_split is None
                      else ages_from_csv(c, image_dir, args.path_column, args.age_column, offset)
                      for c in (args.train_csv, args.test_csv))
        if args.random_split is not None:
            merged = AgeSamples(parts[0].paths + parts[1].paths, parts[0].ages + parts[1].ages,
                                   parts[0].problems + parts[1].problems)
            parts = split_ages(merged, args.random_split, split_seed(args))
    else:
        base = Path(args.data_dir or "age-data")
        if args.random_split is not None:
            parts = split_ages(ages_from_names(base, "imdb-wiki"), args.random_split, split_seed(args))
        else:
            parts = (nothing if test_only else ages_from_names(base / "train", "imdb-wiki"),
                     ages_from_names(base / "test", "imdb-wiki"))
    train, test = parts
    ages = train.ages + test.ages
    lo = args.min_age if args.min_age is not None else min(ages)
    hi = args.max_age if args.max_age is not None else max(ages)
    if hi <= lo:
        raise DatasetError(f"age range {lo}-{hi} is empty: check --min-age/--max-age")
    tr, te = to_ranks(train, lo, hi, "train"), to_ranks(test, lo, hi, "test")
    if (len(tr) < 2 and not test_only) or len(te) < 1:
        raise DatasetError(f"too few images in the age range {lo}-{hi} (train {len(tr)}, test {len(te)})")
    return tr, te, tr.skipped + te.skipped


def utkface_gender_samples(image_dir: Path, args) -> tuple[SampleSet, SampleSet, list]:
    """(train, test, problems) for --task gender --dataset utkface: genders from
    the file names (ages --min-age to --max-age), a seeded stratified test share."""
    everything = genders_from_utkface(image_dir, args.min_age, args.max_age)
    share = 0.1 if args.random_split is None else args.random_split
    if not 0 < share < 1:
        raise DatasetError(f"--random-split must be between 0 and 1 for a test share, got {share}")
    keep, test = stratified_split(everything.targets, share, split_seed(args))
    return everything.subset(keep), everything.subset(test), everything.skipped


def split_ages(samples: AgeSamples, fraction: float, seed: int) -> tuple[AgeSamples, AgeSamples]:
    """A seeded random split of one labelled set, stratified by age."""
    keep, held = stratified_split(samples.ages, fraction, seed, ordered=True, flag="--random-split")
    pick = lambda idx: AgeSamples([samples.paths[i] for i in idx], [samples.ages[i] for i in idx])
    train, test = pick(keep), pick(held)
    train.problems = samples.problems
    return train, test


@dataclass
class Selection:
    """A run's samples: train, validation (None: validate on test) and test."""
    classes: list
    train: SampleSet
    val: SampleSet | None
    test: SampleSet
    problems: list  # (where, reason) of files or rows without a usable label
    label_names: dict | None = None  # age-gender: genders, sources, age groups (sources.select)


def select_samples(args, task: str, classes: list | None = None) -> Selection:
    """The samples of a run (see all_samples), at most DRY_RUN_IMAGES per split with --dry-run."""
    return cap_for_dry_run(all_samples(args, task, classes), args)


def all_samples(args, task: str, classes: list | None = None) -> Selection:
    """The samples of a run, from its arguments: structure only (one-line
    DatasetErrors), nothing decoded. The validation split is a seeded,
    stratified --val-split share of the training samples.

    ``classes`` (a checkpoint's, for --test-only): only the test split is
    used, labelled with these classes; no training folder is needed."""
    if task == "age-gender":
        train, val, test, found, names, problems = sources.select(args, test_only=classes is not None)
        if classes is not None and list(found) != list(classes):
            raise DatasetError(f"the data's ages are {found[0]}-{found[-1]}, the checkpoint's {classes[0]}-"
                               f"{classes[-1]}: check --min-age/--max-age")
        n, key = getattr(args, "max_per_class", None), source_gender_group
        return Selection(list(found), limit_per_class(train, n, key), val and limit_per_class(val, n, key),
                         limit_per_class(test, n, key), problems, names)
    if classes is not None:
        return test_selection(args, task, classes)
    if task == "exact-age":
        train_all, test, problems = exact_age_samples(args)
    elif args.dataset == "utkface" and task == "gender":
        image_dir = Path(args.image_dir or Path(args.data_dir or "utkface") / "UTKFace")
        train_all, test, problems = utkface_gender_samples(image_dir, args)
    elif args.dataset != "imagefolder":
        raise DatasetError(f"--dataset {args.dataset} labels exact ages: use it with --task exact-age "
                           f"(the gender task also takes --dataset utkface)")
    else:
        data_dir = Path(args.data_dir or TASK_DATA[task])
        train_all = scan_image_folder(data_dir / "train", split_name="train")
        test = scan_image_folder(data_dir / "test", classes=train_all.classes, split_name="test")
        problems = []
    train_all = limit_per_class(train_all, args.max_per_class)
    test = limit_per_class(test, args.max_per_class)
    keep, held = stratified_split(train_all.targets, args.val_split, split_seed(args), ordered=task == "exact-age")
    return Selection(train_all.classes, train_all.subset(keep), train_all.subset(held) if held else None,
                     test, problems)


def validation_only(sel: Selection, classes: list, source) -> Selection:
    """``--eval-split val``: a run's validation split in the place of its test split, nothing to
    train on. ``classes``: the checkpoint's, which the training data must still give."""
    if sel.val is None:
        raise DatasetError(f"{source} was trained without a validation split (--val-split 0): evaluate its "
                           f"test split")
    if list(sel.classes) != list(classes):
        shown = (lambda c: f"{c[0]}-{c[-1]}" if len(c) > 4 else ", ".join(c))
        raise DatasetError(f"the training data's classes ({shown(list(sel.classes))}) are not {source}'s "
                           f"({shown(list(classes))}): its validation split cannot be drawn again")
    return dataclasses.replace(sel, train=sel.train.subset([]), val=None, test=sel.val)


def test_selection(args, task: str, classes: list) -> Selection:
    """Only the test split, labelled with a checkpoint's ``classes``."""
    if task == "exact-age":
        _, test, problems = exact_age_samples(args, test_only=True)
    elif args.dataset == "imagefolder":
        test = scan_image_folder(Path(args.data_dir or TASK_DATA[task]) / "test", classes=classes, split_name="test")
        problems = []
    else:
        selection = select_samples(args, task)
        test, problems = selection.test, selection.problems
    if list(test.classes) != list(classes):
        raise DatasetError(f"the test data has classes {test.classes}, the checkpoint {list(classes)}: "
                           f"check --data-dir or --min-age/--max-age")
    test = limit_per_class(test, args.max_per_class)
    return Selection(list(classes), SampleSet([], [], list(classes)), None, test, problems)


# --------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------

def build_split(samples: SampleSet, preset: Preset, mode: str, workers: int, progress,
                rank: int = 0, world: int = 1, load=None):
    """SampleSet -> (dataset, bad list): decoded into memory (the decoding shared
    by the processes of a torchrun), or streaming. ``load``: path -> uint8
    (3, R, R), instead of ``decode_resized`` (face chips)."""
    if mode == "memory":
        data = CachedImages(samples, preset.resize, workers, progress, rank, world, load)
        return data, data.bad
    bad = check_files(samples.paths, workers, progress)
    data = StreamingImages(drop_bad(samples, bad), preset.resize, load)
    return data, bad
