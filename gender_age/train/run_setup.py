"""The parts of a training run, built from its settled arguments: runtime
(device, processes, threads), input preset, decoded data, task and network.
gender_age_classifier.main wires them together.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gender_age.data import loading
from gender_age.data import selection
from gender_age.data import transforms
from gender_age.train import losses
from gender_age.core.checkpointing import check_finite_weights, load_checkpoint, transfer_weights
from gender_age.nets.models import build_model, default_input_geometry, output_bias, output_layer_names
from gender_age.core.runtime import bf16_is_fast, configure_threads, init_distributed, progress_mode, resolve_device
from gender_age.train import chip_cache
from gender_age.train.pretrained import check_pretrained, load_pretrained
from gender_age.data.samples import MISSING
from gender_age.train.tasks import AgeGenderTask, ClassificationTask, OrdinalTask


def make_preset(args) -> transforms.Preset:
    resize, crop = default_input_geometry(args.arch)
    preset = transforms.Preset(args.resize or resize, args.crop or crop)
    if preset.crop > preset.resize:
        raise selection.DatasetError(f"--crop {preset.crop} is larger than --resize {preset.resize}")
    if args.arch == "levi_hassner" and preset.crop != 227:
        raise selection.DatasetError("the Levi-Hassner network takes 227x227 inputs: use --crop 227")
    return preset


def load_data(sel: selection.Selection, preset: transforms.Preset, mode: str, env: dict, args, out: Path, load=None):
    """Decode (or check) the three splits; report unreadable images. -> (train, val, test)."""
    rank, log = env["rank"], env["log"]
    progress = progress_mode(args.no_progress, rank)
    split = lambda samples: selection.build_split(samples, preset, mode, env["workers"], progress, rank, env["world"], load)
    train_data, bad = split(sel.train)
    test_data, bad_test = split(sel.test)
    val_data, bad_val = split(sel.val) if sel.val else (test_data, [])
    bad_all = bad + bad_val + bad_test
    if rank == 0:
        loading.report_bad(bad_all, out, args.strict, log)
        if bad_all:
            log(f"images used: train {len(train_data)}, val {len(val_data) if sel.val else '(test)'}, "
                f"test {len(test_data)}")
    elif bad_all and args.strict:
        raise selection.DatasetError("unreadable images (see rank 0)")
    if len(train_data) == 0:
        raise selection.DatasetError("no readable training images")
    if args.task not in ("exact-age", "age-gender") and len(set(train_data.targets.tolist())) < 2:
        raise selection.DatasetError(f"fewer than 2 classes have readable training images in {sel.train.root}")
    return train_data, val_data, test_data


def age_ranks(train_targets: torch.Tensor | None) -> torch.Tensor | None:
    """The training age ranks: the targets of exact age, the known age column of age-gender's (N, 4)."""
    if train_targets is None or train_targets.dim() == 1:
        return train_targets
    return train_targets[train_targets[:, 1] != MISSING, 1]


def group_ranks(groups: list[dict], min_age: int, num_ranks: int) -> torch.Tensor:
    """Age groups ({"min", "max"} in years) -> (groups, 2) long: each one's first and last rank,
    clipped to the ranks the head has (a group past the oldest age is the top rank)."""
    return torch.tensor([[g["min"] - min_age, g["max"] - min_age] for g in groups],
                        dtype=torch.long).reshape(-1, 2).clamp(0, num_ranks - 1)


def make_task(args, name: str, classes: list, train_targets: torch.Tensor | None, label_names: dict | None = None):
    """-> (task, model_args): the loss and metrics, and the network's arguments."""
    if name in ("exact-age", "age-gender"):
        k, ranks = len(classes), age_ranks(train_targets)
        weights = losses.task_importance_weights(ranks, k) if args.imp_weight and ranks is not None else None
        task = OrdinalTask(args.loss, k, int(classes[0]), weights, args.ce_mode)
        model_args = {"arch": args.arch, "num_outputs": losses.head_output_size(args.loss, k),
                      "dropout": args.dropout, "head": args.loss, "num_ranks": k}
        if name == "exact-age":
            return task, model_args
        genders = label_names["genders"]
        model_args.update(genders=len(genders), num_outputs=len(genders) + model_args["num_outputs"])
        return AgeGenderTask(genders, task, args.gender_weight, args.age_weight,
                             group_ranks(label_names["age_groups"], task.min_age, k)), model_args
    task = ClassificationTask(classes, args.label_smoothing)
    return task, {"arch": args.arch, "num_outputs": len(classes), "dropout": args.dropout}


def make_model(args, model_args: dict, task, classes: list, train_targets, device, log) -> nn.Module:
    """The network, from --init-from or random weights, with the prior bias for exact age."""
    model = build_model(**model_args).to(device)
    if args.init_from:
        source = load_checkpoint(args.init_from)
        check_finite_weights(source["model_state"], args.init_from)
        fresh = transfer_weights(model, source, args.init_from, args.arch, classes, output_layer_names(model))
        log(f"initialised from {args.init_from} ({source.get('task')}, classes {source.get('classes')}); "
            f"own initialisation kept for: {', '.join(sorted(fresh)) or 'nothing'}")
    if args.pretrained and args.resume:
        log(f"pretrained: {args.pretrained} not loaded again, the resumed checkpoint's weights replace it")
    elif args.pretrained:
        log(load_pretrained(model, args.pretrained, args.arch))
    if task.kind != "classification" and args.bias_init == "prior":
        with torch.no_grad():
            output_bias(model).copy_(losses.prior_bias(args.loss, age_ranks(train_targets), task.k))
    # channels_last: measured 41 vs 29 img/s for a CPU training step here (oneDNN
    # prefers NHWC), and the usual win on CUDA tensor cores
    return model.to(memory_format=torch.channels_last)


def preflight(args, source: Path | None) -> None:
    """What a run needs besides its data, checked before any image is read (minutes before the
    network starts): the --pretrained weights of a new run (fetched now when online), MTCNN for
    aligned face chips. One-line errors that name what works."""
    if source is None and not args.test_only:
        check_pretrained(args.pretrained, args.arch)
    if args.face_chips == "aligned":
        chip_cache.check_detector()


def start_runtime(args) -> dict:
    """Device, processes, threads and decode workers of this run."""
    device = resolve_device(args.device)
    if args.amp is None:
        args.amp = bf16_is_fast(device)
    rank, world = init_distributed(device)
    default_workers = configure_threads(args.threads, world)
    return {"device": device, "rank": rank, "world": world,
            "workers": default_workers if args.workers is None else args.workers,
            "log": print if rank == 0 else (lambda *a, **k: None)}


def describe_run(name: str, sel: selection.Selection, preset: transforms.Preset, mode: str, why: str, args, env) -> str:
    what = f"ages {sel.classes[0]}-{sel.classes[-1]} ({len(sel.classes)} ranks), loss {args.loss}" \
        if name != "gender" and name != "age" else f"{len(sel.classes)} classes {sel.classes}"
    if name == "age-gender":
        what += f", genders {sel.label_names['genders']}, sources " + \
            " ".join(f"{s['kind']}={s['dir']}" for s in sel.label_names["sources"])
    if getattr(args, "test_only", False):
        split = "validation" if getattr(args, "eval_split", "test") == "val" else "test"
        splits = f"evaluating the {split} split, {len(sel.test)} images"
    else:
        splits = f"train {len(sel.train)}, val {len(sel.val) if sel.val else '(test)'}, test {len(sel.test)}"
    return (f"{name}: {what}; {args.arch} {preset.crop}x{preset.crop}; {splits}; "
            f"data: {mode} ({why}); device {env['device']}{' bf16' if args.amp else ''}, "
            f"{env['world']} process(es), {torch.get_num_threads()} threads each")


def base_context(name: str, task, classes: list, preset: transforms.Preset, mode: str, model_args: dict, env) -> dict:
    """What evaluation needs to know about the run (training adds its own entries)."""
    return {"task_name": name, "task": task, "classes": classes, "device": env["device"], "preset": preset,
            "rank": env["rank"], "world": env["world"], "workers": env["workers"] if mode == "stream" else 0,
            "model_args": model_args, "num_outputs": model_args["num_outputs"], "channels_last": True}
