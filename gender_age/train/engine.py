"""One epoch of training, evaluation, and what they need: optimizer, schedule,
weight average and the stop signal.

Everything here works on any task object of tasks.py and on any device, in one
process or under torchrun (statistics are summed over processes).
"""
from __future__ import annotations

import math
import os
import signal
import sys
import time

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from gender_age.core.checkpointing import first_non_finite
from gender_age.data.loading import epoch_order, iterate_batches, shard
from gender_age.core.runtime import all_reduce_sum, show_progress


class StopRequested(Exception):
    pass


class TrainingDiverged(Exception):
    """The loss or the weights became NaN or infinite: the run stops without saving them."""


DIVERGED_HINT = "the run diverged (try a lower --lr); the checkpoints saved before it are kept"


def check_finite_loss(value: float, state: dict, batch: int, ctx) -> None:
    """Raise TrainingDiverged on every process when any one of them has a
    non-finite loss, before that step changes the weights."""
    bad = not math.isfinite(value)
    if ctx["world"] > 1:
        bad = all_reduce_sum(torch.tensor([float(bad)])).item() > 0
    if bad:
        raise TrainingDiverged(f"the training loss became {value} at epoch {state['epoch'] + 1}, batch {batch + 1}: "
                               f"{DIVERGED_HINT}")


def refuse_non_finite(ckpt: dict) -> None:
    """Raise TrainingDiverged instead of saving a checkpoint whose weights hold NaN or infinity."""
    for key in ("model_state", "train_state"):
        name = first_non_finite(ckpt.get(key) or {})
        if name is not None:
            raise TrainingDiverged(f"the weights became non-finite ({name}) in epoch {ckpt['progress']['epoch'] + 1}: "
                                   f"{DIVERGED_HINT}")


def stop_requested(ctx) -> bool:
    """True on every process as soon as any one of them got SIGINT/SIGTERM, so
    all processes stop at the same batch (no rank is left waiting in DDP)."""
    flag = ctx["stopper"].signal is not None
    if ctx["world"] > 1:
        flag = all_reduce_sum(torch.tensor([float(flag)])).item() > 0
    return flag


class Stopper:
    """SIGINT/SIGTERM set a flag; the loop checks it between steps, saves a
    consistent checkpoint and exits cleanly. The handler never raises: a
    second signal only says the stop is coming; a third quits at once, saving
    nothing (the last saved files stay as they were: every write is atomic)."""

    def __init__(self):
        self.signal = None
        self.count = 0
        self._previous = {}

    def install(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            self._previous.setdefault(s, signal.getsignal(s))
            signal.signal(s, self._handler)

    def restore(self):
        """Give SIGINT/SIGTERM back to the handlers they had before install()."""
        for s, handler in self._previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        self._previous = {}

    def _handler(self, signum, frame):
        self.count += 1
        name = signal.Signals(signum).name
        if self.signal is None:
            self.signal = name
        elif self.count == 2:  # os.write: no buffered I/O inside a signal handler
            os.write(2, f"{name} again: still stopping after this step; a third one quits at once without "
                        f"saving\n".encode())
        else:
            os.write(2, f"{name} a third time: quitting now without saving (the files saved before are "
                        f"kept)\n".encode())
            os._exit(130)


def make_ema(model: torch.nn.Module, epochs: float, steps_per_epoch: int) -> AveragedModel:
    """Exponential moving average of a model's parameters and BatchNorm buffers
    (torch's AveragedModel). ``ema.module`` is the copy of the network that
    evaluation, model_best.tar and predict.py use.

    decay per step = 1 - 1 / (epochs * steps_per_epoch), warmed up as
    min(decay, (1 + t) / (10 + t)) at the t-th update so that early averages
    are not dominated by the random initialisation.
    """
    decay = 1.0 - 1.0 / max(1.0, epochs * steps_per_epoch)

    @torch.no_grad()
    def warmed_up_ema(averaged: list, current: list, n_averaged: torch.Tensor) -> None:
        if not averaged[0].is_floating_point():  # BatchNorm's num_batches_tracked follows the model
            torch._foreach_copy_(averaged, current)
            return
        t = int(n_averaged)  # 1 at the first training step: the start is update 0
        get_ema_multi_avg_fn(min(decay, (1 + t) / (10 + t)))(averaged, current, n_averaged)

    ema = AveragedModel(model, multi_avg_fn=warmed_up_ema, use_buffers=True)
    ema.module.eval()
    for p in ema.module.parameters():
        p.requires_grad_(False)
    ema.update_parameters(model)  # update 0 copies the start
    return ema


def ema_steps(ema: AveragedModel) -> int:
    """Training steps averaged so far (what checkpoints store as ``ema_steps``)."""
    return int(ema.n_averaged) - 1


def restore_ema(ema: AveragedModel, state: dict, steps: int) -> None:
    ema.module.load_state_dict(state)
    ema.n_averaged.fill_(steps + 1)


def make_optimizer(model, args):
    params = model.parameters()
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    if args.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    return torch.optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay)


def make_scheduler(optimizer, args, steps: int):
    """One optimizer for the whole run (Adam keeps its moments), decayed by a scheduler:
    step (per epoch, the original's 0.9 every 5 epochs) or one-cycle (per iteration)."""
    if args.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                                   total_steps=max(8, steps * args.epochs),  # its phases need 5+
                                                   pct_start=0.25)
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.lr_step, gamma=args.lr_gamma)


def mixup(x: torch.Tensor, y: torch.Tensor, alpha: float, gen: torch.Generator):
    """(mixed x, y, y of the partners, lam): x <- lam x + (1 - lam) x[perm], with
    lam ~ Beta(alpha, alpha), all draws from ``gen`` (so a resumed run repeats them)."""
    seed = int(torch.randint(2 ** 31 - 1, (1,), generator=gen))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=gen).to(x.device)
    return x.mul(lam).add_(x[perm], alpha=1.0 - lam), y, y[perm], lam


def train_step(model, optimizer, scheduler, x, y, state: dict, b: int, args, ctx):
    """One optimisation step on a uint8 batch: augment, forward, loss, backward, step. Returns
    the logits (for the running statistics); the loss goes to ``state["iter_losses"]``."""
    device, preset, task, gen = ctx["device"], ctx["preset"], ctx["task"], ctx["aug_gen"]
    x = x.to(device, non_blocking=True)
    y = y.to(device, non_blocking=True)
    # crop + flip (+ colour) + normalise on the device, from the CPU generator's draws
    x = preset.train_batch_strong(x, gen, args.grey) if args.aug == "strong" else preset.train_batch(x, gen)
    if ctx["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    mix = args.mixup > 0 and task.kind == "classification"
    if mix:
        x, y, y_partner, lam = mixup(x, y, args.mixup, gen)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
        logits = model(x)
    loss = task.loss(logits, y)
    if mix:
        loss = lam * loss + (1.0 - lam) * task.loss(logits, y_partner)
    loss_value = loss.item()
    check_finite_loss(loss_value, state, b, ctx)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if ctx["ema"] is not None:
        ctx["ema"].update_parameters(model.module if hasattr(model, "module") else model)
    if args.schedule == "onecycle":
        scheduler.step()
    state["iter_losses"].append(loss_value)
    return logits, y


def train_one_epoch(model, optimizer, scheduler, data, state: dict, args, ctx) -> dict:
    """One epoch (or the rest of an interrupted one). ``state`` is resumable:
    epoch, next_batch, the running statistics, and the aug generator."""
    model.train()
    task = ctx["task"]
    order = epoch_order(len(data), args.seed, state["epoch"], ctx["rank"], ctx["world"])
    per_proc = max(1, args.batch_size // ctx["world"])
    n_batches = steps_per_epoch(len(data), args, ctx["world"])
    start = state["next_batch"]
    bar = None
    if show_progress(args.no_progress, ctx["rank"]):
        bar = tqdm(total=n_batches, initial=start, desc=f"epoch {state['epoch'] + 1}/{args.epochs}",
                   unit="batch", leave=False, mininterval=1.0, file=sys.stderr)
    t0, imgs = time.perf_counter(), 0
    running = state["running"]
    batches = iterate_batches(data, order[start * per_proc:n_batches * per_proc], per_proc,
                              ctx["workers"], ctx["device"].type == "cuda")
    for b, (x, y) in enumerate(batches, start=start):
        if stop_requested(ctx):
            state["next_batch"] = b
            raise StopRequested
        if len(y) == 0:
            continue
        logits, y = train_step(model, optimizer, scheduler, x, y, state, b, args, ctx)
        stats = task.stats(logits.detach().float().cpu(), y.cpu())
        running = stats if running is None else running + stats
        state["running"] = running
        imgs += len(y)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{state['iter_losses'][-1]:.3f}",
                            img_s=f"{imgs * ctx['world'] / (time.perf_counter() - t0):.0f}")
    if bar is not None:
        bar.close()
    state["next_batch"] = n_batches
    seconds = time.perf_counter() - t0
    total = all_reduce_sum(running.clone()) if running is not None else None
    m = task.metrics(total) if total is not None else {}
    return {**{f"train_{k}": v for k, v in m.items() if k not in ("confusion", "n")},
            "images_per_s": imgs * ctx["world"] / max(seconds, 1e-9), "seconds": seconds}


def steps_per_epoch(n: int, args, world: int) -> int:
    per_proc = max(1, args.batch_size // world)
    per_shard = math.ceil(n / world)
    steps = math.ceil(per_shard / per_proc)
    if steps > 1 and per_shard % per_proc == 1:
        # a last batch of one image: BatchNorm cannot train on it (a ResNet's 1x1
        # final maps have one value per channel) and its gradient is mostly noise;
        # drop it, as drop_last would (the shuffle puts that image elsewhere next epoch)
        steps -= 1
    return min(steps, 2) if args.dry_run else steps


@torch.no_grad()
def eval_logits(model, x: torch.Tensor, args, ctx) -> torch.Tensor:
    """uint8 (N,3,R,R) -> float logits (N, outputs) on the CPU. With --tta, the
    Levi-Hassner over-sampling: 10 views (4 corners + centre, and mirrors);
    classification averages their softmax (returned as log-probabilities, so
    argmax and cross-entropy still apply), ordinal (and gender-and-age) heads average their logits."""
    preset = ctx["preset"]
    n = x.shape[0]
    views = preset.tta_batch(x).flatten(0, 1) if args.tta else preset.eval_batch(x)  # (V*N, 3, c, c)
    if ctx["channels_last"]:
        views = views.contiguous(memory_format=torch.channels_last)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=args.amp):
        logits = model(views).float().cpu()
    if not args.tta:
        return logits
    logits = logits.view(10, n, -1)
    if ctx["task"].kind != "classification":
        return logits.mean(0)
    return logits.softmax(-1).mean(0).log()


@torch.no_grad()
def evaluate(model, data, args, ctx, rows: list | None = None, stopper: Stopper | None = None) -> dict:
    """The task's metrics in eval mode (dropout off, BatchNorm running
    statistics), sharded over processes and all-reduced. When ``rows`` is a
    list, per-image (index, logits) pairs are appended to it. With a
    ``stopper``, a signal stops it after the current batch (StopRequested).

    A DistributedDataParallel model is evaluated through its own module:
    DDP's forward syncs buffers across processes, which would hang a process
    that has fewer evaluation batches than the others."""
    model = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    model.eval()
    device, task = ctx["device"], ctx["task"]
    indices = shard(list(range(len(data))), ctx["rank"], ctx["world"])
    total = None
    pos = 0
    for x, y in iterate_batches(data, indices, max(64, args.batch_size), ctx["workers"], device.type == "cuda"):
        if len(y) == 0:
            continue
        logits = eval_logits(model, x.to(device, non_blocking=True), args, ctx)
        stats = task.stats(logits, y)
        total = stats if total is None else total + stats
        if rows is not None:
            rows.extend(zip(indices[pos:pos + len(y)], logits))
        pos += len(y)
        if stopper is not None and stopper.signal is not None:
            raise StopRequested
    if total is None:
        total = task.stats(torch.zeros((0, ctx["num_outputs"])), torch.zeros((0,), dtype=torch.long))
    return task.metrics(all_reduce_sum(total))
