"""export.py: ONNX with metadata, parity with PyTorch through predict.py, TorchScript."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

import export
import predict
from bench_predict import untrained_checkpoint
from conftest import make_image
from test_faces import one_thread  # noqa: F401  (autouse: one torch thread)
import predictor  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Untrained gender and exact-age checkpoints, each exported to ONNX (the gender one also to TorchScript)."""
    d = tmp_path_factory.mktemp("export")
    out = {}
    for name, kwargs in (("gender", {}), ("exact", {"task": "exact-age", "head": "corn", "arch": "resnet18"})):
        ck = untrained_checkpoint(d / f"{name}.tar", **kwargs)
        argv = [str(ck)] + (["--torchscript"] if name == "gender" else [])
        assert export.cli(argv) == 0
        out[name] = (ck, ck.with_suffix(".onnx"))
    for i in range(4):
        make_image(d / "in" / f"f{i}.png", i % 2, i, size=(90, 70))
    out["inputs"] = d / "in"
    return out


def _predict_json(capsys, *argv):
    assert predict.cli([str(a) for a in argv] + ["--no-amp", "--workers", "0", "--json", "--no-detect"]) == 0
    return json.loads(capsys.readouterr().out)


def test_onnx_metadata(exported):
    import onnx
    meta = {p.key: p.value for p in onnx.load(str(exported["exact"][1])).metadata_props}
    assert meta["task"] == "exact-age" and json.loads(meta["ordinal"]) == {"loss": "corn", "min_age": 21, "num_ranks": 40}
    assert json.loads(meta["preprocess"])["crop"] == 224
    meta = {p.key: p.value for p in onnx.load(str(exported["gender"][1])).metadata_props}
    assert json.loads(meta["classes"]) == ["female", "male"] and json.loads(meta["preprocess"])["resize"] == 256


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
    for p in (predictor.Predictor(ck, torch.device("cpu")), predictor.OnnxPredictor(onnx_path)):
        batch = torch.randint(0, 256, (3, 3, 256, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        logits[type(p).__name__] = p.logits(batch)
    assert torch.allclose(logits["Predictor"], logits["OnnxPredictor"], atol=1e-4)
    both = _predict_json(capsys, exported["inputs"], "--gender-checkpoint", exported["gender"][1],
                         "--exact-age-checkpoint", onnx_path)
    ages = _predict_json(capsys, exported["inputs"], "--checkpoint", ck)
    assert [r["exact_age"] for r in both] == [r["age"] for r in ages]


def test_torchscript_carries_the_metadata(exported):
    ck, onnx_path = exported["gender"]
    extra = {"gac_metadata.json": ""}
    with warnings.catch_warnings():  # TorchScript is deprecated, but still loads
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(onnx_path.with_suffix(".pt")), _extra_files=extra)
    assert json.loads(json.loads(extra["gac_metadata.json"])["classes"]) == ["female", "male"]
    x = torch.randn(2, 3, 227, 227)
    p = predictor.Predictor(ck, torch.device("cpu"))
    assert torch.allclose(module(x), p.model(x), atol=1e-5)


def test_bad_onnx_files_are_one_line_errors(exported, tmp_path, capsys):
    (tmp_path / "text.onnx").write_text("not a model")
    plain = tmp_path / "plain.onnx"  # a valid ONNX file without this toolkit's metadata
    with warnings.catch_warnings():  # the legacy exporter's deprecation notice, as in export.py
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.nn.Linear(3, 2), (torch.zeros(1, 3),), str(plain), dynamo=False)
    for path, match in ((tmp_path / "text.onnx", "not a readable ONNX model"), (plain, "lacks this toolkit's metadata")):
        assert predict.cli([str(exported["inputs"]), "--onnx", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error:") and match in err
    assert export.cli([str(tmp_path / "missing.tar")]) == 2
    assert "not found" in capsys.readouterr().err
