"""predict.py for a new user: a missing detector package names what works for the models asked
for, an age-gender checkpoint without inputs says the inputs are missing, --help states each
default as it applies, and age groups that a model can never predict are refused."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

import synthetic
from benchmarks.bench_predict import untrained_checkpoint
from conftest import make_image
from gender_age.core.checkpointing import atomic_torch_save, load_checkpoint
from gender_age.data import age_groups
from gender_age.data.transforms import Preset
from gender_age.faces import alignment, detectors
from gender_age.nets.models import build_model
from gender_age.predict import cli as predict
from helpers import one_thread  # noqa: F401  (autouse: one torch thread)

FAST = ["--workers", "0", "--no-amp", "--device", "cpu"]
MIN_AGE, RANKS = 21, 40  # ages 21-60


def age_gender_checkpoint(path: Path, groups: list[dict]) -> Path:
    """An untrained resnet18 age-gender checkpoint on 32 px inputs (ages 21-60), with ``groups``."""
    torch.manual_seed(0)
    model_args = {"arch": "resnet18", "num_outputs": 2 + RANKS - 1, "dropout": 0.0, "head": "ordinal",
                  "num_ranks": RANKS, "genders": 2}
    ckpt = {"format": 1, "task": "age-gender", "classes": [str(MIN_AGE + k) for k in range(RANKS)],
            "model_args": model_args, "preprocess": Preset(40, 32).as_dict(),
            "model_state": build_model(**model_args).state_dict(), "epoch": 0,
            "ordinal": {"loss": "ordinal", "min_age": MIN_AGE, "num_ranks": RANKS},
            "genders": ["female", "male"], "age_groups": groups}
    atomic_torch_save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("first_hour")
    plain = untrained_checkpoint(d / "plain.tar", arch="resnet18", geometry=(40, 32))
    aligned = load_checkpoint(plain)
    aligned["chips"] = alignment.ChipSpec("aligned", 40, 0.25).as_dict()
    atomic_torch_save(aligned, d / "aligned.tar")
    photo = d / "photo.png"
    synthetic.background((96, 64), 0).save(photo)
    return {"plain": plain, "aligned": d / "aligned.tar", "photo": photo, "dir": d,
            "age_gender": age_gender_checkpoint(d / "ag.tar", [dict(g) for g in age_groups.parse(
                "young=0-38,old=39-")]),
            "child": age_gender_checkpoint(d / "child.tar", age_groups.parse("child=0-12,adult=13-"))}


def run(capsys, *argv) -> tuple[int, str, str]:
    code = predict.cli([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str) -> str:
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    return err


# ---- a detector package that is not installed ---------------------------------------------------

@pytest.mark.parametrize("has_yuface", [True, False])
def test_missing_mtcnn_names_what_works_for_aligned_chip_models(models, monkeypatch, capsys, has_yuface):
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)  # import facenet_pytorch -> ImportError
    if not has_yuface:
        monkeypatch.setitem(sys.modules, "yuface", None)
    err = one_line_error(*run(capsys, models["photo"], "--checkpoint", models["aligned"], *FAST)[::2])
    assert "facenet-pytorch" in err and "haar" not in err
    if has_yuface:
        assert "--detector yunet" in err
    else:
        assert "pip install --no-deps facenet-pytorch==2.6.0" in err and "--detector" not in err


def test_the_detector_named_then_works(models, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)
    code, out, err = run(capsys, models["photo"], "--checkpoint", models["aligned"], "--detector", "yunet",
                         "--json", *FAST)
    assert code == 0 and len(json.loads(out)) == 1, err


def test_haar_is_refused_for_aligned_chips_naming_a_detector_that_imports(models, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)
    err = one_line_error(*run(capsys, models["photo"], "--checkpoint", models["aligned"], "--detector", "haar",
                              *FAST)[::2])
    assert "need face landmarks: use --detector yunet" in err


def test_haar_is_named_where_the_models_accept_it(models, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)
    monkeypatch.setitem(sys.modules, "yuface", None)
    err = one_line_error(*run(capsys, models["photo"], "--checkpoint", models["plain"], "--detector", "mtcnn",
                              *FAST)[::2])
    assert "pip install --no-deps facenet-pytorch==2.6.0" in err and err.rstrip().endswith("--detector haar")


# ---- no inputs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("default_folder", [True, False])
def test_age_gender_checkpoint_without_inputs_says_the_inputs_are_missing(models, monkeypatch, capsys, tmp_path,
                                                                          default_folder):
    monkeypatch.chdir(tmp_path)
    if default_folder:
        make_image(tmp_path / "gender-data" / "predict" / "a.png", 0, 0)
    err = one_line_error(*run(capsys, "--checkpoint", models["age_gender"], *FAST)[::2])
    assert "no inputs given" in err and "photo.jpg" in err and "pass the right" not in err


# ---- --help --------------------------------------------------------------------------------------

def test_help_states_defaults_only_where_informative_and_right():
    parser = predict.get_args_parser()
    formatter = parser._get_formatter()
    texts = {a.dest + ("" if a.option_strings[:1] != ["--no-detect"] else "_flag"):
             (a, formatter._expand_help(a)) for a in parser._actions if a.help}
    for action, text in texts.values():
        assert "(default: None)" not in text and "(default: False)" not in text, text
        assert text.count("default:") + text.count("default,") <= 1, text
        if action.default is not None and "(default: " in text:  # added from the parser: the value used
            assert text.endswith(f"(default: {action.default})"), text
    assert texts["detect_size"][1].endswith(f"(default: {detectors.DETECT_SIZE})")
    assert "default" not in texts["detect_flag"][1]  # --no-detect: not --detect's default
    assert "default: yunet, or mtcnn for models trained on aligned chips" in texts["detector"][1]
    help_text = parser.format_help()
    assert "(default: None)" not in help_text and "gender-data/predict/" in help_text


# ---- age groups ----------------------------------------------------------------------------------

def test_a_stored_age_group_outside_the_models_range_is_refused(models, capsys):
    err = one_line_error(*run(capsys, models["photo"], "--checkpoint", models["child"], "--no-detect",
                              *FAST)[::2])
    assert "child=0-12" in err and "21-60" in err


def test_age_groups_option_replaces_the_stored_ones_and_is_checked(models, capsys):
    err = one_line_error(*run(capsys, models["photo"], "--checkpoint", models["age_gender"], "--no-detect",
                              "--age-groups", "child=0-12,adult=13-", *FAST)[::2])
    assert "child=0-12" in err and "21-60" in err
    code, out, err = run(capsys, models["photo"], "--checkpoint", models["age_gender"], "--no-detect", "--json",
                         "--age-groups", "twenties=21-29,older=30-", *FAST)
    assert code == 0, err
    (record,) = json.loads(out)
    assert record["age_group"] == age_groups.group_of(record["age"], age_groups.parse("twenties=21-29,older=30-"))
    err = one_line_error(*run(capsys, models["photo"], "--checkpoint", models["plain"], "--no-detect",
                              "--age-groups", "young=0-38,old=39-", *FAST)[::2])
    assert "--age-groups is for age-gender models" in err


def test_age_group_helpers():
    groups = age_groups.parse("child=0-12,young=13-38,old=39-")
    assert [age_groups.index_of(groups, n) for n in ("Young", "OLD", "child", "teen")] == [1, 2, 0, None]
    assert [g["name"] for g in age_groups.outside(groups, 21, 60)] == ["child"]
    assert age_groups.outside(groups, 0, 130) == []
    age_groups.check_within(groups[1:], 21, 60)
    with pytest.raises(age_groups.AgeGroupError, match="child=0-12 .*21-60"):
        age_groups.check_within(groups, 21, 60)
    with pytest.raises(age_groups.AgeGroupError, match="distinct"):
        age_groups.parse("young=0-38,Young=39-")


def test_help_formatter_keeps_a_real_default():
    p = argparse.ArgumentParser(formatter_class=predict.HelpFormatter)
    p.add_argument("--n", type=int, default=3, help="a number")
    assert "a number (default: 3)" in " ".join(p.format_help().split())
