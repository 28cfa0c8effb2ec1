"""ordinal.py: the numpy decoding that prediction uses agrees with losses.py's tensor rules."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gender_age.nets import heads as losses
from gender_age.nets import ordinal


@pytest.mark.parametrize("loss,mode", [("ordinal", "argmax"), ("coral", "argmax"), ("corn", "argmax"),
                                       ("ce", "argmax"), ("ce", "expectation")])
def test_rank_of_agrees_with_losses_predict_rank(loss, mode):
    gen = torch.Generator().manual_seed(0)
    k = 12
    width = ordinal.head_output_size(loss, k)
    # ordinary and extreme logits: the corn sigmoid must not overflow
    logits = torch.cat([torch.randn(64, width, generator=gen) * 3, torch.full((2, width), 80.0),
                        torch.full((2, width), -80.0)])
    want = losses.predict_rank(logits.double(), loss, mode).numpy()
    got = ordinal.rank_of(logits.numpy(), loss, mode)
    assert got.dtype.kind == want.dtype.kind
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_rank_of_hand_values():
    # coral: thresholds passed where the logit is positive
    assert ordinal.rank_of(np.array([[1.0, 0.5, -0.1], [-1.0, 2.0, 3.0]]), "coral").tolist() == [2, 2]
    # corn: P(y > k) = running product of sigmoids; sigmoid(ln 3) = 0.75, 0.75^2 = 0.5625, 0.75^3 < 0.5
    ln3 = float(np.log(3))
    assert ordinal.rank_of(np.array([[ln3, ln3, ln3, ln3]]), "corn").tolist() == [2]
    # ce expectation: ranks 0 and 2 equally likely -> 1.0
    assert ordinal.rank_of(np.log([[0.5, 1e-12, 0.5]]), "ce", "expectation") == pytest.approx([1.0])


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown loss"):
        ordinal.rank_of(np.zeros((1, 3)), "mse")
    with pytest.raises(ValueError, match="mode must be"):
        ordinal.rank_of(np.zeros((1, 3)), "ce", "median")


def test_head_output_size():
    assert [ordinal.head_output_size(n, 10) for n in ("ce", "ordinal", "coral", "corn")] == [10, 9, 9, 9]


def test_the_default_ce_mode_is_argmax():
    p = np.log([[0.4, 0.0001, 0.3, 0.2999]])  # argmax 0, expectation 1.5
    assert ordinal.rank_of(p, "ce").tolist() == [0]


def test_a_logit_of_exactly_zero_passes_no_threshold():
    # sigmoid(0) = 0.5 is not > 0.5: in both decoders, coral and corn alike
    zero = np.array([[2.0, 0.0, 0.0]])
    for loss in ("coral", "corn"):
        assert ordinal.rank_of(zero, loss).tolist() == [1]
        assert losses.predict_rank(torch.tensor(zero), loss).tolist() == [1]


def test_corn_products_have_known_values():
    # sigmoid(ln 9) = 0.9, sigmoid(ln 0.5) = 1/3: P(y > k) = 0.9, 0.3 -> rank 1; a negative logit ends the run
    assert ordinal.rank_of(np.array([[np.log(9.0), np.log(0.5), np.log(9.0)]]), "corn").tolist() == [1]
    # sigmoid(0.5) = 0.622, 0.622^2 = 0.387: a positive logit below 1 counts
    assert ordinal.rank_of(np.array([[0.5, 0.5]]), "corn").tolist() == [1]
    assert ordinal.rank_of(np.array([[-700.0, 700.0], [700.0, 700.0]]), "corn").tolist() == [0, 2]


def test_softmax_of_large_and_distant_rows():
    x = np.array([[1000.0, 999.0], [0.0, np.log(3.0)]])  # rows far apart: each shifted by its own maximum
    s = ordinal.softmax(x)
    np.testing.assert_allclose(s, [[1 / (1 + np.exp(-1)), np.exp(-1) / (1 + np.exp(-1))], [0.25, 0.75]])
