"""What bench_general.py prints beside its table: the CPU, its time budget, the run's times."""
from __future__ import annotations

import os
from pathlib import Path


def cpu_info(text: str | None = None, env: dict | None = None) -> dict:
    """The CPU's model name, AMX and AVX512-BF16 (from /proc/cpuinfo), and the time budget: 60 minutes
    of training on a 2-core AVX2 CPU in fp32. A run is held to it where it ran on AVX2 kernels: on a
    CPU without AVX-512, or with PyTorch's and oneDNN's kernels limited to AVX2 (ATEN_CPU_CAPABILITY=avx2
    ONEDNN_MAX_CPU_ISA=AVX2, with --train-args --no-amp); elsewhere its time is shown, not judged."""
    if text is None:
        text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    env = os.environ if env is None else env
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}  # the last CPU's; all are alike
    flags = set(fields.get("flags", "").split())
    avx2_kernels = "avx512f" not in flags or (env.get("ATEN_CPU_CAPABILITY") == "avx2"
                                              and env.get("ONEDNN_MAX_CPU_ISA", "").upper() == "AVX2")
    return {"model": fields.get("model name", "unknown"), "amx": "amx_tile" in flags,
            "avx512_bf16": "avx512_bf16" in flags, "avx2_kernels": avx2_kernels, "budget_min": 60,
            "budget_kind": "2-core AVX2, fp32" if avx2_kernels else
            "set for a 2-core AVX2 CPU in fp32; this run used AVX-512 kernels, so it is not judged"}


def report(result: dict, text: str) -> None:
    cpu, tm = result["cpu"], result["timing"]
    print(text)
    print("peer: an image where it finds no face counts as wrong in the accuracy rows and is left out of the "
          "age rows (\"no face\" gives the count); ours predicts on every image")
    print(f"CPU: {cpu['model']} (AMX: {'yes' if cpu['amx'] else 'no'}, AVX512-BF16: "
          f"{'yes' if cpu['avx512_bf16'] else 'no'})")
    wall = "not run here" if tm["train_wall_s"] is None else f"{tm['train_wall_s'] / 60:.1f} min" + \
        (" (this command's part of the run, --resume)" if tm.get("resumed") else "")
    tta = "not run" if tm["tta_s"] is None else f"{tm['tta_s']:.0f} s"
    print(f"training command wall time: {wall}; run total_s {tm['total_s']}, chips_s {tm['chips_s']}; "
          f"over-sampled test (--tta): {tta}")
    print(f"time budget: {cpu['budget_min']} min ({cpu['budget_kind']}); training without chips "
          f"{tm['train_no_chips_min']} min: {({True: 'met', False: 'NOT met'}).get(result['budget_met'], 'unknown')}")
    if result["peer_s"] is not None:
        print(f"peer: {result['peer_s']:.1f} s for {result['peer_images']} images")
