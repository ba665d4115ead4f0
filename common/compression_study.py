"""What compress.py does with a checkpoint: its int8 and pruned versions (calibration, the short fine-tune) and
their measurement (file size, CPU throughput at batch 1 and 32, test accuracy), as rows and a Markdown report."""
from __future__ import annotations

import gzip
import io
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from common.cli import DataError
from common.compression import (
    BACKEND,
    SCHEME,
    check_sparsity,
    finish_pruning,
    prune_global,
    quantize_int8,
    zero_share,
)
from common.config import AugmentConfig
from common.engine import cpu_has_bf16_units, cpu_name, make_optimizer, param_groups, train_one_epoch
from common.formatting import f_acc, f_mib, f_pp, f_rate
from common.inference import LabelledImages, Predictor
from common.loader import BatchLoader, train_subset
from common.markdown import markdown_table
from common.models import model_from_checkpoint
from common.runs import slim_checkpoint
from common.transforms import make_transforms

CPU = torch.device("cpu")


@dataclass(frozen=True)
class Finetune:
    """The short fine-tune after pruning: epochs over a fraction of the training split, AdamW at a constant rate."""

    epochs: int = 1
    lr: float | None = None  # None: a third of the run's own peak rate (its config's lr)
    fraction: float = 1.0  # of each class's training images
    batch_size: int = 32
    seed: int = 0


def compressed(ckpt: dict, model: nn.Module, entry: dict) -> dict:
    """A slim checkpoint (no training state) of the source's metadata with a compressed model and its entry."""
    return {**slim_checkpoint(ckpt), "model_state": model.state_dict(), "compression": entry}


def calibration_batches(test: LabelledImages, transform: Callable, count: int, batch_size: int = 32,
                        seed: int = 0) -> Iterator[torch.Tensor]:
    """Normalised channels_last batches of `count` training images (a seeded draw), as evaluation sees them."""
    train = np.asarray(test.split.indices["train"])
    picks = np.sort(np.random.default_rng(seed).permutation(train)[:count])
    for x, _ in BatchLoader(test.images, test.split.labels, picks, batch_size, CPU):
        yield transform(x).contiguous(memory_format=torch.channels_last)


def int8_checkpoint(ckpt: dict, test: LabelledImages, source: str, count: int, log=print) -> dict:
    """The int8 checkpoint of a float one: FX static quantization calibrated on `count` training images."""
    model = model_from_checkpoint(ckpt)
    _, eval_tf = transforms_of(ckpt, torch.Generator())
    example = torch.zeros(1, 3, ckpt["crop_size"], ckpt["crop_size"])
    start = time.perf_counter()
    qmodel, seen = quantize_int8(model, calibration_batches(test, eval_tf, count), example,
                                 f"{ckpt['arch']}/{ckpt['mode']}")
    log(f"int8: calibrated on {seen} training images and converted in {time.perf_counter() - start:.1f} s")
    entry = {"kind": "int8", "backend": BACKEND, "scheme": SCHEME, "calibration_images": seen,
             "calibration": "a seeded draw of the training split, through the eval transform", "source": source,
             "torch": str(torch.__version__)}
    return compressed(ckpt, qmodel, entry)


def transforms_of(ckpt: dict, generator: torch.Generator) -> tuple[Callable, Callable]:
    """The run's own (train, eval) transforms, from the augmentation options its config records."""
    config = ckpt.get("config", {})
    augment = AugmentConfig(crop_size=ckpt["crop_size"], no_augment=config.get("no_augment", False),
                            scale_min=config.get("scale_min", 1.0), jitter=config.get("jitter", 0.0),
                            auto_augment=config.get("auto_augment", "none"),
                            crop_resize=config.get("crop_resize", "auto"))
    return make_transforms(augment, generator, ckpt["mean"], ckpt["std"])


def pruned_checkpoint(ckpt: dict, test: LabelledImages, source: str, sparsity: float, tune: Finetune,
                      device: torch.device, log=print) -> dict:
    """The pruned checkpoint of a float one: global magnitude pruning at `sparsity`, then the short fine-tune."""
    check_sparsity(sparsity)
    config = ckpt.get("config", {})
    lr = tune.lr if tune.lr is not None else config.get("lr", 1e-4) / 3
    generator = torch.Generator().manual_seed(tune.seed)
    train_tf, _ = transforms_of(ckpt, generator)
    split = test.split
    idx = train_subset(split.labels, split.indices["train"], tune.fraction, seed=split.split_seed)
    if len(idx) < tune.batch_size:
        raise DataError(f"only {len(idx)} training images for the fine-tune, fewer than --batch-size "
                        f"{tune.batch_size}; lower --batch-size or raise --finetune-fraction")
    loader = BatchLoader(test.images, split.labels, idx, tune.batch_size, device, shuffle=True, generator=generator,
                         drop_last=True)
    # Pruned before moving to channels_last: global_unstructured ranks flat views of contiguous weights.
    model = prune_global(model_from_checkpoint(ckpt), sparsity).to(device, memory_format=torch.channels_last)
    model.requires_grad_(True)  # every weight recovers from the pruning, whatever the run trained
    optimizer = make_optimizer(param_groups(model, config.get("weight_decay", 0.0), lr), "adamw", lr)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.get("label_smoothing", 0.0))
    amp = device.type == "cuda" or cpu_has_bf16_units()
    rows = []
    for epoch in range(tune.epochs):
        row = train_one_epoch(model, loader, train_tf, criterion, optimizer, device, amp,
                              desc=f"fine-tune {sparsity:g} {epoch + 1}/{tune.epochs}")
        log(f"pruned {sparsity:g}: fine-tune epoch {epoch + 1}/{tune.epochs}: loss {row['loss']:.4f}, train acc "
            f"{row['acc']:.4f}, {row['seconds']:.0f} s ({row['img_per_s']:.0f} img/s on {device})")
        rows.append(row)
    model = finish_pruning(model.eval()).to(CPU, memory_format=torch.contiguous_format)
    entry = {"kind": "pruned", "sparsity": float(sparsity), "method": "global L1 unstructured, conv and linear weights",
             "finetune_epochs": tune.epochs, "finetune_lr": lr, "finetune_images": len(idx),
             "finetune_amp": amp, "finetune": rows, "source": source}
    return compressed(ckpt, model, entry)


def sizes_mib(data: bytes) -> tuple[float, float]:
    """(size, gzip-compressed size) of a checkpoint's bytes, in MiB."""
    return len(data) / 2**20, len(gzip.compress(data, compresslevel=6)) / 2**20


def checkpoint_bytes(ckpt: dict) -> bytes:
    """What torch.save writes for a checkpoint."""
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    return buffer.getvalue()


def cpu_throughput(models: dict[str, nn.Module], images: torch.Tensor, batch_sizes: tuple[int, ...] = (1, 32),
                   repeats: int = 5, min_seconds: float = 0.5, threads: int = 1) -> dict[str, dict[int, float]]:
    """Median img/s of each model on the CPU at each batch size, with `threads` intra-op threads, under
    inference_mode, after a warm-up.

    The repeats are interleaved (each round times every model in turn), so load from other processes falls on all
    alike; each timing runs whole batches until min_seconds have passed.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _timed(models, images, batch_sizes, repeats, min_seconds)
    finally:
        torch.set_num_threads(before)


def _timed(models: dict[str, nn.Module], images: torch.Tensor, batch_sizes: tuple[int, ...], repeats: int,
           min_seconds: float) -> dict[str, dict[int, float]]:
    """cpu_throughput's loop."""
    reps = -(-max(batch_sizes) // len(images))
    images = images.repeat(reps, 1, 1, 1).contiguous(memory_format=torch.channels_last) if reps > 1 else images
    rates: dict[str, dict[int, list[float]]] = {name: {b: [] for b in batch_sizes} for name in models}
    with torch.inference_mode():
        for model in models.values():
            for b in batch_sizes:
                model(images[:b])
                model(images[:b])
        for _ in range(repeats):
            for name, model in models.items():
                for b in batch_sizes:
                    x, seen, start = images[:b], 0, time.perf_counter()
                    while seen == 0 or time.perf_counter() - start < min_seconds:
                        model(x)
                        seen += b
                    rates[name][b].append(seen / (time.perf_counter() - start))
    return {name: {b: statistics.median(v) for b, v in by_size.items()} for name, by_size in rates.items()}


def machine(threads: int) -> dict:
    """The CPU, its cores, the timing's intra-op threads and torch's version: what the throughput figures rest on."""
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": threads, "torch": str(torch.__version__),
            "quantized_engine": BACKEND, "load_avg": [round(v, 2) for v in os.getloadavg()]}


def measure(variants: dict[str, tuple[dict, bytes, str | None]], test: LabelledImages, repeats: int = 5,
            threads: int = 1, log=print) -> list[dict]:
    """One row per model (the first is the reference): sizes, nonzero weights, CPU img/s at batch 1 and 32, test
    accuracy, and the differences to the first; each model rebuilt from its checkpoint, as the scripts see it."""
    # Read back from the files as written (weights_only), so the figures are those of what the scripts load.
    predictors = {name: Predictor(file or ckpt, CPU, log) for name, (ckpt, _, file) in variants.items()}
    rows = []
    for name, (ckpt, data, _) in variants.items():
        logits, y, _ = predictors[name].predict(test.images, test.labels, test.indices, desc=f"test {name}")
        mib, gz = sizes_mib(data)
        rows.append({"name": name, "kind": ckpt.get("compression", {}).get("kind", "float"), "mib": mib,
                     "gzip_mib": gz, "nonzero": 1 - zero_share(ckpt["model_state"]), "test_n": len(y),
                     "test_acc": (logits.argmax(1) == y).float().mean().item()})
    first = next(iter(predictors.values()))
    batch = first.prepare(np.asarray(test.images[test.indices[:32]]))
    log(f"timing {len(predictors)} models at batch 1 and 32 on the CPU ({threads} thread(s), {repeats} interleaved "
        "repeats)")
    rates = cpu_throughput({n: p.model for n, p in predictors.items()}, batch, (1, 32), repeats, threads=threads)
    for row in rows:
        row["img_s_b1"], row["img_s_b32"] = rates[row["name"]][1], rates[row["name"]][32]
        for key in ("img_s_b1", "img_s_b32"):
            row[key.replace("img_s", "speedup")] = row[key] / rows[0][key]
        row["acc_diff"] = row["test_acc"] - rows[0]["test_acc"]
    return rows


HEADERS = ("model", "file MiB", "gzip MiB", "nonzero weights", "img/s b1", "img/s b32", "x b1", "x b32",
           "test acc", "diff")


def table_rows(rows: list[dict]) -> list[list[str]]:
    """The report table's cells."""
    return [[r["name"], f_mib(r["mib"]), f_mib(r["gzip_mib"]), f"{r['nonzero']:.1%}", f_rate(r["img_s_b1"]),
             f_rate(r["img_s_b32"]), f"{r['speedup_b1']:.2f}", f"{r['speedup_b32']:.2f}", f_acc(r["test_acc"]),
             f_pp(r["acc_diff"])] for r in rows]


def report_markdown(result: dict) -> str:
    """compression.md: the table and what it rests on."""
    m, rows = result["machine"], result["rows"]
    lines = [f"# Compression of {result['checkpoint']}", "",
             f"{result['model']} on the {result['test']} ({rows[0]['test_n']} images). CPU: {m['cpu']}, "
             f"{m['cores']} cores, timed with {m['threads']} torch thread(s), torch {m['torch']} "
             f"({m['quantized_engine']} quantized engine); load average at the start {m['load_avg']}."
             + (f" Trained from weights: {result['weights']}." if result.get("weights") else ""), "",
             markdown_table(HEADERS, table_rows(rows), "lrrrrrrrrl"), "", *[f"- {note}" for note in result["notes"]]]
    return "\n".join(lines) + "\n"


def notes(result: dict) -> list[str]:
    """What a reader must know to read the table."""
    out = ["img/s: median of interleaved repeats under torch.inference_mode after a warm-up, on normalised "
           "crop-size test images, with the stated torch threads; x b1 / x b32 are ratios to the first row measured "
           "in the same process, which other load on the cores affects less than the absolute figures.",
           "file MiB: the checkpoint as written (no optimizer state; the first row is the source without it). A "
           "pruned model is stored dense, so its file is as large as the original's; only compression (gzip MiB) "
           "turns its zeros into savings, and dense kernels run it no faster.",
           "nonzero weights: share of the conv and linear weights that are not zero (int8: after quantization)."]
    if "int8" in result["methods"]:
        out.append(f"int8: PyTorch's FX graph mode post-training static quantization (x86 engine; conv-BN-ReLU "
                   f"fused), calibrated on {result['calibration_images']} training images; CPU only, no gradients "
                   "(Grad-CAM needs the float checkpoint).")
    if "prune" in result["methods"] and not result.get("finetune"):
        out.append("pruned: global L1 magnitude pruning of the conv and linear weights, without fine-tuning "
                   "(--finetune-epochs 0).")
    if result.get("finetune"):
        t = result["finetune"]
        out.append(f"pruned: global L1 magnitude pruning of the conv and linear weights, then {t['epochs']} epoch(s) "
                   f"of fine-tuning on {t['images']} training images (AdamW, constant lr {t['lr']:.3g}, the run's own "
                   f"augmentation and label smoothing, BatchNorm in train mode; masks kept, so pruned weights stay "
                   f"zero); {t['seconds']:.0f} s on {t['device']}.")
    return out
