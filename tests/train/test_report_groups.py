"""report.py: UTKFace's figures per race and per race x gender x age band, with known values."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from gender_age.data.samples import MISSING
from gender_age.train import report


def row(name, true_gender, gender, true_age, age):
    return {"file": f"utk/UTKFace/{name}", "source": "utkface", "true_gender": true_gender, "gender": gender,
            "true_age": true_age, "age": age}


# race fields: 0 White, 1 Black, 2 Asian; the last name has no race field
ROWS = [row("5_0_0_1.jpg.chip.jpg", "male", "male", 5, 7.0),          # White, male, 0-12: right, error 2
        row("8_1_0_2.jpg.chip.jpg", "female", "male", 8, 8.0),        # White, female, 0-12: wrong, error 0
        row("70_1_0_3.jpg.chip.jpg", "female", "female", 70, 60.0),   # White, female, 61+: right, error 10
        row("30_0_1_4.jpg.chip.jpg", "male", "female", 30, 34.0),     # Black, male, 21-40: wrong, error 4
        row("20_1_2_5.jpg.chip.jpg", "female", "female", 20, 21.0),   # Asian, female, 13-20: right, error 1
        row("39_1_6.jpg.chip.jpg", "", "male", 39, 30.0)]             # no race field: in no group


def test_group_figures_known_values():
    g = report.group_figures(ROWS)
    assert list(g["race"]) == ["White", "Black", "Asian"]
    white = g["race"]["White"]
    assert white == {"n": 3, "gender_acc": pytest.approx(2 / 3), "gender_n": 3, "mae": pytest.approx(4.0),
                     "age_n": 3}
    assert g["race"]["Black"]["gender_acc"] == 0.0 and g["race"]["Black"]["mae"] == 4.0
    assert sorted(g["race_gender_age"]) == ["Asian/female/13-20", "Black/male/21-40", "White/female/0-12",
                                            "White/female/61+", "White/male/0-12"]
    assert g["race_gender_age"]["White/female/0-12"] == {"n": 1, "gender_acc": 0.0, "gender_n": 1, "mae": 0.0,
                                                         "age_n": 1}
    assert g["race_gender_age"]["White/female/61+"]["mae"] == 10.0
    assert [report.age_band(a) for a in (0, 12, 13, 20, 21, 40, 41, 60, 61, 116, "")] == \
        ["0-12", "0-12", "13-20", "13-20", "21-40", "21-40", "41-60", "41-60", "61+", "61+", "unknown"]
    assert report.utkface_race("x/29_1_3_2017.jpg.chip.jpg") == "Indian" and report.utkface_race("a_b.jpg") is None


class FakeTask:
    """Predicts what the 'logits' say: (gender index, its probability, age rank)."""
    min_age = 0

    def predict(self, logits):
        return logits[:, 0].long(), torch.full((len(logits),), 0.9), logits[:, 1]


def test_write_results_puts_the_groups_into_the_utkface_figures(tmp_path):
    genders = ["female", "male"]
    data = SimpleNamespace(paths=[r["file"] for r in ROWS[:5]] + ["g/test/male/1.jpg"],
                           targets=[(genders.index(r["true_gender"]), r["true_age"], 0, MISSING) for r in ROWS[:5]]
                           + [(1, MISSING, 1, MISSING)])
    preds = [(i, torch.tensor([float(genders.index(r["gender"])), r["age"]])) for i, r in enumerate(ROWS[:5])]
    preds.append((5, torch.tensor([1.0, 25.0])))
    names = {"genders": genders, "age_groups": [], "sources": [{"kind": "utkface"}, {"kind": "gender"}]}
    said = []
    out = report.write_results(preds, data, FakeTask(), names, tmp_path, said.append, split="val")
    assert out["utkface"]["groups"] == report.group_figures(ROWS[:5])
    assert out["utkface"]["groups"]["race"]["White"]["mae"] == pytest.approx(4.0)
    assert "groups" not in out["gender"]
    assert "val utkface White (3 images): gender 0.6667 age MAE 4.000" in said
    assert (tmp_path / "val_predictions.csv").is_file()
