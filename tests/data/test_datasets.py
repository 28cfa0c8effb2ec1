"""Data loading: every kind of bad or unusual input, splits and transforms."""
from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from gender_age.data import loading
from gender_age.data import transforms
from conftest import ROOT, make_folder_dataset, make_image
from gender_age.core import images
from gender_age.data import samples
from gender_age.core import runtime


# ---- one image at a time -------------------------------------------------

def _jpeg_bytes(size=(64, 64), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (10, 200, 30) if mode == "RGB" else None).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("name,content,reason", [
    ("zero.jpg", b"", "empty file"),
    ("text.jpg", b"this is not an image\n", "not an image"),
    ("truncated.jpg", None, "cannot decode"),
])
def test_broken_files_raise_bad_image(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(_jpeg_bytes((300, 300))[:700] if content is None else content)
    with pytest.raises(images.BadImageError, match=reason):
        images.load_rgb(path)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    # 10000 x 10000 = 1e8 pixels, a few hundred kB on disk
    Image.new("1", (10_000, 10_000)).save(path)
    assert path.stat().st_size < 2_000_000
    with pytest.raises(images.BadImageError, match="refused"):
        images.load_rgb(path)


def test_unreadable_file(tmp_path, monkeypatch):
    path = make_image(tmp_path / "locked.jpg", 0, 0)
    if os.geteuid() != 0:
        path.chmod(0)
    else:  # root reads anything: make the open itself fail as it would for a user
        real_open = Image.open
        monkeypatch.setattr(images.Image, "open", lambda p, *a, **k: (_ for _ in ()).throw(PermissionError(13, "denied"))
                            if str(p) == str(path) else real_open(p, *a, **k))
    with pytest.raises(images.BadImageError, match="permission denied"):
        images.load_rgb(path)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "1", "CMYK", "I;16"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    path = tmp_path / f"img_{mode.replace(';', '')}.{fmt.lower()}"
    if mode == "I;16":
        arr = (np.arange(40 * 30).reshape(30, 40) * 50).astype(np.uint16)
        Image.fromarray(arr.astype("<u2")).save(path)
    else:
        make_image(path, 1, 3, fmt=fmt, mode=mode)
    img = images.load_rgb(path)
    assert img.mode == "RGB" and img.size == ((40, 30) if mode == "I;16" else (40, 48))
    t = images.decode_resized(path, 64)
    assert t.dtype == torch.uint8 and t.shape == (3, 64, 64)
    if mode == "I;16":  # 16-bit range is scaled, not clipped to white
        assert int(t.min()) < 30 and int(t.max()) > 220


def test_rgba_transparency_becomes_white(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(path)
    assert images.load_rgb(path).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_honoured(tmp_path):
    path = tmp_path / "rotated.jpg"
    img = Image.new("RGB", (60, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(path, exif=exif)
    assert images.load_rgb(path).size == (20, 60)


def test_one_pixel_image(tmp_path):
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (1, 2, 3)).save(path)
    assert images.decode_resized(path, 32).shape == (3, 32, 32)


def test_jpeg_draft_decoding_matches_full_decode(tmp_path):
    path = tmp_path / "big.jpg"
    arr = (np.random.default_rng(0).random((520, 520, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).filter(__import__("PIL.ImageFilter").ImageFilter.GaussianBlur(4)).save(path, quality=95)
    fast = images.decode_resized(path, 256).float()
    full = images.pil_to_uint8_tensor(images.resize_square(Image.open(path).convert("RGB"), 256)).float()
    assert (fast - full).abs().mean() < 3  # same picture, DCT-scaled decode


# ---- folders ---------------------------------------------------------------

def test_list_images_skips_hidden_and_finds_any_depth_and_odd_names(tmp_path):
    make_image(tmp_path / "a" / "b" / "deep.JPG", 0, 0)
    make_image(tmp_path / "with space.png", 0, 1, fmt="PNG")
    odd = os.fsdecode(b"caf\xe9-latin1.jpg")  # not valid UTF-8
    make_image(tmp_path / odd, 0, 2, fmt="JPEG")
    (tmp_path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "._deep.jpg").write_bytes(b"\0\5\26\7")
    make_image(tmp_path / ".hidden" / "x.jpg", 0, 3)
    (tmp_path / "notes.txt").write_text("hi")
    names = sorted(p.name for p in images.list_images(tmp_path))
    assert names == sorted(["deep.JPG", "with space.png", odd])
    for p in images.list_images(tmp_path):
        assert images.decode_resized(p, 16).shape == (3, 16, 16)


def test_scan_errors_name_the_fix(tmp_path):
    with pytest.raises(samples.DatasetError, match="not found: create it"):
        samples.scan_image_folder(tmp_path / "missing")
    make_image(tmp_path / "one" / "only" / "x.jpg", 0, 0)
    with pytest.raises(samples.DatasetError, match="at least 2"):
        samples.scan_image_folder(tmp_path / "one")
    make_image(tmp_path / "two" / "a" / "x.jpg", 0, 0)
    (tmp_path / "two" / "b").mkdir()
    with pytest.raises(samples.DatasetError, match="has no images"):
        samples.scan_image_folder(tmp_path / "two")
    make_folder_dataset(tmp_path / "three", classes=("x", "y"), n_train=1, n_test=1)
    make_image(tmp_path / "three" / "test" / "z" / "1.jpg", 0, 0)
    with pytest.raises(samples.DatasetError, match="lack"):
        samples.scan_image_folder(tmp_path / "three" / "test", classes=["x", "y"], split_name="test")


def test_stratified_split_is_seeded_and_stratified():
    targets = [0] * 50 + [1] * 30
    keep, held = samples.stratified_split(targets, 0.1, seed=1)
    assert sorted(keep + held) == list(range(80)) and not set(keep) & set(held)
    assert sum(targets[i] == 0 for i in held) == 5 and sum(targets[i] == 1 for i in held) == 3
    assert samples.stratified_split(targets, 0.1, seed=1) == (keep, held)
    assert samples.stratified_split(targets, 0.1, seed=2) != (keep, held)
    assert samples.stratified_split(targets, 0.0, seed=1) == (list(range(80)), [])
    with pytest.raises(samples.DatasetError):
        samples.stratified_split(targets, 1.0, seed=1)


def test_cached_images_drop_and_list_bad_files(tmp_path):
    root = make_folder_dataset(tmp_path / "d", n_train=3, n_test=1)
    (root / "train" / "male" / "broken.jpg").write_bytes(b"")
    (root / "train" / "female" / "fake.jpg").write_text("not a jpeg")
    found = samples.scan_image_folder(root / "train")
    cached = loading.CachedImages(found, 32)
    assert len(cached) == 6 and len(cached.bad) == 2
    assert cached.images.shape == (6, 3, 32, 32) and cached.images.dtype == torch.uint8
    assert {os.path.basename(p) for p, _ in cached.bad} == {"broken.jpg", "fake.jpg"}


def test_streaming_never_raises_mid_epoch(tmp_path):
    root = make_folder_dataset(tmp_path / "d", n_train=2, n_test=1)
    found = samples.scan_image_folder(root / "train")
    stream = loading.StreamingImages(found, 32)
    (root / "train" / "male" / "male_0.jpg").write_bytes(b"")  # breaks after the check
    batch = loading.collate_skip_bad([stream[i] for i in range(len(stream))])
    assert batch[0].shape == (3, 3, 32, 32) and batch[1].tolist() == [0, 0, 1]


def test_cache_mode_choice_is_logged():
    assert loading.choose_cache_mode("auto", 10, 256)[0] == "memory"
    mode, why = loading.choose_cache_mode("auto", 10**9, 256)
    assert mode == "stream" and "over half the free memory" in why
    assert loading.choose_cache_mode("stream", 1, 8)[0] == "stream"


# ---- transforms -------------------------------------------------------------

def test_eval_preset_matches_torchvision_resize_centercrop(tmp_path):
    from torchvision import transforms as T
    # square, like the face data (for other shapes the crop may differ by one pixel of rounding)
    path = make_image(tmp_path / "x.png", 1, 5, size=(300, 300), fmt="PNG")
    preset = transforms.Preset(256, 227)
    ours = preset.eval_batch(images.decode_resized(path, 256)[None])[0]
    ref = T.Compose([T.Resize(256), T.CenterCrop(227), T.ToTensor(), T.Normalize(preset.mean, preset.std)])(
        Image.open(path).convert("RGB"))
    assert ours.shape == ref.shape == (3, 227, 227)
    assert (ours - ref).abs().mean() < 0.05  # same geometry; resampling differs by rounding only


def test_train_batch_crops_flips_and_is_seeded():
    preset = transforms.Preset(8, 5, mean=(0, 0, 0), std=(1 / 255, 1 / 255, 1 / 255))
    batch = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8).to(torch.uint8)
    a = preset.train_batch(batch, torch.Generator().manual_seed(0))
    b = preset.train_batch(batch, torch.Generator().manual_seed(0))
    assert a.shape == (2, 3, 5, 5) and torch.equal(a, b)
    outs = {tuple(preset.train_batch(batch, torch.Generator().manual_seed(s))[0, 0, 0].tolist()) for s in range(30)}
    assert len(outs) > 4  # different crops and flips
    flipped_seen = any(row[0] > row[-1] for row in outs)
    assert flipped_seen


def test_tta_views_are_the_four_corners_the_centre_and_their_mirrors():
    preset = transforms.Preset(8, 5)
    batch = torch.randint(0, 255, (3, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    views = preset.tta_batch(batch)
    assert views.shape == (10, 3, 3, 5, 5)
    # (top, left) of the 5x5 crops in the 8x8 square: the corners, then the centre ((8 - 5) // 2)
    for v, (t, l) in enumerate([(0, 0), (0, 3), (3, 0), (3, 3), (1, 1)]):
        crop = preset.normalize(batch[:, :, t:t + 5, l:l + 5])
        assert torch.equal(views[v], crop), v
        assert torch.equal(views[v + 5], crop.flip(-1)), v + 5


def test_numpy_preset_gives_the_tensor_presets_views():
    """Prediction's numpy preset (presets.EvalPreset, no torch) and training's tensor one agree."""
    from gender_age.data.presets import EvalPreset
    batch = torch.randint(0, 256, (2, 3, 10, 10), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    tensors, arrays = transforms.Preset(10, 7), EvalPreset(10, 7)
    for view in ("eval_batch", "tta_batch"):
        want, got = getattr(tensors, view)(batch), getattr(arrays, view)(batch.numpy())
        assert isinstance(got, np.ndarray) and got.dtype == np.float32
        np.testing.assert_allclose(got, want.numpy(), atol=1e-6)


def test_strong_augmentation_geometry_and_colour():
    preset = transforms.Preset(16, 12)
    g = torch.Generator().manual_seed(0)
    # a constant grey image: contrast and saturation change nothing, brightness scales it
    grey = torch.full((8, 3, 16, 16), 100, dtype=torch.uint8)
    out = preset.train_batch_strong(grey, g)
    assert out.shape == (8, 3, 12, 12) and out.dtype == torch.float32
    mean = torch.tensor(preset.mean).view(1, 3, 1, 1)
    std = torch.tensor(preset.std).view(1, 3, 1, 1)
    level = (out * std + mean) * 255 / 100  # the brightness factor, per sample and pixel
    assert torch.allclose(level, level[:, :1, :1, :1].expand_as(level), atol=1e-4)
    assert level.min() >= 0.7 - 1e-4 and level.max() <= 1.3 + 1e-4 and level.std() > 0.05
    # seeded: the same generator state gives the same batch
    a = preset.train_batch_strong(grey, torch.Generator().manual_seed(3))
    assert torch.equal(a, preset.train_batch_strong(grey, torch.Generator().manual_seed(3)))
    # a left-dark/right-bright image comes out mirrored for some samples
    ramp = torch.zeros((32, 3, 16, 16), dtype=torch.uint8)
    ramp[..., 8:] = 200
    y = preset.train_batch_strong(ramp, torch.Generator().manual_seed(1))
    left, right = y[..., :3].mean((1, 2, 3)), y[..., -3:].mean((1, 2, 3))
    assert (left > right).any() and (left < right).any()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is a Linux call")
def test_usable_cores_follows_the_cpu_affinity():
    # taskset/cpuset users and the pinned test workers get threads for the
    # cores they may use, not for every core of the machine
    code = "import os; from gender_age.core import runtime; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); print(runtime.usable_cores())"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"
    assert runtime.usable_cores() == len(os.sched_getaffinity(0))


def test_grey_turns_a_fraction_of_the_samples_grey_and_keeps_the_other_draws():
    preset = transforms.Preset(16, 12)
    colour = torch.zeros((64, 3, 16, 16), dtype=torch.uint8)
    colour[:, 0], colour[:, 1], colour[:, 2] = 200, 120, 40  # a warm skin-like tone, no two channels equal
    mean = torch.tensor(preset.mean).view(1, 3, 1, 1)
    std = torch.tensor(preset.std).view(1, 3, 1, 1)
    rgb = lambda out: (out * std + mean) * 255
    spread = lambda out: (rgb(out).amax(1) - rgb(out).amin(1)).amax((1, 2))  # per sample, the widest channel gap
    assert (spread(preset.train_batch_strong(colour, torch.Generator().manual_seed(0), grey=1.0)) < 1e-3).all()
    assert (spread(preset.train_batch_strong(colour, torch.Generator().manual_seed(0))) > 50).all()
    half = spread(preset.train_batch_strong(colour, torch.Generator().manual_seed(0), grey=0.5))
    assert 10 <= int((half < 1e-3).sum()) <= 54 and int((half > 50).sum()) == 64 - int((half < 1e-3).sum())
    # grey 0 draws nothing more: the batch of a run without it
    assert torch.equal(preset.train_batch_strong(colour, torch.Generator().manual_seed(5), grey=0.0),
                       preset.train_batch_strong(colour, torch.Generator().manual_seed(5)))
