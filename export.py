"""Export a checkpoint to ONNX (and optionally TorchScript) for deployment.

    python export.py checkpoints/gender/model_best.tar                  # -> .../model_best.onnx
    python export.py run/model_best.tar -o gender.onnx --torchscript    # also gender.pt
    python predict.py photo.jpg --onnx gender.onnx

The ONNX graph maps a normalised float32 batch (N, 3, C, C) to the logits
(N, outputs), with a dynamic batch size; everything else a runtime needs is
stored as ``metadata_props`` (JSON strings): task, classes, preprocess
(resize, crop, mean, std), model_args, ordinal (exact-age models: loss,
min_age, num_ranks), plus a plain-words description of the input and output.
``OnnxPredictor`` reads them, so predict.py does the same decoding and
post-processing for both runtimes. After writing, the file is run on
onnxruntime against PyTorch (fp32) and refused when a logit differs by more
than 1e-4. TorchScript files carry the same metadata as the extra file
``gac_metadata.json``.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from predictor import OnnxPredictor, Predictor
from checkpointing import CheckpointError, atomic_write
from samples import DatasetError

TOLERANCE = 1e-4


@contextmanager
def _quiet():
    """Silence the exporters' deprecation and tracer warnings (the legacy exporter is used on purpose)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _fp32_model(predictor: Predictor) -> torch.nn.Module:
    return predictor.model.to(memory_format=torch.contiguous_format).float().eval()


def export_onnx(checkpoint: str | Path, out: str | Path, opset: int = 17, check: bool = True) -> float:
    """Checkpoint -> ONNX file with metadata. Returns the largest |logit| difference from PyTorch
    on a random batch (0.0 with check=False); raises CheckpointError above TOLERANCE."""
    try:
        import onnx
    except ImportError:
        raise CheckpointError("ONNX export needs the onnx package: pip install onnx") from None
    predictor = Predictor(checkpoint, torch.device("cpu"), amp=False)
    c = predictor.preset.crop
    model = _fp32_model(predictor)
    buf = io.BytesIO()
    with _quiet():
        torch.onnx.export(model, (torch.zeros(2, 3, c, c),), buf, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
                          dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    for key, value in predictor.metadata().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"{predictor.task} model exported from {Path(checkpoint).name} by export.py"
    with atomic_write(out) as f:
        f.write(proto.SerializeToString())
    if not check:
        return 0.0
    batch = torch.randint(0, 256, (4, 3, predictor.preset.resize, predictor.preset.resize), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    diff = float((OnnxPredictor(out).logits(batch) - predictor.logits(batch)).abs().max())
    if diff > TOLERANCE:
        Path(out).unlink()
        raise CheckpointError(f"the ONNX model differs from PyTorch by {diff:.2e} (> {TOLERANCE}): not written")
    return diff


def export_torchscript(checkpoint: str | Path, out: str | Path) -> None:
    """Checkpoint -> traced TorchScript file, metadata in the extra file gac_metadata.json."""
    predictor = Predictor(checkpoint, torch.device("cpu"), amp=False)
    c = predictor.preset.crop
    buf = io.BytesIO()
    with _quiet():
        traced = torch.jit.trace(_fp32_model(predictor), torch.zeros(1, 3, c, c))
        torch.jit.save(traced, buf, _extra_files={"gac_metadata.json": json.dumps(predictor.metadata())})
    with atomic_write(out) as f:
        f.write(buf.getvalue())


def cli(argv=None) -> int:
    p = argparse.ArgumentParser(description="Export a checkpoint to ONNX (and TorchScript).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="a .tar checkpoint of this toolkit")
    p.add_argument("-o", "--output", default=None, help="ONNX file (default: the checkpoint's name with .onnx)")
    p.add_argument("--torchscript", action="store_true", help="also write a TorchScript .pt beside it")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime vs PyTorch comparison")
    args = p.parse_args(argv)
    out = Path(args.output or Path(args.checkpoint).with_suffix(".onnx"))
    try:
        if out.suffix.lower() != ".onnx":
            raise DatasetError(f"output {out} must end in .onnx")
        diff = export_onnx(args.checkpoint, out, args.opset, check=not args.no_check)
        print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)"
              + ("" if args.no_check else f"; onnxruntime matches PyTorch within {diff:.1e}"))
        if args.torchscript:
            ts = out.with_suffix(".pt")
            export_torchscript(args.checkpoint, ts)
            print(f"wrote {ts}")
    except (DatasetError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.strerror or e}: {e.filename or out}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
