"""A run's folder and the data it was trained on: one run at a time in a
folder, no run silently replacing another, no folder inside the data, and no
resume onto other data than the run had.

* ``claim`` takes an exclusive ``flock`` on ``.gac-run.lock`` in the folder
  for the life of the process (the kernel drops it when the process ends,
  however it ends), and refuses to start a fresh run in a folder that already
  holds one unless ``--resume`` or ``--overwrite`` says what to do with it.
* With ``--overwrite`` the previous run's files stay until the new run saves
  its first checkpoint (``drop_stale``): a new run that fails at once (a bad
  flag, a bad ``--init-from``) has destroyed nothing.
* ``check_outside_data`` refuses a folder inside the training or test data,
  where the next run would take ``loss.png`` for a face.
* ``data_fingerprint`` hashes the sorted (relative path, label, size) of every
  split; checkpoints store it and ``check_resume`` compares it on resume.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import re
import tempfile
from pathlib import Path

from gender_age.core.checkpointing import CheckpointError, check_finite_weights, check_writable

LOCK_NAME = ".gac-run.lock"
# the files that show a folder holds a run (finished, interrupted or crashed)
RUN_FILES = ("model_best.tar", "checkpoint_last.tar", "metrics.jsonl", "test_results.json")
NUMBERED = re.compile(r"checkpoint\d+\.tar")
# what a run writes besides its checkpoints; --overwrite replaces these too
OUTPUTS = ("test_predictions.csv", "loss.png", "performance.png", "mae.png", "confusion.png", "test_scatter.png",
           "val_results.json", "val_predictions.csv", "val_confusion.png", "val_scatter.png")

_held: dict[str, object] = {}  # resolved folder -> open lock file of this process


class RunFolderError(Exception):
    """The output folder cannot be used for this run; the message says why and what to do."""


def use_temporary_folder(args) -> None:
    """A dry run without --checkpoint-dir writes to a new temporary folder
    (printed) instead of checkpoints/<task>: sets args.checkpoint_dir."""
    if args.checkpoint_dir or not args.dry_run or args.resume or args.test_only:
        return
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: every process must pick the same folder
        out = Path(tempfile.gettempdir()) / f"gac-dry-run-{os.getppid()}"
        out.mkdir(exist_ok=True)
    else:
        out = Path(tempfile.mkdtemp(prefix="gac-dry-run-"))
    if os.environ.get("RANK", "0") == "0":
        print(f"dry run: writing to {out} (--checkpoint-dir to choose)")
    args.checkpoint_dir = str(out)


def previous_run(out: Path) -> list[Path]:
    """The files in ``out`` that show it holds a run, sorted."""
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if p.name in RUN_FILES or NUMBERED.fullmatch(p.name))


def claim(out: Path, args, need_bytes: int = 200 << 20) -> list[Path]:
    """Make ``out`` this run's: writable with room, locked, and either fresh,
    continued (--resume), only read (--test-only) or replaced (--overwrite).
    Returns the previous run's files that --overwrite will drop (see drop_stale)."""
    check_writable(out, need_bytes=need_bytes)
    lock(out)
    if args.test_only or args.resume:
        return []
    found = previous_run(out)
    if found and not getattr(args, "overwrite", False):
        names = ", ".join(p.name for p in found[:4]) + (", ..." if len(found) > 4 else "")
        raise RunFolderError(f"{out} already holds a run ({names}): continue it with --resume, choose another "
                             f"folder with --checkpoint-dir, or replace it with --overwrite")
    return found + [p for p in map(out.joinpath, OUTPUTS) if p.exists()]


def lock(out: Path) -> None:
    """Hold an exclusive lock on ``out`` until release_locks() or the end of the process."""
    key = str(out.resolve())
    if key in _held:
        return
    f = open(out / LOCK_NAME, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise RunFolderError(f"{out} is in use by another run (it holds the lock {out / LOCK_NAME}): wait for it "
                             f"to finish, or choose another folder with --checkpoint-dir") from None
    except OSError as e:  # a file system without locks: say so instead of running unprotected silently
        f.close()
        raise RunFolderError(f"cannot lock {out / LOCK_NAME} ({e.strerror or e}): choose a folder on a local "
                             f"file system with --checkpoint-dir") from None
    _held[key] = f


def release_locks() -> None:
    """Release every run folder this process holds (the end of a run)."""
    while _held:
        _held.popitem()[1].close()


def drop_stale(ctx: dict, written) -> None:
    """--overwrite: once the new run has saved a checkpoint, remove the previous
    run's files it has not rewritten, so the folder never mixes two runs."""
    stale = ctx.pop("stale", None) or []
    keep = {Path(p).name for p in written}
    for path in stale:
        if path.name not in keep:
            path.unlink(missing_ok=True)


def data_roots(sel) -> list[Path]:
    """The folders the run's images come from: for each split, the deepest
    folder that holds all of its files (an ImageFolder train/ or test/ folder,
    a CSV's or UTKFace's image folder), per source when a run has several
    (age-gender targets name their source in their third field)."""
    groups: dict = {}
    for split, samples in enumerate((sel.train, sel.val, sel.test)):
        for p, t in zip(samples.paths if samples is not None else [], samples.targets if samples is not None else []):
            groups.setdefault((split, t[2] if isinstance(t, tuple) else 0), []).append(os.path.dirname(os.path.abspath(p)))
    return [Path(os.path.commonpath(dirs)) for dirs in groups.values()]


def check_outside_data(out: Path, sel) -> None:
    """Refuse an output folder inside the data: its plots would become training images."""
    where = out.resolve()
    for root in data_roots(sel):
        root = root.resolve()
        if where == root or root in where.parents:
            raise RunFolderError(f"--checkpoint-dir {out} is inside the data folder {root}: the next run would "
                                 f"read its plots as images; choose a folder outside the data")


def data_fingerprint(sel) -> dict:
    """sha256 over the sorted (split, path relative to the data's common folder,
    label, size in bytes) of every sample, with the number of samples per split."""
    splits = {"train": sel.train, "val": sel.val, "test": sel.test}
    every = [os.path.abspath(p) for s in splits.values() if s is not None for p in s.paths]
    base = os.path.commonpath(every) if every else ""
    digest, counts = hashlib.sha256(), {}
    for split, samples in splits.items():
        if samples is None:
            continue
        counts[split] = len(samples)
        for path, target in sorted(zip(map(str, samples.paths), samples.targets)):
            try:
                size = os.stat(path).st_size
            except OSError:
                size = -1
            rel = os.path.relpath(os.path.abspath(path), base)
            digest.update(f"{split}\0{rel}\0{target}\0{size}\n".encode("utf-8", "surrogateescape"))
    return {"sha256": digest.hexdigest(), "counts": counts}


def check_resume(ckpt: dict, path, scheduler, fingerprint: dict | None, args, log) -> None:
    """Whether a checkpoint can continue in this run: finite weights, the same
    one-cycle length, and the same data (unless --resume-anyway); raises
    CheckpointError with what to do."""
    check_finite_weights(ckpt["model_state"], path)
    check_finite_weights(ckpt.get("train_state") or {}, path)
    total = (ckpt.get("scheduler_state") or {}).get("total_steps")
    if total is not None and getattr(scheduler, "total_steps", total) != total:
        raise CheckpointError(f"{path} follows a one-cycle schedule of {total} steps, and this run would need "
                              f"{scheduler.total_steps}: a one-cycle schedule's length is fixed when its run "
                              f"starts, so resume with the run's own -ep and -b, or start a new run (--init-from "
                              f"{path} starts from its weights)")
    saved = ckpt.get("data")
    if not saved or not fingerprint or saved.get("sha256") == fingerprint["sha256"]:
        return
    counts = ", ".join(f"{k} {saved.get('counts', {}).get(k, '?')} -> {n}" for k, n in fingerprint["counts"].items())
    what = f"the data changed since {path} was saved ({counts} images, or their names, labels or sizes)"
    if not getattr(args, "resume_anyway", False):
        raise CheckpointError(f"{what}: resume with the run's own data, start a new run, or pass --resume-anyway")
    log(f"warning: {what}; resuming anyway (--resume-anyway)")


def latest_checkpoint(out: Path) -> Path:
    """checkpoint_last.tar, or (if a crash came before it was ever written) the
    highest-numbered checkpoint<N>.tar; the path to report when neither exists."""
    last = out / "checkpoint_last.tar"
    if last.is_file():
        return last
    numbered = [(int(p.stem[10:]), p) for p in out.glob("checkpoint*.tar") if p.stem[10:].isdigit()]
    return max(numbered)[1] if numbered else last
