"""Export a checkpoint to ONNX (and optionally a torch.export .pt2 file) for deployment.

    python export.py checkpoints/gender/model_best.tar             # -> .../model_best.onnx
    python export.py run/model_best.tar -o gender.onnx --pt2       # also gender.pt2
    python predict.py photo.jpg --onnx gender.onnx

The ONNX graph maps a normalised float32 batch (N, 3, C, C) to the logits
(N, outputs), with a dynamic batch size; everything else a runtime needs is
stored as ``metadata_props`` (JSON strings): task, classes, preprocess
(resize, crop, mean, std), model_args, ordinal (exact-age and age-gender
models: loss, min_age, num_ranks), genders and age_groups (age-gender models:
one output tensor, the gender logits then the age head's outputs), plus a
plain-words description of the input and output.
``OnnxPredictor`` reads them, so predict.py does the same decoding and
post-processing for both runtimes.

The graph comes from the torch.export-based exporter
(``torch.onnx.export(..., dynamo=True)``, which needs the onnxscript
package); the TorchScript-based one and ``torch.jit.trace`` are deprecated in
this torch. ``--pt2`` writes the same graph as a ``torch.export`` program
(``torch.export.load``), with the metadata in the extra file
``gac_metadata.json``; it replaces the former TorchScript ``.pt``.

Every file is written to a temporary file in the target folder, checked
against PyTorch (fp32) on batches of 1 and 4 images, and only then renamed
into place; a file whose logits differ by more than TOLERANCE, or any other
failure, leaves no file behind (``--no-check`` skips the comparison).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from gender_age.predict.onnx_backend import OnnxPredictor
from gender_age.predict.torch_backend import Predictor
from gender_age.core.checkpointing import CheckpointError, atomic_write
from gender_age.data.samples import DatasetError

TOLERANCE = 1e-4
MIN_OPSET, MAX_OPSET = 18, 25  # what the torch.export-based exporter and onnxscript's converter write
DEFAULT_OPSET = 20              # the exporter's own default in torch 2.14
CHECK_BATCHES = (1, 4)
PT2_METADATA = "gac_metadata.json"


def _fp32_model(predictor: Predictor) -> torch.nn.Module:
    return predictor.model.to(memory_format=torch.contiguous_format).float().eval()


def _export_args(predictor: Predictor) -> dict:
    """The example batch and the dynamic batch dimension both exporters trace with."""
    c = predictor.preset.crop
    return {"args": (torch.zeros(2, 3, c, c),), "dynamic_shapes": ({0: torch.export.Dim("batch")},)}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__


@contextmanager
def _checked_output(out: Path):
    """Yield a temporary path in ``out``'s folder for the block to write and check; rename it to
    ``out`` when the block succeeds, remove it on any failure (a failed check included)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=f".tmp{out.suffix}", dir=out.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)


@torch.no_grad()
def check_parity(reference: Predictor, logits: Callable[[torch.Tensor], np.ndarray], what: str) -> float:
    """Largest |logit| difference between ``logits`` (uint8 (N,3,R,R) -> numpy (N, outputs)) and the
    PyTorch model on seeded random batches of CHECK_BATCHES images; CheckpointError above TOLERANCE."""
    r = reference.preset.resize
    gen = torch.Generator().manual_seed(0)
    diff = 0.0
    for n in CHECK_BATCHES:
        batch = torch.randint(0, 256, (n, 3, r, r), dtype=torch.uint8, generator=gen)
        try:
            got = logits(batch)
        except Exception as e:  # onnxruntime and torch.export raise their own types
            raise CheckpointError(f"the {what} model fails on a batch of {n} ({_first_line(e)}): not written") from None
        want = reference.logits(batch)
        if got.shape != want.shape:
            raise CheckpointError(f"the {what} model gives logits of shape {tuple(got.shape)} for a batch of {n}, "
                                  f"PyTorch {tuple(want.shape)}: not written")
        diff = max(diff, float(np.abs(got - want).max()))
    if diff > TOLERANCE:
        raise CheckpointError(f"the {what} model differs from PyTorch by {diff:.2e} (> {TOLERANCE}): not written")
    return diff


def _onnx_model(predictor: Predictor, opset: int):
    """The checkpoint's network as an onnx ModelProto (torch.export-based exporter), metadata added."""
    try:
        import onnx  # noqa: F401  (the exporter needs both)
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise CheckpointError(f"ONNX export needs the onnx and onnxscript packages ({_first_line(e)}): "
                              f"pip install -r requirements.txt") from None
    try:
        program = torch.onnx.export(_fp32_model(predictor), f=None, input_names=["input"], output_names=["logits"],
                                    opset_version=opset, dynamo=True, verbose=False, **_export_args(predictor))
        proto = program.model_proto
    except Exception as e:  # the exporter raises many types; each is one line here
        raise CheckpointError(f"the ONNX exporter failed on {predictor.path} ({_first_line(e)})") from None
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:
        raise CheckpointError(f"the exporter wrote opset {written}, not the {opset} asked for: use --opset {written}")
    for key, value in predictor.metadata().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"{predictor.task} model exported from {predictor.path.name} by export.py"
    return proto


def export_onnx(checkpoint: str | Path, out: str | Path, opset: int = DEFAULT_OPSET, check: bool = True) -> float:
    """Checkpoint -> ONNX file with metadata. Returns the largest |logit| difference from PyTorch
    (0.0 with check=False); raises CheckpointError, leaving no file, above TOLERANCE."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise CheckpointError(f"--opset {opset} is not supported: the torch.export-based exporter writes "
                              f"opsets {MIN_OPSET} to {MAX_OPSET}")
    predictor = Predictor(checkpoint, torch.device("cpu"), amp=False)
    data = _onnx_model(predictor, opset).SerializeToString()
    with _checked_output(Path(out)) as tmp:
        with atomic_write(tmp) as f:  # flushed and fsync'ed before the check reads it
            f.write(data)
        return check_parity(predictor, OnnxPredictor(tmp).logits, "ONNX") if check else 0.0


def export_pt2(checkpoint: str | Path, out: str | Path, check: bool = True) -> float:
    """Checkpoint -> torch.export program (.pt2) with the metadata in the extra file PT2_METADATA.
    Returns the largest |logit| difference of the reloaded program from the model (0.0 with check=False)."""
    predictor = Predictor(checkpoint, torch.device("cpu"), amp=False)
    try:
        program = torch.export.export(_fp32_model(predictor), **_export_args(predictor))
    except Exception as e:  # torch.export raises many types; each is one line here
        raise CheckpointError(f"torch.export failed on {predictor.path} ({_first_line(e)})") from None
    buf = io.BytesIO()
    torch.export.save(program, buf, extra_files={PT2_METADATA: json.dumps(predictor.metadata())})
    with _checked_output(Path(out)) as tmp:
        with atomic_write(tmp) as f:
            f.write(buf.getvalue())
        if not check:
            return 0.0
        extra = {PT2_METADATA: ""}
        module = torch.export.load(tmp, extra_files=extra).module()
        if extra[PT2_METADATA] != json.dumps(predictor.metadata()):
            raise CheckpointError("the .pt2 file does not carry the metadata back: not written")
        return check_parity(predictor, lambda b: module(torch.from_numpy(predictor.preset.eval_batch(b))).numpy(),
                            ".pt2")


def cli(argv=None) -> int:
    p = argparse.ArgumentParser(description="Export a checkpoint to ONNX (and a torch.export .pt2).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="a .tar checkpoint of this toolkit")
    p.add_argument("-o", "--output", default=None, help="ONNX file (default: the checkpoint's name with .onnx)")
    p.add_argument("--pt2", action="store_true", help="also write a torch.export program (.pt2) beside it")
    p.add_argument("--torchscript", action="store_true", help=argparse.SUPPRESS)  # retired: a one-line error
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset ({MIN_OPSET}-{MAX_OPSET})")
    p.add_argument("--no-check", action="store_true", help="skip the comparison with PyTorch")
    args = p.parse_args(argv)
    out = Path(args.output or Path(args.checkpoint).with_suffix(".onnx"))
    try:
        if args.torchscript:
            raise DatasetError("--torchscript is retired (torch.jit is deprecated): use --pt2 for a torch.export "
                               "program, loaded with torch.export.load")
        if out.suffix.lower() != ".onnx":
            raise DatasetError(f"output {out} must end in .onnx")
        diff = export_onnx(args.checkpoint, out, args.opset, check=not args.no_check)
        print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)"
              + ("" if args.no_check else f"; onnxruntime matches PyTorch within {diff:.1e}"))
        if args.pt2:
            pt2 = out.with_suffix(".pt2")
            diff = export_pt2(args.checkpoint, pt2, check=not args.no_check)
            print(f"wrote {pt2}" + ("" if args.no_check else f"; it matches PyTorch within {diff:.1e}"))
    except (DatasetError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.strerror or e}: {e.filename or out}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
