"""sources.py by known values: --source parsing, the all-ages hold-out rule, the tree checks
and their messages, ranks at the ends of the range, the validation strata, every field select()
returns, --min-age/--max-age and --dry-run."""
from __future__ import annotations

import csv
import hashlib
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from gender_age.data import age_groups, sources
from gender_age.data.samples import MISSING, DatasetError
from helpers import make_sources, source_args


def refused(message: str):
    return pytest.raises(DatasetError, match="^" + re.escape(message) + "$")


def test_parse_source():
    assert sources.parse_source("utkface=a=b") == ("utkface", Path("a=b"))  # the first = splits
    assert sources.parse_source("age-groups=x/y") == ("age-groups", Path("x/y"))
    for bad in ("faces=x", "gender=", "utkface", "=x"):
        with refused(f"--source {bad!r}: write KIND=DIR with KIND one of utkface, gender, age-groups"):
            sources.parse_source(bad)


def documented_rule(name: str) -> bool:
    """The module docstring's rule, written out from its words."""
    first8 = hashlib.blake2b(name.strip().encode()).digest()[:8]
    return sum(b << (8 * (7 - i)) for i, b in enumerate(first8)) % 100 < 20


def test_held_out_follows_the_documented_rule_at_its_boundary():
    names = [f"{a}_0_0_2017{i:06d}.jpg.chip.jpg" for i, a in enumerate(range(1, 2000))]
    assert [sources.held_out(n) for n in names] == [documented_rule(n) for n in names]
    value = lambda n: int.from_bytes(hashlib.blake2b(n.encode()).digest()[:8], "big") % 100
    assert any(value(n) == 20 for n in names) and any(value(n) == 19 for n in names)  # both sides of the edge


def test_stratum():
    assert sources.stratum((1, 25, 0, MISSING)) == (0, 1, MISSING, 2)
    assert sources.stratum((0, 9, 2, 1)) == (2, 0, 1, 0) and sources.stratum((0, 10, 2, 1)) == (2, 0, 1, 1)
    assert sources.stratum((MISSING, MISSING, 1, 0)) == (1, MISSING, 0, MISSING)


def test_thinned_spreads_over_the_list():
    part = sources.Labelled()
    for i in range(10):
        part.add(f"p{i}", gender=i % 2, age=20 + i, group=MISSING)
    t = part.thinned(4)
    assert t.paths == ["p0", "p2", "p5", "p7"] and t.ages == [20, 22, 25, 27] and t.genders == [0, 0, 1, 1]
    assert part.thinned(10).paths == part.paths and part.thinned(20).groups == part.groups


def test_tree_messages(tmp_path):
    d = make_sources(tmp_path)
    for split in ("train", "test"):
        for c in ("boys", "girls"):
            shutil.copytree(d["g"] / split / "male", d["a"] / split / c)
    with refused(f"--source gender={d['a']}: class folder(s) boys, girls, old, young are not genders (name them "
                 f"female and male)"):
        sources.select(source_args(d, source=[f"gender={d['a']}"]))
    with refused(f"--source age-groups={d['a']}: class folder(s) boys, girls are not among the --age-groups "
                 f"(young 0-38, old 39-130)"):
        sources.select(source_args(d, source=[f"age-groups={d['a']}"]))
    with refused("--source: each kind once (gender, utkface, gender)"):
        sources.select(source_args(d, source=[f"gender={d['g']}", f"utkface={d['utk']}", f"gender={d['g']}"]))


def test_a_test_tree_is_read_with_the_training_classes(tmp_path):
    d = make_sources(tmp_path)
    shutil.copytree(d["g"] / "test" / "male", d["g"] / "test" / "other")
    with refused(f"test folder {d['g'] / 'test'} has class folder(s) other that the training classes (female, "
                 f"male) lack: rename or remove them"):
        sources.select(source_args(d, source=[f"gender={d['g']}"]))
    shutil.rmtree(d["g"] / "test" / "other")
    shutil.rmtree(d["g"] / "train")
    with refused(f"train folder {d['g'] / 'train'} not found: create it with one sub-folder per class (for "
                 f"example {d['g'] / 'train'}/female/*.jpg and {d['g'] / 'train'}/male/*.jpg)"):
        sources.select(source_args(d, source=[f"gender={d['g']}"]))


def test_every_field_select_returns(tmp_path):
    d = make_sources(tmp_path)
    train, val, test, classes, names, problems = sources.select(source_args(d), log=lambda _: None)
    assert classes == [str(a) for a in range(5, 71)]
    assert train.classes == val.classes == test.classes == classes
    assert (train.root, val.root, test.root) == ("train", "train", "test")
    assert names == {"genders": ["female", "male"], "age_groups": [{"name": "young", "min": 0, "max": 38},
                                                                   {"name": "old", "min": 39, "max": 130}],
                     "sources": [{"kind": "utkface", "dir": str(d["utk"])}, {"kind": "gender", "dir": str(d["g"])},
                                 {"kind": "age-groups", "dir": str(d["a"])}]}
    assert problems == []  # an age-group image with no age in its name trains on its group
    no_val = sources.select(source_args(d, val_split=0), log=lambda _: None)
    assert no_val[1] is None and len(no_val[0]) == len(train) + len(val)


def test_problems_of_every_source_are_kept(tmp_path):
    d = make_sources(tmp_path)
    (d["utk"] / "UTKFace" / "noage.jpg").write_bytes(b"x")  # a UTKFace name without an age
    problems = sources.select(source_args(d), log=lambda _: None)[5]
    assert [Path(p).name for p, _ in problems] == ["noage.jpg"]


def test_test_only_has_no_training_split(tmp_path):
    d = make_sources(tmp_path)
    train, val, test, classes, _, _ = sources.select(source_args(d, min_age=5, max_age=70), test_only=True)
    assert (train.paths, train.targets, train.classes, val) == ([], [], classes, None) and len(test) > 0


def test_the_age_range(tmp_path):
    d = make_sources(tmp_path)
    said = []
    train, val, test, classes, *_ = sources.select(source_args(d, min_age=30, max_age=55, val_split=0), log=said.append)
    assert classes[0] == "30" and classes[-1] == "55"
    utk = [(int(Path(p).name.split("_")[0]), t[1]) for p, t in zip(train.paths, train.targets) if t[2] == 0]
    assert {a for a, _ in utk} >= {30, 55, 5, 70}
    assert all(rank == (a - 30 if 30 <= a <= 55 else MISSING) for a, rank in utk)  # both ends keep their rank
    with refused("age range 30-30 is empty: check --min-age/--max-age"):
        sources.select(source_args(d, min_age=30, max_age=30))
    said.clear()
    sources.select(source_args(d, min_age=40, max_age=90, age_groups="young=0-12,old=13-"), log=said.append)
    assert said[0] == "warning: age group young=0-12 lies outside the trained ages 40-90: no face will be put in it"


def test_sources_without_ages_need_the_range_flags(tmp_path):
    d = make_sources(tmp_path)  # IMDB-WIKI names, but the trees' ages are never trained on
    for only in (f"gender={d['g']}", f"age-groups={d['a']}"):
        with refused("no training image of these sources has an age: add --source utkface=DIR, or give --min-age "
                     "and --max-age"):
            sources.select(source_args(d, source=[only]))
    with refused("no training image of these sources has an age: add --source utkface=DIR, or give --min-age "
                 "and --max-age"):
        sources.select(source_args(d, source=[f"gender={d['g']}"]))
    classes = sources.select(source_args(d, source=[f"gender={d['g']}"], min_age=10, max_age=12), log=print)[3]
    assert classes == ["10", "11", "12"]


def test_dry_run_thins_each_source_before_hashing(tmp_path, monkeypatch):
    utk = tmp_path / "utk"
    (utk / "UTKFace").mkdir(parents=True)
    for i in range(60):
        (utk / "UTKFace" / f"{20 + i % 40}_{i % 2}_0_2017{i:06d}.jpg.chip.jpg").write_bytes(b"%d" % i)
    with open(utk / "utk_test.csv", "w", newline="") as f:
        csv.writer(f).writerows([["", "file", "age"]] + [[j, n.name, 0] for j, n in
                                                         enumerate(sorted((utk / "UTKFace").iterdir())[:24])])
    monkeypatch.setattr(sources, "DRY_RUN_PER_SOURCE", 12)
    seen = []
    monkeypatch.setattr(sources, "file_digest", lambda p: seen.append(p) or p)
    args = SimpleNamespace(source=[f"utkface={utk}"], age_groups=age_groups.DEFAULT, min_age=None, max_age=None,
                           val_split=0, seed=0, dry_run=True)
    train, _, test, *_ = sources.select(args, log=lambda _: None)
    assert len(train) == 12 and len(test) == 3 and len(seen) == 15
    del args.dry_run  # a caller without the flag: no thinning
    full = sources.select(args, log=lambda _: None)
    assert len(full[0]) + len(full[2]) == 60 and len(full[2]) > 24
