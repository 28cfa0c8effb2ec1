"""Every bounded training flag, at both sides of each of its bounds: the values just inside are
taken, the values just outside are a one-line error naming the flag (config.validate_args)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from gender_age.train import config

TINY = 1e-9
# flag -> (lowest value taken, highest value taken or None); the open bounds are given as the first
# value refused, marked by "open"
BOUNDS = {
    "batch_size": (1, None), "epochs": (1, None), "eval_every": (1, None), "save_every": (1, None),
    "lr_step": (1, None), "max_per_class": (1, None),
    "lr": ("open", 0, None), "lr_gamma": ("open", 0, None),
    "weight_decay": (0, None), "mixup": (0, None), "ema_epochs": (0, None),
    "dropout": (0, ("open", 1)), "label_smoothing": (0, ("open", 1)), "val_split": (0, ("open", 1)),
    "random_split": ("open", 0, ("open", 1)),
    "workers": (0, 64), "threads": (1, 1024), "resize": (16, 2048), "crop": (16, 2048),
    "seed": (0, 2 ** 32 - 1), "split_seed": (0, 2 ** 32 - 1), "min_age": (0, 150), "max_age": (0, 150),
    "csv_age_offset": (-150, 150), "chip_margin": (0, 2), "framing_sample": (0, 100_000),
    "grey": (0, 1),
}


def edges(spec):
    """(values that must be taken, values that must be refused) of one flag's BOUNDS entry."""
    if spec[0] == "open":
        low, high = spec[1], spec[2]
        ok, bad = [low + 1e-6], [low]
    else:
        low, high = spec
        ok, bad = [low], [low - (1 if isinstance(low, int) else TINY), low - 1]
    if isinstance(high, tuple):
        ok.append(high[1] - 1e-6)
        bad.append(high[1])
    elif high is not None:
        ok.append(high)
        bad.append(high + 1)
    return ok, bad


def test_the_table_covers_every_bounded_flag():
    assert set(BOUNDS) == set(config.RANGES)


@pytest.mark.parametrize("dest", sorted(BOUNDS))
def test_each_bound_takes_the_inside_and_refuses_the_outside(dest):
    ok, bad = edges(BOUNDS[dest])
    flag = "--" + dest.replace("_", "-")
    for value in ok:
        config.validate_args(SimpleNamespace(**{dest: value}))
    for value in bad:
        with pytest.raises(config.ArgumentError, match=f"^{flag} must be "):
            config.validate_args(SimpleNamespace(**{dest: value}))


def test_a_number_that_is_not_finite_is_refused():
    for value in (float("nan"), float("inf")):
        with pytest.raises(config.ArgumentError, match="^--lr must be a finite number"):
            config.validate_args(SimpleNamespace(lr=value))
