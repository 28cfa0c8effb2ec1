"""Age groups: the text a user writes, the stored list a checkpoint declares (every way it can be
malformed), and the ranges a model can put a face in, each with its one-line message."""
from __future__ import annotations

import pytest

from gender_age.data import age_groups as ag

GOOD = [{"name": "young", "min": 0, "max": 38}, {"name": "old", "min": 39, "max": 130}]
SHAPE = "age groups must be a list of {name, min, max}"


@pytest.mark.parametrize("stored", [
    "young=0-38", [], [dict(GOOD[0])] * 101, [None], [{"min": 0, "max": 3}], [{"name": "", "min": 0, "max": 3}],
    [{"name": "x" * 101, "min": 0, "max": 3}], [{"name": 7, "min": 0, "max": 3}], [{"name": "a", "min": 0.5, "max": 3}],
    [{"name": "a", "min": 0, "max": "3"}], [{"name": "a", "max": 3}], [{"name": "a", "min": 4, "max": 3}]])
def test_a_malformed_stored_list_is_refused_naming_its_shape(stored):
    with pytest.raises(ag.AgeGroupError, match="^" + SHAPE.replace("{", r"\{").replace("}", r"\}")):
        ag.check(stored)


def test_a_well_formed_stored_list_is_taken_as_a_copy():
    taken = ag.check(GOOD)
    assert taken == GOOD and taken[0] is not GOOD[0]
    assert ag.check([{"name": "a", "min": 3, "max": 3}, {"name": "b" * 100, "min": 4, "max": 5}])
    assert ag.check([{"name": "all", "min": 0, "max": 130}]) == [{"name": "all", "min": 0, "max": 130}]
    assert len(ag.check([{"name": f"g{i}", "min": i, "max": i} for i in range(100)])) == 100


def test_names_are_distinct_whatever_their_case_and_ranges_do_not_overlap():
    with pytest.raises(ag.AgeGroupError, match="^age group names must be distinct"):
        ag.check([{"name": "Young", "min": 0, "max": 3}, {"name": "young", "min": 4, "max": 9}])
    with pytest.raises(ag.AgeGroupError, match="^age groups a and b overlap$"):
        ag.check([{"name": "b", "min": 5, "max": 9}, {"name": "a", "min": 0, "max": 5}])


@pytest.mark.parametrize("text", ["", "young", "young=", "=0-3", "young=a-3", "young=5-3", "young=-1-3", "young=3",
                                  "a=b=0-3"])
def test_bad_text_says_how_to_write_a_group(text):
    with pytest.raises(ag.AgeGroupError) as e:
        ag.parse(text)
    assert str(e.value) == (f"age group {text!r}: write NAME=LO-HI (or NAME=LO- for no upper bound), "
                            f"for example {ag.DEFAULT}")


def test_groups_outside_a_range_at_its_boundaries():
    groups = ag.parse("a=0-20,b=21-21,c=60-60,d=61-")
    assert [g["name"] for g in ag.outside(groups, 21, 60)] == ["a", "d"]  # touching a bound is inside
    assert ag.outside(groups, 0, 130) == []
    ag.check_within(groups[1:3], 21, 60)
    with pytest.raises(ag.AgeGroupError) as e:
        ag.check_within(groups, 21, 60)
    assert str(e.value) == ("age group a=0-20 lies outside the ages 21-60 that the model predicts, so no face can "
                            "ever be put in it: use groups within 21-60")


def test_describe():
    assert ag.describe(ag.parse("young=0-38,old=39-")) == "young 0-38, old 39-130"
    assert ag.describe([{"name": "kid", "min": 0, "max": 12}]) == "kid 0-12"
