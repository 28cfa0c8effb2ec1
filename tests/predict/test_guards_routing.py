"""Prediction routing: each model gets the squares of its whole chip spec (not of its size),
the decode pool keeps the exact-detection flag that aligned models need, ``--no-detect``
decodes for the largest model input, and a checkpoint whose head differs from its ordinal
loss is refused rather than decoded with the wrong rule."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from gender_age.core.checkpointing import CheckpointError
from gender_age.data.transforms import Preset
from gender_age.faces import alignment
from gender_age.faces.geometry import Face, Geometry
from gender_age.nets.metadata import check_metadata
from gender_age.predict import pipeline, units, workers

NARROW = alignment.ChipSpec("off", 32, framing=Geometry(0.5, 0.5, 0.8, 0.8))
WIDE = alignment.ChipSpec("off", 32, framing=Geometry(0.5, 0.5, 0.3, 0.3))


class MeanPredictor:
    """Reports the mean pixel of each square it is given."""

    def __init__(self, chips):
        self.chips = chips

    def predict(self, batch, tta):
        return [{"mean": float(np.asarray(b).mean())} for b in batch]


def square(value, size=32):
    return Image.new("RGB", (size, size), (value,) * 3)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_models_of_one_size_but_different_framings_get_their_own_squares(batch_size):
    regions = [units.Region(i, (0, 0, 1, 1), None, "detector", {NARROW: square(10 + i), WIDE: square(200 + i)})
               for i in range(3)]
    preds = {"narrow": MeanPredictor(NARROW), "wide": MeanPredictor(WIDE)}
    out = pipeline._predict_regions(regions, preds, batch_size, False)
    assert [r["narrow"]["mean"] for r in out] == [10, 11, 12]
    assert [r["wide"]["mean"] for r in out] == [200, 201, 202]


class OneFace:
    name, geometry = "mtcnn", alignment.GEOMETRY["mtcnn"]

    def detect(self, array):
        h, w = array.shape[:2]
        return [Face((w * 0.4, h * 0.4, w * 0.6, h * 0.6), float(w))]


def test_two_framings_of_one_size_cut_two_different_chips():
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8))
    [region] = units.find_regions(img, "on", OneFace(), [NARROW, WIDE], 300)
    a, b = (np.asarray(region.squares[s]) for s in (NARROW, WIDE))
    assert a.shape == b.shape == (32, 32, 3) and not np.array_equal(a, b)


def feed_args(**kw):
    base = dict(every=1, annotate=None, detect="auto", detect_size=200, min_face=0.5)
    return SimpleNamespace(**{**base, **kw})


@pytest.mark.parametrize("pool_workers", [0, 1])
@pytest.mark.parametrize("exact,side", [(True, 200), (False, 54)])
def test_the_decode_pool_keeps_the_exact_detection_flag(tmp_path, pool_workers, exact, side):
    path = tmp_path / "p.png"
    Image.new("RGB", (400, 300), (90, 120, 150)).save(path)
    feed = workers.Feed([str(path)], feed_args(), OneFace(), pool_workers, exact=exact)
    assert feed.pool.search.exact is exact
    [(meta, img, found, err)] = list(feed.results())
    # the detector saw the image at detect_size (exact) or at the size --min-face needs
    assert err is None and img.size == (400, 300) and [f.score for f in found] == [side]


@pytest.mark.parametrize("sizes", [(40, 200), (200, 40), (40, 200, 64)])
def test_no_detect_decodes_for_the_largest_model_input(tmp_path, sizes):
    path = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)).save(path)
    chips = [alignment.ChipSpec("off", s) for s in sizes]
    [unit] = list(pipeline.image_units([str(path)], "off", None, 0, True, chips))
    assert unit.error is None and min(unit.image.size) >= 200  # not a 128 px draft blown up to 200
    assert {s.size for s in unit.regions[0].squares} == set(sizes)


def ordinal_info(head="ordinal", loss="ordinal", ranks=10, head_ranks=None):
    outputs = 2 + (ranks if loss == "ce" else ranks - 1)
    return {"format": 1, "task": "age-gender", "classes": [], "preprocess": Preset(40, 32).as_dict(),
            "model_args": {"arch": "resnet18", "num_outputs": outputs, "head": head,
                           "num_ranks": head_ranks or ranks, "genders": 2},
            "ordinal": {"loss": loss, "min_age": 20, "num_ranks": ranks},
            "genders": ["female", "male"], "age_groups": [{"name": "all", "min": 0, "max": 130}]}


@pytest.mark.parametrize("loss", ["ordinal", "coral", "corn", "ce"])
def test_a_head_matching_its_loss_is_accepted(loss):
    assert check_metadata(ordinal_info(loss, loss), "m.tar")["ordinal"]["loss"] == loss


@pytest.mark.parametrize("head,loss,head_ranks", [("coral", "ordinal", None), ("ordinal", "corn", None),
                                                  ("corn", "coral", None), ("ordinal", "ordinal", 11)])
def test_a_head_that_differs_from_its_loss_is_refused(head, loss, head_ranks):
    for task in ("age-gender", "exact-age"):
        info = copy.deepcopy(ordinal_info(head, loss, head_ranks=head_ranks))
        if task == "exact-age":
            info.update(task=task, genders=None, age_groups=None)
            info["model_args"].update(genders=0, num_outputs=info["model_args"]["num_outputs"] - 2)
        with pytest.raises(CheckpointError, match="differ from the ordinal settings"):
            check_metadata(info, "m.tar")
