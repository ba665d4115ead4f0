"""Batches on the device from the cached pixels: the loaders of a split, the training subset, class weights, MixUp
and CutMix."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch
from torch import nn

from common import distributed
from common.cli import DataError
from common.engine import inference_batch_size
from common.split import Split

if TYPE_CHECKING:
    from common.config import LoaderConfig


def train_subset(labels: np.ndarray, train_idx: np.ndarray, fraction: float = 1.0, imbalance: float = 1.0,
                 seed: int = 0) -> np.ndarray:
    """The training indices kept by --fraction (of every class) and --imbalance (long tail over the classes).

    Each class keeps the first images of its own seeded permutation, so a smaller fraction is a subset of a
    larger one. Class k of C keeps round(n_k * fraction * imbalance^(-k/(C-1))) images, at least one.
    The subset is part of the data choice: training passes the split's seed, so repeats over --seed train
    on the same images.
    """
    if not 0 < fraction <= 1:
        raise DataError(f"--fraction {fraction:g} is not in (0, 1]; use e.g. --fraction 0.2")
    if imbalance < 1:
        raise DataError(f"--imbalance {imbalance:g} is below 1; "
                        "give the ratio of the largest to the smallest class, e.g. 10")
    train_idx = np.asarray(train_idx)
    classes = np.unique(labels[train_idx])
    kept = []
    for rank, c in enumerate(classes):
        members = train_idx[labels[train_idx] == c]
        n = len(members) * fraction
        if len(classes) > 1:
            n *= imbalance ** (-rank / (len(classes) - 1))
        order = np.random.default_rng([seed, int(c)]).permutation(len(members))
        kept.append(members[order[:max(1, round(n))]])
    return np.sort(np.concatenate(kept))


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency class weights n / (C * n_c) for weighted cross-entropy (absent classes get 0)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.divide(len(labels), num_classes * counts, out=np.zeros_like(counts), where=counts > 0)
    return torch.tensor(weights, dtype=torch.float32)


def check_batch_fits(split: "Split", config: LoaderConfig) -> np.ndarray:
    """The training images a run draws from (after --fraction/--imbalance); DataError if a batch is larger."""
    train_idx = train_subset(split.labels, split.indices["train"], config.fraction, config.imbalance,
                             split.split_seed)
    if len(train_idx) < config.batch_size:
        raise DataError(f"only {len(train_idx)} training images, fewer than --batch-size {config.batch_size}; "
                        "lower --batch-size or raise --fraction")
    return train_idx


def make_loaders(images, split: "Split", config: LoaderConfig, device: torch.device, generator: torch.Generator,
                 log=print) -> dict[str, "BatchLoader"]:
    """Train (shuffled, full batches only; --fraction/--imbalance subset; --balance oversample), val, test loaders;
    val and test go at the inference batch size, as evaluate.py does."""
    train_idx = check_batch_fits(split, config)
    if len(train_idx) != len(split.indices["train"]):
        counts = np.bincount(split.labels[train_idx], minlength=len(split.classes))
        log(f"training on {len(train_idx)} of {len(split.indices['train'])} training images "
            f"(per class {counts.min()}-{counts.max()}; fraction {config.fraction:g}, imbalance {config.imbalance:g})")
    sample_weights = None
    if config.balance == "oversample":
        sample_weights = 1 / np.bincount(split.labels[train_idx])[split.labels[train_idx]]
    indices = {"train": train_idx, "val": split.indices["val"], "test": split.indices["test"]}
    sizes = {"train": config.batch_size, "val": inference_batch_size(device), "test": inference_batch_size(device)}
    return {name: BatchLoader(images, split.labels, idx, sizes[name], device, shuffle=name == "train",
                              generator=generator, drop_last=name == "train",
                              sample_weights=sample_weights if name == "train" else None)
            for name, idx in indices.items()}


def mix_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, mixup: float, cutmix: float,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp or CutMix of a normalised batch with a shuffled copy of itself; returns (images, soft targets).

    With both alphas set, each batch uses one of the two at random (as in torchvision's references).
    CutMix's mixing weight is the pasted box's actual share of the image, so targets always sum to one.
    """
    g = generator
    use_cutmix = cutmix > 0 and (mixup <= 0 or torch.rand(1, generator=g).item() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    # torch's Beta sampler takes no generator; draw from numpy seeded by ours, so runs stay reproducible.
    lam = float(np.random.default_rng(int(torch.randint(2**62, (1,), generator=g))).beta(alpha, alpha))
    perm = torch.randperm(len(x), generator=g).to(x.device)
    targets = nn.functional.one_hot(y, num_classes).float()
    if use_cutmix:
        h, w = x.shape[-2:]
        cy, cx = (torch.rand(2, generator=g) * torch.tensor([h, w])).long().tolist()
        bh, bw = round(h * math.sqrt(1 - lam)), round(w * math.sqrt(1 - lam))
        y0, y1 = max(cy - bh // 2, 0), min(cy + bh - bh // 2, h)
        x0, x1 = max(cx - bw // 2, 0), min(cx + bw - bw // 2, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = lam * x + (1 - lam) * x[perm]
    return x, lam * targets + (1 - lam) * targets[perm]


def to_device(images: np.ndarray, device: torch.device, max_fraction: float = 0.5) -> np.ndarray | torch.Tensor:
    """Move the whole uint8 cache onto a CUDA device when it takes under max_fraction of free memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if images.nbytes < max_fraction * free:
            return torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return images


class BatchLoader:
    """Yields (uint8 N x 3 x H x W, int64 labels) batches on the device from the cached pixels.

    `images` is the memory-mapped cache (batches are gathered, pinned on CUDA and copied without
    blocking), a tensor already resident on the device (see `to_device`), or a tensor of features.
    """

    def __init__(self, images: np.ndarray | torch.Tensor, labels: np.ndarray, indices: np.ndarray,
                 batch_size: int, device: torch.device, shuffle: bool = False,
                 generator: torch.Generator | None = None, drop_last: bool = False,
                 rank: int | None = None, world_size: int | None = None, sample_weights: np.ndarray | None = None):
        self.images, self.labels = images, torch.as_tensor(labels)
        self.indices = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        self.batch_size, self.device, self.shuffle = batch_size, device, shuffle
        self.generator, self.drop_last = generator, drop_last
        # Oversampling: each epoch draws len(indices) images with replacement, image i with weight sample_weights[i].
        self.sample_weights = None if sample_weights is None else torch.as_tensor(sample_weights, dtype=torch.double)
        # Under torchrun each process takes its slice of every global batch of batch_size x world_size
        # images, so N processes see exactly the batches one process with N times the batch would.
        self.rank = distributed.rank() if rank is None else rank
        self.world = distributed.world_size() if world_size is None else world_size

    def __len__(self) -> int:
        n, step = len(self.indices), self.batch_size * self.world
        return n // step if self.drop_last else math.ceil(n / step)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.indices
        # The same generator state in every process, so all draw the same order and take their own slices.
        if self.sample_weights is not None:
            picks = torch.multinomial(self.sample_weights, len(order), replacement=True, generator=self.generator)
            order = order[picks]
        elif self.shuffle:
            order = order[torch.randperm(len(order), generator=self.generator)]
        step = self.batch_size * self.world
        for b in range(len(self)):
            start = b * step + self.rank * self.batch_size
            idx = order[start:start + self.batch_size]
            if len(idx):
                yield self._gather(idx), self.labels[idx].to(self.device, non_blocking=True)

    def _gather(self, idx: torch.Tensor) -> torch.Tensor:
        if isinstance(self.images, torch.Tensor):  # resident images (N x H x W x 3) or cached features (N x D)
            x = self.images[idx.to(self.images.device)]
            return x.permute(0, 3, 1, 2) if x.dim() == 4 else x
        # numpy's fancy index copies whole rows in the batch's order; sorting the reads and restoring the order
        # with a torch index (element by element for uint8) cost 12x more per image (0.115 against 0.009 ms).
        x = torch.from_numpy(self.images[idx.numpy()])
        if self.device.type == "cuda":
            x = x.pin_memory()
        return x.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
