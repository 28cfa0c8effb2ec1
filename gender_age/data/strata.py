"""Who is in the data: UTKFace's race field and age bands, the groups that per-group figures
report (train/report) and that ``--sampling balanced`` draws evenly (``balanced_weights``)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import torch

from gender_age.data.samples import MISSING

RACES = ("White", "Black", "Asian", "Indian", "Others")  # UTKFace's third name field, 0-4
AGE_BANDS = ((0, 12, "0-12"), (13, 20, "13-20"), (21, 40, "21-40"), (41, 60, "41-60"), (61, 10 ** 6, "61+"))


def utkface_race(path: str) -> str | None:
    """'29_1_3_20170104235317706.jpg.chip.jpg' -> 'Indian'; None without a race field."""
    fields = Path(str(path)).name.strip().split("_")
    if len(fields) < 4 or fields[2] not in ("0", "1", "2", "3", "4"):
        return None
    return RACES[int(fields[2])]


def age_band(age) -> str:
    if age == "" or age is None:
        return "unknown"
    return next(name for lo, hi, name in AGE_BANDS if age <= hi)


def balanced_weights(paths: Sequence[str], targets: torch.Tensor, min_age: int,
                     utkface_sources: set) -> torch.Tensor:
    """Age-gender training images -> a drawing weight each, 1 / sqrt(size of its stratum).

    A stratum is (source, race, gender, age band): race from the name of an image of a source in
    ``utkface_sources`` (None for other sources), gender and age from the targets (gender, rank, source, group), rank + min_age the age.
    Square-root inverse frequency: a stratum 4x smaller is drawn 2x more often per image.
    targets: (N, 4) long. Out: (N,) float64, summing to N.
    """
    keys = [(source, utkface_race(path) if source in utkface_sources else None, g,
             age_band(rank + min_age if rank != MISSING else None))
            for path, (g, rank, source, _) in zip(paths, targets.tolist())]
    sizes = Counter(keys)
    w = torch.tensor([sizes[k] ** -0.5 for k in keys], dtype=torch.float64)
    return w * (len(w) / w.sum())
