"""Evaluate a checkpoint on the saved test split (or any class folder), and compare all runs.

Examples:
    python evaluate.py --ckpt runs/best.pt                    # the best model so far, on the saved test split
    python evaluate.py --ckpt runs/<run>/best.pt --data-dir holdout/   # any folder of <class>/ images
    python evaluate.py --compare runs/                        # one table and two plots over every run

For a checkpoint it prints accuracy, macro and weighted precision/recall/F1 and the per-class report,
and writes eval.json, confusion_matrix.png (counts and row-normalised), curves.png (loss and accuracy
per epoch) and misclassified.png next to the checkpoint (into eval-<folder>/ for --data-dir).
The model is rebuilt from the checkpoint alone; the device is chosen automatically.
"""
from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch

from common.data import (BatchLoader, DataError, atomic_write_text, display_name, eval_transform, load_folder, load_or_build_cache,
                         load_split, resolve_data_dir)
from common.engine import predict, resolve_device
from common.metrics import classification_metrics, collect_runs, comparison_tables
from common.models import model_from_checkpoint
from common.plots import plot_comparison, plot_confusion_matrix, plot_curves, plot_image_grid
from common.runs import CheckpointError, load_checkpoint, write_json


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Evaluate a checkpoint and compare runs.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--ckpt", default=None, help="checkpoint to evaluate (e.g. runs/best.pt)")
    parser.add_argument("--data-dir", default=None,
                        help="evaluate on this <class>/ folder instead of the saved test split")
    parser.add_argument("--source-dir", default=None,
                        help="folder the saved split was drawn from (default: the one the run was trained on)")
    parser.add_argument("--split-file", default=None, help="saved split (default: the run's <output-dir>/split.json)")
    parser.add_argument("--out-dir", default=None, help="where outputs go (default: next to the checkpoint)")
    parser.add_argument("--compare", default=None, metavar="RUNS_DIR", help="compare every run under this folder")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--tta", action="store_true", help="average the predictions for each image and its mirror image")
    parser.add_argument("--max-errors", type=int, default=20, help="misclassified images shown in the grid")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--workers", type=int, default=2, help="decoding threads for --data-dir")
    return parser


def test_data(ckpt: dict, args) -> tuple:
    """(images, labels, indices, names of the images, description) for the saved test split or --data-dir."""
    if args.data_dir:
        folder = Path(args.data_dir)
        images, labels, paths = load_folder(folder, ckpt["classes"], ckpt["img_size"], args.workers)
        return images, labels, np.arange(len(labels)), [str(p) for p in paths], f"folder {folder}"
    config = ckpt["config"]
    source = resolve_data_dir(args.source_dir or config.get("data_dir"))
    output_dir = Path(config.get("output_dir", "runs"))
    split_file = Path(args.split_file or config.get("split_file") or output_dir / "split.json")
    split = load_split(split_file, source)
    if split.fingerprint != ckpt["split_fingerprint"]:
        raise CheckpointError(f"the checkpoint was trained on another split than {split_file}; "
                              "pass the run's own --split-file")
    images = load_or_build_cache(source, split, output_dir / "cache", ckpt["img_size"], workers=args.workers)
    idx = split.indices["test"]
    return images, split.labels, idx, [split.entries[i]["path"] for i in idx], f"saved test split ({split_file})"


def evaluate_checkpoint(args) -> dict:
    """Predict, score and plot one checkpoint; returns the eval.json content."""
    device = resolve_device(args.device)
    ckpt_path = Path(args.ckpt)
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt).to(device, memory_format=torch.channels_last)
    images, labels, idx, names, what = test_data(ckpt, args)
    out = Path(args.out_dir) if args.out_dir else (
        ckpt_path.parent / f"eval-{Path(args.data_dir).name}" if args.data_dir else ckpt_path.parent)
    transform = partial(eval_transform, crop=ckpt["crop_size"], mean=ckpt["mean"], std=ckpt["std"])
    loader = BatchLoader(images, labels, idx, args.batch_size, device)
    logits, y, seconds = predict(model, loader, transform, device, amp=device.type == "cuda", tta=args.tta)
    probs = logits.softmax(1).numpy()
    y, pred = y.numpy(), probs.argmax(1)
    class_names = [display_name(c) for c in ckpt["classes"]]
    m = classification_metrics(y, pred, class_names)
    title = f"{ckpt['arch']}/{ckpt['mode']}"
    print(f"{title} on the {what}: {m['n']} images, {seconds:.1f}s ({m['n'] / seconds:.0f} img/s on {device})")
    print(f"accuracy {m['accuracy']:.4f}   macro P/R/F1 {m['macro']['precision']:.4f} / {m['macro']['recall']:.4f} / "
          f"{m['macro']['f1']:.4f}   weighted F1 {m['weighted']['f1']:.4f}")
    print(m["report"])

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
    return result


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    top, left = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
    return img[top:top + size, left:left + size]


def compare(runs_dir: Path) -> list[dict]:
    """Write compare.csv, compare.md and two plots over every finished run in runs_dir."""
    rows = collect_runs(runs_dir)
    if not rows:
        raise DataError(f"no finished runs (run folders with metrics.json) under {runs_dir}; train a model first")
    csv_text, md = comparison_tables(rows)
    atomic_write_text(runs_dir / "compare.csv", csv_text)
    atomic_write_text(runs_dir / "compare.md", md)
    plot_comparison(rows, runs_dir / "compare_val_acc.png", runs_dir / "compare_test_acc_vs_time.png")
    print(md)
    print(f"wrote compare.csv, compare.md, compare_val_acc.png and compare_test_acc_vs_time.png to {runs_dir}")
    return rows


def main(args) -> None:
    if not args.ckpt and not args.compare:
        args.ckpt = "runs/best.pt"
    if args.ckpt:
        evaluate_checkpoint(args)
    if args.compare:
        compare(Path(args.compare))


if __name__ == "__main__":
    args = get_args_parser().parse_args()
    try:
        main(args)
    except (DataError, CheckpointError) as e:
        sys.exit(f"error: {e}")
