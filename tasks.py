"""What is being learned: loss, running statistics and metrics per kind of target.

The training loop in gender_age_classifier.py is the same for every task; it
asks a task object for the loss of a batch, for summable statistics of a
batch (so processes can all-reduce them), and for the metrics those sums give.

* ``ClassificationTask``: gender, young/old, age groups. Accuracy, confusion
  matrix; the best model has the highest validation accuracy.
* ``OrdinalTask``: exact age as a rank 0..K-1 (age - min_age), with one of the
  losses in losses.py. MAE, RMSE and CS@5 in years; the best model has the
  lowest validation MAE.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import losses


def lower_loss(new: float | None, best: float | None) -> bool:
    """The tie-break of model selection; False when either loss is unknown
    (a checkpoint from before losses were recorded with the best value)."""
    return new is not None and best is not None and new < best


class ClassificationTask:
    kind = "classification"
    select_metric = "acc"  # higher is better

    def __init__(self, classes: list[str], label_smoothing: float = 0.0):
        self.classes = list(classes)
        self.k = len(classes)
        self.label_smoothing = label_smoothing

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # logits (N, K), y (N,) class indices
        return F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(1)

    def stats(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Summable (K*K + 1,) float64: the flattened confusion matrix and the loss sum."""
        logits = logits.float()
        conf = torch.bincount(y * self.k + logits.argmax(1), minlength=self.k * self.k).double()
        loss_sum = F.cross_entropy(logits, y, reduction="sum").double().view(1)
        return torch.cat([conf, loss_sum])

    def metrics(self, stats: torch.Tensor) -> dict:
        conf = stats[:-1].view(self.k, self.k)
        n = conf.sum().item()
        return {"acc": conf.trace().item() / max(1, n), "loss": stats[-1].item() / max(1, n), "n": int(n),
                "confusion": conf.long().tolist()}

    def is_better(self, new: float, best: float | None, new_loss: float | None = None,
                  best_loss: float | None = None) -> bool:
        """Higher accuracy; on a tie (common: 100 validation images give 101
        values) the lower validation loss."""
        return best is None or new > best or (new == best and lower_loss(new_loss, best_loss))

    def describe(self, m: dict) -> str:
        return f"loss {m['loss']:.4f} acc {m['acc']:.4f}"


class OrdinalTask:
    kind = "ordinal"
    select_metric = "mae"  # lower is better

    def __init__(self, loss_name: str, num_ranks: int, min_age: int,
                 importance_weights: torch.Tensor | None = None, ce_mode: str = "argmax"):
        if loss_name not in losses.LOSSES:
            raise ValueError(f"unknown loss {loss_name!r}")
        self.loss_name, self.k, self.min_age = loss_name, num_ranks, min_age
        self.importance_weights = importance_weights
        self.ce_mode = ce_mode

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # logits (N, K-1) for ordinal/coral/corn or (N, K) for ce; y (N,) ranks
        w = self.importance_weights
        if w is not None:
            w = w.to(logits.device)
        return losses.compute_loss(self.loss_name, logits.float(), y, self.k, importance_weights=w)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """(N,) predicted rank (float: ce's expectation mode is not an integer)."""
        return losses.predict_rank(logits.float(), self.loss_name, ce_mode=self.ce_mode).double()

    def stats(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Summable (5,) float64: n, |error| sum, error^2 sum, count within 5 years, loss sum."""
        err = (self.predict(logits) - y.double()).abs()
        # an empty shard (a process with no evaluation batch) adds zeros, not the NaN of an empty mean
        loss_sum = self.loss(logits, y).double() * len(y) if len(y) else torch.zeros((), dtype=torch.float64)
        return torch.stack([torch.tensor(float(len(y)), dtype=torch.float64), err.sum(), (err ** 2).sum(),
                            (err <= 5).double().sum(), loss_sum])

    def metrics(self, stats: torch.Tensor) -> dict:
        n = max(1.0, stats[0].item())
        return {"mae": stats[1].item() / n, "rmse": (stats[2].item() / n) ** 0.5, "cs5": stats[3].item() / n,
                "loss": stats[4].item() / n, "n": int(stats[0].item())}

    def is_better(self, new: float, best: float | None, new_loss: float | None = None,
                  best_loss: float | None = None) -> bool:
        """Lower MAE; on a tie the lower validation loss."""
        return best is None or new < best or (new == best and lower_loss(new_loss, best_loss))

    def describe(self, m: dict) -> str:
        return f"loss {m['loss']:.4f} MAE {m['mae']:.3f} RMSE {m['rmse']:.3f} CS@5 {m['cs5']:.3f}"
