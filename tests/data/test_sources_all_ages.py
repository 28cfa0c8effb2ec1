"""The UTKFace test split of --task age-gender holds every age: the CORAL test CSV (21-60) plus a
deterministic held-out share of the images in neither CORAL CSV."""
from __future__ import annotations

import csv
from pathlib import Path

from gender_age.data import sources


def utkface_like(root: Path) -> Path:
    """A UTKFace folder of tiny files, ages 1-90 (the decoder is not needed to split), with CORAL CSVs
    listing the ages 21-60: the first of every five in utk_test.csv, the others in utk_train.csv."""
    image_dir = root / "UTKFace"
    image_dir.mkdir(parents=True)
    names = [f"{age}_{i % 2}_{i % 5}_2017011{i:06d}.jpg.chip.jpg" for i, age in
             enumerate(a for a in range(1, 91) for _ in range(4))]
    for i, name in enumerate(names):
        (image_dir / name).write_bytes(b"x%d" % i)
    coral = [n for n in names if 21 <= int(n.split("_")[0]) <= 60]
    for split, rows in (("test", coral[::5]), ("train", [n for i, n in enumerate(coral) if i % 5])):
        with open(root / f"utk_{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["", "file", "age"])
            w.writerows([j, n, int(n.split("_")[0]) - 21] for j, n in enumerate(rows))
    return root


def split_names(root: Path):
    train, test, problems = sources.utkface_splits(root)
    return [Path(p).name for p in train.paths], [Path(p).name for p in test.paths], train, test


def test_all_ages_test_split_is_deterministic_and_leak_free(tmp_path):
    root = utkface_like(tmp_path / "utk")
    train, test, train_part, test_part = split_names(root)
    assert split_names(root)[:2] == (train, test)                      # the same split every time
    assert not set(train) & set(test) and len(train) + len(test) == 360
    coral_test = {r["file"] for r in csv.DictReader(open(root / "utk_test.csv"))}
    coral_train = {r["file"] for r in csv.DictReader(open(root / "utk_train.csv"))}
    assert coral_test <= set(test) and not coral_train & set(test)    # the CORAL split is kept as it is
    extra = [n for n in test if n not in coral_test]
    ages = [int(n.split("_")[0]) for n in extra]
    assert min(ages) < 13 and max(ages) > 60                           # children and the elderly are measured
    assert all(a < 21 or a > 60 for a in ages)                        # only images in neither CSV
    outside = [n for n in train + test if n not in coral_test | coral_train]
    assert 0.1 < len(extra) / len(outside) < 0.3                      # about HELD_OUT_PERCENT of them
    assert extra == [n for n in outside if sources.held_out(n)]       # by the documented rule
    # the labels travel with the images
    by_name = dict(zip(test, zip(test_part.genders, test_part.ages)))
    assert all(by_name[n] == (1 - int(n.split("_")[1]), int(n.split("_")[0])) for n in test)


def test_the_rule_depends_on_the_name_only(tmp_path):
    names = [f"{a}_0_0_2017{a:04d}.jpg.chip.jpg" for a in range(1, 200)]
    picks = [sources.held_out(n) for n in names]
    assert picks == [sources.held_out(n) for n in names] and 0 < sum(picks) < len(names)
    assert sources.held_out("24_0_1_20170116220224657 .jpg.chip.jpg") == \
        sources.held_out("24_0_1_20170116220224657 .jpg.chip.jpg ")  # UTKFace's name with a space


def test_without_a_train_csv_every_unlisted_image_may_be_held_out(tmp_path):
    root = utkface_like(tmp_path / "utk")
    (root / "utk_train.csv").unlink()
    train, test, *_ = split_names(root)
    coral_test = {r["file"] for r in csv.DictReader(open(root / "utk_test.csv"))}
    extra_ages = {int(n.split("_")[0]) for n in test if n not in coral_test}
    assert any(21 <= a <= 60 for a in extra_ages) and not set(train) & set(test)
