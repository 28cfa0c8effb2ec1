"""Ordinal heads and their decoding rules on tensors.

Heads: ``CoralLayer`` (CORAL: one shared weight vector, K-1 biases), ``OrdinalHead``
(Niu et al.: K-1 independent binary tasks), ``CornHead`` (CORN: conditional
probabilities) and ``CEHead`` (K-way softmax); ``make_head`` picks one by loss name.
Decoding: ``predict_rank`` and ``rank_probabilities`` turn a head's logits (N, K-1) or
(N, K) into ranks and rank probabilities by each paper's rule (``nets/ordinal.py`` has
the same rules in numpy for prediction without torch).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from gender_age.nets.ordinal import check_loss_name as _check_loss_name


# ---------------------------------------------------------------------------
# Probabilities and predictions
# ---------------------------------------------------------------------------

def _cumulative_to_rank_probas(cum: torch.Tensor) -> torch.Tensor:
    """(N, K-1) estimates of P(y > k) -> (N, K) probabilities P(y = k).

    ``P(y=0) = 1 - P(y>0)``, ``P(y=k) = P(y>k-1) - P(y>k)``,
    ``P(y=K-1) = P(y>K-2)``. The differences telescope to a row sum of 1.
    If ``cum`` is not non-increasing in k (possible for Niu's independent
    tasks, or for a CORAL head whose biases are out of order) some
    differences are negative; those are clamped to 0 and the row is
    renormalised to sum to 1. For a monotone ``cum`` this is a no-op.
    """
    ones = torch.ones_like(cum[:, :1])
    zeros = torch.zeros_like(cum[:, :1])
    upper = torch.cat([ones, cum], dim=1)    # (N, K): P(y > k-1), with P(y > -1) = 1
    lower = torch.cat([cum, zeros], dim=1)   # (N, K): P(y > k),   with P(y > K-1) = 0
    probas = (upper - lower).clamp_min(0.0)
    # Clamping can only raise the sum above 1 (telescoped total is 1), so the
    # denominator is >= 1 and never zero.
    return probas / probas.sum(dim=1, keepdim=True)


def coral_probas(logits: torch.Tensor) -> torch.Tensor:
    """(N, K-1) CORAL / ordinal logits -> (N, K-1) sigmoid estimates of P(y > k)."""
    return torch.sigmoid(logits)


def rank_probas_from_coral(logits: torch.Tensor) -> torch.Tensor:
    """(N, K-1) CORAL / ordinal logits -> (N, K) rank probabilities P(y = k).

    Derived from the cumulative ``P(y > k) = sigmoid(logits[:, k])`` by
    differences; negative differences (non-monotone outputs) are clamped to
    zero and rows renormalised, see ``_cumulative_to_rank_probas``.
    """
    return _cumulative_to_rank_probas(coral_probas(logits))


def coral_predict(logits: torch.Tensor) -> torch.Tensor:
    """(N, K-1) CORAL / ordinal logits -> (N,) LongTensor ranks.

    ``rank = sum_k [sigmoid(logits[:, k]) > 0.5]`` (Cao et al. 2020, Eq. 5;
    also Niu et al.). ``sigmoid(s) > 0.5`` iff ``s > 0``.
    """
    return (logits > 0).sum(dim=1)


def corn_cumulative_probas(logits: torch.Tensor) -> torch.Tensor:
    """(N, K-1) CORN logits -> (N, K-1) P(y > k) = prod_{j <= k} sigmoid(logits[:, j]).

    Non-increasing in k by construction (a running product of numbers in (0, 1)).
    """
    return torch.cumprod(torch.sigmoid(logits), dim=1)


def rank_probas_from_corn(logits: torch.Tensor) -> torch.Tensor:
    """(N, K-1) CORN logits -> (N, K) rank probabilities P(y = k) (no clamping needed)."""
    return _cumulative_to_rank_probas(corn_cumulative_probas(logits))


def corn_predict(logits: torch.Tensor) -> torch.Tensor:
    """(N, K-1) CORN logits -> (N,) LongTensor ranks = sum_k [P(y > k) > 0.5].

    Same rule as ``coral_pytorch.dataset.corn_label_from_logits``.
    """
    return (corn_cumulative_probas(logits) > 0.5).sum(dim=1)


def ce_predict(logits: torch.Tensor, mode: str = "argmax") -> torch.Tensor:
    """(N, K) classification logits -> (N,) predicted ranks.

    mode 'argmax':      LongTensor, the most probable rank.
    mode 'expectation': FloatTensor, ``sum_k k * softmax(logits)[:, k]``
                        (the expected rank; not rounded, so it can be used
                        directly for MAE or rounded by the caller).
    """
    if mode == "argmax":
        return logits.argmax(dim=1)
    if mode == "expectation":
        ranks = torch.arange(logits.shape[1], device=logits.device, dtype=logits.dtype)
        return torch.softmax(logits, dim=1) @ ranks
    raise ValueError(f"mode must be 'argmax' or 'expectation', got {mode!r}")


def predict_rank(logits: torch.Tensor, loss_name: str, ce_mode: str = "argmax") -> torch.Tensor:
    """Head outputs -> (N,) predicted ranks, using the rule of each method.

    'ce' -> ``ce_predict(logits, ce_mode)`` (Long for argmax, Float for expectation);
    'ordinal' / 'coral' -> ``coral_predict``; 'corn' -> ``corn_predict``.

    logits : (N, K) for 'ce', (N, K-1) otherwise.
    """
    _check_loss_name(loss_name)
    if loss_name == "ce":
        return ce_predict(logits, ce_mode)
    if loss_name == "corn":
        return corn_predict(logits)
    return coral_predict(logits)


def rank_probabilities(logits: torch.Tensor, loss_name: str) -> torch.Tensor:
    """Head outputs -> (N, K) non-negative rank probabilities, rows summing to 1.

    'ce' -> softmax; 'ordinal' / 'coral' -> ``rank_probas_from_coral``;
    'corn' -> ``rank_probas_from_corn``. logits: (N, K) for 'ce', (N, K-1) otherwise.
    """
    _check_loss_name(loss_name)
    if loss_name == "ce":
        return torch.softmax(logits, dim=1)
    if loss_name == "corn":
        return rank_probas_from_corn(logits)
    return rank_probas_from_coral(logits)


# ---------------------------------------------------------------------------
# Heads
# ---------------------------------------------------------------------------

class CoralLayer(nn.Module):
    """CORAL head: one shared weight vector plus K-1 independent biases.

    ``forward(x: (N, in_features)) -> logits (N, K-1)``,
    ``logits[:, k] = x @ w + b_k``.

    With ``preinit_bias=True`` (default, as in coral_pytorch) the biases start
    at ``(K-1, K-2, ..., 1) / (K-1)``: strictly decreasing, so P(y > k) is
    non-increasing in k from the first step. With ``False`` they start at
    zero (the paper repository's choice). The shared weight uses the default
    ``nn.Linear`` initialisation.
    """

    def __init__(self, in_features: int, num_classes: int, preinit_bias: bool = True):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.in_features = in_features
        self.num_classes = num_classes
        self.coral_weights = nn.Linear(in_features, 1, bias=False)
        if preinit_bias:
            init = torch.arange(num_classes - 1, 0, -1, dtype=torch.float32) / (num_classes - 1)
        else:
            init = torch.zeros(num_classes - 1)
        self.coral_bias = nn.Parameter(init)                 # (K-1,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.coral_weights(x) + self.coral_bias      # (N, 1) + (K-1,) -> (N, K-1)


class OrdinalHead(nn.Linear):
    """Niu et al. (2016) head: K-1 independent binary classifiers, ``Linear(in, K-1)``.

    ``forward(x: (N, in_features)) -> logits (N, K-1)``; each task has its own
    weights and bias, so outputs need not be rank-consistent.
    """

    def __init__(self, in_features: int, num_classes: int):
        super().__init__(in_features, num_classes - 1)
        self.num_classes = num_classes


class CornHead(nn.Linear):
    """CORN head, ``Linear(in, K-1)``: ``forward(x: (N, in)) -> conditional logits (N, K-1)``.

    Same layer as ``OrdinalHead``; the difference is in how outputs are
    trained (``corn_loss``) and decoded (``corn_cumulative_probas``).
    """

    def __init__(self, in_features: int, num_classes: int):
        super().__init__(in_features, num_classes - 1)
        self.num_classes = num_classes


class CEHead(nn.Linear):
    """Classification head, ``Linear(in, K)``: ``forward(x: (N, in)) -> logits (N, K)``."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__(in_features, num_classes)
        self.num_classes = num_classes


_HEADS = {"ce": CEHead, "ordinal": OrdinalHead, "coral": CoralLayer, "corn": CornHead}


def make_head(loss_name: str, in_features: int, num_classes: int) -> nn.Module:
    """The head for ``loss_name``: (N, in_features) -> (N, head_output_size(loss_name, K))."""
    _check_loss_name(loss_name)
    return _HEADS[loss_name](in_features, num_classes)
