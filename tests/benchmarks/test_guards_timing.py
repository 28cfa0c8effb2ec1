"""bench_general --members: the training time reported is the sum of the members' own times
(a kept, finished member adds nothing), not merely some non-negative number."""
from __future__ import annotations

import pytest

from benchmarks import bench_general as bg


def test_member_training_times_are_summed(tmp_path, monkeypatch):
    seconds = iter([1.5, 2.25, 4.0])
    monkeypatch.setattr(bg, "run_classifier", lambda command, what: next(seconds))
    args = bg.get_args_parser().parse_args(["--run-dir", str(tmp_path), "--members", "3"])
    assert bg.train_members(tmp_path, args) == pytest.approx(7.75)


def test_a_finished_member_kept_on_resume_adds_no_time(tmp_path, monkeypatch):
    done = tmp_path / "member-0"
    done.mkdir()
    (done / "checkpoint_last.tar").write_bytes(b"a run")
    (done / "test_results.json").write_text("{}")
    calls = []
    monkeypatch.setattr(bg, "run_classifier", lambda command, what: calls.append(command) or 3.0)
    args = bg.get_args_parser().parse_args(["--run-dir", str(tmp_path), "--members", "2", "--resume"])
    assert bg.train_members(tmp_path, args) == pytest.approx(3.0) and len(calls) == 1
