"""What is being learned: loss, running statistics and metrics per kind of target.

The training loop in gender_age_classifier.py is the same for every task; it
asks a task object for the loss of a batch, for summable statistics of a
batch (so processes can all-reduce them), and for the metrics those sums give.

* ``ClassificationTask``: gender, young/old, age groups. Accuracy, confusion
  matrix; the best model has the highest validation accuracy.
* ``OrdinalTask``: exact age as a rank 0..K-1 (age - min_age), with one of the
  losses in losses.py. MAE, RMSE and CS@5 in years; the best model has the
  lowest validation MAE.
* ``AgeGenderTask``: both at once, on one network whose outputs are the gender
  logits then the age head's (models.GenderAgeHead); a label that is missing
  (-1) masks that head's loss for that image. Gender accuracy and age MAE; the
  best model has the lowest validation loss (the weighted sum of both).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from gender_age.nets import heads
from gender_age.train import losses
from gender_age.data.samples import MISSING


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
        return heads.predict_rank(logits.float(), self.loss_name, ce_mode=self.ce_mode).double()

    def stats(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Summable (5,) float64: n, |error| sum, error^2 sum, count within 5 years, loss sum."""
        err = (self.predict(logits) - y.double()).abs()
        # an empty shard (a process with no evaluation batch) adds zeros, not the NaN of an empty mean
        loss_sum = self.loss(logits, y).double() * len(y) if len(y) else err.new_zeros(())
        return torch.stack([err.new_tensor(float(len(y))), err.sum(), (err ** 2).sum(), (err <= 5).double().sum(),
                            loss_sum])

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


class AgeGenderTask:
    """Gender (2-way cross-entropy) and exact age (an ordinal loss) on one network.

    Targets are long (N, 4): gender index into ``genders`` or MISSING, age rank
    (age - min_age) or MISSING, the index of the image's data source (for
    per-source test figures; the loss ignores it), and the index of its age group
    or MISSING. Logits are (N, G + H): G gender logits, then the H outputs of the
    age head. An image with a group and no age teaches the age head that its rank
    lies in the group's ``group_ranks`` row (losses.interval_loss); MAE counts
    exact ages only.
    """
    kind = "age-gender"
    select_metric = "loss"  # lower is better: it weighs both heads as training does

    def __init__(self, genders: list[str], age: OrdinalTask, gender_weight: float = 1.0, age_weight: float = 1.0,
                 group_ranks: torch.Tensor | None = None):
        self.genders, self.age = list(genders), age
        self.group_ranks = group_ranks  # (groups, 2) long: each group's first and last rank
        self.g = len(genders)
        self.k, self.min_age, self.loss_name, self.ce_mode = age.k, age.min_age, age.loss_name, age.ce_mode
        self.gender_weight, self.age_weight = gender_weight, age_weight

    def split(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, G + H) -> gender logits (N, G), age outputs (N, H)."""
        return logits[:, :self.g].float(), logits[:, self.g:].float()

    def group_only(self, y: torch.Tensor) -> torch.Tensor:
        """(N,) bool: the images whose age head learns an age group (no age, a group, groups given)."""
        if self.group_ranks is None or y.shape[1] < 4:
            return torch.zeros_like(y[:, 1], dtype=torch.bool)
        return (y[:, 1] == MISSING) & (y[:, 3] != MISSING)

    def head_losses(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head sums (not means) over the images that have that label: (gender, age), scalars."""
        gl, al = self.split(logits)
        has_g, has_a, in_group = y[:, 0] != MISSING, y[:, 1] != MISSING, self.group_only(y)
        # with no gender label the sum is 0 (and keeps the graph); the age loss is a mean, NaN on nothing
        g = F.cross_entropy(gl[has_g], y[has_g, 0], reduction="sum")
        a = self.age.loss(al[has_a], y[has_a, 1]) * has_a.sum() if has_a.any() else logits.sum() * 0.0
        if in_group.any():
            bounds = self.group_ranks.to(y.device)[y[in_group, 3]]
            a = a + losses.interval_loss(self.loss_name, al[in_group], bounds[:, 0], bounds[:, 1], self.k).sum()
        return g, a

    def label_counts(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """How many images each head's loss is over: (gender labels, ages or age groups)."""
        return (y[:, 0] != MISSING).sum(), (y[:, 1] != MISSING).sum() + self.group_only(y).sum()

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Weighted sum of each head's mean loss over the images labelled for it."""
        g, a = self.head_losses(logits, y)
        n_g, n_a = (n.clamp(min=1) for n in self.label_counts(y))
        return self.gender_weight * g / n_g + self.age_weight * a / n_a

    def predict(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (gender index (N,), its probability (N,), age rank (N,) float)."""
        gl, al = self.split(logits)
        p = gl.softmax(1)
        return p.argmax(1), p.max(1).values, heads.predict_rank(al, self.loss_name, ce_mode=self.ce_mode).double()

    def stats(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Summable (G*G + 9,) float64: gender confusion, then age n, |error| sum, error^2 sum,
        within 5 years, then the gender and age loss sums, their label counts, and the images."""
        gender, _, rank = self.predict(logits)
        has_g, has_a = y[:, 0] != MISSING, y[:, 1] != MISSING
        conf = torch.bincount(y[has_g, 0] * self.g + gender[has_g], minlength=self.g * self.g).double()
        err = (rank[has_a] - y[has_a, 1].double()).abs()
        g, a = (v.detach().double() for v in self.head_losses(logits, y))
        age = torch.stack([has_a.sum().double(), err.sum(), (err ** 2).sum(), (err <= 5).double().sum()])
        counts = torch.stack([*(n.double() for n in self.label_counts(y)), err.new_tensor(float(len(y)))])
        return torch.cat([conf, age, torch.stack([g, a]), counts])

    def metrics(self, stats: torch.Tensor) -> dict:
        k2 = self.g * self.g
        conf, (n_a, abs_sum, sq_sum, within, g_sum, a_sum, n_g, n_loss, n) = stats[:k2].view(self.g, self.g), stats[k2:].tolist()
        loss = self.gender_weight * g_sum / max(1.0, n_g) + self.age_weight * a_sum / max(1.0, n_loss)
        return {"acc": conf.trace().item() / max(1.0, n_g), "mae": abs_sum / max(1.0, n_a),
                "rmse": (sq_sum / max(1.0, n_a)) ** 0.5, "cs5": within / max(1.0, n_a), "loss": loss,
                "n": int(n), "n_gender": int(n_g), "n_age": int(n_a), "confusion": conf.long().tolist()}

    def is_better(self, new: float, best: float | None, new_loss: float | None = None,
                  best_loss: float | None = None) -> bool:
        return best is None or new < best

    def describe(self, m: dict) -> str:
        return f"loss {m['loss']:.4f} gender acc {m['acc']:.4f} age MAE {m['mae']:.3f}"
