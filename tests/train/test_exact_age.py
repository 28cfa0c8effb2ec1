"""Exact age: label parsing (real quirks), metrics, and an ordinal training run."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from gender_age.train import cli as gac
from gender_age.nets import heads as losses
from gender_age.core.checkpointing import load_checkpoint
from conftest import make_image
from gender_age.train.tasks import OrdinalTask
from helpers import checkpoint_logits, decode, ordinal_rank
from gender_age.data import samples
from helpers import age_csvs  # noqa: F401

LIGHT = ["--arch", "resnet18", "--resize", "40", "--crop", "32", "--no-progress", "--workers", "0", "-b", "8"]


@pytest.mark.parametrize("name,age", [
    ("29_1_3_20170104235317706.jpg.chip.jpg", 29),
    ("39_1_20170116174525125.jpg.chip.jpg", 39),         # no gender field
    ("24_0_1_20170116220224657 .jpg.chip.jpg", 24),      # a space before the extension
    ("1_0_0_20161219140623097.jpg.chip.jpg", 1),
    ("116_1_0_20170120134921760.jpg.chip.jpg", 116),
])
def test_utkface_names(name, age):
    assert samples.parse_utkface_name(name) == age


@pytest.mark.parametrize("bad", ["x_1_2_3.jpg", "_1.jpg", "999_0_0_1.jpg"])
def test_utkface_bad_names(bad):
    with pytest.raises(ValueError):
        samples.parse_utkface_name(bad)


@pytest.mark.parametrize("name,age", [
    ("113158_1957-10-25_2007.jpg", 49),   # birthday in the second half: 2007 - 1957 - 1
    ("113296_1953-05-11_2010.jpg", 57),   # first half: 2010 - 1953
    ("nm0000100_rm46373120_1955-1-12_2003.jpg", 48),
])
def test_imdb_wiki_names(name, age):
    assert samples.parse_imdb_wiki_name(name) == age


def test_imdb_wiki_bad_names():
    for bad in ("face.jpg", "1_19xx-01-01_2000.jpg", "1_2010-01-01_1900.jpg"):
        with pytest.raises(ValueError):
            samples.parse_imdb_wiki_name(bad)


def test_csv_with_missing_and_bad_rows_is_reported_not_fatal(tmp_path):
    for i in range(3):
        make_image(tmp_path / "img" / f"{i}.jpg", 0, i)
    path = tmp_path / "ages.csv"
    path.write_text(",file,age\n0,0.jpg,5\n1,1.jpg,not-a-number\n2,missing.jpg,7\n3,,8\n4,2.jpg,9.0\n5,2.jpg,3.5\n")
    out = samples.ages_from_csv(path, tmp_path / "img", age_offset=21)
    assert out.ages == [26, 30] and [p.split("/")[-1] for p in out.paths] == ["0.jpg", "2.jpg"]
    reasons = [r for _, r in out.problems]
    assert len(reasons) == 4 and "bad age 'not-a-number'" in reasons[0] and "missing image" in reasons[1]
    with pytest.raises(samples.DatasetError, match="needs columns"):
        samples.ages_from_csv(path, tmp_path / "img", path_column="path")


def test_to_ranks_drops_out_of_range_ages():
    s = samples.to_ranks(samples.AgeSamples(["a", "b", "c"], [20, 21, 60]), 21, 59, "t")
    assert s.paths == ["b"] and s.targets == [0] and len(s.classes) == 39
    assert s.skipped == [("a", "age 20 outside 21-59"), ("c", "age 60 outside 21-59")]


def test_ordinal_metrics_by_hand():
    task = OrdinalTask("coral", num_ranks=4, min_age=10)
    # CORAL predicts the number of positive logits: ranks 3, 0, 2
    logits = torch.tensor([[5.0, 5.0, 5.0], [-5.0, -5.0, -5.0], [5.0, 5.0, -5.0]])
    y = torch.tensor([3, 3, 0])
    m = task.metrics(task.stats(logits, y))
    # errors 0, 3, 2 -> MAE 5/3, RMSE sqrt(13/3), all within 5 years
    assert m["mae"] == pytest.approx(5 / 3) and m["rmse"] == pytest.approx((13 / 3) ** 0.5)
    assert m["cs5"] == 1.0 and m["n"] == 3
    assert task.is_better(1.0, 2.0) and not task.is_better(3.0, 2.0)


@pytest.mark.parametrize("loss", ["coral", "corn", "ordinal", "ce"])
def test_exact_age_training_run(age_csvs, tmp_path, loss, capsys):
    out = tmp_path / "out"
    argv = ["--task", "exact-age", "--loss", loss, "--data-dir", str(age_csvs), "--checkpoint-dir", str(out),
            "-ep", "2", "--eval-every", "1", "--seed", "1", *LIGHT]
    if loss == "coral":
        argv += ["--imp-weight", "1"]
    assert gac.cli(argv) == 0
    text = capsys.readouterr().out
    assert "ages 21-56 (36 ranks)" in text and "MAE" in text
    ckpt = load_checkpoint(out / "model_best.tar")
    assert ckpt["task"] == "exact-age"
    assert ckpt["ordinal"] == {"loss": loss, "min_age": 21, "num_ranks": 36, "ce_mode": "expectation"}
    assert ckpt["model_args"]["head"] == loss
    assert ckpt["best"]["metric"] == "mae"
    result = json.loads((out / "test_results.json").read_text())
    assert set(result["test"]) >= {"mae", "rmse", "cs5"} and result["test"]["n"] == 6
    rows = list(csv.DictReader(open(out / "test_predictions.csv")))
    assert len(rows) == 6 and len([k for k in rows[0] if k.startswith("p_")]) == 36
    # each prediction is 21 + the rank the saved model's logits for that image decode to, computed here
    files = decode([r["file"] for r in rows], ckpt["preprocess"]["resize"])
    logits = checkpoint_logits(ckpt, files, amp=ckpt["args"]["amp"])
    expected = 21 + ordinal_rank(logits, loss, ckpt["ordinal"]["ce_mode"]).double()
    assert [float(r["predicted_age"]) for r in rows] == pytest.approx(expected.tolist(), abs=0.006)
    for r in rows:
        assert sum(float(r[k]) for k in r if k.startswith("p_")) == pytest.approx(1, abs=1e-3)
    mae = sum(abs(float(r["predicted_age"]) - int(r["true_age"])) for r in rows) / 6
    assert mae == pytest.approx(result["test"]["mae"], abs=0.02)
    for name in ("mae.png", "test_scatter.png", "metrics.jsonl", "loss.png"):
        assert (out / name).is_file(), name


@pytest.mark.parametrize("bias_init", ["prior", "default"])
def test_bias_init_flag(age_csvs, tmp_path, bias_init, monkeypatch):
    # the head's bias as training starts: the label prior, or CORAL's own (K-1..1)/(K-1)
    seen = {}
    real_step = torch.optim.AdamW.step

    def first_step(self, *a, **k):
        seen.setdefault("bias", [p.detach().clone() for g in self.param_groups for p in g["params"]
                                 if p.shape == (35,)])
        return real_step(self, *a, **k)
    monkeypatch.setattr(torch.optim.AdamW, "step", first_step)
    out = tmp_path / "out"
    assert gac.cli(["--task", "exact-age", "--loss", "coral", "--data-dir", str(age_csvs), "--checkpoint-dir",
                    str(out), "-ep", "1", "--optimizer", "adamw", "--bias-init", bias_init, *LIGHT]) == 0
    (bias,) = seen["bias"]
    if bias_init == "default":
        torch.testing.assert_close(bias, torch.arange(35, 0, -1).float() / 35)
    else:
        # training ages 26, 31, 36, 46, 51, 56 (ranks 5, 10, 15, 25, 30, 35; 21 and 41 are all in test):
        # the bias alone must give those ranks more probability than ranks never seen
        assert bias[0] > 2 and bias[-1] < -1
        probs = losses.rank_probabilities(bias.unsqueeze(0), "coral")[0]
        assert min(probs[r] for r in (5, 10, 15, 25, 30, 35)) > 1.5 * max(probs[r] for r in (1, 2, 20, 21))


def test_exact_age_random_split_and_range_flags(age_csvs, tmp_path, capsys):
    out = tmp_path / "o"
    assert gac.cli(["--task", "exact-age", "--data-dir", str(age_csvs), "--checkpoint-dir", str(out), "-ep", "1",
                    "--random-split", "0.25", "--min-age", "20", "--max-age", "60", *LIGHT]) == 0
    assert "ages 20-60 (41 ranks)" in capsys.readouterr().out


def test_exact_age_from_imdb_wiki_names(tmp_path, capsys):
    for split, n in (("train", 6), ("test", 2)):
        for i in range(n):
            make_image(tmp_path / "d" / split / "x" / f"{i}_19{60 + i}-03-01_2000.jpg", 0, i)
    (tmp_path / "d" / "train" / "x" / "nolabel.jpg").write_bytes(b"")
    out = tmp_path / "o"
    assert gac.cli(["--task", "exact-age", "--dataset", "imdb-wiki", "--data-dir", str(tmp_path / "d"),
                    "--checkpoint-dir", str(out), "-ep", "1", *LIGHT]) == 0
    text = capsys.readouterr().out
    assert "ages 35-40" in text and "1 row(s) or file name(s) without a usable label" in text
    lines = (out / "label_problems.csv").read_text().splitlines()
    assert len(lines) == 2 and "nolabel.jpg" in lines[1]


def test_exact_age_csv_dataset_needs_both_files(tmp_path, capsys):
    assert gac.cli(["--task", "exact-age", "--dataset", "csv", "--checkpoint-dir", str(tmp_path), *LIGHT]) == 2
    assert "needs --train-csv and --test-csv" in capsys.readouterr().err


def test_real_utkface_split_parses(shared_data):
    """The paper's CSV split on the real UTKFace folder: every row resolves."""
    base = shared_data / "utkface"
    train = samples.ages_from_csv(base / "utk_train.csv", base / "UTKFace", age_offset=21)
    test = samples.ages_from_csv(base / "utk_test.csv", base / "UTKFace", age_offset=21)
    assert (len(train.paths), len(test.paths)) == (13147, 3287)
    assert min(train.ages) == 21 and max(train.ages) == 60 and not train.problems
    every = samples.ages_from_names(base / "UTKFace", "utkface")
    assert len(every.paths) == 23707 and not every.problems


def test_bench_age_runs_each_loss_with_one_recipe(age_csvs, tmp_path):
    from benchmarks import bench_age
    out = tmp_path / "bench"
    extra = ["--data-dir", str(age_csvs), "-ep", "1", "-b", "8", "--resize", "40", "--crop", "32", "--workers", "0"]
    # a row of an earlier run of another loss, which a run of one loss must keep
    out.mkdir()
    earlier = {"loss": "ce", "command": "python gender_age_classifier.py --loss ce", "minutes": 1.0,
               "test": {"mae": 9.0, "rmse": 10.0, "cs5": 0.1}, "epoch": 1, "val_mae": 9.5}
    (out / "results.json").write_text(json.dumps([earlier]))
    # in-process (the loss runs as its own training subprocess, as in a real benchmark)
    rows = bench_age.main(bench_age.get_args_parser().parse_args(["--losses", "coral", "--out", str(out), "--", *extra]))
    assert rows == json.loads((out / "results.json").read_text())
    assert [r["loss"] for r in rows] == ["ce", "coral"] and rows[0] == earlier  # LOSSES order, earlier row kept
    coral = rows[1]
    saved = json.loads((out / "coral" / "test_results.json").read_text())
    assert "error" not in coral and coral["test"]["mae"] == saved["test"]["mae"] and coral["minutes"] > 0
    recipe = " ".join(bench_age.RECIPE)
    assert recipe in coral["command"] and coral["command"].index(recipe) < coral["command"].index("--resize 40")
    md = (out / "results.md").read_text()
    assert md.count("\n| co") == 1 and "| ce | 9.000 |" in md and "| test MAE |" in md


@pytest.mark.parametrize("name, gender", [
    ("29_1_3_20170104235317706.jpg.chip.jpg", "female"),
    ("24_0_1_20170116220224657 .jpg.chip.jpg", "male"),
])
def test_utkface_gender_names(name, gender):
    assert samples.parse_utkface_gender(name) == gender


@pytest.mark.parametrize("bad", ["39_1_20170116174525125.jpg.chip.jpg", "29_2_3_20170104235317706.jpg.chip.jpg",
                                 "face.jpg"])
def test_utkface_gender_bad_names(bad):
    with pytest.raises(ValueError):
        samples.parse_utkface_gender(bad)


def test_gender_task_on_utkface_names(age_csvs, tmp_path, capsys):
    # the fixture's 24 faces are female for odd i, male for even i, ages 21-56; one has no gender field
    make_image(age_csvs / "UTKFace" / "39_1_20170116174525125.jpg.chip.jpg", 0, 99)
    every = samples.genders_from_utkface(age_csvs / "UTKFace", min_age=26, max_age=51)
    assert every.classes == ["female", "male"] and len(every) == 18  # ages 26-51: 6 of the 8 ages, 3 each
    assert all(samples.parse_utkface_gender(Path(p).name) == every.classes[t] for p, t in zip(every.paths, every.targets))
    assert [s for s in every.skipped if "39_1_2017" in s[0]]
    out = tmp_path / "o"
    assert gac.cli(["--dataset", "utkface", "--data-dir", str(age_csvs), "--checkpoint-dir", str(out), "-ep", "1",
                    "--random-split", "0.25", "--val-split", "0.2", *LIGHT]) == 0
    text = capsys.readouterr().out
    assert "gender: 2 classes ['female', 'male']" in text and "train 14, val 4, test 6" in text
    assert load_checkpoint(out / "model_best.tar")["classes"] == ["female", "male"]
    assert "39_1_2017" in (out / "label_problems.csv").read_text()
    # the age-group task has no UTKFace labels; exact age has no class folders
    assert gac.cli(["-a", "--dataset", "utkface", "--checkpoint-dir", str(out), *LIGHT]) == 2
    assert gac.cli(["--task", "exact-age", "--dataset", "imagefolder", "--checkpoint-dir", str(out), *LIGHT]) == 2
    err = capsys.readouterr().err
    assert "labels exact ages" in err and "exact age needs ages" in err
