"""leakage.near_copies: resized or re-encoded copies of a test image are found, other images are not."""
from __future__ import annotations


import numpy as np
from PIL import Image

from gender_age.data import leakage, sources
from gender_age.data.samples import SampleSet


def photo(path, seed, size=(120, 120), fmt="PNG", quality=95, lo=0, hi=256):
    """A smooth random picture (blobs of colour, values lo to hi), like a photo at thumbnail scale."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(lo, hi, (6, 6, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
    img.save(path, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return path


def test_resized_reencoded_copy_is_dropped_and_a_different_image_kept(tmp_path):
    test = [photo(tmp_path / f"test{i}.png", seed=i) for i in range(3)]
    test.append(photo(tmp_path / "dull.png", seed=7, lo=110, hi=140))  # low contrast, mid grey
    with Image.open(test[1]) as img:  # resized and saved again as a JPEG
        img.resize((77, 77), Image.Resampling.BILINEAR).save(tmp_path / "copy.jpg", quality=70)
    other = photo(tmp_path / "other.jpg", seed=99, fmt="JPEG")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    flat = tmp_path / "flat.png"
    Image.new("RGB", (50, 50), (90, 90, 90)).save(flat)
    dull = photo(tmp_path / "dull-other.png", seed=8, lo=110, hi=140)  # another one: only the mean is alike
    train = [other, tmp_path / "copy.jpg", broken, flat, dull]
    assert leakage.near_copies(train, test) == [1]
    assert leakage.near_copies(train, []) == [] and leakage.near_copies([], test) == []


def test_the_threshold_is_inclusive(tmp_path):
    a, b = photo(tmp_path / "a.png", seed=1), photo(tmp_path / "b.png", seed=2)
    with Image.open(a) as img:  # the same picture, a little changed
        arr = np.asarray(img).astype(np.int16)
    arr[:40] = np.clip(arr[:40] + 40, 0, 255)
    Image.fromarray(arr.astype(np.uint8)).save(tmp_path / "c.png")
    r = float(leakage.thumbnail(tmp_path / "c.png") @ leakage.thumbnail(a))
    assert 0.5 < r < 0.999
    train = [tmp_path / "c.png"]
    assert leakage.near_copies(train, [a, b], threshold=r) == [0]           # equal to the threshold: a copy
    assert leakage.near_copies(train, [a, b], threshold=r + 1e-4) == []     # just below it: kept


def test_block_products_match_one_product(tmp_path, monkeypatch):
    test = [photo(tmp_path / f"t{i}.png", seed=i) for i in range(2)]
    train = [photo(tmp_path / f"r{i}.png", seed=i % 4) for i in range(7)]  # r0, r1, r4, r5 copy t0, t1
    whole = leakage.near_copies(train, test)
    monkeypatch.setattr(leakage, "BLOCK", 2)
    assert leakage.near_copies(train, test) == whole == [0, 1, 4, 5]


def test_select_drops_near_copies_and_says_how_many(tmp_path):
    test = [photo(tmp_path / "t.png", seed=5)]
    with Image.open(test[0]) as img:
        img.resize((90, 90)).save(tmp_path / "near.jpg", quality=80)
    (tmp_path / "same.png").write_bytes(test[0].read_bytes())
    train = [str(photo(tmp_path / "x.png", seed=6)), str(tmp_path / "near.jpg"), str(tmp_path / "same.png")]
    said = []
    kept = sources.drop_test_copies(SampleSet(train, [0, 1, 2], ["a"]), SampleSet([str(test[0])], [0], ["a"]),
                                    said.append)
    assert kept.paths == train[:1] and kept.targets == [0]
    assert said == ["sources: dropped 1 training image(s) whose content equals a test image's and 1 near-copies "
                    "of a test image (thumbnail correlation >= 0.99)"]
