"""Exact-age benchmark: the same recipe for each ordinal loss, one command.

    python bench_age.py                      # ce, ordinal, coral, corn on the CORAL paper's UTKFace split
    python bench_age.py --losses coral corn  # a subset (rows of the others stay in results.json)
    python bench_age.py -- -ep 4             # anything after -- is passed to every training run

Each loss is one ``gender_age_classifier.py --task exact-age`` run in its own
process (so the wall time includes start-up, decoding and the final test), with
RECIPE plus the extra arguments, into ``<out>/<loss>/``. The model is chosen on
the validation split (10% of train); test is evaluated once. Writes
``<out>/results.json`` and ``<out>/results.md`` (a Markdown table with the
exact command) and prints the table.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from gender_age.core.checkpointing import atomic_write_text

LOSSES = ("ce", "ordinal", "coral", "corn")

# One recipe for every loss: the exact-age default of gender_age_classifier.py
# (RECIPES["cpu"]), sized for the 30-minute budget on a 2-core CPU: ResNet-18
# at 64x64 on images decoded once into memory at 68 px (a random 64 px crop and
# a flip in training, the centre crop in evaluation), AdamW with a one-cycle
# schedule over 14 epochs, head biases started at the label prior, and an
# exponential moving average of the weights for evaluation and the final model.
RECIPE = ["--recipe", "cpu"]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train and test each exact-age loss with one recipe.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES, help="losses to run, in order")
    p.add_argument("--out", default="runs/bench-age", help="output folder (one subfolder per loss)")
    p.add_argument("extra", nargs="*", help="after --: arguments added to every training command")
    return p


def command(loss: str, out: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "gender_age_classifier.py", "--task", "exact-age", "--loss", loss,
            *RECIPE, "--no-progress", *extra, "--checkpoint-dir", str(out / loss),
            "--overwrite"]  # re-running a loss replaces its earlier run


def table(rows: list[dict]) -> str:
    lines = ["| loss | test MAE | RMSE | CS@5 | best epoch (val MAE) | wall time | command |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['loss']} | failed: {r['error']} | | | | {r['minutes']:.1f} min | `{r['command']}` |")
            continue
        t = r["test"]
        lines.append(f"| {r['loss']} | {t['mae']:.3f} | {t['rmse']:.3f} | {t['cs5']:.3f} | "
                     f"{r['epoch']} ({r['val_mae']:.2f}) | {r['minutes']:.1f} min | `{r['command']}` |")
    return "\n".join(lines)


def main(args) -> list[dict]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # rows of losses not run this time are kept from an earlier results.json (same recipe assumed:
    # each row carries its command), so a loss can be re-run on its own
    earlier = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else []
    kept = {r["loss"]: r for r in earlier if r["loss"] not in args.losses}
    rows = []
    for loss in args.losses:
        cmd = command(loss, out, args.extra)
        shown = "python " + shlex.join(cmd[1:])
        print(f"== {loss}: {shown}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1])
        minutes = (time.perf_counter() - t0) / 60
        row = {"loss": loss, "command": shown, "minutes": minutes}
        results = out / loss / "test_results.json"
        if proc.returncode != 0 or not results.is_file():
            row["error"] = f"exit {proc.returncode}"
        else:
            r = json.loads(results.read_text())
            row.update(test=r["test"], epoch=r["epoch"], val_mae=r["val"]["value"])
        rows.append(row)
        # rewritten after each loss, so an interrupted benchmark keeps what it measured
        merged = sorted([*rows, *kept.values()], key=lambda r: LOSSES.index(r["loss"]))
        atomic_write_text(out / "results.json", json.dumps(merged, indent=1) + "\n")
        atomic_write_text(out / "results.md", table(merged) + "\n")
    print(table(merged))  # --losses takes at least one, so the loop set merged
    return merged


if __name__ == "__main__":
    a = get_args_parser().parse_args()
    rows = main(a)
    sys.exit(1 if any(r.get("error") for r in rows) else 0)
