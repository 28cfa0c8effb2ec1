"""Trained models behind one interface: a PyTorch checkpoint or an ONNX file
from export.py, each rebuilt from what it declares (task, classes,
preprocessing, ordinal decoding), turning uint8 image batches into results.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

import losses
from checkpointing import CheckpointError, load_checkpoint
from datasets import Preset
from models import build_model

ONNX_FORMAT = "1"  # version of the metadata export.py writes into ONNX files


class Predictor:
    """A checkpoint, rebuilt and ready: uint8 (N,3,R,R) batches -> logits, probabilities, predictions.

    ``task`` is "gender", "age" or "exact-age"; an exact-age model has
    ``ordinal`` = {"loss", "min_age", "num_ranks"[, "ce_mode"]} and predicts
    min_age + losses.predict_rank(logits, loss).
    """

    def __init__(self, path: str | os.PathLike, device: torch.device, amp: bool = False):
        self.path = Path(path)
        self.ckpt = load_checkpoint(self.path)
        self._describe(self.ckpt)
        try:
            model = build_model(**self.ckpt["model_args"])
            model.load_state_dict(self.ckpt["model_state"])
        except (TypeError, ValueError, RuntimeError, KeyError) as e:
            msg = str(e).strip().splitlines()[0][:160]
            raise CheckpointError(f"{self.path}: the weights do not fit the stored architecture ({msg})") from None
        self.device, self.amp = device, amp
        self.model = model.to(device).eval().to(memory_format=torch.channels_last)

    def _describe(self, info: dict) -> None:
        """Task, classes, preprocessing and ordinal decoding from a checkpoint-like dict."""
        self.task = info.get("task")
        self.classes = list(info.get("classes") or [])
        try:
            self.preset = Preset.from_dict(info["preprocess"])
        except (KeyError, TypeError, ValueError, IndexError):
            raise CheckpointError(f"{self.path} has no usable preprocessing settings ('preprocess')") from None
        self.ordinal = None
        if self.task == "exact-age":
            o = info.get("ordinal")
            if not isinstance(o, dict) or o.get("loss") not in losses.LOSSES or not isinstance(o.get("min_age"), (int, float)):
                raise CheckpointError(f"{self.path} is an exact-age model without usable 'ordinal' settings "
                                      f"(loss one of {', '.join(losses.LOSSES)}, min_age, num_ranks)")
            self.ordinal = dict(o)
        elif not self.classes:
            raise CheckpointError(f"{self.path} names no classes: it is not a classifier of this toolkit")

    @property
    def key(self) -> str:
        """Name of this model's fields in the output: gender, age or exact_age."""
        return str(self.task).replace("-", "_")

    def metadata(self) -> dict[str, str]:
        """What a model file needs besides its weights, as strings (ONNX metadata_props)."""
        meta = {"gac_format": ONNX_FORMAT, "task": str(self.task), "classes": json.dumps(self.classes),
                "preprocess": json.dumps(self.preset.as_dict()), "model_args": json.dumps(self.ckpt["model_args"]),
                "input": f"float32 (N,3,{self.preset.crop},{self.preset.crop}): RGB/255, minus mean, over std; "
                         f"from the central {self.preset.crop} px of the image resized to {self.preset.resize} px",
                "output": "logits (N, outputs)"}
        if self.ordinal is not None:
            meta["ordinal"] = json.dumps(self.ordinal)
        return meta

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float (N,3,C,C) on self.device -> float logits (N, outputs) on the CPU."""
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return self.model(x).float().cpu()

    @torch.no_grad()
    def view_logits(self, batch: torch.Tensor, tta: bool = False) -> torch.Tensor:
        """uint8 (N,3,R,R) -> logits (V, N, outputs): V=1 (centre crop) or 10 (``Preset.tta_batch``)."""
        batch = batch.to(self.device)
        views = self.preset.tta_batch(batch) if tta else self.preset.eval_batch(batch).unsqueeze(0)
        return torch.stack([self._forward(v) for v in views])

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (N,3,R,R) -> float logits (N, outputs), on the CPU."""
        return self.view_logits(batch)[0]

    def probabilities(self, batch: torch.Tensor, tta: bool = False) -> torch.Tensor:
        """uint8 (N,3,R,R) -> class probabilities (N, C): the softmax, averaged over the views."""
        return self.view_logits(batch, tta).softmax(-1).mean(0)

    def ages(self, batch: torch.Tensor, tta: bool = False) -> list[float | int]:
        """uint8 (N,3,R,R) -> N ages: min_age + predict_rank of the logits (averaged over the views).

        Integers, except the expectation of a 'ce' head (ce_mode "expectation"), rounded to 0.1.
        """
        o = self.ordinal
        mode = o.get("ce_mode", "argmax")
        ranks = losses.predict_rank(self.view_logits(batch, tta).mean(0), o["loss"], mode)
        if ranks.is_floating_point():
            return [round(float(r) + o["min_age"], 1) for r in ranks]
        return [int(r) + int(o["min_age"]) for r in ranks]

    def predict(self, batch: torch.Tensor, tta: bool = False) -> list[dict]:
        """uint8 (N,3,R,R) -> N results: {"age"} or {"label", "probability", "probabilities"}."""
        if self.ordinal is not None:
            return [{"age": a} for a in self.ages(batch, tta)]
        out = []
        for p in self.probabilities(batch, tta):
            k = int(p.argmax())
            out.append({"label": self.classes[k], "probability": float(p[k]),
                        "probabilities": {c: float(v) for c, v in zip(self.classes, p)}})
        return out


class OnnxPredictor(Predictor):
    """An ONNX file written by export.py, run on onnxruntime (CPU, fp32); same interface."""

    def __init__(self, path: str | os.PathLike, device: torch.device | None = None, amp: bool = False):
        self.path = Path(path)
        try:
            import onnxruntime as ort
        except ImportError:
            raise CheckpointError("ONNX models need onnxruntime: pip install onnxruntime") from None
        if not self.path.is_file():
            raise CheckpointError(f"ONNX model {self.path} not found: write one with python export.py CHECKPOINT")
        try:
            self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{self.path} is not a readable ONNX model ({msg})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("gac_format") != ONNX_FORMAT:
            raise CheckpointError(f"{self.path} lacks this toolkit's metadata (task, classes, preprocessing): "
                                  f"export it with python export.py")
        try:
            info = {k: json.loads(meta[k]) for k in ("classes", "preprocess", "model_args", "ordinal") if k in meta}
        except json.JSONDecodeError:
            raise CheckpointError(f"{self.path} has corrupt metadata: export it again") from None
        self.ckpt = {"task": meta.get("task"), **info}
        self._describe(self.ckpt)
        self.device, self.amp = torch.device("cpu"), False
        self.input_name = self.session.get_inputs()[0].name

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input_name: x.float().cpu().numpy()})[0])


def load_predictor(path: str | os.PathLike, device: torch.device, amp: bool = False) -> Predictor:
    """A Predictor for a .tar checkpoint, or an OnnxPredictor for an .onnx file."""
    cls = OnnxPredictor if str(path).lower().endswith(".onnx") else Predictor
    return cls(path, device, amp)
