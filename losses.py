"""Ordinal-regression losses, heads and prediction helpers for exact age.

Ages are mapped to integer ranks ``y in {0, ..., K-1}`` (e.g. ``y = age - 21``
for ages 21..60, ``K = 40``). Four approaches are supported, by name:

``'ce'``
    Plain K-way classification: a ``Linear(in, K)`` head and cross-entropy.
``'ordinal'``
    Niu et al. (2016), "Ordinal Regression with Multiple Output CNN for Age
    Estimation": K-1 independent binary tasks "is y > k?", each with its own
    weight vector and bias (``Linear(in, K-1)``), trained with the summed
    binary log-loss. Nothing ties the tasks together, so the K-1 predicted
    probabilities need not be monotone in k.
``'coral'``
    Cao, Mirjalili & Raschka (2020), "Rank Consistent Ordinal Regression for
    Neural Networks with Application to Age Estimation": the same K-1 binary
    tasks and the same loss as ``'ordinal'``, but the head shares one weight
    vector across tasks and only the K-1 biases differ. When the biases are
    non-increasing the probabilities P(y > k) are non-increasing in k (the
    paper's rank-consistency theorem).
``'corn'``
    Shi, Cao & Raschka (2021), "Deep Neural Networks for Rank-Consistent
    Ordinal Regression Based On Conditional Probabilities": a plain
    ``Linear(in, K-1)`` head whose output k models the *conditional*
    P(y > k | y > k-1). Task k is trained only on the samples with
    ``y >= k``; P(y > k) is the running product of the conditionals and
    so is non-increasing by construction.

Everything here is a pure tensor function (or a thin ``nn.Module``); there is
no I/O. Shapes use N for the batch size and K for the number of ranks.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ordinal import LOSSES, check_loss_name as _check_loss_name, head_output_size

__all__ = [
    "LOSSES",
    "levels_from_labels",
    "coral_loss",
    "ordinal_loss",
    "corn_loss",
    "cross_entropy_loss",
    "task_importance_weights",
    "compute_loss",
    "coral_probas",
    "rank_probas_from_coral",
    "coral_predict",
    "corn_cumulative_probas",
    "rank_probas_from_corn",
    "corn_predict",
    "ce_predict",
    "predict_rank",
    "rank_probabilities",
    "CoralLayer",
    "OrdinalHead",
    "CornHead",
    "CEHead",
    "make_head",
    "head_output_size",
]

def _check_labels(labels: torch.Tensor, num_classes: int) -> None:
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if labels.dim() != 1:
        raise ValueError(f"labels must have shape (N,), got {tuple(labels.shape)}")
    if labels.numel() and (labels.min() < 0 or labels.max() > num_classes - 1):
        raise ValueError(
            f"labels must lie in [0, {num_classes - 1}], got range "
            f"[{labels.min().item()}, {labels.max().item()}]")


def _reduce(per_sample: torch.Tensor, reduction: str | None) -> torch.Tensor:
    """(N,) per-sample losses -> scalar ('mean' / 'sum') or (N,) (None / 'none')."""
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction is None or reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be 'mean', 'sum', 'none' or None, got {reduction!r}")


# ---------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------

def levels_from_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Extended binary labels for the K-1 rank tasks.

    Parameters
    ----------
    labels : LongTensor, shape (N,)
        Integer ranks in ``[0, K-1]``.
    num_classes : int
        K, the number of ranks.

    Returns
    -------
    levels : FloatTensor, shape (N, K-1)
        ``levels[n, k] = 1.0 if labels[n] > k else 0.0`` for ``k = 0..K-2``,
        so a row of rank r is r ones followed by K-1-r zeros (same as
        ``coral_pytorch.dataset.levels_from_labelbatch``, but vectorised and
        on the labels' device).
    """
    _check_labels(labels, num_classes)
    thresholds = torch.arange(num_classes - 1, device=labels.device)  # (K-1,)
    return (labels.unsqueeze(1) > thresholds).float()               # (N, K-1)


def prior_bias(loss_name: str, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Head biases under which a zero feature vector predicts the training prior.

    With ``n_r`` the count of rank ``r`` among N labels (add-one smoothed, so
    no bias is infinite) and ``S_k = #{y > k}``:

    - 'ce':               ``b_r = log(n_r / N)``                      shape (K,)
    - 'ordinal', 'coral': ``b_k = logit(S_k / N)``                    shape (K-1,)
    - 'corn':             ``b_k = logit(S_k / S_{k-1})``, S_{-1} = N  shape (K-1,)

    Why: CORAL's K-1 thresholds share one weight vector, so only its biases
    can spread them over the age range; from the default (K-1..1)/(K-1) they
    move about one learning rate per Adam step, which takes a large part of
    a short CPU schedule. Starting every head at the prior (as one starts a
    classifier's bias at the log class frequencies) removes that phase.
    """
    _check_loss_name(loss_name)
    _check_labels(labels, num_classes)
    counts = torch.bincount(labels.long().cpu(), minlength=num_classes).double() + 1.0  # (K,)
    n = counts.sum()
    if loss_name == "ce":
        return (counts / n).log().float()
    above = n - counts.cumsum(0)[:-1]                                   # S_k, (K-1,)
    below = torch.cat([n.view(1), above[:-1]]) if loss_name == "corn" else n.expand_as(above)
    p = above / below
    return torch.log(p / (1.0 - p)).float()


# ---------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------

def coral_loss(logits: torch.Tensor, levels: torch.Tensor,
               importance_weights: torch.Tensor | None = None,
               reduction: str | None = "mean") -> torch.Tensor:
    """CORAL loss (Cao et al. 2020, Eq. 4): weighted sum of K-1 binary log-losses.

    For each sample, with ``s_k = logits[:, k]`` and ``t_k = levels[:, k]``::

        L = - sum_k  w_k * ( t_k * log sigmoid(s_k) + (1 - t_k) * log(1 - sigmoid(s_k)) )

    ``log(1 - sigmoid(s)) = logsigmoid(-s)``, so both terms go through
    ``F.logsigmoid`` and stay finite for large |s| (no log(0)).

    The same formula is the loss of Niu et al. (2016) ('ordinal'); the two
    methods differ only in the head (see ``OrdinalHead`` vs ``CoralLayer``).

    Parameters
    ----------
    logits : FloatTensor, shape (N, K-1)
        Head outputs; ``sigmoid(logits[:, k])`` estimates P(y > k).
    levels : FloatTensor, shape (N, K-1)
        Extended binary labels from ``levels_from_labels``.
    importance_weights : FloatTensor, shape (K-1,), optional
        Per-task weights ``w_k`` (e.g. from ``task_importance_weights``);
        None means all ones. Moved to the logits' device and dtype.
    reduction : 'mean' | 'sum' | 'none' | None
        How to reduce the (N,) per-sample losses.

    Returns
    -------
    loss : scalar FloatTensor, or shape (N,) for reduction 'none' / None.
    """
    if logits.shape != levels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and levels "
                         f"{tuple(levels.shape)} must have the same shape")
    levels = levels.to(logits.dtype)
    # (N, K-1) per-task log-likelihoods
    term = F.logsigmoid(logits) * levels + F.logsigmoid(-logits) * (1.0 - levels)
    if importance_weights is not None:
        importance_weights = importance_weights.to(device=logits.device, dtype=logits.dtype)
        if importance_weights.shape != logits.shape[1:]:
            raise ValueError(f"importance_weights must have shape ({logits.shape[1]},), "
                             f"got {tuple(importance_weights.shape)}")
        term = term * importance_weights                    # broadcast over N
    return _reduce(-term.sum(dim=1), reduction)              # (N,) -> reduced


#: Niu et al. (2016) multiple-output ordinal loss: exactly the CORAL formula
#: (K-1 weighted binary cross-entropies on extended binary labels). The
#: difference between 'ordinal' and 'coral' is only in the head.
ordinal_loss = coral_loss


def corn_loss(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """CORN loss (Shi et al. 2021): binary log-loss on conditional training subsets.

    Task k (``k = 0..K-2``) predicts P(y > k | y > k-1), so it is trained only
    on the samples with ``y > k-1`` (i.e. ``y >= k``; task 0 uses every
    sample), with binary target ``y > k``. The summed log-loss over all
    (sample, task) pairs used is divided by the number of such pairs::

        L = - sum_k sum_{n: y_n >= k} [ t_nk log sigmoid(s_nk) + (1-t_nk) log(1-sigmoid(s_nk)) ]
            / #{(n, k): y_n >= k}

    This is the normalisation of ``coral_pytorch.losses.corn_loss`` (one mean
    over all selected pairs, not a mean of per-task means); tasks with no
    selected samples contribute nothing. Vectorised with a (N, K-1) mask
    instead of a Python loop over tasks.

    Parameters
    ----------
    logits : FloatTensor, shape (N, K-1)
        Head outputs; ``sigmoid(logits[:, k])`` estimates P(y > k | y >= k).
    labels : LongTensor, shape (N,)
        Integer ranks in ``[0, K-1]``.
    num_classes : int
        K.

    Returns
    -------
    loss : scalar FloatTensor.
    """
    _check_labels(labels, num_classes)
    if logits.dim() != 2 or logits.shape != (labels.shape[0], num_classes - 1):
        raise ValueError(f"logits must have shape ({labels.shape[0]}, {num_classes - 1}), "
                         f"got {tuple(logits.shape)}")
    tasks = torch.arange(num_classes - 1, device=labels.device)        # (K-1,)
    y = labels.unsqueeze(1)                                            # (N, 1)
    mask = (y >= tasks).to(logits.dtype)                               # (N, K-1) sample used by task k
    target = (y > tasks).to(logits.dtype)                              # (N, K-1) binary label of task k
    term = F.logsigmoid(logits) * target + F.logsigmoid(-logits) * (1.0 - target)
    # mask.sum() >= N > 0 because every sample is used by task 0.
    return -(term * mask).sum() / mask.sum()


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor,
                       reduction: str = "mean") -> torch.Tensor:
    """K-way cross-entropy, a thin wrapper over ``F.cross_entropy``.

    Parameters
    ----------
    logits : FloatTensor, shape (N, K)
    labels : LongTensor, shape (N,), ranks in ``[0, K-1]``.
    reduction : 'mean' | 'sum' | 'none'

    Returns
    -------
    loss : scalar FloatTensor, or shape (N,) for reduction 'none'.
    """
    return F.cross_entropy(logits, labels, reduction=reduction)


def task_importance_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Task importance weights of the CORAL paper (its ``--imp_weight 1`` option).

    For each rank task ``k = 0..K-2``, with ``N`` training labels::

        S_k    = #{n : y_n > k}            (positives of task k)
        m_k    = max(S_k, N - S_k)         (size of task k's majority side)
        w_k    = sqrt(m_k) / max_j sqrt(m_j)

    so weights lie in (0, 1] and the largest is exactly 1. Tasks whose
    threshold sits in the bulk of the age distribution (balanced split,
    small ``m_k``) get smaller weights than tasks near the extremes.

    Compared with the paper repository's helper, which loops over
    ``arange(min(labels), max(labels))`` and then keeps the first K-1
    entries, this indexes tasks by the absolute threshold k and always
    returns K-1 weights. The two agree whenever the labels include rank 0
    and rank K-1 (the normal case for a training set); if a label set misses
    the top ranks, the tasks above its maximum get ``m_k = N`` (weight 1,
    per the formula) instead of the repository's zero padding.

    Parameters
    ----------
    labels : LongTensor, shape (N,)
        Training-set ranks in ``[0, K-1]`` (the whole training set, not a batch).
    num_classes : int
        K.

    Returns
    -------
    weights : FloatTensor, shape (K-1,)
    """
    _check_labels(labels, num_classes)
    if labels.numel() == 0:
        raise ValueError("task_importance_weights needs at least one label")
    n = labels.numel()
    positives = levels_from_labels(labels, num_classes).sum(dim=0)   # (K-1,) S_k
    m = torch.maximum(positives, n - positives)                      # (K-1,) m_k >= N/2 > 0
    root = torch.sqrt(m)
    return root / root.max()


def compute_loss(loss_name: str, logits: torch.Tensor, labels: torch.Tensor,
                 num_classes: int,
                 importance_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean training loss for ``loss_name`` in ``LOSSES``.

    Parameters
    ----------
    loss_name : 'ce' | 'ordinal' | 'coral' | 'corn'
    logits : FloatTensor, shape (N, head_output_size(loss_name, K))
        i.e. (N, K) for 'ce' and (N, K-1) for the others.
    labels : LongTensor, shape (N,), ranks in ``[0, K-1]``.
    num_classes : int
        K.
    importance_weights : FloatTensor, shape (K-1,), optional
        Only for 'ordinal' and 'coral' (the CORAL paper's task weights).
        Passing it with 'ce' or 'corn' raises, rather than being ignored.

    Returns
    -------
    loss : scalar FloatTensor.
    """
    _check_loss_name(loss_name)
    if importance_weights is not None and loss_name not in ("ordinal", "coral"):
        raise ValueError(f"importance_weights are only supported for 'ordinal' "
                         f"and 'coral', not {loss_name!r}")
    if loss_name == "ce":
        return cross_entropy_loss(logits, labels)
    if loss_name == "corn":
        return corn_loss(logits, labels, num_classes)
    levels = levels_from_labels(labels, num_classes)
    return coral_loss(logits, levels, importance_weights=importance_weights)


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
