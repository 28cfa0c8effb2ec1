"""Helpers for scripts/gpu_check.sh: tiny generated data, a photo and a video with a
pasted face, rates from a run's metrics.jsonl or predict.py's JSON, and a
compute-only rate on the run's own device.

    python scripts/gpu_check_helper.py data OUT                # OUT/gender (ImageFolder), OUT/utkface (+ CSV)
    python scripts/gpu_check_helper.py media CROP OUT          # OUT/photo.jpg, OUT/clip.mp4
    python scripts/gpu_check_helper.py run-rate RUN_DIR --epochs N
    python scripts/gpu_check_helper.py predict-rate PREDICTIONS.json SECONDS [--need-faces]
    python scripts/gpu_check_helper.py compute-only NAME=CHECKPOINT,train|infer,DEVICE,BATCH,bf16|fp32 ...

Each command prints one line (compute-only: one ``NAME<tab>rate`` line per
measurement), the rate in images/s first, or exits with a one-line ``error:``.

The compute-only rate is measured here, not with bench.py: bench.py's
compute-only loop runs the Levi-Hassner network on CPU tensors under CPU
autocast only, so it says nothing about a GPU or about ResNet-18 at 64 px.
This loop rebuilds the run's own network from its checkpoint (model_args,
crop) and times training (or inference) steps on synthetic batches on the
run's device, synchronising CUDA before reading the clock.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# the project's modules (and torch) are imported where needed: reading rates stays instant


def make_data(out: Path, per_class: int) -> None:
    """A gender ImageFolder tree and a UTKFace-like folder (ages and genders in the file names, a
    CORAL-style test CSV), from face-free generated pictures: enough for every step to run, not to
    learn anything."""
    from tests import synthetic
    from gender_age.data.sources import UTKFACE_TEST_OFFSET
    seed = 0
    for split, n in (("train", per_class), ("test", max(2, per_class // 4))):
        for cls in ("female", "male"):
            folder = out / "gender" / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                seed += 1
                synthetic.background((64, 64), seed).save(folder / f"{i}.jpg")
    folder = out / "utkface" / "UTKFace"
    folder.mkdir(parents=True)
    test_rows = []
    for i in range(per_class * 2):
        seed += 1
        age = 21 + (i % 8) * 5  # 8 ages, each several times, for the stratified random split
        name = f"{age}_{i % 2}_0_20170101{i:06d}.jpg.chip.jpg"
        synthetic.background((64, 64), seed).save(folder / name)
        if i % 8 in (2, 7):  # a quarter, both genders: the test split of --source utkface (CORAL CSV ages)
            test_rows.append([len(test_rows), name, age - UTKFACE_TEST_OFFSET])
    with open(out / "utkface" / "utk_test.csv", "w", newline="") as f:
        csv.writer(f).writerows([["", "file", "age"], *test_rows])


def make_media(crop_path: Path, out: Path, frames: int = 16) -> None:
    """A 640x480 photo with the crop pasted at 200 px, and a 480x360 video with it moving across."""
    from gender_age.faces import videos
    from tests import synthetic
    from gender_age.core.checkpointing import atomic_write
    from gender_age.core.images import load_rgb
    crop = load_rgb(crop_path)
    photo, _ = synthetic.paste_crops(synthetic.background((640, 480), 1), [crop], [(300, 120, 200)])
    with atomic_write(out / "photo.jpg") as f:
        photo.save(f, format="JPEG", quality=92)
    clip = out / "clip.mp4"
    writer = videos.VideoWriter(clip, 8.0, (480, 360))
    try:
        canvas = synthetic.background((480, 360), 2)
        for i in range(frames):
            x = 20 + round(i * (480 - 160 - 40) / max(frames - 1, 1))
            writer.write(synthetic.paste_crops(canvas, [crop], [(x, 100, 160)])[0])
    finally:
        writer.close()
    if not clip.is_file() or clip.stat().st_size == 0:
        raise SystemExit(f"error: no video written to {clip} (OpenCV lacks the mp4v encoder?)")


def first_image(data_dir: Path) -> Path:
    """The first test image of an ImageFolder tree (the face pasted into the photo and video)."""
    from gender_age.core.images import list_images
    found = sorted(list_images(data_dir / "test"))
    if not found:
        raise SystemExit(f"error: no test image under {data_dir / 'test'}")
    return Path(found[0])


def run_rate(run_dir: Path, epochs: int) -> str:
    """The last epoch's training rate from metrics.jsonl; checks the run has ``epochs`` epochs."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"error: {path} was not written")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if [r["epoch"] for r in records] != list(range(1, epochs + 1)):
        raise SystemExit(f"error: {path} has epochs {[r['epoch'] for r in records]}, expected 1-{epochs}")
    last = records[-1]
    return f"{last['images_per_s']:.1f} img/s (epoch {last['epoch']}, {last['seconds']:.1f} s)"


def predict_rate(path: Path, seconds: float, need_faces: bool) -> str:
    """Records per second of predict.py --json output (wall time, start-up included)."""
    records = json.loads(path.read_text())
    found = sum(1 for r in records if r.get("source") == "detector")
    if not records or (need_faces and not found):
        raise SystemExit(f"error: predict.py gave {len(records)} records, {found} detected faces, in {path}")
    return f"{len(records) / seconds:.1f} img/s ({len(records)} records, {found} detected faces, {seconds:.1f} s " \
           f"with start-up)"


def compute_only(checkpoint: Path, device: str, amp: bool, infer: bool, batch: int, steps: int) -> str:
    """Training (or inference) steps of the checkpoint's network on synthetic batches: images/s."""
    import torch
    from gender_age.core.checkpointing import load_checkpoint
    from gender_age.nets.models import build_model
    ckpt = load_checkpoint(checkpoint)
    dev = torch.device(device)
    model = build_model(**ckpt["model_args"]).to(dev).to(memory_format=torch.channels_last).train(not infer)
    crop = ckpt["preprocess"]["crop"]
    x = torch.randn(batch, 3, crop, crop, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, ckpt["model_args"]["num_outputs"], (batch,), device=dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp), torch.set_grad_enabled(not infer):
            logits = model(x)
        if not infer:
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(logits.float(), y).backward()
            opt.step()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(2):  # warm-up: cuDNN autotuning, allocator, first-call overheads
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    rate = batch * steps / (time.perf_counter() - t0)
    return f"{rate:.1f} img/s ({'inference' if infer else 'training'}, batch {batch}, {crop} px)"


def parse_spec(text: str) -> tuple:
    """NAME=CHECKPOINT,train|infer,DEVICE,BATCH,bf16|fp32 -> (name, kwargs of compute_only)."""
    try:
        name, rest = text.split("=", 1)
        checkpoint, mode, device, batch, precision = rest.split(",")
        assert mode in ("train", "infer") and precision in ("bf16", "fp32")
        return name, {"checkpoint": Path(checkpoint), "device": device, "infer": mode == "infer",
                      "batch": int(batch), "amp": precision == "bf16"}
    except (ValueError, AssertionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=CHECKPOINT,train|infer,DEVICE,BATCH,bf16|fp32")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Helpers for scripts/gpu_check.sh.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("data")
    c.add_argument("out", type=Path)
    c.add_argument("--per-class", type=int, default=8)
    c = sub.add_parser("media")
    c.add_argument("data_dir", type=Path, help="ImageFolder tree: its first test image is the face")
    c.add_argument("out", type=Path)
    c.add_argument("--frames", type=int, default=16, help="video frames")
    c = sub.add_parser("run-rate")
    c.add_argument("run_dir", type=Path)
    c.add_argument("--epochs", type=int, required=True)
    c = sub.add_parser("predict-rate")
    c.add_argument("json", type=Path)
    c.add_argument("seconds", type=float)
    c.add_argument("--need-faces", action="store_true")
    c = sub.add_parser("compute-only")
    c.add_argument("specs", nargs="+", type=parse_spec, metavar="NAME=CHECKPOINT,train|infer,DEVICE,BATCH,bf16|fp32")
    c.add_argument("--steps", type=int, default=10)
    a = p.parse_args(argv)
    if a.command == "data":
        make_data(a.out, a.per_class)
        print(f"generated data in {a.out}")
    elif a.command == "media":
        make_media(first_image(a.data_dir), a.out, a.frames)
        print(f"wrote {a.out / 'photo.jpg'} and {a.out / 'clip.mp4'}")
    elif a.command == "run-rate":
        print(run_rate(a.run_dir, a.epochs))
    elif a.command == "predict-rate":
        print(predict_rate(a.json, a.seconds, a.need_faces))
    else:
        for name, kwargs in a.specs:
            print(f"{name}\t{compute_only(steps=a.steps, **kwargs)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
