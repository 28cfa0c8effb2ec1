"""Train a gender, age-group, exact-age or gender-and-age network: the original
project's command, ``python gender_age_classifier.py [-a] [-b 64] [-ep 64] [-sgd]``.

The command lives in ``gender_age.train.cli`` (installed as ``gac-train``); this
file keeps the original's name working from a clone.
"""
import sys

from gender_age.train.cli import cli, get_args_parser, main  # noqa: F401 (the original's entry points)

if __name__ == "__main__":
    sys.exit(cli())
