"""Training compute of the gender-and-age network per input size, instruction set and precision.

    python -m benchmarks.bench_compute [--sizes 64 80 96] [--isa native avx2] [--steps 6]

For each setting it times training steps (forward, backward, AdamW step) of the age-gender
network (ResNet-18 trunk, gender head and a CORAL-family age head) on synthetic
channels-last batches, alone on the machine, and prints images/s, the FLOPs of one image
(forward and backward, counted by torch.utils.flop_counter), the achieved GFLOP/s and that
rate against the CPU's fp32 FMA peak (cores x clock x 32 FLOPs per cycle: two 256-bit FMA
units, which is also what Zen 4 reaches with AVX-512). ``--isa avx2`` runs the step in a
child process with ``ATEN_CPU_CAPABILITY=avx2`` and ``ONEDNN_MAX_CPU_ISA=AVX2``: PyTorch's
and oneDNN's kernels limited to AVX2, the closest this machine comes to an AVX2-only CPU.
Each setting runs in its own process, so one setting's threads and caches do not carry over.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ISA_ENV = {"native": {}, "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}
FMA_FLOPS_PER_CYCLE = 32  # fp32, per core: 2 FMA units x 8 lanes x 2


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 80, 96], help="input sides (crops) in pixels")
    p.add_argument("--isa", nargs="+", choices=sorted(ISA_ENV), default=["native", "avx2"])
    p.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32"])
    p.add_argument("-b", "--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=6, help="timed steps after 2 warm-up steps")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process: SIZE,PRECISION
    return p


def cpu_clock_ghz() -> float:
    """The nominal clock from /proc/cpuinfo (0 where it is not given)."""
    try:
        with open("/proc/cpuinfo") as f:
            mhz = [float(line.split(":")[1]) for line in f if line.startswith("cpu MHz")]
        return max(mhz) / 1000 if mhz else 0.0
    except OSError:
        return 0.0


def measure(size: int, precision: str, batch: int, steps: int, threads: int) -> dict:
    """Images/s and FLOPs per image of training steps at one input size and precision."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from gender_age.nets.models import build_model
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model("resnet18", 0, head="coral", num_ranks=100, genders=2).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(x)
        loss = out.float().square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with FlopCounterMode(display=False) as counter:
        step()
    step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - t
    return {"size": size, "precision": precision, "images_per_s": batch * steps / seconds,
            "gflop_per_image": counter.get_total_flops() / batch / 1e9,
            "capability": torch.backends.cpu.get_cpu_capability()}


def run_child(args, size: int, precision: str, isa: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_compute", "--one", f"{size},{precision}",
           "-b", str(args.batch_size), "--steps", str(args.steps), "--threads", str(args.threads)]
    r = subprocess.run(cmd, env={**os.environ, **ISA_ENV[isa]}, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"bench_compute: error: the {isa} {precision} {size}-px step failed: "
                         f"{(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return {**json.loads(r.stdout.strip().splitlines()[-1]), "isa": isa}


def main(args) -> int:
    if args.one:
        size, precision = args.one.split(",")
        print(json.dumps(measure(int(size), precision, args.batch_size, args.steps, args.threads)))
        return 0
    ghz = cpu_clock_ghz()
    peak = args.threads * ghz * FMA_FLOPS_PER_CYCLE
    print(f"CPU: {args.threads} threads at {ghz:.2f} GHz: fp32 FMA peak {peak:.0f} GFLOP/s", flush=True)
    rows = []
    print(f"{'isa':7s} {'capability':10s} {'prec':5s} {'px':>4s} {'img/s':>7s} {'GFLOP/img':>10s} "
          f"{'GFLOP/s':>8s} {'of peak':>8s}")
    for isa in args.isa:
        for precision in args.precision:
            for size in args.sizes:
                row = run_child(args, size, precision, isa)
                row["gflop_per_s"] = row["images_per_s"] * row["gflop_per_image"]
                row["of_fp32_peak"] = row["gflop_per_s"] / peak if peak else None
                rows.append(row)
                share = f"{row['of_fp32_peak']:.0%}" if peak else "?"
                print(f"{isa:7s} {row['capability']:10s} {precision:5s} {size:4d} {row['images_per_s']:7.1f} "
                      f"{row['gflop_per_image']:10.3f} {row['gflop_per_s']:8.1f} {share:>8s}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu_ghz": ghz, "threads": args.threads, "fp32_peak_gflop_s": peak, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
