"""Batched image transforms on the device: normalisation, centre and random-resized crops, flips, colour jitter."""
from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from torchvision.ops import roi_align
from torchvision.transforms import v2

if TYPE_CHECKING:
    from common.config import AugmentConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TRANSFORM_VERSION = 1  # part of the feature-cache key: bump when eval_transform's output changes
AUTO_AUGMENT = {"none": None, "randaugment": v2.RandAugment, "trivialaugment": v2.TrivialAugmentWide}


def make_transforms(config: AugmentConfig, generator: torch.Generator, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> tuple[Callable, Callable]:
    """(train, eval) batch transforms from the augmentation options."""
    eval_tf = partial(eval_transform, crop=config.crop_size, mean=mean, std=std)
    if config.no_augment:
        return eval_tf, eval_tf
    scale = None if config.scale_min >= 1 else (config.scale_min, 1.0)
    train_tf = partial(train_transform, crop=config.crop_size, mean=mean, std=std, generator=generator,
                       scale=scale, jitter=config.jitter)
    policy = AUTO_AUGMENT[config.auto_augment]
    if policy is None:
        return train_tf, eval_tf
    augment = policy()
    # One policy draw per image (a batch tensor would get one draw for all); torch's global RNG is seeded
    # by seed_everything and saved in checkpoints, so runs stay reproducible and resumable.
    return (lambda x: train_tf(torch.stack([augment(img) for img in x]))), eval_tf


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 or [0, 1] float N x 3 x H x W -> normalised float, in one fused pass."""
    scale = 1 / 255 if x.dtype == torch.uint8 else 1.0
    m = torch.tensor(mean, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    return torch.addcmul(-m / s, x.float(), scale / s)


def eval_transform(x: torch.Tensor, crop: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Centre crop and normalise a uint8 batch."""
    h, w = x.shape[-2:]
    top, left = (h - crop) // 2, (w - crop) // 2
    return normalize(x[..., top:top + crop, left:left + crop], mean, std)


def train_transform(x: torch.Tensor, crop: int, mean: Sequence[float], std: Sequence[float],
                    generator: torch.Generator | None = None, scale: tuple[float, float] = (0.25, 1.0),
                    ratio: tuple[float, float] = (3 / 4, 4 / 3), jitter: float = 0.0) -> torch.Tensor:
    """Batched random-resized crop (or, with scale=None, a plain random crop) + horizontal flip + optional jitter.

    One roi_align call crops and resizes the whole batch with bilinear sampling, on whatever device x is on.
    """
    n, _, h, w = x.shape
    g = generator
    dev = x.device
    if scale is None:
        # Classic random crop of crop x crop pixels at a random offset; cropping and flipping stay in uint8.
        top = torch.randint(0, h - crop + 1, (n,), generator=g).tolist()
        left = torch.randint(0, w - crop + 1, (n,), generator=g).tolist()
        flip = (torch.rand(n, generator=g) < 0.5).tolist()
        tiles = (x[i, :, row:row + crop, col:col + crop] for i, (row, col) in enumerate(zip(top, left)))
        out = torch.stack([tile.flip(-1) if f else tile for tile, f in zip(tiles, flip)])
    else:
        area = h * w * torch.empty(n).uniform_(*scale, generator=g)
        log_r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g)
        aspect = torch.exp(log_r)
        cw = torch.sqrt(area * aspect).clamp(8, w)
        ch = torch.sqrt(area / aspect).clamp(8, h)
        x0 = torch.rand(n, generator=g) * (w - cw)
        y0 = torch.rand(n, generator=g) * (h - ch)
        boxes = torch.stack([torch.arange(n, dtype=torch.float), x0, y0, x0 + cw, y0 + ch], 1).to(dev)
        out = roi_align(x.float(), boxes, output_size=crop, spatial_scale=1.0, sampling_ratio=2, aligned=True)
        out = out.div_(255)
        flip = (torch.rand(n, generator=g) < 0.5).to(dev)
        out = torch.where(flip.view(-1, 1, 1, 1), out.flip(-1), out)
    if jitter > 0:
        out = _color_jitter(out.float() / 255 if out.dtype == torch.uint8 else out, jitter, g)
    return normalize(out, mean, std)


def _color_jitter(x: torch.Tensor, strength: float, g: torch.Generator | None) -> torch.Tensor:
    n = x.shape[0]

    def factor() -> torch.Tensor:
        return torch.empty(n, 1, 1, 1).uniform_(1 - strength, 1 + strength, generator=g).to(x.device)

    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    x = x * factor()                                                           # brightness
    x = (x - gray.mean((2, 3), keepdim=True)) * factor() + gray.mean((2, 3), keepdim=True)  # contrast
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    x = (x - gray) * factor() + gray                                           # saturation
    return x.clamp_(0, 1)
