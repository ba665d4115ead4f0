"""Allocator benchmark: CPU img/s with glibc's default malloc settings against common.allocator's, which every script
applies at start (common.cli.run_main).

Examples:
    python bench/allocator.py
    python bench/allocator.py --models mobilenet_v2 --rounds 5

mallopt settings cannot be undone inside a process, so each measurement is a fresh child process: float32 eval-mode
inference (channels_last, random weights and images of --crop-size px) at each of --batch-sizes, and training steps
as `--amp auto` runs them (AdamW, bf16 autocast where the CPU has bf16 units) at --train-batch. The two settings
alternate child by child, round by round, so a change in the machine's load hits both; each figure is the median of
--rounds children with the range, and the minor page faults of the timed part. Writes
bench/results/allocator-<date>.json and .md. Run it on idle cores (the load averages are recorded).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from datetime import date
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.allocator import retain_freed_memory  # noqa: E402
from common.benchmark import synthetic_train_step, write_results  # noqa: E402
from common.cli import ArgumentParser  # noqa: E402
from common.engine import cpu_has_bf16_units, cpu_name  # noqa: E402
from common.markdown import markdown_table  # noqa: E402
from common.models import build_model  # noqa: E402

SETTINGS = ("default", "retained")


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(description="CPU img/s with glibc's default malloc settings against the project's.")
    parser.add_argument("--models", default="scratch_cnn,mobilenet_v2", help="architectures, full mode")
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--batch-sizes", default="16,64", help="inference batch sizes")
    parser.add_argument("--train-batch", type=int, default=32, help="training batch size (0: no training rows)")
    parser.add_argument("--images", type=int, default=256, help="images per timed child")
    parser.add_argument("--rounds", type=int, default=3, help="children per setting and task (median and range)")
    parser.add_argument("--results-dir", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--child", nargs=4, metavar=("ARCH", "TASK", "BATCH", "SETTING"), help=argparse.SUPPRESS)
    return parser


def child(arch: str, task: str, batch: int, setting: str, crop: int, images: int) -> dict:
    """One timed measurement in this process: img/s and minor page faults after one warm-up batch."""
    if setting == "retained":
        retain_freed_memory()
    steps = max(1, images // batch)
    if task == "infer":
        torch.manual_seed(0)
        model = build_model(arch, 10, "full")[0].to(memory_format=torch.channels_last).eval()
        x = torch.randn(batch, 3, crop, crop).contiguous(memory_format=torch.channels_last)

        def step() -> None:
            with torch.inference_mode():
                model(x.clone(memory_format=torch.channels_last))
    else:
        step = partial(synthetic_train_step(arch, batch, crop), cpu_has_bf16_units())
    step()
    faults, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    for _ in range(steps):
        step()
    return {"img_per_s": batch * steps / (time.perf_counter() - start),
            "minor_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults}


def measure(args, arch: str, task: str, batch: int) -> dict:
    """--rounds children per setting, alternating; median, range and median faults per setting, and the ratio."""
    runs = {s: [] for s in SETTINGS}
    for _ in range(args.rounds):
        for setting in SETTINGS:
            out = subprocess.run([sys.executable, __file__, "--crop-size", str(args.crop_size), "--images",
                                  str(args.images), "--child", arch, task, str(batch), setting],
                                 check=True, capture_output=True, text=True).stdout
            runs[setting].append(json.loads(out.strip().splitlines()[-1]))
    row = {"arch": arch, "task": task, "batch": batch, "runs": runs}
    for setting, values in runs.items():
        rates = [v["img_per_s"] for v in values]
        row[setting] = {"median": statistics.median(rates), "min": min(rates), "max": max(rates),
                        "minor_faults": statistics.median(v["minor_faults"] for v in values)}
    row["ratio"] = row["retained"]["median"] / row["default"]["median"]
    return row


def markdown(result: dict) -> str:
    m, s = result["machine"], result["settings"]
    cell = lambda r: f"{r['median']:.0f} ({r['min']:.0f}-{r['max']:.0f})"  # noqa: E731
    rows = [[r["arch"], "float32 inference" if r["task"] == "infer" else f"training ({m['train_precision']})",
             r["batch"], cell(r["default"]), f"{r['default']['minor_faults']:,.0f}", cell(r["retained"]),
             f"{r['retained']['minor_faults']:,.0f}", f"{r['ratio']:.2f}x"] for r in result["models"]]
    return (f"# CPU img/s: glibc's default malloc settings against common.allocator's ({result['date']})\n\n"
            f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}. Load average at start "
            f"{m['load_start'][0]:.2f}, at end {result['load_end'][0]:.2f}.\n\n"
            f"Each figure is the median of {s['rounds']} fresh processes per setting, alternating (range), "
            f"{s['images']} images of {s['crop_size']} px each after a warm-up batch, random weights; faults: the "
            "median minor page faults of the timed part.\n\n"
            + markdown_table(["model", "task", "batch", "default img/s", "faults", "retained img/s", "faults",
                              "retained / default"], rows, "llrrrrrr") + "\n")


def main(args) -> None:
    if args.child:
        arch, task, batch, setting = args.child
        print(json.dumps(child(arch, task, int(batch), setting, args.crop_size, args.images)))
        return
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": str(torch.__version__),
               "train_precision": "bf16" if cpu_has_bf16_units() else "float32", "load_start": list(os.getloadavg())}
    result = {"date": date.today().isoformat(), "machine": machine, "models": [],
              "settings": {k: getattr(args, k) for k in ("crop_size", "batch_sizes", "train_batch", "images",
                                                         "rounds")}}
    tasks = [("infer", int(b)) for b in args.batch_sizes.split(",")]
    tasks += [("train", args.train_batch)] if args.train_batch else []
    for arch in args.models.split(","):
        for task, batch in tasks:
            row = measure(args, arch, task, batch)
            result["models"].append(row)
            print(f"{arch} {task} batch {batch}: default {row['default']['median']:.0f} img/s, retained "
                  f"{row['retained']['median']:.0f} img/s, {row['ratio']:.2f}x", flush=True)
    result["load_end"] = list(os.getloadavg())
    write_results(args.results_dir, f"allocator-{result['date']}", result, markdown(result))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
