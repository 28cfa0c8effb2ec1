"""Data: finding, checking and decoding images, datasets, and the transforms.

All preprocessing lives here, in one place, for training, evaluation and
prediction alike:

* ``load_rgb`` opens any image safely (EXIF orientation, RGBA/LA/P/16-bit/CMYK,
  decompression bombs refused, truncated or fake files reported, never raised
  mid-epoch).
* ``decode_resized`` turns it into a uint8 (3, R, R) tensor: the shorter side
  resized to R (256 for the Levi-Hassner network), then the central R x R
  square. This is the only decode step; the result is cached in memory, so
  every image is decoded once per run, not once per epoch.
* ``Preset`` does the rest on tensors, batch-wise and on any device: random
  crop + horizontal flip for training, centre crop for evaluation, then
  normalisation. Resize(256) + CenterCrop(227) on a PIL image gives the same
  pixels as ``decode_resized`` + ``Preset.eval_batch``.
"""
from __future__ import annotations

import csv
import math
import os
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile, ImageFilter, ImageOps
from torch.utils.data import DataLoader, Dataset

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")
# Refuse anything larger than this many pixels before decoding it: a 100 kB
# PNG can claim 50,000 x 50,000 pixels and would need 7.5 GB once decoded.
MAX_IMAGE_PIXELS = 40_000_000
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# PIL must not silently pad truncated JPEGs with grey; we want to know.
ImageFile.LOAD_TRUNCATED_IMAGES = False
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


class DatasetError(Exception):
    """A structural problem with a dataset: the message says how to fix it."""


class BadImageError(Exception):
    """One image could not be used; the message says why."""


# --------------------------------------------------------------------------
# Finding and opening images
# --------------------------------------------------------------------------

def usable_cores() -> int:
    """The CPUs this process may run on: its affinity (taskset, a container's
    cpuset, a test worker pinned to one core), not the machine's total, which
    would start more threads and decode workers than there are cores to run them."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def is_hidden(name: str) -> bool:
    # .DS_Store, macOS '._x.jpg' resource forks, editor swap files, .git ...
    return name.startswith(".")


def is_image_file(path: str | os.PathLike) -> bool:
    name = os.path.basename(path)
    return not is_hidden(name) and name.lower().endswith(IMG_EXTENSIONS)


def list_images(root: str | os.PathLike) -> list[Path]:
    """Every image file under ``root`` at any depth, sorted, hidden ones skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        found.extend(Path(dirpath) / f for f in filenames if is_image_file(f))
    return sorted(found)


def load_rgb(path: str | os.PathLike, min_side: int | None = None) -> Image.Image:
    """Open an image as 8-bit RGB, or raise BadImageError saying why.

    min_side: when given, JPEGs are decoded at the smallest DCT scale whose
    shorter side is still >= min_side (``Image.draft``): a 500 px face that
    will be resized to 256 decodes about 4x faster at half scale.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImageError("empty file (0 bytes)")
        with warnings.catch_warnings():
            # a DecompressionBombWarning (between 1x and 2x the limit) is an error here
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise BadImageError(f"refused: {w}x{h} pixels is over the {MAX_IMAGE_PIXELS:,} pixel limit")
                if min(w, h) < 1:
                    raise BadImageError(f"degenerate size {w}x{h}")
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
        raise BadImageError(f"cannot decode: {e}") from None


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


def pil_to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor (3, H, W)."""
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()


def resize_square(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size`` (antialiased bilinear), then the central square."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BILINEAR, reducing_gap=None)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def reframe(img: Image.Image, size: int, scale: float) -> Image.Image:
    """A tight face chip shown as a wide-margin face crop, (size, size).

    The chip's central square, shrunk to ``scale`` of the side, sits in the
    centre; its edge pixels, smeared outwards and blurred, fill the margin (no
    hard border and no copy of the face). Measured with MTCNN: the face box is
    0.84 of a UTKFace chip's width, 0.44 of an IMDB-WIKI crop's (faces.GEOMETRY),
    so scale 0.53 gives UTKFace faces the IMDB-WIKI scale, and their centres then
    land within 0.01 of the side of the IMDB-WIKI ones.
    """
    inner = max(1, round(size * scale))
    chip = np.asarray(resize_square(img, inner))
    lo = (size - inner) // 2
    hi = size - inner - lo
    padded = np.pad(chip, ((lo, hi), (lo, hi), (0, 0)), mode="edge")
    out = Image.fromarray(padded).filter(ImageFilter.GaussianBlur(radius=max(1.0, size / 32)))
    out.paste(Image.fromarray(chip), (lo, lo))
    return out


def decode_resized(path: str | os.PathLike, size: int, reframe_scale: float = 1.0) -> torch.Tensor:
    """File -> uint8 (3, size, size): the one decode step of every pipeline
    (``reframe_scale`` < 1: a tight chip re-framed with a margin, see ``reframe``)."""
    if reframe_scale < 1.0:
        return pil_to_uint8_tensor(reframe(load_rgb(path), size, reframe_scale))
    return pil_to_uint8_tensor(resize_square(load_rgb(path, min_side=size), size))


# --------------------------------------------------------------------------
# Transforms on tensors (one place for train, eval and predict)
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Preset:
    """Geometry and normalisation of a model's input; stored in checkpoints.

    resize: side of the decoded square (Resize(256) in the original).
    crop: network input side (227 for Levi-Hassner).
    """
    resize: int = 256
    crop: int = 227
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    def as_dict(self) -> dict:
        return {"resize": self.resize, "crop": self.crop, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "Preset":
        return cls(int(d["resize"]), int(d["crop"]), tuple(d["mean"]), tuple(d["std"]))

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        # uint8 (N, 3, H, W) -> float (N, 3, H, W), standardised per channel
        mean = torch.tensor(self.mean, device=batch.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.std, device=batch.device).view(1, 3, 1, 1) * 255
        return (batch.float() - mean) / std

    def train_batch(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """RandomCrop(crop) + RandomHorizontalFlip, per sample, on uint8 (N,3,R,R)."""
        n, _, h, w = batch.shape
        c = self.crop
        # offsets drawn on the CPU generator so a seeded run is reproducible on any device
        tops = torch.randint(0, h - c + 1, (n,), generator=generator).tolist()
        lefts = torch.randint(0, w - c + 1, (n,), generator=generator).tolist()
        flips = (torch.rand(n, generator=generator) < 0.5).tolist()
        out = torch.empty((n, 3, c, c), dtype=batch.dtype, device=batch.device)
        for i, (t, l, f) in enumerate(zip(tops, lefts, flips)):
            patch = batch[i, :, t:t + c, l:l + c]
            out[i] = patch.flip(-1) if f else patch
        return self.normalize(out)

    def train_batch_strong(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A stronger, still cheap, augmentation for small face sets, on uint8 (N,3,R,R).

        Geometry, per sample: a square of side 0.75-1.0 of the decoded square (the
        original's 227/256 = 0.89 lies inside) at a random place, resized to the
        crop (antialiased bilinear on uint8), mirrored half the time.
        Colour, per sample: brightness, contrast and saturation each scaled by
        0.7-1.3. The three are linear in RGB, so together with the normalisation
        they fold into one 3x3 channel map plus offset, applied in one pass
        (values are not clipped to [0, 255] first). Out: float (N, 3, crop, crop).
        """
        n, _, h, w = batch.shape
        c, dev = self.crop, batch.device
        r = torch.rand((n, 7), generator=generator)
        side = (min(h, w) * (0.75 + 0.25 * r[:, 0])).long().clamp(min=c // 2)
        tops = (r[:, 1] * (h - side + 1).float()).long().tolist()
        lefts = (r[:, 2] * (w - side + 1).float()).long().tolist()
        out = torch.empty((n, 3, c, c), dtype=torch.uint8, device=dev)
        for i, (t, l, s, f) in enumerate(zip(tops, lefts, side.tolist(), (r[:, 3] < 0.5).tolist())):
            patch = batch[i:i + 1, :, t:t + s, l:l + s]
            if s != c:
                patch = F.interpolate(patch, size=(c, c), mode="bilinear", antialias=True, align_corners=False)
            out[i] = patch[0].flip(-1) if f else patch[0]
        x = out.float().view(n, 3, c * c)                                        # (N, 3, HW), 0..255
        b, k, sat = ((0.7 + 0.6 * r[:, j]).to(dev) for j in (4, 5, 6))
        gray_w = torch.tensor([0.299, 0.587, 0.114], device=dev)
        m0 = x.mean(2) @ gray_w                                                  # (N,) mean grey level
        # saturation: M = s I + (1 - s) 1 w^T; brightness then contrast: k b M x + (1 - k) b m0
        eye = torch.eye(3, device=dev).expand(n, 3, 3)
        mix = sat.view(n, 1, 1) * eye + (1 - sat).view(n, 1, 1) * gray_w.view(1, 1, 3).expand(n, 3, 3)
        std = torch.tensor(self.std, device=dev) * 255
        mean = torch.tensor(self.mean, device=dev) * 255
        a = (k * b).view(n, 1, 1) * mix / std.view(1, 3, 1)                      # (N, 3, 3)
        offset = (((1 - k) * b * m0).view(n, 1) - mean.view(1, 3)) / std.view(1, 3)  # (N, 3)
        y = torch.baddbmm(offset.unsqueeze(2), a, x)                             # (N, 3, HW)
        return y.view(n, 3, c, c)

    def center(self, batch: torch.Tensor) -> torch.Tensor:
        _, _, h, w = batch.shape
        t, l = (h - self.crop) // 2, (w - self.crop) // 2
        return batch[:, :, t:t + self.crop, l:l + self.crop]

    def eval_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """CenterCrop(crop) + normalise, on uint8 (N,3,R,R)."""
        return self.normalize(self.center(batch))

    def tta_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """Levi-Hassner over-sampling: 4 corner crops + centre, and their mirrors.

        uint8 (N,3,R,R) -> float (10, N, 3, crop, crop).
        """
        _, _, h, w = batch.shape
        c = self.crop
        crops = [batch[:, :, :c, :c], batch[:, :, :c, w - c:], batch[:, :, h - c:, :c],
                 batch[:, :, h - c:, w - c:], self.center(batch)]
        crops += [x.flip(-1) for x in crops]
        return torch.stack([self.normalize(x) for x in crops])


# --------------------------------------------------------------------------
# Samples: ImageFolder trees
# --------------------------------------------------------------------------

@dataclass
class SampleSet:
    """A list of (path, target) with the class names the targets index."""
    paths: list
    targets: list
    classes: list
    root: str = ""
    skipped: list = field(default_factory=list)  # (path, reason) found while scanning

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int]) -> "SampleSet":
        return SampleSet([self.paths[i] for i in indices], [self.targets[i] for i in indices],
                         self.classes, self.root)


def scan_image_folder(root: str | os.PathLike, classes: Sequence[str] | None = None,
                      split_name: str = "train") -> SampleSet:
    """An ImageFolder tree (root/<class>/**/image) -> SampleSet.

    classes: the class names to expect (a test split must use the training
    classes); by default the sorted non-hidden sub-folders. Raises
    DatasetError, with the fix, for a missing folder, fewer than 2 classes or
    an empty class folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{split_name} folder {root} not found: create it with one sub-folder per class "
                           f"(for example {root}/female/*.jpg and {root}/male/*.jpg)")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not is_hidden(d.name))
    if classes is None:
        classes = found
        if len(classes) < 2:
            raise DatasetError(f"{split_name} folder {root} has {len(classes)} class folder(s) "
                               f"({', '.join(classes) or 'none'}); a classifier needs at least 2: "
                               f"add one sub-folder of images per class")
    else:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise DatasetError(f"{split_name} folder {root} has class folder(s) {', '.join(extra)} that the "
                               f"training classes ({', '.join(classes)}) lack: rename or remove them")
    paths, targets = [], []
    for idx, name in enumerate(classes):
        files = list_images(root / name) if (root / name).is_dir() else []
        if not files:
            raise DatasetError(f"class folder {root / name} has no images: add images "
                               f"({', '.join(IMG_EXTENSIONS[:4])}, ...) or remove the folder")
        paths += [str(p) for p in files]
        targets += [idx] * len(files)
    return SampleSet(paths, targets, list(classes), str(root))


def stratified_split(targets: Sequence[int], fraction: float, seed: int) -> tuple[list, list]:
    """Seeded stratified split -> (keep, held_out) index lists, both sorted.

    Each target value gives round(fraction * n) of its n samples (at least one
    when fraction > 0 and n >= 2) to the held-out part.
    """
    if not 0 <= fraction < 1:
        raise DatasetError(f"--val-split must be in [0, 1), got {fraction}")
    rng = random.Random(seed)
    by_target: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_target.setdefault(t, []).append(i)
    keep, held = [], []
    for t in sorted(by_target):
        idx = by_target[t]
        rng.shuffle(idx)
        k = round(fraction * len(idx))
        if fraction > 0 and len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        else:
            k = 0
        held += idx[:k]
        keep += idx[k:]
    return sorted(keep), sorted(held)


# --------------------------------------------------------------------------
# Decoding once, into memory (or streaming when memory is short)
# --------------------------------------------------------------------------

class _LoadFiles(Dataset):
    """path i -> (i, load(path) or None, error or None). Never raises on a bad image."""

    def __init__(self, paths: Sequence[str], load):
        self.paths, self.load = list(paths), load  # load: a picklable callable, path -> object

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, self.load(self.paths[i]), None
        except BadImageError as e:
            return i, None, str(e)


def _keep_items(batch):
    return batch  # a list of (i, object|None, error|None): no stacking, bad items stay visible


def load_all(paths: Sequence[str], load, workers: int, progress: bool = False):
    """Apply ``load`` to every path in ``workers`` processes, in order.
    Yields (index, result|None, error|None); bad images never raise."""
    loader = DataLoader(_LoadFiles(paths, load), batch_size=16, num_workers=workers,
                        collate_fn=_keep_items, persistent_workers=False)
    if progress:
        from tqdm import tqdm
        loader = tqdm(loader, desc="decode", unit="batch", leave=False)
    for batch in loader:
        yield from batch


def decode_all(paths: Sequence[str], size: int, workers: int, progress: bool = False, reframe_scale: float = 1.0):
    """Decode every path once to uint8 (3, size, size), in parallel."""
    from functools import partial
    yield from load_all(paths, partial(decode_resized, size=size, reframe_scale=reframe_scale), workers, progress)


def cache_bytes(n: int, size: int) -> int:
    return n * 3 * size * size


def available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def choose_cache_mode(mode: str, n_images: int, size: int, max_fraction: float = 0.5) -> tuple[str, str]:
    """'memory' when the decoded images fit in half the free RAM, else 'stream'.

    Returns (mode, reason) so the caller can log why.
    """
    need = cache_bytes(n_images, size)
    free = available_memory()
    if mode == "memory":
        return "memory", f"forced by --cache memory ({need / 2**20:.0f} MiB)"
    if mode == "stream":
        return "stream", "forced by --cache stream"
    if need <= max_fraction * free:
        return "memory", f"{need / 2**20:.0f} MiB of decoded images fits in memory ({free / 2**30:.1f} GiB free)"
    return "stream", (f"{need / 2**30:.1f} GiB of decoded images is over half the free memory "
                      f"({free / 2**30:.1f} GiB): decoding in workers every epoch")


class CachedImages(Dataset):
    """Images decoded once to uint8 (N, 3, R, R), held in memory.

    Bad images are dropped at construction and listed in ``self.bad``.
    Indexing returns (uint8 (3,R,R), target).
    """

    def __init__(self, samples: SampleSet, size: int, workers: int = 0, progress: bool = False,
                 reframe_scale: float = 1.0):
        self.classes = samples.classes
        kept_paths, kept_targets, tensors, self.bad = [], [], [], []
        for i, img, err in decode_all(samples.paths, size, workers, progress, reframe_scale):
            if img is None:
                self.bad.append((samples.paths[i], err))
                continue
            kept_paths.append(samples.paths[i])
            kept_targets.append(samples.targets[i])
            tensors.append(img)
        self.paths = kept_paths
        self.targets = torch.tensor(kept_targets, dtype=torch.long)
        self.images = torch.stack(tensors) if tensors else torch.empty((0, 3, size, size), dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.images[i], self.targets[i]


class StreamingImages(Dataset):
    """Decodes in DataLoader workers every epoch; for datasets bigger than RAM.

    A file that fails to decode mid-run (it passed the check before training)
    comes back as None and ``collate_skip_bad`` drops it, so an epoch never
    crashes on one bad file.
    """

    def __init__(self, samples: SampleSet, size: int, reframe_scale: float = 1.0):
        self.classes = samples.classes
        self.paths = list(samples.paths)
        self.targets = torch.tensor(samples.targets, dtype=torch.long)
        self.size = size
        self.reframe_scale = reframe_scale
        self.bad: list = []

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return decode_resized(self.paths[i], self.size, self.reframe_scale), self.targets[i]
        except BadImageError:
            return None


def collate_skip_bad(batch):
    batch = [b for b in batch if b is not None]
    if not batch:
        return torch.empty((0, 3, 1, 1), dtype=torch.uint8), torch.empty((0,), dtype=torch.long)
    return torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])


def check_files(paths: Sequence[str], workers: int = 0) -> list:
    """Cheap pre-flight check for streaming mode: header and full decode of each file.

    Returns [(path, reason)] for the bad ones.
    """
    bad = []
    for i, img, err in decode_all(paths, 8, workers):
        if img is None:
            bad.append((paths[i], err))
    return bad


def drop_bad(samples: SampleSet, bad: Iterable) -> SampleSet:
    bad_paths = {p for p, _ in bad}
    keep = [i for i, p in enumerate(samples.paths) if p not in bad_paths]
    return samples.subset(keep)


def write_bad_list(bad: Sequence, path: str | os.PathLike) -> None:
    """The list of skipped images, as CSV (path, reason)."""
    import io
    from checkpointing import atomic_write_text
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "reason"])
    writer.writerows(bad)
    atomic_write_text(path, buf.getvalue())


# --------------------------------------------------------------------------
# Exact age: labels from file names (UTKFace, IMDB-WIKI) or from CSV files
# --------------------------------------------------------------------------

@dataclass
class AgeSamples:
    """Image paths with their exact ages, and the rows that could not be used."""
    paths: list
    ages: list
    problems: list = field(default_factory=list)  # (where, reason)


def parse_utkface_name(name: str) -> int:
    """'29_1_3_20170104235317706.jpg.chip.jpg' -> 29.

    Copes with the set's quirks: three names lack the gender or race field
    ('39_1_20170116174525125.jpg.chip.jpg'), one has a space before the
    extension. Only the leading age field is needed. Raises ValueError.
    """
    head = name.strip().split("_", 1)[0]
    if not head.isdigit():
        raise ValueError(f"no leading age in {name!r}")
    age = int(head)
    if not 0 <= age <= 130:
        raise ValueError(f"age {age} out of range in {name!r}")
    return age


def parse_imdb_wiki_name(name: str) -> int:
    """'113158_1957-10-25_2007.jpg' -> 49: photo year - birth year, minus one
    when the birthday falls in the second half of the year (IMDB-WIKI takes
    the photo as taken mid-year). Raises ValueError."""
    stem = name.rsplit(".", 1)[0]
    parts = stem.split("_")
    if len(parts) < 3:
        raise ValueError(f"not an IMDB-WIKI name <id>_<YYYY-MM-DD>_<year>: {name!r}")
    birth, year = parts[-2], parts[-1]
    try:
        fields = birth.split("-")  # IMDB writes 1955-1-12 as often as 1955-01-12
        by, bm = int(fields[0]), int(fields[1])
        age = int(year) - by - (1 if bm >= 7 else 0)
    except ValueError:
        raise ValueError(f"bad birth date or year in {name!r}") from None
    if not 0 <= age <= 130:
        raise ValueError(f"age {age} out of range in {name!r}")
    return age


NAME_PARSERS = {"utkface": parse_utkface_name, "imdb-wiki": parse_imdb_wiki_name}

UTKFACE_GENDERS = ("male", "female")  # the second name field: 0 male, 1 female


def parse_utkface_gender(name: str) -> str:
    """'29_1_3_20170104235317706.jpg.chip.jpg' -> 'female'.

    The three UTKFace names with only three fields ('39_1_20170116174525125...')
    lack the gender or the race field, and which one is unknown: ValueError.
    """
    fields = name.strip().split("_")
    if len(fields) < 4 or fields[1] not in ("0", "1"):
        raise ValueError(f"no gender field in {name!r}")
    return UTKFACE_GENDERS[int(fields[1])]


def genders_from_utkface(root: str | os.PathLike, min_age: int | None = None,
                         max_age: int | None = None) -> SampleSet:
    """Every UTKFace image under ``root`` with its gender (classes female, male,
    sorted as ImageFolder sorts folders), optionally only ages min_age-max_age.
    Names without a gender or an age are kept in ``skipped``."""
    ages = ages_from_names(root, "utkface")
    classes = sorted(UTKFACE_GENDERS)
    out = SampleSet([], [], classes, str(root), list(ages.problems))
    for path, age in zip(ages.paths, ages.ages):
        if (min_age is not None and age < min_age) or (max_age is not None and age > max_age):
            continue
        try:
            gender = parse_utkface_gender(Path(path).name)
        except ValueError as e:
            out.skipped.append((path, str(e)))
            continue
        out.paths.append(path)
        out.targets.append(classes.index(gender))
    if len(set(out.targets)) < 2:
        raise DatasetError(f"fewer than two genders among the UTKFace images under {root}"
                           + (f" aged {min_age}-{max_age}" if min_age is not None or max_age is not None else ""))
    return out


def ages_from_names(root: str | os.PathLike, parser: str) -> AgeSamples:
    """Every image under ``root`` (any depth) labelled by its file name."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} not found: pass --data-dir")
    out = AgeSamples([], [])
    for p in list_images(root):
        try:
            out.ages.append(NAME_PARSERS[parser](p.name))
            out.paths.append(str(p))
        except ValueError as e:
            out.problems.append((str(p), str(e)))
    if not out.paths:
        raise DatasetError(f"no image under {root} has a {parser} age in its name")
    return out


def ages_from_csv(csv_path: str | os.PathLike, image_dir: str | os.PathLike, path_column: str = "file",
                  age_column: str = "age", age_offset: int = 0) -> AgeSamples:
    """A CSV with one column of image paths (relative to image_dir) and one of ages.

    age_offset is added to the age column: the CORAL paper's CSVs store the rank
    (age minus the data set's youngest age: UTKFace 21, CACD 14, AFAD 15,
    MORPH-2 16). Missing files and bad rows are reported, not fatal.
    """
    csv_path, image_dir = Path(csv_path), Path(image_dir)
    if not csv_path.is_file():
        raise DatasetError(f"CSV file {csv_path} not found")
    out = AgeSamples([], [])
    with open(csv_path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        if path_column not in cols or age_column not in cols:
            raise DatasetError(f"{csv_path} needs columns '{path_column}' and '{age_column}' (has {cols}): "
                               f"set --path-column / --age-column")
        for line, row in enumerate(reader, start=2):
            where = f"{csv_path.name}:{line}"
            name, age = (row.get(path_column) or "").strip(), (row.get(age_column) or "").strip()
            try:
                value = float(age)
                if not value.is_integer():
                    raise ValueError
                value = int(value) + age_offset
            except ValueError:
                out.problems.append((where, f"bad age {age!r}"))
                continue
            if not name:
                out.problems.append((where, "no image path"))
                continue
            path = image_dir / name
            if not path.is_file():
                out.problems.append((where, f"missing image {path}"))
                continue
            out.paths.append(str(path))
            out.ages.append(value)
    if not out.paths:
        raise DatasetError(f"{csv_path} has no usable rows (first problem: "
                           f"{out.problems[0][1] if out.problems else 'empty file'})")
    return out


def to_ranks(samples: AgeSamples, min_age: int, max_age: int, name: str) -> SampleSet:
    """Exact ages -> ranks (age - min_age) in a SampleSet; ages outside
    [min_age, max_age] are dropped and reported."""
    keep = [i for i, a in enumerate(samples.ages) if min_age <= a <= max_age]
    dropped = [(samples.paths[i], f"age {samples.ages[i]} outside {min_age}-{max_age}")
               for i in range(len(samples.paths)) if not min_age <= samples.ages[i] <= max_age]
    out = SampleSet([samples.paths[i] for i in keep], [samples.ages[i] - min_age for i in keep],
                    [str(a) for a in range(min_age, max_age + 1)], name)
    out.skipped = list(samples.problems) + dropped
    return out
