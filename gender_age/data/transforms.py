"""``Preset``: all preprocessing after the one decode step, on uint8 tensors, batch-wise and
on any device: random crop + flip (and, for ``--aug strong``, scale, position and colour)
for training, the centre crop (or 10 views) for evaluation, then normalisation. Its numpy
twin for prediction is ``presets.EvalPreset``, whose crops it shares.
"""
from __future__ import annotations

from dataclasses import dataclass
import torch
import torch.nn.functional as F
from gender_age.data.presets import EvalPreset


# --------------------------------------------------------------------------
# Transforms on tensors (one place for train, eval and predict)
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Preset(EvalPreset):
    """``presets.EvalPreset`` on tensors, on any device, with the training transforms.
    Stored in checkpoints (``as_dict``)."""

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        # uint8 (N, 3, H, W) -> float (N, 3, H, W), standardised per channel
        mean = torch.tensor(self.mean, device=batch.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.std, device=batch.device).view(1, 3, 1, 1) * 255
        return (batch.float() - mean) / std

    @staticmethod
    def mirror(batch: torch.Tensor) -> torch.Tensor:
        return batch.flip(-1)

    @staticmethod
    def stack(views: list) -> torch.Tensor:
        return torch.stack(views)

    def train_batch(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """RandomCrop(crop) + RandomHorizontalFlip, per sample, on uint8 (N,3,R,R)."""
        n, _, h, w = batch.shape
        c = self.crop
        # offsets drawn on the CPU generator so a seeded run is reproducible on any device
        tops = torch.randint(0, h - c + 1, (n,), generator=generator).tolist()
        lefts = torch.randint(0, w - c + 1, (n,), generator=generator).tolist()
        flips = (torch.rand(n, generator=generator) < 0.5).tolist()
        out = torch.empty((n, 3, c, c), dtype=batch.dtype, device=batch.device)
        for i, (t, l, f) in enumerate(zip(tops, lefts, flips)):
            patch = batch[i, :, t:t + c, l:l + c]
            out[i] = patch.flip(-1) if f else patch
        return self.normalize(out)

    def train_batch_strong(self, batch: torch.Tensor, generator: torch.Generator | None = None,
                           grey: float = 0.0) -> torch.Tensor:
        """A stronger, still cheap, augmentation for small face sets, on uint8 (N,3,R,R).

        Geometry, per sample: a square of side 0.75-1.0 of the decoded square (the
        original's 227/256 = 0.89 lies inside) at a random place, resized to the
        crop (antialiased bilinear), mirrored half the time.
        Colour, per sample: brightness, contrast and saturation each scaled by
        0.7-1.3. The three are linear in RGB, so together with the normalisation
        they fold into one 3x3 channel map plus offset, applied in one pass
        (values are not clipped to [0, 255] first). A ``grey`` fraction of the samples
        (drawn after the rest, so that 0 repeats the draws of a run without it) gets
        saturation 0: grey, whatever the colour of the skin, the light or the camera.
        Out: float (N, 3, crop, crop).
        """
        n, _, h, w = batch.shape
        c, dev = self.crop, batch.device
        r = torch.rand((n, 7), generator=generator)
        side = (min(h, w) * (0.75 + 0.25 * r[:, 0])).long().clamp(min=c // 2)
        tops = (r[:, 1] * (h - side + 1).float()).long().tolist()
        lefts = (r[:, 2] * (w - side + 1).float()).long().tolist()
        # float: antialiased bilinear has no uint8 kernel on CUDA
        out = torch.empty((n, 3, c, c), dtype=torch.float32, device=dev)
        for i, (t, l, s, f) in enumerate(zip(tops, lefts, side.tolist(), (r[:, 3] < 0.5).tolist())):
            patch = batch[i:i + 1, :, t:t + s, l:l + s].float()
            if s != c:
                patch = F.interpolate(patch, size=(c, c), mode="bilinear", antialias=True, align_corners=False)
            out[i] = patch[0].flip(-1) if f else patch[0]
        x = out.view(n, 3, c * c)                                                # (N, 3, HW), 0..255
        b, k, sat = ((0.7 + 0.6 * r[:, j]).to(dev) for j in (4, 5, 6))
        if grey:
            sat = sat.masked_fill((torch.rand(n, generator=generator) < grey).to(dev), 0.0)
        gray_w = torch.tensor([0.299, 0.587, 0.114], device=dev)
        m0 = x.mean(2) @ gray_w                                                  # (N,) mean grey level
        # saturation: M = s I + (1 - s) 1 w^T; brightness then contrast: k b M x + (1 - k) b m0
        eye = torch.eye(3, device=dev).expand(n, 3, 3)
        mix = sat.view(n, 1, 1) * eye + (1 - sat).view(n, 1, 1) * gray_w.view(1, 1, 3).expand(n, 3, 3)
        std = torch.tensor(self.std, device=dev) * 255
        mean = torch.tensor(self.mean, device=dev) * 255
        a = (k * b).view(n, 1, 1) * mix / std.view(1, 3, 1)                      # (N, 3, 3)
        offset = (((1 - k) * b * m0).view(n, 1) - mean.view(1, 3)) / std.view(1, 3)  # (N, 3)
        y = torch.baddbmm(offset.unsqueeze(2), a, x)                             # (N, 3, HW)
        return y.view(n, 3, c, c)
