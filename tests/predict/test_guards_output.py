"""predict.py's records: every CSV text cell is kept from being a formula (not only the file
and label), and --json / --csv stay well-formed when no input gives a record."""
from __future__ import annotations

import csv
import io
import json
from types import SimpleNamespace

import pytest

from benchmarks.bench_predict import untrained_checkpoint
from gender_age.predict import cli as predict
from gender_age.predict import records

FAST = ["--no-detect", "--workers", "0", "--no-amp", "--device", "cpu"]
AGE_GENDER = SimpleNamespace(key="age_gender", genders=["female", "male"], ordinal={"loss": "ordinal"},
                             classes=[], age_groups=[{"name": "young", "min": 0, "max": 30}])


@pytest.mark.parametrize("start", ["=", "+", "-", "@"])
@pytest.mark.parametrize("key", ["file", "label", "source", "gender", "age_group", "age_gender_gender",
                                 "age_gender_age_group", "exact_age", "frame"])
def test_every_text_cell_is_kept_from_being_a_formula(key, start):
    cells = records.flat_row({key: start + "cmd|x"})
    assert cells[key] == "'" + start + "cmd|x"


def test_numbers_and_number_like_text_stay_as_they_are():
    cells = records.flat_row({"file": "-0.5", "age_group": "-3", "score": -0.5, "box": [-1, 2, 3, 4],
                              "probability": 0.25, "source": "detector"})
    assert (cells["file"], cells["age_group"], cells["score"], cells["x0"], cells["probability"],
            cells["source"]) == ("-0.5", "-3", -0.5, -1, "0.2500", "detector")


def stream(fmt, located=False):
    out = io.StringIO()
    return records.RecordStream(records.SafeWriter(out), fmt, {"age_gender": AGE_GENDER}, ["a.jpg"], located), out


@pytest.mark.parametrize("located", [False, True, None])
def test_json_with_no_record_is_an_empty_list(located):
    s, out = stream("json", located)
    s.close()
    assert json.loads(out.getvalue()) == []


@pytest.mark.parametrize("located,cols", [
    (False, ["file", "gender", "gender_probability", "gender_p_female", "gender_p_male", "age", "age_group"]),
    (True, ["file", "face", "x0", "y0", "x1", "y1", "score", "source", "gender", "gender_probability",
            "gender_p_female", "gender_p_male", "age", "age_group"])])
def test_csv_with_no_record_still_has_its_header(located, cols):
    s, out = stream("csv", located)
    s.close()
    assert list(csv.reader(io.StringIO(out.getvalue()))) == [cols]


def test_json_with_records_is_closed_once():
    s, out = stream("json")
    s.add([{"file": "a.jpg", "face": None, "box": None, "score": None, "source": "whole image",
            "gender": "male", "gender_probability": 0.9, "age": 30.0, "age_group": "young"}])
    s.close()
    assert [r["file"] for r in json.loads(out.getvalue())] == ["a.jpg"]


@pytest.mark.parametrize("fmt", ["--json", "--csv"])
def test_predict_with_only_unreadable_inputs_prints_an_empty_result(tmp_path, capsys, fmt):
    ckpt = untrained_checkpoint(tmp_path / "g.tar", arch="resnet18", geometry=(40, 32))
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    code = predict.cli([str(bad), "--checkpoint", str(ckpt), fmt, *FAST])
    out, err = capsys.readouterr()
    assert code == 1 and "bad.jpg" in err, err
    if fmt == "--json":
        assert json.loads(out) == []
    else:
        assert list(csv.reader(io.StringIO(out))) == [["file", "label", "probability", "p_female", "p_male"]]
