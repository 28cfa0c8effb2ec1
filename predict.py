"""Predict gender or age group for face images with a trained checkpoint.

    python predict.py            # checkpoints/gender/model_best.tar on gender-data/predict/
    python predict.py -a         # checkpoints/age/model_best.tar on age-data/predict/
    python predict.py photo.jpg faces/ --checkpoint run/model_best.tar --json

One line per image: file, predicted class, probability. Images that cannot be
read are reported on stderr; the others are still predicted, and the exit
status is 1 when any image failed (2 for a usage problem).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from pathlib import Path

import torch

import datasets as ds
from checkpointing import CheckpointError, expect, load_checkpoint
from models import build_model

TASK_DATA = {"gender": "gender-data", "age": "age-data"}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Predict gender or age group for face images.", add_help=add_help,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("inputs", nargs="*", help="image files or folders (any depth); "
                                             "default: <data>/predict/ of the task")
    p.add_argument("-a", "--age", action="store_true", help="use the age model (checkpoints/age) instead of gender")
    p.add_argument("--checkpoint", default=None, help="checkpoint to use (default: checkpoints/<task>/model_best.tar)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON records instead of lines")
    fmt.add_argument("--csv", action="store_true", help="print CSV instead of lines")
    p.add_argument("-b", "--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--workers", type=int, default=None, help="decode workers (default: CPU cores, at most 8)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast; default: on where bf16 is fast (AMX CPUs, CUDA)")
    return p


class Predictor:
    """A checkpoint, rebuilt and ready: uint8 (N,3,R,R) batches -> probabilities."""

    def __init__(self, path: str | os.PathLike, device: torch.device, amp: bool = False):
        self.path = Path(path)
        self.ckpt = load_checkpoint(self.path)
        self.task = self.ckpt["task"]
        self.classes = list(self.ckpt["classes"])
        self.preset = ds.Preset.from_dict(self.ckpt["preprocess"])
        try:
            model = build_model(**self.ckpt["model_args"])
            model.load_state_dict(self.ckpt["model_state"])
        except (TypeError, ValueError, RuntimeError, KeyError) as e:
            msg = str(e).strip().splitlines()[0][:160]
            raise CheckpointError(f"{self.path}: the weights do not fit the stored architecture ({msg})") from None
        self.device, self.amp = device, amp
        self.model = model.to(device).eval().to(memory_format=torch.channels_last)

    @torch.no_grad()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (N,3,R,R) -> float logits (N, outputs), on the CPU."""
        x = self.preset.eval_batch(batch.to(self.device)).contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return self.model(x).float().cpu()

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        return self.logits(batch).softmax(1)


class _PredictFiles(torch.utils.data.Dataset):
    def __init__(self, paths, size):
        self.paths, self.size = paths, size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return i, ds.decode_resized(self.paths[i], self.size), None
        except ds.BadImageError as e:
            return i, None, str(e)


def _collate(items):
    good = [(i, t) for i, t, _ in items if t is not None]
    bad = [(i, e) for i, t, e in items if t is None]
    batch = torch.stack([t for _, t in good]) if good else None
    return [i for i, _ in good], batch, bad


def collect_inputs(inputs: list[str]) -> list[str]:
    """Files as given (any suffix: a bad one is reported later), folders searched at any depth."""
    paths = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = ds.list_images(p)
            if not found:
                raise ds.DatasetError(f"folder {p} has no images ({', '.join(ds.IMG_EXTENSIONS[:4])}, ...)")
            paths += [str(f) for f in found]
        elif p.exists() or p.is_symlink():
            paths.append(str(p))
        else:
            raise ds.DatasetError(f"{p} does not exist")
    return paths


def predict_files(predictor: Predictor, paths: list[str], batch_size: int, workers: int):
    """Yield (path, probabilities or None, error or None) in input order."""
    loader = torch.utils.data.DataLoader(_PredictFiles(paths, predictor.preset.resize), batch_size=batch_size,
                                         num_workers=workers, collate_fn=_collate)
    for idx, batch, bad in loader:
        results = {}
        if batch is not None:
            for i, p in zip(idx, predictor.probabilities(batch)):
                results[i] = (p, None)
        for i, err in bad:
            results[i] = (None, err)
        for i in sorted(results):
            yield paths[i], *results[i]


def format_records(records: list[dict], as_json: bool, as_csv: bool, classes: list[str]) -> str:
    if as_json:
        return json.dumps(records, indent=2) + "\n"
    if as_csv:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["file", "label", "probability"] + [f"p_{c}" for c in classes])
        for r in records:
            w.writerow([r["file"], r["label"], f"{r['probability']:.4f}"]
                       + [f"{r['probabilities'][c]:.4f}" for c in classes])
        return buf.getvalue()
    width = max([len(r["file"]) for r in records] + [4])
    return "".join(f"{r['file']:<{width}}  {r['label']:<10} {r['probability']:.3f}\n" for r in records)


def main(args) -> int:
    task = "age" if args.age else "gender"
    ckpt_path = Path(args.checkpoint or Path("checkpoints") / task / "model_best.tar")
    inputs = args.inputs or [str(Path(TASK_DATA[task]) / "predict")]
    if not args.inputs and not Path(inputs[0]).is_dir():
        raise ds.DatasetError(f"default folder {inputs[0]} not found: pass image files or folders")
    if args.batch_size < 1:
        raise ds.DatasetError("--batch-size must be at least 1")
    from gender_age_classifier import bf16_is_fast, resolve_device
    device = resolve_device(args.device)
    amp = bf16_is_fast(device) if args.amp is None else args.amp

    predictor = Predictor(ckpt_path, device, amp)
    if not args.checkpoint or args.age:
        # the default (or -a) checkpoint must be of the task asked for
        expect(predictor.ckpt, ckpt_path, task=task)
    if not args.inputs:
        train = Path(TASK_DATA[task]) / "train"
        if train.is_dir():
            found = sorted(d.name for d in train.iterdir() if d.is_dir() and not ds.is_hidden(d.name))
            expect(predictor.ckpt, ckpt_path, classes=found)
    paths = collect_inputs(inputs)
    workers = args.workers if args.workers is not None else min(8, os.cpu_count() or 1)
    workers = min(workers, max(0, len(paths) // args.batch_size))  # no worker start-up for a handful

    records, failed = [], 0
    for path, probs, err in predict_files(predictor, paths, args.batch_size, workers):
        if probs is None:
            failed += 1
            print(f"error: {path}: {err}", file=sys.stderr)
            continue
        k = int(probs.argmax())
        records.append({"file": path, "label": predictor.classes[k], "probability": round(float(probs[k]), 6),
                        "probabilities": {c: round(float(v), 6) for c, v in zip(predictor.classes, probs)}})
    if records:
        sys.stdout.write(format_records(records, args.json, args.csv, predictor.classes))
    if failed:
        print(f"error: {failed} of {len(paths)} image(s) could not be read", file=sys.stderr)
        return 1
    return 0


def cli(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        return main(args)
    except (ds.DatasetError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
