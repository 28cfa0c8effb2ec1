"""Hostile inputs and prediction outputs (issue 15): crafted checkpoints, ONNX metadata and
images, symlink loops and deep trees, CSV labels, interrupted and failing output, escaping."""
from __future__ import annotations

import csv
import errno
import io
import json
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gender_age.faces import videos
import synthetic
from gender_age.core import images
from gender_age.predict import cli as predict
from gender_age.predict import torch_backend as predictor
from gender_age.predict import records as prediction_output
from gender_age.data import samples
from benchmarks.bench_predict import untrained_checkpoint
from gender_age.core.checkpointing import atomic_torch_save, load_checkpoint
from conftest import make_folder_dataset, make_image

FAST = ["--no-detect", "--workers", "0", "--no-amp", "--device", "cpu"]


def small(ckpt: dict) -> dict:
    ckpt["preprocess"].update(resize=40, crop=32)
    return ckpt


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict:
    """Untrained resnet18 checkpoints on 32 px inputs: a gender classifier and a CORN exact-age model."""
    root = tmp_path_factory.mktemp("ckpts")
    out = {}
    for name, kw in (("gender", {}), ("exact", {"task": "exact-age", "head": "corn", "num_ranks": 10})):
        path = untrained_checkpoint(root / f"{name}.tar", arch="resnet18", **kw)
        atomic_torch_save(small(load_checkpoint(path)), path)
        out[name] = path
    return out


def crafted(ckpts, tmp_path, change, base="gender") -> Path:
    ckpt = load_checkpoint(ckpts[base])
    change(ckpt)
    path = tmp_path / "crafted.tar"
    atomic_torch_save(ckpt, path)
    return path


def run(argv, capsys) -> tuple[int, str, str]:
    code = predict.cli([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, want_code=2, match=""):
    assert code == want_code and err.startswith("error:") and len(err.strip().splitlines()) == 1, (code, err)
    assert "Traceback" not in err and match in err, err


# ---- 1, 2: crafted checkpoints and ONNX metadata ---------------------------------

def _nan_weight(c):
    name = next(k for k, v in c["model_state"].items() if v.is_floating_point())
    c["model_state"][name] = torch.full_like(c["model_state"][name], float("nan"))


CRAFTED = {
    "nan_weights": ("gender", _nan_weight, "non-finite"),
    "crop_0": ("gender", lambda c: c["preprocess"].update(crop=0), "crop"),
    "crop_over_resize": ("gender", lambda c: c["preprocess"].update(crop=50), "crop"),
    "mean_of_2": ("gender", lambda c: c["preprocess"].update(mean=[0.5, 0.5]), "mean"),
    "resize_0": ("gender", lambda c: c["preprocess"].update(resize=0), "resize"),
    "resize_1e9": ("gender", lambda c: c["preprocess"].update(resize=10 ** 9), "resize"),
    "std_0": ("gender", lambda c: c["preprocess"].update(std=[0, 0, 0]), "std"),
    "classes_as_lists": ("gender", lambda c: c.update(classes=[["female"], ["male"]]), "classes"),
    "duplicate_classes": ("gender", lambda c: c.update(classes=["male", "male"]), "classes"),
    "more_classes_than_outputs": ("gender", lambda c: c.update(classes=["a", "b", "c"]), "3 class names"),
    "unknown_task": ("gender", lambda c: c.update(task="gender\nx"), "task"),
    "min_age_nan": ("exact", lambda c: c["ordinal"].update(min_age=float("nan")), "min_age"),
    "num_ranks_mismatch": ("exact", lambda c: c["ordinal"].update(num_ranks=12), "differ"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_checkpoints_are_one_line_errors(ckpts, tmp_path, capsys, case):
    base, change, match = CRAFTED[case]
    path = crafted(ckpts, tmp_path, change, base)
    img = make_image(tmp_path / "f.jpg", 0, 0)
    one_line_error(*run([img, "--checkpoint", path, *FAST], capsys)[::2], match=match)


def test_the_untouched_checkpoints_predict(ckpts, tmp_path, capsys):
    img = make_image(tmp_path / "f.jpg", 0, 0)
    for ck in ckpts.values():
        code, out, err = run([img, "--checkpoint", ck, *FAST], capsys)
        assert code == 0 and err == "" and "nan" not in out and len(out.splitlines()) == 1


def tiny_onnx(path: Path, outputs: int, meta: dict) -> Path:
    """A small valid graph (mean colour -> linear layer) with this toolkit's metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(3, outputs)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", outputs])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(model, str(path))
    return path


def test_onnx_output_size_must_match_its_classes(ckpts, tmp_path, capsys):
    meta = predictor.Predictor(ckpts["gender"], torch.device("cpu")).metadata()
    img = make_image(tmp_path / "f.jpg", 0, 0)
    good = tiny_onnx(tmp_path / "good.onnx", 2, meta)
    code, out, err = run([img, "--onnx", good, *FAST], capsys)
    assert code == 0 and err == "" and out.split()[1] in ("female", "male")
    # metadata that agrees with itself (3 classes, 3 outputs in model_args), but a graph with 2 outputs
    bad = tiny_onnx(tmp_path / "bad.onnx", 2, dict(meta, classes=json.dumps(["a", "b", "c"]),
                                                   model_args=json.dumps({"arch": "resnet18", "num_outputs": 3})))
    one_line_error(*run([img, "--onnx", bad, *FAST], capsys)[::2], match="declares 3 (3 classes)")
    # the same metadata checks as for checkpoints
    bad = tiny_onnx(tmp_path / "std.onnx", 2, dict(meta, preprocess=json.dumps(
        {"resize": 40, "crop": 32, "mean": [0.5] * 3, "std": [0.0] * 3})))
    one_line_error(*run([img, "--onnx", bad, *FAST], capsys)[::2], match="std")


# ---- 3: symlink loops and deep trees ----------------------------------------------

def test_symlink_loop_is_not_walked_and_outside_links_once(tmp_path):
    root = make_folder_dataset(tmp_path / "d", n_train=3, n_test=1)
    os.symlink("..", root / "train" / "female" / "back")  # a loop that would also reach train/male
    outside = tmp_path / "outside"
    for i in range(2):
        make_image(outside / f"o{i}.jpg", 1, 50 + i)
    os.symlink(outside, root / "train" / "male" / "linked")
    os.symlink(outside, root / "train" / "male" / "linked-again")  # the same folder: walked once
    s = samples.scan_image_folder(root / "train")
    by_class = {c: [p for p, t in zip(s.paths, s.targets) if s.classes[t] == c] for c in s.classes}
    assert len(by_class["female"]) == 3 and all("/male" not in os.path.realpath(p) for p in by_class["female"])
    assert len(by_class["male"]) == 5 and sum("/linked" in p for p in by_class["male"]) == 2


def _nest(root: Path, depth: int) -> Path:
    cur = root
    for _ in range(depth):
        cur = cur / "d"
        cur.mkdir()
    return cur


def _unnest(root: Path, depth: int) -> None:
    """Remove a deep chain without recursion (shutil.rmtree would recurse 1,100 times)."""
    for k in range(depth, 0, -1):
        bottom = root.joinpath(*["d"] * k)
        for f in bottom.iterdir():
            f.unlink()
        bottom.rmdir()


def test_deep_tree_is_a_one_line_error(ckpts, tmp_path, capsys):
    ok = tmp_path / "ok"
    ok.mkdir()
    make_image(_nest(ok, images.MAX_DEPTH) / "deep.jpg", 0, 0)
    assert [p.name for p in images.list_images(ok)] == ["deep.jpg"]
    deep = tmp_path / "deep"
    deep.mkdir()
    try:
        make_image(_nest(deep, 1100) / "x.jpg", 0, 0)
        one_line_error(*run([deep, "--checkpoint", ckpts["gender"], *FAST], capsys)[::2],
                       match=f"nested more than {images.MAX_DEPTH} levels")
    finally:
        _unnest(deep, 1100)


# ---- 6, 9: annotated files ------------------------------------------------------------

def test_annotate_never_replaces_a_file_it_did_not_write(ckpts, tmp_path, capsys):
    img = make_image(tmp_path / "in" / "a.jpg", 0, 0)
    out = tmp_path / "out"
    out.mkdir()
    for name in ("a.jpg", "a-1.jpg"):
        (out / name).write_bytes(b"the user's own " + name.encode())
    code, _, err = run([img, "--checkpoint", ckpts["gender"], "--annotate", out, *FAST], capsys)
    assert code == 0 and [(out / n).read_bytes() for n in ("a.jpg", "a-1.jpg")] == \
        [b"the user's own a.jpg", b"the user's own a-1.jpg"]
    assert Image.open(out / "a-2.jpg").size == (40, 48)
    assert len(err.splitlines()) == 1 and err.startswith("warning:") and str(out / "a-2.jpg") in err


def test_a_full_disk_while_annotating_is_a_one_line_error(ckpts, tmp_path, capsys, monkeypatch):
    img = make_image(tmp_path / "in" / "a.jpg", 0, 0)

    def full_disk(self, fp, *args, **kwargs):
        data = b"\xff\xd8\xff\xe0 half a JPEG"
        if isinstance(fp, (str, os.PathLike)):
            Path(fp).write_bytes(data)
        else:
            fp.write(data)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Image.Image, "save", full_disk)
    out = tmp_path / "out"
    code, _, err = run([img, "--checkpoint", ckpts["gender"], "--annotate", out, *FAST], capsys)
    one_line_error(code, err, match=os.strerror(errno.ENOSPC))
    assert str(out / "a.jpg") in err and list(out.iterdir()) == []  # no half file, no temporary file


# ---- 7: streaming output and Ctrl-C ---------------------------------------------------

def _count(fmt: str, text: str) -> int:
    if fmt == "csv":
        return max(0, len(text.splitlines()) - 1)
    if fmt == "json":
        return text.count('"file"')
    return len(text.splitlines())


@pytest.mark.parametrize("fmt", ["text", "csv", "json"])
def test_records_stream_out_and_ctrl_c_keeps_them(ckpts, tmp_path, capsys, monkeypatch, fmt):
    for i in range(4):
        make_image(tmp_path / "in" / f"f{i}.jpg", i % 2, i)
    buf = io.StringIO()
    real = predict.predict_units

    def interrupted(*args, **kwargs):
        for k, item in enumerate(real(*args, **kwargs)):
            assert _count(fmt, buf.getvalue()) == k  # the earlier units are already printed
            if k == 2:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(predict, "predict_units", interrupted)
    monkeypatch.setattr(sys, "stdout", buf)
    argv = [tmp_path / "in", "--checkpoint", ckpts["gender"], "-b", "1", *FAST] + ([f"--{fmt}"] if fmt != "text" else [])
    try:
        code = predict.cli([str(a) for a in argv])
    except KeyboardInterrupt:
        code = "KeyboardInterrupt escaped"
    err = capsys.readouterr().err
    one_line_error(code, err, want_code=130, match="interrupted")
    out = buf.getvalue()
    if fmt == "json":
        assert [Path(r["file"]).name for r in json.loads(out)] == ["f0.jpg", "f1.jpg"]
    elif fmt == "csv":
        assert [Path(r["file"]).name for r in csv.DictReader(io.StringIO(out))] == ["f0.jpg", "f1.jpg"]
    else:
        assert [Path(line.split()[0]).name for line in out.splitlines()] == ["f0.jpg", "f1.jpg"]


# ---- 11: crafted image files --------------------------------------------------------

def _exif_jpeg(field: str) -> bytes:
    """A 40x40 JPEG whose EXIF has one tag with a wrong type: PIL raises struct.error
    ('date' in the Exif IFD typed LONG8) or AttributeError ('make' typed FLOAT)."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: exif_transpose rewrites the EXIF, where the wrong types fail
    exif[0x010F] = "Camera"
    exif.get_ifd(0x8769)[0x9003] = "2020:01:01 00:00:00"
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (90, 120, 150)).save(buf, "JPEG", exif=exif.tobytes())
    data = bytearray(buf.getvalue())
    tiff = data.index(b"Exif\0\0") + 6
    count = struct.unpack(">H", data[tiff + 8:tiff + 10])[0]
    entries = {struct.unpack(">H", data[tiff + 10 + 12 * k:tiff + 12 + 12 * k])[0]: tiff + 10 + 12 * k
               for k in range(count)}
    if field == "make":
        struct.pack_into(">H", data, entries[0x010F] + 2, 11)  # FLOAT
    else:
        sub = tiff + struct.unpack(">I", data[entries[0x8769] + 8:entries[0x8769] + 12])[0]
        struct.pack_into(">HI", data, sub + 2 + 2, 16, 1)  # one LONG8
    return bytes(data)


def _double_strip_tiff() -> bytes:
    """A TIFF whose StripOffsets (tag 273) is typed DOUBLE: PIL raises TypeError."""
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (90, 120, 150)).save(buf, "TIFF")
    data = bytearray(buf.getvalue())
    ifd = struct.unpack("<I", data[4:8])[0]
    for k in range(struct.unpack("<H", data[ifd:ifd + 2])[0]):
        entry = ifd + 2 + 12 * k
        if struct.unpack("<H", data[entry:entry + 2])[0] == 273:
            struct.pack_into("<H", data, entry + 2, 12)
    return bytes(data)


def _crafted_images(folder: Path, tall: int = 100_000) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "exif_struct.jpg").write_bytes(_exif_jpeg("date"))
    (folder / "exif_float.jpg").write_bytes(_exif_jpeg("make"))
    (folder / "strips.tif").write_bytes(_double_strip_tiff())
    Image.new("L", (1, tall)).save(folder / "tall.png", optimize=True)
    return {"exif_struct.jpg": "struct.error", "exif_float.jpg": "AttributeError", "strips.tif": "TypeError",
            "tall.png": "times longer than wide"}


def test_crafted_images_are_bad_images(tmp_path):
    for name, match in _crafted_images(tmp_path).items():
        with pytest.raises(images.BadImageError, match=match):
            images.load_rgb(tmp_path / name)
    assert (tmp_path / "tall.png").stat().st_size < 1000


def test_crafted_images_are_reported_per_file(ckpts, tmp_path, capsys):
    bad = _crafted_images(tmp_path / "in", tall=20_000)  # old code resized it to 40 x 800,000
    make_image(tmp_path / "in" / "good.jpg", 0, 0)
    code, out, err = run([tmp_path / "in", "--checkpoint", ckpts["gender"], *FAST], capsys)
    assert code == 1 and "good.jpg" in out and len(out.splitlines()) == 1 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == len(bad) + 1
    for name, match in bad.items():
        assert any(name in line and match in line for line in lines), name


def test_resized_images_have_a_pixel_limit(monkeypatch):
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 10_000)
    assert images.resize_square(Image.new("RGB", (60, 80)), 64).size == (64, 64)
    with pytest.raises(images.BadImageError, match="pixel limit"):
        images.resize_square(Image.new("RGB", (2, 100)), 64)  # 64 x 3200


def test_video_frames_have_a_pixel_limit(ckpts, tmp_path, capsys, monkeypatch):
    path = tmp_path / "clip.avi"
    writer = videos.VideoWriter(path, 5.0, (64, 48))
    for i in range(2):
        writer.write(synthetic.background((64, 48), i))
    writer.close()
    assert run([path, "--checkpoint", ckpts["gender"], *FAST], capsys)[0] == 0
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 1000)
    code, out, err = run([path, "--checkpoint", ckpts["gender"], *FAST], capsys)
    assert code == 1 and out == "" and "clip.avi: video frames refused: 64x48 pixels" in err


# ---- 13: exact-age CSV files ------------------------------------------------------------

@pytest.mark.parametrize("row,reason", [
    ("good.jpg,-3", "out of range"),
    ("good.jpg,1e9", "out of range"),
    ("../outside.jpg,30", "leaves the image folder"),
    ("{outside},30", "leaves the image folder"),
    ("sub/../../outside.jpg,30", "leaves the image folder"),
])
def test_age_csv_rows_are_checked(tmp_path, row, reason):
    make_image(tmp_path / "imgs" / "good.jpg", 0, 0)
    make_image(tmp_path / "outside.jpg", 0, 1)
    table = tmp_path / "ages.csv"
    table.write_text(f"file,age\ngood.jpg,25\n{row.format(outside=tmp_path / 'outside.jpg')}\n")
    got = samples.ages_from_csv(table, tmp_path / "imgs")
    assert got.ages == [25] and [Path(p).name for p in got.paths] == ["good.jpg"]
    assert len(got.problems) == 1 and got.problems[0][0] == "ages.csv:3" and reason in got.problems[0][1]


def test_age_csv_with_a_byte_order_mark(tmp_path):
    make_image(tmp_path / "good.jpg", 0, 0)
    (tmp_path / "ages.csv").write_bytes("file,age\ngood.jpg,25\n".encode("utf-8-sig"))
    got = samples.ages_from_csv(tmp_path / "ages.csv", tmp_path)
    assert got.ages == [25] and got.problems == []


# ---- 14: escaping -------------------------------------------------------------------------

def test_non_utf8_names_under_a_strict_stdout(ckpts, tmp_path, capsys, monkeypatch):
    make_image(tmp_path / "in" / os.fsdecode(b"caf\xe9.jpg"), 0, 0)
    for extra in ([], ["--csv"]):
        raw = io.BytesIO()
        strict = io.TextIOWrapper(raw, encoding="utf-8", errors="strict")
        monkeypatch.setattr(sys, "stdout", strict)
        code = predict.cli([str(tmp_path / "in"), "--checkpoint", str(ckpts["gender"]), *FAST, *extra])
        strict.flush()
        assert code == 0 and "caf\\xe9.jpg" in raw.getvalue().decode("utf-8"), capsys.readouterr().err


def test_csv_text_cells_cannot_be_formulas(ckpts, tmp_path, capsys, monkeypatch):
    path = crafted(ckpts, tmp_path, lambda c: c.update(classes=["=HYPERLINK(\"x\")", "-male"]))
    monkeypatch.chdir(tmp_path)
    names = ["=1+2.jpg", "+x.jpg", "-x.jpg", "@x.jpg"]
    for i, name in enumerate(names):
        make_image(tmp_path / name, i % 2, i)
    code, out, _ = run(["--checkpoint", path, "--csv", *FAST, "--", *names], capsys)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [r["file"] for r in rows] == ["'" + n for n in names]
    assert all(r["label"] in ("'=HYPERLINK(\"x\")", "'-male") for r in rows)
    assert all(0 <= float(r["probability"]) <= 1 for r in rows)
    # numbers stay numbers: a box reaching past the image edge, a negative score
    record = {"file": "-0.5", "box": [-5, -3, 10, 20], "score": -0.5, "source": "detector", "label": "-1"}
    cells = prediction_output.flat_row(record)
    assert (cells["file"], cells["x0"], cells["y0"], cells["score"], cells["label"]) == ("-0.5", -5, -3, -0.5, "-1")


def test_control_characters_cannot_forge_result_lines(ckpts, tmp_path, capsys):
    path = crafted(ckpts, tmp_path, lambda c: c.update(classes=["fe\nmale x.jpg  male 1.000", "male\r"]))
    folder = tmp_path / "in"
    make_image(folder / "a\nforged.jpg  male 0.999.jpg", 0, 0)
    make_image(folder / "b\x1b[2J.jpg", 1, 1)
    (folder / "bad\nname.jpg").write_text("not an image")
    code, out, err = run([folder, "--checkpoint", path, *FAST], capsys)
    lines = out.splitlines()
    assert code == 1 and len(lines) == 2 and "a\\nforged.jpg" in lines[0] and "b\\x1b[2J.jpg" in lines[1]
    assert all("fe\\nmale" in line or "male\\r" in line for line in lines)
    assert len(err.splitlines()) == 2 and "bad\\nname.jpg" in err
    assert prediction_output.printable("x\u202egpj.exe\tok") == "x\\u202egpj.exe\\tok"
