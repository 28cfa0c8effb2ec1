"""The prediction side of age-gender checkpoints (one network, a gender head and an ordinal age head):
predict.py's text, JSON and CSV records, age groups, combined models, annotation, crafted metadata
and ONNX export with parity, on tiny checkpoints with random (or hand-set) weights."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch

from gender_age.tools import export
from gender_age.faces import videos
import synthetic
from gender_age.predict import cli as predict
from gender_age.predict import annotate as prediction_output
from gender_age.predict import onnx_backend as prediction_models
from gender_age.predict import torch_backend as predictor
from benchmarks.bench_predict import untrained_checkpoint
from gender_age.core.checkpointing import atomic_torch_save, load_checkpoint
from conftest import make_image
from gender_age.data.transforms import Preset
from gender_age.nets.models import build_model
from helpers import one_thread  # noqa: F401  (autouse: one torch thread)

FAST = ["--no-detect", "--workers", "0", "--no-amp", "--device", "cpu"]
GENDERS = ["female", "male"]
GROUPS = [{"name": "young", "min": 0, "max": 24}, {"name": "old", "min": 25, "max": 130}]
MIN_AGE, RANKS = 20, 10  # ages 20-29


def age_gender_checkpoint(path: Path, seed: int = 0, gender_bias=None, rank: int | None = None) -> Path:
    """A resnet18 age-gender checkpoint on 32 px inputs, as training writes it. With ``gender_bias``
    and ``rank`` both heads ignore the image: gender logits = gender_bias, age = MIN_AGE + rank."""
    torch.manual_seed(seed)
    model_args = {"arch": "resnet18", "num_outputs": len(GENDERS) + RANKS - 1, "dropout": 0.0, "head": "ordinal",
                  "num_ranks": RANKS, "genders": len(GENDERS)}
    model = build_model(**model_args)
    if gender_bias is not None:
        with torch.no_grad():
            model.head.gender.weight.zero_()
            model.head.gender.bias.copy_(torch.tensor(gender_bias))
            model.head.age.weight.zero_()
            model.head.age.bias.copy_(torch.tensor([4.0] * rank + [-4.0] * (RANKS - 1 - rank)))
    ckpt = {"format": 1, "task": "age-gender", "classes": [str(MIN_AGE + k) for k in range(RANKS)],
            "model_args": model_args, "preprocess": Preset(40, 32).as_dict(), "model_state": model.state_dict(),
            "epoch": 0, "ordinal": {"loss": "ordinal", "min_age": MIN_AGE, "num_ranks": RANKS, "ce_mode": "expectation"},
            "genders": list(GENDERS), "age_groups": [dict(g) for g in GROUPS],
            "sources": [{"kind": "utkface", "dir": "utkface"}]}
    atomic_torch_save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("age_gender")
    out = {"random": age_gender_checkpoint(d / "random.tar"),
           "male24": age_gender_checkpoint(d / "male24.tar", gender_bias=[0.0, 3.0], rank=4),
           "female26": age_gender_checkpoint(d / "female26.tar", gender_bias=[2.0, 0.0], rank=6)}
    # the same network, but 24 falls between its groups
    gap = load_checkpoint(out["male24"])
    gap["age_groups"] = [{"name": "young", "min": 0, "max": 21}, {"name": "old", "min": 27, "max": 130}]
    out["gap"] = d / "gap.tar"
    atomic_torch_save(gap, out["gap"])
    out["gender"] = untrained_checkpoint(d / "gender.tar", arch="resnet18", geometry=(40, 32))
    out["inputs"] = d / "in"
    for i in range(3):
        make_image(out["inputs"] / f"f{i}.png", i % 2, i, size=(60, 50))
    return out


def run(argv, capsys) -> tuple[int, str, str]:
    code = predict.cli([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def records(capsys, *argv, fmt="--json"):
    code, out, err = run([*argv, *FAST, fmt], capsys)
    assert code == 0 and err == "", err
    return json.loads(out) if fmt == "--json" else list(csv.DictReader(io.StringIO(out)))


def one_line_error(code, err, match=""):
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1, (code, err)
    assert "Traceback" not in err and match in err, err


P_MALE = float(torch.tensor([0.0, 3.0]).softmax(0)[1])    # 0.9526
P_FEMALE = float(torch.tensor([2.0, 0.0]).softmax(0)[0])  # 0.8808


# ---- one age-gender model: every output format ------------------------------------

@pytest.mark.parametrize("name,gender,prob,age,group", [("male24", "male", P_MALE, 24, "young"),
                                                        ("female26", "female", P_FEMALE, 26, "old")])
def test_one_model_gives_gender_probability_age_and_group(ckpts, tmp_path, capsys, name, gender, prob, age, group):
    img = make_image(tmp_path / "face.png", 0, 0)
    (r,) = records(capsys, img, "--checkpoint", ckpts[name])
    assert r == {"file": str(img), "gender": gender, "gender_probability": pytest.approx(prob, abs=1e-6),
                 "gender_probabilities": pytest.approx({"female": 1 - P_MALE, "male": P_MALE} if gender == "male"
                                                       else {"female": P_FEMALE, "male": 1 - P_FEMALE}, abs=1e-6),
                 "age": age, "age_group": group}
    assert type(r["age"]) is int  # an 'ordinal' head gives whole years (ce_mode is for 'ce' heads)
    (row,) = records(capsys, img, "--checkpoint", ckpts[name], fmt="--csv")
    assert list(row) == ["file", "gender", "gender_probability", "gender_p_female", "gender_p_male", "age", "age_group"]
    assert (row["gender"], float(row["gender_probability"]), row["age"], row["age_group"]) == \
        (gender, round(prob, 4), str(age), group)
    code, out, err = run([img, "--checkpoint", ckpts[name], *FAST], capsys)
    assert code == 0 and err == "" and out.split() == [str(img), gender, f"{prob:.3f}", str(age), group]


def test_a_folder_in_a_table_and_a_video(ckpts, tmp_path, capsys):
    # --detect on with no face: the table layout, whose columns are the model's fields
    code, out, err = run([ckpts["inputs"], "--checkpoint", ckpts["male24"], "--no-amp", "--workers", "0",
                          "--detect", "on", "--detector", "haar"], capsys)
    header, *rows = out.splitlines()
    assert code == 0 and header.split() == ["file", "face", "box", "gender", "age", "age_group"] and len(rows) == 3
    # a video, every frame predicted whole
    path = tmp_path / "clip.mp4"
    writer = videos.VideoWriter(path, 5.0, (64, 48))
    for i in range(3):
        writer.write(synthetic.background((64, 48), i))
    writer.close()
    rows = records(capsys, path, "--checkpoint", ckpts["female26"], fmt="--csv")
    assert [(r["frame"], r["gender"], r["age"], r["age_group"]) for r in rows] == \
        [(str(i), "female", "26", "old") for i in range(3)]


def test_the_age_group_follows_the_age(ckpts, capsys):
    rs = records(capsys, ckpts["inputs"], "--checkpoint", ckpts["random"], "--tta")
    assert len(rs) == 3
    for r in rs:
        assert MIN_AGE <= r["age"] < MIN_AGE + RANKS
        assert r["age_group"] == ("young" if r["age"] <= 24 else "old")
    # an age between the groups has none: null in JSON, an empty CSV cell, '-' in text
    assert {r["age_group"] for r in records(capsys, ckpts["inputs"], "--checkpoint", ckpts["gap"])} == {None}
    assert {r["age_group"] for r in records(capsys, ckpts["inputs"], "--checkpoint", ckpts["gap"],
                                            fmt="--csv")} == {""}
    code, out, _ = run([ckpts["inputs"], "--checkpoint", ckpts["gap"], *FAST], capsys)
    assert code == 0 and [line.split()[-2:] for line in out.splitlines()] == [["24", "-"]] * 3


@pytest.mark.parametrize("tta", [False, True])
def test_both_heads_are_read_from_one_output(ckpts, tta):
    """Gender: the softmax of the first len(genders) outputs, averaged over the views; age: min_age +
    the ordinal decoding of the rest, averaged over the views (as exact-age models)."""
    p = predictor.Predictor(ckpts["random"], torch.device("cpu"))
    assert p.outputs == 2 + RANKS - 1 and p.genders == GENDERS and p.age_groups == GROUPS
    batch = torch.randint(0, 256, (5, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    views = torch.from_numpy(p.view_logits(batch, tta))  # the decoding checked here with torch's ops
    probs = views[..., :2].softmax(-1).mean(0)
    ages = (MIN_AGE + (views[..., 2:].mean(0) > 0).sum(1)).tolist()
    got = p.predict(batch, tta)
    assert [r["age"] for r in got] == ages
    assert [r["label"] for r in got] == [GENDERS[k] for k in probs.argmax(1)]
    for r, pr in zip(got, probs):
        assert r["probability"] == pytest.approx(float(pr.max()), abs=1e-6)
        assert list(r["probabilities"].values()) == pytest.approx(pr.tolist(), abs=1e-6)
        assert r["age_group"] == ("young" if r["age"] <= 24 else "old")


def test_annotation_label(ckpts, tmp_path, capsys):
    p = predictor.Predictor(ckpts["male24"], torch.device("cpu"))
    (res,) = p.predict(torch.zeros((1, 3, 40, 40), dtype=torch.uint8))
    assert prediction_output.face_label({"age_gender": res}, {"age_gender": p}) == "male 0.95  age 24  young"
    img = make_image(tmp_path / "face.png", 0, 0, size=(80, 80))
    code, _, err = run([img, "--checkpoint", ckpts["male24"], "--annotate", tmp_path / "out", *FAST], capsys)
    assert code == 0 and err == "" and (tmp_path / "out" / "face.png").is_file()


def test_combined_with_other_models_the_fields_stay_apart(ckpts, capsys):
    argv = [ckpts["inputs"], "--gender-checkpoint", ckpts["gender"], "--age-gender-checkpoint", ckpts["male24"]]
    rs = records(capsys, *argv)
    assert list(rs[0]) == ["file", "gender", "gender_probability", "gender_probabilities", "age_gender_gender",
                           "age_gender_gender_probability", "age_gender_gender_probabilities", "age_gender_age",
                           "age_gender_age_group"]
    assert {(r["age_gender_gender"], r["age_gender_age"], r["age_gender_age_group"]) for r in rs} == \
        {("male", 24, "young")}
    header = list(records(capsys, *argv, fmt="--csv")[0])
    assert len(header) == len(set(header)) and {"gender_p_male", "age_gender_gender_p_male"} <= set(header)
    code, out, _ = run([*argv, *FAST], capsys)
    assert code == 0 and out.splitlines()[0].split() == ["file", "gender", "age_gender_gender", "age_gender_age",
                                                         "age_gender_age_group"]
    # the option takes age-gender models only
    one_line_error(*run([ckpts["inputs"], "--age-gender-checkpoint", ckpts["gender"], *FAST], capsys)[::2],
                   match="not 'age-gender'")


# ---- crafted metadata -------------------------------------------------------------

def _drop(key):
    return lambda c: c.pop(key)


CRAFTED = {
    "no_genders": (_drop("genders"), "genders"),
    "one_gender": (lambda c: c.update(genders=["male"]), "genders"),
    "duplicate_genders": (lambda c: c.update(genders=["male", "male"]), "genders"),
    "genders_not_strings": (lambda c: c.update(genders=[0, 1]), "genders"),
    "three_genders_two_outputs": (lambda c: c.update(genders=["a", "b", "c"]), "gender outputs"),
    "model_args_genders_3": (lambda c: c["model_args"].update(genders=3), "gender outputs"),
    "no_age_groups": (_drop("age_groups"), "age groups"),
    "overlapping_groups": (lambda c: c.update(age_groups=[{"name": "a", "min": 0, "max": 30},
                                                          {"name": "b", "min": 20, "max": 99}]), "overlap"),
    "group_as_text": (lambda c: c.update(age_groups="young=0-38"), "age groups"),
    "no_ordinal": (_drop("ordinal"), "'ordinal' settings"),
    "ordinal_ranks_differ": (lambda c: c["ordinal"].update(num_ranks=12), "differ"),
    "gender_head_on_exact_age": (lambda c: c.update(task="exact-age"), "gender outputs"),
    "no_gender_head": (lambda c: c["model_args"].pop("genders"), "gender outputs"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_checkpoints_are_one_line_errors(ckpts, tmp_path, capsys, case):
    change, match = CRAFTED[case]
    ckpt = load_checkpoint(ckpts["male24"])
    change(ckpt)
    path = tmp_path / "crafted.tar"
    atomic_torch_save(ckpt, path)
    one_line_error(*run([ckpts["inputs"], "--checkpoint", path, *FAST], capsys)[::2], match=match)


# ---- ONNX --------------------------------------------------------------------------

def test_onnx_export_carries_both_heads_and_predicts_the_same(ckpts, tmp_path, capsys):
    import onnx
    ck = tmp_path / "ag.tar"
    ck.write_bytes(ckpts["random"].read_bytes())
    assert export.cli([str(ck)]) == 0
    meta = {m.key: m.value for m in onnx.load(str(ck.with_suffix(".onnx"))).metadata_props}
    assert meta["task"] == "age-gender" and json.loads(meta["genders"]) == GENDERS
    assert json.loads(meta["age_groups"]) == GROUPS and json.loads(meta["ordinal"])["num_ranks"] == RANKS
    capsys.readouterr()
    torch_out = records(capsys, ckpts["inputs"], "--checkpoint", ck)
    onnx_out = records(capsys, ckpts["inputs"], "--onnx", ck.with_suffix(".onnx"))
    assert len(torch_out) == 3
    for a, b in zip(torch_out, onnx_out):
        assert (a["gender"], a["age"], a["age_group"]) == (b["gender"], b["age"], b["age_group"])
        assert a["gender_probabilities"] == pytest.approx(b["gender_probabilities"], abs=1e-4)
    # the ONNX file's metadata is checked as a checkpoint's
    onnx_p = prediction_models.OnnxPredictor(ck.with_suffix(".onnx"))
    assert onnx_p.genders == GENDERS and onnx_p.age_groups == GROUPS
