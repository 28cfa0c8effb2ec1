"""A gender tree's labels come from each image's own folder: an image under female/ is female
and one under male/ is male, even where both folders hold the same file name. The IMDB-WIKI age
in a training image's name is not trained on (the shipped trees were picked by age)."""
from __future__ import annotations

from pathlib import Path

from gender_age.data import sources
from gender_age.data.samples import MISSING
from helpers import make_sources, source_args


def test_gender_tree_images_take_their_own_folders_gender(tmp_path):
    d = make_sources(tmp_path)
    train, val, *_ = sources.select(source_args(d), log=lambda *_: None)
    by_folder = {(Path(p).parent.name, Path(p).name): t
                 for s in (train, val) for p, t in zip(s.paths, s.targets)}
    for gender, folder in enumerate(("female", "male")):
        named = [t for (f, n), t in by_folder.items() if f == folder and n.endswith("_1990-03-01_2015.jpg")]
        assert named and all(t == (gender, MISSING, 1, MISSING) for t in named), (folder, named)
