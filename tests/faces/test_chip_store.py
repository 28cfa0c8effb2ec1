"""chip_store.py by known bytes: the chip file's layout and its damage checks, .none entries,
entries made again when damaged, where the cache lives, and each message."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import record_probe_folders
from gender_age.core.images import BadImageError, DatasetError
from gender_age.faces import alignment, chip_store
from gender_age.faces.geometry import Face

SPEC = alignment.ChipSpec("aligned", 8, 0.05)


def test_spec_key_is_the_documented_digest():
    # the folder's name is stable across releases as long as nothing that shapes a chip changes: the
    # digest of the sorted JSON of mode, size, margin, template, detector, its input size and the chip version
    what = {"mode": "aligned", "size": 8, "margin": 0.05, "template": alignment.TEMPLATE, "detector": "mtcnn",
            "detect_size": chip_store.detectors.DETECT_SIZE, "version": chip_store.CHIP_VERSION}
    digest = hashlib.blake2b(json.dumps(what, sort_keys=True).encode(), digest_size=8).hexdigest()
    assert chip_store.spec_key(SPEC) == f"aligned-8px-{digest}"
    assert chip_store.spec_key(alignment.ChipSpec("off", 72)).startswith("off-72px-")


def test_a_chip_file_has_a_known_layout(tmp_path):
    pixels = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    path = tmp_path / "x.chip"
    chip_store.write_chip(path, Image.fromarray(pixels), (0.5, 0.25, 1.5, 2.0))
    data = path.read_bytes()
    assert data[:8] == b"GACCHIP1" and len(data) == chip_store.HEADER + 3 * 64 == 8 + 16 + 192
    assert np.frombuffer(data[8:24], "<f4").tolist() == [0.5, 0.25, 1.5, 2.0]
    assert data[24:] == pixels.transpose(2, 0, 1).tobytes()  # channels first
    assert chip_store.read_framing(path, 8) == (0.5, 0.25, 1.5, 2.0)
    chip = chip_store.read_chip(path, 8)
    assert chip.dtype == torch.uint8 and torch.equal(chip, torch.from_numpy(pixels).permute(2, 0, 1))


def test_damaged_chip_files_are_refused(tmp_path):
    path = tmp_path / "x.chip"
    chip_store.write_chip(path, Image.new("RGB", (8, 8)), (0.0, 0.0, 1.0, 1.0))
    whole = path.read_bytes()
    for bad, why in ((whole[:-1], "not a whole chip file"), (whole + b"x", "not a whole chip file"),
                     (b"GACCHIP2" + whole[8:], "not a chip file")):
        path.write_bytes(bad)
        with pytest.raises(ValueError, match=f"^{why}$"):
            chip_store.read_framing(path, 8)
        with pytest.raises(BadImageError, match="^" + re.escape(f"its face chip {path} is damaged: delete it to have "
                                                                f"it made again") + "$"):
            chip_store.read_chip(path, 8)
    path.write_bytes(whole)
    with pytest.raises(ValueError):
        chip_store.read_framing(path, 9)  # another size: not a whole chip of that size
    with pytest.raises(BadImageError, match="^its face chip .*gone.chip cannot be read \\(No such file or directory\\)$"):
        chip_store.read_chip(tmp_path / "gone.chip", 8)


class Finder:
    def __init__(self, faces):
        self.faces, self.calls = faces, 0
        self.name, self.geometry = "mtcnn", None

    def detect(self, array):
        self.calls += 1
        return list(self.faces)


def photo(tmp_path, name="a.png", seed=0) -> Path:
    path = tmp_path / name
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
    return path


def face_finder():
    return Finder([Face((10, 10, 30, 30), 0.99, tuple((10 + 20 * x, 10 + 20 * y) for x, y in alignment.TEMPLATE))])


def test_entries_are_made_once_and_again_when_damaged(tmp_path):
    img, folder, det = photo(tmp_path), tmp_path / "cache", face_finder()
    chip, framing, made = chip_store.chip_entry(img, SPEC, folder, det)
    key = chip_store.file_digest(img)
    assert chip == str(folder / key[:2] / f"{key}.chip") and made and det.calls == 1
    assert framing == pytest.approx((0.5, 0.5, 0.5, 0.5))
    assert chip_store.chip_entry(img, SPEC, folder, det) == (chip, pytest.approx(framing), False) and det.calls == 1
    Path(chip).write_bytes(b"damaged")
    assert chip_store.chip_entry(img, SPEC, folder, det)[2] and det.calls == 2 and chip_store.read_chip(chip, 8).shape


def test_a_faceless_image_gets_a_none_entry(tmp_path):
    img, folder, det = photo(tmp_path), tmp_path / "cache", Finder([])
    assert chip_store.chip_entry(img, SPEC, folder, det) == (None, None, True)
    key = chip_store.file_digest(img)
    assert (folder / key[:2] / f"{key}.none").read_bytes() == b""
    assert chip_store.chip_entry(img, SPEC, folder, det) == (None, None, False) and det.calls == 1


def test_a_chip_that_cannot_be_stored_is_named(tmp_path):
    img = photo(tmp_path)
    (tmp_path / "file").write_text("x")
    folder = tmp_path / "file" / "cache"  # under a file: nothing can be written
    with pytest.raises(BadImageError, match="^" + re.escape(f"its face chip cannot be stored in {folder} (Not a "
                                                            f"directory)") + "$"):
        chip_store.chip_entry(img, SPEC, folder, face_finder())
    with pytest.raises(BadImageError, match="cannot be stored"):
        chip_store.chip_entry(img, SPEC, folder, Finder([]))


def test_load_chip(tmp_path):
    img = photo(tmp_path)
    chip = chip_store.chip_entry(img, SPEC, tmp_path / "cache", face_finder())[0]
    assert torch.equal(chip_store.load_chip(str(img), {str(img): chip}, {}, 8), chip_store.read_chip(chip, 8))
    whole = chip_store.load_chip(str(img), {str(img): None}, {}, 8)  # no face: the central square
    assert torch.equal(whole, chip_store.decode_resized(str(img), 8))
    with pytest.raises(BadImageError, match="^unreadable$"):
        chip_store.load_chip("x.jpg", {}, {"x.jpg": "unreadable"}, 8)
    with pytest.raises(BadImageError, match="^its face chip was not prepared$"):
        chip_store.load_chip("y.jpg", {}, {}, 8)


def test_where_the_cache_lives(monkeypatch, tmp_path):
    monkeypatch.setenv("GAC_CHIP_CACHE", str(tmp_path / "mine"))
    assert chip_store.default_cache() == tmp_path / "mine"
    monkeypatch.delenv("GAC_CHIP_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert chip_store.default_cache() == tmp_path / "xdg" / "gender-age-classifier" / "chips"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert chip_store.default_cache() == tmp_path / "home" / ".cache" / "gender-age-classifier" / "chips"


def test_check_cache(tmp_path):
    chip_store.check_cache(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir() and list((tmp_path / "a" / "b").iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="^" + re.escape(f"chip cache {tmp_path / 'file'} is not writable (File "
                                                           f"exists): choose another with --chip-cache") + "$"):
        chip_store.check_cache(tmp_path / "file")


def test_the_cache_probe_is_made_in_the_cache_folder(tmp_path, monkeypatch):
    made = record_probe_folders(monkeypatch, chip_store)
    chip_store.check_cache(tmp_path / "c")
    assert made == [tmp_path / "c"]
