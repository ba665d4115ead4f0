"""The whole study in one command: train a plan's runs, evaluate them, test robustness, explain, and write the report.

Examples:
    python study.py --data-dir ../shared/data/animals10/raw-img \\
        --mobilenet-weights ../shared/weights/mobilenet_v2-4972ace1.pth      # the study: cpu plan without CUDA
    python study.py --plan quick                                            # smoke run of every experiment (minutes)
    python study.py --plan full                                             # the complete study (hours on a GPU)
    python study.py --plan my_plan.json                                     # a plan of your own (see common/plans.py)
    python study.py --plan quick --list                                     # the commands, and which are done
    python study.py --plan quick --report-only                              # rebuild the report from finished runs
    python study.py --report-only --handin handin --student-id 2512345      # the hand-in: handin/2512345.zip

Every run is an ordinary command of part1_scratch_cnn.py or a part 2 script, tagged `<plan>-<run name>`, so
its folder is runs/<timestamp>-<model>-<mode>-<plan>-<name>/. A run whose folder has metrics.json is done and
skipped; one killed part-way (last.pt, no metrics.json) is continued with --resume; so after a kill the same
command picks up where it stopped. Each finished run is evaluated on the test split (evaluate.py); the best
scratch and the best transfer run are also tested under corruptions and against out-of-distribution
images, and explained with Grad-CAM. The report goes to runs/report/index.html and report.md, and as an executed
Jupyter notebook to runs/report/report.ipynb, with the collected figures in runs/report/study.json.

study.py runs from any folder (`python path/to/study.py ...`): the scripts are the repository's own, while
--plan FILE, --data-dir and --output-dir are read relative to the current folder. Each training runs as a child
process in its own process group; when study.py is stopped (Ctrl-C, SIGTERM, SIGHUP) or fails, the child's group is
stopped too, and the same command later resumes the stopped run from its last finished epoch.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from common.architectures import ARCHS, arch_of_script
from common.cli import ArgumentParser, DataError, UserError
from common.data import data_notes, resolve_data_dir
from common.handin import check_handin_folder, final_runs, student_id, write_handin
from common.models import WeightsError, load_pretrained
from common.notebook import NotebookError, write_notebook
from common.plans import PLANS, expand_seeds
from common.report import build_report
from common.runs import write_json

ROOT = Path(__file__).resolve().parent  # the scripts a plan names live here, whatever the current folder
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name))
POSIX = os.name == "posix"  # process groups, signal masks and PR_SET_PDEATHSIG; elsewhere only the child is stopped
GRACE_SECONDS = 5.0  # a stopped child gets this long to exit on SIGTERM before it is killed


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Run a study plan and write its report.")
    parser.add_argument("--plan", default="auto",
                        help=f"{', '.join(PLANS)}, a plan JSON file, or auto: full with CUDA, cpu without")
    parser.add_argument("--data-dir", default=None,
                        help="folder of <class>/<images> (default: $ANIMALS10_DIR, else data/animals10/raw-img)")
    parser.add_argument("--output-dir", default="runs", help="where the runs, the split and the report go")
    parser.add_argument("--mobilenet-weights", default="imagenet", help="--weights for MobileNetV2 runs")
    parser.add_argument("--resnet-weights", default="imagenet", help="--weights for ResNet-18 runs")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--only", default=None,
                        help="comma-separated run names: train only these (the report covers all)")
    parser.add_argument("--list", action="store_true", help="print each run's command and status, run nothing")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing; evaluate and report what is finished")
    parser.add_argument("--handin", default=None, metavar="DIR",
                        help="also write the hand-in DIR/: the notebook executed there and its .py twin, the "
                             "project's code, the records the notebook reads, saved_models/<model>/ (checkpoint and "
                             "TensorBoard events of the best scratch CNN, ResNet-18 and MobileNetV2) and its zip")
    parser.add_argument("--student-id", type=_student_id, default=None, metavar="ID",
                        help="name the hand-in's zip <ID>.zip (letters, digits, '.', '_', '-')")
    return parser


def _student_id(text: str) -> str:
    try:
        return student_id(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class Stopped(BaseException):
    """study.py received a stop signal; a BaseException, so no `except Exception` swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum: int, frame) -> None:
    raise Stopped(signum)


def check_scripts(plan: dict, where: str) -> None:
    """Refuse a plan naming any script but the repository's training scripts (no paths, no other programs)."""
    allowed = sorted(spec.script for spec in ARCHS.values())
    for r in plan["runs"]:
        if r["script"] not in allowed:
            raise DataError(f"{where}: run {r['name']!r} names script {r['script']!r}; a plan may only run "
                            f"{', '.join(allowed)} (named without a folder)")


def load_plan(name: str, resnet18: bool = True) -> dict:
    """A built-in plan by name (resnet18=False: the quick or cpu plan without ResNet-18), or a plan JSON file."""
    if name in PLANS:
        plan = PLANS[name](resnet18=resnet18) if name in ("quick", "cpu") else PLANS[name]()
        check_scripts(plan, f"plan {name}")
        return plan
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
        raise DataError(f"plan file {path} is not a valid plan ({type(e).__name__}: {e}); "
                        "see common/plans.py") from None
    check_scripts(plan, f"plan file {path}")
    missing = set(COMPRESSION_KEYS) - set(plan.get("compression") or dict.fromkeys(COMPRESSION_KEYS))
    if missing:
        raise DataError(f"plan file {path}: its \"compression\" entry lacks {', '.join(sorted(missing))}; give "
                        f"{', '.join(COMPRESSION_KEYS)} (see common/plans.py), or drop the entry")
    try:
        plan["runs"] = expand_seeds(plan["runs"])
    except DataError as e:
        raise DataError(f"plan file {path}: {e}") from None
    names = [r["name"] for r in plan["runs"]]
    if len(set(names)) != len(names):
        raise DataError(f"plan file {path} uses a run name twice; give every run its own name")
    return plan


def weights_problem(arch: str, weights: str, timeout: float = 30.0) -> str | None:
    """None when --weights resolves for arch (a file that fits, torchvision's cache or download, 'none'); else why not.

    A download is tried only when torchvision's cache lacks the file, with a socket timeout, so an offline
    machine answers in seconds instead of hanging.
    """
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        load_pretrained(ARCHS[arch].build(), arch, weights)
    except WeightsError as e:
        return str(e).split("; ")[0]
    finally:
        socket.setdefaulttimeout(previous)
    return None


def resnet_warning(args, plan_name: str) -> str | None:
    """The report's and log's line when ResNet-18 weights do not resolve, with the way out; None when they do."""
    problem = weights_problem("resnet18", args.resnet_weights)
    if problem is None:
        return None
    effect = (f"the {plan_name} plan leaves out its ResNet-18 runs (fc on cached features, blocks34, full)"
              if plan_name in ("quick", "cpu") else "the plan's ResNet-18 runs fail")
    return (f"**ResNet-18 is missing from this study**: its weights could not be had ({problem}), so {effect}. "
            "To include it, pass `--resnet-weights FILE` (a state dict of torchvision's resnet18, e.g. "
            "resnet18-f37072fd.pth) or run once on a machine that can download torchvision's weights "
            "(`--resnet-weights imagenet`, the default); `--resnet-weights none` trains it from random "
            "initialisation.")


def plan_name(plan: str, device: str) -> str:
    """--plan auto is the full plan where the runs get a GPU and the cpu plan elsewhere; other names stay."""
    if plan != "auto":
        return plan
    return "full" if device != "cpu" and torch.cuda.is_available() else "cpu"


def plan_and_warnings(args) -> tuple[dict, list[str]]:
    """Load the plan, probing once whether ResNet-18 weights resolve when the plan has (or may have) ResNet-18 runs."""
    name = plan_name(args.plan, args.device)
    if name in PLANS:
        warning = resnet_warning(args, name)
        return load_plan(name, resnet18=warning is None), [warning] if warning else []
    plan = load_plan(args.plan)
    uses = any(r["script"] == ARCHS["resnet18"].script and "--weights" not in r["args"] for r in plan["runs"])
    warning = resnet_warning(args, plan["name"]) if uses else None
    return plan, [warning] if warning else []


def run_folder(output_dir: Path, tag: str) -> Path | None:
    """The run's folder: a finished one, else the latest with a last.pt to resume, else None."""
    folders = sorted(p.parent for p in output_dir.glob(f"*-{tag}/config.json")
                     if json.loads(p.read_text()).get("tag") == tag)
    finished = [p for p in folders if (p / "metrics.json").is_file()]
    resumable = [p for p in folders if (p / "last.pt").is_file()]
    return (finished or resumable or [None])[-1]


def train_command(run: dict, plan: dict, args) -> list[str]:
    """The run's command line: the plan's arguments plus data, output, tag, weights and device."""
    cmd = [sys.executable, str(ROOT / run["script"]), *run["args"], "--output-dir", args.output_dir,
           "--tag", f"{plan['name']}-{run['name']}", "--device", args.device]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    flags = {"resnet18": args.resnet_weights, "mobilenet_v2": args.mobilenet_weights}  # others: the script's default
    weights = flags.get(arch_of_script(run["script"]).name)
    if weights is not None and "--weights" not in run["args"]:
        cmd += ["--weights", weights]
    return cmd


def shown(cmd: list[str]) -> str:
    """A command as a person would type it: `python`, and the script relative to the current folder when inside it."""
    script = os.path.relpath(cmd[1]) if os.path.isabs(cmd[1]) else cmd[1]
    return shlex.join(["python", script if not script.startswith("..") else cmd[1], *cmd[2:]])


def _die_with_parent(parent: int) -> None:
    """In the child, before exec: get SIGTERM when study.py dies, even by SIGKILL (Linux; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # study.py died before prctl took effect
            os._exit(1)


def stop(proc: subprocess.Popen, grace: float = GRACE_SECONDS) -> None:
    """Stop a child still running and everything in its process group: SIGTERM, then SIGKILL after grace seconds."""
    if proc.poll() is not None:
        return
    # a second Ctrl-C must not cut this short and leave the child running
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS) if POSIX else None
    try:
        for sig, wait in ((signal.SIGTERM, grace), (getattr(signal, "SIGKILL", signal.SIGTERM), None)):
            try:
                if POSIX:
                    os.killpg(proc.pid, sig)
                else:  # Windows: TerminateProcess, already a hard stop
                    proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        if POSIX:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def execute(cmd: list[str], log_path: Path) -> tuple[int, str]:
    """Run a command, echoing its output and keeping it in log_path; (exit code, its error line or last line).

    The child runs in its own process group, stopped with it when study.py is stopped or fails.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print("$ " + (shown(cmd)[len("python "):] if cmd[0] == sys.executable else shlex.join(cmd)), flush=True)
    parent = os.getpid()
    group = {"start_new_session": True, "preexec_fn": lambda: _die_with_parent(parent)} if POSIX else {}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **group)
        try:
            tail = b""
            for chunk in iter(lambda: proc.stdout.read1(1 << 16), b""):
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                log.write(chunk)
                tail = (tail + chunk)[-4096:]
            code = proc.wait()
        finally:
            stop(proc)
            proc.stdout.close()
    lines = [ln.strip() for ln in tail.decode(errors="replace").replace("\r", "\n").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    return code, (errors or lines or [""])[-1]


def stale(result: Path, source: Path) -> bool:
    """True when result is missing or older than the file it was computed from."""
    return not result.is_file() or result.stat().st_mtime < source.stat().st_mtime


def read_json(path: Path) -> dict | None:
    """A JSON file's content, or None when it is absent."""
    return json.loads(path.read_text()) if path.is_file() else None


# What gradcam.py writes beside its grid for the report, by the run-record key it is read into.
EXPLANATION_FILES = ("faithfulness", "sanity", "layers")


def explanations_stale(gradcam_dir: Path, ckpt: Path, checks: dict[str, int]) -> bool:
    """Whether gradcam.py must run again: its grid is older than the checkpoint, a check was made on another
    number of images, or an output of this version (the shuffled-label test, the layer comparison) is missing."""
    found = {key: read_json(gradcam_dir / f"{key}.json") or {} for key in EXPLANATION_FILES}
    return (stale(gradcam_dir / "gradcam_grid.png", ckpt) or not found["layers"]
            or any(n and found[key].get("requested") != n for key, n in checks.items())
            or bool(checks["sanity"] and "data_randomization" not in found["sanity"]))


COMPRESSION_KEYS = ("methods", "sparsities", "finetune_epochs", "finetune_fraction")  # a plan's "compression"


def compress_run(ckpt: Path, settings: dict, device: str, log_path: Path) -> str | None:
    """compress.py on a run's best.pt with the plan's compression settings, unless its compression.json is newer
    than the checkpoint and made with them; an error message, or None."""
    result = ckpt.parent / "compressed" / "compression.json"
    done = read_json(result)
    methods, sparsities = settings["methods"].split(","), [float(v) for v in settings["sparsities"].split(",")]
    fits = done and done.get("methods") == methods and ("prune" not in methods or (
        done.get("sparsities") == sparsities
        and (done.get("finetune") or {}).get("epochs") == settings["finetune_epochs"]))
    if fits and not stale(result, ckpt):
        return None
    code, message = execute([sys.executable, str(ROOT / "compress.py"), "--ckpt", str(ckpt), "--device", device,
                             "--methods", settings["methods"], "--sparsities", settings["sparsities"],
                             "--finetune-epochs", str(settings["finetune_epochs"]),
                             "--finetune-fraction", str(settings["finetune_fraction"])], log_path)
    return f"compression failed: {message}" if code else None


def evaluate_ensemble(records: list[dict], report_dir: Path, device: str) -> dict | None:
    """evaluate.py --ensemble on the final models (the best run of each architecture), unless its ensemble.json is
    newer than their checkpoints and of them; its result, or None with fewer than two final models."""
    ckpts = [str(Path(r["run_dir"]) / "best.pt") for r in final_runs(records).values()]
    if len(ckpts) < 2:
        return None
    result = report_dir / "ensemble" / "ensemble.json"
    done = read_json(result)
    if not done or [m["checkpoint"] for m in done["members"]] != ckpts or any(stale(result, Path(c)) for c in ckpts):
        code, message = execute([sys.executable, str(ROOT / "evaluate.py"), "--ensemble", *ckpts, "--device", device,
                                 "--out-dir", str(result.parent)], report_dir / "logs" / "ensemble.log")
        if code:
            print(f"ensemble: not evaluated ({message})", flush=True)
            return None
    return read_json(result)


def handin_protected(args) -> dict[str, Path]:
    """The folders a --handin folder must neither be nor hold, since the hand-in replaces its folder whole."""
    return {"output folder": Path(args.output_dir), "report folder": Path(args.output_dir) / "report",
            "data folder": resolve_data_dir(args.data_dir),
            "project": ROOT, "current folder": Path.cwd()}


def main(args) -> int:
    plan, warnings = plan_and_warnings(args)
    for warning in warnings:
        print(f"note: {warning.replace('**', '')}", flush=True)
    output_dir = Path(args.output_dir)
    report_dir = output_dir / "report"
    only = set(args.only.split(",")) if args.only else None
    unknown = only - {r["name"] for r in plan["runs"]} if only else set()
    if unknown:
        raise DataError(f"--only names runs that plan {plan['name']!r} does not have: {', '.join(sorted(unknown))}; "
                        "see --list")
    if not args.list:
        resolve_data_dir(args.data_dir)  # fail early on a missing data folder, before any run starts
    if args.handin:
        check_handin_folder(Path(args.handin), handin_protected(args))
    records, started = [], time.time()
    for i, run in enumerate(plan["runs"], 1):
        tag = f"{plan['name']}-{run['name']}"
        folder = run_folder(output_dir, tag)
        cmd = train_command(run, plan, args)
        done = folder is not None and (folder / "metrics.json").is_file()
        record = {"name": run["name"], "groups": run["groups"], "vars": run["vars"], "repeat": run.get("repeat"),
                  "label": run.get("label", run["name"]), "command": shown(cmd),
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
    checks = {key: robustness.get(key, 0) for key in ("faithfulness", "sanity")}  # test images per explanation check
    for r in finished:
        folder = Path(r["run_dir"])
        ckpt = folder / "best.pt"
        eval_cmd = [sys.executable, str(ROOT / "evaluate.py"), "--ckpt", str(ckpt), "--device", args.device]
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
        if r["name"] in explained and explanations_stale(folder / "gradcam", ckpt, checks):
            code, message = execute([sys.executable, str(ROOT / "gradcam.py"), "--ckpt", str(ckpt),
                                     "--device", args.device, "--faithfulness", str(checks["faithfulness"]),
                                     "--sanity", str(checks["sanity"]), "--compare-layer", "default"],
                                    report_dir / "logs" / f"{r['name']}-gradcam.log")
            if code:
                r["error"] = f"Grad-CAM failed: {message}"
        compressed = r["name"] in explained and plan.get("compression") and r["vars"].get("model") != "scratch_cnn"
        if compressed:
            r["error"] = compress_run(ckpt, plan["compression"], args.device,
                                      report_dir / "logs" / f"{r['name']}-compress.log") or r["error"]
        r.update(metrics=read_json(folder / "metrics.json"), config=read_json(folder / "config.json"),
                 eval=read_json(folder / "eval.json"), corruptions=read_json(folder / "corruptions.json"),
                 ood=read_json(folder / "ood.json"),
                 compression=read_json(folder / "compressed" / "compression.json") if compressed else None,
                 **{key: read_json(folder / "gradcam" / f"{key}.json") if r["name"] in explained else None
                    for key in EXPLANATION_FILES})
        r["files"] = {key: str(folder / name) for key, name in (
            ("curves", "curves.png"), ("confusion_matrix", "confusion_matrix.png"),
            ("misclassified", "misclassified.png"), ("corruptions", "corruptions.png"), ("ood_hist", "ood_hist.png"),
            ("gradcam_grid", "gradcam/gradcam_grid.png"),
            ("error_analysis", "gradcam/error_analysis.md")) if (folder / name).is_file()}
    for r in records:
        if r["status"] != "done":
            r.update(metrics=None, config=None, eval=None, corruptions=None, ood=None, compression=None, files={},
                     **dict.fromkeys(EXPLANATION_FILES))

    weights = {w for w in (args.mobilenet_weights, args.resnet_weights) if w not in ("imagenet", "none")}
    notes = [*data_notes(resolve_data_dir(args.data_dir)), *plan.get("notes", [])]
    if args.resnet_weights == "none" and any(r["script"] == ARCHS["resnet18"].script for r in plan["runs"]):
        notes.append("ResNet-18 runs start from random initialisation (--resnet-weights none), not ImageNet weights.")
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
             "working_dir": os.getcwd(),  # the run folders' paths are relative to it
             "device": device, "torch": torch.__version__, "warnings": warnings, "notes": notes,
             "groups": plan.get("groups", {}), "ensemble": evaluate_ensemble(records, report_dir, args.device),
             "runs": records, "wall_seconds_this_invocation": time.time() - started}
    write_json(report_dir / "study.json", study)
    index = build_report(study, report_dir)
    try:
        print(f"notebook: {write_notebook(study, report_dir)} (executed)", flush=True)
    except NotebookError as e:
        for name in ("report.ipynb", "report.py"):  # older ones would not match this report
            (report_dir / name).unlink(missing_ok=True)
        print(f"notebook: not written ({e})", flush=True)
    if args.handin:
        zipped = write_handin(study, output_dir / "split.json", Path(args.handin), handin_protected(args),
                              args.student_id)
        print(f"hand-in: {zipped}", flush=True)
    failed = [r for r in records if r["status"] != "done"]
    print(f"\n{len(records) - len(failed)} of {len(records)} runs finished; report: {index}")
    for r in failed:
        print(f"  {r['status']}: {r['name']}" + (f" ({r['error']})" if r["error"] else ""))
    return 1 if any(r["status"] == "failed" for r in records) else 0


if __name__ == "__main__":
    args = get_args_parser().parse_args()
    for sig in STOP_SIGNALS:
        signal.signal(sig, _raise_stopped)
    try:
        sys.exit(main(args))
    except UserError as e:
        sys.exit(f"error: {e}")
    except Stopped as e:
        print(f"\nstudy.py: stopped by {signal.Signals(e.signum).name}; the running command was stopped too. "
              "Run the same command again to resume.", file=sys.stderr, flush=True)
        sys.exit(128 + e.signum)
