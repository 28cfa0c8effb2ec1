"""FairFace-540 in bench_general.py: how the model does on other people, ages and photo styles.

FairFace-540 (Kärkkäinen and Joo, WACV 2021; 540 crops of its validation set, 9 age groups x 2
genders x 30 faces) is only evaluated on, never trained or tuned on. Its labels.csv gives
``file,age_group,gender``. Crops are wide, so some hold a second face: each file is scored by its
largest face (the peer's script picks the largest face too); a file where no face is found counts
as wrong. The figures: gender accuracy over all ages and over adults (the groups from 20-29 on),
and the accuracy of the 9 age groups, read off the predicted exact age rounded to the nearest
year (half up) and placed in FairFace's groups (GROUPS).
"""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

from gender_age.train.report import accuracy

# FairFace's age groups: (name, first age, last age)
GROUPS = (("0-2", 0, 2), ("3-9", 3, 9), ("10-19", 10, 19), ("20-29", 20, 29), ("30-39", 30, 39),
          ("40-49", 40, 49), ("50-59", 50, 59), ("60-69", 60, 69), ("70+", 70, math.inf))
ADULT_GROUPS = {name for name, lo, _ in GROUPS if lo >= 20}
GENDERS = ("female", "male")


class FairFaceError(Exception):
    """A missing or bad FairFace folder: one line, exit 2."""
    code = 2


class PredictFailed(FairFaceError):
    """predict.py failed on FairFace-540: one line, exit 1."""
    code = 1


def group_of(age: float | None) -> str | None:
    """A predicted exact age -> FairFace's age group (2.49 -> '0-2', 2.5 -> '3-9'); None -> None."""
    if age is None:
        return None
    year = max(0, math.floor(age + 0.5))
    return next(name for name, lo, hi in GROUPS if lo <= year <= hi)


def read_labels(folder: Path) -> list[dict]:
    """labels.csv of a FairFace-540 folder -> [{"file" (its path), "age_group", "gender"}]."""
    path = Path(folder) / "labels.csv"
    if not path.is_file():
        raise FairFaceError(f"{path} is missing: give --fairface DIR (the FairFace-540 folder) or --no-fairface")
    names = {g for g, _, _ in GROUPS}
    out = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            for r in csv.DictReader(f):
                if r["age_group"] not in names or r["gender"].lower() not in GENDERS:
                    raise FairFaceError(f"{path}: bad row {r}")
                out.append({"file": str(Path(folder) / r["file"]), "age_group": r["age_group"],
                            "gender": r["gender"].lower()})
    except (KeyError, OSError, UnicodeDecodeError) as e:
        raise FairFaceError(f"cannot read {path}: {e}") from None
    if not out:
        raise FairFaceError(f"{path} has no rows")
    return out


def score(labels: list[dict], preds: dict) -> dict:
    """The FairFace figures of predictions ``{file name: {"gender", "age"}}`` (a file absent, or with
    None, is a face not found: wrong)."""
    def pairs(rows, truth, pred):
        return [(r[truth], pred(preds.get(Path(r["file"]).name) or {})) for r in rows]
    gender, group = (lambda p: p.get("gender")), (lambda p: group_of(p.get("age")))
    adults = [r for r in labels if r["age_group"] in ADULT_GROUPS]
    return {"ff_gender": accuracy(pairs(labels, "gender", gender)),
            "ff_gender_adult": accuracy(pairs(adults, "gender", gender)),
            "ff_age_group": accuracy(pairs(labels, "age_group", group))}


def largest_faces(records: list[dict]) -> dict:
    """predict.py's JSON records -> {file name: {"gender", "age"}} of each file's largest face."""
    best = {}
    for r in records:
        box = r.get("box")
        if not box or r.get("gender") is None:
            continue
        area = (box[2] - box[0]) * (box[3] - box[1])
        name = Path(r["file"]).name
        if name not in best or area > best[name][0]:
            best[name] = (area, {"gender": r["gender"], "age": r.get("age")})
    return {f: v for f, (_, v) in best.items()}


def predict_ours(checkpoint: Path, files: list[str], tta: bool, root: Path) -> dict:
    """predict.py with the age-gender ``checkpoint`` on ``files``, faces detected: {file name: its largest face}."""
    cmd = [sys.executable, "predict.py", "--age-gender-checkpoint", str(checkpoint), "--detect", "on", "--json",
           *(["--tta"] if tta else []), *files]
    print(f"== ours on FairFace-540: {len(files)} images ...", flush=True)
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if done.returncode:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise PredictFailed(f"predict.py on FairFace-540 failed (exit {done.returncode}): {tail}")
    try:
        return largest_faces(json.loads(done.stdout or "[]"))
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise PredictFailed(f"cannot read predict.py's JSON on FairFace-540: {e}") from None
