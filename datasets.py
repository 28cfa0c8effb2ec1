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

import csv
import io
import os
import dataclasses
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from checkpointing import atomic_write_text
from images import BadImageError, decode_resized
from presets import EvalPreset
import sources
from runtime import all_gather_objects
from samples import (AgeSamples, DatasetError, SampleSet, ages_from_csv, ages_from_names, genders_from_utkface,
                     scan_image_folder, split_seed, stratified_split, to_ranks)

TASK_DATA = {"gender": "gender-data", "age": "age-data"}  # default --data-dir per task


# --------------------------------------------------------------------------
# Transforms on tensors (one place for train, eval and predict)
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Preset(EvalPreset):
    """``presets.EvalPreset`` on tensors, on any device, with the training transforms.
    Stored in checkpoints (``as_dict``)."""

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        # uint8 (N, 3, H, W) -> float (N, 3, H, W), standardised per channel
        mean = torch.tensor(self.mean, device=batch.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.std, device=batch.device).view(1, 3, 1, 1) * 255
        return (batch.float() - mean) / std

    @staticmethod
    def mirror(batch: torch.Tensor) -> torch.Tensor:
        return batch.flip(-1)

    @staticmethod
    def stack(views: list) -> torch.Tensor:
        return torch.stack(views)

    def train_batch(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """RandomCrop(crop) + RandomHorizontalFlip, per sample, on uint8 (N,3,R,R)."""
        n, _, h, w = batch.shape
        c = self.crop
        # offsets drawn on the CPU generator so a seeded run is reproducible on any device
        tops = torch.randint(0, h - c + 1, (n,), generator=generator).tolist()
        lefts = torch.randint(0, w - c + 1, (n,), generator=generator).tolist()
        flips = (torch.rand(n, generator=generator) < 0.5).tolist()
        out = torch.empty((n, 3, c, c), dtype=batch.dtype, device=batch.device)
        for i, (t, l, f) in enumerate(zip(tops, lefts, flips)):
            patch = batch[i, :, t:t + c, l:l + c]
            out[i] = patch.flip(-1) if f else patch
        return self.normalize(out)

    def train_batch_strong(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A stronger, still cheap, augmentation for small face sets, on uint8 (N,3,R,R).

        Geometry, per sample: a square of side 0.75-1.0 of the decoded square (the
        original's 227/256 = 0.89 lies inside) at a random place, resized to the
        crop (antialiased bilinear), mirrored half the time.
        Colour, per sample: brightness, contrast and saturation each scaled by
        0.7-1.3. The three are linear in RGB, so together with the normalisation
        they fold into one 3x3 channel map plus offset, applied in one pass
        (values are not clipped to [0, 255] first). Out: float (N, 3, crop, crop).
        """
        n, _, h, w = batch.shape
        c, dev = self.crop, batch.device
        r = torch.rand((n, 7), generator=generator)
        side = (min(h, w) * (0.75 + 0.25 * r[:, 0])).long().clamp(min=c // 2)
        tops = (r[:, 1] * (h - side + 1).float()).long().tolist()
        lefts = (r[:, 2] * (w - side + 1).float()).long().tolist()
        # float: antialiased bilinear has no uint8 kernel on CUDA
        out = torch.empty((n, 3, c, c), dtype=torch.float32, device=dev)
        for i, (t, l, s, f) in enumerate(zip(tops, lefts, side.tolist(), (r[:, 3] < 0.5).tolist())):
            patch = batch[i:i + 1, :, t:t + s, l:l + s].float()
            if s != c:
                patch = F.interpolate(patch, size=(c, c), mode="bilinear", antialias=True, align_corners=False)
            out[i] = patch[0].flip(-1) if f else patch[0]
        x = out.view(n, 3, c * c)                                                # (N, 3, HW), 0..255
        b, k, sat = ((0.7 + 0.6 * r[:, j]).to(dev) for j in (4, 5, 6))
        gray_w = torch.tensor([0.299, 0.587, 0.114], device=dev)
        m0 = x.mean(2) @ gray_w                                                  # (N,) mean grey level
        # saturation: M = s I + (1 - s) 1 w^T; brightness then contrast: k b M x + (1 - k) b m0
        eye = torch.eye(3, device=dev).expand(n, 3, 3)
        mix = sat.view(n, 1, 1) * eye + (1 - sat).view(n, 1, 1) * gray_w.view(1, 1, 3).expand(n, 3, 3)
        std = torch.tensor(self.std, device=dev) * 255
        mean = torch.tensor(self.mean, device=dev) * 255
        a = (k * b).view(n, 1, 1) * mix / std.view(1, 3, 1)                      # (N, 3, 3)
        offset = (((1 - k) * b * m0).view(n, 1) - mean.view(1, 3)) / std.view(1, 3)  # (N, 3)
        y = torch.baddbmm(offset.unsqueeze(2), a, x)                             # (N, 3, HW)
        return y.view(n, 3, c, c)


# --------------------------------------------------------------------------
# Decoding once, into memory (or streaming when memory is short)
# --------------------------------------------------------------------------

class _LoadFiles(Dataset):
    """path i -> (i, load(path) or None, error or None). Never raises on a bad image."""

    def __init__(self, paths: Sequence[str], load):
        self.paths, self.load = list(paths), load  # load: a picklable callable, path -> object

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            out = self.load(self.paths[i])
        except BadImageError as e:
            return i, None, str(e)
        # a tensor would travel to the main process as a shared-memory file descriptor, one per
        # image; tens of thousands of them exhaust the descriptors ("received 0 items of
        # ancdata"), so it travels as a numpy array, through the pipe
        return i, out.numpy() if isinstance(out, torch.Tensor) else out, None


def _keep_items(batch):
    return batch  # a list of (i, object|None, error|None): no stacking, bad items stay visible


def load_all(paths: Sequence[str], load, workers: int, progress: bool = False, desc: str = "decode"):
    """Apply ``load`` to every path in ``workers`` processes, in order.
    Yields (index, result|None, error|None); bad images never raise."""
    loader = DataLoader(_LoadFiles(paths, load), batch_size=16, num_workers=workers,
                        collate_fn=_keep_items, persistent_workers=False)
    if progress:
        from tqdm import tqdm
        loader = tqdm(loader, desc=desc, unit="batch", leave=False)
    for batch in loader:
        for i, out, err in batch:
            yield i, torch.from_numpy(out) if isinstance(out, np.ndarray) else out, err


def decode_all(paths: Sequence[str], size: int, workers: int, progress: bool = False, load=None):
    """Decode every path once to uint8 (3, size, size), in parallel (``load``: path -> that
    tensor, instead of ``decode_resized``; face_chips.py reads chips with it)."""
    yield from load_all(paths, load or partial(decode_resized, size=size), workers, progress)


def cache_bytes(n: int, size: int) -> int:
    return n * 3 * size * size


def available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def choose_cache_mode(mode: str, n_images: int, size: int, max_fraction: float = 0.5,
                      processes: int = 1) -> tuple[str, str]:
    """'memory' when the decoded images of all ``processes`` (each holds a copy)
    fit in half the free RAM, else 'stream'.

    Returns (mode, reason) so the caller can log why.
    """
    need = cache_bytes(n_images, size) * processes
    free = available_memory()
    if mode == "memory":
        return "memory", f"forced by --cache memory, {need / 2**20:.0f} MiB"
    if mode == "stream":
        return "stream", "forced by --cache stream"
    if need <= max_fraction * free:
        return "memory", f"{need / 2**20:.0f} MiB of decoded images fits in memory, {free / 2**30:.1f} GiB free"
    return "stream", (f"{need / 2**30:.1f} GiB of decoded images is over half the free memory, "
                      f"{free / 2**30:.1f} GiB: decoding in workers every epoch")


class CachedImages(Dataset):
    """Images decoded once to uint8 (N, 3, R, R), held in memory.

    Bad images are dropped at construction and listed in ``self.bad``.
    Indexing returns (uint8 (3,R,R), target).
    """

    def __init__(self, samples: SampleSet, size: int, workers: int = 0, progress: bool = False,
                 rank: int = 0, world: int = 1, load=None):
        # under torchrun each process decodes every world-th image, then all exchange them
        self.classes = samples.classes
        mine = list(range(rank, len(samples.paths), world))
        decoded, errors = {}, {}
        for j, img, err in decode_all([samples.paths[i] for i in mine], size, workers, progress, load):
            if img is None:
                errors[mine[j]] = err
            else:
                decoded[mine[j]] = img
        if world > 1:
            for their_decoded, their_errors in all_gather_objects((decoded, errors)):
                decoded.update(their_decoded)
                errors.update(their_errors)
        order = sorted(decoded)
        self.bad = [(samples.paths[i], errors[i]) for i in sorted(errors)]
        self.paths = [samples.paths[i] for i in order]
        self.targets = torch.tensor([samples.targets[i] for i in order], dtype=torch.long)
        self.images = torch.stack([decoded.pop(i) for i in order]) if order else \
            torch.empty((0, 3, size, size), dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.images[i], self.targets[i]


class StreamingImages(Dataset):
    """Decodes in DataLoader workers every epoch; for datasets bigger than RAM.

    A file that fails to decode mid-run (it passed the check before training)
    comes back as None and ``collate_skip_bad`` drops it, so an epoch never
    crashes on one bad file.
    """

    def __init__(self, samples: SampleSet, size: int, load=None):
        self.classes = samples.classes
        self.paths = list(samples.paths)
        self.targets = torch.tensor(samples.targets, dtype=torch.long)
        self.load = load or partial(decode_resized, size=size)
        self.bad: list = []

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return self.load(self.paths[i]), self.targets[i]
        except BadImageError:
            return None


def collate_skip_bad(batch):
    batch = [b for b in batch if b is not None]
    if not batch:
        return torch.empty((0, 3, 1, 1), dtype=torch.uint8), torch.empty((0,), dtype=torch.long)
    return torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])


def check_files(paths: Sequence[str], workers: int = 0) -> list:
    """Cheap pre-flight check for streaming mode: header and full decode of each file.

    Returns [(path, reason)] for the bad ones.
    """
    bad = []
    for i, img, err in decode_all(paths, 8, workers):
        if img is None:
            bad.append((paths[i], err))
    return bad


def drop_bad(samples: SampleSet, bad: Iterable) -> SampleSet:
    bad_paths = {p for p, _ in bad}
    keep = [i for i, p in enumerate(samples.paths) if p not in bad_paths]
    return samples.subset(keep)


def write_bad_list(bad: Sequence, path: str | os.PathLike) -> None:
    """The list of skipped images, as CSV (path, reason)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "reason"])
    writer.writerows(bad)
    atomic_write_text(path, buf.getvalue())


# --------------------------------------------------------------------------
# Which samples a run uses
# --------------------------------------------------------------------------

def limit_per_class(samples: SampleSet, n: int | None) -> SampleSet:
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
        raise DatasetError(f"{len(bad)} unreadable image(s), first {p}: {why} "
                              f"(fix or remove them, or drop --strict to skip them)")
    if len(bad) <= 5:
        listing = "; ".join(f"{p} ({why})" for p, why in bad)
    else:
        listing_file = out_dir / "skipped_images.csv"
        write_bad_list(bad, listing_file)
        listing = f"listed in {listing_file}"
    log(f"warning: skipped {len(bad)} unreadable image(s): {listing}")


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
        return Selection(list(found), train, val, test, problems, names)
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

def build_split(samples: SampleSet, preset: Preset, mode: str, workers: int, progress: bool,
                rank: int = 0, world: int = 1, load=None):
    """SampleSet -> (dataset, bad list): decoded into memory (the decoding shared
    by the processes of a torchrun), or streaming. ``load``: path -> uint8
    (3, R, R), instead of ``decode_resized`` (face chips)."""
    if mode == "memory":
        data = CachedImages(samples, preset.resize, workers, progress, rank, world, load)
        return data, data.bad
    bad = check_files(samples.paths, workers)
    data = StreamingImages(drop_bad(samples, bad), preset.resize, load)
    return data, bad


def iterate_batches(data, indices: list[int], batch_size: int, workers: int, pin: bool):
    """Yield (uint8 (B,3,R,R), targets (B,)) over ``indices`` in order."""
    if isinstance(data, CachedImages):
        # already decoded: slicing the big uint8 tensor is all the loading there is
        for s in range(0, len(indices), batch_size):
            idx = torch.tensor(indices[s:s + batch_size])
            x, y = data.images[idx], data.targets[idx]
            yield (x.pin_memory(), y) if pin else (x, y)
        return
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(data, indices), batch_size=batch_size, shuffle=False,
        num_workers=workers, collate_fn=collate_skip_bad, pin_memory=pin,
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
