"""Compress a checkpoint for CPU inference: int8 post-training quantization and global magnitude pruning.

Examples:
    python compress.py --ckpt runs/best.pt                          # int8, and pruning at 0.3, 0.5, 0.7
    python compress.py --ckpt runs/<run>/best.pt --methods int8     # int8 only (no fine-tune: fast)
    python compress.py --ckpt runs/best.pt --sparsities 0.5 --finetune-epochs 2
    python compress.py --ckpt runs/best.pt --finetune-fraction 0.2  # a quick version: fine-tune on 20% of train
    python evaluate.py --ckpt runs/<run>/compressed/int8.pt         # every script takes a compressed checkpoint

int8: PyTorch's own FX graph mode static quantization for the x86 engine (conv-BN-ReLU fused, activations
calibrated on --calibration-images training images through the eval transform); it runs on the CPU only and
has no gradients, so gradcam.py and app.py refuse it (use the float checkpoint). Pruning: the --sparsities
share of the smallest conv and linear weights over the whole network is set to zero, then --finetune-epochs
of fine-tuning (AdamW, a third of the run's learning rate unless --finetune-lr, the run's augmentation) with
the zeros held; the pruned model is a plain float model that every script runs. The default sparsities bracket
where unstructured pruning of a compact network starts to cost accuracy: 0.3 (usually free), 0.5, 0.7.

It writes <out-dir>/int8.pt and pruned-<percent>.pt (slim checkpoints: no optimizer state), and
compression.json and compression.md: for the source and each compressed model the file size (and gzip size:
a pruned file is stored dense), the nonzero share of the weights, CPU img/s at batch 1 and 32 (medians of
interleaved repeats; ratios to the source are steadier than the absolute figures on shared cores), and the
accuracy on the saved test split with its difference to the source.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from common.cli import ArgumentParser, UserError, nonnegative_int, number, positive_float, positive_int, run_main
from common.compression import check_sparsity
from common.compression_study import (
    HEADERS,
    Finetune,
    checkpoint_bytes,
    int8_checkpoint,
    machine,
    measure,
    notes,
    pruned_checkpoint,
    report_markdown,
    table_rows,
)
from common.engine import resolve_device
from common.files import atomic_write_text
from common.inference import load_test_split
from common.markdown import markdown_table
from common.runs import load_checkpoint, save_checkpoint, slim_checkpoint, write_json

METHODS = ("int8", "prune")


def methods(text: str) -> tuple[str, ...]:
    """--methods int8,prune -> ("int8", "prune"), or an argparse error naming the known ones."""
    chosen = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = [m for m in chosen if m not in METHODS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown method {', '.join(unknown) or repr(text)}; "
                                         f"give some of {','.join(METHODS)}")
    return chosen


def sparsities(text: str) -> tuple[float, ...]:
    """--sparsities 0.3,0.5 -> (0.3, 0.5), each in (0, 1), or an argparse error."""
    try:
        values = tuple(sorted({float(v) for v in text.split(",")}))
        for v in values:
            check_sparsity(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of numbers; give sparsities in (0, 1), "
                                         "e.g. 0.3,0.5,0.7") from None
    except UserError as e:  # check_sparsity's message names the range and an example
        raise argparse.ArgumentTypeError(str(e)) from None
    return values


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Compress a checkpoint (int8 quantization, pruning) and measure it on a CPU.")
    parser.add_argument("--ckpt", required=True, help="float checkpoint to compress (e.g. runs/best.pt)")
    parser.add_argument("--methods", type=methods, default=",".join(METHODS), help="int8, prune, or both (int8,prune)")
    parser.add_argument("--sparsities", type=sparsities, default="0.3,0.5,0.7",
                        help="global shares of conv and linear weights to prune, each in (0, 1)")
    parser.add_argument("--calibration-images", type=positive_int, default=256,
                        help="training images that calibrate the int8 activation ranges")
    parser.add_argument("--finetune-epochs", type=nonnegative_int, default=1,
                        help="epochs of fine-tuning after pruning (0: none)")
    parser.add_argument("--finetune-lr", type=positive_float, default=None,
                        help="fine-tuning learning rate (default: a third of the run's own lr)")
    parser.add_argument("--finetune-fraction", type=number(float, 0, 1, low_open=True), default=1.0,
                        help="fine-tune on this fraction of each class's training images")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="fine-tuning batch size")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the calibration draw and fine-tune")
    parser.add_argument("--out-dir", default=None, help="where outputs go (default: <checkpoint folder>/compressed)")
    parser.add_argument("--source-dir", default=None,
                        help="folder the saved split was drawn from (default: the one the run was trained on)")
    parser.add_argument("--split-file", default=None, help="saved split (default: the run's <output-dir>/split.json)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the fine-tune runs; measurements are always on the CPU")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch CPU threads for the timings; one depends least on other load on the cores (with "
                             "more threads than idle cores, batch 1 waits on the busy ones)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="interleaved timing repeats per model")
    parser.add_argument("--workers", type=positive_int, default=2, help="decoding threads if the cache is built")
    return parser


def compress_all(args, ckpt: dict, test, out: Path, device: torch.device) -> tuple[dict, dict]:
    """Write every compressed checkpoint; returns name -> (checkpoint, bytes, file) with the source first (as a slim
    checkpoint in memory), and the fine-tune record."""
    variants = {"original (float)": (slim_checkpoint(ckpt), checkpoint_bytes(slim_checkpoint(ckpt)), None)}
    finetune = {}
    if "int8" in args.methods:
        variants["int8"] = save(int8_checkpoint(ckpt, test, args.ckpt, args.calibration_images), out / "int8.pt")
    if "prune" in args.methods:
        tune = Finetune(args.finetune_epochs, args.finetune_lr, args.finetune_fraction, args.batch_size, args.seed)
        seconds = 0.0
        for sparsity in args.sparsities:
            pruned = pruned_checkpoint(ckpt, test, args.ckpt, sparsity, tune, device)
            seconds += sum(row["seconds"] for row in pruned["compression"]["finetune"])
            variants[f"pruned {sparsity:g}"] = save(pruned, out / f"pruned-{sparsity * 100:g}.pt")
        entry = pruned["compression"]
        finetune = {"epochs": tune.epochs, "lr": entry["finetune_lr"], "images": entry["finetune_images"],
                    "seconds": seconds, "device": str(device)} if tune.epochs else {}
    return variants, finetune


def save(ckpt: dict, path: Path) -> tuple[dict, bytes, str]:
    """Write a checkpoint atomically; returns it with its bytes as written and its path."""
    save_checkpoint(ckpt, path)
    print(f"wrote {path}")
    return ckpt, path.read_bytes(), str(path)


def main(args) -> None:
    start = time.perf_counter()
    ckpt = load_checkpoint(args.ckpt)
    if "compression" in ckpt:
        raise UserError(f"{args.ckpt} is already compressed ({ckpt['compression'].get('kind')}); "
                        "pass the float checkpoint it was made from")
    device = resolve_device(args.device)
    test = load_test_split(ckpt, args.source_dir, args.split_file, args.workers)
    out = Path(args.out_dir) if args.out_dir else Path(args.ckpt).parent / "compressed"
    variants, finetune = compress_all(args, ckpt, test, out, device)
    rows = measure(variants, test, args.repeats, args.threads)
    weights = ckpt.get("config", {}).get("weights")
    result = {"checkpoint": str(args.ckpt), "model": f"{ckpt['arch']}/{ckpt['mode']}", "test": test.description,
              "weights": weights.get("source") if isinstance(weights, dict) else None,
              "methods": list(args.methods), "sparsities": list(args.sparsities) if "prune" in args.methods else [],
              "calibration_images": variants["int8"][0]["compression"]["calibration_images"]
              if "int8" in variants else None, "finetune": finetune, "machine": machine(args.threads), "rows": rows,
              "files": {name: file for name, (_, _, file) in variants.items() if file},
              "seconds": time.perf_counter() - start}
    result["notes"] = notes(result)
    write_json(out / "compression.json", result)
    atomic_write_text(out / "compression.md", report_markdown(result))
    print(markdown_table(HEADERS, table_rows(rows), "lrrrrrrrrl"))
    print(f"wrote {out / 'compression.json'} and compression.md in {result['seconds']:.0f} s")


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())
