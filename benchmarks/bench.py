"""Throughput benchmark: compute-only vs our pipeline vs the original's.

    python bench.py [--epochs 3] [--data-dir gender-data]

In one run, on the same model, batch size and precision, it prints:
  1. compute-only training rate: synthetic tensors, no data loading at all;
  2. our real training rate on the default gender data, over full epochs;
  3. the original's pipeline: torchvision ImageFolder + PIL transforms with
     4 workers, decoding every JPEG again every epoch, in fp32 as the original
     ran (3a), and with our compute settings, bf16 and channels_last (3b), to
     show what the data pipeline alone is worth;
  4. predict.py's rate, from reading files to probabilities;
  5. peak memory (RSS);
and the ratios 2/1 and 2/3.
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from gender_age.data import transforms as ds
from gender_age.train import cli as gac
from gender_age.predict import pipeline as inference
from gender_age.predict.torch_backend import Predictor
from gender_age.core.runtime import bf16_is_fast, usable_cores
from gender_age.nets.models import build_model


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="gender-data", help="ImageFolder data with train/ and test/")
    p.add_argument("--epochs", type=int, default=3, help="full epochs of our pipeline (the first is warm-up)")
    p.add_argument("--baseline-epochs", type=int, default=1, help="full epochs of the original pipeline")
    p.add_argument("-b", "--batch-size", type=int, default=64, help="batch size")
    p.add_argument("--steps", type=int, default=8, help="timed compute-only steps (after 2 warm-up steps)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: as training picks for this machine)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--options", action="store_true",
                   help="only measure the compute-only rate under each option: fp32/bf16, channels_last, "
                        "threads, torch.compile")
    return p


def compute_only(batch_size: int, steps: int, amp: bool, channels_last: bool = True, compile: bool = False) -> float:
    """Training steps on synthetic, already normalised tensors: images/s."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model("levi_hassner", 2).to(memory_format=fmt).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch_size, 3, 227, 227).contiguous(memory_format=fmt)
    if compile:
        model = torch.compile(model)
    y = torch.randint(0, 2, (batch_size,))
    for i in range(steps + 2):
        if i == 2:
            t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return batch_size * steps / (time.perf_counter() - t0)


def ours(data_dir: str, epochs: int, batch_size: int, amp: bool) -> dict:
    """Our training CLI for a few full epochs; rates from its own epoch log."""
    with tempfile.TemporaryDirectory() as out:
        args = gac.get_args_parser().parse_args(
            ["--data-dir", data_dir, "--checkpoint-dir", out, "-ep", str(epochs), "-b", str(batch_size),
             "--eval-every", str(epochs), "--save-every", str(epochs), "--no-progress", "--val-split", "0.1",
             "--amp" if amp else "--no-amp", "--init-from", "none"])
        t0 = time.perf_counter()
        gac.main(args)
        total = time.perf_counter() - t0
        from gender_age.core.checkpointing import load_checkpoint
        hist = load_checkpoint(Path(out) / "checkpoint_last.tar")["history"]
    timed = hist[1:] or hist  # the first epoch carries one-off warm-up
    images = sum(r["images_per_s"] * r["seconds"] for r in timed)
    seconds = sum(r["seconds"] for r in timed)
    return {"images_per_s": images / seconds, "epoch_seconds": seconds / len(timed), "wall_seconds": total}


def baseline(data_dir: str, epochs: int, batch_size: int, amp: bool, channels_last: bool) -> dict:
    """The original's pipeline: ImageFolder + PIL transforms, 4 workers, decode every epoch."""
    from torchvision import datasets as tvd, transforms as T
    preset = ds.Preset()
    tf = T.Compose([T.Resize(256), T.RandomCrop(227), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(preset.mean, preset.std)])
    data = tvd.ImageFolder(str(Path(data_dir) / "train"), transform=tf)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True, num_workers=4)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model("levi_hassner", len(data.classes)).to(memory_format=fmt).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    n, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        for x, y in loader:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                logits = model(x.contiguous(memory_format=fmt))
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += len(y)
    seconds = time.perf_counter() - t0
    return {"images_per_s": n / seconds, "epoch_seconds": seconds / epochs}


def predict_rate(data_dir: str, amp: bool) -> dict:
    """predict.py's path over every train and test image: files -> probabilities."""
    with tempfile.TemporaryDirectory() as out:
        gac.main(gac.get_args_parser().parse_args(
            ["--data-dir", data_dir, "--checkpoint-dir", out, "--dry-run", "--no-progress", "--max-per-class", "8"]))
        predictor = Predictor(Path(out) / "model_best.tar", torch.device("cpu"), amp)
    paths = inference.collect_inputs([str(Path(data_dir) / "train"), str(Path(data_dir) / "test")])
    workers = min(8, usable_cores())
    t0 = time.perf_counter()
    n = sum(1 for _, probs, _ in inference.predict_files(predictor, paths, 64, workers) if probs is not None)
    seconds = time.perf_counter() - t0
    return {"images_per_s": n / seconds, "images": n}


def options(args) -> dict:
    """Compute-only rate under each option, to decide what to adopt."""
    cores = usable_cores()
    r = {}
    for name, kw, threads in [("fp32, NCHW", dict(amp=False, channels_last=False), cores),
                              ("fp32, channels_last", dict(amp=False), cores),
                              ("bf16, channels_last", dict(amp=True), cores),
                              ("bf16, channels_last, 1 thread", dict(amp=True), 1),
                              ("bf16, channels_last, torch.compile", dict(amp=True, compile=True), cores)]:
        torch.set_num_threads(threads)
        r[name] = compute_only(args.batch_size, args.steps, **kw)
        print(f"{name:40s} {r[name]:7.1f} img/s", flush=True)
    return r


def main(args) -> dict:
    if args.options:
        return options(args)
    amp = bf16_is_fast(torch.device("cpu")) if args.amp is None else args.amp
    torch.set_num_threads(usable_cores())
    print(f"bench: {usable_cores()} cores, torch {torch.__version__}, batch {args.batch_size}, "
          f"{'bf16 autocast' if amp else 'fp32'}, Levi-Hassner 227x227")
    r = {"compute_only": compute_only(args.batch_size, args.steps, amp)}
    print(f"1. compute only (synthetic tensors):     {r['compute_only']:7.1f} img/s", flush=True)
    r["ours"] = ours(args.data_dir, args.epochs, args.batch_size, amp)
    torch.set_num_threads(usable_cores())
    print(f"2. ours, full epochs on {args.data_dir}:   {r['ours']['images_per_s']:7.1f} img/s "
          f"({r['ours']['epoch_seconds']:.1f} s/epoch; {args.epochs} epochs + decode + eval in "
          f"{r['ours']['wall_seconds']:.0f} s)", flush=True)
    import warnings
    warnings.filterwarnings("ignore", message="This DataLoader will create")  # 4 workers on 2 cores, as the original
    r["baseline"] = baseline(args.data_dir, args.baseline_epochs, args.batch_size, amp=False, channels_last=False)
    print(f"3a. original pipeline, as it ran (fp32): {r['baseline']['images_per_s']:7.1f} img/s "
          f"({r['baseline']['epoch_seconds']:.1f} s/epoch)", flush=True)
    r["baseline_our_compute"] = baseline(args.data_dir, args.baseline_epochs, args.batch_size, amp, channels_last=True)
    print(f"3b. original pipeline, our compute settings: {r['baseline_our_compute']['images_per_s']:7.1f} img/s "
          f"({r['baseline_our_compute']['epoch_seconds']:.1f} s/epoch)", flush=True)
    r["predict"] = predict_rate(args.data_dir, amp)
    print(f"4. predict.py path (files -> probs):     {r['predict']['images_per_s']:7.1f} img/s "
          f"over {r['predict']['images']} images", flush=True)
    r["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    r["peak_rss_children_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"5. peak memory: {r['peak_rss_mib']:.0f} MiB (largest worker {r['peak_rss_children_mib']:.0f} MiB)")
    r["epoch_time_vs_compute"] = r["compute_only"] / r["ours"]["images_per_s"]
    r["ours_vs_baseline"] = r["ours"]["images_per_s"] / r["baseline"]["images_per_s"]
    print(f"ratio 2/1 (ours / compute-only): {1 / r['epoch_time_vs_compute']:.3f}  "
          f"-> an epoch takes {r['epoch_time_vs_compute']:.3f}x the compute-only time")
    r["ours_vs_baseline_our_compute"] = r["ours"]["images_per_s"] / r["baseline_our_compute"]["images_per_s"]
    print(f"ratio 2/3a (ours / original pipeline as it ran): {r['ours_vs_baseline']:.2f}x")
    print(f"ratio 2/3b (ours / original pipeline with our compute settings): "
          f"{r['ours_vs_baseline_our_compute']:.2f}x")
    if args.json:
        from gender_age.core.checkpointing import atomic_write_text
        atomic_write_text(args.json, json.dumps(r, indent=2) + "\n")
    return r


if __name__ == "__main__":
    main(get_args_parser().parse_args())
