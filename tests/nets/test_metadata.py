"""metadata.check_metadata, field by field: every range at both ends, every type refused, each
message, and what a good file declares (the spec, the decoding, the number of outputs)."""
from __future__ import annotations

import copy
import re

import pytest

from gender_age.core.checkpointing import CheckpointError
from gender_age.data import age_groups
from gender_age.faces import alignment
from gender_age.nets.metadata import check_metadata

PRE = {"resize": 72, "crop": 64, "mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.3]}
AGE_GENDER = {
    "task": "age-gender", "model_args": {"arch": "resnet18", "head": "ordinal", "num_ranks": 100, "genders": 2},
    "preprocess": PRE,
    "chips": {"mode": "aligned", "size": 72, "margin": 0.05, "template": [list(p) for p in alignment.TEMPLATE],
              "framing": {"detector": "mtcnn", "cx": 0.47, "cy": 0.36, "w": 0.98, "h": 1.26}},
    "ordinal": {"loss": "ordinal", "min_age": 1, "num_ranks": 100, "ce_mode": "expectation"},
    "classes": [str(a) for a in range(1, 101)], "genders": ["female", "male"],
    "age_groups": age_groups.parse(age_groups.DEFAULT)}
GENDER = {"task": "gender", "model_args": {"arch": "levi_hassner", "num_outputs": 2}, "preprocess": PRE,
          "classes": ["female", "male"]}


def changed(base: dict, path: str, value) -> dict:
    info = copy.deepcopy(base)
    *parents, last = path.split(".")
    d = info
    for p in parents:
        d = d[int(p)] if isinstance(d, list) else d[p]
    if value is DELETE:
        del d[last]
    elif isinstance(d, list):
        d[int(last)] = value
    else:
        d[last] = value
    return info


DELETE = object()
THREE_GENDERS = changed(AGE_GENDER, "model_args.genders", 3)


def test_a_good_age_gender_file():
    out = check_metadata(AGE_GENDER, "m.tar")
    assert out["task"] == "age-gender" and out["outputs"] == 2 + 99 and out["genders"] == ["female", "male"]
    assert out["ordinal"] == {"loss": "ordinal", "min_age": 1, "num_ranks": 100, "ce_mode": "expectation"}
    assert (out["preset"].resize, out["preset"].crop, out["preset"].mean, out["preset"].std) == \
        (72, 64, (0.5, 0.4, 0.3), (0.25, 0.2, 0.3))
    spec = out["chips"]
    assert (spec.mode, spec.size, spec.margin, spec.template) == ("aligned", 72, 0.05, alignment.TEMPLATE)
    assert (spec.framing.cx, spec.framing.cy, spec.framing.w, spec.framing.h) == (0.47, 0.36, 0.98, 1.26)
    assert out["age_groups"] == age_groups.parse(age_groups.DEFAULT) and out["classes"] == AGE_GENDER["classes"]


def test_a_good_classifier_file():
    out = check_metadata(GENDER, "g.tar")
    assert out["outputs"] == 2 and out["ordinal"] is None and out["genders"] is None and out["age_groups"] is None
    assert (out["chips"].mode, out["chips"].size, out["chips"].framing) == ("off", 72, None)  # no chips: off


@pytest.mark.parametrize("base,path,value", [
    (GENDER, "preprocess", {**PRE, "resize": 8, "crop": 8}), (GENDER, "preprocess.resize", 1024), (GENDER, "preprocess.crop", 8),
    (GENDER, "preprocess.crop", 72), (GENDER, "preprocess.resize", 72.0), (GENDER, "preprocess.mean", [-10, 0, 10]),
    (GENDER, "preprocess.std", [1e-3, 10, 1]), (GENDER, "model_args.members", 16), (GENDER, "model_args.members", 1),
    (AGE_GENDER, "ordinal.min_age", 0), (AGE_GENDER, "ordinal.min_age", 130), (AGE_GENDER, "ordinal.ce_mode", "argmax"),
    (AGE_GENDER, "ordinal.ce_mode", DELETE), (AGE_GENDER, "chips.margin", 0), (AGE_GENDER, "chips.margin", 2),
    (AGE_GENDER, "chips.framing", None), (AGE_GENDER, "chips.template.0", [0, 1]), (AGE_GENDER, "chips.template.1", [1, 0]),
    (AGE_GENDER, "chips.framing.cx", -1), (AGE_GENDER, "chips.framing.cy", 2), (AGE_GENDER, "chips.framing.w", 0.01),
    (AGE_GENDER, "chips.framing.h", 10), (AGE_GENDER, "classes", []), (AGE_GENDER, "classes", None),
    (THREE_GENDERS, "genders", ["f", "m", "x"]), (GENDER, "classes", ["x" * 200, "y"]),
])
def test_values_at_the_ends_of_each_range_are_accepted(base, path, value):
    check_metadata(changed(base, path, value), "m.tar")


def test_a_ce_mode_is_kept_only_when_declared():
    assert "ce_mode" not in check_metadata(changed(AGE_GENDER, "ordinal.ce_mode", DELETE), "m")["ordinal"]
    assert check_metadata(changed(AGE_GENDER, "ordinal.ce_mode", "argmax"), "m")["ordinal"]["ce_mode"] == "argmax"


def test_outputs_follow_the_head():
    ce = changed(changed(changed(AGE_GENDER, "ordinal.loss", "ce"), "model_args.head", "ce"), "ordinal.ce_mode", None)
    assert check_metadata(ce, "m")["outputs"] == 2 + 100
    exact = {**changed(AGE_GENDER, "task", "exact-age"), "model_args": {"arch": "r", "head": "ordinal", "num_ranks": 100}}
    assert check_metadata(exact, "m")["outputs"] == 99


@pytest.mark.parametrize("base,path,value,message", [
    (GENDER, "task", "age-groups", "task 'age-groups' is not one of gender, age, exact-age, age-gender"),
    (GENDER, "model_args", None, "no 'model_args'"),
    (GENDER, "model_args.members", 17, "model_args members must be an integer 1-16, not 17"),
    (GENDER, "model_args.members", 0, "model_args members must be an integer 1-16, not 0"),
    (GENDER, "preprocess", None, "no 'preprocess' settings (resize, crop, mean, std)"),
    (GENDER, "preprocess.resize", 7, "preprocess resize must be an integer 8-1024, not 7"),
    (GENDER, "preprocess.resize", 1025, "preprocess resize must be an integer 8-1024, not 1025"),
    (GENDER, "preprocess.resize", True, "preprocess resize must be an integer 8-1024, not True"),
    (GENDER, "preprocess.resize", 72.5, "preprocess resize must be an integer 8-1024, not 72.5"),
    (GENDER, "preprocess.resize", float("inf"), "preprocess resize must be an integer 8-1024, not inf"),
    (GENDER, "preprocess.resize", "72", "preprocess resize must be an integer 8-1024, not '72'"),
    (GENDER, "preprocess.crop", 73, "preprocess crop must be an integer 8-72, not 73"),
    (GENDER, "preprocess.crop", 7, "preprocess crop must be an integer 8-72, not 7"),
    (GENDER, "preprocess.mean", [0.5, 0.5], "preprocess mean must be 3 finite numbers in [-10, 10], not [0.5, 0.5]"),
    (GENDER, "preprocess.mean", [0, 0, 10.5], "preprocess mean must be 3 finite numbers in [-10, 10], not [0, 0, 10.5]"),
    (GENDER, "preprocess.mean", [-10.5, 0, 0], "preprocess mean must be 3 finite numbers in [-10, 10], not [-10.5, 0, 0]"),
    (GENDER, "preprocess.mean", [0, True, 0], "preprocess mean must be 3 finite numbers in [-10, 10], not [0, True, 0]"),
    (GENDER, "preprocess.mean", [0, float("nan"), 0], "preprocess mean must be 3 finite numbers in [-10, 10], not [0, nan, 0]"),
    (GENDER, "preprocess.mean", "abc", "preprocess mean must be 3 finite numbers in [-10, 10], not 'abc'"),
    (GENDER, "preprocess.std", [0.5, 0, 0.5], "preprocess std must be 3 finite numbers in [0.001, 10], not [0.5, 0, 0.5]"),
    (GENDER, "chips", {"mode": "warped"}, "chips mode must be one of off, aligned, not 'warped'"),
    (GENDER, "chips", "aligned", "chips mode must be one of off, aligned, not 'aligned'"),
    (AGE_GENDER, "chips.size", 64, "chips size 64 differs from the preprocess resize 72"),
    (AGE_GENDER, "chips.size", None, "chips size must be an integer 8-1024, not None"),
    (AGE_GENDER, "chips.framing", {"detector": "yunet", "cx": 0.5, "cy": 0.5, "w": 1, "h": 1},
     "chips framing must be null or the mtcnn box's cx, cy, w, h"),
    (AGE_GENDER, "chips.framing", [0.5, 0.5, 1, 1], "chips framing must be null or the mtcnn box's cx, cy, w, h"),
    (AGE_GENDER, "chips.framing.cx", 2.5, "chips framing centre must be 2 finite numbers in [-1, 2], not [2.5, 0.36]"),
    (AGE_GENDER, "chips.framing.cy", -1.5, "chips framing centre must be 2 finite numbers in [-1, 2], not [0.47, -1.5]"),
    (AGE_GENDER, "chips.framing.w", 0, "chips framing size must be 2 finite numbers in [0.01, 10], not [0, 1.26]"),
    (AGE_GENDER, "chips.framing.h", 11, "chips framing size must be 2 finite numbers in [0.01, 10], not [0.98, 11]"),
    (AGE_GENDER, "chips.margin", 2.5, "chips margin must be 1 finite numbers in [0, 2], not [2.5]"),
    (AGE_GENDER, "chips.margin", -0.1, "chips margin must be 1 finite numbers in [0, 2], not [-0.1]"),
    (AGE_GENDER, "chips.template", [[0.3, 0.4]] * 4, "chips template must be 5 points (x, y), not [[0.3, 0.4], [0.3, 0.4], "
                                                     "[0.3, 0.4], [0.3, 0.4]]"),
    (AGE_GENDER, "chips.template", "eyes", "chips template must be 5 points (x, y), not 'eyes'"),
    (AGE_GENDER, "chips.template.2", [0.5, 1.1], "chips template point must be 2 finite numbers in [0, 1], not [0.5, 1.1]"),
    (AGE_GENDER, "chips.template.1", [0.36, 0.48], "chips template puts the eyes at one point"),
    (AGE_GENDER, "ordinal", None, "an age-gender model needs 'ordinal' settings with a loss among ce, ordinal, coral, corn"),
    (AGE_GENDER, "ordinal.loss", "mse", "an age-gender model needs 'ordinal' settings with a loss among ce, ordinal, coral, "
                                        "corn"),
    (AGE_GENDER, "ordinal.min_age", -1, "ordinal min_age must be an integer 0-130, not -1"),
    (AGE_GENDER, "ordinal.min_age", 131, "ordinal min_age must be an integer 0-130, not 131"),
    (AGE_GENDER, "ordinal.num_ranks", 1, "ordinal num_ranks must be an integer 2-10000, not 1"),
    (AGE_GENDER, "ordinal.num_ranks", 10001, "ordinal num_ranks must be an integer 2-10000, not 10001"),
    (AGE_GENDER, "ordinal.ce_mode", "median", "ordinal ce_mode must be argmax or expectation, not 'median'"),
    (AGE_GENDER, "model_args.head", "coral", "model_args (head 'coral', num_ranks 100) differ from the ordinal settings "
                                             "(ordinal, 100)"),
    (AGE_GENDER, "model_args.num_ranks", 99, "model_args (head 'ordinal', num_ranks 99) differ from the ordinal settings "
                                             "(ordinal, 100)"),
    (AGE_GENDER, "classes", ["1", "2"], "2 class names for 100 ranks"),
    (GENDER, "classes", [], "a classifier names no classes"),
    (GENDER, "classes", ["a", "a"], "classes must be a list of distinct names (strings), not ['a', 'a']"),
    (GENDER, "classes", ["a", ""], "classes must be a list of distinct names (strings), not ['a', '']"),
    (GENDER, "classes", ["a", 2], "classes must be a list of distinct names (strings), not ['a', 2]"),
    (GENDER, "classes", "ab", "classes must be a list of distinct names (strings), not 'ab'"),
    (GENDER, "classes", ["a", "x" * 201], "classes must be a list of distinct names (strings), not ['a', '" + "x" * 52),
    (AGE_GENDER, "genders", ["female"], "genders must be a list of 2 or more distinct names (strings), not ['female']"),
    (AGE_GENDER, "genders", ["f", "f"], "genders must be a list of 2 or more distinct names (strings), not ['f', 'f']"),
    (AGE_GENDER, "genders", ["f", ""], "genders must be a list of 2 or more distinct names (strings), not ['f', '']"),
    (AGE_GENDER, "genders", ["f", "x" * 101], "genders must be a list of 2 or more distinct names (strings), not ['f', '"
                                             + "x" * 52),
    (AGE_GENDER, "genders", None, "genders must be a list of 2 or more distinct names (strings), not None"),
    (AGE_GENDER, "age_groups", [{"name": "a", "min": 0, "max": 10}, {"name": "b", "min": 10, "max": 20}],
     "age groups a and b overlap"),
    (AGE_GENDER, "model_args.genders", 3, "model_args declares 3 gender outputs, but the file names 2 genders"),
    (AGE_GENDER, "model_args.genders", DELETE, "model_args declares 0 gender outputs, but the file names 2 genders"),
    (GENDER, "model_args.genders", 2, "model_args declares 2 gender outputs, but the file names 0 genders"),
    (GENDER, "model_args.num_outputs", 3, "2 class names, but model_args declares 3 outputs (head 'linear')"),
    (GENDER, "model_args.num_outputs", DELETE, "2 class names, but model_args declares None outputs (head 'linear')"),
    (GENDER, "model_args.head", "coral", "2 class names, but model_args declares 2 outputs (head 'coral')"),
])
def test_each_unusable_field_is_named(base, path, value, message):
    info = changed(base, path, value)
    with pytest.raises(CheckpointError, match="^" + re.escape(f"m.tar has unusable metadata: {message}")):
        check_metadata(info, "m.tar")


def test_the_message_ends_with_what_to_do():
    with pytest.raises(CheckpointError, match=r"^m.tar has unusable metadata: no 'model_args'; re-export or retrain it$"):
        check_metadata(changed(GENDER, "model_args", None), "m.tar")


def test_more_ends_of_ranges():
    check_metadata(changed(GENDER, "classes", [str(i) for i in range(10_000)]) | {"model_args": {
        "arch": "levi_hassner", "num_outputs": 10_000}}, "m")
    hundred = [f"g{i}" for i in range(100)]
    check_metadata(changed(changed(AGE_GENDER, "genders", hundred), "model_args.genders", 100), "m")
    with pytest.raises(CheckpointError, match="genders must be a list of 2 or more"):
        check_metadata(changed(changed(AGE_GENDER, "genders", hundred + ["x"]), "model_args.genders", 101), "m")
    check_metadata(changed(AGE_GENDER, "genders", ["f", "m" * 100]), "m")
    eyes = changed(changed(AGE_GENDER, "chips.template.0", [0.0, 0.46]), "chips.template.1", [0.05, 0.46])
    check_metadata(eyes, "m")  # exactly 0.05 apart: enough


def test_off_chips_keep_their_size_and_framing():
    off = changed(GENDER, "chips", {"mode": "off", "size": 72,
                                   "framing": {"detector": "mtcnn", "cx": 0.5, "cy": 0.4, "w": 0.6, "h": 0.7}})
    spec = check_metadata(off, "m")["chips"]
    assert (spec.mode, spec.size, spec.margin) == ("off", 72, 0.0)
    assert (spec.framing.cx, spec.framing.cy, spec.framing.w, spec.framing.h) == (0.5, 0.4, 0.6, 0.7)
