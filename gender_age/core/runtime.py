"""Where the work runs: device, bf16, CPU threads and torchrun processes.

Used by training and prediction alike; of the toolkit it imports only cores.py.
Every distributed helper is a no-op in a single process.
"""
from __future__ import annotations

import os
import sys
import time

import torch
import torch.distributed as dist

from gender_age.core.cores import usable_cores  # noqa: F401 (re-exported)


class DeviceError(Exception):
    """The device asked for cannot be used; the message says what to do instead."""


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(name: str) -> torch.device:
    """auto (CUDA when present, else CPU), cpu, cuda or cuda:N; under torchrun
    each process takes the GPU of its LOCAL_RANK unless an index is given."""
    if name == "auto":
        return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise DeviceError(f"--device {name!r} is not supported: use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda asked for, but no CUDA device is available: use --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", local_rank())
        if dev.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return dev


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 autocast speeds training up on this device, by a fixed rule (a
    timed probe could choose differently from run to run and break seeded repeats).

    CUDA: compute capability 8.0 (Ampere) or newer; older GPUs report bf16
    support through emulation, which is slower than fp32. CPU: ``cpu_bf16_is_fast``."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        # kernels held back (ATEN_CPU_CAPABILITY=avx2, as the AVX2 timings are taken): bf16
        # ran there at a fraction of fp32's speed, a 10-view test of 4,921 faces did not finish
        return False
    try:
        with open("/proc/cpuinfo") as f:
            return cpu_bf16_is_fast(f.read())
    except OSError:
        return False


def cpu_bf16_is_fast(cpuinfo: str) -> bool:
    """bf16 on a CPU (``/proc/cpuinfo``'s text): AMX, or AVX512-BF16 on an AMD CPU. Measured
    (docs/benchmarks.md): a Levi-Hassner training step 37 -> 88 img/s with bf16 on a 2-core AMX
    Xeon; on a 2-core Intel Xeon with AVX512-BF16 and no AMX bf16 was slower, 0.68x
    (Levi-Hassner) and 0.78x (the age-gender ResNet-18 at 96 px) of fp32. An AMD CPU keeps
    bf16 as the AMD EPYC of the benchmarks ran it (fp32 not timed there)."""
    first = lambda key: next((line for line in cpuinfo.splitlines() if line.startswith(key)), "")
    flags = set(first("flags").partition(":")[2].split())
    return "amx_bf16" in flags or ("avx512_bf16" in flags and "AuthenticAMD" in first("vendor_id"))


def init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world_size); joins the torchrun process group when launched by it.

    One group serves both kinds of tensor: gloo for CPU tensors (the stop flag,
    statistics gathered on the CPU) and NCCL for CUDA ones (DDP's gradients).
    Each CUDA process is bound to its own GPU before the group starts."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group(backend="cpu:gloo,cuda:nccl", device_id=device)
    else:
        dist.init_process_group(backend="gloo")
    return dist.get_rank(), dist.get_world_size()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all processes, in place (a CPU tensor goes over gloo)."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...]; [obj] in a single process."""
    if not is_distributed():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def shutdown_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()


def configure_threads(threads: int | None, world: int) -> int:
    """Set torch's CPU threads (default: this process's share of the usable
    cores); returns the decode workers' default, min(8, cores / processes)."""
    cores = usable_cores()
    torch.set_num_threads(threads or max(1, cores // world))
    return max(1, min(8, cores // world))


def show_progress(disabled: bool, rank: int = 0) -> bool:
    """Progress bars only on rank 0 and only for a terminal: in a log file their
    carriage returns leave fragments (the per-epoch lines say the same)."""
    return rank == 0 and not disabled and sys.stderr.isatty()


def progress_mode(disabled: bool, rank: int = 0) -> str | None:
    """How a long preparation (face chips, decoding) reports: "bar" for a terminal, "lines"
    (plain lines, ProgressLines) for a log file or pipe, None with --no-progress or off rank 0."""
    if disabled or rank != 0:
        return None
    return "bar" if sys.stderr.isatty() else "lines"


class ProgressLines:
    """Progress as plain lines on stderr, for logs: 'decode: 120/1200 images (10%), 85.3 images/s',
    at every further 10% of ``total`` and at least every ``every_s`` seconds (checked per update)."""

    def __init__(self, total: int, desc: str, every_s: float = 30.0, stream=None):
        self.total, self.desc, self.every_s = total, desc, every_s
        self.stream = stream
        self.done, self.next_step = 0, 1
        self.start = self.last = time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        step = self.done * 10 // max(self.total, 1)
        if step < self.next_step and now - self.last < self.every_s:
            return
        self.next_step, self.last = step + 1, now
        rate = self.done / max(now - self.start, 1e-9)
        print(f"{self.desc}: {self.done}/{self.total} images ({100 * self.done // max(self.total, 1)}%), "
              f"{rate:.1f} images/s", file=self.stream or sys.stderr, flush=True)
