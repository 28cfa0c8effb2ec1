"""The final test of a gender-and-age model, per data source.

Each source reports what its labels allow: gender accuracy where genders are
known (UTKFace, a gender tree), MAE/RMSE/CS@5 where ages are (UTKFace, IMDB-WIKI
names), and the accuracy of the age group read off the predicted age where the
source is a tree of age groups. test_predictions.csv holds one row per image.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

import age_groups
from checkpointing import atomic_write_text
from tasks import MISSING

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


def source_metrics(rows: list[dict]) -> dict:
    """The figures of one source's rows: gender accuracy, age errors, group accuracy (each where known)."""
    out = {"n": len(rows)}
    gendered = [r for r in rows if r["true_gender"]]
    if gendered:
        right = sum(r["gender"] == r["true_gender"] for r in gendered)
        out.update(gender_acc=right / len(gendered), gender_right=right, gender_n=len(gendered))
    aged = [abs(r["age"] - r["true_age"]) for r in rows if r["true_age"] != ""]
    if aged:
        out.update(mae=sum(aged) / len(aged), rmse=(sum(e * e for e in aged) / len(aged)) ** 0.5,
                   cs5=sum(e <= 5 for e in aged) / len(aged), age_n=len(aged))
    grouped = [r for r in rows if r["true_group"]]
    if grouped:
        right = sum(r["age_group"] == r["true_group"] for r in grouped)
        out.update(group_acc=right / len(grouped), group_right=right, group_n=len(grouped))
    return out


def describe(kind: str, m: dict) -> str:
    parts = [f"{kind} ({m['n']} images):"]
    if "gender_acc" in m:
        parts.append(f"gender {m['gender_acc']:.4f} ({m['gender_right']}/{m['gender_n']})")
    if "group_acc" in m:
        parts.append(f"age group {m['group_acc']:.4f} ({m['group_right']}/{m['group_n']})")
    if "mae" in m:
        parts.append(f"age MAE {m['mae']:.3f} RMSE {m['rmse']:.3f} CS@5 {m['cs5']:.3f}")
    return " ".join(parts)


def write_results(rows: list, data, task, names: dict, out: Path, log) -> dict:
    """test_predictions.csv and the log's per-source lines; -> {source kind: its figures}."""
    table = image_rows(rows, data, task, names)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, COLUMNS)
    writer.writeheader()
    writer.writerows(table)
    atomic_write_text(out / "test_predictions.csv", buf.getvalue())
    by_source = {}
    for s in names["sources"]:
        by_source[s["kind"]] = source_metrics([r for r in table if r["source"] == s["kind"]])
        log("test " + describe(s["kind"], by_source[s["kind"]]))
    return by_source
