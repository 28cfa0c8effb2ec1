"""ensemble.py: members of one design and one data split, averaged into one checkpoint that evaluates,
predicts and exports as one network; every misuse is a one-line error that writes nothing."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gender_age.tools import ensemble
from gender_age.tools import export
from gender_age.train import cli as gac
from gender_age.core.checkpointing import load_checkpoint
from gender_age.predict.torch_backend import Predictor
from helpers import LIGHT, make_sources, source_args


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """Three one-epoch age-gender runs: seed 0; seed 1 on seed 0's split; seed 1 on its own split."""
    root = tmp_path_factory.mktemp("ensemble")
    d = make_sources(root)
    src = sum((["--source", s] for s in source_args(d).source), [])
    runs = {}
    for name, seeds in (("a", ["--seed", "0"]), ("b", ["--seed", "1", "--split-seed", "0"]), ("c", ["--seed", "1"])):
        runs[name] = root / name
        assert gac.cli(["--task", "age-gender", *src, "--checkpoint-dir", str(runs[name]), "-ep", "1",
                        "--val-split", "0.25", *seeds, *LIGHT]) == 0
    return root, src, {k: v / "model_best.tar" for k, v in runs.items()}


def test_ensemble_averages_its_members_and_evaluates_on_their_validation_split(members, capsys):
    root, src, m = members
    out = root / "ab" / "model_best.tar"
    assert ensemble.cli([str(m["a"]), str(m["b"]), "-o", str(out)]) == 0
    ckpt = load_checkpoint(out)
    assert ckpt["model_args"]["members"] == 2 and ckpt["epoch"] == [1, 1]
    assert [e["seed"] for e in ckpt["ensemble"]] == [0, 1] and "train_state" not in ckpt
    # the logits are the mean of the members' logits, as predict.py computes them
    batch = np.random.default_rng(0).integers(0, 256, (3, 3, 40, 40), dtype=np.uint8)
    cpu = torch.device("cpu")
    mean = (Predictor(m["a"], cpu).logits(batch) + Predictor(m["b"], cpu).logits(batch)) / 2
    both = Predictor(out, cpu)
    np.testing.assert_allclose(both.logits(batch), mean, atol=1e-5)
    assert both.predict(batch)[0].keys() >= {"label", "probability", "age", "age_group"}
    # --eval-split val draws the members' common validation split again, from the ensemble's settings
    val = root / "ab-val"
    assert gac.cli(["--test-only", "--eval-split", "val", "--tta", "--resume", str(out), "--checkpoint-dir",
                    str(val), *src, "--no-progress"]) == 0
    held_out = load_checkpoint(m["a"])["data"]["counts"]["val"]
    assert json.loads((val / "val_results.json").read_text())["validation"]["n"] == held_out == 7  # 25% of 25
    # exported to ONNX, it gives the same logits
    onnx = root / "ab.onnx"
    assert export.cli([str(out), "-o", str(onnx)]) == 0
    from gender_age.predict.onnx_backend import OnnxPredictor
    np.testing.assert_allclose(OnnxPredictor(onnx).logits(batch), both.logits(batch), atol=1e-4)


def test_misuse_is_a_one_line_error_and_writes_nothing(members, capsys):
    root, src, m = members
    wrong = root / "wrong" / "model_best.tar"
    ckpt = load_checkpoint(m["b"])
    ckpt["preprocess"]["mean"] = [0.5, 0.5, 0.5]
    torch.save(ckpt, root / "other-mean.tar")
    for argv, said in (([m["a"], m["c"]], "held out different images"),
                       ([m["a"], m["a"]], "listed twice"),
                       ([m["a"]], "two or more"),
                       ([m["a"], root / "other-mean.tar"], "differ in preprocess"),
                       ([m["a"], root / "missing.tar"], "not found")):
        capsys.readouterr()
        assert ensemble.cli([*map(str, argv), "-o", str(wrong)]) == 2
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1 and "Traceback" not in err
        assert not wrong.parent.exists()
    # an existing output is never replaced without --overwrite, and a member never
    done = root / "done.tar"
    assert ensemble.cli([str(m["a"]), str(m["b"]), "-o", str(done)]) == 0
    before = done.read_bytes()
    assert ensemble.cli([str(m["a"]), str(m["b"]), "-o", str(done)]) == 2
    assert ensemble.cli([str(m["a"]), str(m["b"]), "-o", str(m["b"]), "--overwrite"]) == 2
    assert done.read_bytes() == before and load_checkpoint(m["b"])["model_args"].get("members") is None
    # an ensemble is not a member, and it cannot be resumed or fine-tuned
    assert ensemble.cli([str(m["a"]), str(done), "-o", str(wrong)]) == 2
    assert "cannot be a member of another ensemble" in capsys.readouterr().err
    assert gac.cli(["--resume", str(done), "--checkpoint-dir", str(root / "resumed"), *src, "--no-progress"]) == 2
    assert "cannot be resumed" in capsys.readouterr().err
    assert gac.cli(["--task", "age-gender", *src, "--init-from", str(done), "--checkpoint-dir",
                    str(root / "init"), "-ep", "1", *LIGHT]) == 2
    assert "cannot be a start for --init-from" in capsys.readouterr().err


def test_bench_general_compares_the_ensemble_of_its_members_with_their_time_summed(members, tmp_path, capsys):
    import shutil

    from benchmarks import bench_general as bg
    _, _, m = members
    run = tmp_path / "bench"
    args = bg.get_args_parser().parse_args(["--skip-train", "--members", "2", "--no-peer", "--no-tta", "--no-fairface",
                                            "--run-dir", str(run)])
    shutil.copytree(m["a"].parent, run / "member-0")
    assert bg.main(args) == 2  # member-1 is missing: one line, nothing written
    assert "member-1" in capsys.readouterr().err and not (run / "model_best.tar").exists()
    shutil.copytree(m["b"].parent, run / "member-1")
    assert bg.main(args) == 0
    result = json.loads((run / "bench_general.json").read_text())
    assert result["members"] == 2 and load_checkpoint(run / "model_best.tar")["model_args"]["members"] == 2
    own = [json.loads((run / f"member-{i}" / "test_results.json").read_text())["timing"] for i in (0, 1)]
    assert result["timing"]["chips_s"] == pytest.approx(own[0]["chips_s"] + own[1]["chips_s"])
    assert result["timing"]["total_s"] > own[0]["total_s"] + own[1]["total_s"]  # and the ensemble's own test
    assert result["ours"]["utk_gender"]["n"] == 4  # the ensemble's test predictions, in RUN_DIR
