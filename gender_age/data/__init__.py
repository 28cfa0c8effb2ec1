"""The data: samples, labels and splits (samples), sources of an age-gender run (sources), age
groups (age_groups), which samples a run uses (selection), loading and batching (loading), and
preprocessing (presets: numpy, transforms: tensors). Imports gender_age.core only."""
