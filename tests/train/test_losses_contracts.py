"""The contracts of losses.py around its formulas: each refusal with its message, dtypes kept
(bf16 autocast), thresholds made on the labels' device, priors over all K ranks and the
reduction of cross-entropy. The formulas themselves: test_losses.py."""
from __future__ import annotations

import math
import re

import pytest
import torch

from gender_age.train import losses

LOGITS = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
LABELS = torch.tensor([0, 2, 4])


@pytest.mark.parametrize("call,message", [
    (lambda: losses.levels_from_labels(torch.tensor([0]), 1), "num_classes must be >= 2, got 1"),
    (lambda: losses.levels_from_labels(torch.tensor([[0], [1]]), 5), "labels must have shape (N,), got (2, 1)"),
    (lambda: losses.levels_from_labels(torch.tensor([0, 5]), 5), "labels must lie in [0, 4], got range [0, 5]"),
    (lambda: losses.levels_from_labels(torch.tensor([-1, 2]), 5), "labels must lie in [0, 4], got range [-1, 2]"),
    (lambda: losses.coral_loss(LOGITS, torch.zeros(3, 4), reduction="avg"),
     "reduction must be 'mean', 'sum', 'none' or None, got 'avg'"),
    (lambda: losses.coral_loss(LOGITS, torch.zeros(3, 5)), "logits (3, 4) and levels (3, 5) must have the same shape"),
    (lambda: losses.coral_loss(LOGITS, torch.zeros(3, 4), importance_weights=torch.ones(5)),
     "importance_weights must have shape (4,), got (5,)"),
    (lambda: losses.corn_loss(torch.zeros(3, 5), LABELS, 5), "logits must have shape (3, 4), got (3, 5)"),
    (lambda: losses.corn_loss(torch.zeros(2, 4), LABELS, 5), "logits must have shape (3, 4), got (2, 4)"),
    (lambda: losses.task_importance_weights(torch.tensor([], dtype=torch.long), 5),
     "task_importance_weights needs at least one label"),
    (lambda: losses.compute_loss("corn", LOGITS, LABELS, 5, importance_weights=torch.ones(4)),
     "importance_weights are only supported for 'ordinal' and 'coral', not 'corn'"),
])
def test_each_refusal_names_what_is_wrong(call, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        call()


def test_two_ranks_and_one_label_are_enough():
    assert losses.levels_from_labels(torch.tensor([0, 1]), 2).tolist() == [[0.0], [1.0]]
    assert losses.task_importance_weights(torch.tensor([1]), 3).shape == (2,)


def test_thresholds_are_made_on_the_labels_device():
    # under another default device (here "meta"), thresholds must still follow the labels (CPU)
    with torch.device("meta"):
        levels = losses.levels_from_labels(LABELS, 5)
        corn = losses.corn_loss(LOGITS, LABELS, 5)
    assert levels.device.type == "cpu" and levels.tolist()[1] == [1.0, 1.0, 0.0, 0.0]
    assert corn.device.type == "cpu" and torch.isfinite(corn)


@pytest.mark.parametrize("loss", ["coral", "corn"])
def test_bf16_logits_give_a_bf16_loss(loss):
    # under bf16 autocast the head's logits are bf16: the labels and weights follow them
    logits = LOGITS.bfloat16()
    if loss == "coral":
        out = losses.coral_loss(logits, losses.levels_from_labels(LABELS, 5), importance_weights=torch.ones(4))
    else:
        out = losses.corn_loss(logits, LABELS, 5)
    assert out.dtype == torch.bfloat16


def test_prior_bias_covers_ranks_no_label_has():
    # counts of ranks 0..3 (add-one): 3, 2, 1, 1 of 7; the top two ranks have no label
    b = losses.prior_bias("ce", torch.tensor([0, 0, 1]), 4)
    assert b.tolist() == pytest.approx([math.log(3 / 7), math.log(2 / 7), math.log(1 / 7), math.log(1 / 7)], rel=1e-6)
    s = losses.prior_bias("coral", torch.tensor([0, 0, 1]), 4)  # S_k = 4, 2, 1 of 7
    assert s.tolist() == pytest.approx([math.log(4 / 3), math.log(2 / 5), math.log(1 / 6)], rel=1e-6)


def test_cross_entropy_reductions():
    logits = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    per = torch.nn.functional.cross_entropy(logits, LABELS, reduction="none")
    assert torch.allclose(losses.cross_entropy_loss(logits, LABELS, "sum"), per.sum())
    assert torch.allclose(losses.cross_entropy_loss(logits, LABELS, "none"), per)
    assert torch.allclose(losses.cross_entropy_loss(logits, LABELS), per.mean())
