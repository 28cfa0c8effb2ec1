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
