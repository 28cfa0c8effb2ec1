"""Issue 19: the YuNet detector, batched detection, the decode pool, and lazy imports.

Real face crops of the shared data are pasted onto backgrounds at known places; tiny
untrained checkpoints stand in for trained models.
"""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from gender_age.predict import workers as decode_pool
from gender_age.faces import detectors
from gender_age.faces import geometry, videos
import synthetic
from gender_age.core import images
from gender_age.predict import cli as predict
from benchmarks.bench_predict import untrained_checkpoint
from gender_age.core.checkpointing import first_non_finite
from helpers import loaded_modules  # noqa: F401

QUIET = ["--no-amp", "--csv"]


@pytest.fixture
def crops(shared_data):
    """Two real face crops of the shared data (a man, a woman), as RGB images."""
    return [images.load_rgb(images.list_images(shared_data / "gender-data" / "test" / c)[0])
            for c in ("male", "female")]


@pytest.fixture(scope="module")
def yunet():
    return detectors.make_detector("yunet")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "g.tar")


def photo_with(crops, places, seed=0, size=(640, 480)):
    return synthetic.paste_crops(synthetic.background(size, seed), crops, places)


# ---------------------------------------------------------------- the detector


def test_yunet_gives_boxes_and_landmarks_in_mtcnns_order(crops, yunet):
    photo, squares = photo_with(crops, [(60, 120, 200), (380, 100, 220)])
    found = detectors.detect_faces(yunet, photo)
    assert len(found) == 2
    mtcnn = detectors.detect_faces(detectors.make_detector("mtcnn"), photo)
    for f, square, m in zip(found, squares, mtcnn):
        assert geometry.iou(f.box, geometry.face_in_crop(square, yunet.geometry)) >= 0.5
        assert 0.6 <= f.score <= 1
        (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = f.landmarks
        x0, y0, x1, y1 = f.box
        # eyes in the box's upper half, the eye on the image's left first; the nose between and
        # below them; the mouth corners below the nose, the left one first
        assert x0 < lx < nx < rx < x1 and y0 < ly < (y0 + y1) / 2 and y0 < ry < (y0 + y1) / 2
        assert max(ly, ry) < ny < min(mly, mry) < y1 and mlx < mrx
        # the same five points as MTCNN's, within a fifth of the face's width (they differ by up to
        # 15%: the two detectors were trained on different annotations)
        assert np.abs(np.array(f.landmarks) - np.array(m.landmarks)).max() < 0.2 * (x1 - x0)


def test_yunet_finds_nothing_in_a_background_or_a_tiny_image(yunet):
    assert detectors.detect_faces(yunet, synthetic.background((640, 480), 3)) == []
    for size in ((1, 1), (7, 5), (31, 33)):
        assert detectors.detect_faces(yunet, synthetic.background(size, 1)) == []


def test_a_missing_detector_package_is_a_one_line_error(monkeypatch, tmp_path, ckpt, capsys):
    monkeypatch.setitem(sys.modules, "yuface", None)  # import yuface -> ImportError
    with pytest.raises(geometry.FaceError, match="pip install yuface==2023.5.1"):
        detectors.make_detector("yunet")
    images_dir = tmp_path / "in"
    images_dir.mkdir()
    synthetic.background((64, 48), 0).save(images_dir / "a.png")
    assert predict.cli([str(images_dir), "--checkpoint", str(ckpt), *QUIET]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the yunet detector needs the yuface package") and err.count("\n") == 1


# ---------------------------------------------------------------- batching


def test_mtcnn_batch_equals_one_by_one(crops):
    mtcnn = detectors.make_detector("mtcnn")
    photos = [photo_with(crops[i % 2:i % 2 + 1], [(40 + 90 * i, 60 + 30 * i, 180)], seed=i)[0] for i in range(4)]
    photos.append(synthetic.background((640, 480), 9))  # a photo without a face in the same batch
    arrays = [np.asarray(p) for p in photos]
    batched = mtcnn.detect_batch(arrays)
    single = [mtcnn.detect(a) for a in arrays]
    assert [len(b) for b in batched] == [len(s) for s in single] == [1, 1, 1, 1, 0]
    for b, s in zip(batched, single):
        for fb, fs in zip(b, s):
            assert np.allclose(fb.box, fs.box, atol=1e-3) and np.allclose(fb.landmarks, fs.landmarks, atol=1e-3)
            assert fb.score == pytest.approx(fs.score, abs=1e-5)


def test_detect_faces_batch_equals_detect_faces_on_mixed_sizes(crops, yunet):
    photos = [photo_with(crops[:1], [(30, 40, 150)], seed=1)[0],
              photo_with(crops[1:], [(200, 50, 240)], seed=2, size=(800, 600))[0],
              photo_with(crops, [(10, 10, 120), (330, 200, 150)], seed=3)[0]]
    for max_side in (1024, 400):
        assert detectors.detect_faces_batch(yunet, photos, max_side) == [detectors.detect_faces(yunet, p, max_side)
                                                                     for p in photos]


def test_search_side_keeps_faces_of_min_face_at_20_px():
    s = decode_pool.Search("on", 1024, 1 / 16)
    assert s.side((640, 480)) == 427  # a face of 480/16 = 30 px is searched at 20 px
    assert s.side((320, 320)) == 320  # 20 px faces: no smaller
    assert s.side((4000, 3000)) == 427
    assert decode_pool.Search("on", 1024, 0).side((4000, 3000)) == 1024


def test_auto_keeps_the_coarse_search_only_for_face_crops(crops, yunet, monkeypatch):
    crop = crops[1].resize((400, 400))
    squarish_photo = photo_with(crops[:1], [(20, 20, 90)], size=(500, 480))[0]  # a small face: not a crop
    sides = []
    real = detectors.detect_faces_batch

    def spy(detector, imgs, max_side):
        sides.append(max_side)
        return real(detector, imgs, max_side)
    monkeypatch.setattr(detectors, "detect_faces_batch", spy)
    found = decode_pool.find_faces([crop, squarish_photo], yunet, decode_pool.Search("auto"))
    # only the photo is searched again, at its search side
    assert sides == [decode_pool.COARSE_SIZE, [decode_pool.Search("auto").side(squarish_photo.size)]]
    assert len(found[0]) == 1 and geometry.looks_like_crop(crop.size, found[0], yunet.geometry)
    assert len(found[1]) == 1


# ---------------------------------------------------------------- the decode pool


def make_inputs(folder, crops, n=20):
    """n photos (a pasted face each), one unreadable file among them, and a face crop."""
    folder.mkdir()
    for i in range(n):
        photo_with(crops[i % 2:i % 2 + 1], [(20 + 17 * i, 30 + 11 * i, 120 + 5 * i)], seed=i)[0] \
            .save(folder / f"p{i:02d}.jpg", quality=90)
    (folder / "p05.jpg").write_bytes(b"not an image")
    crops[0].save(folder / "z.png")
    return folder


@pytest.mark.parametrize("extra", [[], ["--no-detect", "-b", "2"]])  # -b 2: --no-detect decodes in 2 workers
def test_pool_workers_give_the_same_records_in_the_same_order(crops, ckpt, tmp_path, capsys, extra):
    folder = make_inputs(tmp_path / "in", crops)
    outs = []
    for workers in ("0", "2"):
        assert predict.cli([str(folder), "--checkpoint", str(ckpt), "--workers", workers, *extra, *QUIET]) == 1
        out, err = capsys.readouterr()
        outs.append(out)
        assert err.splitlines()[0].startswith("error: ") and "p05.jpg" in err.splitlines()[0]
    assert outs[0] == outs[1]
    rows = outs[0].splitlines()[1:]
    names = [f"p{i:02d}.jpg" for i in range(20) if i != 5] + ["z.png"]  # p05.jpg: unreadable
    assert [r.split(",")[0].rsplit("/", 1)[1] for r in rows] == names
    assert extra or "whole image" in rows[-1]  # the face crop is predicted whole (auto)


def test_video_frames_through_the_pool(crops, ckpt, tmp_path, capsys):
    video = tmp_path / "clip.avi"
    writer = videos.VideoWriter(video, 10.0, (320, 240))
    for i in range(23):
        writer.write(photo_with(crops[:1], [(10 + 4 * i, 30, 150)], seed=0, size=(320, 240))[0])
    writer.close()
    outs = []
    for workers in ("0", "2"):
        assert predict.cli([str(video), "--every", "3", "--checkpoint", str(ckpt), "--workers", workers, *QUIET]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]
    assert [int(r.split(",")[1]) for r in outs[0].splitlines()[1:]] == list(range(0, 23, 3))


# ---------------------------------------------------------------- start-up


def test_no_detect_imports_no_detector_opencv_onnx_or_torchvision(ckpt, tmp_path):
    img = tmp_path / "a.png"
    synthetic.background((64, 64), 0).save(img)
    run = (f"import sys, runpy; sys.path.insert(0, '.'); sys.argv = ['predict.py', {str(img)!r}, '--no-detect', "
           f"'--checkpoint', {str(ckpt)!r}]\ntry:\n    runpy.run_path('predict.py', run_name='__main__')\n"
           f"except SystemExit as e:\n    assert e.code == 0, e.code")
    assert loaded_modules(run) == {"torch"}


def test_the_decode_pool_starts_before_torch_is_imported():
    # predict.py, the pool and the yunet detector import no torch: the pool's processes are forked
    # before predict.py imports it, and decode and detect while it loads
    assert loaded_modules("import predict; from gender_age.predict import workers; from gender_age.faces import detectors; detectors.make_detector('yunet')") == {"yuface"}


# ---------------------------------------------------------------- weights check


def test_first_non_finite_by_sum_misses_nothing():
    huge = torch.full((8,), 3e38)  # finite values whose sum overflows
    assert first_non_finite({"a": huge, "b": torch.zeros(3)}) is None
    for bad in (float("nan"), float("inf"), -float("inf")):
        w = torch.zeros(5)
        w[2] = bad
        assert first_non_finite({"a": huge, "w": w}) == "w"


def test_no_detect_decodes_as_training_does(ckpt, tmp_path, capsys):
    """--no-detect decodes a large JPEG in the decode pool as the training pipeline does
    (images.decode_resized: a reduced-scale JPEG decode, then the square), so the probabilities
    are the checkpoint's on exactly the training pixels."""
    from gender_age.predict.loading import load_predictor
    rng = np.random.default_rng(0)
    for i in range(3):
        pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        images.Image.fromarray(pixels).resize((700, 700)).save(tmp_path / f"big{i}.jpg", quality=90)
    p = load_predictor(ckpt, torch.device("cpu"))
    paths = sorted(tmp_path.glob("big*.jpg"))
    want = p.probabilities(torch.stack([images.decode_resized(f, p.preset.resize) for f in paths]))
    assert predict.cli([*map(str, paths), "--checkpoint", str(ckpt), "--no-detect", "--workers", "2", "-b", "1",
                        "--no-amp", "--json"]) == 0
    got = [[r["probabilities"][c] for c in p.classes] for r in json.loads(capsys.readouterr().out)]
    np.testing.assert_allclose(got, want, atol=1e-6)
