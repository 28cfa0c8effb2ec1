"""A PyTorch checkpoint behind ``base.ModelPredictor``'s interface: the network
rebuilt from what the checkpoint declares (``model_args``), on a torch device, with bf16
autocast where asked. The checks and the decoding of outputs are base.py's.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from gender_age.core.checkpointing import CheckpointError, check_finite_weights, load_checkpoint
from gender_age.core.images import first_line
from gender_age.nets.models import build_model
from gender_age.predict.base import ModelPredictor


class Predictor(ModelPredictor):
    """A .tar checkpoint, its weights checked finite and loaded into ``models.build_model``."""

    def __init__(self, path: str | os.PathLike, device: torch.device, amp: bool = False):
        self.path = Path(path)
        self.ckpt = load_checkpoint(self.path)
        self._describe(self.ckpt)
        if not isinstance(self.ckpt["model_state"], dict):
            raise CheckpointError(f"{self.path} has no usable weights ('model_state' is not a state dict)")
        check_finite_weights(self.ckpt["model_state"], self.path)
        try:
            model = build_model(**self.ckpt["model_args"])
            model.load_state_dict(self.ckpt["model_state"])
        except (TypeError, ValueError, RuntimeError, KeyError) as e:
            raise CheckpointError(f"{self.path}: the weights do not fit the stored architecture "
                                  f"({first_line(e)})") from None
        self.device, self.amp = device, amp
        self.model = model.to(device).eval().to(memory_format=torch.channels_last)
        self._probe()

    @torch.no_grad()
    def _forward(self, x: np.ndarray) -> np.ndarray:
        """Normalised float32 (N,3,C,C) -> float32 logits (N, outputs), the network on self.device."""
        t = torch.from_numpy(np.asarray(x, dtype=np.float32)).to(self.device)
        t = t.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return self.model(t).float().cpu().numpy()
