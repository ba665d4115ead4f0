"""The tutorial pipeline that bench/time_to_accuracy.py measures this project against, on the same saved split.

What a course tutorial writes: torchvision ImageFolder over the files, PIL decoding of every image in every
epoch, per-sample torchvision transforms (train: RandomResizedCrop + RandomHorizontalFlip + ToTensor +
Normalize; eval: Resize + CenterCrop), a DataLoader with 2 workers, AdamW and a cosine schedule, plain
cross-entropy. The models are this project's own (common/models.py build_model, the same freezing by mode,
frozen modules kept in eval mode as in ours), so only the pipeline differs. Test accuracy is evaluated after
every epoch and recorded with the wall seconds since the process started; it never steers training.

Examples:
    python bench/tutorial.py --data-dir ../shared/data/animals10/raw-img --split-file runs/split.json \\
        --arch scratch_cnn --epochs 40 --progress /tmp/tutorial/progress.json
    python bench/tutorial.py --split-file runs/split.json --arch mobilenet_v2 --mode fc \\
        --weights ../shared/weights/mobilenet_v2-4972ace1.pth --epochs 15 --progress /tmp/tutorial/progress.json

The progress file (JSON, rewritten atomically after every epoch) holds the settings and one row per epoch:
epoch, elapsed_s, epoch_seconds (train + val), train_loss, train_acc, train_img_per_s, val_acc, test_acc.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

PROCESS_START = time.perf_counter()  # rows' elapsed_s count from here, as common/engine.py's do

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.architectures import ARCHS  # noqa: E402
from common.cli import (  # noqa: E402
    ArgumentParser,
    DataError,  # noqa: E402
    positive_float,
    positive_int,
    run_main,
)
from common.data import resolve_data_dir  # noqa: E402
from common.engine import resolve_device  # noqa: E402
from common.files import atomic_write_text  # noqa: E402
from common.models import build_model, set_train_mode  # noqa: E402
from common.split import Split, read_split  # noqa: E402
from common.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402


@dataclass
class TutorialConfig:
    """One tutorial training run: the model, its weights, the schedule and the image sizes."""

    arch: str
    mode: str = "full"
    weights: str = "none"
    epochs: int = 10
    lr: float | None = None  # None: the architecture's default rate for the mode, as ours uses
    batch_size: int = 32
    workers: int = 2
    resize: int = 256
    crop: int = 224
    seed: int = 0
    device: str = "auto"


def make_transforms(resize: int, crop: int) -> tuple[transforms.Compose, transforms.Compose]:
    """(train, eval) per-sample transforms, as torchvision's ImageNet recipe writes them."""
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train = transforms.Compose([transforms.RandomResizedCrop(crop), transforms.RandomHorizontalFlip(),
                                transforms.ToTensor(), normalize])
    evaluate = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(crop), transforms.ToTensor(),
                                   normalize])
    return train, evaluate


class SplitImages(Dataset):
    """ImageFolder samples of one subset of the saved split, PIL-decoded and transformed image by image."""

    def __init__(self, samples: list[tuple[str, int]], transform):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        return self.transform(datasets.folder.default_loader(path)), label


def split_samples(data_dir: Path, split: Split) -> dict[str, list[tuple[str, int]]]:
    """ImageFolder's (path, label) samples of the split's train, val and test files, in split order."""
    folder = datasets.ImageFolder(str(data_dir))
    if folder.classes != split.classes:
        raise DataError(f"{data_dir} has classes {folder.classes}, the saved split has {split.classes}; "
                        "point --data-dir at the data the split was made from")
    index = {os.path.relpath(p, data_dir).replace(os.sep, "/"): (p, y) for p, y in folder.samples}
    missing = [e["path"] for e in split.entries if e["path"] not in index]
    if missing:
        raise DataError(f"{len(missing)} file(s) of the saved split are missing from {data_dir} (e.g. {missing[0]}); "
                        "restore them or pass the split of this folder")
    return {subset: [index[split.entries[i]["path"]] for i in idx] for subset, idx in split.indices.items()}


def make_loaders(data_dir: Path, split: Split, config: TutorialConfig) -> dict[str, DataLoader]:
    """Shuffled train and in-order val/test DataLoaders with the config's workers."""
    train_tf, eval_tf = make_transforms(config.resize, config.crop)
    samples = split_samples(data_dir, split)
    return {name: DataLoader(SplitImages(s, train_tf if name == "train" else eval_tf), batch_size=config.batch_size,
                             shuffle=name == "train", num_workers=config.workers)
            for name, s in samples.items()}


def train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                criterion: nn.Module, device: torch.device) -> dict:
    """One pass over the training images: mean loss, accuracy and img/s (data loading included)."""
    set_train_mode(model)
    loss_sum, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss = criterion(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    seconds = time.perf_counter() - start
    return {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
            "train_img_per_s": seen / max(seconds, 1e-9)}


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    """Eval-mode accuracy over a loader."""
    model.eval()
    correct, seen = 0, 0
    for x, y in loader:
        correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
        seen += len(y)
    return correct / max(seen, 1)


def build(config: TutorialConfig, num_classes: int, device: torch.device):
    """The project's model for the config, its AdamW over the trainable parameters, and a cosine schedule."""
    torch.manual_seed(config.seed)
    model, weights = build_model(config.arch, num_classes, config.mode, config.weights)
    model = model.to(device)
    lr = config.lr if config.lr is not None else ARCHS[config.arch].lr[config.mode]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    return model, optimizer, scheduler, {"weights": weights, "lr": lr}


def run(config: TutorialConfig, data_dir: Path, split: Split, progress: Path | None = None, log=print) -> list[dict]:
    """Train for config.epochs, testing after each; rows go to the progress file after every epoch."""
    device = resolve_device(config.device)
    loaders = make_loaders(data_dir, split, config)
    model, optimizer, scheduler, built = build(config, len(split.classes), device)
    criterion = nn.CrossEntropyLoss()
    record = {"pipeline": "tutorial", "config": asdict(config), **built, "threads": torch.get_num_threads(),
              "torch": str(torch.__version__), "rows": []}
    for epoch in range(config.epochs):
        t0 = time.perf_counter()
        row = {"epoch": epoch + 1, **train_epoch(model, loaders["train"], optimizer, criterion, device)}
        row["val_acc"] = accuracy(model, loaders["val"], device)
        scheduler.step()
        row["epoch_seconds"] = time.perf_counter() - t0  # train + val, as ours counts it
        row["test_acc"] = accuracy(model, loaders["test"], device)
        row["elapsed_s"] = time.perf_counter() - PROCESS_START
        record["rows"].append(row)
        if progress is not None:
            atomic_write_text(progress, json.dumps(record, indent=1, allow_nan=False) + "\n")
        log(f"epoch {epoch + 1}/{config.epochs}  train loss {row['train_loss']:.4f}  val acc {row['val_acc']:.4f}  "
            f"test acc {row['test_acc']:.4f}  {row['epoch_seconds']:.1f}s  {row['train_img_per_s']:.0f} img/s")
    return record["rows"]


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(description="The tutorial pipeline (ImageFolder + PIL + DataLoader) on the saved split.")
    parser.add_argument("--data-dir", default=None, help="the images (default: $ANIMALS10_DIR, else the project's)")
    parser.add_argument("--split-file", required=True, help="the project's saved split (runs/split.json)")
    parser.add_argument("--arch", choices=tuple(ARCHS), required=True)
    parser.add_argument("--mode", default="full", help="what is trained (the architecture's modes)")
    parser.add_argument("--weights", default="none", help="'imagenet', a state-dict file, or 'none'")
    parser.add_argument("--epochs", type=positive_int, default=10)
    parser.add_argument("--lr", type=positive_float, default=None, help="default: the mode's rate in ARCHS")
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--img-size", type=positive_int, default=256, help="eval Resize (shorter side)")
    parser.add_argument("--crop-size", type=positive_int, default=224, help="train and eval crop")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--progress", default=None, help="JSON file rewritten after every epoch")
    parser.add_check(lambda a: None if a.mode in ARCHS[a.arch].modes else
                     f"--mode {a.mode} is not a mode of {a.arch}; choose one of {', '.join(ARCHS[a.arch].modes)}")
    return parser


def main(args) -> None:
    config = TutorialConfig(args.arch, args.mode, args.weights, args.epochs, args.lr, args.batch_size, args.workers,
                            args.img_size, args.crop_size, args.seed, args.device)
    run(config, resolve_data_dir(args.data_dir), read_split(Path(args.split_file)),
        Path(args.progress) if args.progress else None)


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args(), retain_memory=False)  # a tutorial runs with glibc's defaults
