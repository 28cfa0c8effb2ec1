"""run_folder.py by its rules: which files mean a run, what --overwrite drops and keeps, the
refusal messages, the folders of the data, the resume checks and the latest checkpoint."""
from __future__ import annotations

import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from gender_age.core.checkpointing import CheckpointError
from gender_age.data.samples import SampleSet
from gender_age.data.selection import Selection
from gender_age.train import run_folder


def args(**kw):
    return SimpleNamespace(**{"test_only": False, "resume": None, "overwrite": False, "checkpoint_dir": None,
                              "dry_run": False, "resume_anyway": False, **kw})


@pytest.fixture(autouse=True)
def _release():
    yield
    run_folder.release_locks()


def test_previous_run_finds_the_files_of_a_run_only(tmp_path):
    assert run_folder.previous_run(tmp_path / "missing") == []
    for name in ("metrics.jsonl", "checkpoint12.tar", "model_best.tar", "checkpoint_last.tar", "test_results.json",
                 "checkpoint.tar", "checkpoint12.tar.tmp", "xcheckpoint3.tar", "loss.png", "notes.txt"):
        (tmp_path / name).write_text("x")
    assert [p.name for p in run_folder.previous_run(tmp_path)] == \
        ["checkpoint12.tar", "checkpoint_last.tar", "metrics.jsonl", "model_best.tar", "test_results.json"]


def test_claim_refuses_a_folder_with_a_run_and_names_four_files(tmp_path):
    for name in ("checkpoint1.tar", "checkpoint2.tar", "checkpoint3.tar", "metrics.jsonl", "model_best.tar"):
        (tmp_path / name).write_text("x")
    message = (f"{tmp_path} already holds a run (checkpoint1.tar, checkpoint2.tar, checkpoint3.tar, metrics.jsonl, "
               f"...): continue it with --resume, choose another folder with --checkpoint-dir, or replace it with "
               f"--overwrite")
    with pytest.raises(run_folder.RunFolderError, match="^" + re.escape(message) + "$"):
        run_folder.claim(tmp_path, args())
    run_folder.release_locks()
    (tmp_path / "model_best.tar").unlink()
    with pytest.raises(run_folder.RunFolderError, match=re.escape("(checkpoint1.tar, checkpoint2.tar, "
                                                                  "checkpoint3.tar, metrics.jsonl):")):
        run_folder.claim(tmp_path, args())


def test_claim_returns_what_overwrite_drops(tmp_path):
    for name in ("metrics.jsonl", "loss.png", "val_results.json", "notes.txt"):
        (tmp_path / name).write_text("x")
    assert run_folder.claim(tmp_path, args(resume="last")) == []
    assert run_folder.claim(tmp_path, args(test_only=True)) == []
    stale = run_folder.claim(tmp_path, args(overwrite=True))
    assert sorted(p.name for p in stale) == ["loss.png", "metrics.jsonl", "val_results.json"]
    assert run_folder.claim(tmp_path / "new", args()) == [] and (tmp_path / "new" / run_folder.LOCK_NAME).exists()


def test_drop_stale_keeps_what_the_new_run_wrote(tmp_path):
    files = [tmp_path / n for n in ("a.tar", "b.png", "c.json")]
    for f in files:
        f.write_text("old")
    ctx = {"stale": files + [tmp_path / "gone.csv"]}
    run_folder.drop_stale(ctx, [str(tmp_path / "b.png")])
    assert [f.exists() for f in files] == [False, True, False] and "stale" not in ctx
    run_folder.drop_stale(ctx, [])  # a second save: nothing left to drop


def test_locks_are_per_folder_and_released(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    run_folder.lock(a)
    run_folder.lock(a)  # the same process again: held once
    run_folder.lock(b)
    assert set(run_folder._held) == {str(a.resolve()), str(b.resolve())}
    run_folder.release_locks()
    assert run_folder._held == {}


def test_a_file_system_without_locks_is_named(tmp_path, monkeypatch):
    def no_locks(fd, op):
        raise OSError(38, "Function not implemented")
    monkeypatch.setattr(run_folder.fcntl, "flock", no_locks)
    with pytest.raises(run_folder.RunFolderError, match=re.escape(
            f"cannot lock {tmp_path / run_folder.LOCK_NAME} (Function not implemented): choose a folder on a "
            f"local file system with --checkpoint-dir")):
        run_folder.lock(tmp_path)
    assert run_folder._held == {}


@pytest.mark.parametrize("kw,temporary", [({"dry_run": True}, True), ({}, False), ({"dry_run": True, "resume": "last"}, False),
                                          ({"dry_run": True, "test_only": True}, False),
                                          ({"dry_run": True, "checkpoint_dir": "mine"}, False)])
def test_only_a_dry_run_without_a_folder_gets_a_temporary_one(kw, temporary, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(run_folder.tempfile, "tempdir", str(tmp_path))
    a = args(**kw)
    run_folder.use_temporary_folder(a)
    if temporary:
        out = Path(a.checkpoint_dir)
        assert out.parent == tmp_path and out.name.startswith("gac-dry-run-") and out.is_dir()
        assert capsys.readouterr().out == f"dry run: writing to {out} (--checkpoint-dir to choose)\n"
    else:
        assert a.checkpoint_dir == kw.get("checkpoint_dir") and capsys.readouterr().out == ""


@pytest.mark.parametrize("rank,printed", [("0", True), ("1", False)])
def test_torchrun_processes_share_one_temporary_folder(monkeypatch, tmp_path, capsys, rank, printed):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setattr(run_folder.tempfile, "tempdir", str(tmp_path))
    a, b = args(dry_run=True), args(dry_run=True)
    run_folder.use_temporary_folder(a)
    run_folder.use_temporary_folder(b)
    assert a.checkpoint_dir == b.checkpoint_dir == str(tmp_path / f"gac-dry-run-{os.getppid()}")
    assert Path(a.checkpoint_dir).is_dir() and bool(capsys.readouterr().out) is printed


def selection(root: Path, train: list, test: list, val: list | None = None) -> Selection:
    def samples(names):
        for n in names:
            (root / n).parent.mkdir(parents=True, exist_ok=True)
            (root / n).write_bytes(b"x")
        return SampleSet([str(root / n) for n in names], [(0, 1, 0, 0)] * len(names), ["female", "male"])
    return Selection(["female", "male"], samples(train), samples(val) if val is not None else None, samples(test), [])


def test_data_roots_are_the_deepest_folder_of_each_split(tmp_path):
    sel = selection(tmp_path, ["d/train/f/a.jpg", "d/train/m/b.jpg"], ["d/test/f/c.jpg"], ["d/train/f/e.jpg"])
    assert sorted(run_folder.data_roots(sel)) == [tmp_path / "d/test/f", tmp_path / "d/train", tmp_path / "d/train/f"]


def test_data_roots_per_source(tmp_path):
    sel = selection(tmp_path, ["utk/a.jpg", "g/train/b.jpg"], ["utk/c.jpg"])
    sel.train.targets = [(0, 1, 0, 0), (0, 1, 1, 0)]  # the third field names the source
    assert sorted(run_folder.data_roots(sel)) == [tmp_path / "g/train", tmp_path / "utk", tmp_path / "utk"]


@pytest.mark.parametrize("out,inside", [("d/train", True), ("d/train/run", True), ("d/test/f/x", True),
                                        ("d", False), ("d/trainer", False), ("elsewhere", False)])
def test_check_outside_data(tmp_path, out, inside):
    sel = selection(tmp_path, ["d/train/f/a.jpg", "d/train/m/b.jpg"], ["d/test/f/c.jpg"])
    if inside:
        with pytest.raises(run_folder.RunFolderError, match="^--checkpoint-dir .* is inside the data folder .*: the "
                                                            "next run would read its plots as images; choose a folder "
                                                            "outside the data$"):
            run_folder.check_outside_data(tmp_path / out, sel)
    else:
        run_folder.check_outside_data(tmp_path / out, sel)


def test_the_fingerprint_ignores_order_and_counts_each_split(tmp_path):
    sel = selection(tmp_path, ["a.jpg", "b.jpg"], ["c.jpg"], ["e.jpg"])
    fp = run_folder.data_fingerprint(sel)
    sel.train.paths.reverse()
    assert run_folder.data_fingerprint(sel) == fp and fp["counts"] == {"train": 2, "val": 1, "test": 1}
    assert len(fp["sha256"]) == 64
    sel.train.paths[0] = str(tmp_path / "renamed.jpg")  # a missing file still counts, as size -1
    assert run_folder.data_fingerprint(sel)["sha256"] != fp["sha256"]
    # the same data in another place (relative paths) keeps its fingerprint
    moved = selection(tmp_path / "copy", ["a.jpg", "b.jpg"], ["c.jpg"], ["e.jpg"])
    assert run_folder.data_fingerprint(moved) == fp
    assert run_folder.data_fingerprint(Selection([], SampleSet([], [], []), None, SampleSet([], [], []), [])) == \
        {"sha256": run_folder.hashlib.sha256().hexdigest(), "counts": {"train": 0, "test": 0}}


def ckpt(total=100, data=None):
    return {"model_state": {"w": torch.ones(2)}, "train_state": {"s": torch.ones(1)},
            "scheduler_state": {"total_steps": total}, "data": data}


def test_check_resume(tmp_path):
    logs = []
    same = {"sha256": "a", "counts": {"train": 2}}
    sched = SimpleNamespace(total_steps=100)
    run_folder.check_resume(ckpt(data=same), "c.tar", sched, same, args(), logs.append)
    run_folder.check_resume(ckpt(data=None), "c.tar", sched, same, args(), logs.append)
    run_folder.check_resume(ckpt(data=same), "c.tar", sched, None, args(), logs.append)
    run_folder.check_resume(ckpt(total=None, data=same), "c.tar", SimpleNamespace(), same, args(), logs.append)
    assert logs == []
    with pytest.raises(CheckpointError, match=r"^c.tar follows a one-cycle schedule of 100 steps, and this run would "
                                              r"need 120: "):
        run_folder.check_resume(ckpt(data=same), "c.tar", SimpleNamespace(total_steps=120), same, args(), logs.append)
    other = {"sha256": "b", "counts": {"train": 3, "test": 1}}
    what = "the data changed since c.tar was saved (train 2 -> 3, test ? -> 1 images, or their names, labels or sizes)"
    with pytest.raises(CheckpointError, match="^" + re.escape(what + ": resume with the run's own data, start a new "
                                                              "run, or pass --resume-anyway") + "$"):
        run_folder.check_resume(ckpt(data=same), "c.tar", sched, other, args(), logs.append)
    run_folder.check_resume(ckpt(data=same), "c.tar", sched, other, args(resume_anyway=True), logs.append)
    assert logs == [f"warning: {what}; resuming anyway (--resume-anyway)"]
    bad = ckpt(data=same)
    bad["train_state"]["s"] = torch.tensor([float("nan")])
    with pytest.raises(CheckpointError):
        run_folder.check_resume(bad, "c.tar", sched, same, args(), logs.append)


def test_latest_checkpoint(tmp_path):
    assert run_folder.latest_checkpoint(tmp_path) == tmp_path / "checkpoint_last.tar"
    for n in (2, 10, 9):
        (tmp_path / f"checkpoint{n}.tar").write_text("x")
    (tmp_path / "checkpoint_x.tar").write_text("x")
    assert run_folder.latest_checkpoint(tmp_path) == tmp_path / "checkpoint10.tar"  # by number, not by name
    (tmp_path / "checkpoint_last.tar").write_text("x")
    assert run_folder.latest_checkpoint(tmp_path) == tmp_path / "checkpoint_last.tar"


def test_more_rules(tmp_path, monkeypatch):
    # a bare namespace (no --overwrite attribute) never replaces a run
    (tmp_path / "metrics.jsonl").write_text("x")
    with pytest.raises(run_folder.RunFolderError, match="already holds a run"):
        run_folder.claim(tmp_path, SimpleNamespace(test_only=False, resume=None))
    run_folder.release_locks()
    # the room a run needs is checked before the folder is taken
    monkeypatch.setattr(run_folder, "check_writable", lambda out, need_bytes=0: seen.append(need_bytes))
    seen = []
    (tmp_path / "new").mkdir()
    run_folder.claim(tmp_path / "new", args(), need_bytes=12345)
    assert seen == [12345]


def test_every_dry_run_gets_its_own_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(run_folder.tempfile, "tempdir", str(tmp_path))
    a, b = args(dry_run=True), args(dry_run=True)
    run_folder.use_temporary_folder(a)
    run_folder.use_temporary_folder(b)
    assert a.checkpoint_dir != b.checkpoint_dir


def test_data_roots_of_class_index_targets(tmp_path):
    sel = selection(tmp_path, ["t/f/a.jpg", "t/m/b.jpg"], ["s/f/c.jpg"])
    sel.train.targets, sel.test.targets = [0, 1], [0]  # a classifier's targets: class indices
    assert sorted(run_folder.data_roots(sel)) == [tmp_path / "s/f", tmp_path / "t"]


def test_the_fingerprint_sees_names_missing_files_and_odd_bytes(tmp_path):
    one = selection(tmp_path / "x", ["a.jpg", "b.jpg"], ["c.jpg"])
    two = selection(tmp_path / "y", ["a.jpg", "d.jpg"], ["c.jpg"])  # the same sizes and labels, another name
    assert run_folder.data_fingerprint(one)["sha256"] != run_folder.data_fingerprint(two)["sha256"]
    (tmp_path / "x" / "b.jpg").unlink()
    gone = run_folder.data_fingerprint(one)["sha256"]
    (tmp_path / "x" / "b.jpg").write_bytes(b"x")
    assert run_folder.data_fingerprint(one)["sha256"] != gone  # a missing file is not a 1-byte file
    odd = os.fsdecode(bytes(tmp_path / "x") + b"/\xff.jpg")  # a name that is not UTF-8
    Path(odd).write_bytes(b"x")
    one.train.paths.append(odd)
    one.train.targets.append((0, 1, 0, 0))
    assert len(run_folder.data_fingerprint(one)["sha256"]) == 64


def test_check_resume_details():
    sched = SimpleNamespace(total_steps=100)
    run_folder.check_resume(ckpt(total=100, data=None), "c.tar", SimpleNamespace(), None, args(), print)  # no one-cycle
    saved = {"sha256": "a"}  # from before counts were stored
    with pytest.raises(CheckpointError, match=re.escape("(train ? -> 2 images,")):
        run_folder.check_resume(ckpt(data=saved), "c.tar", sched, {"sha256": "b", "counts": {"train": 2}}, args(),
                                print)
    with pytest.raises(CheckpointError, match=re.escape("(train ? -> 2 images,")):
        run_folder.check_resume(ckpt(data=saved), "c.tar", sched, {"sha256": "b", "counts": {"train": 2}},
                                SimpleNamespace(), print)
    for part in ("model_state", "train_state"):
        bad = ckpt(data=None)
        bad[part] = {"w": torch.tensor([float("inf")])}
        with pytest.raises(CheckpointError, match=r"^c\.tar holds non-finite weights \(NaN or infinity in w\)"):
            run_folder.check_resume(bad, "c.tar", sched, None, args(), print)


def test_latest_checkpoint_of_one_digit(tmp_path):
    (tmp_path / "checkpoint7.tar").write_text("x")
    assert run_folder.latest_checkpoint(tmp_path) == tmp_path / "checkpoint7.tar"
