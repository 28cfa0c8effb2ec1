"""Tests for losses.py.

Reference checks use the installed coral_pytorch package (its losses and
label helpers); the small known values are worked out by hand in comments
using sigmoid(0) = 1/2, sigmoid(ln 3) = 3/4, sigmoid(-ln 3) = 1/4.
"""
import math

import pytest
import torch
import torch.nn.functional as F


from gender_age.nets import heads
from gender_age.train import losses  # noqa: E402

# coral-pytorch is pinned in requirements.txt: imported plainly, so a missing one fails the suite
from coral_pytorch.dataset import (  # noqa: E402
    corn_label_from_logits, levels_from_labelbatch, proba_to_label)
from coral_pytorch.layers import CoralLayer as RefCoralLayer  # noqa: E402
from coral_pytorch.losses import coral_loss as ref_coral_loss  # noqa: E402
from coral_pytorch.losses import corn_loss as ref_corn_loss  # noqa: E402

LN3 = math.log(3.0)


def _random_case(seed, n=64, k=40):
    """Random (logits (N, K-1), labels (N,)) with labels spread over 0..K-1."""
    g = torch.Generator().manual_seed(seed)
    logits = 3.0 * torch.randn(n, k - 1, generator=g)
    labels = torch.randint(0, k, (n,), generator=g)
    return logits, labels


# ---------------------------------------------------------------------------
# levels
# ---------------------------------------------------------------------------

def test_levels_hand_values():
    # K = 4: rank r -> r ones then zeros
    got = losses.levels_from_labels(torch.tensor([0, 1, 3, 2]), 4)
    want = torch.tensor([[0., 0., 0.], [1., 0., 0.], [1., 1., 1.], [1., 1., 0.]])
    assert got.dtype == torch.float32
    assert torch.equal(got, want)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_levels_match_coral_pytorch(seed):
    _, labels = _random_case(seed)
    ref = levels_from_labelbatch(labels, num_classes=40)
    assert torch.equal(losses.levels_from_labels(labels, 40), ref)


@pytest.mark.parametrize("bad", [[-1, 0], [0, 4]])
def test_levels_reject_out_of_range(bad):
    with pytest.raises(ValueError):
        losses.levels_from_labels(torch.tensor(bad), 4)


# ---------------------------------------------------------------------------
# CORAL / ordinal loss
# ---------------------------------------------------------------------------

# K = 3, two samples.
#   sample a: label 0 -> levels [0, 0], logits [0, ln3] -> P(y>k) = [1/2, 3/4]
#       loss_a = -(log(1 - 1/2) + log(1 - 3/4)) = ln2 + ln4 = 3 ln2
#   sample b: label 2 -> levels [1, 1], logits [ln3, 0] -> P(y>k) = [3/4, 1/2]
#       loss_b = -(log(3/4) + log(1/2)) = ln(4/3) + ln2 = ln(8/3)
HAND_LOGITS = torch.tensor([[0.0, LN3], [LN3, 0.0]])
HAND_LABELS = torch.tensor([0, 2])
LOSS_A = 3 * math.log(2)       # 2.0794...
LOSS_B = math.log(8 / 3)       # 0.9808...


def test_coral_loss_hand_values():
    levels = losses.levels_from_labels(HAND_LABELS, 3)
    per = losses.coral_loss(HAND_LOGITS, levels, reduction=None)
    assert torch.allclose(per, torch.tensor([LOSS_A, LOSS_B]), atol=1e-6)
    assert losses.coral_loss(HAND_LOGITS, levels).item() == pytest.approx((LOSS_A + LOSS_B) / 2, abs=1e-6)
    assert losses.coral_loss(HAND_LOGITS, levels, reduction="sum").item() == pytest.approx(LOSS_A + LOSS_B, abs=1e-6)


def test_coral_loss_hand_values_weighted():
    # weights [1, 1/2] halve the second task's term:
    #   a: ln2 + 0.5 * ln4 = 2 ln2;   b: ln(4/3) + 0.5 * ln2
    levels = losses.levels_from_labels(HAND_LABELS, 3)
    w = torch.tensor([1.0, 0.5])
    per = losses.coral_loss(HAND_LOGITS, levels, importance_weights=w, reduction="none")
    want = torch.tensor([2 * math.log(2), math.log(4 / 3) + 0.5 * math.log(2)])
    assert torch.allclose(per, want, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("reduction", ["mean", "sum", None])
def test_coral_loss_matches_coral_pytorch(seed, reduction):
    logits, labels = _random_case(seed)
    levels = levels_from_labelbatch(labels, num_classes=40)
    w = torch.rand(39, generator=torch.Generator().manual_seed(seed + 100))
    for weights in (None, w):
        got = losses.coral_loss(logits, levels, importance_weights=weights, reduction=reduction)
        want = ref_coral_loss(logits, levels, importance_weights=weights, reduction=reduction)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)


def test_ordinal_loss_is_coral_formula():
    logits, labels = _random_case(3, k=10)
    levels = losses.levels_from_labels(labels, 10)
    assert torch.allclose(losses.ordinal_loss(logits, levels), ref_coral_loss(logits, levels))


def test_coral_loss_stable_for_extreme_logits():
    # logit +1000 with target 1 costs ~0, logit -1000 with target 1 costs ~1000:
    # a naive log(sigmoid(.)) would give -inf / nan here.
    logits = torch.tensor([[1000.0, -1000.0]])
    levels = torch.tensor([[1.0, 1.0]])
    loss = losses.coral_loss(logits, levels)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(1000.0, rel=1e-6)


def test_coral_loss_rejects_shape_mismatch():
    with pytest.raises(ValueError):
        losses.coral_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError):
        losses.coral_loss(torch.zeros(2, 3), torch.zeros(2, 3), importance_weights=torch.ones(4))


# ---------------------------------------------------------------------------
# CORN loss
# ---------------------------------------------------------------------------

def test_corn_loss_hand_value():
    # K = 3, labels [0, 1, 2].
    #   task 0 uses every sample (y >= 0), target y > 0 = [0, 1, 1]
    #   task 1 uses samples with y >= 1 (rows 1, 2), target y > 1 = [0, 1]
    # Row 0's task-1 logit (100) must be ignored: counted, it would add ~100.
    logits = torch.tensor([[0.0, 100.0],
                           [LN3, 0.0],
                           [LN3, LN3]])
    labels = torch.tensor([0, 1, 2])
    # task 0: -log(1 - 1/2) - log(3/4) - log(3/4) = ln2 + 2 ln(4/3)
    # task 1: -log(1 - 1/2) - log(3/4)            = ln2 +   ln(4/3)
    # 5 (sample, task) pairs in all -> mean over 5
    want = (2 * math.log(2) + 3 * math.log(4 / 3)) / 5   # 0.44987...
    assert losses.corn_loss(logits, labels, 3).item() == pytest.approx(want, abs=1e-6)
    assert ref_corn_loss(logits, labels, 3).item() == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_corn_loss_matches_coral_pytorch(seed):
    logits, labels = _random_case(seed)
    if seed == 3:
        # no sample above rank 9: tasks 10..38 have no training samples at all
        labels = labels % 10
    logits.requires_grad_(True)
    got = losses.corn_loss(logits, labels, 40)
    (g_got,) = torch.autograd.grad(got, logits)
    want = ref_corn_loss(logits, labels, 40)
    (g_want,) = torch.autograd.grad(want, logits)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    assert torch.allclose(g_got, g_want, rtol=1e-5, atol=1e-7)


def test_corn_loss_differs_from_coral_loss():
    # guards against corn_loss silently degenerating to the unconditional loss
    logits, labels = _random_case(5)
    corn = losses.corn_loss(logits, labels, 40)
    coral = losses.coral_loss(logits, losses.levels_from_labels(labels, 40))
    assert not torch.allclose(corn, coral)


# ---------------------------------------------------------------------------
# task importance weights
# ---------------------------------------------------------------------------

def test_task_importance_weights_hand_values():
    # K = 4, labels [0, 0, 0, 1, 2, 3], N = 6
    #   k=0: S = #(y>0) = 3, m = max(3, 3) = 3
    #   k=1: S = #(y>1) = 2, m = max(2, 4) = 4
    #   k=2: S = #(y>2) = 1, m = max(1, 5) = 5
    # w = sqrt([3, 4, 5]) / sqrt(5)
    got = losses.task_importance_weights(torch.tensor([0, 0, 0, 1, 2, 3]), 4)
    want = torch.tensor([math.sqrt(3 / 5), math.sqrt(4 / 5), 1.0])
    assert got.shape == (3,)
    assert torch.allclose(got, want, atol=1e-6)


def test_task_importance_weights_missing_top_ranks():
    # K = 4, labels [0, 0, 1]: k=0: S=1, m=2; k=1: S=0, m=3; k=2: S=0, m=3
    got = losses.task_importance_weights(torch.tensor([0, 0, 1]), 4)
    want = torch.tensor([math.sqrt(2 / 3), 1.0, 1.0])
    assert torch.allclose(got, want, atol=1e-6)


def test_task_importance_weights_random_against_loop():
    # an explicit per-task loop over the formula, on a skewed age-like label set
    g = torch.Generator().manual_seed(7)
    labels = (torch.randn(500, generator=g).abs() * 10).long().clamp(max=39)
    k = 40
    n = labels.numel()
    m = []
    for t in range(k - 1):
        s = int((labels > t).sum())
        m.append(math.sqrt(max(s, n - s)))
    want = torch.tensor(m) / max(m)
    got = losses.task_importance_weights(labels, k)
    assert torch.allclose(got, want, atol=1e-6)
    assert got.max().item() == pytest.approx(1.0)
    assert (got > 0).all()


# ---------------------------------------------------------------------------
# probabilities
# ---------------------------------------------------------------------------

def _nonincreasing(cum):
    """True where every row of (N, K-1) cumulative probabilities is non-increasing."""
    return bool((cum[:, 1:] <= cum[:, :-1]).all())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coral_layer_cumulative_probas_monotone(seed):
    torch.manual_seed(seed)
    head = heads.CoralLayer(32, 40)
    with torch.no_grad():
        head.coral_weights.weight.mul_(5.0)   # large random weights, still monotone
    x = 4.0 * torch.randn(128, 32)
    cum = heads.coral_probas(head(x))
    assert _nonincreasing(cum)
    # and with random biases sorted in decreasing order (the trained regime)
    with torch.no_grad():
        head.coral_bias.copy_(torch.sort(3.0 * torch.randn(39), descending=True).values)
    assert _nonincreasing(heads.coral_probas(head(x)))


def test_monotonicity_check_catches_niu_head():
    # Negative control: independent per-task weights (Niu) are not rank-consistent,
    # so the check above is not vacuous.
    torch.manual_seed(0)
    head = heads.OrdinalHead(32, 40)
    cum = heads.coral_probas(head(torch.randn(128, 32)))
    assert not _nonincreasing(cum)


@pytest.mark.parametrize("seed", [0, 1])
def test_corn_cumulative_probas_monotone(seed):
    logits, _ = _random_case(seed)
    cum = heads.corn_cumulative_probas(logits)
    assert _nonincreasing(cum)
    assert torch.allclose(cum[:, 0], torch.sigmoid(logits[:, 0]))


def test_rank_probas_hand_values():
    # monotone CORAL: P(y>k) = [3/4, 1/2] -> P(y=k) = [1/4, 1/4, 1/2]
    got = heads.rank_probas_from_coral(torch.tensor([[LN3, 0.0]]))
    assert torch.allclose(got, torch.tensor([[0.25, 0.25, 0.5]]), atol=1e-6)
    # non-monotone: P(y>k) = [1/2, 3/4] -> raw [1/2, -1/4, 3/4]
    #   -> clamp [1/2, 0, 3/4] -> renormalise by 5/4 -> [0.4, 0, 0.6]
    got = heads.rank_probas_from_coral(torch.tensor([[0.0, LN3]]))
    assert torch.allclose(got, torch.tensor([[0.4, 0.0, 0.6]]), atol=1e-6)
    # CORN: conditionals [1/2, 1/2] -> P(y>k) = [1/2, 1/4] -> [1/2, 1/4, 1/4]
    got = heads.rank_probas_from_corn(torch.tensor([[0.0, 0.0]]))
    assert torch.allclose(got, torch.tensor([[0.5, 0.25, 0.25]]), atol=1e-6)


@pytest.mark.parametrize("loss_name", losses.LOSSES)
def test_rank_probabilities_are_distributions(loss_name):
    k = 40
    g = torch.Generator().manual_seed(11)
    logits = 3.0 * torch.randn(64, losses.head_output_size(loss_name, k), generator=g)
    p = heads.rank_probabilities(logits, loss_name)
    assert p.shape == (64, k)
    assert (p >= 0).all()
    assert torch.allclose(p.sum(dim=1), torch.ones(64), atol=1e-5)


def test_rank_probabilities_consistent_with_cumulative():
    # for a monotone head the tail sums of P(y=k) recover P(y>k) exactly
    torch.manual_seed(4)
    logits = heads.CoralLayer(16, 10)(torch.randn(8, 16))
    p = heads.rank_probabilities(logits, "coral")                       # (8, 10)
    tail = p.flip(1).cumsum(1).flip(1)[:, 1:]                       # P(y > k), (8, 9)
    assert torch.allclose(tail, torch.sigmoid(logits), atol=1e-5)


# ---------------------------------------------------------------------------
# predictions
# ---------------------------------------------------------------------------

def test_coral_predict_hand_values():
    logits = torch.tensor([[2.0, 1.0, -1.0, -2.0],    # 2 positive -> rank 2
                           [-1.0, -2.0, -3.0, -4.0],  # none       -> rank 0
                           [1.0, 2.0, 3.0, 4.0],      # all        -> rank 4
                           [1.0, -1.0, 1.0, -1.0]])   # Niu-style non-monotone: counts 2
    want = torch.tensor([2, 0, 4, 2])
    assert torch.equal(heads.coral_predict(logits), want)
    assert torch.equal(proba_to_label(torch.sigmoid(logits)), want)


def test_corn_predict_hand_values():
    # row 0: cumprod of sigmoid ~ [0.993, 0.987, 0.0066, ...] -> rank 2 (CORAL rule would say 3)
    # row 1: sigmoid(0.2) = 0.5498; cumprod [0.550, 0.302, ...] -> rank 1 (CORAL rule: 4)
    logits = torch.tensor([[5.0, 5.0, -5.0, 5.0],
                           [0.2, 0.2, 0.2, 0.2]])
    want = torch.tensor([2, 1])
    assert torch.equal(heads.corn_predict(logits), want)
    assert torch.equal(corn_label_from_logits(logits), want)
    assert torch.equal(heads.coral_predict(logits), torch.tensor([3, 4]))


@pytest.mark.parametrize("seed", [0, 1])
def test_predictions_match_coral_pytorch_random(seed):
    logits, _ = _random_case(seed)
    assert torch.equal(heads.coral_predict(logits), proba_to_label(torch.sigmoid(logits)))
    assert torch.equal(heads.corn_predict(logits), corn_label_from_logits(logits))


def test_ce_predict_modes():
    logits = torch.tensor([[0.0, 3.0, 1.0],
                           [5.0, 0.0, 0.0]])
    assert torch.equal(heads.ce_predict(logits), torch.tensor([1, 0]))
    # softmax = [1/2, 1/4, 1/4] -> E[rank] = 0*1/2 + 1*1/4 + 2*1/4 = 3/4
    probs = torch.tensor([[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]])
    exp = heads.ce_predict(torch.log(probs), mode="expectation")
    assert exp.dtype == torch.float32
    assert torch.allclose(exp, torch.tensor([0.75, 1.0]), atol=1e-6)
    with pytest.raises(ValueError):
        heads.ce_predict(logits, mode="median")


def test_predict_rank_dispatch():
    logits = torch.tensor([[5.0, 5.0, -5.0, 5.0],
                           [0.2, 0.2, 0.2, 0.2]])                  # (N, K-1), K = 5
    assert torch.equal(heads.predict_rank(logits, "coral"), torch.tensor([3, 4]))
    assert torch.equal(heads.predict_rank(logits, "ordinal"), torch.tensor([3, 4]))
    assert torch.equal(heads.predict_rank(logits, "corn"), torch.tensor([2, 1]))
    ce_logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.0001]]))
    assert torch.equal(heads.predict_rank(ce_logits, "ce"), torch.tensor([3]))
    # E = 0.2 + 0.6 + 1.2 + 4 * 0.0001, normalised by the total 1.0001
    e = heads.predict_rank(ce_logits, "ce", ce_mode="expectation")
    assert e.item() == pytest.approx((0.2 + 0.6 + 1.2 + 0.0004) / 1.0001, abs=1e-5)
    with pytest.raises(ValueError):
        heads.predict_rank(logits, "mse")


# ---------------------------------------------------------------------------
# heads and dispatch
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("loss_name,width", [("ce", 40), ("ordinal", 39), ("coral", 39), ("corn", 39)])
def test_heads_shapes(loss_name, width):
    assert losses.head_output_size(loss_name, 40) == width
    head = heads.make_head(loss_name, 512, 40)
    out = head(torch.randn(7, 512))
    assert out.shape == (7, width)


def test_head_parameter_counts():
    # CORAL shares one weight vector: in + (K-1) params; Niu / CORN: (in + 1)(K-1); CE: (in + 1) K
    def count(m):
        return sum(p.numel() for p in m.parameters())
    assert count(heads.CoralLayer(512, 40)) == 512 + 39
    assert count(heads.OrdinalHead(512, 40)) == 513 * 39
    assert count(heads.CornHead(512, 40)) == 513 * 39
    assert count(heads.CEHead(512, 40)) == 513 * 40
    assert isinstance(heads.make_head("coral", 8, 5), heads.CoralLayer)
    assert isinstance(heads.make_head("ordinal", 8, 5), heads.OrdinalHead)
    assert isinstance(heads.make_head("corn", 8, 5), heads.CornHead)
    assert isinstance(heads.make_head("ce", 8, 5), heads.CEHead)


def test_coral_layer_matches_coral_pytorch_layer():
    for preinit in (True, False):
        ours = heads.CoralLayer(16, 6, preinit_bias=preinit)
        ref = RefCoralLayer(16, 6, preinit_bias=preinit)
        assert torch.equal(ours.coral_bias.data, ref.coral_bias.data)
        ref.coral_weights.weight.data.copy_(ours.coral_weights.weight.data)
        x = torch.randn(5, 16)
        assert torch.allclose(ours(x), ref(x))
    # preinit biases strictly decreasing: (5, 4, 3, 2, 1) / 5
    assert torch.allclose(heads.CoralLayer(16, 6).coral_bias.data,
                          torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2]))


def test_compute_loss_dispatch():
    k = 10
    g = torch.Generator().manual_seed(9)
    labels = torch.randint(0, k, (16,), generator=g)
    ord_logits = torch.randn(16, k - 1, generator=g)
    ce_logits = torch.randn(16, k, generator=g)
    levels = levels_from_labelbatch(labels, num_classes=k)
    w = losses.task_importance_weights(labels, k)
    assert torch.allclose(losses.compute_loss("ce", ce_logits, labels, k), F.cross_entropy(ce_logits, labels))
    for name in ("ordinal", "coral"):
        assert torch.allclose(losses.compute_loss(name, ord_logits, labels, k), ref_coral_loss(ord_logits, levels))
        assert torch.allclose(losses.compute_loss(name, ord_logits, labels, k, importance_weights=w),
                              ref_coral_loss(ord_logits, levels, importance_weights=w))
    assert torch.allclose(losses.compute_loss("corn", ord_logits, labels, k), ref_corn_loss(ord_logits, labels, k))
    for name in ("ce", "corn"):
        with pytest.raises(ValueError):
            logits = ce_logits if name == "ce" else ord_logits
            losses.compute_loss(name, logits, labels, k, importance_weights=w)
    with pytest.raises(ValueError):
        losses.compute_loss("mse", ord_logits, labels, k)


@pytest.mark.parametrize("loss_name", losses.LOSSES)
def test_heads_train_end_to_end(loss_name):
    # a few SGD steps on a tiny separable problem must lower the loss and
    # backprop must reach every head parameter
    torch.manual_seed(0)
    k, n = 5, 64
    labels = torch.arange(n) % k
    x = F.one_hot(labels, k).float() + 0.05 * torch.randn(n, k)
    head = heads.make_head(loss_name, k, k)
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = losses.compute_loss(loss_name, head(x), labels, k)
        loss.backward()
        assert all(p.grad is not None for p in head.parameters())
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < 0.7 * first


def test_loss_names():
    assert losses.LOSSES == ("ce", "ordinal", "coral", "corn")


# ---------------------------------------------------------------------------
# prior bias initialisation
# ---------------------------------------------------------------------------

def test_prior_bias_hand_values():
    # K = 3, labels 0,1,1,2 -> smoothed counts (2, 3, 2) of 7
    labels = torch.tensor([0, 1, 1, 2])
    # ce: log(n_r / N)
    torch.testing.assert_close(losses.prior_bias("ce", labels, 3), torch.tensor([2 / 7, 3 / 7, 2 / 7]).log())
    # ordinal / coral: S = (5, 2) of 7 -> logit(5/7) = ln(5/2), logit(2/7) = ln(2/5)
    for name in ("ordinal", "coral"):
        torch.testing.assert_close(losses.prior_bias(name, labels, 3), torch.tensor([math.log(5 / 2), math.log(2 / 5)]))
    # corn: P(y>0) = 5/7 -> ln(5/2); P(y>1 | y>0) = 2/5 -> ln(2/3)
    torch.testing.assert_close(losses.prior_bias("corn", labels, 3), torch.tensor([math.log(5 / 2), math.log(2 / 3)]))


@pytest.mark.parametrize("loss_name", ["ce", "ordinal", "coral", "corn"])
def test_prior_bias_reproduces_training_distribution(loss_name):
    # a head that outputs only its bias predicts the (smoothed) training distribution
    k = 7
    labels = torch.tensor([0] * 5 + [1] * 20 + [2] * 40 + [3] * 10 + [5] * 3 + [6] * 2)  # rank 4 absent
    bias = losses.prior_bias(loss_name, labels, k)
    assert bias.shape == (losses.head_output_size(loss_name, k),) and torch.isfinite(bias).all()
    probs = heads.rank_probabilities(bias.unsqueeze(0), loss_name)[0]
    counts = torch.bincount(labels, minlength=k).float() + 1
    torch.testing.assert_close(probs, counts / counts.sum(), rtol=1e-5, atol=1e-6)
