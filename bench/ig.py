"""Integrated gradients: speed of the batched path points against one step at a time, and the completeness gap
against the number of steps, on a checkpoint's test images; Captum's IG beside them when it can be imported.

Examples:
    python bench/ig.py --ckpt runs/best.pt --num 10
    PYTHONPATH=/path/to/captum-only-folder python bench/ig.py --ckpt runs/best.pt   # Captum, never a dependency

"One step at a time" is the earlier implementation: every step one batch of all the images. Ours sends the
images x steps points through the model --internal-batch at a time. Captum runs with the same midpoint rule
(riemann_middle), steps and internal_batch_size, so the attributions must agree. Passes are interleaved and
repeated (--repeats): the median and the range are reported. Writes bench/results/ig-<device>-<date>.json and .md.
"""
from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common.cli import ArgumentParser, positive_int, run_main  # noqa: E402
from common.engine import resolve_device  # noqa: E402
from common.explain import completeness_gap, integrated_gradients  # noqa: E402
from common.files import atomic_write_text  # noqa: E402
from common.inference import Predictor, load_test_split  # noqa: E402
from common.markdown import markdown_table  # noqa: E402
from common.runs import load_checkpoint  # noqa: E402


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Integrated gradients: speed and completeness gap.")
    parser.add_argument("--ckpt", default="runs/best.pt")
    parser.add_argument("--num", type=positive_int, default=10, help="test images (the first of the saved split)")
    parser.add_argument("--steps", default="32,64,128,256", help="step counts for the completeness gap")
    parser.add_argument("--speed-steps", type=positive_int, default=32, help="steps of the timed passes")
    parser.add_argument("--internal-batch", type=positive_int, default=16)
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--results-dir", default=str(Path(__file__).resolve().parent / "results"))
    return parser


def one_step_at_a_time(model, x, target, steps: int) -> torch.Tensor:
    """The earlier implementation: a batch of every image per step."""
    baseline, total = torch.zeros_like(x), torch.zeros_like(x)
    index = target.view(-1, 1)
    with torch.enable_grad():
        for k in range(steps):
            point = (baseline + (k + 0.5) / steps * (x - baseline)).detach().requires_grad_(True)
            total += torch.autograd.grad(model(point).gather(1, index).sum(), point)[0]
    return (x - baseline) * total / steps


def methods(model, steps: int, internal_batch: int) -> dict:
    """name -> attribution function of (x, target)."""
    out = {"one step at a time": lambda x, t: one_step_at_a_time(model, x, t, steps),
           f"ours, internal batch {internal_batch}":
               lambda x, t: integrated_gradients(model, x, t, steps, internal_batch=internal_batch)}
    try:
        from captum.attr import IntegratedGradients
    except ImportError:
        return out
    ig = IntegratedGradients(model)
    out[f"Captum, internal batch {internal_batch}"] = lambda x, t: ig.attribute(
        x, target=t, n_steps=steps, method="riemann_middle", internal_batch_size=internal_batch)
    return out


def timed(fns: dict, x, target, repeats: int) -> tuple[dict, dict]:
    """Seconds of each function over interleaved repeats, and its last attributions."""
    seconds, attrs = {k: [] for k in fns}, {}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            attrs[name] = fn(x, target)
            seconds[name].append(time.perf_counter() - start)
    return seconds, attrs


def main(args) -> None:
    device = resolve_device(args.device)
    ckpt = load_checkpoint(args.ckpt)
    predictor = Predictor(ckpt, device)
    model = predictor.model.float()
    test = load_test_split(ckpt)
    idx = test.indices[:args.num]
    x = predictor.prepare(test.images[idx]).float()
    with torch.no_grad():
        target = model(x).argmax(1)
    fns = methods(model, args.speed_steps, args.internal_batch)
    seconds, attrs = timed(fns, x, target, args.repeats)
    reference = attrs["one step at a time"].flatten(1)
    speed = []
    for name, s in seconds.items():
        a = attrs[name].flatten(1)
        pearson = float(np.mean([np.corrcoef(a[i].cpu(), reference[i].cpu())[0, 1] for i in range(len(a))]))
        speed.append({"method": name, "median_s": statistics.median(s), "min_s": min(s), "max_s": max(s),
                      "vs_one_step_at_a_time": statistics.median(seconds["one step at a time"]) / statistics.median(s),
                      "pearson_vs_one_step_at_a_time": pearson})
        print(f"{name}: median {statistics.median(s):.1f}s ({min(s):.1f}-{max(s):.1f}), pearson {pearson:.4f}")
    gaps = []
    for steps in map(int, args.steps.split(",")):
        g = completeness_gap(model, x, target, integrated_gradients(model, x, target, steps,
                                                                    internal_batch=args.internal_batch)).cpu()
        gaps.append({"steps": steps, "mean": float(g.mean()), "max": float(g.max())})
        print(f"{steps} steps: completeness gap mean {g.mean():.1%}, max {g.max():.1%}")
    result = {"device": str(device), "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__, "checkpoint": str(args.ckpt), "arch": ckpt["arch"], "mode": ckpt["mode"],
              "images": len(idx), "speed_steps": args.speed_steps, "internal_batch": args.internal_batch,
              "repeats": args.repeats, "date": time.strftime("%Y-%m-%d"), "speed": speed, "completeness_gap": gaps}
    write(result, Path(args.results_dir))


def write(result: dict, folder: Path) -> None:
    name = f"ig-{result['device']}-{result['date']}"
    atomic_write_text(folder / f"{name}.json", json.dumps(result, indent=2, allow_nan=False) + "\n")
    md = [f"# Integrated gradients, {result['arch']}/{result['mode']} on {result['device']} ({result['date']})\n",
          f"{result['images']} test images of `{result['checkpoint']}`, {result['speed_steps']} steps for the timed "
          f"passes, median of {result['repeats']} interleaved passes (range in brackets).\n",
          markdown_table(["method", "seconds", "speed-up", "Pearson vs one step at a time"],
                         [[r["method"], f"{r['median_s']:.1f} ({r['min_s']:.1f}-{r['max_s']:.1f})",
                           f"{r['vs_one_step_at_a_time']:.2f}x", f"{r['pearson_vs_one_step_at_a_time']:.4f}"]
                          for r in result["speed"]], "lrrr"), "",
          "Completeness gap, |sum of attributions - (f(x) - f(0))| / |f(x) - f(0)|:\n",
          markdown_table(["steps", "mean", "max"], [[g["steps"], f"{g['mean']:.1%}", f"{g['max']:.1%}"]
                                                    for g in result["completeness_gap"]], "rrr"), ""]
    atomic_write_text(folder / f"{name}.md", "\n".join(md))
    print(f"wrote {folder / name}.json and .md")


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())
