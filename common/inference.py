"""From a checkpoint to predictions: the `Predictor`, and the labelled images a checkpoint is evaluated on.

Every script that runs a trained model (evaluate.py, gradcam.py, submit.py, app.py) builds it here, so all of
them see the same eval-mode model (channels_last, AMP on CUDA), the same centre crop and normalisation, and
the same saved test split.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from common.cache import load_or_build_cache
from common.compression import is_int8
from common.data import display_name, load_folder, resolve_data_dir
from common.engine import inference_batch_size, predict
from common.loader import BatchLoader
from common.models import model_from_checkpoint
from common.runs import CheckpointError, load_checkpoint
from common.sources import UNLISTED, read_sources
from common.split import Split, load_split
from common.transforms import eval_transform

# Checkpoint entries that only training and --resume read; a Predictor drops them to keep loaded models small.
TRAINING_STATE_KEYS = ("model_state", "optimizer_state", "scheduler_state", "scaler_state", "rng")


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """The central size x size pixels of an H x W (x C) image: what eval_transform keeps."""
    top, left = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
    return img[top:top + size, left:left + size]


def model_device(ckpt: dict, device: torch.device | str, log=print) -> torch.device:
    """Where a checkpoint's model runs: the device asked for, except that an int8 model (whose quantized kernels exist
    only for the CPU) stays on the CPU, with a note when another device was asked for."""
    device = torch.device(device)
    if is_int8(ckpt) and device.type != "cpu":
        log(f"note: an int8 model runs on the CPU only (PyTorch's quantized kernels are CPU kernels); using the CPU, "
            f"not {device}")
        return torch.device("cpu")
    return device


class Predictor:
    """A checkpoint's eval-mode model on a device (channels_last), its eval transform and its class names.

    An int8 checkpoint (compress.py) runs on the CPU whatever the device asked for, without AMP (see model_device).
    """

    def __init__(self, ckpt: dict | str | Path, device: torch.device | str = "cpu", log=print):
        ckpt = ckpt if isinstance(ckpt, dict) else load_checkpoint(ckpt)
        self.device = model_device(ckpt, device, log)
        self.model = model_from_checkpoint(ckpt).to(self.device, memory_format=torch.channels_last)
        self.ckpt = {k: v for k, v in ckpt.items() if k not in TRAINING_STATE_KEYS}  # the metadata only
        self.classes: list[str] = list(ckpt["classes"])
        self.names = [display_name(c) for c in self.classes]
        self.img_size, self.crop_size = ckpt["img_size"], ckpt["crop_size"]
        self.transform: Callable[[torch.Tensor], torch.Tensor] = partial(
            eval_transform, crop=self.crop_size, mean=ckpt["mean"], std=ckpt["std"])

    def prepare(self, images: np.ndarray) -> torch.Tensor:
        """uint8 N x H x W x 3 images -> the normalised, centre-cropped channels_last batch the model takes."""
        # np.array copies: the pixel cache is a read-only memmap, which torch.from_numpy warns about.
        x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).to(self.device)
        return self.transform(x).contiguous(memory_format=torch.channels_last)

    def predict(self, images, labels: np.ndarray | None = None, indices: np.ndarray | None = None,
                batch_size: int | None = None, tta: bool = False,
                desc: str = "predict") -> tuple[torch.Tensor, torch.Tensor, float]:
        """(logits, labels, seconds) for images[indices] (default: all), batch by batch, AMP on CUDA.

        `images` is anything indexable by an index array that gives uint8 N x H x W x 3 (the pixel cache, an
        array, a lazily corrupted view); with tta each image's and its mirror image's probabilities are averaged.
        """
        # Only whole arrays need a length: a lazy view (evaluate.py's corruptions) comes with its indices.
        indices = np.arange(len(images)) if indices is None else indices
        labels = np.zeros(int(np.max(indices, initial=-1)) + 1, np.int64) if labels is None else labels
        loader = BatchLoader(images, labels, indices, batch_size or inference_batch_size(self.device), self.device)
        # AMP only on CUDA, which an int8 model never runs on (model_device): its integer kernels take no autocast.
        return predict(self.model, loader, self.transform, self.device, amp=self.device.type == "cuda", desc=desc,
                       tta=tta)

    def logits(self, images, batch_size: int | None = None, tta: bool = False, desc: str = "predict") -> torch.Tensor:
        """Float logits on the CPU for every image of a uint8 N x H x W x 3 array."""
        return self.predict(images, batch_size=batch_size, tta=tta, desc=desc)[0]

    def probabilities(self, images, batch_size: int | None = None, tta: bool = False,
                      desc: str = "predict") -> np.ndarray:
        """N x classes softmax probabilities for every image of a uint8 N x H x W x 3 array."""
        return self.logits(images, batch_size, tta, desc).softmax(1).numpy()


@dataclass
class LabelledImages:
    """Images a checkpoint is evaluated on: images[indices] with labels[indices], their names and where from."""
    images: np.ndarray  # uint8 N x S x S x 3, possibly a read-only memmap of the whole split
    labels: np.ndarray  # class indices into the checkpoint's classes, aligned with images
    indices: np.ndarray  # which of the images are evaluated
    names: list[str]  # one per index: the image's path
    description: str  # e.g. "saved test split (runs/split.json)"
    split: Split | None = None  # the saved split the images are (its other parts index them too); None: a folder
    root: Path | None = None  # the data folder the names are relative to (as sources.csv names its files)

    def sources(self) -> list[str] | None:
        """Each image's source from the data folder's sources.csv (common/sources.py); None without one."""
        table = read_sources(self.root) if self.root is not None else None
        if table is None:
            return None
        return [table.get(_relative(name, self.root), UNLISTED) for name in self.names]


def _relative(name: str, root: Path) -> str:
    """An image's name as `<class>/<file>` below root (a saved split's names are already)."""
    path = Path(name)
    return (path.relative_to(root) if path.is_relative_to(root) else path).as_posix()


def load_test_split(ckpt: dict, source_dir: str | Path | None = None, split_file: str | Path | None = None,
                    workers: int = 2, log=print) -> LabelledImages:
    """The test images of the saved split the checkpoint was trained on, via the run's pixel cache.

    source_dir: the folder the split was drawn from (default: the run's data_dir); split_file: the saved split
    (default: the run's split_file, else <output_dir>/split.json). CheckpointError when the checkpoint records
    no split or was trained on another one.
    """
    missing = [k for k in ("config", "split_fingerprint") if k not in ckpt]
    if missing:
        raise CheckpointError(f"the checkpoint records no saved split (no {missing[0]} entry); evaluate it on a "
                              "folder of <class>/ images instead (evaluate.py --data-dir FOLDER)")
    config = ckpt["config"]
    source = resolve_data_dir(str(source_dir) if source_dir else config.get("data_dir"))
    output_dir = Path(config.get("output_dir", "runs"))
    split_file = Path(split_file or config.get("split_file") or output_dir / "split.json")
    split = load_split(split_file, source)
    if split.fingerprint != ckpt["split_fingerprint"]:
        raise CheckpointError(f"the checkpoint was trained on another split than {split_file}; "
                              "pass the run's own --split-file")
    images = load_or_build_cache(source, split, output_dir / "cache", ckpt["img_size"], workers=workers, log=log)
    idx = split.indices["test"]
    return LabelledImages(images, split.labels, idx, [split.entries[i]["path"] for i in idx],
                          f"saved test split ({split_file})", split, source)


def load_labelled_folder(ckpt: dict, folder: str | Path, workers: int = 2, log=print) -> LabelledImages:
    """Every readable image of a <class>/ folder (e.g. a hold-out set) whose classes are the checkpoint's."""
    folder = Path(folder)
    images, labels, paths = load_folder(folder, ckpt["classes"], ckpt["img_size"], workers, log)
    return LabelledImages(images, labels, np.arange(len(labels)), [str(p) for p in paths], f"folder {folder}",
                          root=folder)
