"""The final test of a gender-and-age model, per data source.

Each source reports what its labels allow: gender accuracy where genders are
known (UTKFace, a gender tree), MAE/RMSE/CS@5 where ages are (UTKFace, IMDB-WIKI
names), and the accuracy of the age group read off the predicted age where the
source is a tree of age groups. test_predictions.csv holds one row per image.

UTKFace's figures are also broken down by group (``groups`` in its figures, so in
test_results.json and val_results.json): gender accuracy and age MAE (each with
its n) per race (the name's third field: 0 White, 1 Black, 2 Asian, 3 Indian,
4 Others) and per race x true gender x true age band (data/strata.AGE_BANDS). An image whose
name has no race field (three UTKFace names) counts in no group.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import torch

from gender_age.data import age_groups
from gender_age.core.checkpointing import atomic_write_text
from gender_age.data.samples import MISSING
from gender_age.data.strata import RACES, age_band, utkface_race  # noqa: F401 (re-exported)

COLUMNS = ["file", "source", "true_gender", "gender", "p_gender", "true_age", "age", "true_group", "age_group"]


def image_rows(rows: list, data, task, names: dict) -> list[dict]:
    """(index, logits) pairs of the test images -> one dict per image (the CSV's columns)."""
    rows = sorted(rows, key=lambda r: r[0])
    if not rows:
        return []
    gender, prob, rank = task.predict(torch.stack([r[1] for r in rows]))
    genders, groups, kinds = names["genders"], names["age_groups"], [s["kind"] for s in names["sources"]]
    out = []
    for (i, _), g, p, r in zip(rows, gender.tolist(), prob.tolist(), rank.tolist()):
        true_g, true_rank, source, true_grp = (int(v) for v in data.targets[i])
        age = r + task.min_age
        out.append({"file": data.paths[i], "source": kinds[source],
                    "true_gender": genders[true_g] if true_g != MISSING else "", "gender": genders[g],
                    "p_gender": round(p, 4), "true_age": true_rank + task.min_age if true_rank != MISSING else "",
                    "age": round(age, 2), "true_group": groups[true_grp]["name"] if true_grp != MISSING else "",
                    "age_group": age_groups.group_of(age, groups) or ""})
    return out


def accuracy(pairs: list[tuple]) -> dict:
    """(truth, prediction or None) pairs: a missing prediction (no face found) counts as wrong."""
    k = sum(p is not None and p == t for t, p in pairs)
    return {"k": k, "n": len(pairs), "acc": k / len(pairs) if pairs else None,
            "missed": sum(p is None for _, p in pairs)}


def age_errors(pairs: list[tuple]) -> dict:
    """(true age, predicted age or None) pairs: a missing prediction is left out, and counted."""
    err = [abs(p - t) for t, p in pairs if p is not None]
    n = len(err)
    return {"n": n, "missed": len(pairs) - n, "mae": sum(err) / n if n else None,
            "rmse": math.sqrt(sum(e * e for e in err) / n) if n else None,
            "cs5": sum(e <= 5 for e in err) / n if n else None}


def source_metrics(rows: list[dict]) -> dict:
    """The figures of one source's rows: gender accuracy, age errors, group accuracy (each where known)."""
    out = {"n": len(rows)}
    gender = accuracy([(r["true_gender"], r["gender"]) for r in rows if r["true_gender"]])
    if gender["n"]:
        out.update(gender_acc=gender["acc"], gender_right=gender["k"], gender_n=gender["n"])
    age = age_errors([(r["true_age"], r["age"]) for r in rows if r["true_age"] != ""])
    if age["n"]:
        out.update(mae=age["mae"], rmse=age["rmse"], cs5=age["cs5"], age_n=age["n"])
    group = accuracy([(r["true_group"], r["age_group"]) for r in rows if r["true_group"]])
    if group["n"]:
        out.update(group_acc=group["acc"], group_right=group["k"], group_n=group["n"])
    return out


def group_metrics(rows: list[dict]) -> dict:
    """Gender accuracy and age MAE of some rows, each with its n (None where nothing is known)."""
    gender = accuracy([(r["true_gender"], r["gender"]) for r in rows if r["true_gender"]])
    age = age_errors([(r["true_age"], r["age"]) for r in rows if r["true_age"] != ""])
    return {"n": len(rows), "gender_acc": gender["acc"], "gender_n": gender["n"], "mae": age["mae"],
            "age_n": age["n"]}


def group_figures(rows: list[dict]) -> dict:
    """{"race": {race: figures}, "race_gender_age": {"race/gender/band": figures}} of UTKFace rows."""
    by_race, cross = {}, {}
    for r in rows:
        race = utkface_race(r["file"])
        if race is None:
            continue
        by_race.setdefault(race, []).append(r)
        key = f"{race}/{r['true_gender'] or 'unknown'}/{age_band(r['true_age'])}"
        cross.setdefault(key, []).append(r)
    return {"race": {k: group_metrics(by_race[k]) for k in RACES if k in by_race},
            "race_gender_age": {k: group_metrics(v) for k, v in sorted(cross.items())}}


def describe_groups(split: str, groups: dict) -> list[str]:
    """One log line per race."""
    def fmt(v, spec):
        return "n/a" if v is None else format(v, spec)
    return [f"{split} utkface {race} ({m['n']} images): gender {fmt(m['gender_acc'], '.4f')} "
            f"age MAE {fmt(m['mae'], '.3f')}" for race, m in groups["race"].items()]


def describe(kind: str, m: dict) -> str:
    parts = [f"{kind} ({m['n']} images):"]
    if "gender_acc" in m:
        parts.append(f"gender {m['gender_acc']:.4f} ({m['gender_right']}/{m['gender_n']})")
    if "group_acc" in m:
        parts.append(f"age group {m['group_acc']:.4f} ({m['group_right']}/{m['group_n']})")
    if "mae" in m:
        parts.append(f"age MAE {m['mae']:.3f} RMSE {m['rmse']:.3f} CS@5 {m['cs5']:.3f}")
    return " ".join(parts)


def write_results(rows: list, data, task, names: dict, out: Path, log, split: str = "test") -> dict:
    """test_predictions.csv (``split``_predictions.csv) and the log's per-source lines; -> {source kind: its figures}."""
    table = image_rows(rows, data, task, names)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, COLUMNS)
    writer.writeheader()
    writer.writerows(table)
    atomic_write_text(out / f"{split}_predictions.csv", buf.getvalue())
    by_source = {}
    for s in names["sources"]:
        by_source[s["kind"]] = source_metrics([r for r in table if r["source"] == s["kind"]])
        log(f"{split} " + describe(s["kind"], by_source[s["kind"]]))
        if s["kind"] == "utkface":
            groups = group_figures([r for r in table if r["source"] == "utkface"])
            by_source["utkface"]["groups"] = groups
            for line in describe_groups(split, groups):
                log(line)
    return by_source
