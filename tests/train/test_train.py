"""End-to-end tests of the training CLI on tiny generated data."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, make_folder_dataset
from gender_age.train import cli as gac
from gender_age.core.checkpointing import load_checkpoint
from gender_age.train import engine
from gender_age.train import run_folder as trainer

FAST = ["--no-progress", "--workers", "0", "-b", "8"]
# Behaviour that does not depend on the network runs on a small ResNet at 32x32:
# about 50x less compute than the Levi-Hassner network at 227x227. The weight
# EMA (default on) is off here: its ~20 ms per step would double these tiny
# steps; its own tests below turn it on.
LIGHT = ["--arch", "resnet18", "--resize", "40", "--crop", "32", "--ema-epochs", "0"]


def run(argv, light=True):
    return gac.cli([*FAST, *(LIGHT if light else []), *map(str, argv)])


def test_trains_and_writes_every_output(tiny_data, tmp_path, capsys):
    out = tmp_path / "ckpt"
    assert run(["--data-dir", tiny_data, "--checkpoint-dir", out, "-ep", "5", "--seed", "1"], light=False) == 0
    for name in ("checkpoint5.tar", "checkpoint_last.tar", "model_best.tar", "loss.png", "performance.png",
                 "metrics.jsonl", "confusion.png", "test_results.json"):
        assert (out / name).is_file(), name
    text = capsys.readouterr().out
    assert "epoch   5/5" in text and text.count("test: loss") == 1 and "confusion matrix" in text
    ckpt = load_checkpoint(out / "model_best.tar")
    # everything predict.py needs to rebuild the model, and everything to resume
    assert ckpt["task"] == "gender" and ckpt["classes"] == ["female", "male"]
    assert ckpt["model_args"] == {"arch": "levi_hassner", "num_outputs": 2, "dropout": 0.5}
    assert ckpt["preprocess"]["crop"] == 227 and ckpt["preprocess"]["resize"] == 256
    assert len(ckpt["preprocess"]["mean"]) == 3
    for key in ("optimizer_state", "scheduler_state", "history", "rng", "args", "epoch", "best"):
        assert key in ckpt, key
    assert ckpt["args"]["epochs"] == 5
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4, 5]
    assert log[-1]["val_acc"] is not None and "val_acc" not in log[0]
    result = json.loads((out / "test_results.json").read_text())
    assert result["test_n"] == 6 and len(result["confusion"]) == 2
    assert sum(map(sum, result["confusion"])) == 6
    assert result["selected_on"] == "validation split"


def test_learns_the_tiny_task(tmp_path):
    data = make_folder_dataset(tmp_path / "d", n_train=12, n_test=4)
    out = tmp_path / "c"
    assert run(["--data-dir", data, "--checkpoint-dir", out, "-ep", "10", "--seed", "0"], light=False) == 0
    result = json.loads((out / "test_results.json").read_text())
    assert result["test_acc"] >= 0.75  # colour-coded classes; chance is 0.5


def test_age_flag_and_any_number_of_groups(tmp_path, monkeypatch, capsys):
    # -a uses age-data/ and checkpoints/age by default, with as many group folders as there are
    groups = ("0-2", "4-6", "8-13")
    make_folder_dataset(tmp_path / "age-data", classes=groups, n_train=4, n_test=2)
    monkeypatch.chdir(tmp_path)
    assert gac.cli(["-a", "-ep", "1", *FAST]) == 0
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "age" / "model_best.tar")
    assert ckpt["task"] == "age" and ckpt["classes"] == list(groups)
    assert ckpt["model_state"]["classifier.7.weight"].shape[0] == 3


def test_default_gender_paths(tmp_path, monkeypatch):
    make_folder_dataset(tmp_path / "gender-data", n_train=3, n_test=2)
    monkeypatch.chdir(tmp_path)
    assert gac.cli(["-ep", "1", *FAST]) == 0
    assert (tmp_path / "checkpoints" / "gender" / "model_best.tar").is_file()


@pytest.mark.parametrize("flag", ["-sgd", "--sgd"])
def test_sgd_both_spellings(tiny_data, tmp_path, flag):
    out = tmp_path / "c"
    assert run(["--data-dir", tiny_data, "--checkpoint-dir", out, "-ep", "1", flag]) == 0
    opt = load_checkpoint(out / "model_best.tar")["optimizer_state"]
    assert opt["param_groups"][0]["momentum"] == 0.9
    assert load_checkpoint(out / "model_best.tar")["args"]["sgd"] is True


def test_adam_is_one_optimizer_with_a_step_decay(tiny_data, tmp_path):
    out = tmp_path / "c"
    assert run(["--data-dir", tiny_data, "--checkpoint-dir", out, "-ep", "6", "--lr-step", "2",
                "--save-every", "6"]) == 0
    ckpt = load_checkpoint(out / "checkpoint6.tar")
    # Adam kept its moments: the step count is every batch of every epoch (2 batches x 6)
    steps = [s["step"] for s in ckpt["optimizer_state"]["state"].values()]
    assert all(float(s) == 12 for s in steps)
    lrs = [r["lr"] for r in ckpt["history"]]
    assert lrs == pytest.approx([1e-3, 1e-3, 9e-4, 9e-4, 8.1e-4, 8.1e-4])


def test_resume_with_another_optimizer_is_a_one_line_error(tiny_data, tmp_path, capsys):
    out = tmp_path / "c"
    assert run(["--data-dir", tiny_data, "--checkpoint-dir", out, "-ep", "1", "-sgd"]) == 0
    before = (out / "checkpoint_last.tar").read_bytes()
    capsys.readouterr()
    assert run(["--data-dir", tiny_data, "--checkpoint-dir", out, "-ep", "2", "--resume", "--optimizer", "adam"]) == 2
    err = capsys.readouterr().err
    assert "--optimizer sgd, but this run asks for adam" in err and err.count("\n") == 1 and "Traceback" not in err
    assert (out / "checkpoint_last.tar").read_bytes() == before
    # without the flag it continues with the run's own optimizer
    assert run(["--data-dir", tiny_data, "--checkpoint-dir", out, "-ep", "2", "--resume"]) == 0
    ckpt = load_checkpoint(out / "checkpoint_last.tar")
    assert ckpt["epoch"] == 2 and ckpt["args"]["optimizer"] == "sgd"
    assert "momentum_buffer" in next(iter(ckpt["optimizer_state"]["state"].values()))


def test_batch_size_and_epochs_long_flags(tiny_data, tmp_path):
    out = tmp_path / "c"
    assert gac.cli(["--no-progress", "--workers", "0", "--batch-size", "4", "--epochs", "2", *LIGHT,
                    "--data-dir", str(tiny_data), "--checkpoint-dir", str(out)]) == 0
    ckpt = load_checkpoint(out / "checkpoint_last.tar")
    assert ckpt["args"]["batch_size"] == 4 and ckpt["epoch"] == 2
    # 10 train images in batches of 4 -> 3 iterations per epoch
    assert len(ckpt["iter_losses"]) == 6


def test_val_split_zero_validates_on_test(tiny_data, tmp_path):
    out = tmp_path / "c"
    assert run(["--data-dir", tiny_data, "--checkpoint-dir", out, "-ep", "1", "--val-split", "0", "-b", "2"]) == 0
    result = json.loads((out / "test_results.json").read_text())
    assert result["selected_on"].startswith("test split")
    ckpt = load_checkpoint(out / "model_best.tar")
    # nothing held out: all 12 training images in steps of 2
    assert len(ckpt["iter_losses"]) == 6
    # the validation metrics are the test split's, for the same (epoch 1) model
    val = ckpt["history"][-1]
    assert val["val_loss"] == pytest.approx(result["test"]["loss"], abs=1e-6) == ckpt["best"]["loss"]
    assert val["val_acc"] == pytest.approx(result["test_acc"], abs=1e-9)


def test_dropout_is_off_in_evaluation(tiny_data, tmp_path):
    from gender_age.nets.models import build_model
    model = build_model("levi_hassner", 2).eval()
    x = torch.randn(2, 3, 227, 227)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        assert not torch.equal(model(x), model(x))


def test_seeded_runs_are_identical(tiny_data, tmp_path):
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert run(["--data-dir", tiny_data, "--checkpoint-dir", out, "-ep", "3", "--seed", "7"]) == 0
    a, b = (load_checkpoint(o / "checkpoint_last.tar") for o in outs)
    assert _same_history(a, b)
    for k in a["model_state"]:
        assert torch.equal(a["model_state"][k], b["model_state"][k]), k


def _same_history(a, b):
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in h]
    return strip(a["history"]) == strip(b["history"])


def test_resume_equals_uninterrupted(tiny_data, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    common = ["--data-dir", tiny_data, "--seed", "3", "--eval-every", "1"]
    assert run([*common, "--checkpoint-dir", full, "-ep", "3"]) == 0
    assert run([*common, "--checkpoint-dir", part, "-ep", "2", "--save-every", "1"]) == 0
    assert run([*common, "--checkpoint-dir", part, "-ep", "3", "--resume"]) == 0
    a, b = (load_checkpoint(o / "checkpoint_last.tar") for o in (full, part))
    assert _same_history(a, b)
    for k in a["model_state"]:
        assert torch.allclose(a["model_state"][k].float(), b["model_state"][k].float(), atol=1e-6), k


def test_a_resumed_run_counts_the_time_of_the_processes_before_it(tiny_data, tmp_path, capsys):
    out = tmp_path / "c"
    common = ["--data-dir", tiny_data, "--checkpoint-dir", out, "--seed", "3"]
    assert run([*common, "-ep", "1"]) == 0
    ckpt = load_checkpoint(out / "checkpoint_last.tar")
    first = ckpt["timing"]
    assert 0 <= first["chips_s"] <= first["total_s"] < 600  # this process's seconds
    # as if the first process had run for 1000 s, 300 of them on face chips
    torch.save({**ckpt, "timing": {"total_s": 1000.0, "chips_s": 300.0}}, out / "checkpoint_last.tar")
    assert run([*common, "-ep", "2", "--resume"]) == 0
    timing = json.loads((out / "test_results.json").read_text())["timing"]  # what bench_general.py counts
    assert 1000 < timing["total_s"] < 1600 and 300 <= timing["chips_s"] < 900
    assert load_checkpoint(out / "checkpoint_last.tar")["timing"]["total_s"] > 1000  # and the next resume
    torch.save({**ckpt, "timing": {"total_s": "a while"}}, out / "checkpoint_last.tar")
    capsys.readouterr()
    assert run([*common, "-ep", "3", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "its timing is not seconds" in err and len(err.strip().splitlines()) == 1


def test_test_only_reuses_the_evaluation(tiny_data, tmp_path, capsys):
    out = tmp_path / "c"
    assert run(["--data-dir", tiny_data, "--checkpoint-dir", out, "-ep", "1"]) == 0
    first = json.loads((out / "test_results.json").read_text())
    capsys.readouterr()
    assert run(["--data-dir", tiny_data, "--checkpoint-dir", out, "--test-only"]) == 0
    assert " acc " in [line for line in capsys.readouterr().out.splitlines() if line.startswith("test: ")][0]
    assert json.loads((out / "test_results.json").read_text())["confusion"] == first["confusion"]


def test_dry_run(tiny_data, tmp_path):
    out = tmp_path / "c"
    assert run(["--data-dir", tiny_data, "--checkpoint-dir", out, "--dry-run", "-b", "2"]) == 0
    assert len(load_checkpoint(out / "model_best.tar")["iter_losses"]) == 2


def _spawn(args, cwd):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(ROOT / "gender_age_classifier.py"), *FAST, *LIGHT, *map(str, args)],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _wait_for(path: Path, proc, timeout=120):
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.05)


# One uninterrupted reference run, shared by the interrupted-run tests below
# (SIGINT, SIGTERM, kill -9): each interrupted run must end where it would have.
# -b 2 makes 9 steps an epoch, so a signal sent once checkpoint1.tar exists
# lands while epoch 2 or 3 is still running.
INTERRUPTED = ["-ep", "3", "--seed", "5", "-b", "2", "--save-every", "1", "--eval-every", "1"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    data = make_folder_dataset(root / "d", n_train=10, n_test=3)
    assert run(["--data-dir", data, "--checkpoint-dir", root / "full", *INTERRUPTED]) == 0
    return data, root / "full"


def _assert_same_run(full: Path, part: Path):
    a, b = (load_checkpoint(o / "checkpoint_last.tar") for o in (full, part))
    for k in a["model_state"]:
        assert torch.allclose(a["model_state"][k].float(), b["model_state"][k].float(), atol=1e-5), k
    assert [r["train_loss"] for r in a["history"]] == pytest.approx([r["train_loss"] for r in b["history"]], abs=1e-6)
    ra, rb = (json.loads((o / "test_results.json").read_text()) for o in (full, part))
    # tolerance: identical to 1e-6 (a seeded CPU run is bit-reproducible here)
    assert ra["test_acc"] == pytest.approx(rb["test_acc"], abs=1e-6)
    assert ra["confusion"] == rb["confusion"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_and_resumes_exactly(uninterrupted, tmp_path, sig):
    data, full = uninterrupted
    part = tmp_path / "part"
    common = ["--data-dir", data, "--checkpoint-dir", part, *INTERRUPTED]
    proc = _spawn(common, tmp_path)
    _wait_for(part / "checkpoint1.tar", proc)
    proc.send_signal(sig)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, output
    assert "state saved" in output and "Traceback" not in output
    ckpt = load_checkpoint(part / "checkpoint_last.tar")
    assert ckpt["epoch"] >= 1
    assert run([*common, "--resume"]) == 0
    _assert_same_run(full, part)


def test_kill_9_then_resume_matches_uninterrupted(uninterrupted, tmp_path):
    data, full = uninterrupted
    part = tmp_path / "part"
    common = ["--data-dir", data, "--checkpoint-dir", part, *INTERRUPTED]
    proc = _spawn(common, tmp_path)
    _wait_for(part / "checkpoint1.tar", proc)
    proc.kill()  # SIGKILL: no handler runs
    proc.wait()
    assert run([*common, "--resume"]) == 0
    _assert_same_run(full, part)


def test_resume_falls_back_to_the_newest_numbered_checkpoint(tmp_path):
    # a kill -9 can come before checkpoint_last.tar was ever written
    for n in (5, 10, 15):
        (tmp_path / f"checkpoint{n}.tar").write_bytes(b"x")
    assert trainer.latest_checkpoint(tmp_path).name == "checkpoint15.tar"
    (tmp_path / "checkpoint_last.tar").write_bytes(b"x")
    assert trainer.latest_checkpoint(tmp_path).name == "checkpoint_last.tar"
    assert trainer.latest_checkpoint(tmp_path / "empty").name == "checkpoint_last.tar"


def test_weight_average_follows_the_formula():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = engine.make_ema(model, epochs=2, steps_per_epoch=50)  # decay 0.99
    start = ema.module[0].weight.clone()
    assert torch.equal(start, model[0].weight) and engine.ema_steps(ema) == 0
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model(torch.randn(4, 3))  # moves the BatchNorm statistics and num_batches_tracked
    ema.update_parameters(model)  # step 1: d = min(0.99, 2 / 11)
    d = 2 / 11
    assert torch.allclose(ema.module[0].weight, d * start + (1 - d) * model[0].weight)
    assert torch.allclose(ema.module[1].running_mean, (1 - d) * model[1].running_mean)
    assert int(ema.module[1].num_batches_tracked) == 1
    for _ in range(1000):  # late steps (t > 890): the decay itself
        ema.update_parameters(model)
    before = ema.module[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update_parameters(model)
    assert torch.allclose(ema.module[0].weight, 0.99 * before + 0.01 * model[0].weight)
    assert engine.ema_steps(ema) == 1002 and not ema.module[0].weight.requires_grad


def test_ema_checkpoint_predicts_with_the_average_and_resumes_exactly(tiny_data, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    common = ["--data-dir", tiny_data, "--seed", "3", "--eval-every", "1", "--ema-epochs", "1"]
    assert run([*common, "--checkpoint-dir", full, "-ep", "3"]) == 0
    assert run([*common, "--checkpoint-dir", part, "-ep", "2", "--save-every", "1"]) == 0
    assert run([*common, "--checkpoint-dir", part, "-ep", "3", "--resume"]) == 0
    a, b = (load_checkpoint(o / "checkpoint_last.tar") for o in (full, part))
    assert _same_history(a, b)
    assert a["ema_steps"] == b["ema_steps"] > 0
    for key in ("model_state", "train_state"):
        for k in a[key]:
            assert torch.allclose(a[key][k].float(), b[key][k].float(), atol=1e-6), (key, k)
    # the averaged weights (what predict.py loads) are not the raw ones
    w = "trunk.conv1.weight"
    assert not torch.allclose(a["model_state"][w], a["train_state"][w])


def test_mixup_draws_are_seeded_and_mix_pairs():
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 2, 2).contiguous()
    y = torch.tensor([0, 1, 0, 1])
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    m1, ya, yb, lam = engine.mixup(x.clone(), y, 0.4, g1)
    m2, _, yb2, lam2 = engine.mixup(x.clone(), y, 0.4, g2)
    assert lam == lam2 and torch.equal(m1, m2) and torch.equal(yb, yb2)
    assert 0.0 <= lam <= 1.0 and torch.equal(ya, y)
    # each mixed image is lam * itself + (1 - lam) * a partner; the partners are a permutation
    assert 0.0 < lam < 1.0
    partner = ((m1[:, 0, 0, 0] - lam * x[:, 0, 0, 0]) / (1 - lam)).round().long()
    assert sorted(partner.tolist()) == [0, 1, 2, 3]
    assert torch.equal(yb, y[partner])
    assert torch.allclose(m1, lam * x + (1 - lam) * x[partner])


def test_mixup_changes_training_and_is_recorded(tiny_data, tmp_path):
    outs = {a: tmp_path / f"mix{a}" for a in ("0", "0.4")}
    for alpha, out in outs.items():
        assert run(["--data-dir", tiny_data, "--checkpoint-dir", out, "-ep", "1", "--seed", "2",
                    "--mixup", alpha]) == 0
    plain, mixed = (load_checkpoint(o / "checkpoint_last.tar") for o in outs.values())
    assert mixed["args"]["mixup"] == 0.4
    # same seed, same batches: the first step's loss differs only through the mixing
    assert plain["iter_losses"][0] != pytest.approx(mixed["iter_losses"][0], rel=1e-4)


def _fake_checkpoint(model, classes, arch="levi_hassner"):
    return {"model_args": {"arch": arch, "num_outputs": len(classes), "dropout": 0.5},
            "model_state": {k: v.clone() for k, v in model.state_dict().items()}, "classes": list(classes)}


def test_transfer_weights_copies_the_trunk_and_renews_a_foreign_head():
    from gender_age.core.checkpointing import CheckpointError, transfer_weights
    from gender_age.nets.models import build_model, output_layer_names

    torch.manual_seed(0)
    source = build_model("levi_hassner", 2)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)  # unlike any fresh initialisation
    ckpt = _fake_checkpoint(source, ["female", "male"])

    # same classes: everything, the output layer too
    same = build_model("levi_hassner", 2)
    assert transfer_weights(same, ckpt, "x.tar", "levi_hassner", ["female", "male"], output_layer_names(same)) == []
    for k, v in same.state_dict().items():
        assert torch.equal(v, ckpt["model_state"][k]), k

    # other labels (same count, or another count): the trunk, not the head
    for classes in (["old", "young"], ["0-2", "4-6", "8-13"]):
        target = build_model("levi_hassner", len(classes))
        head = output_layer_names(target)
        assert head == {"classifier.7.weight", "classifier.7.bias"}
        before = {k: v.clone() for k, v in target.state_dict().items()}
        kept = transfer_weights(target, ckpt, "x.tar", "levi_hassner", classes, head)
        assert set(kept) == head
        for k, v in target.state_dict().items():
            assert torch.equal(v, before[k] if k in head else ckpt["model_state"][k]), k

    with pytest.raises(CheckpointError, match="resnet18"):
        transfer_weights(build_model("levi_hassner", 2), _fake_checkpoint(build_model("resnet18", 2), ["a", "b"],
                         arch="resnet18"), "r.tar", "levi_hassner", ["a", "b"], set())


def test_init_from_starts_from_another_run(tiny_data, tmp_path, capsys):
    first = tmp_path / "first"
    assert run(["--data-dir", tiny_data, "--checkpoint-dir", first, "-ep", "1"]) == 0
    groups = make_folder_dataset(tmp_path / "groups", classes=("0-2", "4-6", "8-13"), n_train=4, n_test=2)
    second = tmp_path / "second"
    capsys.readouterr()
    assert run(["--data-dir", groups, "--checkpoint-dir", second, "-ep", "1", "--init-from",
                first / "model_best.tar"]) == 0
    assert "own initialisation kept for: head.bias, head.weight" in capsys.readouterr().out
    ckpt = load_checkpoint(second / "model_best.tar")
    assert ckpt["args"]["init_from"] == str(first / "model_best.tar") and ckpt["classes"] == ["0-2", "4-6", "8-13"]
    # another network: one line, exit 2, and nothing of the earlier run is touched (--overwrite
    # replaces a run only once the new one has saved a checkpoint)
    code = run(["--data-dir", tiny_data, "--checkpoint-dir", second, "-ep", "1", "--init-from",
                first / "model_best.tar", "--overwrite"], light=False)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "architecture 'resnet18'" in err
    assert load_checkpoint(second / "model_best.tar")["classes"] == ["0-2", "4-6", "8-13"]


def test_model_selection_breaks_accuracy_ties_on_validation_loss():
    from gender_age.train.tasks import ClassificationTask, OrdinalTask
    task = ClassificationTask(["female", "male"])
    assert task.is_better(0.90, None)
    assert task.is_better(0.95, 0.90, 0.50, 0.10) and not task.is_better(0.85, 0.90, 0.01, 0.50)
    assert task.is_better(0.90, 0.90, 0.10, 0.20) and not task.is_better(0.90, 0.90, 0.30, 0.20)
    assert not task.is_better(0.90, 0.90, 0.10, None)  # a best from an older checkpoint, without its loss
    ordinal = OrdinalTask("coral", 5, 21)
    assert ordinal.is_better(4.0, 4.0, 1.0, 2.0) and not ordinal.is_better(4.0, 4.0, 3.0, 2.0)
    assert ordinal.is_better(3.9, 4.0, 9.0, 2.0)


def test_best_checkpoint_records_its_validation_loss(tiny_data, tmp_path):
    out = tmp_path / "o"
    assert run(["--data-dir", tiny_data, "--checkpoint-dir", out, "-ep", "3", "--eval-every", "1"]) == 0
    ckpt = load_checkpoint(out / "model_best.tar")
    evals = [r for r in load_checkpoint(out / "checkpoint_last.tar")["history"] if "val_acc" in r]
    assert len(evals) == 3
    top = max(r["val_acc"] for r in evals)
    chosen = min((r for r in evals if r["val_acc"] == top), key=lambda r: r["val_loss"])
    assert ckpt["best"] == {"value": top, "metric": "acc", "epoch": chosen["epoch"], "loss": chosen["val_loss"]}


def test_a_last_batch_of_one_image_is_dropped():
    args = gac.get_args_parser().parse_args(["-b", "8"])
    assert engine.steps_per_epoch(9, args, 1) == 1      # 8 + 1: the single image waits for another epoch
    assert engine.steps_per_epoch(10, args, 1) == 2     # 8 + 2 is kept
    assert engine.steps_per_epoch(1, args, 1) == 1      # never zero steps
    assert engine.steps_per_epoch(17, args, 2) == 2     # per process: 9 = 4 + 4 + 1
