"""Combine checkpoints of one design, trained apart, into one checkpoint that averages their outputs.

    python gender_age_classifier.py --task age-gender --checkpoint-dir runs/a                             # member 1
    python gender_age_classifier.py --task age-gender --checkpoint-dir runs/b --seed 1 --split-seed 0     # member 2
    python ensemble.py runs/a/model_best.tar runs/b/model_best.tar -o runs/ab/model_best.tar
    python gender_age_classifier.py --test-only --eval-split val --resume runs/ab/model_best.tar
    python predict.py photo.jpg --checkpoint runs/ab/model_best.tar

The result is an ordinary checkpoint of ``models.Ensemble`` (``model_args`` with ``members``):
``--test-only`` (with ``--tta`` and ``--eval-split val``), predict.py and export.py take it like
any other, at the members' cost per image added up. Its logits are the mean of the members'.

The members must declare the same network, decoding and face chips (task, classes, genders, age
groups, preprocessing, ordinal head, ``model_args``) and must have held out the same images: their
data fingerprints (every split's files and labels) must be equal, which runs on the same data with
the same ``--split-seed`` (default: ``--seed``) and ``--val-split`` give. Otherwise the ensemble's
validation figures would count images that a member trained on. Vary ``--seed`` (initialisation,
batch order, augmentation) and keep ``--split-seed``.

Nothing is replaced: the output must not exist (``--overwrite`` replaces an earlier file, never a
member), and it is written atomically. An ensemble cannot be resumed or fine-tuned (``--init-from``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from gender_age.core.checkpointing import CheckpointError, atomic_torch_save, check_trainable
from gender_age.core.images import file_digest
from gender_age.nets.metadata import check_metadata
from gender_age.predict.torch_backend import Predictor
from gender_age.data.samples import split_seed

# what every member must declare alike: the network, its decoding and the faces it takes
SAME = ("task", "classes", "model_args", "preprocess", "chips", "ordinal", "genders", "age_groups")
# what is carried from the first member: the run's settings and sources (--test-only takes the data and the
# seeds from them); the data fingerprint stands for the data itself, wherever its folders lie
CARRIED = SAME + ("format", "args", "data", "sources")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Average the outputs of checkpoints trained apart: one checkpoint.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("members", nargs="+", help="two or more .tar checkpoints of this toolkit (model_best.tar)")
    p.add_argument("-o", "--output", required=True, help="the ensemble's .tar checkpoint (must not exist)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output (never a member)")
    return p


def _declared(ckpt: dict, key: str) -> str:
    return json.dumps(ckpt.get(key), sort_keys=True)


def check_members(paths: list[Path], ckpts: list[dict]) -> None:
    """CheckpointError unless every member is one network of the first's design, on its data split."""
    first, path0 = ckpts[0], paths[0]
    for path, ckpt in zip(paths, ckpts):
        check_trainable(ckpt, path, "a member of another ensemble")
        differ = [k for k in SAME if _declared(ckpt, k) != _declared(first, k)]
        if differ:
            raise CheckpointError(f"{path} and {path0} differ in {', '.join(differ)}: an ensemble's members must "
                                  f"be the same network on the same labels and faces (vary --seed only)")
        if not isinstance(ckpt.get("data"), dict) or not isinstance(ckpt.get("args"), dict):
            raise CheckpointError(f"{path} does not record its data splits (an older checkpoint): retrain it")
        if ckpt["data"] != first["data"]:
            ran = [(split_seed(argparse.Namespace(**c["args"])), c["args"].get("val_split")) for c in (first, ckpt)]
            raise CheckpointError(f"{path} and {path0} held out different images (split seed and --val-split "
                                  f"{ran[1][0]}, {ran[1][1]} against {ran[0][0]}, {ran[0][1]}, or other data): "
                                  f"train the members with one --split-seed on the same data")


def combine(paths: list[Path], ckpts: list[dict]) -> dict:
    """The ensemble's checkpoint: the first member's settings, ``members`` in model_args, every member's
    evaluation weights (model_state) under ``members.I.``, and where each came from."""
    out = {k: ckpts[0][k] for k in CARRIED if k in ckpts[0]}
    out["model_args"] = {**ckpts[0]["model_args"], "members": len(ckpts)}
    out["model_state"] = {f"members.{i}.{name}": tensor for i, ckpt in enumerate(ckpts)
                          for name, tensor in ckpt["model_state"].items()}
    out["epoch"] = [ckpt.get("epoch") for ckpt in ckpts]  # each member's chosen epoch
    out["best"] = {"members": [ckpt.get("best") for ckpt in ckpts]}  # how each was chosen on validation
    out["ensemble"] = [{"file": str(path), "blake2b": file_digest(path), "epoch": ckpt.get("epoch"),
                        "seed": ckpt["args"].get("seed")} for path, ckpt in zip(paths, ckpts)]
    return out


def main(args) -> Path:
    """Check the members and the ensemble's metadata, then write it; its path."""
    paths, out = [Path(m) for m in args.members], Path(args.output)
    if len(paths) < 2:
        raise CheckpointError("an ensemble needs two or more member checkpoints")
    if len({p.resolve() for p in paths}) < len(paths):
        raise CheckpointError("a member is listed twice: an ensemble of copies only costs time")
    if out.suffix != ".tar":
        raise CheckpointError(f"output {out} must end in .tar, as the toolkit's checkpoints do")
    if out.exists() and (not args.overwrite or out.resolve() in {p.resolve() for p in paths}):
        raise CheckpointError(f"{out} exists: choose another --output" +
                              ("" if args.overwrite else " or replace it with --overwrite"))
    # each member loaded as predict.py would: metadata, finite weights, its network, one probe image
    ckpts = [Predictor(p, torch.device("cpu")).ckpt for p in paths]
    check_members(paths, ckpts)
    ensemble = combine(paths, ckpts)
    check_metadata(ensemble, out)  # the members loaded strictly, so their prefixed weights fit models.Ensemble
    atomic_torch_save(ensemble, out)
    return out


def cli(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        out = main(args)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.strerror or e}: {e.filename or args.output}", file=sys.stderr)
        return 2
    print(f"wrote {out}: an ensemble of {len(args.members)} networks")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
