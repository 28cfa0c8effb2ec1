"""Training: losses, tasks and their metrics, one epoch (engine), the loop, checkpoints and
final test (trainer), the run folder, the run configuration (config, run_setup), reports and
plots, the face-chip cache, pretrained starts, and the training CLI (cli). Imports core, faces,
data and nets; nothing in the package imports it."""
