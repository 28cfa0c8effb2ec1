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
import torch.nn.functional as F
from gender_age.nets.ordinal import LOSSES, check_loss_name as _check_loss_name, head_output_size

__all__ = [
    "LOSSES",
    "levels_from_labels",
    "coral_loss",
    "ordinal_loss",
    "corn_loss",
    "cross_entropy_loss",
    "task_importance_weights",
    "compute_loss",
    "interval_loss",
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


def interval_loss(loss_name: str, logits: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
                  num_classes: int) -> torch.Tensor:
    """Per-sample loss of a rank known only to lie in ``[low, high]`` (an age group, not an age).

    A young/old folder says "under 39", not "27": such a label is interval-censored. Teaching it
    as an exact age would teach the ages the folder happened to hold (an IMDB-WIKI young/old set
    has 15-29 and 45-59 only), and the network learns that photos like these are never 35.

    * ``'coral'``, ``'ordinal'``: the binary log-loss of the tasks the interval decides, without
      the others: task k "y > k" is 1 for ``k < low``, 0 for ``k >= high``, unknown in between.
    * ``'ce'``: ``-log sum_{low <= r <= high} softmax(logits)_r``.
    * ``'corn'``: ``-log P(low <= y <= high)`` with ``P(y > k) = prod_{j <= k} sigmoid(s_j)``,
      i.e. ``-sum_{j < low} log sigmoid(s_j) - log(1 - prod_{low <= j <= high} sigmoid(s_j))``
      (the second term is 0 when ``high = K-1``).

    With ``low == high`` each is the loss of that exact rank (coral's per-sample sum, corn's
    negative log-likelihood, cross-entropy).

    Parameters
    ----------
    logits : FloatTensor, shape (N, head_output_size(loss_name, K))
    low, high : LongTensor, shape (N,), ranks with ``0 <= low <= high <= K-1``.
    num_classes : int
        K.

    Returns
    -------
    loss : FloatTensor, shape (N,)
    """
    _check_loss_name(loss_name)
    _check_labels(low, num_classes)
    _check_labels(high, num_classes)
    if low.shape != high.shape or bool((low > high).any()):
        raise ValueError("interval_loss needs low <= high, both of shape (N,)")
    width = head_output_size(loss_name, num_classes)
    if logits.dim() != 2 or logits.shape != (low.shape[0], width):
        raise ValueError(f"logits must have shape ({low.shape[0]}, {width}), got {tuple(logits.shape)}")
    ranks = torch.arange(width, device=logits.device)                  # (W,)
    lo, hi = low.to(logits.device).unsqueeze(1), high.to(logits.device).unsqueeze(1)
    if loss_name == "ce":
        inside = (ranks >= lo) & (ranks <= hi)                         # (N, K)
        return torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~inside, float("-inf")), 1)
    up = F.logsigmoid(logits)                                          # (N, K-1) log P(task k is 1)
    below = (ranks < lo).to(logits.dtype)                              # tasks known to be 1
    if loss_name == "corn":
        span = (ranks >= lo) & (ranks <= hi)                           # log P(y > high | y >= low)
        stay = (up * span.to(logits.dtype)).sum(1)
        # log(1 - exp(stay)); nothing lies above the top rank, so high == K-1 adds 0
        last = torch.log(-torch.expm1(stay.clamp(max=-1e-7)))
        return -(up * below).sum(1) - torch.where(high.to(logits.device) < num_classes - 1, last, 0.0)
    above = (ranks >= hi).to(logits.dtype)                             # tasks known to be 0
    return -(up * below).sum(1) - (F.logsigmoid(-logits) * above).sum(1)
