"""Labelled samples: which files, with which labels, in which split.

Nothing here decodes pixels. Labels come from ImageFolder class folders,
UTKFace and IMDB-WIKI file names, or CSV files of paths and ages; problems
with single files or rows are collected (to be reported), never raised.
"""
from __future__ import annotations

import csv
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from gender_age.core.images import IMG_EXTENSIONS, DatasetError, is_hidden, list_images  # noqa: F401 (DatasetError: re-exported)

AGE_RANGE = (0, 130)  # ages outside it are labelling errors, in names and CSV files alike


@dataclass
class SampleSet:
    """A list of (path, target) with the class names the targets index."""
    paths: list
    targets: list
    classes: list
    root: str = ""
    skipped: list = field(default_factory=list)  # (path, reason) found while scanning

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int]) -> "SampleSet":
        return SampleSet([self.paths[i] for i in indices], [self.targets[i] for i in indices],
                         self.classes, self.root)


def scan_image_folder(root: str | os.PathLike, classes: Sequence[str] | None = None,
                      split_name: str = "train") -> SampleSet:
    """An ImageFolder tree (root/<class>/**/image) -> SampleSet.

    classes: the class names to expect (a test split must use the training
    classes); by default the sorted non-hidden sub-folders. Raises
    DatasetError, with the fix, for a missing folder, fewer than 2 classes or
    an empty class folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{split_name} folder {root} not found: create it with one sub-folder per class "
                           f"(for example {root}/female/*.jpg and {root}/male/*.jpg)")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not is_hidden(d.name))
    if classes is None:
        classes = found
        if len(classes) < 2:
            raise DatasetError(f"{split_name} folder {root} has {len(classes)} class folder(s) "
                               f"({', '.join(classes) or 'none'}); a classifier needs at least 2: "
                               f"add one sub-folder of images per class")
    else:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise DatasetError(f"{split_name} folder {root} has class folder(s) {', '.join(extra)} that the "
                               f"training classes ({', '.join(classes)}) lack: rename or remove them")
    paths, targets = [], []
    for idx, name in enumerate(classes):
        files = list_images(root / name) if (root / name).is_dir() else []
        if not files:
            raise DatasetError(f"class folder {root / name} has no images: add images "
                               f"({', '.join(IMG_EXTENSIONS[:4])}, ...) or remove the folder")
        paths += [str(p) for p in files]
        targets += [idx] * len(files)
    return SampleSet(paths, targets, list(classes), str(root))


def split_seed(args) -> int:
    """The seed of a run's data splits: --split-seed, or --seed when it is not given (older checkpoints)."""
    return args.seed if getattr(args, "split_seed", None) is None else args.split_seed


def stratified_split(targets: Sequence[int], fraction: float, seed: int, ordered: bool = False,
                     flag: str = "--val-split") -> tuple[list, list]:
    """Seeded stratified split -> (keep, held_out) index lists, both sorted.

    Classes (``ordered`` False): each class gives round(fraction * n) of its n
    samples (at least one when fraction > 0 and n >= 2) to the held-out part.
    Ordered targets (ages): neighbouring values are pooled into bins of at
    least 1 / fraction samples, and round(fraction * N) samples in all are held
    out, shared over the bins in proportion (largest remainders first), so
    that many sparse ages do not inflate the held-out share.
    """
    if not 0 <= fraction < 1:
        raise DatasetError(f"{flag} must be in [0, 1), got {fraction}")
    rng = random.Random(seed)
    by_target: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_target.setdefault(t, []).append(i)
    strata = [by_target[t] for t in sorted(by_target)]
    if ordered:
        strata = pooled(strata, math.ceil(1 / fraction) if fraction > 0 else 1)
    for idx in strata:
        rng.shuffle(idx)
    sizes = [len(idx) for idx in strata]
    counts = proportional_counts(sizes, fraction) if ordered else \
        [min(max(round(fraction * n), 1), n - 1) if fraction > 0 and n >= 2 else 0 for n in sizes]
    keep, held = [], []
    for idx, k in zip(strata, counts):
        held += idx[:k]
        keep += idx[k:]
    return sorted(keep), sorted(held)


def pooled(strata: list[list[int]], least: int) -> list[list[int]]:
    """Neighbouring strata merged (in order) into bins of at least ``least`` members."""
    bins: list[list[int]] = []
    for idx in strata:
        if bins and len(bins[-1]) < least:
            bins[-1] = bins[-1] + idx
        else:
            bins.append(list(idx))
    if len(bins) > 1 and len(bins[-1]) < least:
        last = bins.pop()
        bins[-1] += last
    return bins


def proportional_counts(sizes: list[int], fraction: float) -> list[int]:
    """round(fraction * total) shared over bins in proportion to their sizes
    (largest remainders first), each bin keeping at least one member."""
    n = sum(sizes)
    total = max(round(fraction * n), 1) if fraction > 0 and n >= 2 else 0
    quotas = [fraction * size for size in sizes]
    counts = [min(int(q), max(size - 1, 0)) for q, size in zip(quotas, sizes)]
    for j in sorted(range(len(sizes)), key=lambda j: quotas[j] - int(quotas[j]), reverse=True) * 2:
        if sum(counts) >= total:
            break
        if counts[j] < sizes[j] - 1:
            counts[j] += 1
    return counts


# --------------------------------------------------------------------------
# Exact age: labels from file names (UTKFace, IMDB-WIKI) or from CSV files
# --------------------------------------------------------------------------

@dataclass
class AgeSamples:
    """Image paths with their exact ages, and the rows that could not be used."""
    paths: list
    ages: list
    problems: list = field(default_factory=list)  # (where, reason)


def check_age(age: int, where: str = "") -> None:
    """ValueError when ``age`` is outside AGE_RANGE."""
    if not AGE_RANGE[0] <= age <= AGE_RANGE[1]:
        raise ValueError(f"age {age} out of range {AGE_RANGE[0]}-{AGE_RANGE[1]}" + (f" in {where!r}" if where else ""))


def parse_utkface_name(name: str) -> int:
    """'29_1_3_20170104235317706.jpg.chip.jpg' -> 29.

    Copes with the set's quirks: three names lack the gender or race field
    ('39_1_20170116174525125.jpg.chip.jpg'), one has a space before the
    extension. Only the leading age field is needed. Raises ValueError.
    """
    head = name.strip().split("_", 1)[0]
    if not head.isdigit():
        raise ValueError(f"no leading age in {name!r}")
    age = int(head)
    check_age(age, name)
    return age


def parse_imdb_wiki_name(name: str) -> int:
    """'113158_1957-10-25_2007.jpg' -> 49: photo year - birth year, minus one
    when the birthday falls in the second half of the year (IMDB-WIKI takes
    the photo as taken mid-year). Raises ValueError."""
    stem = name.rsplit(".", 1)[0]
    parts = stem.split("_")
    if len(parts) < 3:
        raise ValueError(f"not an IMDB-WIKI name <id>_<YYYY-MM-DD>_<year>: {name!r}")
    birth, year = parts[-2], parts[-1]
    try:
        fields = birth.split("-")  # IMDB writes 1955-1-12 as often as 1955-01-12
        by, bm = int(fields[0]), int(fields[1])
        age = int(year) - by - (1 if bm >= 7 else 0)
    except ValueError:
        raise ValueError(f"bad birth date or year in {name!r}") from None
    check_age(age, name)
    return age


NAME_PARSERS = {"utkface": parse_utkface_name, "imdb-wiki": parse_imdb_wiki_name}


UTKFACE_GENDERS = ("male", "female")  # the second name field: 0 male, 1 female


def parse_utkface_gender(name: str) -> str:
    """'29_1_3_20170104235317706.jpg.chip.jpg' -> 'female'.

    The three UTKFace names with only three fields ('39_1_20170116174525125...')
    lack the gender or the race field, and which one is unknown: ValueError.
    """
    fields = name.strip().split("_")
    if len(fields) < 4 or fields[1] not in ("0", "1"):
        raise ValueError(f"no gender field in {name!r}")
    return UTKFACE_GENDERS[int(fields[1])]


def genders_from_utkface(root: str | os.PathLike, min_age: int | None = None,
                         max_age: int | None = None) -> SampleSet:
    """Every UTKFace image under ``root`` with its gender (classes female, male,
    sorted as ImageFolder sorts folders), optionally only ages min_age-max_age.
    Names without a gender or an age are kept in ``skipped``."""
    ages = ages_from_names(root, "utkface")
    classes = sorted(UTKFACE_GENDERS)
    out = SampleSet([], [], classes, str(root), list(ages.problems))
    for path, age in zip(ages.paths, ages.ages):
        if (min_age is not None and age < min_age) or (max_age is not None and age > max_age):
            continue
        try:
            gender = parse_utkface_gender(Path(path).name)
        except ValueError as e:
            out.skipped.append((path, str(e)))
            continue
        out.paths.append(path)
        out.targets.append(classes.index(gender))
    if len(set(out.targets)) < 2:
        raise DatasetError(f"fewer than two genders among the UTKFace images under {root}"
                           + (f" aged {min_age}-{max_age}" if min_age is not None or max_age is not None else ""))
    return out


def ages_from_names(root: str | os.PathLike, parser: str) -> AgeSamples:
    """Every image under ``root`` (any depth) labelled by its file name."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} not found: pass --data-dir")
    out = AgeSamples([], [])
    for p in list_images(root):
        try:
            out.ages.append(NAME_PARSERS[parser](p.name))
            out.paths.append(str(p))
        except ValueError as e:
            out.problems.append((str(p), str(e)))
    if not out.paths:
        raise DatasetError(f"no image under {root} has a {parser} age in its name")
    return out


def ages_from_csv(csv_path: str | os.PathLike, image_dir: str | os.PathLike, path_column: str = "file",
                  age_column: str = "age", age_offset: int = 0) -> AgeSamples:
    """A CSV with one column of image paths (relative to image_dir) and one of ages.

    age_offset is added to the age column: the CORAL paper's CSVs store the rank
    (age minus the data set's youngest age: UTKFace 21, CACD 14, AFAD 15,
    MORPH-2 16). Missing files, ages outside AGE_RANGE, paths that leave
    image_dir (absolute, or through '..') and other bad rows are reported, not
    fatal. A UTF-8 byte-order mark is accepted.
    """
    csv_path, image_dir = Path(csv_path), Path(image_dir)
    if not csv_path.is_file():
        raise DatasetError(f"CSV file {csv_path} not found")
    out = AgeSamples([], [])
    with open(csv_path, newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        if path_column not in cols or age_column not in cols:
            raise DatasetError(f"{csv_path} needs columns '{path_column}' and '{age_column}' (has {cols}): "
                               f"set --path-column / --age-column")
        for line, row in enumerate(reader, start=2):
            name, age = (row.get(path_column) or "").strip(), (row.get(age_column) or "").strip()
            try:
                path, value = csv_row(name, age, image_dir, age_offset)
            except ValueError as e:
                out.problems.append((f"{csv_path.name}:{line}", str(e)))
                continue
            out.paths.append(str(path))
            out.ages.append(value)
    if not out.paths:
        raise DatasetError(f"{csv_path} has no usable rows (first problem: "
                           f"{out.problems[0][1] if out.problems else 'empty file'})")
    return out


def csv_row(name: str, age: str, image_dir: Path, age_offset: int) -> tuple[Path, int]:
    """One row of an age CSV -> (image path, age), or ValueError saying what is wrong."""
    try:
        value = float(age)
    except ValueError:
        raise ValueError(f"bad age {age!r}") from None
    if not value.is_integer():
        raise ValueError(f"bad age {age!r}")
    value = int(value) + age_offset
    check_age(value)
    if not name:
        raise ValueError("no image path")
    if os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == os.pardir:
        raise ValueError(f"image path {name!r} leaves the image folder {image_dir}: "
                         f"give paths relative to --image-dir")
    path = image_dir / name
    if not path.is_file():
        raise ValueError(f"missing image {path}")
    return path, value


def to_ranks(samples: AgeSamples, min_age: int, max_age: int, name: str) -> SampleSet:
    """Exact ages -> ranks (age - min_age) in a SampleSet; ages outside
    [min_age, max_age] are dropped and reported."""
    keep = [i for i, a in enumerate(samples.ages) if min_age <= a <= max_age]
    dropped = [(samples.paths[i], f"age {samples.ages[i]} outside {min_age}-{max_age}")
               for i in range(len(samples.paths)) if not min_age <= samples.ages[i] <= max_age]
    out = SampleSet([samples.paths[i] for i in keep], [samples.ages[i] - min_age for i in keep],
                    [str(a) for a in range(min_age, max_age + 1)], name)
    out.skipped = list(samples.problems) + dropped
    return out


TASK_DATA = {"gender": "gender-data", "age": "age-data"}  # default --data-dir per task


MISSING = -1  # a label an image does not have (its source names no gender, or no age)

