"""Training figures and logs, always written atomically.

Matplotlib runs headless (Agg); each figure is rendered to memory and renamed
into place, so a run stopped at any moment still has its last good plots.
"""
from __future__ import annotations

import io
import json
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gender_age.core.checkpointing import atomic_write, atomic_write_text  # noqa: E402


def _save(fig, path: str | os.PathLike) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    with atomic_write(path, "wb") as f:
        f.write(buf.getbuffer())


def plot_loss(iter_losses: list, path, title: str = "training loss") -> None:
    """Loss against iteration, with a moving average to read the trend."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(1, len(iter_losses) + 1), iter_losses, lw=0.6, alpha=0.5, label="per batch")
    k = max(1, len(iter_losses) // 50)
    if k > 1:
        smooth = [sum(iter_losses[max(0, i - k + 1):i + 1]) / len(iter_losses[max(0, i - k + 1):i + 1])
                  for i in range(len(iter_losses))]
        ax.plot(range(1, len(smooth) + 1), smooth, lw=1.5, label=f"mean of {k}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_curves(epochs: list[dict], keys: dict, path, ylabel: str, title: str) -> None:
    """One line per metric key against epoch; keys maps metric key -> label."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in keys.items():
        pts = [(e["epoch"], e[key]) for e in epochs if e.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:  # a run stopped before its first evaluation has no curve yet
        ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_confusion(matrix: list[list[int]], classes: list[str], path, title: str) -> None:
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2.5, 1.2 * n + 2))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = max(max(r) for r in matrix) or 1
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(matrix[i][j]), ha="center", va="center",
                    color="white" if matrix[i][j] > peak / 2 else "black")
    ax.set_title(title)
    _save(fig, path)


def plot_scatter(true: list, pred: list, path, title: str) -> None:
    """Predicted against true value (exact age), with the identity line."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(true, pred, s=4, alpha=0.3)
    lo, hi = min(true + pred), max(true + pred)
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _save(fig, path)


def finite_or_none(obj):
    """``obj`` with every NaN or infinite float (in nested dicts, lists and
    tuples) replaced by None: JSON has no NaN, and a reader that follows the
    standard refuses Python's ``NaN`` and ``Infinity``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def to_json(obj, **kwargs) -> str:
    """Standard JSON: non-finite numbers become null (never NaN or Infinity)."""
    return json.dumps(finite_or_none(obj), allow_nan=False, sort_keys=True, **kwargs)


def write_jsonl(records: list[dict], path) -> None:
    """The whole metrics log, rewritten atomically (it is small)."""
    atomic_write_text(path, "".join(to_json(r) + "\n" for r in records))


def write_json(obj, path) -> None:
    atomic_write_text(path, to_json(obj, indent=2) + "\n")
