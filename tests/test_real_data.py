"""Smoke test on the real shared faces: 1 epoch on a subset, then predict."""
from __future__ import annotations

import json

from gender_age.train import cli as gac
from gender_age.predict import cli as predict
from gender_age.data import samples


def test_one_epoch_on_real_faces_then_predict(shared_data, tmp_path, capsys):
    out = tmp_path / "gender"
    assert gac.cli(["--data-dir", str(shared_data / "gender-data"), "--checkpoint-dir", str(out), "-ep", "1",
                    "--max-per-class", "24", "--no-progress", "-b", "16"]) == 0
    result = json.loads((out / "test_results.json").read_text())
    assert result["classes"] == ["female", "male"] and result["test_n"] == 48
    capsys.readouterr()
    assert predict.cli(["--checkpoint", str(out / "model_best.tar"), str(shared_data / "gender-data" / "predict"),
                        "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 8 and {r["label"] for r in records} <= {"female", "male"}


def test_real_utkface_genders_parse(shared_data):
    """The pretraining's labels on the real UTKFace names: the README's totals
    (12,390 male, 11,314 female) and the three names without a gender field."""
    every = samples.genders_from_utkface(shared_data / "utkface" / "UTKFace")
    assert every.classes == ["female", "male"]
    assert (every.targets.count(0), every.targets.count(1)) == (11314, 12390)
    assert len(every.skipped) == 3 and all("no gender field" in why for _, why in every.skipped)
