"""A model's input, as stored in its checkpoint or ONNX metadata: the side of the decoded
square (``resize``), the network's crop and the per-channel normalisation, and the
evaluation views cut from uint8 (N, 3, R, R) batches: the centre crop, or Levi-Hassner's
10 views. Here in numpy, so that prediction with an ONNX model needs no torch;
``datasets.Preset`` is the same preset on tensors (any device) and adds the training
transforms. The crops are plain slicing, shared by both.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EvalPreset:
    """Geometry and normalisation of a model's input.

    resize: side of the decoded square (Resize(256) in the original).
    crop: network input side (227 for Levi-Hassner).
    """
    resize: int = 256
    crop: int = 227
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    def as_dict(self) -> dict:
        return {"resize": self.resize, "crop": self.crop, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "EvalPreset":
        return cls(int(d["resize"]), int(d["crop"]), tuple(d["mean"]), tuple(d["std"]))

    def normalize(self, batch):
        """uint8 (N, 3, H, W) -> float32 (N, 3, H, W), standardised per channel."""
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, 3, 1, 1) * 255
        std = np.asarray(self.std, dtype=np.float32).reshape(1, 3, 1, 1) * 255
        return (np.asarray(batch, dtype=np.float32) - mean) / std

    @staticmethod
    def mirror(batch):
        """Left-right flip of (N, 3, H, W)."""
        return batch[..., ::-1]

    @staticmethod
    def stack(views: list):
        return np.stack(views)

    def center(self, batch):
        _, _, h, w = batch.shape
        t, l = (h - self.crop) // 2, (w - self.crop) // 2
        return batch[:, :, t:t + self.crop, l:l + self.crop]

    def eval_batch(self, batch):
        """CenterCrop(crop) + normalise, on uint8 (N,3,R,R)."""
        return self.normalize(self.center(batch))

    def tta_batch(self, batch):
        """Levi-Hassner over-sampling: 4 corner crops + centre, and their mirrors.

        uint8 (N,3,R,R) -> float (10, N, 3, crop, crop).
        """
        _, _, h, w = batch.shape
        c = self.crop
        crops = [batch[:, :, :c, :c], batch[:, :, :c, w - c:], batch[:, :, h - c:, :c],
                 batch[:, :, h - c:, w - c:], self.center(batch)]
        crops += [self.mirror(x) for x in crops]
        return self.stack([self.normalize(x) for x in crops])
