"""Finding and opening images safely, and the one decode step of every pipeline.

* ``list_images`` / ``walk_files`` find files at any depth, following each
  real folder once (symlink loops and links back up the tree are skipped) down
  to ``MAX_DEPTH`` levels.
* ``load_rgb`` opens any image safely (EXIF orientation, RGBA/LA/P/16-bit/CMYK,
  decompression bombs, extreme aspect ratios and any decoder failure reported
  as a BadImageError, never raised mid-epoch).
* ``decode_resized`` turns it into a uint8 (3, R, R) tensor: the shorter side
  resized to R (256 for the Levi-Hassner network), then the central R x R
  square. Training caches the result in memory, so every image is decoded
  once per run, not once per epoch.
"""
from __future__ import annotations

import hashlib
import math
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")
# Refuse anything larger than this many pixels before decoding it: a 100 kB
# PNG can claim 50,000 x 50,000 pixels and would need 7.5 GB once decoded.
MAX_IMAGE_PIXELS = 40_000_000
# A 475-byte PNG of 1 x 100,000 pixels passes the pixel limit, and resizing its
# shorter side to 256 would make it 256 x 25.6M: refuse such shapes outright.
MAX_ASPECT = 20
# Folders nested deeper than this below an input are an error (a generated or
# looping tree), not something to walk.
MAX_DEPTH = 64

# PIL must not silently pad truncated JPEGs with grey; we want to know.
ImageFile.LOAD_TRUNCATED_IMAGES = False
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


class BadImageError(Exception):
    """One image could not be used; the message says why."""


class DatasetError(Exception):
    """A structural problem with a dataset: the message says how to fix it."""


def is_hidden(name: str) -> bool:
    # .DS_Store, macOS '._x.jpg' resource forks, editor swap files, .git ...
    return name.startswith(".")


def is_image_file(path: str | os.PathLike) -> bool:
    name = os.path.basename(path)
    return not is_hidden(name) and name.lower().endswith(IMG_EXTENSIONS)


def list_images(root: str | os.PathLike) -> list[Path]:
    """Every image file under ``root`` at any depth, sorted, hidden ones skipped."""
    return walk_files(root, is_image_file)


def _contains(outer: str, inner: str) -> bool:
    """Whether real path ``inner`` is ``outer`` or lies below it."""
    return os.path.commonpath([outer, inner]) == outer


def walk_files(root: str | os.PathLike, keep) -> list[Path]:
    """Every file under ``root`` whose name passes ``keep(name)``, at any depth, sorted.

    Hidden folders are skipped. Symlinked folders are followed (users link
    data folders in), but each real folder is walked once, and a link to a
    folder that contains the one it sits in (``ln -s .. back``: a loop, which
    would also pull sibling classes in) is skipped. A tree deeper than
    MAX_DEPTH levels raises DatasetError. Unreadable folders are skipped, as
    os.walk does.
    """
    root = Path(root)
    found, seen = [], set()
    stack = [(root, (os.path.realpath(root),))]  # (folder, real paths of it and its parents)
    while stack:
        folder, chain = stack.pop()
        try:
            st = os.stat(folder)
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        subdirs = []
        for e in entries:
            if is_hidden(e.name):
                continue
            try:
                is_dir = e.is_dir()  # follows symlinks
            except OSError:
                continue
            if not is_dir:
                if keep(e.name):
                    found.append(Path(e.path))
                continue
            real = os.path.realpath(e.path)
            if any(_contains(real, c) for c in chain):
                continue  # a link back up the tree
            if len(chain) > MAX_DEPTH:
                raise DatasetError(f"folder {root} is nested more than {MAX_DEPTH} levels deep "
                                   f"(at ...{e.path[-60:]!r}): flatten it or pass a deeper folder")
            subdirs.append((Path(e.path), chain + (real,)))
        stack.extend(reversed(subdirs))
    return sorted(found)


def check_image_size(w: int, h: int) -> None:
    """Raise BadImageError for a size no pipeline should decode or resize:
    degenerate, over MAX_IMAGE_PIXELS, or longer than MAX_ASPECT times its width."""
    if min(w, h) < 1:
        raise BadImageError(f"degenerate size {w}x{h}")
    if w * h > MAX_IMAGE_PIXELS:
        raise BadImageError(f"refused: {w}x{h} pixels is over the {MAX_IMAGE_PIXELS:,} pixel limit")
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise BadImageError(f"refused: {w}x{h} pixels is more than {MAX_ASPECT} times longer than wide")


def load_rgb(path: str | os.PathLike, min_side: int | None = None) -> Image.Image:
    """Open an image as 8-bit RGB, or raise BadImageError saying why.

    Any failure of the decoders (a mistyped EXIF or TIFF tag raises struct.error
    or TypeError deep inside PIL) is this file's problem, reported with the
    exception's type; only KeyboardInterrupt and SystemExit go through.

    min_side: when given, JPEGs are decoded at the smallest DCT scale whose
    shorter side is still >= min_side (``Image.draft``): a 500 px face that
    will be resized to 256 decodes about 4x faster at half scale.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImageError("empty file (0 bytes)")
        with warnings.catch_warnings():
            # PIL's metadata warnings (an EXIF tag of the wrong size, skipped) would break the
            # one-line-per-problem output; a DecompressionBombWarning (between 1x and 2x the
            # limit) is an error here
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                check_image_size(w, h)
                if min_side and img.format == "JPEG":
                    scale = min(w, h) / min_side
                    if scale >= 2:
                        img.draft("RGB", (math.ceil(w / scale), math.ceil(h / scale)))
                img.load()
                img = ImageOps.exif_transpose(img)
                return to_rgb(img)
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImageError(f"refused as a decompression bomb ({e})") from None
    except PermissionError:
        raise BadImageError("permission denied") from None
    except Image.UnidentifiedImageError:
        raise BadImageError("not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated data, broken headers
        raise BadImageError(f"cannot decode: {first_line(e)}") from None
    except MemoryError:
        raise BadImageError("cannot decode: out of memory") from None
    except Exception as e:  # noqa: BLE001 - struct.error, TypeError, ... from a crafted file
        kind, module = type(e).__qualname__, type(e).__module__
        raise BadImageError(f"cannot decode ({kind if module == 'builtins' else f'{module}.{kind}'}: "
                            f"{first_line(e)})") from None


def first_line(e: BaseException) -> str:
    """An exception's message, on one line of at most 160 characters (its type when it has none)."""
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. Transparent pixels become white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit or float greyscale: scale the real range to 0..255 rather than
        # clipping (PIL's convert('L') would clip 16-bit data to white).
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.round().astype(np.uint8))  # 2-D uint8 -> mode L
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    return img


def pil_to_uint8_tensor(img: Image.Image) -> torch.Tensor:  # noqa: F821 (torch: imported when used)
    """RGB PIL image -> uint8 tensor (3, H, W). (torch is imported here, not with this module:
    predict.py's decode workers start before torch is loaded, and never need it.)"""
    import torch
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()


def resize_square(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size`` (antialiased bilinear), then the central square."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if nw * nh > MAX_IMAGE_PIXELS:
        raise BadImageError(f"refused: {w}x{h} pixels would be resized to {nw}x{nh}, over the "
                            f"{MAX_IMAGE_PIXELS:,} pixel limit")
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BILINEAR, reducing_gap=None)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def decode_resized(path: str | os.PathLike, size: int) -> torch.Tensor:  # noqa: F821
    """File -> uint8 (3, size, size): the one decode step of every pipeline."""
    return pil_to_uint8_tensor(resize_square(load_rgb(path, min_side=size), size))


def file_digest(path) -> str:
    """blake2b of a file's bytes; BadImageError when it cannot be read."""
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise BadImageError(f"cannot read: {e.strerror or e}") from None
    return h.hexdigest()
