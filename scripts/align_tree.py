"""Write an eye-aligned copy of an ImageFolder tree (the alignment experiment of the README).

Each image's face (``faces.MtcnnDetector`` with no score threshold; the face
nearest the centre, weighted by size, when there are several) is rotated so that its eyes are
level, scaled so that they are ``--eye-dist`` of the side apart, and placed
with their midpoint at (0.5, ``--eye-y``) of a ``--size`` square; parts outside
the photo are black. Images without a detected face are resized whole. The
tree layout (class folders, any depth) is kept, so the copy trains as is
(``x.jpg`` stays ``x.jpg``; other formats are written as JPEG named ``x.png.jpg``,
so that ``x.png`` and ``x.jpg`` side by side stay two images):

    python scripts/align_tree.py gender-data runs/gender-aligned
    python gender_age_classifier.py --data-dir runs/gender-aligned --checkpoint-dir runs/al-s0

The training and prediction pipelines themselves do not align: this measured
no reliable gain (README, Results), so it stays an experiment.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from images import BadImageError, list_images, load_rgb  # noqa: E402
from runtime import usable_cores  # noqa: E402
import faces  # noqa: E402
from checkpointing import atomic_write  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("src", help="ImageFolder tree to read")
    p.add_argument("dst", help="folder to write the aligned copy to (created)")
    p.add_argument("--size", type=int, default=256, help="side of the written squares")
    p.add_argument("--eye-dist", type=float, default=0.18, help="distance between the eyes, fraction of the side")
    p.add_argument("--eye-y", type=float, default=0.40, help="height of the eyes, fraction of the side")
    p.add_argument("--threads", type=int, default=usable_cores(), help="torch threads for MTCNN")
    return p


def central_face(boxes, w: int, h: int) -> int:
    """Index of the box (x0, y0, x1, y1) with the largest area, discounted by its
    distance from the centre of the w x h image."""
    def score(b):
        cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        return (b[2] - b[0]) * (b[3] - b[1]) / (1 + ((cx - w / 2) ** 2 + (cy - h / 2) ** 2) / (w * h / 16))
    return max(range(len(boxes)), key=lambda j: score(boxes[j]))


def target_path(src: Path, dst: Path, f: Path) -> Path:
    """Where the aligned copy of ``f`` goes: same place below ``dst``, a JPEG name."""
    rel = Path(f).relative_to(src)
    return dst / (rel if rel.suffix.lower() in (".jpg", ".jpeg") else rel.with_name(rel.name + ".jpg"))


def align(img: Image.Image, left_eye, right_eye, size: int, eye_dist: float, eye_y: float) -> Image.Image:
    """Similarity warp putting the eyes level at (0.5, eye_y) * size, eye_dist * size apart."""
    dx, dy = right_eye[0] - left_eye[0], right_eye[1] - left_eye[1]
    angle, dist = math.atan2(dy, dx), max(math.hypot(dx, dy), 1e-3)
    s = eye_dist * size / dist                      # output pixels per input pixel
    c, sn = math.cos(angle) / s, math.sin(angle) / s
    mx, my = (left_eye[0] + right_eye[0]) / 2, (left_eye[1] + right_eye[1]) / 2
    u, v = size / 2, eye_y * size                   # where the eyes' midpoint lands
    # PIL maps each output (x, y) to the input point (c x - sn y + e, sn x + c y + f)
    coeffs = (c, -sn, mx - c * u + sn * v, sn, c, my - sn * u - c * v)
    return img.transform((size, size), Image.AFFINE, coeffs, resample=Image.BILINEAR)


def main(args) -> int:
    torch.set_num_threads(args.threads)
    try:
        detector = faces.MtcnnDetector(min_score=0.0)
    except faces.FaceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    src, dst = Path(args.src), Path(args.dst)
    files = list_images(src)
    if not files:
        print(f"error: no images under {src}", file=sys.stderr)
        return 2
    missed, bad = 0, 0
    for f in files:
        try:
            img = load_rgb(f)
        except BadImageError as e:
            print(f"warning: skipped {f}: {e}", file=sys.stderr)
            bad += 1
            continue
        found = detector.detect(np.asarray(img))
        if not found:
            missed += 1
            out = img.resize((args.size, args.size), Image.BILINEAR)
        else:
            face = found[central_face([f.box for f in found], *img.size)]
            out = align(img, face.landmarks[0], face.landmarks[1], args.size, args.eye_dist, args.eye_y)
        with atomic_write(target_path(src, dst, f)) as fh:
            out.save(fh, format="JPEG", quality=95)
    print(f"aligned {len(files) - missed - bad} of {len(files)} images into {dst} "
          f"({missed} without a face, resized whole; {bad} unreadable, skipped)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
