"""Training policy: which model is the best (each task, both directions, through the trainer),
--tta averaging of the age-gender outputs, every setting a checkpoint fixes adopted by
--test-only and --resume, an exclusive run-folder lock, and a data fingerprint that sees labels."""
from __future__ import annotations

import fcntl
from types import SimpleNamespace

import pytest
import torch

from gender_age.data.samples import SampleSet, DatasetError
from gender_age.data.selection import Selection
from gender_age.data.transforms import Preset
from gender_age.faces.alignment import UTKFACE_TEMPLATE as UTKFACE
from gender_age.train import cli, config, engine, run_folder, trainer
from gender_age.train.tasks import AgeGenderTask, ClassificationTask, OrdinalTask


def tasks():
    ordinal = OrdinalTask("ordinal", 5, 20)
    return {"classification": ClassificationTask(["a", "b"]), "ordinal": ordinal,
            "age-gender": AgeGenderTask(["female", "male"], ordinal)}


@pytest.mark.parametrize("kind,metric,better,worse", [("classification", "acc", 0.8, 0.6),
                                                      ("ordinal", "mae", 3.0, 4.0),
                                                      ("age-gender", "loss", 0.5, 0.9)])
def test_the_best_model_is_chosen_in_the_right_direction(monkeypatch, kind, metric, better, worse):
    task = tasks()[kind]
    assert task.select_metric == metric
    assert task.is_better(better, worse) and not task.is_better(worse, better) and task.is_better(worse, None)
    # through the trainer: a worse epoch after a better one is not the best; a better one is
    ctx = {"task": task, "ema": None, "best": {"value": None, "metric": metric, "epoch": 0}}
    picks, nearly = [], better - 0.01 if metric == "acc" else better + 0.01
    for epoch, value in enumerate((worse, better, worse, nearly), 1):
        val = {"acc": 0.5, "mae": 1.0, "rmse": 1.0, "cs5": 1.0, "n": 1, "loss": 1.0, metric: value}
        monkeypatch.setattr(trainer, "evaluate", lambda *a, v=val, **k: dict(v))
        picks.append(trainer.validate(None, None, {"epoch": epoch}, SimpleNamespace(), ctx)[0])
    assert picks == [True, True, False, False] and ctx["best"]["epoch"] == 2 and ctx["best"]["value"] == better


class ViewModel(torch.nn.Module):
    """Outputs that differ per view: the mean of each image's channels, times fixed weights."""

    def __init__(self, outputs):
        super().__init__()
        self.w = torch.linspace(-2.0, 3.0, outputs)

    def forward(self, x):
        return x.float().mean((1, 2, 3), keepdim=False)[:, None] * self.w + x[:, 0, 0, :4].float().sum(1)[:, None]


@pytest.mark.parametrize("kind", ["ordinal", "age-gender", "classification"])
def test_tta_averages_logits_of_age_heads_and_probabilities_of_classifiers(kind):
    preset, task = Preset(40, 32), tasks()[kind]
    x = torch.randint(0, 255, (3, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    outputs = {"ordinal": 4, "age-gender": 6, "classification": 2}[kind]
    model = ViewModel(outputs)
    ctx = {"preset": preset, "channels_last": False, "task": task}
    got = engine.eval_logits(model, x, SimpleNamespace(tta=True, amp=False), ctx)
    views = model(preset.tta_batch(x).flatten(0, 1)).view(10, 3, -1)
    want = views.softmax(-1).mean(0).log() if kind == "classification" else views.mean(0)
    assert torch.allclose(got, want, atol=1e-5)
    plain = engine.eval_logits(model, x, SimpleNamespace(tta=False, amp=False), ctx)
    assert torch.allclose(plain, model(preset.eval_batch(x)), atol=1e-5)


# written out, not read from config: a key dropped there must fail here
TRAINING = ("recipe", "optimizer", "lr", "lr_step", "lr_gamma", "weight_decay", "schedule", "batch_size", "mixup",
            "aug", "ema_epochs", "label_smoothing", "imp_weight", "val_split", "bias_init", "init_from", "seed",
            "split_seed", "max_per_class", "gender_weight", "age_weight", "pretrained")
DATA = ("dataset", "data_dir", "train_csv", "test_csv", "image_dir", "path_column", "age_column", "csv_age_offset",
        "random_split", "source")
RHYTHM = ("epochs", "eval_every", "save_every", "tta")
MODEL = {"task": "age-gender", "arch": "ckpt-arch", "dropout": 0.37, "resize": 77, "crop": 70, "loss": "corn",
         "ce_mode": "expectation", "min_age": 3, "max_age": 52, "face_chips": "aligned", "chip_margin": 0.11,
         "chip_template": "utkface", "no_face": "skip", "age_groups": "kid=0-12,adult=13-"}


def checkpoint():
    ran = {k: f"ckpt-{k}" for k in TRAINING + DATA + RHYTHM}
    ran.update(no_face="skip", age_groups="kid=0-12,adult=13-")
    return {"task": "age-gender", "args": ran, "model_args": {"arch": "ckpt-arch", "dropout": 0.37},
            "preprocess": {"resize": 77, "crop": 70}, "chips": {"mode": "aligned", "margin": 0.11,
                                                                         "template": [list(p) for p in UTKFACE]},
            "ordinal": {"loss": "corn", "ce_mode": "expectation", "min_age": 3, "num_ranks": 50}}


@pytest.mark.parametrize("test_only", [True, False])
def test_every_fixed_and_data_setting_is_adopted_from_the_checkpoint(tmp_path, test_only):
    args = cli.get_args_parser().parse_args([])
    args.test_only = test_only
    ckpt = checkpoint()
    assert config.adopt_checkpoint(args, ckpt, tmp_path / "m.tar", set()) == "age-gender"
    keys = DATA + (("seed", "split_seed", "max_per_class", "val_split", "tta") if test_only else TRAINING + RHYTHM)
    want = {**{k: f"ckpt-{k}" for k in keys}, **MODEL}
    assert {k: getattr(args, k) for k in want} == want


@pytest.mark.parametrize("key", DATA)
def test_a_data_flag_given_on_the_command_line_wins(tmp_path, key):
    args = cli.get_args_parser().parse_args([])
    args.test_only = True
    setattr(args, key, "given")
    config.adopt_checkpoint(args, checkpoint(), tmp_path / "m.tar", {key})
    assert getattr(args, key) == "given"


@pytest.mark.parametrize("key,value", [("arch", "resnet18"), ("dropout", 0.1), ("crop", 64), ("min_age", 4),
                                       ("loss", "coral"), ("chip_margin", 0.2), ("face_chips", "off"),
                                       ("chip_template", "wide")])
def test_a_fixed_flag_that_contradicts_the_checkpoint_is_refused(tmp_path, key, value):
    args = cli.get_args_parser().parse_args([])
    args.test_only = True
    setattr(args, key, value)
    with pytest.raises(DatasetError, match="was trained with --" + key.replace("_", "-")):
        config.adopt_checkpoint(args, checkpoint(), tmp_path / "m.tar", {key})


def test_a_shared_lock_held_elsewhere_blocks_a_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with open(out / run_folder.LOCK_NAME, "a+") as blocker:
        fcntl.flock(blocker.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)  # a reader: the run must still wait
        with pytest.raises(run_folder.RunFolderError, match="is in use by another run"):
            run_folder.lock(out)
    try:
        run_folder.lock(out)  # free again: the run holds it, and no one can share it
        with open(out / run_folder.LOCK_NAME, "a+") as other:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
    finally:
        run_folder.release_locks()


def selection(tmp_path, test_targets):
    files = []
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (tmp_path / name).write_bytes(b"x" * 10)
        files.append(str(tmp_path / name))
    train = SampleSet(files[:2], [(0, 5, 0, 1), (1, 7, 0, 0)], ["female", "male"])
    return Selection(["female", "male"], train, None, SampleSet(files[2:], test_targets, ["female", "male"]), [])


@pytest.mark.parametrize("changed", [(1, 9, 0, 1), (0, 10, 0, 1), (0, 9, 1, 1), (0, 9, 0, 0), (0, -1, 0, 1)])
def test_the_data_fingerprint_changes_with_any_label(tmp_path, changed):
    base = run_folder.data_fingerprint(selection(tmp_path, [(0, 9, 0, 1)]))
    assert run_folder.data_fingerprint(selection(tmp_path, [(0, 9, 0, 1)])) == base
    assert run_folder.data_fingerprint(selection(tmp_path, [changed]))["sha256"] != base["sha256"]


def test_the_data_fingerprint_changes_with_a_file_size_or_a_split(tmp_path):
    sel = selection(tmp_path, [(0, 9, 0, 1)])
    base = run_folder.data_fingerprint(sel)
    (tmp_path / "c.jpg").write_bytes(b"x" * 11)
    assert run_folder.data_fingerprint(sel)["sha256"] != base["sha256"]
    (tmp_path / "c.jpg").write_bytes(b"x" * 10)
    moved = Selection(sel.classes, SampleSet(sel.train.paths[:1], sel.train.targets[:1], sel.classes),
                      SampleSet(sel.train.paths[1:], sel.train.targets[1:], sel.classes), sel.test, [])
    assert run_folder.data_fingerprint(moved)["sha256"] != base["sha256"]
