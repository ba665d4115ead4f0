"""Evaluate a checkpoint on the saved test split (or any class folder), and compare all runs.

Examples:
    python evaluate.py --ckpt runs/best.pt                    # the best model so far, on the saved test split
    python evaluate.py --ckpt runs/<run>/best.pt --data-dir holdout/   # any folder of <class>/ images
    python evaluate.py --compare runs/                        # one table and two plots over every run
                                                              # (+ mean ± std of runs that differ only by seed)
    python evaluate.py --ckpt runs/best.pt --corruptions      # + accuracy under 6 corruptions x 5 severities
    python evaluate.py --ckpt runs/best.pt --corruptions --severities 1,3,5 --corruption-seed 1
    python evaluate.py --ckpt runs/best.pt --ood synthetic    # + OOD detection of 500 synthetic textures
    python evaluate.py --ckpt runs/best.pt --ood other_photos/   # + OOD detection of every image under a folder
    python evaluate.py --ensemble runs/a/best.pt runs/b/best.pt   # their mean probabilities against each of them

For a checkpoint it prints accuracy, macro and weighted precision/recall/F1 and the per-class report,
and writes eval.json, confusion_matrix.png (counts and row-normalised), curves.png (loss and accuracy
per epoch) and misclassified.png next to the checkpoint (into eval-<folder>/ for --data-dir).
The model is rebuilt from the checkpoint alone; the device is chosen automatically. When the data folder has
a sources.csv (inside it or beside it: file, source), accuracy is also broken down by image source, with the gap
between the real Animals-10 photos and the rest and its standard error (common/sources.py).

--corruptions scores the same images again under gaussian noise, gaussian blur, brightness, contrast,
JPEG and rotation (ImageNet-C-style severities 1-5, applied to the uncropped images batch by batch)
and writes corruptions.json and corruptions.png. --ood scores the same images against out-of-distribution
ones (every .jpg/.jpeg/.png under a folder, or synthetic textures) by maximum softmax probability and
writes ood.json (AUROC, FPR at 95% TPR) and ood_hist.png. Both reuse the clean predictions of eval.json.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from common.cli import ArgumentParser, DataError, positive_int, run_main
from common.decode import IMAGE_EXTENSIONS, decode_many
from common.engine import resolve_device
from common.files import atomic_write_text
from common.inference import Predictor, center_crop, load_labelled_folder, load_test_split
from common.metrics import classification_metrics, comparison_tables, seed_repeats, seed_tables
from common.plots import (
    plot_comparison,
    plot_confusion_matrix,
    plot_corruptions,
    plot_curves,
    plot_image_grid,
    plot_ood_hist,
)
from common.robustness import CORRUPTIONS, SEVERITIES, auroc, corrupt, fpr_at_tpr, msp, synthetic_textures
from common.runs import finished_runs, load_checkpoint, write_json
from common.sources import breakdown, describe_gap


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Evaluate a checkpoint and compare runs.")
    parser.add_argument("--ckpt", default=None, help="checkpoint to evaluate (e.g. runs/best.pt)")
    parser.add_argument("--data-dir", default=None,
                        help="evaluate on this <class>/ folder instead of the saved test split")
    parser.add_argument("--source-dir", default=None,
                        help="folder the saved split was drawn from (default: the one the run was trained on)")
    parser.add_argument("--split-file", default=None, help="saved split (default: the run's <output-dir>/split.json)")
    parser.add_argument("--out-dir", default=None, help="where outputs go (default: next to the checkpoint)")
    parser.add_argument("--compare", default=None, metavar="RUNS_DIR", help="compare every run under this folder")
    parser.add_argument("--ensemble", nargs="+", default=None, metavar="CKPT",
                        help="the mean class probabilities of these checkpoints (one saved split) on its test split, "
                             "against each of them, overall and by image source: <out-dir>/ensemble.json (default "
                             "out-dir: <runs>/ensemble)")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="images per forward pass (default: 16 on a CPU, 64 on CUDA)")
    parser.add_argument("--tta", action="store_true",
                        help="average the predictions for each image and its mirror image")
    parser.add_argument("--max-errors", type=int, default=20, help="misclassified images shown in the grid")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--workers", type=int, default=2, help="decoding threads for --data-dir and --ood DIR")
    g = parser.add_argument_group("robustness")
    g.add_argument("--corruptions", action="store_true",
                   help=f"also evaluate under every corruption ({', '.join(CORRUPTIONS)}) and severity")
    g.add_argument("--severities", default="1,2,3,4,5", help="corruption severities (integers 1 to 5)")
    g.add_argument("--corruption-seed", type=int, default=0,
                   help="seed of the random corruptions (noise, rotation sign)")
    g.add_argument("--ood", default=None, metavar="DIR|synthetic",
                   help="also score out-of-distribution images: every image under DIR, or synthetic textures "
                        "(write ./synthetic for a folder of that name)")
    g.add_argument("--ood-count", type=int, default=500, help="number of synthetic textures for --ood synthetic")
    return parser


def parse_severities(text: str) -> list[int]:
    """'1,3,5' -> [1, 3, 5] (sorted, distinct), or a DataError naming the valid values."""
    try:
        severities = sorted({int(v) for v in text.split(",")})
    except ValueError:
        severities = []
    if not severities or not set(severities) <= set(SEVERITIES):
        raise DataError(f"--severities {text!r} is not a list of integers from 1 to 5; use e.g. --severities 1,3,5")
    return severities


def ood_files(folder: Path) -> list[Path]:
    """Every .jpg/.jpeg/.png under folder, recursively, in sorted order; a DataError when there are none."""
    if not folder.is_dir():
        raise DataError(f"--ood folder {folder} does not exist; "
                        "pass a folder of .jpg/.jpeg/.png images or --ood synthetic")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise DataError(f"--ood folder {folder} holds no .jpg/.jpeg/.png images; add some or pass --ood synthetic")
    return paths


class Corrupted:
    """Images under one corruption, made batch by batch when BatchLoader gathers them, so memory stays small."""

    def __init__(self, images: np.ndarray, name: str, severity: int, seed: int):
        self.images, self.name, self.severity, self.seed = images, name, severity, seed

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        # Passing the global indices makes each image's corruption independent of how batches fall.
        return corrupt(np.asarray(self.images[idx]), self.name, self.severity, self.seed, index=idx)


def evaluate_checkpoint(args) -> dict:
    """Predict, score and plot one checkpoint, then the optional robustness studies; returns the eval.json content."""
    # Check the robustness options before the slow work, so a typo fails at once.
    severities = parse_severities(args.severities) if args.corruptions else []
    ood_paths = ood_files(Path(args.ood)) if args.ood and args.ood != "synthetic" else None
    if args.ood == "synthetic" and args.ood_count < 1:
        raise DataError(f"--ood-count {args.ood_count} must be at least 1")
    if args.corruptions and args.corruption_seed < 0:
        raise DataError(f"--corruption-seed {args.corruption_seed} must be 0 or more")
    device = resolve_device(args.device)
    ckpt_path = Path(args.ckpt)
    ckpt = load_checkpoint(ckpt_path)
    predictor = Predictor(ckpt, device)
    test = (load_labelled_folder(ckpt, args.data_dir, args.workers) if args.data_dir else
            load_test_split(ckpt, args.source_dir, args.split_file, args.workers))
    images, labels, idx, names, what = test.images, test.labels, test.indices, test.names, test.description
    out = Path(args.out_dir) if args.out_dir else (
        ckpt_path.parent / f"eval-{Path(args.data_dir).name}" if args.data_dir else ckpt_path.parent)

    def run(images, labels: np.ndarray, idx: np.ndarray,
            desc: str = "eval") -> tuple[torch.Tensor, torch.Tensor, float]:
        return predictor.predict(images, labels, idx, args.batch_size, args.tta, desc)

    logits, y, seconds = run(images, labels, idx)
    probs = logits.softmax(1).numpy()
    y, pred = y.numpy(), probs.argmax(1)
    class_names = predictor.names
    m = classification_metrics(y, pred, class_names)
    title = f"{ckpt['arch']}/{ckpt['mode']}"
    print(f"{title} on the {what}: {m['n']} images, {seconds:.1f}s "
          f"({m['n'] / seconds:.0f} img/s on {predictor.device})")
    print(f"accuracy {m['accuracy']:.4f}   macro P/R/F1 {m['macro']['precision']:.4f} / {m['macro']['recall']:.4f} / "
          f"{m['macro']['f1']:.4f}   weighted F1 {m['weighted']['f1']:.4f}")
    print(m["report"])

    sources = test.sources()
    if sources is not None:
        m.update(breakdown(sources, pred == y))
        print("accuracy by source: " + ", ".join(f"{k} {v['accuracy']:.4f} ({v['n']})"
                                                 for k, v in m["by_source"].items()))
        if m["source_gap"]:
            print(f"source gap: {describe_gap(m['source_gap'])}")
    wrong = np.flatnonzero(pred != y)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]])]  # most confident mistakes first
    errors = [{"image": names[i], "true": class_names[y[i]], "pred": class_names[pred[i]],
               "confidence": float(probs[i, pred[i]])} for i in wrong]
    result = {"checkpoint": str(ckpt_path), "arch": ckpt["arch"], "mode": ckpt["mode"], "data": what, "tta": args.tta,
              "device": str(device), "inference_img_per_s": m["n"] / seconds, "classes": ckpt["classes"],
              **{k: v for k, v in m.items() if k != "report"}, "misclassified": errors}
    write_json(out / "eval.json", result)
    plot_confusion_matrix(np.array(m["confusion_matrix"]), class_names, out / "confusion_matrix.png", title)
    plot_curves(ckpt["history"], out / "curves.png", f"{title} training")
    crop = ckpt["crop_size"]
    shown = wrong[:args.max_errors]
    tiles = [center_crop(np.asarray(images[idx[i]]), crop) for i in shown]
    captions = [f"true {class_names[y[i]]}\npred {class_names[pred[i]]} ({probs[i, pred[i]]:.2f})" for i in shown]
    plot_image_grid(tiles, captions, out / "misclassified.png",
                    f"{title}: {len(wrong)} of {m['n']} misclassified (most confident first)")
    print(f"wrote eval.json, confusion_matrix.png, curves.png, misclassified.png to {out}")
    if args.corruptions:
        corruption_study(run, images, labels, idx, severities, result, args, out, title)
    if args.ood:
        ood_study(run, msp(logits), ood_paths, ckpt["img_size"], result, args, out, title)
    return result


def corruption_study(run, images: np.ndarray, labels: np.ndarray, idx: np.ndarray, severities: list[int],
                     result: dict, args, out: Path, title: str) -> dict:
    """Accuracy on the same images under every corruption and severity; writes corruptions.json and .png."""
    start = time.perf_counter()
    accuracy = {}
    for name in CORRUPTIONS:
        accuracy[name] = []
        for s in severities:
            logits, y, _ = run(Corrupted(images, name, s, args.corruption_seed), labels, idx, desc=f"{name} {s}")
            accuracy[name].append((logits.argmax(1) == y).double().mean().item())
    by_severity = np.mean(list(accuracy.values()), axis=0).tolist()
    report = {"checkpoint": result["checkpoint"], "arch": result["arch"], "mode": result["mode"],
              "data": result["data"], "seed": args.corruption_seed, "n": result["n"],
              "clean_acc": result["accuracy"], "severities": severities, "accuracy": accuracy,
              "mean_acc_by_severity": by_severity, "mean_corrupted_acc": float(np.mean(by_severity)),
              "device": result["device"], "seconds": time.perf_counter() - start}
    print(f"\naccuracy under corruptions ({report['n']} images, seed {args.corruption_seed}, "
          f"{report['seconds']:.1f}s); clean {report['clean_acc']:.4f}")
    print(f"{'corruption':<16}" + "".join(f"{'sev ' + str(s):>8}" for s in severities) + f"{'mean':>8}")
    for name, accs in [*accuracy.items(), ("mean", by_severity)]:
        print(f"{name:<16}" + "".join(f"{a:>8.4f}" for a in accs) + f"{np.mean(accs):>8.4f}")
    write_json(out / "corruptions.json", report)
    plot_corruptions(accuracy, severities, report["clean_acc"], by_severity, out / "corruptions.png",
                     f"{title}: accuracy under corruptions (n={report['n']})")
    print(f"wrote corruptions.json and corruptions.png to {out}")
    return report


def ood_study(run, msp_in: np.ndarray, paths: list[Path] | None, img_size: int, result: dict, args, out: Path,
              title: str) -> dict:
    """Tell the evaluated images from out-of-distribution ones by max softmax probability; writes ood.json, .png."""
    if paths is None:
        source, images = "synthetic", synthetic_textures(args.ood_count, img_size)
    else:
        source, pixels = args.ood, []
        for path, img in zip(paths, decode_many(paths, img_size, args.workers)):
            if img is None:
                print(f"note: skipping unreadable image {path}")
            else:
                pixels.append(img)
        if not pixels:
            raise DataError(f"--ood folder {source} holds no readable images; add some or pass --ood synthetic")
        images = np.stack(pixels)
    n = len(images)
    logits, _, _ = run(images, np.zeros(n, np.int64), np.arange(n), desc="ood")
    msp_out = msp(logits)
    report = {"checkpoint": result["checkpoint"], "ood_source": source, "n_in": len(msp_in), "n_out": n,
              "auroc": auroc(msp_in, msp_out), "fpr_at_95_tpr": fpr_at_tpr(msp_in, msp_out, 0.95),
              "msp_in_mean": float(msp_in.mean()), "msp_out_mean": float(msp_out.mean()),
              "score": "max softmax probability"}
    write_json(out / "ood.json", report)
    short = Path(source).name or source  # a folder's full path would not fit in the title
    plot_ood_hist(msp_in, msp_out, out / "ood_hist.png",
                  f"{title}: in-distribution vs {short} (AUROC {report['auroc']:.3f}, "
                  f"FPR@95%TPR {report['fpr_at_95_tpr']:.3f})",
                  (f"in: {Path(args.data_dir).name if args.data_dir else 'test split'}", f"out: {short}"))
    print(f"OOD {source} ({n} images) vs {len(msp_in)} in-distribution images by max softmax probability: "
          f"AUROC {report['auroc']:.4f}, FPR at 95% TPR {report['fpr_at_95_tpr']:.4f}, mean MSP in "
          f"{report['msp_in_mean']:.3f} / out {report['msp_out_mean']:.3f}; wrote ood.json and ood_hist.png to {out}")
    return report


def compare(runs_dir: Path) -> list[dict]:
    """Write compare.csv, compare.md and two plots over every finished run in runs_dir.

    Runs that differ only by seed (common.metrics.configuration of their config.json) are also shown as one row
    each, mean ± sample standard deviation, in compare.md and compare_seeds.csv.
    """
    runs = sorted(finished_runs(runs_dir), key=lambda r: -r["metrics"].get("best_val_acc", 0))
    rows = [{**r["metrics"], "run": r["run_dir"].name} for r in runs]
    if not rows:
        raise DataError(f"no finished runs (run folders with metrics.json) under {runs_dir}; train a model first")
    csv_text, md = comparison_tables(rows)
    written = ["compare.csv", "compare.md"]
    repeats = seed_repeats(runs)
    if repeats:
        seed_csv, seed_md = seed_tables(repeats)
        md += ("\nRuns that differ only by seed (every other entry of config.json is the same), "
               "mean ± sample standard deviation over the n runs:\n\n" + seed_md)
        atomic_write_text(runs_dir / "compare_seeds.csv", seed_csv)
        written.append("compare_seeds.csv")
    atomic_write_text(runs_dir / "compare.csv", csv_text)
    atomic_write_text(runs_dir / "compare.md", md)
    plot_comparison(rows, runs_dir / "compare_val_acc.png", runs_dir / "compare_test_acc_vs_time.png")
    print(md)
    print(f"wrote {', '.join(written)}, compare_val_acc.png and compare_test_acc_vs_time.png to {runs_dir}")
    return rows


def evaluate_ensemble(args) -> dict:
    """The mean class probabilities of several checkpoints on their saved test split: the ensemble's accuracy and
    each member's, overall and by image source; writes ensemble.json."""
    paths = [Path(p) for p in args.ensemble]
    if len(paths) < 2:
        raise DataError("--ensemble averages two or more models; pass their best.pt files")
    ckpts = [load_checkpoint(p) for p in paths]
    classes = ckpts[0]["classes"]
    for path, ckpt in zip(paths[1:], ckpts[1:]):
        if ckpt.get("split_fingerprint") != ckpts[0].get("split_fingerprint") or set(ckpt["classes"]) != set(classes):
            raise DataError(f"{path} was trained on another split or other classes than {paths[0]}; the members of "
                            "an ensemble must share both")
    device = resolve_device(args.device)
    test = load_test_split(ckpts[0], args.source_dir, args.split_file, args.workers)
    sources = test.sources()
    members, probs = [], []
    for path, ckpt in zip(paths, ckpts):
        images = test if ckpt["img_size"] == ckpts[0]["img_size"] else load_test_split(ckpt, args.source_dir,
                                                                                        args.split_file, args.workers)
        logits, _, _ = Predictor(ckpt, device).predict(images.images, images.labels, images.indices, args.batch_size,
                                                       args.tta, desc=path.parent.name)
        probs.append(logits.softmax(1).numpy()[:, [ckpt["classes"].index(c) for c in classes]])  # in one order
        members.append({"checkpoint": str(path), "arch": ckpt["arch"], "mode": ckpt["mode"],
                        **_scores(probs[-1].argmax(1) == test.labels[test.indices], sources)})
    mean = np.mean(probs, 0)
    result = {"classes": classes, "n": len(test.indices), "tta": args.tta, "data": test.description,
              "members": members, "ensemble": _scores(mean.argmax(1) == test.labels[test.indices], sources)}
    out = Path(args.out_dir) if args.out_dir else paths[0].parent.parent / "ensemble"
    write_json(out / "ensemble.json", result)
    for m in [*members, {"arch": f"ensemble of {len(members)}", "mode": "mean probabilities", **result["ensemble"]}]:
        gap = f"; {describe_gap(m['source_gap'])}" if m.get("source_gap") else ""
        print(f"{m['arch']}/{m['mode']}: accuracy {m['accuracy']:.4f}{gap}")
    print(f"wrote {out / 'ensemble.json'}")
    return result


def _scores(correct: np.ndarray, sources: list[str] | None) -> dict:
    """Accuracy of a member or the ensemble, and by image source when the data has a sources.csv."""
    return {"accuracy": float(np.mean(correct)), **(breakdown(sources, correct) if sources is not None else {})}


def main(args) -> None:
    if args.ensemble:
        evaluate_ensemble(args)
        return
    if not args.ckpt and not args.compare:
        args.ckpt = "runs/best.pt"
    if args.ckpt:
        evaluate_checkpoint(args)
    if args.compare:
        compare(Path(args.compare))


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())
