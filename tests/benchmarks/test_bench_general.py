"""bench_general.py: its figures on tiny hand-made runs (no training, no peer)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from benchmarks import bench_general as bg

HEADER = ["file", "source", "true_gender", "gender", "p_gender", "true_age", "age", "true_group", "age_group"]


def row(file, source, true_gender="", gender="", true_age="", age="", true_group=""):
    return {"file": file, "source": source, "true_gender": true_gender or None, "gender": gender or None,
            "true_age": true_age if true_age != "" else None, "age": age if age != "" else None,
            "true_group": true_group or None}


# 3 gender-data images, 2 UTKFace images, 2 age-data images
ROWS = [row("g/a.jpg", "gender", "male", "male", age=30.0), row("g/b.jpg", "gender", "female", "female", age=20.0),
        row("g/c.jpg", "gender", "female", "male", age=50.0),
        row("u/1.jpg", "utkface", "male", "male", 30, 33.0), row("u/2.jpg", "utkface", "female", "female", 60, 50.0),
        row("a/y.jpg", "age-groups", gender="male", age=38.9, true_group="young"),
        row("a/o.jpg", "age-groups", gender="male", age=39.0, true_group="old")]
# the peer: misses g/b.jpg (no face) and u/2.jpg, gets g/c.jpg right, calls a/o.jpg young
PEER = {"g/a.jpg": {"gender": "male", "age": 25}, "g/b.jpg": {"gender": None, "age": None},
        "g/c.jpg": {"gender": "female", "age": 41}, "u/1.jpg": {"gender": "female", "age": 28},
        "u/2.jpg": {"gender": None, "age": None}, "a/y.jpg": {"gender": "male", "age": 20},
        "a/o.jpg": {"gender": "male", "age": 38}}


def test_metrics_of_ours_and_of_a_peer_that_misses_faces():
    ours = bg.metrics(ROWS, bg.own_predictions(ROWS))
    assert ours["gender_data"] == {"k": 2, "n": 3, "acc": pytest.approx(2 / 3), "missed": 0}
    assert ours["utk_gender"]["acc"] == 1.0
    assert ours["young_old"]["k"] == 2  # 38.9 is young, 39.0 old: the peer's < 39 rule
    assert ours["utk_age"] == {"n": 2, "missed": 0, "mae": pytest.approx(6.5), "rmse": pytest.approx((109 / 2) ** 0.5),
                               "cs5": 0.5}
    peer = bg.metrics(ROWS, PEER)
    assert peer["gender_data"] == {"k": 2, "n": 3, "acc": pytest.approx(2 / 3), "missed": 1}  # a miss is wrong
    assert peer["utk_gender"] == {"k": 0, "n": 2, "acc": 0.0, "missed": 1}
    assert peer["young_old"]["k"] == 1
    assert peer["utk_age"] == {"n": 1, "missed": 1, "mae": 2.0, "rmse": 2.0, "cs5": 1.0}  # the miss is left out
    assert bg.metrics(ROWS, {})["utk_age"]["mae"] is None  # nothing found at all: no figure, no crash


def test_table_says_whether_each_target_is_met():
    def figures(k, utk, young_old, mae):
        return {"gender_data": {"k": k, "n": 108, "acc": k / 108, "missed": 0},
                "utk_gender": {"k": 1, "n": 1, "acc": utk, "missed": 0},
                "young_old": {"k": 1, "n": 1, "acc": young_old, "missed": 0},
                "utk_age": {"n": 10, "missed": 0, "mae": mae, "rmse": 6.0, "cs5": 0.6}}
    text, rows = bg.table(figures(106, 0.966, 0.93, 4.8), None)
    assert [r["met"] for r in rows] == [True, True, True, True, None, None]  # on the targets exactly: met
    assert "106/108" in text and "not run" in text
    _, rows = bg.table(figures(105, 0.965, 0.929, 4.81), figures(106, 0.97, 0.95, 5.0))
    assert [r["met"] for r in rows] == [False, False, False, False, None, None]
    assert rows[0]["peer"] == pytest.approx(106 / 108)
    text, _ = bg.table(figures(106, 0.97, 0.95, 5.0), bg.metrics(ROWS, PEER))
    assert "1 no face" in text


def test_table_never_rounds_a_figure_across_its_target():
    figures = {"gender_data": {"k": 106, "n": 108, "acc": 106 / 108, "missed": 0},
               "utk_gender": {"k": 3175, "n": 3287, "acc": 3175 / 3287, "missed": 0},  # 0.96593: a miss
               "young_old": {"k": 80, "n": 83, "acc": 80 / 83, "missed": 0},
               "utk_age": {"n": 10, "missed": 0, "mae": 4.8004, "rmse": 6.0, "cs5": 0.6}}  # a miss too
    text, rows = bg.table(figures, None)
    assert [r["met"] for r in rows[:4]] == [True, False, True, False]
    assert "| 0.9659 (3175/3287) |" in text and "| 4.8004 |" in text
    assert "| 0.964 (80/83) |" in text and "| 0.981 (106/108) |" in text  # 3 decimals where no doubt


def test_cpu_info_and_budget():
    """The 60-minute budget holds for AVX2 kernels in fp32: an AVX2-only CPU, or AVX-512 limited to AVX2."""
    amx = bg.cpu_info("model name\t: Xeon X\nflags\t\t: avx2 avx512f amx_tile avx512_bf16\n", env={})
    assert (amx["model"], amx["amx"], amx["avx512_bf16"], amx["budget_min"], amx["avx2_kernels"]) == \
        ("Xeon X", True, True, 60, False)
    avx2 = bg.cpu_info("model name\t: Old CPU\nflags\t\t: avx2 fma\n", env={})
    assert (avx2["amx"], avx2["avx512_bf16"], avx2["avx2_kernels"]) == (False, False, True)
    limited = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert bg.cpu_info("flags\t\t: avx2 avx512f\n", env=limited)["avx2_kernels"] is True
    assert bg.cpu_info("flags\t\t: avx2 avx512f\n", env={"ATEN_CPU_CAPABILITY": "avx2"})["avx2_kernels"] is False


def write_run(run_dir, rows, timing=None):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "test_results.json").write_text(json.dumps({"task": "age-gender", "epoch": 3, "timing": timing or {}}))
    with open(run_dir / "test_predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for r in rows:
            w.writerow([r["file"], r["source"], r["true_gender"] or "", r["gender"] or "", "0.9",
                        "" if r["true_age"] is None else r["true_age"], r["age"], r["true_group"] or "", ""])


def run_main(argv):
    """bench_general's main; without FairFace-540 unless --fairface is given."""
    extra = [] if "--fairface" in argv else ["--no-fairface"]
    return bg.main(bg.get_args_parser().parse_args([*argv, *extra]))


def test_compares_a_finished_run_and_writes_json(tmp_path, capsys, monkeypatch):
    avx2_cpu = bg.cpu_info("model name\t: Old CPU\nflags\t\t: avx2 fma\n", env={})
    monkeypatch.setattr(bg, "cpu_info", lambda: avx2_cpu)  # the budget is judged on AVX2 kernels only
    run_dir = tmp_path / "run"
    write_run(run_dir, ROWS, {"chips_s": 600.0, "total_s": 4200.0})
    assert run_main(["--run-dir", str(run_dir), "--skip-train", "--no-peer", "--no-tta"]) == 0
    result = json.loads((run_dir / "bench_general.json").read_text())
    assert result["ours"]["gender_data"]["k"] == 2 and result["peer"] is None
    assert result["timing"]["train_no_chips_min"] == 60.0
    assert result["budget_met"] is True  # 60 min of training (4200 s - 600 s of chips) is within it
    assert "| gender, gender-data/test | 0.667 (2/3) | not run |" in capsys.readouterr().out
    # run again: it replaces its own result, but never another file
    assert run_main(["--run-dir", str(run_dir), "--skip-train", "--no-peer", "--no-tta"]) == 0
    other = tmp_path / "notes.json"
    other.write_text("{}")
    assert run_main(["--run-dir", str(run_dir), "--skip-train", "--no-peer", "--no-tta", "--out", str(other)]) == 2
    assert other.read_text() == "{}"


def test_refuses_to_train_over_an_existing_run(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    write_run(run_dir, ROWS)
    monkeypatch.setattr(bg.subprocess, "run", lambda *a, **k: pytest.fail("must not start training"))
    assert run_main(["--run-dir", str(run_dir), "--no-peer", "--no-tta"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    calls = []
    monkeypatch.setattr(bg.subprocess, "run", lambda cmd, **k: calls.append(cmd) or type("P", (), {"returncode": 0}))
    assert run_main(["--run-dir", str(run_dir), "--no-peer", "--no-tta", "--overwrite", "--train-args",
                     "--epochs 2"]) == 0
    # every age: no --min-age/--max-age of the CORAL protocol
    assert calls[0][1:] == ["gender_age_classifier.py", "--task", "age-gender",
                            "--checkpoint-dir", str(run_dir), "--no-progress", "--overwrite", "--epochs", "2"]


def test_members_train_with_their_own_seeds_on_one_split(tmp_path, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(bg.subprocess, "run", lambda cmd, **k: calls.append(cmd) or type("P", (), {"returncode": 0}))
    args = bg.get_args_parser().parse_args(["--run-dir", str(tmp_path), "--members", "2", "--train-args", "-ep 2"])
    assert bg.train_members(tmp_path, args) >= 0
    assert [c[c.index("--checkpoint-dir") + 1:] for c in calls] == [
        [str(tmp_path / f"member-{i}"), "--no-progress", "--seed", str(i), "--split-seed", "0", "-ep", "2"]
        for i in (0, 1)]
    assert run_main(["--run-dir", str(tmp_path), "--members", "0"]) == 2  # one line, nothing run
    assert "--members must be 1 or more" in capsys.readouterr().err and len(calls) == 2


def test_resume_keeps_finished_members_and_continues_an_interrupted_one(tmp_path, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(bg.subprocess, "run", lambda cmd, **k: calls.append(cmd) or type("P", (), {"returncode": 0}))
    write_run(tmp_path / "member-0", ROWS)  # trained and tested
    (tmp_path / "member-1").mkdir()
    (tmp_path / "member-1" / "checkpoint_last.tar").write_bytes(b"an interrupted run")
    argv = ["--run-dir", str(tmp_path), "--members", "3", "--train-args", "-ep 2"]
    with pytest.raises(bg.BenchError, match="continue it with --resume"):  # without --resume: refused, nothing run
        bg.train_members(tmp_path, bg.get_args_parser().parse_args(argv))
    assert not calls
    assert bg.train_members(tmp_path, bg.get_args_parser().parse_args([*argv, "--resume"])) >= 0
    assert [c[c.index("--checkpoint-dir") + 1:] for c in calls] == [
        [str(tmp_path / "member-1"), "--no-progress", "--seed", "1", "--split-seed", "0", "-ep", "2", "--resume"],
        [str(tmp_path / "member-2"), "--no-progress", "--seed", "2", "--split-seed", "0", "-ep", "2"]]
    assert f"{tmp_path / 'member-0'}: a finished run, kept" in capsys.readouterr().out
    for other in ("--skip-train", "--overwrite"):  # --resume trains: one line, exit 2, nothing run
        assert run_main([*argv, "--resume", other, "--no-peer"]) == 2
        err = capsys.readouterr().err
        assert f"drop {other}" in err and len(err.strip().splitlines()) == 1
    assert len(calls) == 2
    # one run, finished: kept and compared, and the report says the wall time is this command's part only
    assert run_main(["--run-dir", str(tmp_path / "member-0"), "--resume", "--no-peer", "--no-tta"]) == 0
    assert "0.0 min (this command's part of the run, --resume)" in capsys.readouterr().out and len(calls) == 2


def test_tta_compares_the_over_sampled_evaluation_of_the_same_checkpoint(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    write_run(run_dir, ROWS, {"chips_s": 600.0, "total_s": 4200.0})
    own = (run_dir / "test_predictions.csv").read_text()
    better = [dict(r, gender="female") if r["file"] == "g/c.jpg" else r for r in ROWS]  # over-sampling fixes g/c
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        write_run(Path(cmd[cmd.index("--checkpoint-dir") + 1]), better)
        return type("P", (), {"returncode": 0})

    monkeypatch.setattr(bg.subprocess, "run", fake_run)
    clock = iter(range(0, 10_000, 360))  # each reading of the clock 6 minutes after the last
    monkeypatch.setattr(bg.time, "perf_counter", lambda: next(clock))
    assert run_main(["--run-dir", str(run_dir), "--skip-train", "--no-peer"]) == 2  # no model_best.tar yet
    assert "model_best.tar is missing" in capsys.readouterr().err and not calls
    (run_dir / "model_best.tar").write_bytes(b"weights")
    assert run_main(["--run-dir", str(run_dir), "--skip-train", "--no-peer"]) == 0
    assert calls == [[bg.sys.executable, "gender_age_classifier.py", "--test-only", "--tta", "--resume",
                      str(run_dir / "model_best.tar"), "--checkpoint-dir", str(run_dir / "tta"), "--no-progress"]]
    result = json.loads((run_dir / "bench_general.json").read_text())
    assert result["tta"] is True and result["ours"]["gender_data"]["k"] == 3  # the over-sampled predictions
    assert result["timing"]["tta_s"] == 360  # and its time counts in the budget
    assert result["timing"]["train_no_chips_min"] == 66.0
    assert (run_dir / "test_predictions.csv").read_text() == own  # the run's own test stays as it was
    monkeypatch.setattr(bg.subprocess, "run", lambda cmd, **k: type("P", (), {"returncode": 1}))
    assert run_main(["--run-dir", str(run_dir), "--skip-train", "--no-peer"]) == 1
    assert "--tta evaluation failed" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["no-csv", "bad-age", "no-column"])
def test_bad_run_files_give_one_line_and_exit_2(tmp_path, capsys, damage):
    run_dir = tmp_path / "run"
    write_run(run_dir, ROWS)
    csv_path = run_dir / "test_predictions.csv"
    if damage == "no-csv":
        csv_path.unlink()
    elif damage == "bad-age":
        csv_path.write_text(csv_path.read_text().replace("33.0", "abc"))
    else:
        csv_path.write_text(csv_path.read_text().replace("true_age", "truth"))
    assert run_main(["--run-dir", str(run_dir), "--skip-train", "--no-peer", "--no-tta"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench_general: error:") and len(err.strip().splitlines()) == 1


def test_peer_output_is_read_per_file(monkeypatch):
    seen = {}

    def timed(cmd, env=None):
        seen["files"] = open(cmd[-1]).read().split()
        seen["env"] = env
        return 1.5, '{"file": "x.jpg", "gender": "male", "p_gender": 0.99, "age": 27}\n' \
                    '{"file": "y.jpg", "gender": null, "p_gender": null, "age": null}\n'
    monkeypatch.setattr(bg.bench_speed, "timed", timed)
    preds, seconds = bg.run_peer("python", ["x.jpg", "y.jpg"])
    assert seen == {"files": ["x.jpg", "y.jpg"], "env": {"OMP_NUM_THREADS": "1"}} and seconds == 1.5
    assert preds == {"x.jpg": {"gender": "male", "p_gender": 0.99, "age": 27},
                     "y.jpg": {"gender": None, "p_gender": None, "age": None}}
