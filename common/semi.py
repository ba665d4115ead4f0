"""Semi-supervised fine-tuning with few labels: pseudo-labelling with a confidence threshold, as FixMatch does it.

`--labelled-fraction F` keeps the labels of a stratified part F of the training split (the same images that
`--fraction F` trains on alone, so the supervised baseline is that run) and treats the rest as unlabelled. Each
step takes one labelled batch and `ratio` times as many unlabelled images. The model sees the labelled batch and
a weak view of the unlabelled images (the run's own training transform). Where its confidence on the weak view
reaches the threshold, the argmax becomes a pseudo-label. That pseudo-label trains a strongly augmented view of
the same image (RandAugment, a wider random-resized crop, stronger colour jitter and Cutout).

On cached features (fc mode with --cache-features, the CPU variant) the weak view is the centre crop's feature
vector and the strong view the same vector under dropout, so a step costs a few matrix products.
`--unlabelled-weight 0` is the labelled-only baseline on the same steps and the same labelled batches.
The withheld labels of the unlabelled images are never trained on; they only measure how often the pseudo-labels
are right (pseudo_accuracy in each epoch's row).
"""
from __future__ import annotations

import itertools
import time
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torchvision.transforms import v2
from tqdm import tqdm

from common.cli import UserError
from common.engine import Transform, autocast, backward_step
from common.loader import BatchLoader
from common.models import set_train_mode
from common.transforms import TrainTransform

THRESHOLD = 0.95  # FixMatch's confidence threshold, for one-hot targets
RATIO = 7  # unlabelled images per labelled one in a step (FixMatch's mu)
WEIGHT = 1.0  # weight of the pseudo-label loss (FixMatch's lambda_u)
FEATURE_DROPOUT = 0.5  # the strong view of a cached feature vector
STRONG_SCALE = (0.2, 1.0)  # the strong view's random-resized crop (the weak one: the run's --scale-min)
STRONG_JITTER = 0.4


def default_threshold(label_smoothing: float, num_classes: int) -> float:
    """THRESHOLD times the confidence a label-smoothed target asks for (0.95 without label smoothing).

    With label smoothing e the training targets give the true class 1 - e (C-1)/C, so a fixed 0.95 would leave
    almost every unlabelled image without a pseudo-label.
    """
    return THRESHOLD * (1 - label_smoothing * (num_classes - 1) / num_classes)


class Cutout:
    """Cutout on normalised images: a square of half the side at a random centre (clipped) set to the mean colour."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        cy = torch.randint(0, h, (n,), generator=self.generator).view(n, 1)
        cx = torch.randint(0, w, (n,), generator=self.generator).view(n, 1)
        rows, cols = torch.arange(h).view(1, h), torch.arange(w).view(1, w)
        inside = ((rows - cy).abs() <= h // 4).view(n, h, 1) & ((cols - cx).abs() <= w // 4).view(n, 1, w)
        return x.masked_fill(inside.unsqueeze(1).to(x.device), 0.0)  # 0 is the mean colour once normalised


def strong_transform(crop: int, mean: Sequence[float], std: Sequence[float], generator: torch.Generator,
                     resize: str = "auto") -> Transform:
    """FixMatch's strong view of uint8 batches: RandAugment (2 ops, magnitude 10), a random-resized crop of
    STRONG_SCALE, flip, STRONG_JITTER colour jitter, then Cutout."""
    crop_tf = TrainTransform(crop, mean, std, generator, STRONG_SCALE, STRONG_JITTER, resize,
                             v2.RandAugment(num_ops=2, magnitude=10))
    cutout = Cutout(generator)
    return lambda x: cutout(crop_tf(x))


def feature_dropout(p: float, generator: torch.Generator) -> Transform:
    """The strong view of cached feature vectors: dropout with probability p (kept entries scaled by 1/(1-p))."""
    def view(x: torch.Tensor) -> torch.Tensor:
        keep = (torch.rand(x.shape, generator=generator) >= p).to(x.device)
        return x * keep / (1 - p)
    return view


def _cycle(loader: BatchLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The loader's batches over and over, each pass in a new order."""
    while True:
        yield from loader


class PseudoLabelling:
    """The training epoch of a semi-supervised run: supervised loss on labelled batches plus, weighted, the loss of
    strong views on the pseudo-labels their weak views reach the threshold on (averaged over every unlabelled image,
    as FixMatch does)."""

    def __init__(self, unlabelled: BatchLoader, strong: Transform, threshold: float, weight: float):
        self.unlabelled, self.strong, self.threshold, self.weight = unlabelled, strong, threshold, weight

    def train_epoch(self, model: nn.Module, labelled: BatchLoader, weak: Transform, criterion: nn.Module,
                    optimizer: torch.optim.Optimizer, device: torch.device, amp: bool = False,
                    scaler: torch.amp.GradScaler | None = None, desc: str = "train") -> dict:
        """One epoch: as many steps as the longer of the two streams has batches (the shorter one cycles)."""
        set_train_mode(model)
        steps = max(len(labelled), len(self.unlabelled))
        # Weight 0 is the labelled-only baseline on the same steps: the unlabelled images are not even drawn.
        unlabelled = _cycle(self.unlabelled) if self.weight else itertools.repeat((None, torch.zeros(0, dtype=int)))
        loss_sum, correct, seen, kept, right, pseudo_seen = 0.0, 0, 0, 0, 0, 0
        start = time.perf_counter()
        for _, (x_l, y_l), (x_u, y_u) in tqdm(zip(range(steps), _cycle(labelled), unlabelled), total=steps,
                                              desc=desc, leave=False, dynamic_ncols=True):
            x = torch.cat([weak(x_l), weak(x_u), self.strong(x_u)]) if self.weight else weak(x_l)
            x = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
            with autocast(device, amp):
                logits_l, weak_u, strong_u = model(x).split([len(y_l), len(y_u), len(y_u)])
                confidence, pseudo = weak_u.detach().float().softmax(1).max(1)
                keep = confidence >= self.threshold
                loss = criterion(logits_l, y_l)
                if keep.any():  # the mean over all unlabelled images: a confident few weigh little
                    loss = loss + self.weight * criterion(strong_u[keep], pseudo[keep]) * keep.float().mean()
            backward_step(loss, optimizer, scaler)
            loss_sum += loss.item() * len(y_l)
            correct += (logits_l.argmax(1) == y_l).sum().item()
            seen += len(y_l)
            kept += int(keep.sum())
            right += int((pseudo[keep] == y_u[keep]).sum())
            pseudo_seen += len(y_u)
        seconds = time.perf_counter() - start
        row = {"loss": loss_sum / max(seen, 1), "acc": correct / max(seen, 1), "images": seen + pseudo_seen,
               "seconds": seconds, "img_per_s": (seen + pseudo_seen) / max(seconds, 1e-9)}
        if self.weight:
            row.update(pseudo_coverage=kept / pseudo_seen,
                       pseudo_accuracy=right / kept if kept else None)  # None: no pseudo-label yet
        return row


def unlabelled_loader(images, labels: np.ndarray, train_idx: np.ndarray, labelled_idx: np.ndarray, batch_size: int,
                      device: torch.device, generator: torch.Generator) -> BatchLoader:
    """Shuffled full batches of the training images outside the labelled part (their labels only for scoring)."""
    rest = np.setdiff1d(train_idx, labelled_idx)
    if len(rest) < batch_size:
        raise UserError(f"only {len(rest)} unlabelled training images, fewer than one unlabelled batch of "
                        f"{batch_size}; lower --unlabelled-ratio or --labelled-fraction")
    return BatchLoader(images, labels, rest, batch_size, device, shuffle=True, generator=generator, drop_last=True,
                       rank=0, world_size=1)
