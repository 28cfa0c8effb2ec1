"""Who is in the data: UTKFace race and age bands, and the weights of --sampling balanced."""
from __future__ import annotations

import pytest
import torch

from gender_age.data import strata
from gender_age.data.loading import epoch_order, weighted_epoch_order
from gender_age.data.samples import MISSING


def test_race_and_age_band_of_a_name():
    assert [strata.utkface_race(f"x/29_1_{r}_2017.jpg.chip.jpg") for r in range(5)] == list(strata.RACES)
    assert strata.utkface_race("39_1_20170116174525125.jpg") is None  # no race field
    assert strata.utkface_race("29_1_5_2017.jpg") is None
    assert [strata.age_band(a) for a in (0, 12, 13, 20, 21, 40, 41, 60, 61, 116, "", None)] == \
        ["0-12", "0-12", "13-20", "13-20", "21-40", "21-40", "41-60", "41-60", "61+", "61+", "unknown", "unknown"]


def test_balanced_weights_are_one_over_the_root_of_the_stratum_size():
    # UTKFace (source 0): four White women of 30, one Black woman of 30; gender tree (source 1): one man
    paths = [f"29_0_0_{i}.jpg" for i in range(4)] + ["29_0_1_9.jpg", "29_0_1_8.jpg"]
    targets = torch.tensor([[0, 30 - 1, 0, -1]] * 5 + [[1, MISSING, 1, -1]])
    w = strata.balanced_weights(paths, targets, 1, {0})
    raw = torch.tensor([0.5] * 4 + [1.0, 1.0], dtype=torch.float64)
    assert torch.allclose(w, raw * 6 / raw.sum()) and w.sum().item() == pytest.approx(6)


@pytest.mark.parametrize("change,apart", [
    (lambda p, t: (p[:1] + ["29_0_1_0.jpg"], t), True),             # race
    (lambda p, t: (p, torch.tensor([[0, 29, 0, -1], [1, 29, 0, -1]])), True),   # gender
    (lambda p, t: (p, torch.tensor([[0, 29, 0, -1], [0, 40, 0, -1]])), True),   # age band (30 vs 41)
    (lambda p, t: (p, torch.tensor([[0, 29, 0, -1], [0, 29, 1, -1]])), True),   # source
    (lambda p, t: (p, torch.tensor([[0, 29, 0, -1], [0, 38, 0, -1]])), False),  # 30 and 39: one band
    (lambda p, t: (p, torch.tensor([[0, 0, 0, -1], [0, MISSING, 0, -1]])), True),  # age 1 vs no age
    (lambda p, t: (p, torch.tensor([[0, 29, 0, -1], [0, 29, 0, 3]])), False),   # the age group is no stratum
])
def test_each_field_of_the_stratum_and_only_those(change, apart):
    base = (["29_0_0_0.jpg", "29_0_0_1.jpg"], torch.tensor([[0, 29, 0, -1], [0, 29, 0, -1]]))
    paths, targets = change(*base)
    w = strata.balanced_weights(paths, targets, 1, {0, 1})
    # two strata of one image each, or one stratum of two: either way equal weights; a third image
    # of the first kind shows which
    w3 = strata.balanced_weights(paths + paths[:1], torch.cat([targets, targets[:1]]), 1, {0, 1})
    assert torch.allclose(w, torch.ones(2, dtype=torch.float64))
    assert (w3[1] > w3[0]).item() is apart


def test_race_counts_only_for_utkface_sources():
    paths = ["29_0_0_0.jpg", "29_0_1_0.jpg", "29_0_1_1.jpg"]
    targets = torch.tensor([[0, 29, 1, -1]] * 3)
    assert torch.allclose(strata.balanced_weights(paths, targets, 1, set()), torch.ones(3, dtype=torch.float64))
    assert not torch.allclose(strata.balanced_weights(paths, targets, 1, {1}), torch.ones(3, dtype=torch.float64))


def test_weighted_epoch_order_draws_in_proportion_and_is_seeded():
    w = torch.tensor([1.0, 3.0, 0.0], dtype=torch.float64)
    order = weighted_epoch_order(w.repeat(2000), 5, 0, 0, 1)
    assert len(order) == 6000 and not any(i % 3 == 2 for i in order)
    share = sum(i % 3 == 1 for i in order) / len(order)
    assert share == pytest.approx(0.75, abs=0.02)
    assert weighted_epoch_order(w, 5, 0, 0, 1) == weighted_epoch_order(w, 5, 0, 0, 1)
    big = torch.ones(50, dtype=torch.float64)
    assert weighted_epoch_order(big, 5, 0, 0, 1) != weighted_epoch_order(big, 5, 1, 0, 1)
    assert weighted_epoch_order(big, 5, 0, 0, 1) != weighted_epoch_order(big, 6, 0, 0, 1)
    # sharded as epoch_order: every process the same number, together the padded draw
    shards = [weighted_epoch_order(torch.ones(7, dtype=torch.float64), 5, 0, r, 3) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3] == [len(s) for s in (epoch_order(7, 5, 0, r, 3) for r in range(3))]
