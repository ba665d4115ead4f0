"""The report step of bench/gpu_check.sh: its steps, the 2-epoch runs' metrics.json and the throughput JSON, gathered
into bench/results/<gpu>-<date>.json and .md.

Examples:
    python bench/gpu_collect.py --work /tmp/gpu-check-XXXX --gpu-name "NVIDIA H200"
    python bench/gpu_collect.py --work /tmp/gpu-check-XXXX --gpu-name "NVIDIA H200" --results-dir /tmp/out

--work is the check's folder: steps.tsv (name, status, seconds, exit code per step), runs/ (the scripts'
--output-dir), throughput/ (bench/throughput.py's --results-dir) and logs/ (one log per step).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.cli import ArgumentParser, run_main  # noqa: E402
from common.files import atomic_write_text  # noqa: E402
from common.runs import finished_runs  # noqa: E402

RESNET_AIM = 10_000  # train img/s the issue aims at for ResNet-18 full fine-tuning on an H100/H200-class GPU
RUN_KEYS = ("arch", "mode", "epochs_run", "batch_size", "lr", "best_val_acc", "test_acc", "seconds_per_epoch",
            "train_img_per_s", "eval_img_per_s", "peak_memory_mb", "device")


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Gather bench/gpu_check.sh's results into one JSON and Markdown report.")
    parser.add_argument("--work", required=True, help="the check's folder (steps.tsv, runs/, throughput/, logs/)")
    parser.add_argument("--gpu-name", required=True, help="the GPU, as torch.cuda.get_device_name() gives it")
    parser.add_argument("--results-dir", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--note", action="append", default=[], help="a line for the report (repeatable)")
    return parser


def read_steps(work: Path) -> list[dict]:
    """steps.tsv rows: name, status (ok, failed, timed out, skipped), seconds, exit code, and the log's last line."""
    steps = []
    path = work / "steps.tsv"
    for line in path.read_text().splitlines() if path.exists() else []:
        name, status, seconds, rc = line.split("\t")
        log = work / "logs" / f"{name}.log"
        lines = [s for s in log.read_text(errors="replace").splitlines() if s.strip()] if log.exists() else []
        steps.append({"name": name, "status": status, "seconds": int(seconds), "returncode": int(rc),
                      "last_line": lines[-1].strip()[-300:] if lines else ""})
    return steps


def read_runs(runs: Path) -> list[dict]:
    """The finished runs' figures, with their weights and AMP from config.json."""
    out = []
    for run in finished_runs(runs):
        config, metrics = run["config"] or {}, run["metrics"]
        weights = (config.get("weights") or {}).get("source") if isinstance(config.get("weights"), dict) else None
        out.append({**{k: metrics.get(k) for k in RUN_KEYS}, "amp": config.get("amp"), "weights": weights,
                    "run": run["run_dir"].name})
    return out


def read_throughput(folder: Path) -> list[dict]:
    """Every JSON bench/throughput.py wrote, with its Markdown."""
    found = []
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        md = f.with_suffix(".md")
        found.append({"file": f.name, "result": json.loads(f.read_text()),
                      "markdown": md.read_text() if md.exists() else ""})
    return found


def markdown(report: dict) -> str:
    """Steps, the 2-epoch runs, the ResNet-18 aim, then the throughput tables."""
    lines = [f"GPU check on {report['gpu']}, {report['date']} (torch {report['torch']}): "
             f"{report['total_s']} s in all.", *[f"- {n}" for n in report["notes"]], "",
             "| step | status | s | last line of its log |", "|---|---|---:|---|"]
    lines += [f"| {s['name']} | {s['status']} | {s['seconds']} | {s['last_line'].replace('|', '/')} |"
              for s in report["steps"]]
    lines += ["", "2 epochs of each variant through its script (AMP, channels_last, resident uint8 images):", "",
              "| model | mode | batch | s/epoch | train img/s | eval img/s | best val acc | test acc | peak MiB | "
              "weights |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in report["runs"]:
        lines.append(f"| {r['arch']} | {r['mode']} | {r['batch_size']} | {r['seconds_per_epoch']:.1f} | "
                     f"{r['train_img_per_s']:.0f} | {r['eval_img_per_s']:.0f} | {r['best_val_acc']:.4f} | "
                     f"{r['test_acc']:.4f} | {r['peak_memory_mb']:.0f} | {r['weights']} |")
    resnet = next((r for r in report["runs"] if (r["arch"], r["mode"]) == ("resnet18", "full")), None)
    if resnet:
        verdict = "meets" if resnet["train_img_per_s"] >= RESNET_AIM else "misses"
        lines += ["", f"ResNet-18 full fine-tuning: {resnet['train_img_per_s']:.0f} train img/s over 2 epochs "
                      f"(the first includes cuDNN autotuning); {verdict} the aim of {RESNET_AIM:,}."]
    for t in report["throughput"]:
        lines += ["", f"bench/throughput.py ({t['file']}):", "", t["markdown"].strip()]
    return "\n".join(lines) + "\n"


def main(args) -> int:
    import torch  # after the argument check, so --help is quick

    work = Path(args.work)
    steps = read_steps(work)
    report = {"gpu": args.gpu_name, "date": time.strftime("%Y-%m-%d"), "torch": str(torch.__version__),
              "cuda": torch.version.cuda, "notes": args.note, "total_s": sum(s["seconds"] for s in steps),
              "steps": steps, "runs": read_runs(work / "runs"), "throughput": read_throughput(work / "throughput")}
    slug = "".join(c if c.isalnum() else "-" for c in args.gpu_name.lower()).strip("-")
    stem = Path(args.results_dir) / f"{slug}-{report['date']}"
    atomic_write_text(stem.with_suffix(".json"), json.dumps(report, indent=2, allow_nan=False) + "\n")
    md = markdown(report)
    atomic_write_text(stem.with_suffix(".md"), md)
    print(md)
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())
