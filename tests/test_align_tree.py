"""scripts/align_tree.py: the eye-alignment experiment's tool."""
from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("align_tree", ROOT / "scripts" / "align_tree.py")
align_tree = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(align_tree)


def _dot_centre(arr: np.ndarray, channel: int) -> tuple:
    """Centroid (x, y) of the pixels where ``channel`` dominates."""
    others = [c for c in range(3) if c != channel]
    mask = (arr[..., channel] > 150) & (arr[..., others[0]] < 100) & (arr[..., others[1]] < 100)
    ys, xs = np.nonzero(mask)
    assert len(xs) > 0, "dot lost"
    return xs.mean(), ys.mean()


def test_align_puts_tilted_eyes_level_at_the_target():
    # a 300x300 photo whose "eyes" (red left, blue right) are 60 px apart and tilted by 20 degrees
    img = Image.new("RGB", (300, 300), (128, 128, 128))
    draw = ImageDraw.Draw(img)
    mx, my, half, tilt = 140.0, 170.0, 30.0, math.radians(20)
    left = (mx - half * math.cos(tilt), my - half * math.sin(tilt))
    right = (mx + half * math.cos(tilt), my + half * math.sin(tilt))
    for (x, y), colour in ((left, (255, 0, 0)), (right, (0, 0, 255))):
        draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=colour)
    out = np.asarray(align_tree.align(img, left, right, size=256, eye_dist=0.2, eye_y=0.4))
    assert out.shape == (256, 256, 3)
    (lx, ly), (rx, ry) = _dot_centre(out, 0), _dot_centre(out, 2)
    assert abs(ly - ry) < 1.0                      # level
    assert abs((rx - lx) - 0.2 * 256) < 1.5       # 0.2 of the side apart
    assert abs((lx + rx) / 2 - 128) < 1.0 and abs((ly + ry) / 2 - 0.4 * 256) < 1.0
    assert out[0, 0].tolist() == [128, 128, 128]   # still inside the photo
    # zoomed out 4x, the 256 px square spans ~1200 photo px: its corners lie outside the photo, black
    wide = np.asarray(align_tree.align(img, left, right, size=256, eye_dist=0.05, eye_y=0.4))
    assert wide[0, 0].tolist() == [0, 0, 0] and wide[128, 128].tolist() == [128, 128, 128]


def test_central_face_prefers_the_large_centred_face():
    boxes = np.array([[0, 0, 60, 60], [100, 100, 180, 180], [240, 240, 300, 300]], dtype=float)
    assert align_tree.central_face(boxes, 300, 300) == 1
    # a much larger face off-centre still wins over a tiny centred one
    boxes = np.array([[140, 140, 160, 160], [0, 0, 150, 150]], dtype=float)
    assert align_tree.central_face(boxes, 300, 300) == 1


def test_cli_keeps_the_tree_and_resizes_faceless_images(tmp_path):
    src = tmp_path / "src"
    for cls in ("female", "male"):
        (src / "train" / cls).mkdir(parents=True)
        Image.fromarray(np.full((90, 120, 3), 200, np.uint8)).save(src / "train" / cls / "a.png")
    dst = tmp_path / "dst"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "align_tree.py"), str(src), str(dst),
                        "--size", "64", "--threads", "1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "aligned 0 of 2 images" in r.stdout and "2 without a face" in r.stdout
    # an unreadable file: one warning line, the rest still written, exit status 1
    (src / "train" / "male" / "broken.jpg").write_bytes(b"not a jpeg")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "align_tree.py"), str(src), str(dst),
                        "--size", "64", "--threads", "1"], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "broken.jpg" in r.stderr and "1 unreadable" in r.stdout
    assert not (dst / "train" / "male" / "broken.jpg").exists()
    # x.png beside x.jpg: two outputs, neither overwrites the other
    Image.fromarray(np.full((90, 120, 3), 10, np.uint8)).save(src / "train" / "female" / "a.jpg")
    (src / "train" / "male" / "broken.jpg").unlink()
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "align_tree.py"), str(src), str(dst),
                        "--size", "64", "--threads", "1"], capture_output=True, text=True)
    assert r.returncode == 0 and "aligned 0 of 3 images" in r.stdout
    dark, light = (np.asarray(Image.open(dst / "train" / "female" / n)).mean() for n in ("a.jpg", "a.png.jpg"))
    assert dark < 30 < 170 < light
    for cls in ("female", "male"):
        assert Image.open(dst / "train" / cls / "a.png.jpg").size == (64, 64)
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "align_tree.py"), str(tmp_path / "none"),
                        str(dst)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: no images")
