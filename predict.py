"""Predict gender, age group and exact age for every face in photos and videos:
the original project's ``python predict.py [-a]``.

The command lives in ``gender_age.predict.cli`` (installed as ``gac-predict``);
this file keeps the original's name working from a clone.
"""
import sys

from gender_age.predict.cli import cli, get_args_parser, main  # noqa: F401 (the original's entry points)

if __name__ == "__main__":
    sys.exit(cli())
