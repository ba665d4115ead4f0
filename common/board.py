"""A run's TensorBoard events, in its run folder: the scalars of every epoch; after the first epoch, a grid of
training images as the model saw them; at the end, the hyperparameters with the final metrics (HParams
dashboard), the test confusion matrix and a Grad-CAM grid of test images."""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams
from torchvision.utils import make_grid

from common.architectures import ARCHS
from common.explain import GradCAM, find_layer, overlay
from common.plots import image_grid_figure
from common.transforms import TrainTransform, eval_transform

# config.json keys shown in the HParams dashboard (those a run has, with a scalar value)
HPARAMS = ("arch", "mode", "lr", "batch_size", "epochs", "opt", "weight_decay", "sched", "warmup_epochs",
           "label_smoothing", "dropout", "scale_min", "jitter", "auto_augment", "mixup", "cutmix", "balance",
           "fraction", "labelled_fraction", "imbalance", "probe_epochs", "low_res_epochs", "cache_features", "seed",
           "amp", "tag")
FINAL = ("best_val_acc", "test_acc", "test_macro_f1", "train_seconds")  # metrics.json keys, as final/<key>


class Board:
    """The run's TensorBoard writer (opened at the first epoch written, so a run killed before it leaves none)."""

    SCALARS = (("train_loss", "loss/train"), ("val_loss", "loss/val"), ("train_acc", "accuracy/train"),
               ("val_acc", "accuracy/val"), ("lr", "lr"), ("epoch_seconds", "time/epoch_seconds"),
               ("train_img_per_s", "throughput/train_img_per_s"), ("eval_img_per_s", "throughput/eval_img_per_s"))
    OPTIONAL = (("pseudo_coverage", "pseudo/coverage"), ("pseudo_accuracy", "pseudo/accuracy"))  # semi-supervised

    def __init__(self, start_epoch: int, log=print):
        # Events of steps after the last committed epoch are from a killed attempt: drop them.
        self.purge_step = start_epoch + 1 if start_epoch else None
        self.writer, self.log = None, log

    def open(self, run_dir: Path) -> None:
        """Open the writer in the run folder, once (a run resumed after its last epoch opens it for the end)."""
        if self.writer is None:
            self.log(f"run folder {run_dir}")
            if self.purge_step:
                wait_past_event_files(run_dir)
            self.writer = SummaryWriter(str(run_dir), purge_step=self.purge_step)

    def add(self, run_dir: Path, row: dict) -> None:
        """One epoch's history row."""
        self.open(run_dir)
        for key, tag in self.SCALARS:
            self.writer.add_scalar(tag, row[key], row["epoch"])
        for key, tag in self.OPTIONAL:
            if row.get(key) is not None:
                self.writer.add_scalar(tag, row[key], row["epoch"])
        self.writer.flush()

    def add_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """A uint8 3 x H x W image."""
        self.writer.add_image(tag, image, step)
        self.writer.flush()

    def add_figure(self, tag: str, fig, step: int) -> None:
        """A matplotlib figure (closed once written)."""
        self.writer.add_figure(tag, fig, step, close=True)
        self.writer.flush()

    def add_hparams(self, config: dict, metrics: dict, step: int) -> None:
        """The run's hyperparameters and final metrics, in this run's own folder (add_hparams would open another)."""
        hp = {k: config[k] for k in HPARAMS if isinstance(config.get(k), (bool, int, float, str))}
        final = {f"final/{k}": float(metrics[k]) for k in FINAL if isinstance(metrics.get(k), (int, float))}
        for summary in hparams(hp, final):
            self.writer.file_writer.add_summary(summary)
        for tag, value in final.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def wait_past_event_files(run_dir: Path) -> None:
    """Sleep, if need be, until the clock is past the second in which the folder's newest event file was opened.

    TensorBoard reads a folder's event files in name order, and a name is the second it was opened in followed
    by host, pid and a counter, which do not sort by time: a resumed run's file must name a later second than its
    killed attempt's, or the attempt's events are read after the resumed ones and the purge undoes them.
    """
    opened = [int(p.name.split(".")[3]) for p in run_dir.glob("events.out.tfevents.*")
              if p.name.split(".")[3].isdigit()]
    if opened:
        time.sleep(max(0.0, max(opened) + 1 - time.time()))


def _to_uint8(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo the normalisation of an N x 3 x H x W batch."""
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1) for v in (mean, std))
    return (x.float().cpu() * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)


def _nchw(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 N x H x W x 3 images (the memory-mapped cache, or a copy resident on the GPU) as N x 3 x H x W."""
    x = pixels if isinstance(pixels, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(pixels))
    return x.permute(0, 3, 1, 2)


def augmented_grid(pixels: np.ndarray | torch.Tensor, transform: Callable, mean: Sequence[float], std: Sequence[float],
                   seed: int = 0) -> torch.Tensor:
    """uint8 N x H x W x 3 images through the training transform, as one uint8 3 x H x W grid, 8 to a row.

    The draws come from a generator of their own and torch's global RNG is restored, so drawing the grid leaves
    the run's augmentation exactly as it would be without it.
    """
    if isinstance(transform, TrainTransform):
        transform = copy.copy(transform)
        transform.kwargs = {**transform.kwargs, "generator": torch.Generator().manual_seed(seed)}
    with torch.random.fork_rng(devices=[]):
        x = transform(_nchw(pixels))
    return make_grid(_to_uint8(x, mean, std), nrow=8, padding=2)


def gradcam_figure(model: nn.Module, arch: str, pixels: np.ndarray | torch.Tensor, labels: np.ndarray, names: list[str],
                   crop: int, mean: Sequence[float], std: Sequence[float], device: torch.device):
    """Each image's centre crop and its Grad-CAM overlay for the predicted class, captioned true / predicted."""
    was_training = model.training
    model.eval()
    x = eval_transform(_nchw(pixels).to(device), crop, mean, std)
    with GradCAM(model, find_layer(model, ARCHS[arch].gradcam_layer)) as cam:
        heat, logits = cam(x.contiguous(memory_format=torch.channels_last))
    model.train(was_training)
    crops = _to_uint8(x, mean, std).permute(0, 2, 3, 1).numpy()
    probs = logits.float().softmax(1).cpu()
    tiles, captions = [], []
    for img, h, p, y in zip(crops, heat.cpu().numpy(), probs, labels):
        k = int(p.argmax())
        tiles += [img, overlay(img, h)]
        captions += [f"true {names[y]}", f"pred {names[k]} ({p[k]:.2f})"]
    return image_grid_figure(tiles, captions, f"Grad-CAM ({ARCHS[arch].gradcam_layer})", cols=4,
                             tile=(2.2, 2.4))

