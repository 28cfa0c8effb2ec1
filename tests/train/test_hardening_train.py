"""Issue 15, training side: never lose work, never crash on hostile input.

Diverging runs, changed data on resume, two runs in one folder, signals at
awkward moments, one-cycle extension, file permissions, bad flags and an
output folder inside the data. Each test names the item it guards.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import stat
import tempfile

import pytest
import torch

from gender_age.core import checkpointing
from gender_age.train import engine
from gender_age.train import cli as gac
from gender_age.train import plots
from gender_age.train import run_folder
from gender_age.train import tasks
from gender_age.core.checkpointing import CheckpointError, atomic_torch_save, check_finite_weights, load_checkpoint
from conftest import make_folder_dataset, make_image

FAST = ["--no-progress", "--workers", "0", "-b", "4", "--arch", "resnet18", "--resize", "40", "--crop", "32",
        "--ema-epochs", "0", "-sgd"]  # as tests/test_train.py LIGHT; -b 4: 3 steps an epoch on 10 training
# images; SGD keeps one tensor per weight (Adam two): smaller checkpoints to write
REFERENCE = ["-ep", "2", "--seed", "4", "--eval-every", "1", "--save-every", "1"]


def run(data, out, *extra):
    return gac.cli([*FAST, "--data-dir", str(data), "--checkpoint-dir", str(out), *map(str, extra)])


def one_line_error(capsys, *words) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    return err


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as standard JSON readers do."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished 2-epoch run (REFERENCE), only read by the tests that use it (copy what you change)."""
    root = tmp_path_factory.mktemp("finished")
    data = make_folder_dataset(root / "data")
    assert run(data, root / "run", *REFERENCE) == 0
    return data, root / "run"


def copy_run(run_dir, out, names=("checkpoint_last.tar",)):
    out.mkdir()
    for name in names:
        shutil.copy(run_dir / name, out / name)
    return out


# ---------------------------------------------------------------- item 1: NaN

def test_a_diverging_run_stops_and_keeps_the_good_files(finished, tmp_path, capsys):
    data, good = finished
    out = copy_run(good, tmp_path / "run", ("model_best.tar", "checkpoint_last.tar", "test_results.json"))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    code = run(data, out, "-ep", "2", "--lr", "1e8", "-sgd", "--overwrite", "--save-every", "1", "--eval-every", "1")
    assert code == 2
    one_line_error(capsys, "diverged", "--lr")
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != run_folder.LOCK_NAME}
    assert after == before  # model_best.tar, checkpoint_last.tar, test_results.json untouched
    strict_json((out / "test_results.json").read_text())
    # a fresh folder keeps no checkpoint of the diverged run at all
    assert run(data, tmp_path / "fresh", "-ep", "2", "--lr", "1e8", "-sgd") == 2
    assert not [p for p in (tmp_path / "fresh").iterdir() if p.suffix in (".tar", ".json", ".jsonl")]


def test_weights_that_became_non_finite_are_never_saved():
    model = torch.nn.Linear(2, 2)
    ckpt = {"model_state": model.state_dict(), "progress": {"epoch": 0}}
    engine.refuse_non_finite(ckpt)  # finite: no error
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    with pytest.raises(engine.TrainingDiverged, match="weight"):
        engine.refuse_non_finite({"model_state": {}, "train_state": model.state_dict(), "progress": {"epoch": 0}})


def test_check_finite_weights():
    state = {"w": torch.ones(3), "steps": torch.tensor(7), "half": torch.ones(2, dtype=torch.bfloat16)}
    check_finite_weights(state, "x.tar")  # integer buffers are not weights
    for bad in (float("nan"), float("inf"), -float("inf")):
        poisoned = {**state, "half": torch.tensor([1.0, bad], dtype=torch.bfloat16)}
        with pytest.raises(CheckpointError, match="x.tar holds non-finite weights .*half"):
            check_finite_weights(poisoned, "x.tar")


def test_init_from_and_resume_refuse_a_non_finite_checkpoint(finished, tmp_path, capsys):
    data, good = finished
    ckpt = load_checkpoint(good / "checkpoint_last.tar")
    ckpt["model_state"]["trunk.conv1.weight"][0, 0, 0, 0] = float("nan")
    bad = tmp_path / "bad.tar"
    atomic_torch_save(ckpt, bad)
    assert run(data, tmp_path / "new", "-ep", "1", "--init-from", bad) == 2
    one_line_error(capsys, "non-finite", "bad.tar")
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(bad, resumed / "checkpoint_last.tar")
    assert run(data, resumed, "-ep", "2", "--resume") == 2
    one_line_error(capsys, "non-finite")


def test_json_outputs_are_standard_json(tmp_path):
    record = {"epoch": 1, "val_loss": float("nan"), "train": [1.5, float("inf")], "nested": {"x": -float("inf")}}
    plots.write_json(record, tmp_path / "r.json")
    plots.write_jsonl([record, {"epoch": 2, "val_loss": 0.5}], tmp_path / "m.jsonl")
    assert strict_json((tmp_path / "r.json").read_text()) == {"epoch": 1, "val_loss": None, "train": [1.5, None],
                                                              "nested": {"x": None}}
    lines = (tmp_path / "m.jsonl").read_text().splitlines()
    assert [strict_json(line)["val_loss"] for line in lines] == [None, 0.5]


# ---------------------------------------------------- item 4: data fingerprint

def test_resume_refuses_data_that_changed(finished, tmp_path, capsys):
    src, good = finished
    data = tmp_path / "data"
    shutil.copytree(src, data)
    out = copy_run(good, tmp_path / "run", ("checkpoint_last.tar", "model_best.tar"))
    last = (out / "checkpoint_last.tar").read_bytes()
    assert load_checkpoint(out / "checkpoint_last.tar")["data"]["counts"] == {"train": 10, "val": 2, "test": 6}
    make_image(data / "train" / "male" / "new.jpg", 1, seed=77)
    capsys.readouterr()
    assert run(data, out, "-ep", "3", "--resume") == 2
    one_line_error(capsys, "data changed", "train 10 -> 11", "--resume-anyway")
    assert (out / "checkpoint_last.tar").read_bytes() == last
    # the same file list with one file rewritten (another size) is a change too
    (data / "train" / "male" / "new.jpg").unlink()
    make_image(data / "test" / "female" / "female_0.jpg", 0, seed=5, size=(44, 48))
    assert run(data, out, "-ep", "3", "--resume") == 2
    one_line_error(capsys, "data changed")
    assert run(data, out, "-ep", "3", "--resume", "--resume-anyway") == 0
    assert "warning: the data changed" in capsys.readouterr().out
    assert load_checkpoint(out / "checkpoint_last.tar")["epoch"] == 3


# ------------------------------------------------ item 5: one run per folder

@pytest.mark.parametrize("name", ["model_best.tar", "checkpoint_last.tar", "checkpoint15.tar", "metrics.jsonl",
                                  "test_results.json"])
def test_a_fresh_run_never_replaces_another_run(finished, tmp_path, capsys, name):
    data, _ = finished
    out = tmp_path / "run"
    out.mkdir()
    (out / name).write_bytes(b"an earlier run's file")
    assert run(data, out, "-ep", "1") == 2
    one_line_error(capsys, "already holds a run", name, "--resume", "--overwrite")
    assert (out / name).read_bytes() == b"an earlier run's file"


def test_overwrite_replaces_the_previous_run_once_the_new_one_saves(finished, tmp_path):
    data, _ = finished
    out = tmp_path / "run"
    out.mkdir()
    for name in ("checkpoint15.tar", "test_predictions.csv", "mae.png"):
        (out / name).write_bytes(b"old")
    (out / "notes.txt").write_text("the user's own file")
    assert run(data, out, "-ep", "1", "--overwrite") == 0
    names = {p.name for p in out.iterdir()}
    assert not names & {"checkpoint15.tar", "test_predictions.csv", "mae.png"}  # no mix of two runs
    assert {"model_best.tar", "checkpoint1.tar", "test_results.json", "notes.txt"} <= names


def test_a_second_run_in_a_locked_folder_is_refused(finished, tmp_path, capsys):
    data, _ = finished
    out = tmp_path / "run"
    out.mkdir()
    with open(out / run_folder.LOCK_NAME, "a") as other:  # another process's run holds the folder
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert run(data, out, "-ep", "1") == 2
        one_line_error(capsys, "in use by another run")
        assert not list(out.glob("*.tar"))
    # that a run releases the lock as it ends (or is killed) is what lets every test that runs
    # twice in one folder pass (tests/test_train.py: kill -9, then --resume)


def test_dry_run_writes_to_a_temporary_folder(tmp_path, monkeypatch, capsys):
    make_folder_dataset(tmp_path / "gender-data", n_train=3, n_test=2)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    assert gac.cli([*FAST, "--dry-run"]) == 0
    assert not (tmp_path / "checkpoints").exists()
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("dry run: writing to "))
    where = line.split()[4]
    assert where.startswith(str(tmp_path / "tmp")) and (tmp_path / where / "model_best.tar").is_file()


# -------------------------------------------------------- item 7: interrupts

def _signal_self_during(monkeypatch, owner, attr, call_no: int, times: int = 2):
    """Patch owner.attr to send this process SIGINT ``times`` times during its call number ``call_no``."""
    real, calls = getattr(owner, attr), []

    def patched(*a, **k):
        calls.append(1)
        if len(calls) == call_no:
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)
    monkeypatch.setattr(owner, attr, patched)


def test_two_quick_signals_stop_at_a_consistent_step_and_resume_exactly(finished, tmp_path, monkeypatch, capfd):
    data, full = finished
    common = REFERENCE
    # both signals arrive in the middle of step 2 of epoch 2 (step 5 of 6), the second before
    # the loop has looked at the first
    _signal_self_during(monkeypatch, tasks.ClassificationTask, "loss", call_no=5)
    with pytest.raises(SystemExit) as stop:
        run(data, tmp_path / "part", *common)
    assert stop.value.code == 130
    out, err = capfd.readouterr()
    assert "state saved" in out and "SIGINT again" in err and "Traceback" not in out + err
    ckpt = load_checkpoint(tmp_path / "part" / "checkpoint_last.tar")
    # consistent: 3 steps of epoch 1 and exactly next_batch steps of epoch 2 were taken
    assert ckpt["progress"]["epoch"] == 1 and ckpt["progress"]["next_batch"] == 2
    assert len(ckpt["iter_losses"]) == 3 + 2
    monkeypatch.undo()
    assert run(data, tmp_path / "part", *common, "--resume") == 0
    a, b = (load_checkpoint(o / "checkpoint_last.tar") for o in (full, tmp_path / "part"))
    assert a["iter_losses"] == pytest.approx(b["iter_losses"], abs=1e-6)
    for k in a["model_state"]:
        assert torch.allclose(a["model_state"][k].float(), b["model_state"][k].float(), atol=1e-6), k


def test_a_third_signal_quits_at_once_without_saving(monkeypatch, capfd):
    exits = []
    monkeypatch.setattr(engine.os, "_exit", exits.append)
    stopper = engine.Stopper()
    stopper._handler(signal.SIGTERM, None)
    assert stopper.signal == "SIGTERM" and not exits
    try:
        stopper._handler(signal.SIGINT, None)  # the second only says so: it never raises
    except KeyboardInterrupt:
        pytest.fail("the second signal raised KeyboardInterrupt in the middle of a step")
    assert not exits and "still stopping after this step" in capfd.readouterr().err
    stopper._handler(signal.SIGINT, None)
    assert exits == [130] and "quitting now without saving" in capfd.readouterr().err


def test_install_and_restore_give_the_handlers_back():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    stopper = engine.Stopper()
    stopper.install()
    assert signal.getsignal(signal.SIGINT) == stopper._handler
    stopper.restore()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_signal_during_the_final_test_stops_the_run(finished, tmp_path, monkeypatch, capsys):
    data, _ = finished
    out = tmp_path / "run"
    # -ep 1: the first evaluation is validation, the second the final test
    _signal_self_during(monkeypatch, engine, "eval_logits", call_no=2, times=1)
    with pytest.raises(SystemExit) as stop:
        run(data, out, "-ep", "1")
    assert stop.value.code == 130
    assert "stopped by SIGINT during the final test" in capsys.readouterr().out
    best = (out / "model_best.tar").read_bytes()
    assert not (out / "test_results.json").exists()
    monkeypatch.undo()
    # --test-only on the finished run: two signals, still one clean stop; it needs no --overwrite
    _signal_self_during(monkeypatch, engine, "eval_logits", call_no=1, times=2)
    with pytest.raises(SystemExit) as stop:
        run(data, out, "--test-only")
    assert stop.value.code == 130 and not (out / "test_results.json").exists()
    assert (out / "model_best.tar").read_bytes() == best


# ----------------------------------------------------- item 8: one-cycle length

def test_extending_a_one_cycle_run_is_refused(finished, tmp_path, capsys):
    data, _ = finished
    out = tmp_path / "run"
    # 3 steps, and a one-cycle schedule takes at least 8 (engine.make_scheduler): 3 epochs need 9
    assert run(data, out, "-ep", "1", "--schedule", "onecycle") == 0
    last = (out / "checkpoint_last.tar").read_bytes()
    capsys.readouterr()
    assert run(data, out, "-ep", "3", "--resume") == 2
    one_line_error(capsys, "one-cycle", "start a new run")
    assert (out / "checkpoint_last.tar").read_bytes() == last


# --------------------------------------------------- item 10: file permissions

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        checkpointing.atomic_write_text(tmp_path / "x.json", "{}")
        assert checkpointing.current_umask() == umask
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == mode


# ------------------------------------------------------------ item 12: flags

@pytest.mark.parametrize("flags, words", [
    (["--workers", "-3"], "--workers must be at least 0"),
    (["--lr", "-1"], "--lr must be above 0"),
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--weight-decay", "-1"], "--weight-decay must be at least 0"),
    (["--dropout", "2"], "--dropout must be at least 0 and below 1"),
    (["--label-smoothing", "2"], "--label-smoothing must be"),
    (["--threads", "-1"], "--threads must be at least 1"),
    (["--resize", "40000"], "--resize must be at least 16 and at most 2048"),
    (["--crop", "0"], "--crop must be"),
    (["--mixup", "-1"], "--mixup must be at least 0"),
    (["--ema-epochs", "nan"], "--ema-epochs must be a finite number"),
    (["--lr-gamma", "0"], "--lr-gamma must be above 0"),
    (["--val-split", "1"], "--val-split must be"),
    (["--seed", "-1"], "--seed must be"),
    (["--max-per-class", "0"], "--max-per-class must be at least 1"),
    (["--task", "exact-age", "--loss", "corn", "--imp-weight", "1"], "--imp-weight 1"),
    (["--task", "exact-age", "--loss", "ce", "--imp-weight", "1"], "not --loss ce"),
    (["--device", "foo"], "--device 'foo'"),
])
def test_bad_flags_are_one_line_errors_before_any_data_is_read(tmp_path, capsys, flags, words):
    # the data folder does not exist: an error about it would mean the flag was checked too late
    assert run(tmp_path / "no-data", tmp_path / "run", *flags) == 2
    one_line_error(capsys, words)


# ------------------------------------------------- item 15: output inside data

@pytest.mark.parametrize("inside", ["train", "train/male/runs", "test/female"])
def test_a_checkpoint_folder_inside_the_data_is_refused(finished, tmp_path, capsys, inside):
    src, _ = finished
    data = tmp_path / "data"
    shutil.copytree(src, data)
    existed = (data / inside).exists()
    assert run(data, data / inside, "-ep", "1") == 2
    one_line_error(capsys, "is inside the data folder", "outside the data")
    assert (data / inside).exists() == existed  # not created (a new folder in train/ would be a class) ...
    if existed:  # ... nor written to
        assert not [p for p in (data / inside).rglob("*") if p.is_file() and p.suffix != ".jpg"]


def test_a_checkpoint_folder_inside_an_image_dir_is_refused(tmp_path, capsys):
    images = tmp_path / "UTKFace"
    for i in range(6):
        make_image(images / f"{20 + 5 * i}_{i % 2}_0_2017.jpg.chip.jpg", i % 2, i)
    assert gac.cli([*FAST, "--task", "exact-age", "--dataset", "utkface", "--image-dir", str(images),
                    "--random-split", "0.3", "--checkpoint-dir", str(images / "run"), "-ep", "1"]) == 2
    one_line_error(capsys, "is inside the data folder")
