"""Known values of the three tasks: loss, predictions, summable statistics, metrics, model
selection and the log line, for the gender (classification), exact-age (ordinal) and
age-gender tasks."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gender_age.data.samples import MISSING
from gender_age.train import losses
from gender_age.train.tasks import AgeGenderTask, ClassificationTask, OrdinalTask, lower_loss

BIG = 10.0


def rank_logits(ranks, k):
    """CORAL outputs (N, K-1) that decode to the given ranks: +BIG below the rank, -BIG above."""
    return torch.tensor([[BIG if j < r else -BIG for j in range(k - 1)] for r in ranks])


def test_lower_loss():
    assert lower_loss(1.0, 2.0) and not lower_loss(2.0, 1.0) and not lower_loss(1.0, 1.0)
    assert not lower_loss(None, 1.0) and not lower_loss(1.0, None)


def test_classification_known_values():
    t = ClassificationTask(["a", "b", "c"], label_smoothing=0.1)
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    y = torch.tensor([0, 1, 1, 2])
    assert t.k == 3 and t.classes == ["a", "b", "c"]
    assert torch.allclose(t.loss(logits, y), F.cross_entropy(logits, y, label_smoothing=0.1))
    assert not torch.allclose(t.loss(logits, y), F.cross_entropy(logits, y))
    assert t.predict(logits).tolist() == [0, 1, 2, 0]
    s = t.stats(logits, y)
    assert s.dtype == torch.float64 and s.shape == (10,)
    m = t.metrics(s + t.stats(logits[:1], y[:1]))  # stats sum over batches
    assert m["n"] == 5 and m["acc"] == pytest.approx(3 / 5)
    assert m["confusion"] == [[2, 0, 0], [0, 1, 1], [1, 0, 0]]
    total = F.cross_entropy(logits, y, reduction="sum") + F.cross_entropy(logits[:1], y[:1], reduction="sum")
    assert m["loss"] == pytest.approx(total.item() / 5)  # the plain loss, not the smoothed one
    assert t.metrics(torch.zeros(10))["acc"] == 0 and t.metrics(torch.zeros(10))["loss"] == 0
    assert t.describe({"loss": 0.12345, "acc": 0.5}) == "loss 0.1235 acc 0.5000"


@pytest.mark.parametrize("new,best,new_loss,best_loss,better", [
    (0.8, None, None, None, True), (0.8, 0.7, None, None, True), (0.7, 0.8, 0.1, 0.9, False),
    (0.8, 0.8, 0.1, 0.2, True), (0.8, 0.8, 0.2, 0.1, False), (0.8, 0.8, 0.2, 0.2, False), (0.8, 0.8, None, 0.2, False)])
def test_classification_selects_higher_accuracy_then_lower_loss(new, best, new_loss, best_loss, better):
    assert ClassificationTask(["a", "b"]).is_better(new, best, new_loss, best_loss) is better


@pytest.mark.parametrize("new,best,new_loss,best_loss,better", [
    (5.0, None, None, None, True), (4.0, 5.0, None, None, True), (5.0, 4.0, 0.1, 0.9, False),
    (4.0, 4.0, 0.1, 0.2, True), (4.0, 4.0, 0.2, 0.1, False), (4.0, 4.0, 0.2, 0.2, False)])
def test_ordinal_selects_lower_mae_then_lower_loss(new, best, new_loss, best_loss, better):
    assert OrdinalTask("coral", 10, 0).is_better(new, best, new_loss, best_loss) is better


def test_ordinal_known_values():
    with pytest.raises(ValueError, match="unknown loss 'cornn'"):
        OrdinalTask("cornn", 10, 0)
    t = OrdinalTask("coral", 12, 20)
    assert (t.loss_name, t.k, t.min_age, t.ce_mode) == ("coral", 12, 20, "argmax")
    logits = rank_logits([3, 8, 0, 11], 12)
    y = torch.tensor([3, 3, 6, 0])  # errors 0, 5 (within CS@5), 6, 11
    assert t.predict(logits).tolist() == [3.0, 8.0, 0.0, 11.0] and t.predict(logits).dtype == torch.float64
    s = t.stats(logits, y)
    n, abs_sum, sq_sum, within, loss_sum = s.tolist()
    assert (n, abs_sum, sq_sum, within) == (4, 22, 0 + 25 + 36 + 121, 2)
    assert loss_sum == pytest.approx(losses.compute_loss("coral", logits, y, 12).item() * 4, rel=1e-6)
    m = t.metrics(s)
    assert m == pytest.approx({"mae": 5.5, "rmse": math.sqrt(182 / 4), "cs5": 0.5, "loss": loss_sum / 4, "n": 4})
    empty = t.stats(logits[:0], y[:0])
    assert empty.tolist() == [0, 0, 0, 0, 0] and t.metrics(empty)["mae"] == 0
    assert t.describe({"loss": 1.23456, "mae": 4.5678, "rmse": 6.1, "cs5": 0.25}) == \
        "loss 1.2346 MAE 4.568 RMSE 6.100 CS@5 0.250"


def test_ordinal_importance_weights_reach_the_loss():
    logits, y = torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3, 4, 2])
    w = torch.tensor([1.0, 0.2, 3.0, 0.5])
    t = OrdinalTask("coral", 5, 0, importance_weights=w)
    assert torch.allclose(t.loss(logits, y), losses.compute_loss("coral", logits, y, 5, importance_weights=w))
    assert not torch.allclose(t.loss(logits, y), OrdinalTask("coral", 5, 0).loss(logits, y))


def test_ordinal_ce_expectation_mode_predicts_a_fraction():
    t = OrdinalTask("ce", 3, 0, ce_mode="expectation")
    p = t.predict(torch.log(torch.tensor([[0.5, 0.0, 0.5]]) + 1e-12))
    assert p.item() == pytest.approx(1.0, abs=1e-6) and t.ce_mode == "expectation"
    assert OrdinalTask("ce", 3, 0).predict(torch.tensor([[0.1, 0.0, 0.2]])).item() == 2.0


def age_gender_batch():
    k = 6
    gender = torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, 1.0], [0.0, 4.0]])
    ages = rank_logits([2, 5, 0, 4, 1], k)
    y = torch.tensor([[0, 2, 0, -1], [0, MISSING, 0, -1], [MISSING, 5, 1, -1], [1, 4, 1, -1], [MISSING, MISSING, 2, 3]])
    return AgeGenderTask(["female", "male"], OrdinalTask("coral", k, 10), 2.0, 0.5), torch.cat([gender, ages], 1), y


def test_age_gender_known_values():
    t, logits, y = age_gender_batch()
    assert (t.g, t.k, t.min_age, t.loss_name, t.ce_mode) == (2, 6, 10, "coral", "argmax")
    gl, al = t.split(logits)
    assert gl.shape == (5, 2) and al.shape == (5, 5) and torch.equal(gl, logits[:, :2])
    g, a = t.head_losses(logits, y)
    has_g, has_a = torch.tensor([1, 1, 0, 1, 0], dtype=torch.bool), torch.tensor([1, 0, 1, 1, 0], dtype=torch.bool)
    g_ref = F.cross_entropy(gl[has_g], y[has_g, 0], reduction="sum")
    a_ref = losses.compute_loss("coral", al[has_a], y[has_a, 1], 6) * 3
    assert g.item() == pytest.approx(g_ref.item()) and a.item() == pytest.approx(a_ref.item())
    assert t.loss(logits, y).item() == pytest.approx(2.0 * g_ref.item() / 3 + 0.5 * a_ref.item() / 3)
    gender, prob, rank = t.predict(logits)
    assert gender.tolist() == [0, 1, 0, 1, 1] and rank.tolist() == [2, 5, 0, 4, 1]
    assert prob[0].item() == pytest.approx(torch.softmax(torch.tensor([3.0, 0.0]), 0)[0].item())
    s = t.stats(logits, y)
    assert s.shape == (4 + 9,) and s.dtype == torch.float64
    assert s[:4].tolist() == [1, 1, 0, 1]  # female->female, female->male, -, male->male
    assert s[4:8].tolist() == [3, 5, 25, 3]  # age n, |error| sum (0, 5, 0), squares, within 5 years
    assert s[8].item() == pytest.approx(g_ref.item()) and s[9].item() == pytest.approx(a_ref.item())
    assert s[10:].tolist() == [3, 3, 5]  # gender labels, age labels, images
    m = t.metrics(s + t.stats(logits[:1], y[:1]))  # stats sum over batches
    assert m["n"] == 6 and m["n_gender"] == 4 and m["n_age"] == 4
    assert m["acc"] == pytest.approx(3 / 4) and m["confusion"] == [[2, 1], [0, 1]]
    assert m["mae"] == pytest.approx(5 / 4) and m["rmse"] == pytest.approx(math.sqrt(25 / 4)) and m["cs5"] == 1.0
    g1, a1 = t.head_losses(logits[:1], y[:1])
    assert m["loss"] == pytest.approx(2.0 * (g_ref + g1).item() / 4 + 0.5 * (a_ref + a1).item() / 4)
    assert t.describe({"loss": 1.23456, "acc": 0.5, "mae": 4.5678}) == "loss 1.2346 gender acc 0.5000 age MAE 4.568"


def test_age_gender_batch_without_labels():
    t, logits, y = age_gender_batch()
    logits = logits.clone().requires_grad_()
    none = torch.full((5, 4), MISSING)
    loss = t.loss(logits, none)
    assert loss.item() == 0 and loss.requires_grad
    s = t.stats(logits.detach(), none)
    assert s[:10].tolist() == [0] * 10 and s[10:].tolist() == [0, 0, 5]
    empty = t.stats(logits[:0].detach(), y[:0])
    assert empty.tolist() == [0] * 13
    m = t.metrics(empty)
    assert (m["acc"], m["mae"], m["rmse"], m["cs5"], m["loss"], m["n"]) == (0, 0, 0, 0, 0, 0)


@pytest.mark.parametrize("new,best,better", [(1.0, None, True), (0.9, 1.0, True), (1.0, 1.0, False), (1.1, 1.0, False)])
def test_age_gender_selects_the_lower_loss(new, best, better):
    t, _, _ = age_gender_batch()
    assert t.select_metric == "loss" and t.is_better(new, best, 0.0, 9.0) is better


def test_defaults_and_single_images():
    logits, y = torch.tensor([[0.2, 1.0]]), torch.tensor([1])
    c = ClassificationTask(["a", "b"])
    assert torch.allclose(c.loss(logits, y), F.cross_entropy(logits, y))  # no smoothing unless asked
    m = c.metrics(c.stats(logits, y))
    assert m["acc"] == 1.0 and m["loss"] == pytest.approx(F.cross_entropy(logits, y).item())
    t = AgeGenderTask(["female", "male"], OrdinalTask("coral", 4, 0))  # weights 1 and 1
    one = torch.cat([torch.tensor([[0.0, 2.0]]), rank_logits([2], 4)], 1)
    yy = torch.tensor([[1, 1, 0, -1]])  # one gender label (right), one age label (one year off)
    g, a = t.head_losses(one, yy)
    assert t.loss(one, yy).item() == pytest.approx((g + a).item())
    m = t.metrics(t.stats(one, yy))
    assert (m["acc"], m["mae"], m["rmse"], m["cs5"]) == (1.0, 1.0, 1.0, 1.0)
    assert m["loss"] == pytest.approx((g + a).item())


def test_age_gender_reads_ages_with_its_ce_mode():
    probs = torch.log(torch.tensor([[0.5, 0.0001, 0.4999]]))
    logits = torch.cat([torch.zeros(1, 2), probs], 1)
    expect = AgeGenderTask(["f", "m"], OrdinalTask("ce", 3, 0, ce_mode="expectation"))
    argmax = AgeGenderTask(["f", "m"], OrdinalTask("ce", 3, 0))
    assert expect.predict(logits)[2].item() == pytest.approx(0.9999, abs=1e-3)
    assert argmax.predict(logits)[2].item() == 0.0
