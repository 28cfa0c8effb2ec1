"""Who is in the data: UTKFace's race field and age bands, the groups that the per-group
figures report (train/report)."""
from __future__ import annotations

from pathlib import Path

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
