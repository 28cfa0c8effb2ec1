"""Smoke test on the real shared faces: 1 epoch on a subset, then predict."""
from __future__ import annotations

import json

import gender_age_classifier as gac
import predict


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
