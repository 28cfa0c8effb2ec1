"""Measure predict.py's face pipeline: detector recall, predict rates, ONNX vs PyTorch.

    python bench_predict.py               # about 2 minutes on 1 CPU thread
    python bench_predict.py --calibrate   # re-measure faces.GEOMETRY on training crops

1. Detector recall: ``--n`` real face crops of gender-data/test, 90-260 px,
   pasted at random places onto 640x480 face-free backgrounds. A face counts
   as found when a detection has IoU >= 0.5 with the face box the detector
   puts in a training crop (``faces.face_in_crop`` of the pasted square).
   Other detections are counted on the same photos (mostly real faces in the
   crops' own backgrounds) and, as false detections, on ``--n / 2``
   backgrounds without a face.
2. predict.py's rate (files -> predictions) with an untrained Levi-Hassner
   checkpoint: face crops with --detect off and with --detect on, and the
   pasted-face photos with detection.
3. The same network on onnxruntime (export.py) vs PyTorch fp32: speed and the
   largest probability difference.

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

import datasets as ds
import faces
import predict
from predictor import OnnxPredictor, Predictor
from images import list_images, load_rgb
from checkpointing import atomic_torch_save, atomic_write_text
from models import build_model, default_input_geometry


def untrained_checkpoint(path, task: str = "gender", classes=("female", "male"), arch: str = "levi_hassner",
                         head: str = "linear", num_ranks: int = 40, min_age: int = 21, seed: int = 0,
                         ce_mode: str | None = None) -> Path:
    """Write a checkpoint of this toolkit's format with random weights (for tests and timings).

    task "exact-age" with an ordinal ``head`` (coral, corn, ordinal, ce) adds the
    ``ordinal`` settings predict.py decodes ages with.
    """
    torch.manual_seed(seed)
    if task == "exact-age":
        model_args = {"arch": arch, "num_outputs": num_ranks, "head": head, "num_ranks": num_ranks, "dropout": 0.0}
    else:
        model_args = {"arch": arch, "num_outputs": len(classes), "dropout": 0.0}
    model = build_model(**model_args)
    ckpt = {"format": 1, "task": task, "classes": [] if task == "exact-age" else list(classes),
            "model_args": model_args, "preprocess": ds.Preset(*default_input_geometry(arch)).as_dict(),
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
        photo, (square,) = faces.paste_crops(faces.background(size, seed * 1000 + i), [load_rgb(path)],
                                             [(x, y, side)])
        yield photo, square


def detector_recall(crops: list[str], name: str) -> dict:
    """Recall and false detections of one detector on pasted faces and on empty backgrounds."""
    det = faces.make_detector(name)
    found = other = 0
    t = 0.0
    for photo, square in pasted_photos(crops):
        truth = faces.face_in_crop(square, det.geometry)
        t0 = time.perf_counter()
        boxes = faces.detect_faces(det, photo)
        t += time.perf_counter() - t0
        hits = [f for f in boxes if faces.iou(f.box, truth) >= 0.5]
        found += bool(hits)
        other += len(boxes) - min(1, len(hits))
    empty = sum(len(faces.detect_faces(det, faces.background((640, 480), 10_000 + i)))
                for i in range(len(crops) // 2))
    return {"recall": found / len(crops), "found": found, "n": len(crops), "other_on_photos": other,
            "false_on_empty": empty, "n_empty": len(crops) // 2, "ms_per_photo": 1000 * t / len(crops)}


def calibrate(files: list[str], name: str) -> faces.Geometry:
    """Median place of the detector's main box inside training crops, as fractions of the side."""
    geometry, found = faces.measure_framing(files, faces.make_detector(name))
    print(f"  {name}: a face in {found} of {len(files)} crops", flush=True)
    return geometry


def predict_rate(argv: list[str], units: int) -> float:
    """predict.cli over ``argv`` (output discarded): units per second."""
    import contextlib
    import io
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        assert predict.cli(argv) == 0
    return units / (time.perf_counter() - t0)


def onnx_vs_torch(ckpt: Path, tmp: Path, n: int = 32, repeats: int = 3) -> dict:
    """Batch-of-n forward time, PyTorch fp32 vs onnxruntime, and the largest probability difference."""
    import export
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
    out["max_prob_diff"] = float((out.pop("pytorch_probs") - out.pop("onnxruntime_probs")).abs().max())
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="gender-data", help="ImageFolder tree with train/ and test/")
    p.add_argument("--n", type=int, default=100, help="pasted faces for the recall test")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--calibrate", action="store_true", help="only re-measure faces.GEOMETRY")
    p.add_argument("--out", default="runs/bench_predict.json", help="results file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    if args.calibrate:
        files = [str(f) for f in list_images(data / "train")] + [str(f) for f in list_images("age-data/train")]
        random.Random(0).shuffle(files)
        for name in faces.DETECTORS:
            print(f"{name}: {calibrate(files[:300], name)}", flush=True)
        return 0

    crops = [str(f) for f in list_images(data / "test")]
    random.Random(1).shuffle(crops)
    crops = crops[:args.n]
    r = {"threads": args.threads, "recall": {}}
    for name in faces.DETECTORS:
        s = r["recall"][name] = detector_recall(crops, name)
        print(f"1. {name:5s}: recall {s['found']}/{s['n']}, {s['ms_per_photo']:.0f} ms/photo; other detections "
              f"{s['other_on_photos']} on those photos, {s['false_on_empty']} on {s['n_empty']} without a face",
              flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = untrained_checkpoint(tmp / "g.tar")
        photos = tmp / "photos"
        photos.mkdir()
        for i, (photo, _) in enumerate(pasted_photos(crops)):
            photo.save(photos / f"{i:03d}.jpg", quality=92)
        common = ["--checkpoint", str(ckpt), "--no-amp", "--workers", "0"]
        r["predict"] = {
            "crops_detect_off_img_per_s": predict_rate([*crops, *common, "--detect", "off"], len(crops)),
            "crops_detect_on_img_per_s": predict_rate([*crops, *common, "--detect", "on"], len(crops)),
            "photos_detect_on_img_per_s": predict_rate([str(photos), *common, "--detect", "on"], len(crops)),
        }
        for k, v in r["predict"].items():
            print(f"2. predict.py, {k.removesuffix('_img_per_s').replace('_', ' ')}: {v:.1f} img/s", flush=True)
        r["onnx"] = onnx_vs_torch(ckpt, tmp)
        o = r["onnx"]
        print(f"3. batch of 32, fp32: PyTorch {o['pytorch_img_per_s']:.1f} img/s, onnxruntime "
              f"{o['onnxruntime_img_per_s']:.1f} img/s; largest probability difference {o['max_prob_diff']:.2e}")
    atomic_write_text(args.out, json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
