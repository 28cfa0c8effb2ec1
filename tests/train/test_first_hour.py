"""A new user's first hour with the training CLI: flags that act or are refused for each task,
small dry runs, missing weights and detectors found before the data is read, defaults stated in
--help, and progress lines in a log."""
from __future__ import annotations

import io
from pathlib import Path
import sys
from types import SimpleNamespace

import pytest
import torch
import torchvision

from gender_age.core import runtime
from gender_age.data import loading
from gender_age.data import selection, sources
from gender_age.nets.models import default_input_geometry
from gender_age.train import cli as gac
from gender_age.train import config
from gender_age.train import pretrained
from conftest import make_folder_dataset
from helpers import make_sources, source_args

FAST = ["--no-progress", "--workers", "0", "-b", "4", "--arch", "resnet18", "--resize", "40", "--crop", "32",
        "--ema-epochs", "0", "-sgd", "--framing-sample", "0"]
TASKS = ("gender", "age", "exact-age", "age-gender")
ALL = TASKS
ORDINAL = ("exact-age", "age-gender")
# every training flag -> the tasks it acts for (with each task's default data); a flag added to the
# parser must be entered here, with a decision
ACTS = {
    "age": ("age",), "task": ALL, "batch_size": ALL, "epochs": ALL, "sgd": ALL, "lr": ALL, "lr_step": ALL,
    "lr_gamma": ALL, "weight_decay": ALL, "aug": ALL, "arch": ALL, "resize": ALL, "crop": ALL,
    "optimizer": ALL, "schedule": ALL, "dropout": ALL, "ema_epochs": ALL, "tta": ALL, "init_from": ALL,
    "label_smoothing": ("gender", "age"), "mixup": ("gender", "age"),
    "recipe": ORDINAL, "loss": ORDINAL, "imp_weight": ORDINAL, "bias_init": ORDINAL, "ce_mode": ORDINAL,
    "dataset": ("gender", "age", "exact-age"), "data_dir": ("gender", "age", "exact-age"),
    # the gender task reads these with --dataset utkface only (test_gender_utkface_flags_act)
    "image_dir": ("exact-age",), "random_split": ("exact-age",),
    "min_age": ORDINAL, "max_age": ORDINAL,
    "train_csv": ("exact-age",), "test_csv": ("exact-age",), "path_column": ("exact-age",),
    "age_column": ("exact-age",), "csv_age_offset": ("exact-age",),
    "source": ("age-gender",), "age_groups": ("age-gender",), "gender_weight": ("age-gender",),
    "age_weight": ("age-gender",), "pretrained": ALL, "max_per_class": ALL,
    "checkpoint_dir": ALL, "val_split": ALL, "seed": ALL, "split_seed": ALL, "device": ALL, "workers": ALL,
    "threads": ALL, "cache": ALL, "amp": ALL, "eval_every": ALL, "save_every": ALL, "resume": ALL,
    "test_only": ALL, "eval_split": ALL, "strict": ALL, "dry_run": ALL, "no_progress": ALL, "overwrite": ALL,
    "resume_anyway": ALL, "face_chips": ALL, "chip_margin": ALL, "chip_template": ALL, "no_face": ALL, "chip_cache": ALL,
    "framing_sample": ALL, "grey": ALL,
}
VALUES = {"source": "utkface=somewhere", "age_groups": "a=0-20,b=21-", "resume": "somewhere.tar"}


def flag_argv(action) -> list[str]:
    """The flag of ``action`` with a value it takes."""
    flag = action.option_strings[-1] if action.dest != "amp" else "--amp"
    if action.nargs == 0:
        return [flag]
    if action.dest in VALUES:
        return [flag, VALUES[action.dest]]
    if action.choices:
        return [flag, str(next((c for c in action.choices if c != action.default), action.choices[0]))]
    return [flag, {int: "1", float: "0.5"}.get(action.type, "somewhere")]


def training_actions():
    return [a for a in gac.get_args_parser()._actions if a.dest != "help"]


def test_every_flag_has_a_decision():
    assert set(ACTS) == {a.dest for a in training_actions()}


@pytest.fixture
def no_data(monkeypatch):
    """Fails a test that reads any data."""
    def refuse(*a, **k):
        raise AssertionError("data read")
    monkeypatch.setattr(selection, "select_samples", refuse)


@pytest.mark.parametrize("task", TASKS)
def test_each_flag_acts_or_is_refused(task, no_data, capsys, tmp_path):
    for action in training_actions():
        argv = flag_argv(action) + ([] if action.dest == "task" else ["--task", task])
        given = config.flags_on_command_line(gac.get_args_parser(), argv)
        if task in ACTS[action.dest]:
            config.check_task_flags(given, task, None)  # no error
            continue
        assert gac.cli(argv + ["--checkpoint-dir", str(tmp_path / "run")]) == 2, action.dest
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and action.option_strings[0] in err and task in err, err


def test_gender_utkface_flags_act():
    for dest in ("image_dir", "random_split", "min_age", "max_age"):
        config.check_task_flags({dest, "dataset"}, "gender", "utkface")
        with pytest.raises(config.ArgumentError, match="--dataset utkface"):
            config.check_task_flags({dest}, "gender", "imagefolder")


def test_max_per_class_acts_for_age_gender(tmp_path):
    d = make_sources(tmp_path)
    sel = selection.select_samples(source_args(d, max_per_class=1, val_split=0.0), "age-gender")
    for split in (sel.train, sel.test):
        keys = [selection.source_gender_group(t) for t in split.targets]
        assert len(keys) == len(set(keys)) > 1  # one image per source, gender and age group


def test_dry_run_selection_is_capped(tmp_path, monkeypatch):
    assert sum(selection.DRY_RUN_IMAGES.values()) <= 400  # a few hundred images at most
    monkeypatch.setattr(selection, "DRY_RUN_IMAGES", {"train": 5, "val": 2, "test": 3})
    d = make_sources(tmp_path)
    sel = selection.select_samples(source_args(d, dry_run=True), "age-gender")
    assert (len(sel.train), len(sel.val), len(sel.test)) == (5, 2, 3)


def test_dry_run_decodes_at_most_the_cap(tmp_path, monkeypatch, capsys):
    data = make_folder_dataset(tmp_path / "data", n_train=12, n_test=6, predict=0)  # 36 images
    monkeypatch.setattr(selection, "DRY_RUN_IMAGES", {"train": 8, "val": 2, "test": 4})
    seen = []
    real = loading.decode_resized
    monkeypatch.setattr(loading, "decode_resized", lambda path, size: seen.append(path) or real(path, size))
    assert gac.cli([*FAST, "--data-dir", str(data), "--checkpoint-dir", str(tmp_path / "run"), "--dry-run",
                    "--val-split", "0.2"]) == 0
    assert 0 < len(seen) <= 14, len(seen)


class Offline:
    """torchvision's ImageNet weights enum of a machine without network (counts the fetches)."""
    url = "https://download.pytorch.org/models/resnet18-f37072fd.pth"

    def __init__(self, state=None):
        self.state, self.calls = state, 0

    def get_state_dict(self, **kw):
        self.calls += 1
        if self.state is None:
            raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")
        return self.state


def test_pretrained_offline_fails_before_the_data(tmp_path, monkeypatch, capsys, no_data):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(pretrained, "imagenet_weights", lambda arch: Offline())
    assert gac.cli([*FAST, "--pretrained", "imagenet", "--checkpoint-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "resnet18-f37072fd.pth" in err and "--pretrained PATH" in err and len(err.strip().splitlines()) == 1


def test_resume_does_not_fetch_pretrained_again(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    online = Offline(torchvision.models.resnet18().state_dict())
    monkeypatch.setattr(pretrained, "imagenet_weights", lambda arch: online)
    run = ["--data-dir", str(tiny_data), "--checkpoint-dir", str(tmp_path / "run"), "--save-every", "1"]
    assert gac.cli([*FAST, *run, "--pretrained", "imagenet", "-ep", "1"]) == 0
    assert online.calls >= 1
    offline = Offline()
    monkeypatch.setattr(pretrained, "imagenet_weights", lambda arch: offline)
    assert gac.cli([*FAST, *run, "--resume", "-ep", "2"]) == 0
    assert offline.calls == 0


def test_missing_mtcnn_names_what_works_for_training(tiny_data, tmp_path, monkeypatch, capsys, no_data):
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)  # its import fails
    assert gac.cli([*FAST, "--data-dir", str(tiny_data), "--checkpoint-dir", str(tmp_path / "run"),
                    "--face-chips", "aligned"]) == 2
    err = capsys.readouterr().err
    assert "pip install --no-deps facenet-pytorch==2.6.0" in err and "--face-chips off" in err
    assert "--detector" not in err and len(err.strip().splitlines()) == 1


def shown(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def test_help_states_each_tasks_defaults():
    parser = gac.get_args_parser()
    assert "age-gender" in parser.description
    helps = {a.dest: " ".join(a.help.split()) for a in parser._actions}
    original, cpu = {**config.RECIPES["original"]}, config.RECIPES["cpu"]
    original["resize"], original["crop"] = default_input_geometry(original["arch"])
    age_gender = {**cpu, **config.AGE_GENDER["cpu"]}
    for key in ("epochs", "resize", "crop", "batch_size", "lr", "arch", "dropout", "ema_epochs", "schedule"):
        assert f"gender, age: {shown(original[key])}" in helps[key], key
        assert f"exact-age: {shown(cpu[key])}" in helps[key], key
        assert f"age-gender: {shown(age_gender[key])}" in helps[key], key
    assert f"age-gender: {shown(config.AGE_GENDER_CHIP_MARGIN)}" in helps["chip_margin"]
    for key in ("min_age", "max_age"):
        assert "1-116" in helps[key] and "21-60" in helps[key]


def test_preparation_reports_progress_in_a_log(tmp_path, monkeypatch):
    data = make_folder_dataset(tmp_path / "data", n_train=25, n_test=1, predict=0)  # 50 training images
    log = io.StringIO()  # not a terminal
    monkeypatch.setattr(sys, "stderr", log)
    mode = runtime.progress_mode(False, 0)
    assert mode == "lines"
    samples = selection.scan_image_folder(data / "train")
    loading.CachedImages(samples, 16, 0, mode)
    lines = log.getvalue().splitlines()
    assert len(lines) >= 3 and all("images/s" in line for line in lines), lines
    assert "50/50" in lines[-1] and any("16/50" in line for line in lines)


def test_progress_lines_at_least_every_interval():
    out = io.StringIO()
    meter = runtime.ProgressLines(1000, "face chips", every_s=0.0, stream=out)
    meter.update(1)
    meter.update(1)  # under 10% each, but the interval passed
    assert out.getvalue().count("/1000 images") == 2 and "2/1000" in out.getvalue()


def test_an_age_gender_dry_run_hashes_only_a_few_images_per_source(tmp_path, monkeypatch):
    """The leakage checks (bytes and thumbnails) read every image they compare: a dry run thins each
    source's lists before them, to DRY_RUN_PER_SOURCE training and a quarter of it test images."""
    d = make_sources(tmp_path)
    monkeypatch.setattr(sources, "DRY_RUN_PER_SOURCE", 4)
    hashed = []
    real = sources.file_digest
    monkeypatch.setattr(sources, "file_digest", lambda p: hashed.append(p) or real(p))
    train, val, test, *_ = sources.select(source_args(d, dry_run=True), log=lambda _: None)
    assert len(train) + len(val or []) <= 3 * 4 and len(test) == 3 * 1
    assert 0 < len(hashed) <= 3 * 4 + 3 * 1
    full = sources.select(source_args(d), log=lambda _: None)
    assert len(full[0]) + len(full[1]) > 3 * 4  # the folders hold more than a dry run takes


def test_age_group_folders_match_their_groups_whatever_the_case(tmp_path):
    d = make_sources(tmp_path)
    for split in ("train", "test"):
        for name in ("old", "young"):
            (d["a"] / split / name).rename(d["a"] / split / name.upper())
    train, val, test, *_ = sources.select(source_args(d, val_split=0), log=lambda _: None)
    groups = {Path(p).parent.name: t[3] for p, t in zip(train.paths + test.paths, train.targets + test.targets)
              if t[2] == 2}
    assert groups == {"OLD": 1, "YOUNG": 0}  # age_groups.DEFAULT is young, old


def test_training_warns_of_an_age_group_outside_the_trained_ages(tmp_path):
    d = make_sources(tmp_path)
    two = [f"utkface={d['utk']}", f"gender={d['g']}"]  # the age-group tree's folders are young and old
    said = []
    sources.select(source_args(d, source=two, min_age=21, max_age=60, age_groups="child=0-12,adult=13-"), log=said.append)
    assert [line for line in said if line.startswith("warning:")] == [
        "warning: age group child=0-12 lies outside the trained ages 21-60: no face will be put in it"]
    said.clear()
    sources.select(source_args(d, source=two, min_age=5, max_age=60, age_groups="child=0-12,adult=13-"), log=said.append)
    assert not [line for line in said if line.startswith("warning:")]
