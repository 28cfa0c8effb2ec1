"""Loading a run's images: decoded once into memory (``CachedImages``) or every epoch in
workers when memory is short (``StreamingImages``; ``choose_cache_mode``), unreadable
files found, listed and skipped (``check_files``, ``report_bad``), and the batch order
of an epoch, sharded over processes (``epoch_order``, ``iterate_batches``).
"""
from __future__ import annotations

import csv
import io
import os
from functools import partial
from pathlib import Path
from typing import Iterable, Sequence
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from gender_age.core.checkpointing import atomic_write_text
from gender_age.core.images import BadImageError, decode_resized
from gender_age.core.runtime import ProgressLines, all_gather_objects
from gender_age.data.samples import DatasetError, SampleSet


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
            out = self.load(self.paths[i])
        except BadImageError as e:
            return i, None, str(e)
        # a tensor would travel to the main process as a shared-memory file descriptor, one per
        # image; tens of thousands of them exhaust the descriptors ("received 0 items of
        # ancdata"), so it travels as a numpy array, through the pipe
        return i, out.numpy() if isinstance(out, torch.Tensor) else out, None


def _keep_items(batch):
    return batch  # a list of (i, object|None, error|None): no stacking, bad items stay visible


def load_all(paths: Sequence[str], load, workers: int, progress=False, desc: str = "decode"):
    """Apply ``load`` to every path in ``workers`` processes, in order (``progress``: see progress_meter).
    Yields (index, result|None, error|None); bad images never raise."""
    loader = DataLoader(_LoadFiles(paths, load), batch_size=16, num_workers=workers,
                        collate_fn=_keep_items, persistent_workers=False)
    meter = progress_meter(progress, len(paths), desc)
    try:
        for batch in loader:
            if meter is not None:
                meter.update(len(batch))
            for i, out, err in batch:
                yield i, torch.from_numpy(out) if isinstance(out, np.ndarray) else out, err
    finally:
        if hasattr(meter, "close"):
            meter.close()


def progress_meter(progress, total: int, desc: str):
    """What counts a preparation's images: a tqdm bar (``progress`` True or "bar"), plain lines at
    every 10% and every 30 s ("lines", runtime.ProgressLines: logs and pipes), or None."""
    if not progress or not total:
        return None
    if progress == "lines":
        return ProgressLines(total, desc)
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="img", leave=False)


def decode_all(paths: Sequence[str], size: int, workers: int, progress=False, load=None):
    """Decode every path once to uint8 (3, size, size), in parallel (``load``: path -> that
    tensor, instead of ``decode_resized``; face_chips.py reads chips with it)."""
    yield from load_all(paths, load or partial(decode_resized, size=size), workers, progress)


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


def choose_cache_mode(mode: str, n_images: int, size: int, max_fraction: float = 0.5,
                      processes: int = 1) -> tuple[str, str]:
    """'memory' when the decoded images of all ``processes`` (each holds a copy)
    fit in half the free RAM, else 'stream'.

    Returns (mode, reason) so the caller can log why.
    """
    need = cache_bytes(n_images, size) * processes
    free = available_memory()
    if mode == "memory":
        return "memory", f"forced by --cache memory, {need / 2**20:.0f} MiB"
    if mode == "stream":
        return "stream", "forced by --cache stream"
    if need <= max_fraction * free:
        return "memory", f"{need / 2**20:.0f} MiB of decoded images fits in memory, {free / 2**30:.1f} GiB free"
    return "stream", (f"{need / 2**30:.1f} GiB of decoded images is over half the free memory, "
                      f"{free / 2**30:.1f} GiB: decoding in workers every epoch")


class CachedImages(Dataset):
    """Images decoded once to uint8 (N, 3, R, R), held in memory.

    Bad images are dropped at construction and listed in ``self.bad``.
    Indexing returns (uint8 (3,R,R), target).
    """

    def __init__(self, samples: SampleSet, size: int, workers: int = 0, progress=False,
                 rank: int = 0, world: int = 1, load=None):
        # under torchrun each process decodes every world-th image, then all exchange them
        self.classes = samples.classes
        mine = list(range(rank, len(samples.paths), world))
        decoded, errors = {}, {}
        for j, img, err in decode_all([samples.paths[i] for i in mine], size, workers, progress, load):
            if img is None:
                errors[mine[j]] = err
            else:
                decoded[mine[j]] = img
        if world > 1:
            for their_decoded, their_errors in all_gather_objects((decoded, errors)):
                decoded.update(their_decoded)
                errors.update(their_errors)
        order = sorted(decoded)
        self.bad = [(samples.paths[i], errors[i]) for i in sorted(errors)]
        self.paths = [samples.paths[i] for i in order]
        self.targets = torch.tensor([samples.targets[i] for i in order], dtype=torch.long)
        self.images = torch.stack([decoded.pop(i) for i in order]) if order else \
            torch.empty((0, 3, size, size), dtype=torch.uint8)

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

    def __init__(self, samples: SampleSet, size: int, load=None):
        self.classes = samples.classes
        self.paths = list(samples.paths)
        self.targets = torch.tensor(samples.targets, dtype=torch.long)
        self.load = load or partial(decode_resized, size=size)
        self.bad: list = []

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return self.load(self.paths[i]), self.targets[i]
        except BadImageError:
            return None


def collate_skip_bad(batch):
    batch = [b for b in batch if b is not None]
    if not batch:
        return torch.empty((0, 3, 1, 1), dtype=torch.uint8), torch.empty((0,), dtype=torch.long)
    return torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])


def check_files(paths: Sequence[str], workers: int = 0, progress=False) -> list:
    """Cheap pre-flight check for streaming mode: header and full decode of each file.

    Returns [(path, reason)] for the bad ones.
    """
    bad = []
    for i, img, err in load_all(paths, partial(decode_resized, size=8), workers, progress, "check"):
        if img is None:
            bad.append((paths[i], err))
    return bad


def drop_bad(samples: SampleSet, bad: Iterable) -> SampleSet:
    bad_paths = {p for p, _ in bad}
    keep = [i for i, p in enumerate(samples.paths) if p not in bad_paths]
    return samples.subset(keep)


def write_bad_list(bad: Sequence, path: str | os.PathLike) -> None:
    """The list of skipped images, as CSV (path, reason)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "reason"])
    writer.writerows(bad)
    atomic_write_text(path, buf.getvalue())


def report_bad(bad: list, out_dir: Path, strict: bool, log) -> None:
    """One warning that counts and lists the skipped images (to a file when many)."""
    if not bad:
        return
    if strict:
        p, why = bad[0]
        raise DatasetError(f"{len(bad)} unreadable image(s), first {p}: {why} "
                              f"(fix or remove them, or drop --strict to skip them)")
    if len(bad) <= 5:
        listing = "; ".join(f"{p} ({why})" for p, why in bad)
    else:
        listing_file = out_dir / "skipped_images.csv"
        write_bad_list(bad, listing_file)
        listing = f"listed in {listing_file}"
    log(f"warning: skipped {len(bad)} unreadable image(s): {listing}")


def iterate_batches(data, indices: list[int], batch_size: int, workers: int, pin: bool):
    """Yield (uint8 (B,3,R,R), targets (B,)) over ``indices`` in order."""
    if isinstance(data, CachedImages):
        # already decoded: slicing the big uint8 tensor is all the loading there is
        for s in range(0, len(indices), batch_size):
            idx = torch.tensor(indices[s:s + batch_size])
            x, y = data.images[idx], data.targets[idx]
            yield (x.pin_memory(), y) if pin else (x, y)
        return
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(data, indices), batch_size=batch_size, shuffle=False,
        num_workers=workers, collate_fn=collate_skip_bad, pin_memory=pin,
        persistent_workers=False, prefetch_factor=4 if workers else None)
    yield from loader


def shard(indices: list[int], rank: int, world: int) -> list[int]:
    return indices[rank::world]


def epoch_order(n: int, seed: int, epoch: int, rank: int, world: int) -> list[int]:
    """This process's shuffled indices for an epoch: a seeded permutation, padded
    to a multiple of the world size (as DistributedSampler does), then sharded."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    pad = (-n) % world
    order += order[:pad]
    return shard(order, rank, world)
