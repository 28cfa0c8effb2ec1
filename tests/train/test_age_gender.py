"""--task age-gender: masked two-head loss, several sources, leakage, age groups, --pretrained, a run."""
from __future__ import annotations

import csv
import json
import urllib.error
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gender_age.data import age_groups
from gender_age.train import cli as gac
from gender_age.train import losses
from gender_age.train import pretrained
from gender_age.data import sources
from gender_age.core.checkpointing import CheckpointError, load_checkpoint
from gender_age.nets.models import build_model
from gender_age.data.samples import DatasetError
from gender_age.data.samples import MISSING
from gender_age.train.tasks import AgeGenderTask, OrdinalTask
from helpers import LIGHT, make_sources, source_args  # noqa: F401


def make_task(k=5, gw=1.0, aw=1.0):
    return AgeGenderTask(["female", "male"], OrdinalTask("ordinal", k, 20), gw, aw)


def test_loss_masks_missing_labels():
    task, g = make_task(), torch.Generator().manual_seed(0)
    logits = torch.randn(4, 2 + 4, generator=g)
    y = torch.tensor([[0, 1, 0, -1], [1, MISSING, 0, -1], [MISSING, 3, 1, 0], [MISSING, MISSING, 2, 1]])
    ref = task.loss(logits, y)
    changed = logits.clone()
    changed[1, 2:] += 5.0  # image 1 has no age: its age outputs do not count
    changed[2, :2] -= 3.0  # image 2 has no gender
    changed[3] *= 7.0      # image 3 has neither
    assert torch.allclose(task.loss(changed, y), ref)
    # known values: each head's mean over the images that carry its label
    gender = F.cross_entropy(logits[[0, 1], :2], torch.tensor([0, 1]))
    age = losses.compute_loss("ordinal", logits[[0, 2], 2:], torch.tensor([1, 3]), 5)
    assert torch.allclose(ref, gender + age)
    assert torch.allclose(make_task(gw=3.0, aw=0.5).loss(logits, y), 3.0 * gender + 0.5 * age)


def test_loss_of_a_batch_without_one_kind_of_label_has_a_gradient():
    task = make_task()
    logits = torch.randn(3, 6, requires_grad=True)
    y = torch.tensor([[0, MISSING, 0, -1], [1, MISSING, 0, -1], [0, MISSING, 0, -1]])
    task.loss(logits, y).backward()
    assert logits.grad[:, 2:].abs().sum() == 0 and logits.grad[:, :2].abs().sum() > 0


def test_stats_and_metrics_known_values():
    task = make_task(k=5)
    # gender logits favour female, male, male; age head: all thresholds passed -> rank 4, none -> rank 0
    big = 10.0
    logits = torch.tensor([[big, -big] + [big] * 4, [-big, big] + [-big] * 4, [-big, big] + [big] * 4])
    y = torch.tensor([[0, 4, 0, -1], [0, 2, 0, -1], [MISSING, MISSING, 1, 0]])
    m = task.metrics(task.stats(logits, y))
    assert m["acc"] == pytest.approx(0.5) and m["n_gender"] == 2   # right, wrong; the third has no gender
    assert m["mae"] == pytest.approx(1.0) and m["n_age"] == 2      # errors 0 and 2
    assert m["rmse"] == pytest.approx(2 ** 0.5) and m["cs5"] == pytest.approx(1.0)
    assert m["n"] == 3  # every image, whichever labels it has


@pytest.mark.parametrize("text,expected", [
    ("young=0-38,old=39-", [("young", 0, 38), ("old", 39, 130)]),
    ("a=0-2, b=4-6", [("a", 0, 2), ("b", 4, 6)]),
])
def test_age_groups_parse(text, expected):
    groups = age_groups.parse(text)
    assert [(g["name"], g["min"], g["max"]) for g in groups] == expected
    assert age_groups.group_of(38.4, age_groups.parse("young=0-38,old=39-")) == "young"
    assert age_groups.group_of(38.6, age_groups.parse("young=0-38,old=39-")) == "old"
    assert age_groups.group_of(3.0, age_groups.parse("a=0-2,b=4-6")) is None


@pytest.mark.parametrize("bad", ["young", "young=0-38,old=30-", "x=5-1", "=0-3", "a=0-3,a=5-9", "a=x-3"])
def test_age_groups_refused(bad):
    with pytest.raises(age_groups.AgeGroupError):
        age_groups.parse(bad)


def utkface_test_split(d: dict) -> tuple[set, set]:
    """(the CORAL test CSV's names, the other UTKFace names that the all-ages rule holds out)."""
    coral_test = {row[1] for row in list(csv.reader(open(d["utk"] / "utk_test.csv")))[1:]}
    return coral_test, {p.name for p in (d["utk"] / "UTKFace").iterdir()
                        if p.name not in coral_test and sources.held_out(p.name)}


def test_sources_labels_splits_and_leakage(tmp_path):
    d = make_sources(tmp_path)
    said = []
    train, val, test, classes, names, problems = sources.select(source_args(d), log=said.append)
    every = {p: t for s in (train, val) for p, t in zip(s.paths, s.targets)}
    assert str(d["leak"]) not in every                      # same bytes as a test image: dropped
    assert said == ["sources: dropped 1 training image(s) whose content equals a test image's and 0 near-copies "
                    "of a test image (thumbnail correlation >= 0.99)"]
    assert classes[0] == "5" and classes[-1] == "70"         # the training ages' range
    lo = 5
    by_name = {Path(p).name: t for p, t in every.items()}
    # UTKFace: gender and age from the name; the name without a gender field keeps its age
    assert by_name["39_1_20170116174525125.jpg.chip.jpg"] == (MISSING, 39 - lo, 0, MISSING)
    assert next(t for n, t in by_name.items() if n.startswith("30_0_"))[:3] == (1, 30 - lo, 0)  # 0: male
    # gender tree: folder gender, no age to train on; age-group tree: no gender, its group index
    for gender, folder in enumerate(("female", "male")):  # the same file name in both folders: each its own gender
        assert every[str(d["g"] / "train" / folder / "101_1990-03-01_2015.jpg")] == (gender, MISSING, 1, MISSING)
    assert by_name["200_1960-03-01_2014.jpg"] == (MISSING, MISSING, 2, 1)  # old is group 1 of young, old
    assert by_name["no_age_name.jpg"] == (MISSING, MISSING, 2, 1) and problems == []  # the folder is the label
    # their test images keep the name's age (2015 - 1990, 2014 - 1960), for the per-source figures
    tests = {Path(p).parent.name + "/" + Path(p).name: t for p, t in zip(test.paths, test.targets)}
    assert tests["male/100_1990-03-01_2015.jpg"] == (1, 25 - lo, 1, MISSING)
    assert tests["old/200_1960-03-01_2014.jpg"] == (MISSING, 54 - lo, 2, 1)
    # the CORAL test CSV is UTKFace's test split; each source's test folders join it
    # ... and the UTKFace images in neither CORAL CSV whose name the all-ages rule holds out
    coral_test, held = utkface_test_split(d)
    assert len(coral_test) == 4 and len(held) > 0
    assert sorted({t[2] for t in test.targets}) == [0, 1, 2]
    assert sum(t[2] == 0 for t in test.targets) == len(coral_test) + len(held)
    assert not set(test.paths) & set(every)
    # validation: a share of every source
    assert {t[2] for t in val.targets} == {0, 1, 2}
    assert names["genders"] == ["female", "male"] and [s["kind"] for s in names["sources"]] == list(sources.KINDS)


def test_sources_refuse_bad_trees(tmp_path):
    d = make_sources(tmp_path)
    with pytest.raises(DatasetError, match="not genders"):
        sources.select(source_args(d, source=[f"gender={d['a']}"]))
    with pytest.raises(DatasetError, match="not among the --age-groups"):
        sources.select(source_args(d, source=[f"age-groups={d['g']}"]))
    with pytest.raises(DatasetError, match="KIND=DIR"):
        sources.select(source_args(d, source=["faces=x"]))
    with pytest.raises(DatasetError, match="each kind once"):
        sources.select(source_args(d, source=[f"gender={d['g']}", f"gender={d['g']}"]))


def test_ages_outside_the_range_keep_their_gender(tmp_path):
    d = make_sources(tmp_path)
    train, val, *_ = sources.select(source_args(d, min_age=20, max_age=60, val_split=0))
    by_name = {Path(p).name: t for p, t in zip(train.paths, train.targets)}
    seventy = next(t for n, t in by_name.items() if n.startswith("70_"))
    assert seventy[1] == MISSING and seventy[0] == 0  # UTKFace's gender 1 is female, index 0 of female, male


def test_pretrained_from_a_file(tmp_path):
    from torchvision.models import resnet18
    torch.manual_seed(1)
    source = resnet18(weights=None)
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    model = build_model("resnet18", 0, 0.0, head="ordinal", num_ranks=5, genders=2)
    said = pretrained.load_pretrained(model, str(tmp_path / "r18.pth"), "resnet18")
    assert "resnet18 trunk" in said
    for k, v in source.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(model.trunk.state_dict()[k], v), k
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="do not fit"):
        pretrained.load_pretrained(model, str(tmp_path / "bad.pth"), "resnet18")
    with pytest.raises(CheckpointError, match="no such file"):
        pretrained.load_pretrained(model, str(tmp_path / "none.pth"), "resnet18")
    with pytest.raises(CheckpointError, match="starts a ResNet"):
        pretrained.load_pretrained(build_model("levi_hassner", 2), str(tmp_path / "r18.pth"), "levi_hassner")


def test_pretrained_imagenet_offline_names_the_file(monkeypatch, tmp_path):
    class Offline:
        url = "https://download.pytorch.org/models/resnet18-f37072fd.pth"

        def get_state_dict(self, **kw):
            raise urllib.error.URLError("no network")
    monkeypatch.setattr(pretrained, "imagenet_weights", lambda arch: Offline())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    model = build_model("resnet18", 0, 0.0, head="ordinal", num_ranks=5, genders=2)
    with pytest.raises(CheckpointError) as e:
        pretrained.load_pretrained(model, "imagenet", "resnet18")
    assert str(tmp_path / "th" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in str(e.value)


def test_age_gender_run_reports_each_source_and_evaluates_again(tmp_path):
    d = make_sources(tmp_path)
    out = tmp_path / "run"
    argv = ["--task", "age-gender", *sum((["--source", s] for s in source_args(d).source), []),
            "--checkpoint-dir", str(out), "-ep", "2", "--val-split", "0.25", "--seed", "3", "--split-seed", "1", *LIGHT]
    assert gac.cli(argv) == 0
    result = json.loads((out / "test_results.json").read_text())
    assert set(result["by_source"]) == {"utkface", "gender", "age-groups"}
    assert 0 <= result["timing"]["chips_s"] <= result["timing"]["total_s"]
    coral_test, held = utkface_test_split(d)
    genderless = {n for n in held if n.count("_") < 3}  # the name without a gender field still has an age
    assert result["by_source"]["utkface"]["gender_n"] == 4 + len(held - genderless)
    assert result["by_source"]["utkface"]["age_n"] == 4 + len(held)
    assert result["by_source"]["age-groups"]["group_n"] == 4 and "gender_acc" not in result["by_source"]["age-groups"]
    rows = list(csv.DictReader(open(out / "test_predictions.csv")))
    assert len(rows) == 12 + len(held) and {r["source"] for r in rows} == {"utkface", "gender", "age-groups"}
    for r in rows:  # the group is read off the predicted age
        assert r["age_group"] == age_groups.group_of(float(r["age"]), age_groups.parse(age_groups.DEFAULT))
    right = sum(r["gender"] == r["true_gender"] for r in rows if r["source"] == "gender")
    assert result["by_source"]["gender"]["gender_right"] == right
    ckpt = load_checkpoint(out / "model_best.tar")
    assert ckpt["task"] == "age-gender" and ckpt["genders"] == ["female", "male"]
    assert ckpt["model_args"]["genders"] == 2 and ckpt["ordinal"]["num_ranks"] == len(ckpt["classes"])
    # --test-only takes everything from the checkpoint and gives the same figures
    again = tmp_path / "again"
    assert gac.cli(["--test-only", "--resume", str(out / "model_best.tar"), "--checkpoint-dir", str(again),
                    *sum((["--source", s] for s in source_args(d).source), []), "--no-progress"]) == 0
    assert json.loads((again / "test_results.json").read_text())["by_source"] == result["by_source"]
    # --eval-split val: the run's own validation split (its --split-seed 1 and --val-split 0.25), so its logged figures
    ckpt_epoch = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][ckpt["epoch"] - 1]
    assert gac.cli(["--test-only", "--eval-split", "val", "--resume", str(out / "model_best.tar"), "--checkpoint-dir",
                    str(again), *sum((["--source", s] for s in source_args(d).source), []), "--no-progress"]) == 0
    val = json.loads((again / "val_results.json").read_text())
    assert val["validation"]["loss"] == pytest.approx(ckpt_epoch["val_loss"], abs=1e-5)
    assert val["validation"]["mae"] == pytest.approx(ckpt_epoch["val_mae"], abs=1e-5)
    assert len(list(csv.DictReader(open(again / "val_predictions.csv")))) == val["validation"]["n"]
    # another age-group rule contradicts the checkpoint
    assert gac.cli(["--test-only", "--resume", str(out / "model_best.tar"), "--checkpoint-dir", str(again),
                    "--age-groups", "a=0-20,b=21-", "--no-progress"]) == 2


def test_split_seed_holds_out_the_same_images_whatever_the_seed(tmp_path):
    d = make_sources(tmp_path)
    val_of = lambda **kw: sources.select(source_args(d, **kw), log=lambda _: None)[1].paths
    assert val_of(seed=1, split_seed=0) == val_of(seed=0) == val_of(seed=0, split_seed=None)
    assert val_of(seed=1) != val_of(seed=0)  # without it, the seed draws the split as before


def test_seeded_age_gender_runs_repeat_exactly(tmp_path):
    d = make_sources(tmp_path)
    logs = []
    for name in ("one", "two"):
        out = tmp_path / name
        assert gac.cli(["--task", "age-gender", *sum((["--source", s] for s in source_args(d).source), []),
                        "--checkpoint-dir", str(out), "-ep", "2", "--seed", "3", *LIGHT]) == 0
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        logs.append([{k: v for k, v in r.items() if k not in ("images_per_s", "seconds")} for r in rows])
        logs.append(load_checkpoint(out / "model_best.tar")["model_state"])
    assert logs[0] == logs[2] and len(logs[0]) == 2
    assert all(torch.equal(logs[1][k], logs[3][k]) for k in logs[1])


@pytest.mark.parametrize("argv,key,value", [
    (["--task", "age-gender"], "aug", "strong"), ([], "aug", "original"), (["-a"], "aug", "original"),
    (["--task", "exact-age"], "aug", "original"), (["--task", "age-gender", "--aug", "original"], "aug", "original"),
    (["--task", "age-gender"], "chip_margin", 0.0), (["--face-chips", "aligned"], "chip_margin", 0.25),
    (["--task", "age-gender"], "chip_template", "utkface"), (["--face-chips", "aligned"], "chip_template", "wide"),
    (["--task", "age-gender", "--chip-template", "wide"], "chip_template", "wide"),
    (["--task", "age-gender", "--chip-margin", "0.3"], "chip_margin", 0.3),
    (["--task", "age-gender"], "epochs", 18), (["--task", "age-gender"], "resize", 72),
    (["--task", "age-gender"], "crop", 64),  # the hour on 2 AVX2 cores that the README's results were measured with
    (["--task", "age-gender"], "gender_weight", 8.0), (["--task", "age-gender", "--gender-weight", "2"], "gender_weight", 2.0),
    (["--task", "age-gender"], "grey", 0.2), ([], "grey", 0.0), (["--task", "exact-age"], "grey", 0.0),
    (["--task", "age-gender", "--grey", "0"], "grey", 0.0), (["--task", "age-gender", "--aug", "original"], "grey", 0.0)])
def test_age_gender_recipe_defaults(argv, key, value):
    """Age-gender trains with the strong augmentation, a fifth of it grey, and gender weight 8 (better on its validation) and aligned
    chips cut as UTKFace cut its faces (its template, no margin); the other tasks with the original's
    augmentation and the wide template with 0.25 around it; a given flag wins."""
    from gender_age.train import config as settings
    args = gac.get_args_parser().parse_args(argv)
    settings.resolve_defaults(args, settings.task_name(args))
    assert getattr(args, key) == value


def test_grey_needs_the_strong_augmentation_and_reaches_it(tmp_path, capsys, monkeypatch):
    from gender_age.data import transforms
    d = make_sources(tmp_path)
    given = ["--task", "age-gender", *sum((["--source", s] for s in source_args(d).source), []), *LIGHT]
    assert gac.cli([*given, "--checkpoint-dir", str(tmp_path / "orig"), "--aug", "original", "--grey", "0.2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--grey" in err and "--aug strong" in err
    shares, augment = [], transforms.Preset.train_batch_strong

    def spy(self, batch, generator=None, grey=0.0):
        shares.append(grey)
        return augment(self, batch, generator, grey)

    monkeypatch.setattr(transforms.Preset, "train_batch_strong", spy)
    out = tmp_path / "grey"
    assert gac.cli([*given, "--checkpoint-dir", str(out), "-ep", "1", "--grey", "0.3"]) == 0
    assert shares and set(shares) == {0.3}  # every training batch
    assert load_checkpoint(out / "model_best.tar")["args"]["grey"] == 0.3


def test_a_checkpoint_from_before_grey_resumes_without_it():
    """A run saved before --grey existed turned no image grey: resume must not switch the recipe's 0.2 on."""
    from gender_age.train import config as settings
    ckpt = {"task": "age-gender", "model_args": {"arch": "resnet18", "dropout": 0.0}, "args": {"aug": "strong"}}
    assert settings.checkpoint_settings(ckpt)["grey"] == 0.0
    ckpt["args"]["grey"] = 0.2
    assert settings.checkpoint_settings(ckpt)["grey"] == 0.2
