"""A model trained on every age predicts every age: on generated faces whose brightness tells
the age, an age-gender run over ages 2-90 gives predict.py a child below 21 and an old face
above 60 (the clamped 21-60 recipe could give neither)."""
from __future__ import annotations

import csv
import json

import numpy as np
from PIL import Image

from gender_age.predict import cli as predict
from gender_age.train import cli as gac
from helpers import LIGHT, one_thread  # noqa: F401  (autouse: one torch thread)


def face(age: int, gender: int, seed: int) -> Image.Image:
    """A 40-px square whose grey level rises with the age and whose tint tells the gender."""
    rng = np.random.default_rng(seed)
    level = 20 + 2.5 * age
    rgb = np.full((40, 40, 3), level) + rng.normal(0, 3, (40, 40, 3))
    rgb[..., 0 if gender else 2] += 10
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def test_an_all_ages_model_predicts_children_and_old_faces(tmp_path, capsys):
    utk = tmp_path / "utk"
    (utk / "UTKFace").mkdir(parents=True)
    names = []
    for i, age in enumerate(list(range(2, 91, 2)) * 2):
        name = f"{age}_{i % 2}_{i % 5}_20170109{i:06d}.jpg.chip.jpg"
        face(age, i % 2, i).save(utk / "UTKFace" / name, format="PNG")
        names.append(name)
    with open(utk / "utk_test.csv", "w", newline="") as f:  # the CORAL test CSV: a few faces of 21-60
        w = csv.writer(f)
        w.writerow(["", "file", "age"])
        w.writerows([j, n, int(n.split("_")[0]) - 21] for j, n in enumerate(names[10:20]))
    out = tmp_path / "run"
    assert gac.cli(["--task", "age-gender", "--source", f"utkface={utk}", "--checkpoint-dir", str(out), "-ep", "5",
                    "--seed", "0", "--val-split", "0.1", *LIGHT, "-b", "16"]) == 0
    ckpt = out / "model_best.tar"
    assert json.loads((out / "test_results.json").read_text())["by_source"]["utkface"]["age_n"] > 0
    for name, age in (("child.png", 4), ("old.png", 86)):
        face(age, 0, 1000 + age).save(tmp_path / name)
    capsys.readouterr()
    assert predict.cli([str(tmp_path / "child.png"), str(tmp_path / "old.png"), "--checkpoint", str(ckpt),
                        "--no-detect", "--json", "--workers", "0", "--no-amp", "--device", "cpu"]) == 0
    ages = {r["file"].rsplit("/", 1)[-1]: r["age"] for r in json.loads(capsys.readouterr().out)}
    assert ages["child.png"] < 21 and ages["old.png"] > 60, ages
