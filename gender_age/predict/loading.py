"""``load_predictor``: the backend for a model file by its name (.onnx: onnxruntime, no
torch; else a PyTorch checkpoint).
"""
from __future__ import annotations

import os
from gender_age.predict.base import ModelPredictor
from gender_age.predict.onnx_backend import OnnxPredictor


def is_onnx(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(".onnx")


def load_predictor(path: str | os.PathLike, device=None, amp: bool = False) -> ModelPredictor:
    """An OnnxPredictor for an .onnx file (no torch), else a ``torch_backend.Predictor`` for a .tar
    checkpoint on ``device`` (a torch.device; imports torch)."""
    if is_onnx(path):
        return OnnxPredictor(path)
    from gender_age.predict.torch_backend import Predictor
    return Predictor(path, device, amp)
