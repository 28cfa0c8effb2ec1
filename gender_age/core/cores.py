"""How many CPU cores this process may use. No torch here: predict.py sizes its
decode pool (decode_pool.py) before it imports torch."""
from __future__ import annotations

import os


def usable_cores() -> int:
    """The CPUs this process may run on: its affinity (taskset, a container's
    cpuset, a test worker pinned to one core), not the machine's total, which
    would start more threads and decode workers than there are cores to run them."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
