"""The on-disk cache of face chips: a folder per chip spec, named by a digest of everything that
shapes a chip (``spec_key``), holding one file per image named by the digest of the image file's
bytes (``chip_entry``). A chip file is MAGIC, the framing of the face (4 little-endian float32),
then the uint8 pixels channels first (``write_chip``; they read about 100 times faster than a
PNG); an image without a detectable face gets an empty ``.none`` entry. A changed image or spec
is another name, so nothing stale is ever read; files are written atomically, so two runs can
fill the cache at once.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gender_age.core.checkpointing import atomic_write
from gender_age.core.images import BadImageError, DatasetError, decode_resized, file_digest, load_rgb
from gender_age.faces import alignment, detectors

CHIP_VERSION = 1  # bump when chips come out differently for the same spec (the cache then starts afresh)
MAGIC = b"GACCHIP1"  # then the framing (4 little-endian float32), then the chip (uint8, channels first)
HEADER = len(MAGIC) + 16


def default_cache() -> Path:
    if os.environ.get("GAC_CHIP_CACHE"):
        return Path(os.environ["GAC_CHIP_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gender-age-classifier" / "chips"


def spec_key(spec: alignment.ChipSpec) -> str:
    """The cache folder's name: the chip's mode and size, and a digest of all that shapes a chip."""
    what = {"mode": spec.mode, "size": spec.size, "margin": spec.margin, "template": spec.template,
            "detector": "mtcnn", "detect_size": detectors.DETECT_SIZE, "version": CHIP_VERSION}
    digest = hashlib.blake2b(json.dumps(what, sort_keys=True).encode(), digest_size=8).hexdigest()
    return f"{spec.mode}-{spec.size}px-{digest}"


def write_chip(path: Path, chip: Image.Image, framing: tuple) -> None:
    """A chip file, written atomically: MAGIC, the framing, the pixels (channels first)."""
    pixels = np.asarray(chip, dtype=np.uint8).transpose(2, 0, 1)
    with atomic_write(path) as f:
        f.write(MAGIC + np.asarray(framing, dtype="<f4").tobytes() + pixels.tobytes())


def read_framing(path: Path, size: int) -> tuple:
    """The framing stored in a chip file of ``size`` px; ValueError for a damaged file, OSError for none."""
    if path.stat().st_size != HEADER + 3 * size * size:
        raise ValueError("not a whole chip file")
    with open(path, "rb") as f:
        head = f.read(HEADER)
    if not head.startswith(MAGIC):
        raise ValueError("not a chip file")
    return tuple(float(v) for v in np.frombuffer(head, dtype="<f4", offset=len(MAGIC)))


def read_chip(path, size: int) -> torch.Tensor:
    """The chip of a chip file, uint8 (3, size, size); BadImageError when it is damaged."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise BadImageError(f"its face chip {path} cannot be read ({e.strerror or e})") from None
    if len(data) != HEADER + 3 * size * size or not data.startswith(MAGIC):
        raise BadImageError(f"its face chip {path} is damaged: delete it to have it made again")
    return torch.frombuffer(bytearray(data[HEADER:]), dtype=torch.uint8).view(3, size, size)


def chip_entry(path, spec: alignment.ChipSpec, folder: Path, detector) -> tuple:
    """(chip file or None when no face was found, framing of the face or None, made now?) for one
    image: from the cache, or made with ``faces.chip_image`` and stored. BadImageError for an
    unreadable image, or a chip that cannot be stored."""
    key = file_digest(path)
    chip_file, none = folder / key[:2] / f"{key}.chip", folder / key[:2] / f"{key}.none"
    if none.exists():
        return None, None, False
    try:
        return str(chip_file), read_framing(chip_file, spec.size), False
    except (OSError, ValueError):
        pass  # not there yet (or damaged): make it
    chip, framing = alignment.chip_image(load_rgb(path), detector, spec)
    try:
        if chip is None:
            with atomic_write(none):
                pass
            return None, None, True
        write_chip(chip_file, chip, framing)
    except OSError as e:
        raise BadImageError(f"its face chip cannot be stored in {folder} ({e.strerror or e})") from None
    return str(chip_file), framing, True


def load_chip(path, chips: dict, failed: dict, size: int):
    """uint8 (3, size, size) of a prepared image: its chip, or its central square when it has no
    face (``chips[path]`` None); BadImageError, with the reason, for one that failed."""
    if path not in chips:
        raise BadImageError(failed.get(path, "its face chip was not prepared"))
    return read_chip(chips[path], size) if chips[path] else decode_resized(path, size)


def check_cache(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test."):
            pass
    except OSError as e:
        raise DatasetError(f"chip cache {folder} is not writable ({e.strerror or e}): choose another "
                           f"with --chip-cache") from None
