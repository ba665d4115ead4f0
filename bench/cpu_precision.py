"""CPU precision benchmark: training-step speed of each model in float32 against bf16 autocast, in one process on the
same CPU, as `--amp auto` decides between them (common.engine.cpu_has_bf16_units).

Examples:
    python bench/cpu_precision.py
    python bench/cpu_precision.py --models scratch_cnn --rounds 9

Each figure is the median of --rounds timed rounds of --steps training steps (AdamW, channels_last, random
weights and images of --crop-size px, batch --batch-size), with the range; the two precisions alternate round by
round so that a change in the machine's load hits both. Writes bench/results/cpu-precision-<date>.json and .md.
Run it on idle cores: other work on them voids the figures (the load averages are recorded).
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.benchmark import synthetic_train_step, write_results  # noqa: E402
from common.cli import ArgumentParser  # noqa: E402
from common.engine import cpu_has_bf16_units, cpu_name  # noqa: E402
from common.markdown import markdown_table  # noqa: E402

PRECISIONS = ("float32", "bf16")


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(description="float32 against bf16 autocast training steps on this CPU.")
    parser.add_argument("--models", default="scratch_cnn,mobilenet_v2", help="architectures, full mode")
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="training steps per timed round")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per precision (median and range)")
    parser.add_argument("--results-dir", default=str(Path(__file__).resolve().parent / "results"))
    return parser


def step_rates(arch: str, crop: int, batch_size: int, steps: int, rounds: int) -> dict[str, list[float]]:
    """Training img/s of each timed round, per precision, after one warm-up step of each."""
    step = synthetic_train_step(arch, batch_size, crop)
    rates = {name: [] for name in PRECISIONS}
    for name in PRECISIONS:
        step(name == "bf16")
    for _ in range(rounds):
        for name in PRECISIONS:
            start = time.perf_counter()
            for _ in range(steps):
                step(name == "bf16")
            rates[name].append(batch_size * steps / (time.perf_counter() - start))
    return rates


def summary(arch: str, rates: dict[str, list[float]]) -> dict:
    """Median and range per precision, and the bf16 / float32 ratio of the medians."""
    row = {"arch": arch, "rounds": rates}
    for name, values in rates.items():
        row[name] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    row["ratio"] = row["bf16"]["median"] / row["float32"]["median"]
    return row


def markdown(result: dict) -> str:
    m, s = result["machine"], result["settings"]
    rows = [[r["arch"], *(f"{r[p]['median']:.1f} ({r[p]['min']:.1f}-{r[p]['max']:.1f})" for p in PRECISIONS),
             f"{r['ratio']:.2f}x"] for r in result["models"]]
    return (f"# CPU training steps: float32 against bf16 autocast ({result['date']})\n\n"
            f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['threads']} threads); bf16 units: "
            f"AMX {m['amx']}, AVX512-BF16 {m['avx512_bf16']}, so `--amp auto` trains in "
            f"{'bf16' if m['amp_auto_bf16'] else 'float32'} here. Load average at start {m['load_start'][0]:.2f}, "
            f"at end {result['load_end'][0]:.2f}.\n\n"
            f"Full-mode training steps (AdamW, channels_last), batch {s['batch_size']}, {s['crop_size']} px, random "
            f"weights; train img/s, median of {s['rounds']} rounds of {s['steps']} steps (range).\n\n"
            + markdown_table(["model", "float32", "bf16", "bf16 / float32"], rows, "lrrr") + "\n")


def main(args) -> None:
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": str(torch.__version__),
               "threads": torch.get_num_threads(), "amx": torch.cpu._is_amx_tile_supported(),
               "avx512_bf16": torch.cpu._is_avx512_bf16_supported(), "amp_auto_bf16": cpu_has_bf16_units(),
               "load_start": list(os.getloadavg())}
    result = {"date": date.today().isoformat(), "machine": machine, "models": [],
              "settings": {k: getattr(args, k) for k in ("crop_size", "batch_size", "steps", "rounds")}}
    for arch in args.models.split(","):
        row = summary(arch, step_rates(arch, args.crop_size, args.batch_size, args.steps, args.rounds))
        result["models"].append(row)
        print(f"{arch}: float32 {row['float32']['median']:.1f} img/s, bf16 {row['bf16']['median']:.1f} img/s, "
              f"{row['ratio']:.2f}x", flush=True)
    result["load_end"] = list(os.getloadavg())
    write_results(args.results_dir, f"cpu-precision-{result['date']}", result, markdown(result))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
