"""Behaviour that the earlier tests let break silently (issue 16).

Each test here failed on a deliberate mutation of the code that the rest of
the suite passed: validation on the wrong split or with the wrong weights,
model selection, resume of the learning-rate schedule, the original defaults,
predict.py's labels, training-time augmentation, distributed shards, test-time
augmentation, face crops and CS@5. Expected values are computed here, by a
plain forward pass of the saved weights, not through the code under test.
"""
from __future__ import annotations

import json
from argparse import Namespace
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from gender_age.data import loading
from gender_age.data import selection
from gender_age.data import transforms
from gender_age.train import engine
from gender_age.faces import geometry as faces
from gender_age.train import cli as gac
from gender_age.predict import units as inference
from gender_age.predict import cli as predict
from gender_age.train import trainer
from gender_age.core.checkpointing import load_checkpoint
from conftest import make_folder_dataset
from gender_age.train.tasks import ClassificationTask, OrdinalTask
from helpers import checkpoint_logits, ordinal_rank, decode  # noqa: F401

# a small ResNet at 32x32, fp32, evaluated and saved every 3 epochs; nothing else set,
# so the learning rate, its schedule, the optimizer, dropout, the validation share
# and the weight average (EMA) are the defaults
ARGS = ["--no-progress", "--workers", "0", "--arch", "resnet18", "--resize", "40", "--crop", "32", "--no-amp",
        "-b", "8", "--seed", "0", "--eval-every", "3", "--save-every", "3"]
EPOCHS = 6


# ---- helpers shared with test_exact_age.py and test_faces.py -------------------------


def metrics_by_hand(ckpt: dict, paths, targets, state: str = "model_state") -> dict:
    logits = checkpoint_logits(ckpt, decode(paths, ckpt["preprocess"]["resize"]), state)
    y = torch.tensor(targets)
    return {"loss": F.cross_entropy(logits, y).item(), "acc": (logits.argmax(1) == y).float().mean().item()}


# ---- one tiny training run shared by several tests ---------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 6-epoch gender run on colour-coded images, with a spy on the training augmentation."""
    root = tmp_path_factory.mktemp("behaviour")
    data = make_folder_dataset(root / "d", n_train=10, n_test=4)
    out = root / "run"
    aug_calls = []
    real = transforms.Preset.train_batch

    def spy(self, batch, generator=None):
        aug_calls.append(generator)
        return real(self, batch, generator)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(transforms.Preset, "train_batch", spy)
        assert gac.cli([*ARGS, "--data-dir", str(data), "--checkpoint-dir", str(out), "-ep", str(EPOCHS)]) == 0
    return SimpleNamespace(data=data, out=out, aug_calls=aug_calls)


def split_samples(trained, split: str):
    """The run's validation or test samples, selected from the arguments it stored."""
    args = Namespace(**load_checkpoint(trained.out / "model_best.tar")["args"])
    return getattr(selection.select_samples(args, "gender"), split)


def test_validation_is_the_held_out_split_evaluated_with_the_averaged_weights(trained):
    best = load_checkpoint(trained.out / "model_best.tar")
    val, test = split_samples(trained, "val"), split_samples(trained, "test")
    assert 0 < len(val) < len(test) and not set(val.paths) & set(test.paths)
    record = next(r for r in best["history"] if r["epoch"] == best["best"]["epoch"])
    by_hand = metrics_by_hand(best, val.paths, val.targets)
    assert record["val_loss"] == pytest.approx(by_hand["loss"], abs=1e-4)
    assert record["val_acc"] == pytest.approx(by_hand["acc"])
    assert best["best"]["loss"] == pytest.approx(by_hand["loss"], abs=1e-4)
    # what would be recorded if validation ran on test, or on the raw weights: not the same
    on_test = metrics_by_hand(best, test.paths, test.targets)
    raw = metrics_by_hand(best, val.paths, val.targets, state="train_state")
    assert abs(on_test["loss"] - by_hand["loss"]) > 1e-3 and abs(raw["loss"] - by_hand["loss"]) > 1e-3
    assert any(not torch.equal(v, best["train_state"][k]) for k, v in best["model_state"].items())
    result = json.loads((trained.out / "test_results.json").read_text())
    assert result["selected_on"] == "validation split"


def test_final_test_evaluates_model_best_in_eval_mode(trained):
    # the final test loads model_best into the training model, which is still in train mode
    best = load_checkpoint(trained.out / "model_best.tar")
    test = split_samples(trained, "test")
    by_hand = metrics_by_hand(best, test.paths, test.targets)
    result = json.loads((trained.out / "test_results.json").read_text())
    assert result["test"]["loss"] == pytest.approx(by_hand["loss"], abs=1e-4)
    assert result["test_acc"] == pytest.approx(by_hand["acc"]) and result["test_n"] == len(test)


def test_evaluate_switches_dropout_and_batchnorm_to_eval_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5),
                          nn.Linear(4 * 6 * 6, 2))
    model.train()
    x = torch.randint(0, 256, (6, 3, 10, 10), dtype=torch.uint8)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    ctx = {"device": torch.device("cpu"), "task": ClassificationTask(["a", "b"]), "rank": 0, "world": 1,
           "workers": 0, "preset": transforms.Preset(10, 8), "channels_last": False, "num_outputs": 2}
    args = Namespace(batch_size=4, tta=False, amp=False)
    data = torch.utils.data.TensorDataset(x, y)
    first, second = (engine.evaluate(model, data, args, ctx) for _ in range(2))
    with torch.no_grad():
        logits = model.eval()(transforms.Preset(10, 8).eval_batch(x))
    assert first["loss"] == second["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), abs=1e-6)
    assert first["acc"] == pytest.approx((logits.argmax(1) == y).float().mean().item())


def test_the_original_defaults(trained, tmp_path, monkeypatch):
    """-b 64, -ep 64, Adam at lr 0.001 x 0.9 every 5 epochs, dropout 0.5, a 10% validation
    split and a 5-epoch weight average: what a gender run given only its data trains with."""
    def stop_at_once(*a, **k):
        raise engine.StopRequested

    monkeypatch.setattr(trainer, "train_one_epoch", stop_at_once)
    with pytest.raises(SystemExit) as stopped:
        gac.cli(["--no-progress", "--workers", "0", "--data-dir", str(trained.data), "--checkpoint-dir", str(tmp_path)])
    assert stopped.value.code == 130
    ckpt = load_checkpoint(tmp_path / "checkpoint_last.tar")
    a = ckpt["args"]
    assert (a["batch_size"], a["epochs"], a["lr"], a["optimizer"]) == (64, 64, 1e-3, "adam")
    assert (a["val_split"], a["ema_epochs"], ckpt["model_args"]["dropout"]) == (0.1, 5.0, 0.5)
    assert (ckpt["scheduler_state"]["step_size"], ckpt["scheduler_state"]["gamma"]) == (5, 0.9)
    group = ckpt["optimizer_state"]["param_groups"][0]
    assert group["lr"] == 1e-3 and "momentum" not in group and "train_state" in ckpt
    # in effect in the shared run, which sets none of these: lr 0.001, x 0.9 after every 5 epochs
    history = load_checkpoint(trained.out / f"checkpoint{EPOCHS}.tar")["history"]
    assert [r["lr"] for r in history] == pytest.approx([1e-3] * 5 + [9e-4])


def test_training_batches_go_through_the_random_augmentation(trained):
    ckpt = load_checkpoint(trained.out / f"checkpoint{EPOCHS}.tar")
    steps = len(ckpt["iter_losses"])
    assert steps >= 2 * EPOCHS and len(trained.aug_calls) == steps
    assert all(isinstance(g, torch.Generator) for g in trained.aug_calls)
    assert len({id(g) for g in trained.aug_calls}) == 1  # the run's own seeded generator


def test_resume_from_a_numbered_checkpoint_continues_the_lr_schedule(trained, tmp_path):
    # epochs 4-6 again from checkpoint3.tar: the step decay falls at epoch 6, within the resumed part
    out = tmp_path / "resumed"
    assert gac.cli([*ARGS, "--data-dir", str(trained.data), "--checkpoint-dir", str(out), "-ep", str(EPOCHS),
                    "--resume", str(trained.out / "checkpoint3.tar")]) == 0
    a, b = (load_checkpoint(o / f"checkpoint{EPOCHS}.tar") for o in (trained.out, out))
    lrs = [r["lr"] for r in b["history"]]
    assert lrs == [r["lr"] for r in a["history"]] and lrs[3:] == pytest.approx([1e-3, 1e-3, 9e-4])
    assert b["scheduler_state"] == a["scheduler_state"]
    assert [r["train_loss"] for r in b["history"]] == pytest.approx([r["train_loss"] for r in a["history"]],
                                                                    abs=1e-6)
    for key in ("model_state", "train_state"):
        for k, v in a[key].items():
            assert torch.allclose(v.float(), b[key][k].float(), atol=1e-6), (key, k)


def test_predict_labels_each_image_with_its_most_probable_class(trained, capsys):
    best = trained.out / "model_best.tar"
    paths = sorted(str(p) for p in (trained.data / "test").rglob("*.jpg"))
    capsys.readouterr()
    assert predict.cli([*paths, "--checkpoint", str(best), "--no-detect", "--json", "--no-amp",
                        "--workers", "0"]) == 0
    records = json.loads(capsys.readouterr().out)
    ckpt = load_checkpoint(best)
    probs = checkpoint_logits(ckpt, decode(paths, ckpt["preprocess"]["resize"])).softmax(-1)
    assert [r["file"] for r in records] == paths
    for r, p in zip(records, probs):
        assert abs(float(p[0] - p[1])) > 1e-3  # a model that prefers a class: a swap would show
        assert r["label"] == ckpt["classes"][int(p.argmax())]
        assert [r["probabilities"][c] for c in ckpt["classes"]] == pytest.approx(p.tolist(), abs=1e-4)


# ---- model selection ------------------------------------------------------------------------

def test_model_best_is_the_best_validation_epoch_not_the_last(tmp_path, monkeypatch, capsys):
    data = make_folder_dataset(tmp_path / "d", n_train=4, n_test=2)
    out = tmp_path / "run"
    script = [1.0, 0.5]  # validation accuracy of epochs 1 and 2; the final test is left alone
    real = trainer.evaluate

    def scripted(*args, **kwargs):
        m = real(*args, **kwargs)
        return {**m, "acc": script.pop(0)} if script else m

    monkeypatch.setattr(trainer, "evaluate", scripted)
    assert gac.cli([*ARGS, "--ema-epochs", "0", "--eval-every", "1", "--save-every", "1", "--data-dir", str(data),
                    "--checkpoint-dir", str(out), "-ep", "2"]) == 0
    assert not script
    log = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert [("(best)" in line) for line in log] == [True, False]
    best, first, last = (load_checkpoint(out / n) for n in ("model_best.tar", "checkpoint1.tar", "checkpoint2.tar"))
    assert best["epoch"] == 1 and best["best"]["epoch"] == 1 and best["best"]["value"] == 1.0
    for k, v in first["model_state"].items():
        assert torch.equal(best["model_state"][k], v), k
    assert any(not torch.equal(best["model_state"][k], v) for k, v in last["model_state"].items())
    assert json.loads((out / "test_results.json").read_text())["epoch"] == 1


# ---- distributed shards ---------------------------------------------------------------------

@pytest.mark.parametrize("n,world", [(12, 1), (12, 2), (11, 2), (10, 3), (5, 4)])
def test_every_rank_gets_its_own_shard_of_the_epoch(n, world):
    pad = (-n) % world
    for epoch in (0, 1):
        shards = [loading.epoch_order(n, 3, epoch, rank, world) for rank in range(world)]
        assert len({len(s) for s in shards}) == 1  # the same number of steps on every rank
        seen = Counter(i for s in shards for i in s)
        assert set(seen) == set(range(n))  # every image trained on
        assert sum(seen.values()) == n + pad and sum(c - 1 for c in seen.values()) == pad  # once, but the padding
    assert loading.epoch_order(n, 3, 0, 0, 1) != loading.epoch_order(n, 3, 1, 0, 1)  # a new permutation each epoch


# ---- test-time augmentation ----------------------------------------------------------------

def test_tta_evaluation_averages_the_ten_views():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    preset = transforms.Preset(12, 8)
    x = torch.randint(0, 256, (5, 3, 12, 12), dtype=torch.uint8)
    with torch.no_grad():
        per_view = torch.stack([model(v) for v in preset.tta_batch(x)])  # (10, N, 3)
        centre = model(preset.eval_batch(x))
    expected = {"classification": per_view.softmax(-1).mean(0).log(), "ordinal": per_view.mean(0)}
    for task in (ClassificationTask(["a", "b", "c"]), OrdinalTask("coral", 4, 0)):
        ctx = {"preset": preset, "channels_last": False, "task": task}
        got = engine.eval_logits(model, x, Namespace(tta=True, amp=False), ctx)
        assert torch.allclose(got, expected[task.kind], atol=1e-5), task.kind
        assert torch.allclose(engine.eval_logits(model, x, Namespace(tta=False, amp=False), ctx), centre, atol=1e-6)
    assert not torch.allclose(expected["ordinal"], centre, atol=1e-3)


# ---- face crops --------------------------------------------------------------------------

class FixedDetector:
    """A detector that finds one face at a known box."""

    def __init__(self, box, geometry):
        self.box, self.geometry = box, geometry

    def detect(self, rgb):
        return [faces.Face(self.box, 0.99)]


def test_a_detected_face_is_cropped_with_the_training_margin():
    img = Image.fromarray(torch.randint(0, 256, (300, 300, 3), dtype=torch.uint8,
                                        generator=torch.Generator().manual_seed(0)).numpy())
    # the face box covers w 0.5 x h 0.6 of the training crop, centred in it: a 50x60 box
    # sits in a 100 px square, (75, 90)-(175, 190) for the box (100, 110)-(150, 170)
    detector = FixedDetector((100.0, 110.0, 150.0, 170.0), faces.Geometry(0.5, 0.5, 0.5, 0.6))
    (region,) = inference.find_regions(img, "on", detector, 100)
    assert region.source == "detector" and region.box == detector.box
    assert region.square.size == (100, 100)
    assert np.array_equal(np.asarray(region.square), np.asarray(img)[90:190, 75:175])


# ---- metrics ------------------------------------------------------------------------------

def test_cs5_counts_an_error_of_exactly_five_years():
    task = OrdinalTask("coral", num_ranks=10, min_age=20)
    rank = lambda r: torch.tensor([[4.0] * r + [-4.0] * (9 - r)])  # CORAL: r positive logits -> rank r
    logits = torch.cat([rank(0), rank(0), rank(9), rank(3)])
    y = torch.tensor([5, 6, 4, 3])  # errors 5, 6, 5, 0
    m = task.metrics(task.stats(logits, y))
    assert m["cs5"] == pytest.approx(3 / 4) and m["mae"] == pytest.approx(16 / 4)
