"""The data, under the original project's module name (a clone's public entry point).

* ``scan_image_folder(root)``: an ImageFolder tree (one folder per class) as a ``SampleSet``;
* ``select_samples(args, task)``: a run's train, validation and test samples for any task
  (ImageFolder trees, UTKFace, CSV files of ages, IMDB-WIKI names; ``sources.select`` for
  ``--task age-gender``);
* ``CachedImages`` / ``StreamingImages``: decoded images in memory, or decoded every epoch;
* ``Preset``: the crops, flips and normalisation of training and evaluation, on tensors.

They live in ``gender_age.data``: samples (labels and splits), sources, selection, loading
and transforms.
"""
from gender_age.data import sources
from gender_age.data.loading import CachedImages, StreamingImages, iterate_batches
from gender_age.data.samples import TASK_DATA, SampleSet, scan_image_folder, stratified_split
from gender_age.data.selection import Selection, select_samples
from gender_age.data.transforms import Preset

__all__ = ["CachedImages", "Preset", "SampleSet", "Selection", "StreamingImages", "TASK_DATA", "iterate_batches",
           "scan_image_folder", "select_samples", "sources", "stratified_split"]
