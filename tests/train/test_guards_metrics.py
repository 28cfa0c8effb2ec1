"""Known values of the age-gender figures: each head's loss over its own label count,
the top and bottom of the age range keeping their labels, age groups that may not share
a year, and CS@5 counting an error of exactly 5 years (in the task and in the report)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gender_age.data import age_groups, sources
from gender_age.data.samples import MISSING
from gender_age.train import losses, report
from gender_age.train.tasks import AgeGenderTask, OrdinalTask


def make_task(k=5, gw=1.0, aw=1.0, loss="ordinal"):
    return AgeGenderTask(["female", "male"], OrdinalTask(loss, k, 20), gw, aw)


def uneven_batch():
    """Five images: three with a gender, one with an age (so swapping the counts changes the loss)."""
    logits = torch.randn(5, 2 + 4, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([[0, MISSING, 0, -1], [1, MISSING, 0, -1], [1, 2, 0, -1],
                      [MISSING, MISSING, 1, -1], [MISSING, MISSING, 1, -1]])
    return logits, y


def expected_loss(logits, y, gw=1.0, aw=1.0):
    gender = F.cross_entropy(logits[[0, 1, 2], :2], torch.tensor([0, 1, 1]))  # mean over 3 gender labels
    age = losses.compute_loss("ordinal", logits[[2], 2:], torch.tensor([2]), 5)  # mean over 1 age label
    return gw * gender + aw * age


@pytest.mark.parametrize("gw,aw", [(1.0, 1.0), (2.0, 0.5), (0.0, 1.0), (1.0, 0.0)])
def test_each_head_is_averaged_over_its_own_label_count(gw, aw):
    logits, y = uneven_batch()
    task = make_task(gw=gw, aw=aw)
    assert torch.allclose(task.loss(logits, y), expected_loss(logits, y, gw, aw), atol=1e-6)


@pytest.mark.parametrize("gw,aw", [(1.0, 1.0), (2.0, 0.5)])
def test_metrics_loss_equals_the_training_loss(gw, aw):
    logits, y = uneven_batch()
    task = make_task(gw=gw, aw=aw)
    m = task.metrics(task.stats(logits, y))
    assert m["loss"] == pytest.approx(expected_loss(logits, y, gw, aw).item(), abs=1e-5)
    assert (m["n"], m["n_gender"], m["n_age"]) == (5, 3, 1)
    # summed over two shards, the figures are those of the whole batch
    both = task.stats(logits[:2], y[:2]) + task.stats(logits[2:], y[2:])
    assert task.metrics(both)["loss"] == pytest.approx(m["loss"], abs=1e-5)


def rank_logits(ranks, k=5):
    """Ordinal-head outputs decoding to the given ranks (rank r: the first r thresholds passed)."""
    return torch.tensor([[10.0 if j < r else -10.0 for j in range(k - 1)] for r in ranks])


@pytest.mark.parametrize("err,within", [(5, 1.0), (6, 0.0), (4, 1.0), (0, 1.0)])
def test_cs5_counts_an_error_of_exactly_five_years(err, within):
    k = 12
    pred = rank_logits([err], k)
    y = torch.tensor([0])
    ordinal = OrdinalTask("ordinal", k, 20)
    assert ordinal.metrics(ordinal.stats(pred, y))["cs5"] == within
    task = AgeGenderTask(["female", "male"], ordinal)
    logits = torch.cat([torch.tensor([[5.0, -5.0]]), pred], 1)
    assert task.metrics(task.stats(logits, torch.tensor([[0, 0, 0, -1]])))["cs5"] == within


def test_report_cs5_boundary_and_mae():
    pairs = [(30, 35), (30, 25), (30, 36), (30, 23.9), (30, None)]
    m = report.age_errors(pairs)
    assert m["n"] == 4 and m["missed"] == 1
    assert m["cs5"] == pytest.approx(2 / 4)  # |5| and |-5| count; 6 and 6.1 do not
    assert m["mae"] == pytest.approx((5 + 5 + 6 + 6.1) / 4)
    rows = [{"true_gender": "", "gender": "male", "true_age": 40, "age": 45.0, "true_group": "", "age_group": ""},
            {"true_gender": "", "gender": "male", "true_age": 40, "age": 34.99, "true_group": "", "age_group": ""}]
    assert report.source_metrics(rows)["cs5"] == pytest.approx(0.5)


def test_ages_at_both_ends_of_the_range_keep_their_label():
    part = sources.Labelled()
    for age in (19, 20, 21, 59, 60, 61, MISSING):
        part.add(f"/x/{age}.jpg", gender=0, age=age)
    out = sources.to_samples([part], 20, 60, ["female", "male"], "t")
    assert [t[1] for t in out.targets] == [MISSING, 0, 1, 39, 40, MISSING, MISSING]
    assert len(out.paths) == 7  # an age outside the range loses its label, not the image


@pytest.mark.parametrize("text", ["young=0-38,old=38-", "a=0-10,b=10-20", "a=10-20,b=0-10",
                                  "a=0-20,b=5-6", "a=5-5,b=5-9"])
def test_age_groups_sharing_a_year_are_refused(text):
    with pytest.raises(age_groups.AgeGroupError, match="overlap"):
        age_groups.parse(text)


@pytest.mark.parametrize("text,spans", [("young=0-38,old=39-", [(0, 38), (39, 130)]),
                                        ("a=0-9,b=10-10,c=12-20", [(0, 9), (10, 10), (12, 20)])])
def test_adjacent_or_gapped_groups_are_accepted(text, spans):
    assert [(g["min"], g["max"]) for g in age_groups.parse(text)] == spans


def test_group_of_boundaries():
    groups = age_groups.parse("young=0-38,old=40-")
    assert [age_groups.group_of(a, groups) for a in (38.0, 38.49, 38.6, 39.0, 39.5, 40.0)] == \
        ["young", "young", None, None, "old", "old"]
