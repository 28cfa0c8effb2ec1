"""Who is in the data: UTKFace race and age bands."""
from __future__ import annotations

from gender_age.data import strata


def test_race_and_age_band_of_a_name():
    assert [strata.utkface_race(f"x/29_1_{r}_2017.jpg.chip.jpg") for r in range(5)] == list(strata.RACES)
    assert strata.utkface_race("39_1_20170116174525125.jpg") is None  # no race field
    assert strata.utkface_race("29_1_5_2017.jpg") is None
    assert [strata.age_band(a) for a in (0, 12, 13, 20, 21, 40, 41, 60, 61, 116, "", None)] == \
        ["0-12", "0-12", "13-20", "13-20", "21-40", "21-40", "41-60", "41-60", "61+", "61+", "unknown", "unknown"]
