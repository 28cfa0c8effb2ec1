"""``OnnxPredictor``: an ONNX file from ``tools/export.py`` run by onnxruntime, with the
metadata it carries; it never imports torch (start-up).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
import numpy as np
from gender_age.core.checkpointing import CheckpointError
from gender_age.core.images import first_line
from gender_age.nets.metadata import ONNX_FORMAT
from gender_age.predict.base import ModelPredictor


class OnnxPredictor(ModelPredictor):
    """An ONNX file written by export.py, run on onnxruntime (CPU, fp32)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            import onnxruntime as ort
        except ImportError:
            raise CheckpointError("ONNX models need onnxruntime: pip install onnxruntime") from None
        if not self.path.is_file():
            raise CheckpointError(f"ONNX model {self.path} not found: write one with python export.py CHECKPOINT")
        try:
            # its threads wait without spinning, as torch's (predict.py): the decode pool shares the
            # cores (100 crops, 2 cores busy with training: 1.92-2.04 s vs 2.07-2.19 s spinning)
            options = ort.SessionOptions()
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise CheckpointError(f"{self.path} is not a readable ONNX model ({first_line(e)})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("gac_format") != ONNX_FORMAT:
            raise CheckpointError(f"{self.path} lacks this toolkit's metadata (task, classes, preprocessing): "
                                  f"export it with python export.py")
        try:
            info = {k: json.loads(meta[k]) for k in ("classes", "preprocess", "chips", "model_args", "ordinal",
                                                     "genders", "age_groups") if k in meta}
        except json.JSONDecodeError:
            raise CheckpointError(f"{self.path} has corrupt metadata: export it again") from None
        self.ckpt = {"task": meta.get("task"), **info}
        self._describe(self.ckpt)
        self.input_name = self.session.get_inputs()[0].name
        self._probe()

    def _forward(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.asarray(x, dtype=np.float32)})[0]
