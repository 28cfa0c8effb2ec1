"""The ordinal age heads as prediction sees them, without torch: their names, their output
widths and the rank each method reads off its outputs (numpy).

losses.py has the same rules on tensors for training and its metrics (``losses.predict_rank``;
tests/test_ordinal.py checks that the two agree), and imports the names and widths from here.
Shapes: N images, K ranks.
"""
from __future__ import annotations

import numpy as np

#: The loss names understood by every dispatcher (here and in losses.py).
LOSSES = ("ce", "ordinal", "coral", "corn")


def check_loss_name(loss_name: str) -> None:
    if loss_name not in LOSSES:
        raise ValueError(f"unknown loss {loss_name!r}; expected one of {LOSSES}")


def head_output_size(loss_name: str, num_classes: int) -> int:
    """Width of the head's output: K for 'ce', K-1 for 'ordinal', 'coral', 'corn'."""
    check_loss_name(loss_name)
    return num_classes if loss_name == "ce" else num_classes - 1


def rank_of(outputs: np.ndarray, loss_name: str, ce_mode: str = "argmax") -> np.ndarray:
    """Head outputs (N, K) for 'ce', (N, K-1) otherwise -> (N,) predicted ranks.

    'ordinal' / 'coral': the number of thresholds passed, sigmoid(s) > 0.5, i.e. s > 0 (Cao et
    al. 2020, Eq. 5; Niu et al.); 'corn': the number of k with P(y > k) > 0.5, P(y > k) the running
    product of the conditional sigmoids; 'ce': argmax (int64), or with ce_mode 'expectation' the
    expected rank under the softmax (float64, not rounded).
    """
    check_loss_name(loss_name)
    x = np.asarray(outputs, dtype=np.float64)
    if loss_name == "ce":
        if ce_mode == "argmax":
            return x.argmax(axis=1)
        if ce_mode != "expectation":
            raise ValueError(f"mode must be 'argmax' or 'expectation', got {ce_mode!r}")
        return softmax(x) @ np.arange(x.shape[1], dtype=np.float64)
    if loss_name == "corn":
        # a negative logit (sigmoid below 0.5) ends the run of P(y > k) > 0.5 whatever its value, so
        # logits are clipped at 0 (sigmoid 0.5, which does not count either): exp never overflows
        sig = 1 / (1 + np.exp(-np.maximum(x, 0.0)))
        return (np.cumprod(sig, axis=1) > 0.5).sum(axis=1)
    return (x > 0).sum(axis=1)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax along ``axis``, shifted by the maximum so that no exponent overflows."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)
