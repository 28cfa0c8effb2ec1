"""The run around the epochs: checkpoint policy, model selection, resume,
interrupts, and the final test of the chosen model.

Files of a run (in its checkpoint folder): checkpoint<epoch>.tar,
checkpoint_last.tar, model_best.tar (the best validation metric, ties broken
by validation loss), loss.png, performance.png (and mae.png for exact age),
metrics.jsonl, and after the final test test_results.json with
confusion.png, or test_predictions.csv with test_scatter.png.
"""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path
import torch
from gender_age.train import report as age_gender_report
from gender_age.nets import heads as losses
from gender_age.train import plots
from gender_age.train import run_folder
from gender_age.core.checkpointing import CHECKPOINT_FORMAT, CheckpointError, atomic_torch_save, atomic_write_text, expect, load_checkpoint
from gender_age.train.engine import Stopper, StopRequested, ema_steps, evaluate, refuse_non_finite, restore_ema, train_one_epoch
from gender_age.core.runtime import all_gather_objects, barrier

# the results key of each evaluated split ("val" already holds the figures the checkpoint was chosen by)
SPLIT_KEYS = {"test": "test", "val": "validation"}


def plain_args(args) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def make_checkpoint(model, optimizer, scheduler, state, history, ctx, args) -> dict:
    raw = model.module if hasattr(model, "module") else model
    task, ema = ctx["task"], ctx["ema"]
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "task": ctx["task_name"],
        "classes": list(ctx["classes"]),
        "model_args": dict(ctx["model_args"]),
        "preprocess": ctx["preset"].as_dict(),
        "chips": ctx.get("chips"),  # how faces are cut for this model (faces.ChipSpec.as_dict)
        # model_state is what evaluation and predict.py use: the averaged weights when
        # --ema-epochs is on, and then train_state holds the raw ones to resume from
        "model_state": {k: v.detach().cpu() for k, v in (ema.module if ema else raw).state_dict().items()},
        "optimizer_state": optimizer.state_dict(),
        "scheduler_state": scheduler.state_dict(),
        # epoch: completed epochs; progress: where the epoch in flight stands
        "epoch": state["epoch"],
        "progress": {k: state[k] for k in ("epoch", "next_batch", "running")},
        "iter_losses": list(state["iter_losses"]),
        "history": history,
        "best": dict(ctx["best"]),
        "rng": {"torch": torch.get_rng_state(), "aug": ctx["aug_gen"].get_state()},
        "args": plain_args(args),
        "metrics": history[-1] if history else {},
        "data": ctx.get("data_fingerprint"),  # resume refuses other data (run_folder.check_resume)
        "timing": run_timing(ctx),  # the run's seconds so far: a resumed run's time counts them too
    }
    if ema is not None:
        ckpt["train_state"] = {k: v.detach().cpu() for k, v in raw.state_dict().items()}
        ckpt["ema_steps"] = ema_steps(ema)
    if task.kind != "classification":
        ckpt["ordinal"] = {"loss": task.loss_name, "min_age": task.min_age, "num_ranks": task.k,
                           "ce_mode": task.ce_mode}
    if task.kind == "age-gender":  # what predict.py names: the gender logits, the groups of the age
        names = ctx["label_names"]
        ckpt.update(genders=list(names["genders"]), age_groups=list(names["age_groups"]),
                    sources=list(names["sources"]))
    return ckpt


def run_timing(ctx) -> dict:
    """The run's wall seconds so far (total_s) and those spent on face chips (chips_s), over every
    process of the run: the ones that --resume continued count up to their last checkpoint (the
    time a killed process spent after it is not counted; that work is done again)."""
    t = ctx["timing"]
    return {"total_s": t.get("before_total_s", 0.0) + time.perf_counter() - t["started"],
            "chips_s": t.get("before_chips_s", 0.0) + t["chips_s"]}


def restore_timing(ckpt: dict, path: Path, ctx) -> None:
    """--resume: the checkpoint's run time (none before this was recorded: 0) is added to this process's."""
    before = ckpt.get("timing") or {}
    try:
        total, chips = (float(before.get(k, 0.0)) for k in ("total_s", "chips_s"))
    except (AttributeError, TypeError, ValueError):
        raise CheckpointError(f"{path}: its timing is not seconds ({before!r})") from None
    if not (0 <= chips <= total < float("inf")):
        raise CheckpointError(f"{path}: its timing is not seconds ({before!r})")
    ctx["timing"].update(before_total_s=total, before_chips_s=chips)


def write_outputs(ckpt: dict, out: Path, ctx) -> None:
    """Plots and the metrics log: rewritten atomically after each evaluation."""
    hist, name = ckpt["history"], ctx["task_name"]
    plots.write_jsonl(hist, out / "metrics.jsonl")
    if ckpt["iter_losses"]:
        plots.plot_loss(ckpt["iter_losses"], out / "loss.png", f"{name}: training loss")
    if ctx["task"].kind != "classification":
        plots.plot_curves(hist, {"train_mae": "train (running, augmented)", "val_mae": "validation"},
                          out / "mae.png", "MAE (years)", f"{name}: mean absolute error")
    if ctx["task"].kind == "ordinal":
        plots.plot_curves(hist, {"train_cs5": "train CS@5", "val_cs5": "validation CS@5"},
                          out / "performance.png", "share within 5 years", f"{name}: CS@5")
    else:
        plots.plot_curves(hist, {"train_acc": "train (running, augmented)", "val_acc": "validation"},
                          out / "performance.png", "accuracy", f"{name}: accuracy")


def validate(model, val_data, record: dict, args, ctx) -> tuple[bool, str]:
    """Evaluate the weights that are kept (the EMA's when there is one) on validation, add
    the figures to the epoch's ``record`` and keep ctx["best"]; (is it the best, its log text)."""
    task, metric, epoch_no = ctx["task"], ctx["task"].select_metric, record["epoch"]
    val = evaluate(ctx["ema"].module if ctx["ema"] else model, val_data, args, ctx)
    record.update({f"val_{k}": v for k, v in val.items() if k not in ("confusion", "n")})
    is_best = task.is_better(val[metric], ctx["best"]["value"], val["loss"], ctx["best"].get("loss"))
    if is_best:
        ctx["best"] = {"value": val[metric], "metric": metric, "epoch": epoch_no, "loss": val["loss"]}
    return is_best, f" | val {task.describe(val)}{' (best)' if is_best else ''}"


def train_loop(model, optimizer, scheduler, train_data, val_data, state, history, ctx, args, out, log):
    stopper = ctx["stopper"]
    stopper.install()
    rank = ctx["rank"]

    def save(path_names):
        ranks = all_gather_objects(rank_state(state, ctx))  # every process takes part
        if rank != 0:
            return None
        ckpt = make_checkpoint(model, optimizer, scheduler, state, history, ctx, args)
        ckpt["ranks"] = ranks
        refuse_non_finite(ckpt)  # a diverged run saves nothing: the last good files stay
        atomic_torch_save(ckpt, *(out / fname for fname in path_names))
        run_folder.drop_stale(ctx, path_names)
        return ckpt

    try:
        while state["epoch"] < args.epochs:
            e = state["epoch"]
            if state["next_batch"] == 0:
                # per-epoch reseed: dropout and augmentation draws depend only on (seed, epoch)
                torch.manual_seed(args.seed * 1_000_003 + e * 101 + ctx["rank"])
                ctx["aug_gen"].manual_seed(args.seed * 7919 + e * 31 + ctx["rank"])
            lr = optimizer.param_groups[-1]["lr"]
            stats = train_one_epoch(model, optimizer, scheduler, train_data, state, args, ctx)
            if args.schedule == "step":
                scheduler.step()
            epoch_no = e + 1
            record = {"epoch": epoch_no, "lr": lr, **stats}
            last = epoch_no == args.epochs
            is_best, val_desc = False, ""
            if epoch_no % args.eval_every == 0 or last:
                is_best, val_desc = validate(model, val_data, record, args, ctx)
            train_desc = " ".join(f"{k[6:]} {v:.4f}" for k, v in stats.items()
                                  if k.startswith("train_") and k[6:] in ("loss", "acc", "mae"))
            log(f"epoch {epoch_no:3d}/{args.epochs}: train {train_desc}{val_desc} | lr {lr:.2e} | "
                f"{stats['images_per_s']:.0f} img/s")  # one line per epoch, evaluated or not
            history.append(record)
            state.update(epoch=epoch_no, next_batch=0, running=None)
            # write order matters for kill -9: model_best before checkpoint_last (a resume
            # from an older last re-runs the epoch and rewrites the same best), and
            # checkpoint_last before checkpoint<N> (so last is never older than any N)
            names = ["model_best.tar"] if is_best else []
            if epoch_no % args.save_every == 0 or last:
                names += ["checkpoint_last.tar", f"checkpoint{epoch_no}.tar"]
            if names:
                ckpt = save(names)
                if ckpt is not None and (epoch_no % args.eval_every == 0 or last):
                    write_outputs(ckpt, out, ctx)
    except (StopRequested, KeyboardInterrupt):
        ckpt = save(["checkpoint_last.tar"])
        if ckpt is not None:
            write_outputs(ckpt, out, ctx)
        log(f"stopped by {stopper.signal or 'SIGINT'}: state saved to {out / 'checkpoint_last.tar'} "
            f"(epoch {state['epoch'] + 1}, batch {state['next_batch']}); continue with --resume")
        raise SystemExit(130)
    finally:
        stopper.restore()
    if rank == 0 and not (out / "model_best.tar").exists():
        raise CheckpointError("no model_best.tar was written (no evaluation ran)")


def rank_state(state: dict, ctx) -> dict:
    """What differs between processes: the running statistics of the epoch in
    flight and the random generators (CPU, augmentation, and the GPU's)."""
    mine = {"running": state["running"], "torch": torch.get_rng_state(), "aug": ctx["aug_gen"].get_state()}
    if ctx["device"].type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(ctx["device"])
    return mine


def restore_rank_state(ckpt: dict, path: Path, state: dict, ctx) -> None:
    """Each process takes back its own statistics and generators (a checkpoint
    from before per-process states: rank 0's, which were all there was)."""
    ranks = ckpt.get("ranks") or [{"running": ckpt["progress"]["running"], **ckpt["rng"]}]
    if len(ranks) != ctx["world"] and state["next_batch"]:
        raise CheckpointError(f"{path} was saved by {len(ranks)} process(es) in the middle of an epoch: resume "
                              f"it with as many (this run has {ctx['world']})")
    mine = ranks[ctx["rank"]] if len(ranks) == ctx["world"] else ranks[0]
    state["running"] = mine["running"] if len(ranks) == ctx["world"] else None
    torch.set_rng_state(mine["torch"])
    ctx["aug_gen"].set_state(mine["aug"])
    if mine.get("cuda") is not None and ctx["device"].type == "cuda":
        torch.cuda.set_rng_state(mine["cuda"], ctx["device"])


def resume(path: Path, model, optimizer, scheduler, state: dict, ctx, args, log) -> list:
    """Load a run's checkpoint into the model, optimizer, scheduler, EMA,
    progress and random generators, so the run continues exactly; returns
    its history."""
    ckpt = load_checkpoint(path)
    expect(ckpt, path, task=ctx["task_name"], arch=ctx["model_args"]["arch"], classes=ctx["classes"])
    ran = ckpt.get("args", {}).get("optimizer")
    if ran is not None and ran != args.optimizer:
        raise CheckpointError(f"{path} was trained with the {ran} optimizer, not {args.optimizer}: resume with "
                              f"the run's own optimizer (--optimizer {ran})")
    model.load_state_dict(ckpt.get("train_state", ckpt["model_state"]))
    if ctx["ema"] is not None:
        restore_ema(ctx["ema"], ckpt["model_state"], int(ckpt.get("ema_steps", 0)))
    try:
        optimizer.load_state_dict(ckpt["optimizer_state"])
    except ValueError as e:  # another parameter grouping than the run had
        raise CheckpointError(f"{path}: its optimizer state does not fit this run's ({e})") from None
    run_folder.check_resume(ckpt, path, scheduler, ctx.get("data_fingerprint"), args, log)
    scheduler.load_state_dict(ckpt["scheduler_state"])
    state.update(ckpt["progress"])
    state["iter_losses"] = list(ckpt["iter_losses"])
    ctx["best"] = dict(ckpt["best"])
    restore_rank_state(ckpt, path, state, ctx)
    restore_timing(ckpt, path, ctx)
    log(f"resumed from {path}: epoch {state['epoch'] + 1}, batch {state['next_batch']}")
    return list(ckpt["history"])


def test_best(model, test_data, best_path: Path, args, ctx, out: Path, log, split: str = "test") -> dict:
    """Evaluate the chosen checkpoint once on the test split; rank 0 writes
    test_results.json (and the confusion matrix or the per-image predictions).
    ``split="val"`` (``--test-only --eval-split val``): ``test_data`` is the validation split, and
    every file and log line is named val_ instead (the test results stay as they are)."""
    name, task, classes = ctx["task_name"], ctx["task"], ctx["classes"]
    per_image = task.kind != "classification"  # keep each test image's outputs (for its predictions file)
    barrier()  # rank 0 has finished writing model_best.tar
    ckpt = load_checkpoint(best_path)
    expect(ckpt, best_path, task=name, classes=classes)
    (model.module if hasattr(model, "module") else model).load_state_dict(ckpt["model_state"])
    rows: list = []
    result = evaluate_until_stopped(model, test_data, args, ctx, rows if per_image else None, best_path, log)
    summary = {"task": name, "checkpoint": str(best_path), "epoch": ckpt["epoch"], "split": split,
               "val": ckpt["best"], SPLIT_KEYS[split]: {k: v for k, v in result.items() if k != "confusion"},
               "selected_on": ctx["selected_on"], "tta": bool(args.tta)}
    if task.kind != "ordinal":
        summary.update({f"{split}_acc": result["acc"], f"{split}_n": result["n"], "confusion": result["confusion"]},
                       classes=ctx["label_names"]["genders"] if task.kind == "age-gender" else classes)
    if "timing" in ctx:  # bench_general.py: the run's time, and the part spent on face chips
        summary["timing"] = run_timing(ctx)
    rows = [r for part in all_gather_objects(rows) for r in part]  # per-image rows of every shard
    if ctx["rank"] != 0:
        return summary
    log(f"{split}: {task.describe(result)} on {result['n']} images with {best_path.name} "
        f"(epoch {ckpt['epoch']}, chosen on {summary['selected_on']})")
    if task.kind == "age-gender":
        summary["by_source"] = age_gender_report.write_results(rows, test_data, task, ctx["label_names"], out, log,
                                                               split)
    elif per_image:
        write_test_predictions(rows, test_data, task, out, split)
    if task.kind != "ordinal":
        names = summary["classes"]
        log("confusion matrix (rows true, columns predicted; " + ", ".join(names) + "):")
        for cname, row in zip(names, result["confusion"]):
            log(f"  {cname:>12}: " + " ".join(f"{v:5d}" for v in row))
        plots.plot_confusion(result["confusion"], names, out / ("confusion.png" if split == "test" else
                                                                 f"{split}_confusion.png"),
                             f"{name} {split}: {'gender ' if task.kind == 'age-gender' else ''}accuracy "
                             f"{result['acc']:.3f}")
    plots.write_json(summary, out / f"{split}_results.json")
    return summary


def evaluate_until_stopped(model, test_data, args, ctx, rows, best_path: Path, log) -> dict:
    """The final test; SIGINT or SIGTERM stops it after the current batch with
    exit status 130, leaving the checkpoint as it is and writing no results."""
    stopper = ctx.setdefault("stopper", Stopper())
    stopper.install()
    try:
        return evaluate(model, test_data, args, ctx, rows=rows, stopper=stopper)
    except StopRequested:
        log(f"stopped by {stopper.signal} during the final test: no test results written; {best_path} is kept "
            f"(--test-only evaluates it)")
        raise SystemExit(130) from None
    finally:
        stopper.restore()


def write_test_predictions(rows: list, data, task, out: Path, split: str = "test") -> None:
    """test_predictions.csv (file, true age, predicted age, rank probabilities) and test_scatter.png
    (val_predictions.csv and val_scatter.png for ``split="val"``)."""
    rows = sorted(rows, key=lambda r: r[0])
    logits = torch.stack([r[1] for r in rows]) if rows else torch.zeros((0, 1))
    probs = losses.rank_probabilities(logits, task.loss_name) if rows else torch.zeros((0, task.k))
    pred = task.predict(logits) + task.min_age if rows else torch.zeros(0)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["file", "true_age", "predicted_age"] + [f"p_{task.min_age + j}" for j in range(task.k)])
    true_ages = []
    for (i, _), p, pr in zip(rows, pred.tolist(), probs.tolist()):
        true_age = int(data.targets[i]) + task.min_age
        true_ages.append(true_age)
        w.writerow([data.paths[i], true_age, round(p, 2)] + [f"{v:.5f}" for v in pr])
    atomic_write_text(out / f"{split}_predictions.csv", buf.getvalue())
    if rows:
        plots.plot_scatter(true_ages, pred.tolist(), out / f"{split}_scatter.png",
                           f"{split}: predicted against true age")
