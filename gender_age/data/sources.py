"""The data of a gender-and-age run (``--task age-gender``): several sources at once.

Each ``--source KIND=DIR`` gives its own labels; a label a source lacks is
MISSING, which masks that head's loss for the image (tasks.AgeGenderTask):

* ``utkface=DIR``: DIR/UTKFace/ names give age and gender. The test split is
  the CORAL paper's DIR/utk_test.csv (ages 21-60) and, so that every age is
  measured, a held-out share of the images in neither CORAL CSV (DIR/utk_train.csv,
  DIR/utk_test.csv; mostly ages under 21 and over 60): such an image is a test
  image when the first 8 bytes of the blake2b digest of its file name, read as a
  big-endian integer, modulo 100 are below HELD_OUT_PERCENT (20). The rule is
  deterministic and needs no seed; a missing utk_train.csv counts as empty.
  Every other UTKFace image, of any age, trains.
* ``gender=DIR``: an ImageFolder tree DIR/{train,test}/<gender>/ (female, male).
* ``age-groups=DIR``: an ImageFolder tree DIR/{train,test}/<group>/ whose
  folders are named as the --age-groups (young, old); the gender is unknown.
  A training image teaches the age head that its age lies in its group's range
  (losses.interval_loss). Its test figure is the group accuracy of the
  predicted age.

The ages in IMDB-WIKI names (``<id>_<birth>_<year>.jpg``) of these two trees are
read for their test images only, for the per-source test figures. They are not
trained on: the trees were picked by age (the shipped ones hold ages 15-29 and
45-59 only), and a network taught them learns that photos like theirs are never
35 or 8 (it answered 20-29 or 50-59 for nearly every FairFace face).

Targets are (gender, age rank, source index, age group index), MISSING where
unknown. Validation is a seeded stratified --val-split share of each source's
training images. No test image leaks into training: training images whose
bytes equal those of any test image (of any source) are dropped, and so are
near-copies of a test image (resized or saved again: leakage.near_copies, a
16 x 16 thumbnail correlation of at least 0.99); both are counted in the log.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import hashlib

from gender_age.data import age_groups, leakage
from gender_age.core.images import BadImageError, file_digest
from gender_age.data.samples import DatasetError, SampleSet, ages_from_csv, ages_from_names, parse_imdb_wiki_name, parse_utkface_gender, scan_image_folder, split_seed, stratified_split
from gender_age.data.samples import MISSING

KINDS = ("utkface", "gender", "age-groups")
DEFAULT_SOURCES = ("utkface=utkface", "gender=gender-data", "age-groups=age-data")
GENDERS = ["female", "male"]  # sorted, as ImageFolder sorts the original's gender folders
GENDER_NAMES = {"female": 0, "male": 1, "women": 0, "men": 1, "woman": 0, "man": 1, "f": 0, "m": 1}
UTKFACE_TEST_OFFSET = 21  # the CORAL CSVs store age - 21
DRY_RUN_PER_SOURCE = 128  # --dry-run: training images per source (a quarter of it for test)
HELD_OUT_PERCENT = 20  # of the UTKFace images in neither CORAL CSV: the all-ages test share


@dataclass
class Labelled:
    """One split of one source: paths with (gender, age, group) or MISSING, before ranks are set."""
    paths: list = field(default_factory=list)
    genders: list = field(default_factory=list)
    ages: list = field(default_factory=list)
    groups: list = field(default_factory=list)

    def add(self, path, gender=MISSING, age=MISSING, group=MISSING) -> None:
        self.paths.append(str(path))
        self.genders.append(gender)
        self.ages.append(age)
        self.groups.append(group)

    def thinned(self, n: int) -> "Labelled":
        """At most ``n`` of the images, evenly spread over the list (--dry-run)."""
        keep = range(len(self.paths)) if len(self.paths) <= n else \
            [i * len(self.paths) // n for i in range(n)]
        return Labelled(*([values[i] for i in keep] for values in (self.paths, self.genders, self.ages, self.groups)))


def parse_source(text: str) -> tuple[str, Path]:
    """'utkface=utkface' -> ("utkface", Path("utkface")); DatasetError naming the kinds."""
    kind, sep, folder = text.partition("=")
    if not sep or kind not in KINDS or not folder:
        raise DatasetError(f"--source {text!r}: write KIND=DIR with KIND one of {', '.join(KINDS)}")
    return kind, Path(folder)


def imdb_age(path) -> int:
    try:
        return parse_imdb_wiki_name(Path(path).name)
    except ValueError:
        return MISSING


def held_out(name: str) -> bool:
    """The all-ages test rule for a UTKFace image in neither CORAL CSV (see the module's docstring)."""
    digest = hashlib.blake2b(name.strip().encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < HELD_OUT_PERCENT


def csv_names(csv_path: Path, image_dir: Path) -> set:
    """The image names a CORAL CSV lists (empty when it does not exist)."""
    if not csv_path.is_file():
        return set()
    rows = ages_from_csv(csv_path, image_dir, "file", "age", UTKFACE_TEST_OFFSET)
    return {Path(p).name for p in rows.paths}


def utkface_splits(folder: Path) -> tuple[Labelled, Labelled, list]:
    """(train, test, problems): the CORAL test CSV plus the held-out share of the images in neither
    CORAL CSV for testing (every age), every other UTKFace image for training."""
    image_dir = folder / "UTKFace"
    everything = ages_from_names(image_dir, "utkface")
    test_rows = ages_from_csv(folder / "utk_test.csv", image_dir, "file", "age", UTKFACE_TEST_OFFSET)
    test_paths = {str(Path(p)) for p in test_rows.paths}
    listed = {Path(p).name for p in test_rows.paths} | csv_names(folder / "utk_train.csv", image_dir)
    train, test = Labelled(), Labelled()
    for path, age in zip(everything.paths, everything.ages):
        try:
            gender = GENDERS.index(parse_utkface_gender(Path(path).name))
        except ValueError:
            gender = MISSING  # three names lack the field: the image still teaches age
        name = Path(path).name
        to_test = str(Path(path)) in test_paths or (name not in listed and held_out(name))
        (test if to_test else train).add(path, gender, age)
    return train, test, everything.problems + test_rows.problems


def folder_splits(kind: str, folder: Path, groups: list[dict]) -> tuple[Labelled, Labelled, list]:
    """(train, test) of an ImageFolder tree of genders or of age groups."""
    train_set = scan_image_folder(folder / "train")
    test_set = scan_image_folder(folder / "test", classes=train_set.classes, split_name="test")
    if kind == "gender":
        unknown = [c for c in train_set.classes if c.lower() not in GENDER_NAMES]
        if unknown:
            raise DatasetError(f"--source gender={folder}: class folder(s) {', '.join(unknown)} are not genders "
                               f"(name them female and male)")
        to_label = {i: GENDER_NAMES[c.lower()] for i, c in enumerate(train_set.classes)}
    else:
        unknown = [c for c in train_set.classes if age_groups.index_of(groups, c) is None]
        if unknown:
            raise DatasetError(f"--source age-groups={folder}: class folder(s) {', '.join(unknown)} are not among "
                               f"the --age-groups ({age_groups.describe(groups)})")
        to_label = {i: age_groups.index_of(groups, c) for i, c in enumerate(train_set.classes)}
    out = []
    for samples in (train_set, test_set):
        part = Labelled()
        for path, target in zip(samples.paths, samples.targets):
            # the name's age is only measured against: trained on, the ages a folder was picked
            # from (15-29 and 45-59 in age-data) would become the only ages such photos get
            age = imdb_age(path) if samples is test_set else MISSING
            if kind == "gender":
                part.add(path, gender=to_label[target], age=age)
            else:
                part.add(path, age=age, group=to_label[target])
        out.append(part)
    return out[0], out[1]


def to_samples(parts: list[Labelled], lo: int, hi: int, classes: list, name: str) -> SampleSet:
    """Labelled parts (one per source, in source order) -> one SampleSet of (gender, rank, source, group);
    ages outside lo-hi lose their age label (MISSING), not the image."""
    out = SampleSet([], [], classes, name)
    for source, part in enumerate(parts):
        for path, g, a, grp in zip(part.paths, part.genders, part.ages, part.groups):
            rank = a - lo if a != MISSING and lo <= a <= hi else MISSING
            out.paths.append(path)
            out.targets.append((g, rank, source, grp))
    return out


def drop_test_copies(train: SampleSet, test: SampleSet, log) -> SampleSet:
    """Training images whose bytes equal a test image's, and near-copies of a test image (resized or
    saved again: leakage.near_copies), are dropped; the log line gives both counts."""
    def digest(p):
        try:
            return file_digest(p)
        except BadImageError:
            return None  # unreadable: the decoder reports it later
    test_digests = {digest(p) for p in test.paths} - {None}
    keep = [i for i, p in enumerate(train.paths) if digest(p) not in test_digests]
    near = set(leakage.near_copies([train.paths[i] for i in keep], test.paths))
    kept = [i for j, i in enumerate(keep) if j not in near]
    log(f"sources: dropped {len(train) - len(keep)} training image(s) whose content equals a test image's "
        f"and {len(near)} near-copies of a test image (thumbnail correlation >= {leakage.THRESHOLD})")
    return train.subset(kept)


def stratum(target: tuple) -> tuple:
    """What the validation split keeps in proportion within a source: gender, group and age decade."""
    g, rank, source, grp = target
    return source, g, grp, rank // 10 if rank != MISSING else MISSING


def select(args, log=print, test_only: bool = False):
    """-> (train, val or None, test, classes, label_names, problems) of an age-gender run.
    ``test_only`` (evaluating a checkpoint, whose age range args carry): no training split."""
    groups = age_groups.parse(args.age_groups)
    specs = [parse_source(s) for s in (args.source or DEFAULT_SOURCES)]
    kinds = [k for k, _ in specs]
    if len(set(kinds)) != len(kinds):
        raise DatasetError(f"--source: each kind once ({', '.join(kinds)})")
    trains, tests, problems = [], [], []
    for kind, folder in specs:
        train, test, bad = utkface_splits(folder) if kind == "utkface" else (*folder_splits(kind, folder, groups), [])
        trains.append(train)
        tests.append(test)
        problems += bad
    ages = [a for part in trains for a in part.ages if a != MISSING] or \
        [a for a in (args.min_age, args.max_age) if a is not None]
    if not ages:
        raise DatasetError("no training image of these sources has an age: add --source utkface=DIR, "
                           "or give --min-age and --max-age")
    lo = args.min_age if args.min_age is not None else min(ages)
    hi = args.max_age if args.max_age is not None else max(ages)
    if hi <= lo:
        raise DatasetError(f"age range {lo}-{hi} is empty: check --min-age/--max-age")
    for g in age_groups.outside(groups, lo, hi):
        log(f"warning: age group {g['name']}={g['min']}-{g['max']} lies outside the trained ages {lo}-{hi}: "
            f"no face will be put in it")
    classes = [str(a) for a in range(lo, hi + 1)]
    if getattr(args, "dry_run", False):  # a few images of each source, before any is hashed or decoded
        trains = [part.thinned(DRY_RUN_PER_SOURCE) for part in trains]
        tests = [part.thinned(DRY_RUN_PER_SOURCE // 4) for part in tests]
    names = {"genders": list(GENDERS), "sources": [{"kind": k, "dir": str(f)} for k, f in specs],
             "age_groups": groups}
    test = to_samples(tests, lo, hi, classes, "test")
    if test_only:
        return SampleSet([], [], classes), None, test, classes, names, problems
    train_all = drop_test_copies(to_samples(trains, lo, hi, classes, "train"),
                                 test, log)
    keys = {key: i for i, key in enumerate(sorted(set(map(stratum, train_all.targets))))}
    keep, held = stratified_split([keys[stratum(t)] for t in train_all.targets], args.val_split, split_seed(args))
    val = train_all.subset(held) if held else None
    return train_all.subset(keep), val, test, classes, names, problems
