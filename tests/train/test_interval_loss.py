"""Age groups as interval-censored ranks: losses.interval_loss, the age-gender task that uses it,
and run_setup.group_ranks that turns --age-groups into rank intervals.

Reference values: the exact-rank losses of losses.py for one-rank intervals, and for 'ce' and
'corn' the negative log of the rank probabilities summed over the interval by brute force."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gender_age.data.samples import MISSING
from gender_age.train import losses
from gender_age.train.run_setup import group_ranks
from gender_age.train.tasks import AgeGenderTask, OrdinalTask

K = 6
LN2 = math.log(2.0)


def random_logits(loss_name: str, n: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 2.0 * torch.randn(n, losses.head_output_size(loss_name, K), generator=g)


def rank_probabilities(loss_name: str, logits: torch.Tensor) -> torch.Tensor:
    """(N, K) P(y = r) under 'ce' (softmax) or 'corn' (P(y > k) = running product of sigmoids)."""
    if loss_name == "ce":
        return logits.softmax(1)
    above = torch.cumprod(torch.sigmoid(logits), 1)                      # P(y > k), k = 0..K-2
    at_least = torch.cat([torch.ones(len(logits), 1), above], 1)       # P(y >= r), r = 0..K-1
    return at_least - torch.cat([above, torch.zeros(len(logits), 1)], 1)


def all_intervals():
    pairs = [(lo, hi) for lo in range(K) for hi in range(lo, K)]
    return torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])


@pytest.mark.parametrize("loss_name", ["ce", "corn"])
def test_likelihood_of_the_interval(loss_name):
    low, high = all_intervals()
    logits = random_logits(loss_name, n=len(low))
    p = rank_probabilities(loss_name, logits.double())
    want = torch.stack([-torch.log(p[i, lo:hi + 1].sum()) for i, (lo, hi) in enumerate(zip(low, high))])
    got = losses.interval_loss(loss_name, logits, low, high, K)
    assert got.shape == (len(low),)
    assert torch.allclose(got.double(), want, atol=1e-5)
    whole = losses.interval_loss(loss_name, logits[:1], torch.tensor([0]), torch.tensor([K - 1]), K)
    assert whole.abs().item() < 1e-6  # every age: nothing learned


@pytest.mark.parametrize("loss_name", ["coral", "ordinal", "ce", "corn"])
def test_one_rank_is_the_exact_age_loss(loss_name):
    ranks = torch.arange(K).repeat(2)
    logits = random_logits(loss_name, n=len(ranks), seed=1)
    got = losses.interval_loss(loss_name, logits, ranks, ranks, K)
    if loss_name == "ce":
        want = F.cross_entropy(logits, ranks, reduction="none")
    elif loss_name == "corn":
        want = -torch.log(rank_probabilities("corn", logits)[torch.arange(len(ranks)), ranks])
    else:
        want = losses.coral_loss(logits, losses.levels_from_labels(ranks, K), reduction="none")
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("loss_name", ["coral", "ordinal"])
def test_binary_tasks_the_interval_decides(loss_name):
    # K = 6, zero logits: each decided task costs ln 2. [2, 3]: tasks 0, 1 are 1; tasks 3, 4 are 0
    zeros = torch.zeros(4, K - 1)
    got = losses.interval_loss(loss_name, zeros, torch.tensor([2, 0, 0, 5]), torch.tensor([3, 5, 0, 5]), K)
    assert got.tolist() == pytest.approx([4 * LN2, 0.0, 5 * LN2, 5 * LN2])
    # a task is pulled the way the interval says: up below it, down from its top on
    logits = torch.zeros(1, K - 1, requires_grad=True)
    losses.interval_loss(loss_name, logits, torch.tensor([2]), torch.tensor([3]), K).sum().backward()
    assert logits.grad[0].tolist() == pytest.approx([-0.5, -0.5, 0.0, 0.5, 0.5])


def test_corn_stays_finite_when_the_interval_is_ruled_out():
    logits = torch.full((1, K - 1), 40.0, requires_grad=True)  # every conditional certain: y = K-1
    loss = losses.interval_loss("corn", logits, torch.tensor([1]), torch.tensor([2]), K)
    loss.backward()
    assert math.isfinite(loss.item()) and loss.item() > 10 and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("low,high,logits,message", [
    ([3], [2], torch.zeros(1, K - 1), "low <= high"),
    ([0], [K], torch.zeros(1, K - 1), "labels must lie in"),
    ([-1], [2], torch.zeros(1, K - 1), "labels must lie in"),
    ([0, 1], [2], torch.zeros(2, K - 1), "low <= high, both of shape"),
    ([0], [2], torch.zeros(1, K), "logits must have shape (1, 5)"),
])
def test_refused(low, high, logits, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        losses.interval_loss("coral", logits, torch.tensor(low), torch.tensor(high), K)
    with pytest.raises(ValueError, match="loss"):
        losses.interval_loss("mse", torch.zeros(1, K - 1), torch.tensor([0]), torch.tensor([1]), K)


def test_group_ranks_clip_to_the_head():
    groups = [{"name": "young", "min": 0, "max": 38}, {"name": "old", "min": 39, "max": 130}]
    assert group_ranks(groups, 1, 116).tolist() == [[0, 37], [38, 115]]
    assert group_ranks(groups, 21, 40).tolist() == [[0, 17], [18, 39]]
    assert group_ranks([{"name": "child", "min": 0, "max": 12}], 21, 40).tolist() == [[0, 0]]
    assert group_ranks([], 0, 5).shape == (0, 2)


def test_age_gender_learns_groups_of_images_without_an_age():
    k = 6
    task = AgeGenderTask(["f", "m"], OrdinalTask("coral", k, 10), 1.0, 1.0, group_ranks=torch.tensor([[0, 2], [3, 5]]))
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 2 + k - 1, generator=g)
    y = torch.tensor([[0, 4, 0, MISSING],     # an age: the exact loss
                      [1, MISSING, 1, MISSING],  # gender only
                      [MISSING, MISSING, 2, 1],  # group old (ranks 3-5): the interval loss
                      [MISSING, 1, 2, 0]])       # an age and a group: the age wins
    al = logits[:, 2:]
    exact = losses.compute_loss("coral", al[[0, 3]], torch.tensor([4, 1]), k) * 2
    interval = losses.interval_loss("coral", al[2:3], torch.tensor([3]), torch.tensor([5]), k).sum()
    _, a = task.head_losses(logits, y)
    assert a.item() == pytest.approx((exact + interval).item())
    assert [n.item() for n in task.label_counts(y)] == [2, 3]
    m = task.metrics(task.stats(logits, y))
    assert m["n_age"] == 2  # MAE is over exact ages only
    assert m["loss"] == pytest.approx(task.loss(logits, y).item())
    plain = AgeGenderTask(["f", "m"], OrdinalTask("coral", k, 10))  # no groups given: the row teaches nothing
    assert plain.head_losses(logits, y)[1].item() == pytest.approx(exact.item())
