"""The whole study in one command: train a plan's runs, evaluate them, test robustness, explain, and write the report.

Examples:
    python study.py --plan quick --data-dir ../shared/data/animals10/raw-img \\
        --mobilenet-weights ../shared/weights/mobilenet_v2-4972ace1.pth      # CPU smoke run of the study (minutes)
    python study.py --plan full                                             # the complete study (hours on a GPU)
    python study.py --plan my_plan.json                                     # a plan of your own (see common/plans.py)
    python study.py --plan quick --list                                     # the commands, and which are done
    python study.py --plan quick --report-only                              # rebuild the report from finished runs

Every run is an ordinary command of part1_scratch_cnn.py or a part 2 script, tagged `<plan>-<run name>`, so
its folder is runs/<timestamp>-<model>-<mode>-<plan>-<name>/. A run whose folder has metrics.json is done and
skipped; one killed part-way (last.pt, no metrics.json) is continued with --resume; so after a kill the same
command picks up where it stopped. Each finished run is evaluated on the test split (evaluate.py); the best
scratch and the best transfer run are also tested under corruptions and against out-of-distribution
images, and explained with Grad-CAM. The report goes to runs/report/index.html and report.md, with the
collected figures in runs/report/study.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from common.data import DataError, resolve_data_dir
from common.plans import PLANS, SCRATCH
from common.report import build_report
from common.runs import write_json

REPORT_NOTES = [
    "The data is the shared Animals-10 subset when run on ../shared: six of its ten classes are mostly photos from "
    "other public sets and 399 of 450 horse images are transparent cut-outs (composited on white), so compare "
    "with published Animals-10 figures with care.",
]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Run a study plan and write its report.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--plan", default="quick", help=f"{' or '.join(PLANS)}, or a plan JSON file")
    parser.add_argument("--data-dir", default=None, help="folder of <class>/<images> (default: $ANIMALS10_DIR, else data/animals10/raw-img)")
    parser.add_argument("--output-dir", default="runs", help="where the runs, the split and the report go")
    parser.add_argument("--mobilenet-weights", default="imagenet", help="--weights for MobileNetV2 runs")
    parser.add_argument("--resnet-weights", default="imagenet", help="--weights for ResNet-18 runs")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--only", default=None, help="comma-separated run names: train only these (the report covers all)")
    parser.add_argument("--list", action="store_true", help="print each run's command and status, run nothing")
    parser.add_argument("--report-only", action="store_true", help="train nothing; evaluate and report what is finished")
    return parser


def load_plan(name: str) -> dict:
    """A built-in plan by name, or a plan JSON file; a clear error for anything else."""
    if name in PLANS:
        return PLANS[name]()
    path = Path(name)
    if not path.is_file():
        raise DataError(f"--plan {name!r} is neither {' nor '.join(PLANS)} nor a plan file; pass one of those")
    try:
        plan = json.loads(path.read_text())
        names = [r["name"] for r in plan["runs"]]
        plan.setdefault("name", path.stem)
        for r in plan["runs"]:
            r.setdefault("groups", [])
            r.setdefault("vars", {})
            if not isinstance(r["args"], list) or not isinstance(r["script"], str):
                raise TypeError("'args' must be a list and 'script' a string")
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"plan file {path} is not a valid plan ({type(e).__name__}: {e}); see common/plans.py") from None
    if len(set(names)) != len(names):
        raise DataError(f"plan file {path} uses a run name twice; give every run its own name")
    return plan


def run_folder(output_dir: Path, tag: str) -> Path | None:
    """The run's folder: a finished one, else the latest with a last.pt to resume, else None."""
    folders = sorted(p.parent for p in output_dir.glob(f"*-{tag}/config.json")
                     if json.loads(p.read_text()).get("tag") == tag)
    finished = [p for p in folders if (p / "metrics.json").is_file()]
    resumable = [p for p in folders if (p / "last.pt").is_file()]
    return (finished or resumable or [None])[-1]


def train_command(run: dict, plan: dict, args) -> list[str]:
    """The run's command line: the plan's arguments plus data, output, tag, weights and device."""
    cmd = [sys.executable, run["script"], *run["args"], "--output-dir", args.output_dir,
           "--tag", f"{plan['name']}-{run['name']}", "--device", args.device]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    if run["script"] != SCRATCH and "--weights" not in run["args"]:
        cmd += ["--weights", args.resnet_weights if "resnet" in run["script"] else args.mobilenet_weights]
    return cmd


def execute(cmd: list[str], log_path: Path) -> tuple[int, str]:
    """Run a command, echoing its output and keeping it in log_path; (exit code, its error line or last line)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print("$ " + shlex.join(cmd[1:] if cmd[0] == sys.executable else cmd), flush=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        tail = b""
        for chunk in iter(lambda: proc.stdout.read1(1 << 16), b""):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
            log.write(chunk)
            tail = (tail + chunk)[-4096:]
        code = proc.wait()
    lines = [ln.strip() for ln in tail.decode(errors="replace").replace("\r", "\n").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    return code, (errors or lines or [""])[-1]


def stale(result: Path, source: Path) -> bool:
    """True when result is missing or older than the file it was computed from."""
    return not result.is_file() or result.stat().st_mtime < source.stat().st_mtime


def read_json(path: Path) -> dict | None:
    """A JSON file's content, or None when it is absent."""
    return json.loads(path.read_text()) if path.is_file() else None


def main(args) -> int:
    plan = load_plan(args.plan)
    output_dir = Path(args.output_dir)
    report_dir = output_dir / "report"
    only = set(args.only.split(",")) if args.only else None
    unknown = only - {r["name"] for r in plan["runs"]} if only else set()
    if unknown:
        raise DataError(f"--only names runs that plan {plan['name']!r} does not have: {', '.join(sorted(unknown))}; "
                        "see --list")
    if not args.list:
        resolve_data_dir(args.data_dir)  # fail early on a missing data folder, before any run starts
    records, started = [], time.time()
    for i, run in enumerate(plan["runs"], 1):
        tag = f"{plan['name']}-{run['name']}"
        folder = run_folder(output_dir, tag)
        cmd = train_command(run, plan, args)
        done = folder is not None and (folder / "metrics.json").is_file()
        record = {"name": run["name"], "groups": run["groups"], "vars": run["vars"],
                  "label": run.get("label", run["name"]), "command": shlex.join(["python", *cmd[1:]]),
                  "status": "done" if done else "missing", "error": None, "run_dir": str(folder) if folder else None}
        if args.list:
            print(f"[{record['status']:7s}] {run['name']}: {record['command']}")
            continue
        wanted = only is None or run["name"] in only
        if not done and wanted and not args.report_only:
            if folder is not None:
                cmd += ["--resume", str(folder / "last.pt")]
            print(f"\n== [{i}/{len(plan['runs'])}] {run['name']}" + (" (resuming)" if folder else ""), flush=True)
            code, message = execute(cmd, report_dir / "logs" / f"{run['name']}.log")
            folder = run_folder(output_dir, tag)
            if code == 0 and folder is not None and (folder / "metrics.json").is_file():
                record.update(status="done", run_dir=str(folder))
            else:
                record.update(status="failed", error=message or f"exit code {code}")
        elif done:
            print(f"== {run['name']}: done ({folder.name})")
        records.append(record)
    if args.list:
        return 0

    finished = [r for r in records if r["status"] == "done"]
    scratch = [r for r in finished if r["vars"].get("model") == "scratch_cnn"]
    transfer = [r for r in finished if r["vars"].get("model") != "scratch_cnn"]
    val = lambda r: read_json(Path(r["run_dir"]) / "metrics.json")["best_val_acc"]  # noqa: E731
    explained = {max(rs, key=val)["name"] for rs in (scratch, transfer) if rs}
    robustness = plan.get("robustness", {"severities": "1,2,3,4,5", "ood_count": 500})
    for r in finished:
        folder = Path(r["run_dir"])
        ckpt = folder / "best.pt"
        eval_cmd = [sys.executable, "evaluate.py", "--ckpt", str(ckpt), "--device", args.device]
        if r["name"] in explained:
            eval_cmd += ["--corruptions", "--severities", robustness["severities"], "--ood", "synthetic",
                         "--ood-count", str(robustness["ood_count"])]
            corruptions = read_json(folder / "corruptions.json")
            redo = (stale(folder / "corruptions.json", ckpt) or stale(folder / "ood.json", ckpt) or
                    ",".join(map(str, corruptions["severities"])) != robustness["severities"])
        else:
            redo = stale(folder / "eval.json", ckpt)
        if redo:
            code, message = execute(eval_cmd, report_dir / "logs" / f"{r['name']}-evaluate.log")
            if code:
                r["error"] = f"evaluation failed: {message}"
        if r["name"] in explained and stale(folder / "gradcam" / "gradcam_grid.png", ckpt):
            code, message = execute([sys.executable, "gradcam.py", "--ckpt", str(ckpt), "--device", args.device],
                                    report_dir / "logs" / f"{r['name']}-gradcam.log")
            if code:
                r["error"] = f"Grad-CAM failed: {message}"
        r.update(metrics=read_json(folder / "metrics.json"), config=read_json(folder / "config.json"),
                 eval=read_json(folder / "eval.json"), corruptions=read_json(folder / "corruptions.json"),
                 ood=read_json(folder / "ood.json"))
        r["files"] = {key: str(folder / name) for key, name in (
            ("curves", "curves.png"), ("confusion_matrix", "confusion_matrix.png"), ("misclassified", "misclassified.png"),
            ("corruptions", "corruptions.png"), ("ood_hist", "ood_hist.png"), ("gradcam_grid", "gradcam/gradcam_grid.png"),
            ("error_analysis", "gradcam/error_analysis.md")) if (folder / name).is_file()}
    for r in records:
        if r["status"] != "done":
            r.update(metrics=None, config=None, eval=None, corruptions=None, ood=None, files={})

    weights = {w for w in (args.mobilenet_weights, args.resnet_weights) if w not in ("imagenet", "none")}
    notes = [*REPORT_NOTES, *plan.get("notes", [])]
    if any(Path(w).name.startswith("mobilenet_v2-4972ace1") for w in weights):
        notes.append("The MobileNetV2 ImageNet weights are the offline RECONSTRUCTION in ../shared/weights "
                     "(dequantized from torchvision's quantized model), not torchvision's official float file.")
    devices = sorted({r["metrics"]["device"] for r in finished if r.get("metrics")})
    device = ", ".join(devices) or args.device
    if torch.cuda.is_available() and "cuda" in device:
        device += f" ({torch.cuda.get_device_name()})"
    elif device == "cpu":
        device += f" ({platform.machine()}, {os.cpu_count()} cores)"
    study = {"plan": plan["name"], "description": plan.get("description", ""),
             "created": time.strftime("%Y-%m-%d %H:%M"), "data_dir": str(resolve_data_dir(args.data_dir)),
             "device": device, "torch": torch.__version__, "notes": notes, "groups": plan.get("groups", {}),
             "runs": records, "wall_seconds_this_invocation": time.time() - started}
    write_json(report_dir / "study.json", study)
    index = build_report(study, report_dir)
    failed = [r for r in records if r["status"] != "done"]
    print(f"\n{len(records) - len(failed)} of {len(records)} runs finished; report: {index}")
    for r in failed:
        print(f"  {r['status']}: {r['name']}" + (f" ({r['error']})" if r["error"] else ""))
    return 1 if any(r["status"] == "failed" for r in records) else 0


if __name__ == "__main__":
    args = get_args_parser().parse_args()
    try:
        sys.exit(main(args))
    except DataError as e:
        sys.exit(f"error: {e}")
