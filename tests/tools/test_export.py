"""export.py: ONNX (torch.export-based exporter) with metadata, parity with PyTorch through predict.py,
a dynamic batch, the .pt2 program, and no file left behind when an export or its check fails."""
from __future__ import annotations

import json

import pytest
import numpy as np
import torch

from gender_age.tools import export
from gender_age.predict import cli as predict
from benchmarks.bench_predict import untrained_checkpoint
from gender_age.core.checkpointing import CheckpointError
from conftest import make_image
from helpers import one_thread  # noqa: F401  (autouse: one torch thread)
from gender_age.predict import onnx_backend as prediction_models  # noqa: E402
from gender_age.predict import torch_backend as predictor  # noqa: E402

# The deprecated exporters (TorchScript-based ONNX, torch.jit.trace) warn: make that a failure, so
# they cannot come back silently. It covers the module fixture too, which runs in a test's setup.
pytestmark = pytest.mark.filterwarnings("error::DeprecationWarning", "error::FutureWarning")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Untrained gender and exact-age checkpoints, each exported to ONNX (the gender one also to .pt2)."""
    d = tmp_path_factory.mktemp("export")
    out = {}
    for name, kwargs in (("gender", {}), ("exact", {"task": "exact-age", "head": "corn", "arch": "resnet18"})):
        ck = untrained_checkpoint(d / f"{name}.tar", **kwargs)
        argv = [str(ck)] + (["--pt2"] if name == "gender" else [])
        assert export.cli(argv) == 0
        out[name] = (ck, ck.with_suffix(".onnx"))
    for i in range(4):
        make_image(d / "in" / f"f{i}.png", i % 2, i, size=(90, 70))
    out["inputs"] = d / "in"
    return out


def _predict_json(capsys, *argv):
    assert predict.cli([str(a) for a in argv] + ["--no-amp", "--workers", "0", "--json", "--no-detect"]) == 0
    return json.loads(capsys.readouterr().out)


def _one_line_error(capsys, match: str) -> None:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and match in err, err


def test_onnx_metadata(exported):
    import onnx
    meta = {p.key: p.value for p in onnx.load(str(exported["exact"][1])).metadata_props}
    assert meta["task"] == "exact-age" and json.loads(meta["ordinal"]) == {"loss": "corn", "min_age": 21, "num_ranks": 40}
    assert json.loads(meta["preprocess"])["crop"] == 224
    model = onnx.load(str(exported["gender"][1]))
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["classes"]) == ["female", "male"] and json.loads(meta["preprocess"])["resize"] == 256
    assert [o.version for o in model.opset_import if o.domain == ""] == [export.DEFAULT_OPSET]


@pytest.mark.parametrize("n", [1, 4])
def test_onnx_batch_size_is_dynamic(exported, n):
    ck, onnx_path = exported["gender"]
    session = prediction_models.OnnxPredictor(onnx_path).session
    assert isinstance(session.get_inputs()[0].shape[0], str)  # a named, symbolic dimension
    x = torch.randn(n, 3, 227, 227)
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    with torch.no_grad():
        assert torch.allclose(got, predictor.Predictor(ck, torch.device("cpu")).model.float()(x), atol=1e-4)


@pytest.mark.parametrize("tta", [False, True])
def test_onnx_gives_the_same_probabilities(exported, capsys, tta):
    ck, onnx_path = exported["gender"]
    extra = ["--tta"] if tta else []
    torch_out = _predict_json(capsys, exported["inputs"], "--checkpoint", ck, *extra)
    onnx_out = _predict_json(capsys, exported["inputs"], "--onnx", onnx_path, *extra)
    assert len(torch_out) == 4
    for a, b in zip(torch_out, onnx_out):
        assert a["label"] == b["label"]
        for c in a["probabilities"]:
            assert a["probabilities"][c] == pytest.approx(b["probabilities"][c], abs=1e-4)


def test_onnx_exact_age_and_combined_models(exported, capsys):
    ck, onnx_path = exported["exact"]
    logits = {}
    for p in (predictor.Predictor(ck, torch.device("cpu")), prediction_models.OnnxPredictor(onnx_path)):
        batch = torch.randint(0, 256, (3, 3, 256, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        logits[type(p).__name__] = p.logits(batch)
    assert np.allclose(logits["Predictor"], logits["OnnxPredictor"], atol=1e-4)
    both = _predict_json(capsys, exported["inputs"], "--gender-checkpoint", exported["gender"][1],
                         "--exact-age-checkpoint", onnx_path)
    ages = _predict_json(capsys, exported["inputs"], "--checkpoint", ck)
    assert [r["age"] for r in ages] == [r["exact_age"] for r in both]


def test_pt2_carries_the_metadata(exported):
    ck, onnx_path = exported["gender"]
    extra = {export.PT2_METADATA: ""}
    module = torch.export.load(onnx_path.with_suffix(".pt2"), extra_files=extra).module()
    assert json.loads(json.loads(extra[export.PT2_METADATA])["classes"]) == ["female", "male"]
    p = predictor.Predictor(ck, torch.device("cpu"))
    for n in (1, 3):
        x = torch.randn(n, 3, 227, 227)
        with torch.no_grad():
            assert torch.allclose(module(x), p.model(x), atol=1e-5)


def _fail_onnx_tolerance(monkeypatch):
    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # the real check, made to refuse any file
    return "differs from PyTorch"


def _fail_onnxruntime(monkeypatch):
    def boom(self, x):
        raise RuntimeError("onnxruntime failed\nsecond line")
    monkeypatch.setattr(prediction_models.OnnxPredictor, "_forward", boom)
    return "does not run on its declared 227 px input (RuntimeError: onnxruntime failed)"  # the load's probe


def _fail_pt2_check(monkeypatch):
    real = export.check_parity

    def check(reference, logits, what):
        if what == ".pt2":
            raise CheckpointError("the .pt2 model differs from PyTorch (forced): not written")
        return real(reference, logits, what)
    monkeypatch.setattr(export, "check_parity", check)
    return "(forced)"


@pytest.mark.parametrize("fail", [_fail_onnx_tolerance, _fail_onnxruntime, _fail_pt2_check])
def test_a_failed_check_leaves_no_file(tmp_path, capsys, monkeypatch, fail):
    ck = untrained_checkpoint(tmp_path / "m.tar")
    out = tmp_path / "out" / "m.onnx"
    out.parent.mkdir()
    (out.parent / "m.pt2").write_bytes(b"an earlier file")  # kept as it was, never half-replaced
    match = fail(monkeypatch)
    assert export.cli([str(ck), "-o", str(out), "--pt2"]) == 2
    _one_line_error(capsys, match)
    left = sorted(p.name for p in out.parent.iterdir())
    assert left == (["m.onnx", "m.pt2"] if fail is _fail_pt2_check else ["m.pt2"])
    assert (out.parent / "m.pt2").read_bytes() == b"an earlier file"


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    ck = untrained_checkpoint(tmp_path / "m.tar")
    for argv, match in (([str(ck), "--opset", "17"], "opsets 18 to 25"), ([str(ck), "--torchscript"], "use --pt2"),
                        ([str(ck), "-o", str(tmp_path / "m.txt")], "must end in .onnx"),
                        ([str(tmp_path / "missing.tar")], "not found")):
        assert export.cli(argv) == 2
        _one_line_error(capsys, match)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tar"]


def test_bad_onnx_files_are_one_line_errors(exported, tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper
    (tmp_path / "text.onnx").write_text("not a model")
    plain = tmp_path / "plain.onnx"  # a valid ONNX file without this toolkit's metadata
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "plain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(plain))
    for path, match in ((tmp_path / "text.onnx", "not a readable ONNX model"), (plain, "lacks this toolkit's metadata")):
        assert predict.cli([str(exported["inputs"]), "--onnx", str(path)]) == 2
        _one_line_error(capsys, match)


def test_onnx_models_alone_never_import_torch(exported, capsys):
    """predict.py with ONNX models only (gender + exact age), with detection (yunet) or without,
    runs on onnxruntime and numpy: torch is never imported, and the records are the checkpoints'."""
    from helpers import loaded_modules
    gender, exact = exported["gender"][1], exported["exact"][1]
    argv = [str(exported["inputs"]), "--gender-checkpoint", str(gender), "--exact-age-checkpoint", str(exact),
            "--json", "--workers", "0"]
    no_detect = ["--no-detect", "--workers", "2", "-b", "1"]  # two decode workers
    for extra, loaded in (([], {"onnxruntime", "yuface"}), (no_detect, {"onnxruntime"})):
        run = (f"import sys, runpy; sys.path.insert(0, '.'); sys.argv = ['predict.py', *{argv + extra!r}]\n"
               f"try:\n    runpy.run_path('predict.py', run_name='__main__')\n"
               f"except SystemExit as e:\n    assert e.code == 0, e.code")
        assert loaded_modules(run) == loaded, extra
    onnx_out = _predict_json(capsys, *argv[:-3])
    tar_out = _predict_json(capsys, exported["inputs"], "--gender-checkpoint", exported["gender"][0],
                            "--exact-age-checkpoint", exported["exact"][0])
    assert [(r["gender"], r["exact_age"]) for r in onnx_out] == [(r["gender"], r["exact_age"]) for r in tar_out]
