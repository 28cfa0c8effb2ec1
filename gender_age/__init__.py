"""gender_age: train and run face gender, age-group and exact-age models.

Subpackages, each importing only those listed after "imports" (tests/test_packaging.py):

* ``core``: image decoding, checkpoint files, the runtime (device, threads, bf16, torchrun);
  imports nothing else of the package.
* ``faces``: face geometry, detectors (YuNet, MTCNN, Haar), chips, videos, drawing; imports core.
* ``data``: samples and labels, sources, age groups, presets, selection, loading; imports core.
* ``nets``: the networks, ordinal heads and decoding, model metadata checks; imports core, faces, data.
* ``train``: losses, tasks, the training loop, run folders, configuration, reports, the chip
  cache, the training CLI; imports the layers below.
* ``predict``: one predictor interface (torch and ONNX backends), inputs, the decode pool,
  records and annotation, predict.py's CLI; imports the layers below, never train.
* ``tools``: export to ONNX, ensembles; imports predict and the layers below, never train.
"""
