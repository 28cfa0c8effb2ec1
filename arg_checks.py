"""The training flags' allowed values, checked in one place right after
parsing, before any data is read: a bad number is a one-line error (exit 2),
never a traceback after every image was decoded, and never silently "off".
"""
from __future__ import annotations

import math


class ArgumentError(ValueError):
    """A flag's value cannot be used; the message names the flag and its range."""


def _at_least(low):
    return lambda v: v >= low, f"at least {low}"


def _between(low, high, low_open=False, high_open=False):
    ok = lambda v: (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    return ok, f"{'above' if low_open else 'at least'} {low} and {'below' if high_open else 'at most'} {high}"


# flag (argparse destination) -> (test, what it must be); None values are "not given"
RANGES = {
    "batch_size": _at_least(1),
    "epochs": _at_least(1),
    "eval_every": _at_least(1),
    "save_every": _at_least(1),
    "lr_step": _at_least(1),
    "max_per_class": _at_least(1),
    "lr": (lambda v: v > 0, "above 0"),
    "lr_gamma": (lambda v: v > 0, "above 0"),
    "weight_decay": _at_least(0),
    "dropout": _between(0, 1, high_open=True),
    "label_smoothing": _between(0, 1, high_open=True),
    "mixup": _at_least(0),
    "ema_epochs": _at_least(0),
    "val_split": _between(0, 1, high_open=True),
    "random_split": _between(0, 1, low_open=True, high_open=True),
    "workers": _between(0, 64),
    "threads": _between(1, 1024),
    "resize": _between(16, 2048),
    "crop": _between(16, 2048),
    "seed": _between(0, 2 ** 32 - 1),
    "split_seed": _between(0, 2 ** 32 - 1),
    "min_age": _between(0, 150),
    "max_age": _between(0, 150),
    "csv_age_offset": _between(-150, 150),
    "chip_margin": _between(0, 2),
    "framing_sample": _between(0, 100_000),
}
# --imp-weight weights the K-1 binary tasks of these heads only
IMPORTANCE_WEIGHTED_LOSSES = ("coral", "ordinal")


def validate_args(args) -> None:
    """Raise ArgumentError for the first flag outside its range (RANGES), a
    NaN or infinite number, or flags that do not go together."""
    for dest, (ok, what) in RANGES.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        flag = "--" + dest.replace("_", "-")
        if isinstance(value, float) and not math.isfinite(value):
            raise ArgumentError(f"{flag} must be a finite number, got {value}")
        if not ok(value):
            raise ArgumentError(f"{flag} must be {what}, got {value}")
    loss = getattr(args, "loss", None)
    if getattr(args, "imp_weight", 0) and loss is not None and loss not in IMPORTANCE_WEIGHTED_LOSSES:
        raise ArgumentError(f"--imp-weight 1 weights the binary tasks of --loss coral or ordinal, not --loss {loss}: "
                            f"drop --imp-weight or choose one of those losses")
    if getattr(args, "eval_split", "test") != "test" and not getattr(args, "test_only", False):
        raise ArgumentError(f"--eval-split {args.eval_split} chooses what --test-only evaluates: add --test-only "
                            f"(training validates on its own split every --eval-every epochs)")
