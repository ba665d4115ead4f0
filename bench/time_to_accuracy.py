"""Time to accuracy, the DAWNBench way: wall-clock from a cold start until each variant's test accuracy on the
saved split first reaches its target, for this project's scripts and for the tutorial pipeline, in one run.

Examples:
    python bench/time_to_accuracy.py --data-dir ../shared/data/animals10/raw-img \\
        --mobilenet-weights ../shared/weights/mobilenet_v2-4972ace1.pth       # every variant, 30 min cap per run
    python bench/time_to_accuracy.py --variants mobilenet_v2:fc,mobilenet_v2:full --cap-min 20
    python bench/time_to_accuracy.py --variants scratch_cnn:full --targets scratch_cnn:full=0.8 \\
        --epochs scratch_cnn:full=30 --ours-args "scratch_cnn:full=--lr 2e-3"
    python bench/time_to_accuracy.py --pipelines ours --keep-work                # ours only; keep the run folders

Each run starts cold: a fresh, empty output folder (so no split copy, pixel or feature cache; the split file is
passed with --split-file so both pipelines use the same files) and a new process. "Ours" is the project's own
script, run as a user would, with --monitor-test (the test set is evaluated after every epoch; monitoring only);
"tutorial" is bench/tutorial.py (ImageFolder + PIL + per-sample transforms + DataLoader with 2 workers, AdamW +
cosine) with the same model. A run stops at the first epoch whose test accuracy reaches the target, or at the
cap (--cap-min: "not reached in N min"). The time of an epoch is its elapsed_s (seconds since the process
started) plus the startup before that clock began (from the progress file's modification time; conservative).
A pretrained variant whose ImageNet weights do not resolve (offline, only a state-dict file works) runs with
--weights none for --per-epoch-epochs epochs and reports per-epoch cost only, and says so.

Writes bench/results/time-to-accuracy-<device>-<date>.json and .md after every variant: the machine, every
setting and command, the epochs, time to target per variant for ours and the tutorial, and their ratio.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.architectures import ARCHS  # noqa: E402
from common.cli import ArgumentParser, UserError, positive_float, positive_int, run_main  # noqa: E402
from common.data import resolve_data_dir  # noqa: E402
from common.engine import cpu_name  # noqa: E402
from common.files import atomic_write_text  # noqa: E402
from common.models import WeightsError, build_model  # noqa: E402
from common.split import load_or_create_split, read_split  # noqa: E402


@dataclass(frozen=True)
class Variant:
    """One assignment variant: the model and mode, its target test accuracy, epochs, and ours' recipe flags."""

    arch: str
    mode: str
    target: float
    epochs: int
    ours_args: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.arch}:{self.mode}"


# Targets: the for the scratch CNN and MobileNetV2; ResNet-18's are chosen like MobileNetV2's (similar
# ImageNet accuracy). Epochs and ours' flags: the cpu plan's recipe (common/plans.py); both pipelines get the same
# epochs, and both validate and test at 224 px. Ours trains the scratch CNN's first 15 epochs on 160 px crops, as
# the cpu plan does; the tutorial trains at 224 px throughout.
PROBE = ("--probe-epochs", "15")
LOW_RES = ("--low-res", "160", "--low-res-epochs", "15")
VARIANTS = {v.name: v for v in (
    Variant("scratch_cnn", "full", 0.80, 30, LOW_RES),
    Variant("mobilenet_v2", "fc", 0.965, 15, ("--cache-features",)),
    Variant("mobilenet_v2", "full", 0.95, 3, PROBE),
    Variant("resnet18", "fc", 0.965, 15, ("--cache-features",)),
    Variant("resnet18", "blocks34", 0.95, 3, PROBE),
    Variant("resnet18", "full", 0.95, 3, PROBE),
)}
PIPELINES = ("ours", "tutorial")


@dataclass
class Run:
    """One timed run: a variant in one pipeline, its weights and target (None: per-epoch cost only)."""

    variant: Variant
    pipeline: str
    weights: str
    target: float | None
    epochs: int
    extra: list[str] = field(default_factory=list)


def parse_overrides(text: str | None, kind: type, flag: str) -> dict[str, float | int]:
    """'arch:mode=value,...' -> {arch:mode: value}; unknown variants and bad values are a UserError."""
    out = {}
    for item in filter(None, (text or "").split(",")):
        name, _, value = item.partition("=")
        if name not in VARIANTS:
            raise UserError(f"{flag}: unknown variant {name!r}; choose among {', '.join(VARIANTS)}")
        try:
            out[name] = kind(value)
        except ValueError:
            raise UserError(f"{flag}: {item!r} is not {name}=NUMBER") from None
    return out


def parse_ours_args(items: list[str]) -> dict[str, list[str]]:
    """Repeated 'arch:mode=FLAGS' -> {arch:mode: [flags]}: extra options for ours' script."""
    out: dict[str, list[str]] = {}
    for item in items:
        name, _, flags = item.partition("=")
        if name not in VARIANTS:
            raise UserError(f"--ours-args: unknown variant {name!r}; give arch:mode=FLAGS, "
                            "e.g. 'mobilenet_v2:full=--lr 3e-4'")
        out.setdefault(name, []).extend(shlex.split(flags))
    return out


def check_args(args) -> str | None:
    """The variant lists, overrides and pipelines name known things, and targets are accuracies."""
    try:
        names = [n for n in args.variants.split(",") if n]
        unknown = [n for n in names if n not in VARIANTS]
        if unknown or not names:
            return f"--variants {args.variants!r}: choose among {', '.join(VARIANTS)}"
        if any(not 0 < t <= 1 for t in parse_overrides(args.targets, float, "--targets").values()):
            return "--targets are test accuracies in (0, 1]"
        if any(e < 1 for e in parse_overrides(args.epochs, int, "--epochs").values()):
            return "--epochs must be at least 1"
        parse_ours_args(args.ours_args)
    except UserError as e:
        return str(e)
    if not set(args.pipelines.split(",")) <= set(PIPELINES) or not args.pipelines:
        return f"--pipelines {args.pipelines!r}: give ours, tutorial or ours,tutorial"
    return None


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Time to a target test accuracy: ours against the tutorial pipeline.")
    parser.add_argument("--data-dir", default=None, help="the images (default: $ANIMALS10_DIR, else the project's)")
    parser.add_argument("--split-file", default="runs/split.json",
                        help="the saved split both pipelines use (drawn with the project's defaults, untimed, when "
                             "missing)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated arch:mode list")
    parser.add_argument("--pipelines", default=",".join(PIPELINES), help="ours, tutorial or both")
    parser.add_argument("--targets", default=None,
                        help="override targets, e.g. scratch_cnn:full=0.8,mobilenet_v2:fc=0.96")
    parser.add_argument("--epochs", default=None, help="override epochs (both pipelines), e.g. scratch_cnn:full=30")
    parser.add_argument("--ours-args", action="append", default=[], metavar="ARCH:MODE=FLAGS",
                        help="extra options for ours' script, e.g. 'mobilenet_v2:full=--lr 3e-4' (repeatable)")
    parser.add_argument("--mobilenet-weights", default="imagenet", help="'imagenet', a state-dict file, or 'none'")
    parser.add_argument("--resnet-weights", default="imagenet", help="'imagenet', a state-dict file, or 'none'")
    parser.add_argument("--cap-min", type=positive_float, default=30.0, help="time cap per run, minutes")
    parser.add_argument("--per-epoch-epochs", type=positive_int, default=1,
                        help="epochs of a variant without ImageNet weights (per-epoch cost only)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="both pipelines")
    parser.add_argument("--img-size", type=positive_int, default=256, help="ours' cached size; the tutorial's Resize")
    parser.add_argument("--crop-size", type=positive_int, default=224, help="both pipelines")
    parser.add_argument("--loader-workers", type=int, default=2, help="the tutorial's DataLoader workers")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--work-dir", default=None, help="where the cold runs' folders go (default: a temp folder)")
    parser.add_argument("--keep-work", action="store_true", help="keep each run's folder (logs, checkpoints)")
    parser.add_argument("--poll-s", type=positive_float, default=1.0, help="how often a run's progress is read")
    parser.add_argument("--results-dir", default=str(ROOT / "bench" / "results"))
    parser.add_check(check_args)
    return parser


def machine_info(device: str) -> dict:
    """CPU model, cores, torch version and threads, and the GPU when one is used."""
    model = cpu_name()
    cuda = device != "cpu" and torch.cuda.is_available()
    return {"cpu": model, "cores": os.cpu_count(), "torch": str(torch.__version__), "threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform(),
            "gpu": torch.cuda.get_device_name(0) if cuda else None, "load_avg_start": list(os.getloadavg())}


def resolve_weights(arch: str, weights: str) -> tuple[str, str | None]:
    """(weights to train with, None) when the ImageNet weights resolve; ('none', why not) otherwise."""
    if ARCHS[arch].weights is None:
        return "none", None
    if weights == "none":
        return "none", f"{arch}: --weights none was asked for"
    try:
        build_model(arch, 10, "fc", weights)
    except WeightsError as e:
        return "none", f"{arch}: {e}"
    return (weights if weights == "imagenet" else str(Path(weights).resolve())), None


def saved_split(args, data_dir: Path, log=print):
    """The saved split, drawn first (not timed) with the project's defaults when the file does not exist."""
    split_file = Path(args.split_file).resolve()
    if not split_file.exists():
        log(f"no saved split at {split_file}: drawing one with the project's defaults (not timed)")
        load_or_create_split(data_dir, split_file, img_size=args.img_size, log=log)
    return split_file, read_split(split_file)


def ours_command(run: Run, args, data_dir: Path, split_file: Path, split, out: Path) -> list[str]:
    """The project's own script for the variant, as a user runs it, in a fresh output folder."""
    v = run.variant
    cmd = [sys.executable, str(ROOT / ARCHS[v.arch].script)] + ([] if v.arch == "scratch_cnn" else
                                                                 ["--mode", v.mode, "--weights", run.weights])
    cmd += ["--data-dir", str(data_dir), "--output-dir", str(out), "--split-file", str(split_file),
            "--per-class", str(split.meta["per_class"]), "--split", ",".join(f"{x:g}" for x in split.meta["sizes"]),
            "--split-seed", str(split.split_seed), "--img-size", str(args.img_size), "--crop-size", str(args.crop_size),
            "--batch-size", str(args.batch_size), "--epochs", str(run.epochs), "--device", args.device,
            "--monitor-test", *([] if split.meta["dedup"] else ["--no-dedup"])]
    return cmd + list(v.ours_args) + run.extra


def tutorial_command(run: Run, args, data_dir: Path, split_file: Path, progress: Path) -> list[str]:
    """bench/tutorial.py for the same model, split, epochs, batch and sizes."""
    v = run.variant
    return [sys.executable, str(ROOT / "bench" / "tutorial.py"), "--data-dir", str(data_dir), "--split-file",
            str(split_file), "--arch", v.arch, "--mode", v.mode, "--weights", run.weights, "--epochs", str(run.epochs),
            "--batch-size", str(args.batch_size), "--workers", str(args.loader_workers), "--img-size",
            str(args.img_size), "--crop-size", str(args.crop_size), "--device", args.device,
            "--progress", str(progress)]


def read_rows(path: Path | None, seen: float | None) -> tuple[list[dict], float] | None:
    """(history rows, modification time) of a progress file that changed since `seen`; None if none or unchanged."""
    if path is None:
        return None
    try:
        with open(path, "rb") as f:  # one open file: the rows and the time belong to the same version
            mtime = os.fstat(f.fileno()).st_mtime
            if mtime == seen:
                return None
            if path.suffix == ".json":
                return json.load(f)["rows"], mtime
            return torch.load(f, map_location="cpu", weights_only=True)["history"], mtime
    except (OSError, ValueError, KeyError, RuntimeError, EOFError):
        return None  # not written yet; files are replaced atomically, so the next poll reads a whole one


def ours_progress(work: Path) -> Path | None:
    """The run folder's last.pt, which the project's scripts rewrite after every epoch."""
    found = sorted((work / "out").glob("*/last.pt"))
    return found[-1] if found else None


def stop(proc: subprocess.Popen) -> None:
    """Terminate the run's process group (its DataLoader workers too), killing it if it does not go in 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def reached(rows: list[dict], target: float | None) -> dict | None:
    """The first row whose test accuracy reaches the target."""
    return None if target is None else next((r for r in rows if r.get("test_acc", -1.0) >= target), None)


def watch(cmd: list[str], work: Path, progress: Callable[[], Path | None], target: float | None, cap_s: float,
          poll_s: float) -> dict:
    """Run cmd from a cold start until its test accuracy reaches target, it ends, or cap_s passes."""
    work.mkdir(parents=True, exist_ok=True)
    rows, offsets, seen, why = [], [], None, "finished"
    with open(work / "log.txt", "wb") as log_file:
        launch = time.time()
        proc = subprocess.Popen(cmd, cwd=work, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            while True:
                ended = proc.poll() is not None  # before reading, so the last read sees every epoch of a finished run
                got = read_rows(progress(), seen)
                if got and got[0]:
                    rows, seen = got
                    offsets.append(seen - launch - rows[-1]["elapsed_s"])
                if reached(rows, target):
                    why = "target"
                    break
                if ended:
                    break
                if time.time() - launch > cap_s:
                    why = "cap"
                    break
                time.sleep(poll_s)
        finally:
            wall = time.time() - launch
            stop(proc)
    log_tail = [line for line in (work / "log.txt").read_text(errors="replace").splitlines() if line.strip()][-3:]
    return {"rows": rows, "startup_s": min(offsets) if offsets else None, "wall_s": wall, "stopped": why,
            "returncode": proc.returncode if why == "finished" else None, "log_tail": log_tail}


def outcome(run: Run, watched: dict, cap_min: float, command: list[str]) -> dict:
    """What one run measured: status, time to target, epochs, per-epoch cost, and its rows on the launch clock."""
    rows, start = watched["rows"], watched["startup_s"] or 0.0
    hit = reached(rows, run.target)
    if hit:
        status, text = "reached", f"{start + hit['elapsed_s']:.0f} s (epoch {hit['epoch']})"
    elif watched["returncode"]:
        status, text = "failed", f"failed (exit {watched['returncode']}): {(watched['log_tail'] or [''])[-1]}"
    elif run.target is None:
        status, text = "per-epoch", "per-epoch cost only"
    elif watched["stopped"] == "cap":
        status, text = "not reached", f"not reached in {cap_min:g} min"
    else:
        status, text = "not reached", f"not reached in {len(rows)} epochs ({watched['wall_s'] / 60:.1f} min)"
    keep = ("epoch", "epoch_seconds", "train_img_per_s", "val_acc", "test_acc")
    return {"pipeline": run.pipeline, "status": status, "text": text, "target": run.target, "weights": run.weights,
            "time_to_target_s": start + hit["elapsed_s"] if hit else None,
            "epoch_reached": hit["epoch"] if hit else None,
            "epochs_run": len(rows), "epochs_planned": run.epochs, "startup_s": watched["startup_s"],
            "wall_s": watched["wall_s"], "stopped": watched["stopped"],
            "first_epoch_s": start + rows[0]["elapsed_s"] if rows else None,
            "s_per_epoch": sum(r["epoch_seconds"] for r in rows) / len(rows) if rows else None,
            "best_test_acc": max((r.get("test_acc", 0.0) for r in rows), default=None),
            "rows": [{**{k: r.get(k) for k in keep}, "time_s": start + r["elapsed_s"]} for r in rows],
            "command": shlex.join(command), "log_tail": watched["log_tail"], "load_avg_end": list(os.getloadavg())}


def ratio(entry: dict) -> dict:
    """Tutorial over ours: time to target (a lower bound when only ours reached it), or per-epoch cost."""
    ours, tut = entry.get("ours"), entry.get("tutorial")
    if not ours or not tut:
        return {}
    if entry["target"] is None:
        return {k: tut[k] / ours[k] for k in ("s_per_epoch", "first_epoch_s") if tut[k] and ours[k]}
    if ours["status"] == "reached" and tut["status"] == "reached":
        return {"time_to_target": tut["time_to_target_s"] / ours["time_to_target_s"]}
    if ours["status"] == "reached" and tut["status"] == "not reached":
        return {"time_to_target_at_least": tut["wall_s"] / ours["time_to_target_s"]}
    return {}


def plan_runs(name: str, args, weights: dict[str, tuple[str, str | None]], pipelines: list[str]) -> list[Run]:
    """The variant's runs, with its overrides; per-epoch cost only (no target) when it has no ImageNet weights."""
    v = VARIANTS[name]
    v = replace(v, target=parse_overrides(args.targets, float, "--targets").get(name, v.target),
                epochs=parse_overrides(args.epochs, int, "--epochs").get(name, v.epochs))
    w, why_not = weights[v.arch]
    no_target = why_not is not None
    extra = parse_ours_args(args.ours_args).get(name, [])
    return [Run(v, p, w, None if no_target else v.target, args.per_epoch_epochs if no_target else v.epochs,
                extra if p == "ours" else []) for p in pipelines]


def measure(run: Run, args, data_dir: Path, split_file: Path, split, work_root: Path, log=print) -> dict:
    """One cold run in its own fresh folder (removed afterwards unless --keep-work)."""
    work = work_root / f"{run.variant.arch}-{run.variant.mode}-{run.pipeline}"
    shutil.rmtree(work, ignore_errors=True)
    if run.pipeline == "ours":
        cmd = ours_command(run, args, data_dir, split_file, split, work / "out")
        progress = lambda: ours_progress(work)  # noqa: E731
    else:
        cmd = tutorial_command(run, args, data_dir, split_file, work / "progress.json")
        progress = lambda: work / "progress.json"  # noqa: E731
    log(f"== {run.variant.name} {run.pipeline}: {shlex.join(cmd)}")
    result = outcome(run, watch(cmd, work, progress, run.target, args.cap_min * 60, args.poll_s), args.cap_min, cmd)
    log(f"   {result['text']}; {result['epochs_run']} epoch(s), best test acc {result['best_test_acc']}")
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return result


def fmt(entry: dict | None, key: str) -> str:
    if not entry:
        return "-"
    if key == "text":
        return entry["text"]
    value = entry.get(key)
    return "-" if value is None else f"{value:.1f}"


def markdown(result: dict) -> str:
    """The report: machine, settings, time to target per variant, per-epoch cost of variants without weights."""
    m, s = result["machine"], result["settings"]
    lines = [f"Time to accuracy, {result['date']}: {m['gpu'] or m['cpu']}, {m['cores']} cores, torch {m['torch']} "
             f"({m['threads']} threads), load average at start {m['load_avg_start'][0]:.1f}.", "",
             f"Saved split {s['split_file']} ({s['split_sizes']} per class, fingerprint "
             f"{s['split_fingerprint'][:12]}); batch {s['batch_size']}, {s['crop_size']} px crops, cap "
             f"{s['cap_min']:g} min per run, device {s['device']}. Ours: the project's script with --monitor-test "
             "from an empty output folder; tutorial: bench/tutorial.py (ImageFolder + PIL + per-sample transforms + "
             f"DataLoader({s['loader_workers']} workers), AdamW + cosine), the same model. Time counts from the "
             "process launch to the end of the first epoch whose test accuracy reaches the target.", ""]
    timed = [e for e in result["variants"] if e["target"] is not None]
    if timed:
        lines += ["| variant | target | ours | ours epochs | tutorial | tutorial epochs | tutorial / ours |",
                  "|---|---:|---|---:|---|---:|---:|"]
        for e in timed:
            r = e["ratio"]
            text = (f"{r['time_to_target']:.1f}x" if "time_to_target" in r else
                    f"> {r['time_to_target_at_least']:.1f}x" if "time_to_target_at_least" in r else "-")
            ours, tut = e.get("ours"), e.get("tutorial")
            lines.append(f"| {e['variant']} | {e['target']:g} | {fmt(ours, 'text')} | "
                         f"{ours['epochs_run'] if ours else '-'} | {fmt(tut, 'text')} | "
                         f"{tut['epochs_run'] if tut else '-'} | {text} |")
        flags = [f"{e['variant']} `{e['ours_flags']}`" for e in timed if e.get("ours_flags")]
        lines += ["", "Ours' recipe flags: " + "; ".join(flags) + "."] if flags else []
    untimed = [e for e in result["variants"] if e["target"] is None]
    if untimed:
        lines += ["", "Per-epoch cost only (no target), trained with --weights none (random initialisation), as no "
                      "ImageNet weights were had: " + "; ".join(sorted({e["note"] for e in untimed})), "",
                  "| variant | ours s/epoch | ours cold start to epoch 1 s | tutorial s/epoch | "
                  "tutorial cold start to epoch 1 s | tutorial / ours (s/epoch) |", "|---|---:|---:|---:|---:|---:|"]
        for e in untimed:
            r, ours, tut = e["ratio"].get("s_per_epoch"), e.get("ours"), e.get("tutorial")
            lines.append(f"| {e['variant']} | {fmt(ours, 's_per_epoch')} | {fmt(ours, 'first_epoch_s')} | "
                         f"{fmt(tut, 's_per_epoch')} | {fmt(tut, 'first_epoch_s')} | {f'{r:.1f}x' if r else '-'} |")
    lines += ["", "s/epoch is training + validation (the test pass each epoch is not in it, but is in the times "
                  "to target). CPU timings vary with other work on the cores (load averages are in the JSON)."]
    return "\n".join(lines) + "\n"


def write_results(result: dict, results_dir: Path) -> Path:
    """JSON and Markdown, each written atomically; returns the path stem."""
    m = result["machine"]
    device = "".join(c if c.isalnum() else "-" for c in m["gpu"].lower()) if m["gpu"] else "cpu"
    stem = results_dir / f"time-to-accuracy-{device}-{result['date']}"
    atomic_write_text(stem.with_suffix(".json"), json.dumps(result, indent=2, allow_nan=False) + "\n")
    atomic_write_text(stem.with_suffix(".md"), markdown(result))
    return stem


def main(args) -> None:
    data_dir = resolve_data_dir(args.data_dir).resolve()
    split_file, split = saved_split(args, data_dir)
    names = [n for n in args.variants.split(",") if n]
    pipelines = [p for p in PIPELINES if p in args.pipelines.split(",")]
    given = {"resnet18": args.resnet_weights, "mobilenet_v2": args.mobilenet_weights}
    weights = {a: resolve_weights(a, given.get(a, "imagenet")) for a in {VARIANTS[n].arch for n in names}}
    result = {"date": time.strftime("%Y-%m-%d"), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "machine": machine_info(args.device),
              "settings": {**vars(args), "split_file": str(split_file), "split_fingerprint": split.fingerprint,
                           "split_sizes": ",".join(f"{x:g}" for x in split.meta["sizes"]),
                           "data_dir": str(data_dir), "weights": {a: w for a, (w, _) in weights.items()}},
              "variants": []}
    work_root = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="tta-"))
    for name in names:
        runs = plan_runs(name, args, weights, pipelines)
        entry = {"variant": name, "target": runs[0].target, "epochs": runs[0].epochs, "weights": runs[0].weights,
                 "note": weights[VARIANTS[name].arch][1],
                 "ours_flags": shlex.join([*VARIANTS[name].ours_args, *parse_ours_args(args.ours_args).get(name, [])])}
        for run in runs:
            entry[run.pipeline] = measure(run, args, data_dir, split_file, split, work_root)
        entry["ratio"] = ratio(entry)
        result["variants"].append(entry)
        stem = write_results(result, Path(args.results_dir))  # after every variant: a long run keeps what it measured
    if not args.work_dir and not args.keep_work:
        shutil.rmtree(work_root, ignore_errors=True)
    print(markdown(result))
    print(f"wrote {stem}.json and .md")


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())
