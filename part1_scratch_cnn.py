"""Part 1: a five-layer CNN trained from scratch on the Animals-10 subset, with learning-rate and batch-size
experiments.

Examples:
    python part1_scratch_cnn.py                                   # defaults: AdamW lr 1e-3, batch 32, 40 epochs
    python part1_scratch_cnn.py --lr 1e-3 --batch-size 32 --epochs 40
    python part1_scratch_cnn.py --sweep --lrs 1e-2,1e-3,1e-4 --batch-sizes 16,32,64 --epochs 15
    python part1_scratch_cnn.py --resume runs/<run>/last.pt       # continue a killed run
    python part1_scratch_cnn.py --fraction 0.2                    # 20% of each class's training images
    python part1_scratch_cnn.py --mixup 0.2 --cutmix 1.0          # MixUp or CutMix on each batch
    python part1_scratch_cnn.py --auto-augment trivialaugment     # or randaugment
    python part1_scratch_cnn.py --imbalance 10 --balance oversample   # long-tailed training set, and a remedy
    tensorboard --logdir runs

Architecture (input 3 x 224 x 224, 10 classes; 1,278,250 parameters, all trainable):
    block 1  conv 3x3/2   3 ->  32, BatchNorm, ReLU, max-pool 2   ->  32 x 56 x 56
    block 2  conv 3x3    32 ->  64, BatchNorm, ReLU, max-pool 2   ->  64 x 28 x 28
    block 3  conv 3x3    64 -> 128, BatchNorm, ReLU, max-pool 2   -> 128 x 14 x 14
    block 4  conv 3x3   128 -> 256, BatchNorm, ReLU, max-pool 2   -> 256 x  7 x  7
    block 5  conv 3x3   256 -> 384, BatchNorm, ReLU, max-pool 2   -> 384 x  3 x  3
    head     global average pool, dropout 0.3, linear 384 -> 10
The stride-2 first convolution keeps the cost near 0.5 GFLOPs per image, so training runs at
about 120 img/s on two CPU cores. Training uses random-resized crops (scale 0.25-1) of the
256 x 256 cached images, horizontal flips and colour jitter, label smoothing 0.1, AdamW with weight
decay 0.05 and a warmup + cosine schedule; the best epoch by validation accuracy is kept.
"""
from __future__ import annotations

import copy
import csv
import io
import json
import math
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch

from common.architectures import ARCHS
from common.cli import ArgumentParser, UserError, probability, run_main
from common.config import (
    AugmentConfig,
    DataConfig,
    LoaderConfig,
    TrainConfig,
    add_augment_args,
    add_crop_check,
    add_data_args,
    add_train_args,
)
from common.data import check_crop_fits, prepare_data
from common.distributed import cleanup, init_distributed, is_main, main_log
from common.engine import resolve_device, seed_everything
from common.files import atomic_write_text
from common.loader import check_batch_fits, make_loaders, to_device
from common.markdown import markdown_table
from common.models import build_model, set_dropout
from common.runs import check_resume_path, write_json
from common.sources import read_sources
from common.trainer import TrainingData, fit, make_objective, progressive_resize
from common.transforms import IMAGENET_MEAN, IMAGENET_STD, make_transforms

ARCH = "scratch_cnn"


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Train the five-layer CNN from scratch (part 1).")
    add_data_args(parser)
    add_crop_check(parser, min_crop=ARCHS[ARCH].min_crop)
    add_train_args(parser, lr=ARCHS[ARCH].lr["full"], epochs=40, batch_size=32)
    add_augment_args(parser, scale_min=0.25, jitter=0.3)
    parser.add_argument("--dropout", type=probability, default=0.3, help="dropout before the linear head")
    parser.add_argument("--sweep", action="store_true", help="train every --lrs x --batch-sizes configuration")
    parser.add_argument("--lrs", default="1e-2,1e-3,1e-4", help="learning rates of the sweep")
    parser.add_argument("--batch-sizes", default="16,32,64", help="batch sizes of the sweep")
    parser.add_check(check_sweep)
    return parser


def check_sweep(args) -> str | None:
    """The sweep's lists are positive numbers; --resume continues one run, not a sweep."""
    if args.sweep and args.resume:
        return "--resume continues one run; drop --sweep to resume it"
    try:
        parse_list(args.lrs, float, "--lrs")
        parse_list(args.batch_sizes, int, "--batch-sizes")
    except UserError as e:
        return str(e)
    return None


def train(args, split, images, device, log=print) -> Path:
    """Train one configuration and return its run folder."""
    generators = seed_everything(args.seed)
    model, weights = build_model(ARCH, len(split.classes))
    set_dropout(model, ARCH, args.dropout)
    model = model.to(device, memory_format=torch.channels_last)
    augment = AugmentConfig.from_args(args)
    train_tf, eval_tf = make_transforms(augment, generators["augment"])
    loaders = make_loaders(images, split, LoaderConfig.from_args(args), device, generators["data"], log)
    meta = {"img_size": args.img_size, "crop_size": args.crop_size, "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD), "weights": weights}
    data = TrainingData(split, loaders, train_tf, eval_tf, ARCH, "full", meta, pixels=images,
                        sources=read_sources(DataConfig.from_args(args).data_dir))
    objective = make_objective(data.train_labels, len(split.classes), args.label_smoothing, args.balance,
                               args.mixup, args.cutmix, generators["augment"], device)
    return fit(model, data, TrainConfig.from_args(args), generators, device, lr=args.lr, objective=objective,
               options=vars(args), callbacks=progressive_resize(train_tf, augment), log=log)


def parse_list(text: str, kind, flag: str) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise UserError(f"{flag} {text!r} must be a comma-separated list of finite positive numbers, "
                        f"e.g. {flag} 1e-3,1e-4")
    return values


def sweep_table(rows: list[dict]) -> tuple[str, str]:
    """CSV and Markdown renderings of the sweep results."""
    cols = ["lr", "batch_size", "epochs_run", "best_val_acc", "best_epoch", "test_acc", "seconds_per_epoch",
            "train_img_per_s", "run"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, cols, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    best = max(rows, key=lambda r: r["best_val_acc"])
    md = markdown_table(["lr", "batch size", "epochs", "best val acc", "best epoch", "test acc", "s/epoch",
                         "train img/s", "run"],
                        [[f"{r['lr']:g}", r["batch_size"], r["epochs_run"],
                          f"{r['best_val_acc']:.4f}" + (" **best**" if r is best else ""), r["best_epoch"],
                          f"{r['test_acc']:.4f}", f"{r['seconds_per_epoch']:.1f}", f"{r['train_img_per_s']:.0f}",
                          r["run"]] for r in rows], "rrrrrrrrl")
    return buf.getvalue(), md + "\n"


def main(args) -> None:
    init_distributed(args.device)
    try:
        run(args)
    finally:
        cleanup()


def run(args) -> None:
    device = resolve_device(args.device)
    log = main_log()
    t0 = time.perf_counter()
    if args.resume:  # refused before anything is written
        check_resume_path(Path(args.resume), Path(args.output_dir))
    loading = LoaderConfig.from_args(args)
    batch_sizes = parse_list(args.batch_sizes, int, "--batch-sizes") if args.sweep else [args.batch_size]
    fits = [partial(check_batch_fits, config=replace(loading, batch_size=b)) for b in batch_sizes]
    split, images = prepare_data(DataConfig.from_args(args), log, check=lambda split: [fit(split) for fit in fits])
    check_crop_fits(images, args.crop_size)
    log(f"data ready in {time.perf_counter() - t0:.1f}s: {len(split.entries)} images, {len(split.classes)} classes")
    images = to_device(images, device)
    if not args.sweep:
        train(args, split, images, device, log)
        return
    lrs = parse_list(args.lrs, float, "--lrs")
    sweep_dir = Path(args.output_dir) / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{ARCH}"
    rows = []
    for lr in lrs:
        for bs in batch_sizes:
            run_args = copy.copy(args)
            run_args.lr, run_args.batch_size = lr, bs
            run_args.tag = f"lr{lr:g}-bs{bs}" + (f"-{args.tag}" if args.tag else "")
            log(f"== sweep: lr {lr:g}, batch size {bs}")
            run_dir = train(run_args, split, images, device, log)
            metrics = json.loads((run_dir / "metrics.json").read_text())
            rows.append({**{k: metrics[k] for k in ("lr", "batch_size", "epochs_run", "best_val_acc", "best_epoch",
                                                    "test_acc", "seconds_per_epoch", "train_img_per_s")},
                         "run": run_dir.name})
            csv_text, md = sweep_table(rows)
            if is_main():
                atomic_write_text(sweep_dir / "sweep.csv", csv_text)
                atomic_write_text(sweep_dir / "sweep.md", md)
    best = max(rows, key=lambda r: r["best_val_acc"])
    if is_main():
        write_json(sweep_dir / "best.json", best)
    log(md)
    log(f"best by val accuracy: lr {best['lr']:g}, batch size {best['batch_size']} -> {best['run']}; "
        f"table in {sweep_dir}")


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())
