"""Faces in photos and videos: real face crops pasted at known places, untrained tiny models.

The truth for a pasted crop is detector-independent of the composite: the
detector's box on the original crop, scaled and moved to where the crop was
pasted. A detector passes when its box in the composite has IoU >= 0.5 with it.
"""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from gender_age.faces import detectors
from gender_age.faces import geometry
from gender_age.faces import videos
import synthetic
from gender_age.nets import heads as losses
from gender_age.predict import cli as predict
from benchmarks.bench_predict import untrained_checkpoint
from gender_age.core import images
from gender_age.predict import torch_backend as predictor
from gender_age.core.checkpointing import load_checkpoint
from helpers import checkpoint_logits, ordinal_rank
from helpers import one_thread  # noqa: F401

NO_AMP = ["--no-amp", "--workers", "0"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    return {"gender": untrained_checkpoint(d / "g.tar"),
            "age": untrained_checkpoint(d / "a.tar", task="age", classes=("old", "young"), seed=1),
            "exact": untrained_checkpoint(d / "e.tar", task="exact-age", head="coral", seed=2)}


@pytest.fixture
def crops(shared_data):
    """Two real face crops of the shared data (a man, a woman), as RGB images."""
    return [images.load_rgb(images.list_images(shared_data / "gender-data" / "test" / c)[0]) for c in ("male", "female")]


@pytest.fixture(scope="module")
def mtcnn():
    return detectors.make_detector("mtcnn")


def truth_box(detector, crop: Image.Image, square) -> tuple:
    """The detector's largest face box on the original crop, moved to where the crop was pasted."""
    found = detectors.detect_faces(detector, crop)
    assert found, "the detector finds no face in the original crop"
    b = max(found, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1])).box
    s = (square[2] - square[0]) / crop.width
    return tuple(v * s + square[i % 2] for i, v in enumerate(b))


def run(argv, capsys) -> tuple[int, str, str]:
    code = predict.cli([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---- detection and crops ------------------------------------------------------

@pytest.mark.parametrize("name", detectors.DETECTORS)
def test_detector_finds_a_pasted_real_face(name, crops):
    det = detectors.make_detector(name)
    photo, (square,) = synthetic.paste_crops(synthetic.background((640, 480), 0), crops[:1], [(330, 140, 200)])
    truth = truth_box(det, crops[0], square)
    found = detectors.detect_faces(det, photo)
    assert len(found) == 1 and geometry.iou(found[0].box, truth) >= 0.5
    # the training-like crop around the found face is (about) the crop that was pasted
    assert geometry.iou(geometry.crop_square(found[0].box, det.geometry), square) >= 0.6
    assert geometry.iou(geometry.face_in_crop(square, det.geometry), truth) >= 0.5
    if name != "haar":  # MTCNN and YuNet give landmarks, in the same order
        # landmarks in photo pixels: the eyes inside the box's upper half, left eye left of the right
        (lx, ly), (rx, ry) = found[0].landmarks[:2]
        x0, y0, x1, y1 = found[0].box
        assert x0 < lx < rx < x1 and y0 < ly < (y0 + y1) / 2 and y0 < ry < (y0 + y1) / 2
        # and mapped back from a downscaled search like the box
        small = detectors.detect_faces(det, photo, max_side=480)[0]
        assert np.allclose(small.landmarks[:2], found[0].landmarks[:2], atol=4)
    else:
        assert found[0].landmarks is None


def test_geometry_round_trip():
    g = geometry.GEOMETRY["mtcnn"]
    square = (10.0, 20.0, 210.0, 220.0)
    back = geometry.crop_square(geometry.face_in_crop(square, g), g)
    assert np.allclose(back, square)
    assert geometry.crop_face(Image.new("RGB", (50, 40)), (-10, -10, 30, 30)).size == (40, 40)


def test_whole_image_rule(mtcnn):
    g = mtcnn.geometry
    assert geometry.looks_like_crop((200, 210), [], g)
    assert not geometry.looks_like_crop((640, 480), [], g)
    face = geometry.face_in_crop((0, 0, 300, 300), g)
    assert geometry.looks_like_crop((300, 300), [geometry.Face(face)], g)
    small = tuple(v / 4 for v in face)
    assert not geometry.looks_like_crop((300, 300), [geometry.Face(small)], g)


def test_photo_with_two_faces_gives_two_records(ckpts, crops, mtcnn, tmp_path, capsys):
    photo, squares = synthetic.paste_crops(synthetic.background((800, 400), 1), crops, [(40, 60, 220), (450, 100, 260)])
    photo.save(tmp_path / "two.jpg", quality=95)
    code, out, _ = run([tmp_path / "two.jpg", "--gender-checkpoint", ckpts["gender"], "--exact-age-checkpoint",
                        ckpts["exact"], "--json", *NO_AMP], capsys)
    records = json.loads(out)
    assert code == 0 and [r["face"] for r in records] == [0, 1]
    for r, crop, square in zip(records, crops, squares):
        assert geometry.iou(r["box"], truth_box(mtcnn, crop, square)) >= 0.5
        assert r["source"] == "detector" and 0.9 <= r["score"] <= 1
        assert r["gender"] in ("female", "male") and abs(sum(r["gender_probabilities"].values()) - 1) < 1e-4
    # each face's age: 21 + the rank that the exact-age model's logits on the training-like
    # crop around the face the detector finds decode to, computed here
    img = images.load_rgb(tmp_path / "two.jpg")
    exact = load_checkpoint(ckpts["exact"])
    found = detectors.detect_faces(mtcnn, img)
    batch = torch.stack([images.pil_to_uint8_tensor(images.resize_square(geometry.crop_face(
        img, geometry.crop_square(f.box, mtcnn.geometry)), exact["preprocess"]["resize"])) for f in found])
    ages = 21 + ordinal_rank(checkpoint_logits(exact, batch), "coral")
    assert [r["exact_age"] for r in records] == ages.tolist() and all(type(r["exact_age"]) is int for r in records)
    # the readable table: a header, then one row per face
    code, out, _ = run([tmp_path / "two.jpg", "--gender-checkpoint", ckpts["gender"], *NO_AMP], capsys)
    lines = out.strip().splitlines()
    assert code == 0 and lines[0].split() == ["file", "face", "box", "gender"] and len(lines) == 3


def test_photo_without_a_face_says_so(ckpts, tmp_path, capsys):
    synthetic.background((640, 480), 2).save(tmp_path / "empty.png")
    synthetic.background((300, 300), 3).save(tmp_path / "square.png")
    code, out, err = run([tmp_path / "empty.png", "--checkpoint", ckpts["gender"], *NO_AMP], capsys)
    assert code == 0 and "no face found" in out and err == ""
    code, out, _ = run([tmp_path, "--checkpoint", ckpts["gender"], "--detect", "on", "--csv", *NO_AMP], capsys)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [r["source"] for r in rows] == ["no face found"] * 2 and rows[0]["face"] == ""
    # auto: a squarish image without a face may be a face crop the detector missed: predicted whole
    code, out, _ = run([tmp_path / "square.png", "--checkpoint", ckpts["gender"], *NO_AMP], capsys)
    assert code == 0 and len(out.split()) == 3


def test_face_crops_are_predicted_whole_as_before(ckpts, shared_data, capsys):
    folder = shared_data / "gender-data" / "predict"
    outs = [run([folder, "--checkpoint", ckpts["gender"], *NO_AMP, *extra], capsys)[1] for extra in ([], ["--no-detect"])]
    assert outs[0] == outs[1] and len(outs[0].splitlines()) == len(images.list_images(folder))
    assert all(len(line.split()) == 3 for line in outs[0].splitlines())


# ---- input formats ------------------------------------------------------------

def _save_formats(photo: Image.Image, folder):
    """The same photo in every format predict.py must read; EXIF-rotated stored sideways."""
    folder.mkdir()
    gray16 = (np.asarray(photo.convert("L"), dtype=np.uint16) * 200 + 1000).astype(np.uint16)
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.new("L", photo.size, 255))
    saves = {
        "plain.jpg": lambda p: photo.save(p, quality=95),
        "UPPER.JPG": lambda p: photo.save(p, format="JPEG", quality=95),
        "gray.png": lambda p: photo.convert("L").save(p),
        "rgba.png": lambda p: rgba.save(p),
        "palette.png": lambda p: photo.convert("P", palette=Image.ADAPTIVE).save(p),
        "cmyk.jpg": lambda p: photo.convert("CMYK").save(p, quality=95),
        "deep16.png": lambda p: Image.fromarray(gray16).save(p),
        "web.webp": lambda p: photo.save(p, quality=95),
        "bitmap.bmp": lambda p: photo.save(p),
    }
    for name, save in saves.items():
        save(folder / name)
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored pixels turned 90 degrees clockwise
    photo.rotate(90, expand=True).save(folder / "exif.jpg", quality=95, exif=exif.tobytes())
    return [*saves, "exif.jpg"]


def test_every_image_format(ckpts, crops, mtcnn, tmp_path, capsys):
    photo, (square,) = synthetic.paste_crops(synthetic.background((420, 300), 4), crops[:1], [(150, 50, 180)])
    truth = truth_box(mtcnn, crops[0], square)
    names = _save_formats(photo, tmp_path / "formats")
    code, out, err = run([tmp_path / "formats", "--checkpoint", ckpts["gender"], "--detect", "on", "--json",
                          *NO_AMP], capsys)
    records = {r["file"].rsplit("/", 1)[-1]: r for r in json.loads(out)}
    assert code == 0 and err == "" and sorted(records) == sorted(names)
    for name, r in records.items():
        assert r["source"] == "detector" and geometry.iou(r["box"], truth) >= 0.5, name


# ---- videos ---------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_video_frames_are_sampled_and_annotated(ckpts, crops, mtcnn, tmp_path, capsys, suffix):
    path, fps, truths = tmp_path / f"clip{suffix}", 10.0, []
    writer = videos.VideoWriter(path, fps, (480, 320))
    for i in range(7):
        frame, (square,) = synthetic.paste_crops(synthetic.background((480, 320), 5), crops[:1], [(30 + 40 * i, 60, 180)])
        writer.write(frame)
        truths.append(truth_box(mtcnn, crops[0], square))
    writer.close()
    out_dir = tmp_path / "annotated"
    code, out, _ = run([path, "--checkpoint", ckpts["gender"], "--every", "3", "--csv", "--annotate", out_dir,
                        *NO_AMP], capsys)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [int(r["frame"]) for r in rows] == [0, 3, 6]
    for r in rows:
        k = int(r["frame"])
        assert float(r["time"]) == pytest.approx(k / fps)
        box = [float(r[c]) for c in ("x0", "y0", "x1", "y1")]
        assert geometry.iou(box, truths[k]) >= 0.5 and r["label"] in ("female", "male")
    video = videos.Video(out_dir / path.name)
    frames = list(video.frames())
    assert len(frames) == 7 and frames[0][2].size == (480, 320)


def test_unreadable_video_is_reported(ckpts, tmp_path, capsys):
    (tmp_path / "broken.mp4").write_text("not a video")
    code, _, err = run([tmp_path / "broken.mp4", "--checkpoint", ckpts["gender"], *NO_AMP], capsys)
    assert code == 1 and "broken.mp4: cannot open as a video" in err and "Traceback" not in err


def test_annotated_image(ckpts, crops, tmp_path, capsys):
    photo, _ = synthetic.paste_crops(synthetic.background((500, 360), 6), crops[:1], [(200, 80, 200)])
    photo.save(tmp_path / "one.png")
    code, _, _ = run([tmp_path / "one.png", "--checkpoint", ckpts["gender"], "--annotate", tmp_path / "out",
                      *NO_AMP], capsys)
    drawn = Image.open(tmp_path / "out" / "one.png")
    assert code == 0 and drawn.size == photo.size
    assert np.abs(np.asarray(drawn, dtype=int) - np.asarray(photo, dtype=int)).sum() > 0
    # annotating into the input's own folder never overwrites the input
    code, _, _ = run([tmp_path / "one.png", "--checkpoint", ckpts["gender"], "--annotate", tmp_path, *NO_AMP], capsys)
    assert code == 0 and (tmp_path / "one-1.png").exists()
    assert np.array_equal(np.asarray(Image.open(tmp_path / "one.png")), np.asarray(photo))


# ---- models: exact age, several at once, TTA -------------------------------------

@pytest.mark.parametrize("head,ce_mode", [("coral", None), ("corn", None), ("ordinal", None),
                                          ("ce", None), ("ce", "expectation")])
def test_exact_age_checkpoint(head, ce_mode, tmp_path, capsys):
    ck = untrained_checkpoint(tmp_path / "e.tar", task="exact-age", head=head, num_ranks=12, min_age=21,
                              ce_mode=ce_mode, arch="levi_hassner")
    from conftest import make_image
    for i in range(3):
        make_image(tmp_path / "in" / f"f{i}.jpg", i % 2, i, size=(64, 64))
    code, out, _ = run([tmp_path / "in", "--checkpoint", ck, *NO_AMP], capsys)
    ages = [line.split()[1] for line in out.strip().splitlines()]
    assert code == 0 and len(ages) == 3
    if ce_mode == "expectation":
        assert all("." in a for a in ages)
    else:
        assert all(a.isdigit() and 21 <= int(a) <= 32 for a in ages)
    # the rule: min_age + losses.predict_rank(logits)
    p = predictor.Predictor(ck, torch.device("cpu"))
    batch = torch.stack([images.decode_resized(f, 256) for f in sorted((tmp_path / "in").iterdir())])
    ranks = losses.predict_rank(torch.from_numpy(p.logits(batch)), head, ce_mode or "argmax")
    assert [float(a) for a in ages] == pytest.approx([21 + float(r) for r in ranks], abs=0.05)


def test_all_models_in_one_call(ckpts, tmp_path, capsys):
    from conftest import make_image
    make_image(tmp_path / "f.jpg", 0, 0, size=(64, 64))
    argv = [tmp_path / "f.jpg", "--gender-checkpoint", ckpts["gender"], "--age-checkpoint", ckpts["age"],
            "--exact-age-checkpoint", ckpts["exact"], *NO_AMP]
    code, out, _ = run(argv, capsys)
    header, row = out.strip().splitlines()
    assert code == 0 and header.split() == ["file", "gender", "age", "exact_age"] and len(row.split()) == 6
    code, out, _ = run([*argv, "--csv"], capsys)
    (r,) = list(csv.DictReader(io.StringIO(out)))
    assert {"gender", "gender_probability", "gender_p_female", "age", "age_p_old", "exact_age"} <= set(r)


@pytest.mark.parametrize("argv,match", [
    (["--checkpoint", "{gender}", "--gender-checkpoint", "{gender}"], "two models for the task 'gender'"),
    (["--age-checkpoint", "{gender}"], "'gender' checkpoint, not 'age'"),
    (["--exact-age-checkpoint", "{age}"], "'age' checkpoint, not 'exact-age'"),
    (["--checkpoint", "{gender}", "--every", "0"], "--every must be at least 1"),
    (["--onnx", "{gender}.onnx"], "not found"),
])
def test_usage_errors_are_one_line(ckpts, tmp_path, capsys, argv, match):
    from conftest import make_image
    make_image(tmp_path / "f.jpg", 0, 0)
    argv = [a.format(gender=ckpts["gender"], age=ckpts["age"]) for a in argv]
    code, _, err = run([tmp_path / "f.jpg", *argv, *NO_AMP], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error:") and match in err


def test_tta_averages_the_softmax_over_ten_views(ckpts, capsys, tmp_path):
    p = predictor.Predictor(ckpts["gender"], torch.device("cpu"))
    batch = torch.randint(0, 256, (3, 3, 256, 256), dtype=torch.uint8)
    views = torch.from_numpy(p.preset.tta_batch(batch.numpy()))
    want = torch.stack([p.model(v).softmax(1) for v in views]).mean(0).detach()
    got = torch.from_numpy(p.probabilities(batch, tta=True))
    assert views.shape[0] == 10 and torch.allclose(got, want, atol=1e-5)
    from conftest import make_image
    make_image(tmp_path / "f.jpg", 0, 0)
    assert run([tmp_path / "f.jpg", "--checkpoint", ckpts["gender"], "--tta", *NO_AMP], capsys)[0] == 0
