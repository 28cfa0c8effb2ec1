"""predict.py and checkpoint safety, on a checkpoint trained on tiny data."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil

import pytest
import torch

from gender_age.train import cli as gac
from gender_age.predict import cli as predict
from gender_age.core.checkpointing import CheckpointError, atomic_torch_save, load_checkpoint
from conftest import make_folder_dataset, make_image


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A gender checkpoint and an age checkpoint in a project-like folder."""
    root = tmp_path_factory.mktemp("proj")
    make_folder_dataset(root / "gender-data", n_train=4, n_test=2, predict=3)
    make_folder_dataset(root / "age-data", classes=("old", "young"), n_train=4, n_test=2, predict=2)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        light = ["--arch", "resnet18", "--resize", "40", "--crop", "32"]
        assert gac.cli(["-ep", "1", "--no-progress", "--workers", "0", "-b", "8", *light]) == 0
        assert gac.cli(["-a", "-ep", "1", "--no-progress", "--workers", "0", "-b", "8", *light]) == 0
    finally:
        os.chdir(cwd)
    return root


def test_default_predicts_every_predict_image(trained, monkeypatch, capsys):
    monkeypatch.chdir(trained)
    assert predict.cli([]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    for line in lines:
        name, label, prob = line.split()
        assert name.startswith("gender-data/predict/set/p") and label in ("female", "male")
        assert 0.5 <= float(prob) <= 1.0


def test_age_flag_uses_age_model_and_folder(trained, monkeypatch, capsys):
    monkeypatch.chdir(trained)
    assert predict.cli(["-a"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(l.split()[1] in ("old", "young") for l in lines)


def test_json_and_csv_and_explicit_inputs(trained, monkeypatch, capsys):
    monkeypatch.chdir(trained)
    one = "gender-data/test/male/male_0.jpg"
    assert predict.cli([one, "gender-data/test/female", "--json", "-b", "2"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in records][0] == one and len(records) == 3
    for r in records:
        assert abs(sum(r["probabilities"].values()) - 1) < 1e-4
        assert r["probability"] == max(r["probabilities"].values())
    assert predict.cli([one, "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[0]["file"] == one and set(rows[0]) == {"file", "label", "probability", "p_female", "p_male"}


def test_batching_does_not_change_results(trained, monkeypatch, capsys):
    monkeypatch.chdir(trained)
    outs = []
    for b in ("1", "64"):
        assert predict.cli(["gender-data/test", "--json", "-b", b, "--no-amp"]) == 0
        outs.append(json.loads(capsys.readouterr().out))
    for a, b in zip(*outs):
        assert a["label"] == b["label"] and a["probability"] == pytest.approx(b["probability"], abs=1e-5)


def test_bad_files_are_reported_and_the_rest_predicted(trained, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(trained)
    make_image(tmp_path / "good.jpg", 0, 1)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    assert predict.cli([str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert "good.jpg" in out and len(out.strip().splitlines()) == 1
    assert "empty.jpg: empty file" in err and "text.jpg" in err and "Traceback" not in err


@pytest.mark.parametrize("case", ["empty_folder", "missing_ckpt", "other_task", "other_task_default_folder",
                                  "other_classes", "missing_input"])
def test_one_line_errors(trained, monkeypatch, capsys, tmp_path, case):
    monkeypatch.chdir(trained)
    if case == "empty_folder":
        (tmp_path / "empty").mkdir()
        argv, match = [str(tmp_path / "empty")], "has no images"
    elif case == "missing_ckpt":
        argv, match = ["--checkpoint", str(tmp_path / "nope.tar")], "not found"
    elif case == "other_task":
        argv, match = ["-a", "--checkpoint", "checkpoints/gender/model_best.tar"], "'gender' checkpoint, not 'age'"
    elif case == "other_task_default_folder":
        # no -a and no inputs: gender-data/predict, so the checkpoint must be a gender one
        argv, match = ["--checkpoint", "checkpoints/age/model_best.tar"], "'age' checkpoint, not 'gender'"
    elif case == "other_classes":
        # a data folder whose classes differ from the checkpoint's
        shutil.copytree(trained / "gender-data", tmp_path / "gender-data")
        (tmp_path / "gender-data" / "train" / "male").rename(tmp_path / "gender-data" / "train" / "man")
        shutil.copytree(trained / "checkpoints", tmp_path / "checkpoints")
        monkeypatch.chdir(tmp_path)
        argv, match = [], "trained on classes"
    else:
        argv, match = ["does/not/exist.jpg"], "does not exist"
    assert predict.cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and match in err


# ---- untrusted and broken checkpoints ---------------------------------------

class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_malicious_pickle_is_refused_and_does_not_run(trained, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.tar"
    good = load_checkpoint(trained / "checkpoints" / "gender" / "model_best.tar")
    good["payload"] = _RunsCode()
    torch.save(good, evil)
    assert predict.cli(["--checkpoint", str(evil), str(trained / "gender-data" / "predict")]) == 2
    err = capsys.readouterr().err
    assert "refused to load" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "PWNED").exists()
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(evil)


@pytest.mark.parametrize("kind", ["truncated", "not_a_checkpoint", "weights_only", "wrong_shape"])
def test_broken_checkpoints(trained, tmp_path, capsys, kind):
    src = trained / "checkpoints" / "gender" / "model_best.tar"
    bad = tmp_path / f"{kind}.tar"
    if kind == "truncated":
        bad.write_bytes(src.read_bytes()[: src.stat().st_size // 3])
        match = "not a readable checkpoint"
    elif kind == "not_a_checkpoint":
        bad.write_text("hello, I am a text file\n")
        match = "not a readable checkpoint"
    elif kind == "weights_only":
        torch.save(load_checkpoint(src)["model_state"], bad)
        match = "not a checkpoint of this toolkit"
    else:
        ckpt = load_checkpoint(src)
        ckpt["model_args"]["num_outputs"] = 3  # consistent metadata, but the weights have 2 outputs
        ckpt["classes"] = ["a", "b", "c"]
        atomic_torch_save(ckpt, bad)
        match = "do not fit"
    assert predict.cli(["--checkpoint", str(bad), str(trained / "gender-data" / "predict")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err


def test_training_refuses_checkpoint_for_other_classes(trained, tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "d", classes=("a", "b", "c"), n_train=2, n_test=1)
    out = tmp_path / "c"
    out.mkdir()
    shutil.copy(trained / "checkpoints" / "gender" / "model_best.tar", out / "checkpoint_last.tar")
    assert gac.cli(["--data-dir", str(data), "--checkpoint-dir", str(out), "--resume", "--no-progress",
                    "--arch", "resnet18", "--resize", "40", "--crop", "32"]) == 2
    assert "trained on classes" in capsys.readouterr().err


def test_every_awkward_input_in_prediction(trained, monkeypatch, capsys, tmp_path):
    from conftest import make_bad_input_zoo
    zoo = make_bad_input_zoo(tmp_path / "zoo")
    monkeypatch.chdir(trained)
    assert predict.cli([str(tmp_path / "zoo"), "--json", "--no-detect"]) == 1
    out, err = capsys.readouterr()
    files = {os.path.basename(r["file"]) for r in json.loads(out)}
    assert files == set(zoo["good"])
    for name in zoo["bad"]:
        assert f"{name}:" in err
    assert "Traceback" not in err and not any(n in err for n in zoo["ignored"])
    assert f"{len(zoo['bad'])} of {len(zoo['good']) + len(zoo['bad'])}" in err


def test_training_refuses_checkpoint_of_another_architecture(trained, tmp_path, capsys):
    out = tmp_path / "c"
    out.mkdir()
    shutil.copy(trained / "checkpoints" / "gender" / "model_best.tar", out / "checkpoint_last.tar")
    # the checkpoint holds a resnet18; asking for the Levi-Hassner network must fail in one line
    assert gac.cli(["--data-dir", str(trained / "gender-data"), "--checkpoint-dir", str(out), "--resume",
                    "--no-progress", "-ep", "1", "--arch", "levi_hassner"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "trained with --arch resnet18, but this run asks for levi_hassner" in err
