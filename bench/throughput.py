"""Throughput benchmark: the usual ImageFolder + PIL + DataLoader baseline against this project's data path,
and training / inference speed of every model and mode, measured in one run on the same images.

Examples:
    python bench/throughput.py --data-dir ../shared/data/animals10/raw-img --quick
    python bench/throughput.py --device cuda --compile          # on a GPU: AMP, channels_last, torch.compile both ways
    python bench/throughput.py --models scratch_cnn,mobilenet_v2:fc

Writes bench/results/<device>-<date>.json and .md. Figures are img/s unless named otherwise; "epoch s"
is estimated from the measured throughputs for the 3,000 training and 750 validation images of a split.
Pretrained weights do not change speed, so models are built with random weights.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.architectures import ARCHS  # noqa: E402
from common.cache import cache_path  # noqa: E402
from common.cli import ArgumentParser, run_main  # noqa: E402
from common.config import DataConfig, add_data_args  # noqa: E402
from common.data import prepare_data  # noqa: E402
from common.engine import autocast, resolve_device  # noqa: E402
from common.files import atomic_write_text  # noqa: E402
from common.loader import BatchLoader, to_device  # noqa: E402
from common.lora import ALPHA as LORA_ALPHA  # noqa: E402
from common.lora import RANK as LORA_RANK  # noqa: E402
from common.markdown import markdown_table  # noqa: E402
from common.masking import FRACTION as MASK_FRACTION  # noqa: E402
from common.masking import MaskedUpdates, backbone_parameters, select_masks  # noqa: E402
from common.models import build_model, set_train_mode  # noqa: E402
from common.trainer import Precision  # noqa: E402
from common.transfer import extract_features  # noqa: E402
from common.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform  # noqa: E402

ALL_MODELS = [(a, m) for a, spec in ARCHS.items() for m in spec.modes]


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Data-path and model throughput benchmark.")
    add_data_args(parser)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--models", default=",".join(f"{a}:{m}" for a, m in ALL_MODELS),
                        help="comma-separated arch:mode list")
    parser.add_argument("--quick", action="store_true", help="fewer images and steps (a few minutes on a CPU)")
    parser.add_argument("--repeats", type=int, default=3, help="passes of each data path (median and range)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 32 on CPU, 256 on CUDA")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (CUDA)")
    parser.add_argument("--loader-workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="DataLoader workers of the baseline")
    parser.add_argument("--results-dir", default=str(Path(__file__).resolve().parent / "results"))
    return parser


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def baseline_data(data_dir: Path, rel_paths: list[str], batch_size: int, workers: int, crop: int,
                  augment: str) -> float:
    """img/s of torchvision ImageFolder + PIL decode + per-sample transforms in a DataLoader, as tutorials write it.

    augment "rrc": RandomResizedCrop of the decoded image (bench/tutorial.py's training transform); "crop": resize to
    256x256, then a plain random crop; "default": this project's training default written the tutorial's way
    (RandomResizedCrop at scale 0.25-1 and ColorJitter 0.2). All flip and normalise.
    """
    from torchvision import datasets, transforms
    crops = {"rrc": [transforms.RandomResizedCrop(crop)],
             "crop": [transforms.Resize((256, 256)), transforms.RandomCrop(crop)],
             "default": [transforms.RandomResizedCrop(crop, scale=(0.25, 1.0)),
                         transforms.ColorJitter(0.2, 0.2, 0.2)]}[augment]
    tf = transforms.Compose([*crops, transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                             transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    full = datasets.ImageFolder(str(data_dir), transform=tf)
    index = {os.path.relpath(p, data_dir).replace(os.sep, "/"): i for i, (p, _) in enumerate(full.samples)}
    subset = torch.utils.data.Subset(full, [index[p] for p in rel_paths])
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=True, num_workers=workers)
    start, n = time.perf_counter(), 0
    for x, _ in loader:
        n += len(x)
    return n / (time.perf_counter() - start)


def our_data(images, labels, indices, batch_size: int, device: torch.device, crop: int,
             scale: tuple[float, float] | None = None, jitter: float = 0.0, resize: str = "auto") -> float:
    """img/s of the decode-once cache + batched augmentation on the device (default: a plain random crop + flip),
    up to the channels_last float batch that training hands the model."""
    g = torch.Generator().manual_seed(0)
    loader = BatchLoader(images, labels, indices, batch_size, device, shuffle=True, generator=g)
    tf = partial(train_transform, crop=crop, mean=IMAGENET_MEAN, std=IMAGENET_STD, generator=g,
                 scale=scale, jitter=jitter, resize=resize)
    start, n = time.perf_counter(), 0
    for x, _ in loader:
        tf(x).contiguous(memory_format=torch.channels_last)
        n += len(x)
    sync(device)
    return n / (time.perf_counter() - start)


# (label, pipeline, augmentation it matches): the tutorial's pipelines, then ours; "default" is the training
# default's augmentation (random-resized crop at scale 0.25-1 + flip + colour jitter 0.2).
DATA_PATHS = (
    ("tutorial: ImageFolder + PIL + DataLoader, RandomResizedCrop + flip", "tutorial-rrc", "rrc"),
    ("tutorial: ImageFolder + PIL + DataLoader, resize 256 + random crop + flip", "tutorial-crop", "crop"),
    ("tutorial: ImageFolder + PIL + DataLoader, RandomResizedCrop + flip + ColorJitter", "tutorial-default",
     "default"),
    ("ours: random-resized crop + flip + jitter, each image in one OpenCV pass (CPU default)", "opencv-jitter",
     "default"),
    ("ours: the same, torch resizing each box alone (antialiased), jitter in float", "interpolate-jitter", "default"),
    ("ours: the same, one batched roi_align (CUDA default)", "roi_align-jitter", "default"),
    ("ours: random-resized crop + flip, each image in one OpenCV pass", "opencv", "rrc"),
    ("ours: plain random crop + flip", "crop", "crop"),
)


def measure_data_paths(data: DataConfig, split, resident, sample, device: torch.device, crop: int, workers: int,
                       repeats: int) -> list[dict]:
    """Every DATA_PATHS row, measured `repeats` times in turn (so drift hits all rows alike): median and spread."""
    rel = [split.entries[i]["path"] for i in sample]
    runs: dict[str, list[float]] = {key: [] for _, key, _ in DATA_PATHS}
    ours = {"opencv-jitter": ((0.25, 1.0), 0.2, "opencv"), "interpolate-jitter": ((0.25, 1.0), 0.2, "interpolate"),
            "roi_align-jitter": ((0.25, 1.0), 0.2, "roi_align"), "opencv": ((0.08, 1.0), 0.0, "opencv"),
            "crop": (None, 0.0, "auto")}
    for _ in range(repeats):
        for _, key, augment in DATA_PATHS:
            if key.startswith("tutorial"):
                runs[key].append(baseline_data(data.data_dir, rel, 32, workers, crop, augment))
            else:
                runs[key].append(our_data(resident, split.labels, sample, 32, device, crop, *ours[key]))
    rows = []
    for label, key, augment in DATA_PATHS:
        v = sorted(runs[key])
        rows.append({"label": label, "key": key, "augment": augment, "img_per_s": float(np.median(v)),
                     "min": v[0], "max": v[-1], "runs": v})
        print(f"{label}: {rows[-1]['img_per_s']:.0f} img/s (runs {', '.join(f'{x:.0f}' for x in v)})")
    return rows


def model_speed(arch: str, mode: str, device: torch.device, batch_size: int, steps: int, crop: int,
                compile_model: bool = False) -> dict:
    """Training and inference img/s (synthetic batches, warmed up) and peak memory for one model and mode."""
    torch.manual_seed(0)
    model, _ = build_model(arch, 10, mode, blocks=int(mode == "top"),  # top: the head and the block below it
                           lora=(LORA_RANK, LORA_ALPHA) if mode == "lora" else None)
    model = model.to(device, memory_format=torch.channels_last)
    masked = None
    if mode == "masked":  # a random selection: gradient scores of random weights would mean nothing
        masks = select_masks(backbone_parameters(model, ARCHS[arch].head_child), MASK_FRACTION, "random", None,
                             torch.Generator().manual_seed(0))
        masked = MaskedUpdates(model, masks)
    run = torch.compile(model) if compile_model else model
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    if masked is not None:
        masked.attach(opt)
    x = torch.randn(batch_size, 3, crop, crop, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,), device=device)
    amp = Precision.choose("auto", device)  # as training runs it (bf16 steps and validation on a CPU with bf16 units)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def train_step():
        with autocast(device, amp.train):
            loss = nn.functional.cross_entropy(run(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    set_train_mode(model)
    for _ in range(3 if compile_model else 1):
        train_step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        train_step()
    sync(device)
    train = batch_size * steps / (time.perf_counter() - start)
    model.eval()
    with torch.no_grad(), autocast(device, amp.validate):
        run(x)
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            run(x)
        sync(device)
    infer = batch_size * steps / (time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"train_img_per_s": train, "infer_img_per_s": infer, "peak_cuda_mb": peak, "amp_train": amp.train,
            "epoch_s_est": 3000 / train + 750 / infer}


def feature_cache_speed(arch: str, images, labels, split, device: torch.device, batch_size: int, crop: int,
                        fc_train: float, fc_infer: float) -> dict:
    """fc mode epoch time with cached features against the uncached estimate, plus the one-time extraction."""
    model, _ = build_model(arch, 10, "fc")
    model = model.to(device, memory_format=torch.channels_last)
    tf = partial(eval_transform, crop=crop, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    start = time.perf_counter()
    feats = extract_features(model, arch, images, split, tf, device, batch_size)
    extraction = time.perf_counter() - start
    head = getattr(model, ARCHS[arch].head_child)
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=1e-3)
    feats = feats.to(device)
    train_idx, val_idx = split.indices["train"], split.indices["val"]
    start = time.perf_counter()
    head.train()
    for b in range(0, len(train_idx), 32):
        idx = torch.as_tensor(train_idx[b:b + 32])
        target = torch.as_tensor(labels[idx.numpy()], device=device)
        loss = nn.functional.cross_entropy(head(feats[idx.to(device)]), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        head(feats[torch.as_tensor(val_idx, device=device)])
    sync(device)
    cached_epoch = time.perf_counter() - start
    uncached_epoch = len(train_idx) / fc_train + len(val_idx) / fc_infer
    return {"feature_extraction_s": extraction, "cached_epoch_s": cached_epoch, "uncached_epoch_s_est": uncached_epoch,
            "speedup": uncached_epoch / cached_epoch, "images": len(split.entries)}


def data_table(d: dict) -> str:
    """The data paths: median img/s with the spread over the repeats, and the ratio to the tutorial's pipelines."""
    tutorial = {p["augment"]: p["img_per_s"] for p in d["paths"] if p["key"].startswith("tutorial")}
    rows = [[p["label"], f"{p['img_per_s']:.0f}", f"{p['min']:.0f}-{p['max']:.0f}",
             f"{p['img_per_s'] / tutorial['rrc']:.1f}x",
             f"{p['img_per_s'] / tutorial[p['augment']]:.1f}x" if p["augment"] in tutorial else "-"]
            for p in d["paths"]]
    return (f"Data paths ({d['images']} training images of the cache, median of {d['repeats']} passes each, "
            f"interleaved; tutorial DataLoader with {d['baseline_workers']} workers):\n\n"
            + markdown_table(["data path", "img/s", "range", "vs tutorial RRC", "vs tutorial, same augmentation"],
                             rows, "lrrrr"))


def markdown(result: dict) -> str:
    d = result["data"]
    lines = [f"Device: {result['device_name']} ({result['device']}), torch {result['torch']}, "
             f"{result['date']}; batch {result['batch_size']}{', quick' if result['quick'] else ''}.", "",
             data_table(d), "",
             f"Cache: {d['cache_mb']:.0f} MiB on disk for {d['cache_images']} images (uint8); split + cache "
             f"preparation {d['prepare_s']:.1f}s (decoding happens only when no cache exists); "
             f"peak RSS {result['peak_rss_mb']:.0f} MiB.", "",
             markdown_table(["model", "mode", "training steps", "train img/s", "inference img/s", "epoch s (est.)",
                             "peak CUDA MiB"],
                            [[r["arch"] + (" (compiled)" if r.get("compiled") else ""), r["mode"],
                              "mixed precision" if r.get("amp_train") else "float32",
                              f"{r['train_img_per_s']:.0f}", f"{r['infer_img_per_s']:.0f}", f"{r['epoch_s_est']:.1f}",
                              f"{r['peak_cuda_mb']:.0f}" if r["peak_cuda_mb"] else "-"] for r in result["models"]],
                            "lllrrrr")]
    for arch, f in result.get("feature_cache", {}).items():
        lines += ["", f"Feature caching, {arch} fc: {f['feature_extraction_s']:.1f}s once for {f['images']} images, "
                  "then "
                  f"{f['cached_epoch_s']:.2f}s per epoch against {f['uncached_epoch_s_est']:.1f}s uncached (est.): "
                  f"{f['speedup']:.0f}x per epoch."]
    if result.get("study_minutes_est") is not None:
        lines += ["", "Whole study at 30 epochs per variant (est. from the table): "
                      f"{result['study_minutes_est']:.1f} min."]
    return "\n".join(lines) + "\n"


def main(args) -> None:
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    batch = args.batch_size or (256 if device.type == "cuda" else 32)
    steps = 3 if args.quick else (20 if device.type == "cuda" else 8)
    t0 = time.perf_counter()
    data = DataConfig.from_args(args)
    split, images = prepare_data(data)
    prepare_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    n = min(256, len(split.indices["train"])) if args.quick else len(split.indices["train"])
    sample = rng.choice(split.indices["train"], n, replace=False)
    print(f"data paths on {n} training images, {args.repeats} times each ...")
    resident = to_device(images, device)
    paths = measure_data_paths(data, split, resident, sample, device, args.crop_size, args.loader_workers,
                               args.repeats)
    cache_file = cache_path(data.cache_dir, split, data.img_size)
    result = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
              else f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores",
              "torch": str(torch.__version__), "date": time.strftime("%Y-%m-%d"), "quick": args.quick,
              "batch_size": batch, "steps": steps,
              "data": {"images": n, "paths": paths, "repeats": args.repeats,
                       "baseline_workers": args.loader_workers, "cache_mb": cache_file.stat().st_size / 2**20,
                       "cache_images": len(split.entries), "prepare_s": prepare_s},
              "models": [], "feature_cache": {}}
    wanted = [tuple(m.split(":")) for m in args.models.split(",")]
    for arch, mode in wanted:
        for compiled in ((False, True) if args.compile else (False,)):
            r = model_speed(arch, mode, device, batch, steps, args.crop_size, compiled)
            result["models"].append({"arch": arch, "mode": mode, "compiled": compiled, **r})
            print(f"{arch}/{mode}{' compiled' if compiled else ''}: train {r['train_img_per_s']:.0f} img/s, "
                  f"inference {r['infer_img_per_s']:.0f} img/s")
    for arch in ("resnet18", "mobilenet_v2"):
        fc = next((r for r in result["models"] if (r["arch"], r["mode"], r["compiled"]) == (arch, "fc", False)), None)
        if fc:
            f = feature_cache_speed(arch, resident, split.labels, split, device, 256 if device.type == "cuda" else 64,
                                    args.crop_size, fc["train_img_per_s"], fc["infer_img_per_s"])
            result["feature_cache"][arch] = f
            print(f"{arch} fc feature caching: {f['speedup']:.0f}x per epoch")
    plain = [r for r in result["models"] if not r["compiled"]]
    if {(r["arch"], r["mode"]) for r in plain} >= set(ALL_MODELS):
        result["study_minutes_est"] = sum(30 * r["epoch_s_est"] for r in plain) / 60
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["peak_rss_mb"] = rss
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{device.type}-{result['date']}"
    atomic_write_text(out / f"{stem}.json", json.dumps(result, indent=2, allow_nan=False) + "\n")
    md = markdown(result)
    atomic_write_text(out / f"{stem}.md", md)
    print(md)
    print(f"wrote {out / stem}.json and .md")


if __name__ == "__main__":
    # Freed memory retained, as every training script runs (common/allocator.py); the tutorial's DataLoader
    # workers inherit it, which moved its figure by 1% here (836 against 824 img/s), within its spread.
    run_main(main, get_args_parser().parse_args())
