"""Batched image transforms on the device: normalisation, centre and random-resized crops, flips, colour jitter."""
from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING, Callable, Sequence

import cv2
import numpy as np
import torch
from torch import nn
from torchvision.ops import roi_align
from torchvision.transforms import v2

from common.cli import UserError

if TYPE_CHECKING:
    from common.config import AugmentConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LUMA = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)  # ITU-R 601-2, as PIL's and torchvision's grayscale
TRANSFORM_VERSION = 1  # part of the feature-cache key: bump when eval_transform's output changes
AUTO_AUGMENT = {"none": None, "randaugment": v2.RandAugment, "trivialaugment": v2.TrivialAugmentWide}


def make_transforms(config: AugmentConfig, generator: torch.Generator, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> tuple[Callable, Callable]:
    """(train, eval) batch transforms from the augmentation options; train is a TrainTransform unless --no-augment."""
    eval_tf = partial(eval_transform, crop=config.crop_size, mean=mean, std=std)
    if config.no_augment:
        return eval_tf, eval_tf
    policy = AUTO_AUGMENT[config.auto_augment]
    scale = None if config.scale_min >= 1 else (config.scale_min, 1.0)
    return TrainTransform(config.crop_size, mean, std, generator, scale, config.jitter, config.crop_resize,
                          policy() if policy else None), eval_tf


class TrainTransform:
    """The training batch transform; `crop`, its output size, is what progressive resizing changes between epochs."""

    def __init__(self, crop: int, mean: Sequence[float], std: Sequence[float], generator: torch.Generator,
                 scale: tuple[float, float] | None, jitter: float, resize: str, policy: Callable | None = None):
        self.crop, self.policy = crop, policy
        self.kwargs = {"mean": mean, "std": std, "generator": generator, "scale": scale, "jitter": jitter,
                       "resize": resize}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.policy is not None:
            # One policy draw per image (a batch tensor would get one draw for all); torch's global RNG is seeded
            # by seed_everything and saved in checkpoints, so runs stay reproducible and resumable.
            x = torch.stack([self.policy(img) for img in x])
        return train_transform(x, self.crop, **self.kwargs)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 or [0, 1] float N x 3 x H x W -> normalised float in channels_last (the layout the models take).

    One fused pass over rows of H x (W*C) pixels with the per-channel scale and offset repeated along the row:
    broadcasting a size-3 channel axis instead is 3x slower on a CPU (0.09 against 0.03 ms for a 224 px image).
    """
    n, c, h, w = x.shape
    scale = 1 / 255 if x.dtype == torch.uint8 else 1.0
    m = torch.tensor(mean, device=x.device, dtype=torch.float32)
    s = torch.tensor(std, device=x.device, dtype=torch.float32)
    rows = x.permute(0, 2, 3, 1).reshape(n, h, w * c)  # a view for channels_last pixels and their crops
    out = _channels_last_batch(n, c, h, w, torch.float32, x.device)
    torch.addcmul((-m / s).repeat(w), rows, (scale / s).repeat(w), out=out.permute(0, 2, 3, 1).view(n, h, w * c))
    return out


def eval_transform(x: torch.Tensor, crop: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Centre crop and normalise a uint8 batch."""
    h, w = x.shape[-2:]
    top, left = (h - crop) // 2, (w - crop) // 2
    return normalize(x[..., top:top + crop, left:left + crop], mean, std)


def train_transform(x: torch.Tensor, crop: int, mean: Sequence[float], std: Sequence[float],
                    generator: torch.Generator | None = None, scale: tuple[float, float] | None = (0.25, 1.0),
                    ratio: tuple[float, float] = (3 / 4, 4 / 3), jitter: float = 0.0,
                    resize: str = "auto") -> torch.Tensor:
    """Random-resized crop (or, with scale=None, a plain random crop) + horizontal flip + optional jitter of a
    uint8 batch, normalised.

    resize says how the crops are cut and resized: "opencv" takes each uint8 image in turn on the CPU and, in one
    cache-hot pass with OpenCV, resizes its box (bilinear; area-averaged where it shrinks over 2x), flips and
    jitters it in uint8; "interpolate" resizes each box alone with torch (antialiased bilinear, as torchvision's
    RandomResizedCrop) on any device and jitters in float; "roi_align" samples every box of the batch in one
    bilinear roi_align call, the fast path on a GPU. "auto" takes roi_align on CUDA and opencv on the CPU. Every
    draw comes from `generator`, on the CPU, so the same seed gives the same boxes, flips and jitter on any device.
    """
    n, _, h, w = x.shape
    g = generator
    if scale is None:  # classic random crop of crop x crop pixels at a random offset: boxes of the output's size
        top = torch.randint(0, h - crop + 1, (n,), generator=g)
        left = torch.randint(0, w - crop + 1, (n,), generator=g)
        boxes = torch.stack([left, top, torch.full_like(left, crop), torch.full_like(left, crop)], 1).float()
    else:
        boxes = _random_boxes(n, h, w, scale, ratio, g)
    flip = torch.rand(n, generator=g) < 0.5
    factors = [torch.empty(n).uniform_(1 - jitter, 1 + jitter, generator=g) for _ in range(3)] if jitter else None
    if resize == "auto":
        resize = "roi_align" if x.device.type == "cuda" else "opencv"
    if resize == "opencv":
        if x.device.type != "cpu" or x.dtype != torch.uint8:
            raise UserError(f"--crop-resize opencv works on uint8 pixels on the CPU, not {x.dtype} on {x.device}; "
                            "use auto, interpolate or roi_align")
        return normalize(_opencv_crops(x, boxes, crop, flip, factors), mean, std)
    if resize == "roi_align" and scale is not None:
        return _colour_normalize(_roi_align_crops(x, boxes, crop, flip), factors, mean, std)
    # uint8 bilinear resizing is a CPU kernel: elsewhere boxes to resize are cut from [0, 1] floats.
    src = x if scale is None or x.device.type == "cpu" else x.float() / 255
    return _colour_normalize(_cut_crops(src, boxes, crop, flip), factors, mean, std)


def _random_boxes(n: int, h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float],
                  g: torch.Generator | None) -> torch.Tensor:
    """n random boxes (x0, y0, width, height) of a `scale` share of the image area and an aspect ratio in `ratio`."""
    area = h * w * torch.empty(n).uniform_(*scale, generator=g)
    aspect = torch.exp(torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g))
    cw = torch.sqrt(area * aspect).clamp(8, w)
    ch = torch.sqrt(area / aspect).clamp(8, h)
    x0 = torch.rand(n, generator=g) * (w - cw)
    y0 = torch.rand(n, generator=g) * (h - ch)
    return torch.stack([x0, y0, cw, ch], 1)


def _roi_align_crops(x: torch.Tensor, boxes: torch.Tensor, crop: int, flip: torch.Tensor) -> torch.Tensor:
    """The boxes of a batch resized to crop x crop in one bilinear roi_align call; float in [0, 1]."""
    n = x.shape[0]
    x0, y0, cw, ch = boxes.unbind(1)
    rois = torch.stack([torch.arange(n, dtype=torch.float), x0, y0, x0 + cw, y0 + ch], 1).to(x.device)
    out = roi_align(x.float(), rois, output_size=crop, spatial_scale=1.0, sampling_ratio=2, aligned=True).div_(255)
    return torch.where(flip.to(x.device).view(-1, 1, 1, 1), out.flip(-1), out)


def _channels_last_batch(n: int, c: int, h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An empty N x C x H x W batch stored channels_last, as the cache's pixels and the models' inputs are."""
    return torch.empty((n, h, w, c), dtype=dtype, device=device).permute(0, 3, 1, 2)


def _pixel_boxes(boxes: torch.Tensor, h: int, w: int) -> list[tuple[int, int, int, int]]:
    """The boxes in whole pixels inside an h x w image: (top, left, height, width) each."""
    bw = boxes[:, 2].round().clamp(1, w).int()
    bh = boxes[:, 3].round().clamp(1, h).int()
    left = torch.minimum(boxes[:, 0].floor().int(), w - bw)
    top = torch.minimum(boxes[:, 1].floor().int(), h - bh)
    return list(zip(top.tolist(), left.tolist(), bh.tolist(), bw.tolist()))


def _cut_crops(x: torch.Tensor, boxes: torch.Tensor, crop: int, flip: torch.Tensor) -> torch.Tensor:
    """Each box cut from its image (whole pixels), resized alone to crop x crop (antialiased bilinear, as
    RandomResizedCrop) unless it has that size, and flipped where drawn; x's dtype, channels_last."""
    n, c, h, w = x.shape
    out = _channels_last_batch(n, c, crop, crop, x.dtype, x.device)
    for i, ((t, le, bh_i, bw_i), f) in enumerate(zip(_pixel_boxes(boxes, h, w), flip.tolist())):
        tile = x[i:i + 1, :, t:t + bh_i, le:le + bw_i]
        if (bh_i, bw_i) != (crop, crop):
            tile = nn.functional.interpolate(tile, size=(crop, crop), mode="bilinear", antialias=True,
                                             align_corners=False)
        out[i] = tile[0].flip(-1) if f else tile[0]
    return out


def _colour_normalize(x: torch.Tensor, factors: list[torch.Tensor] | None, mean: Sequence[float],
                     std: Sequence[float]) -> torch.Tensor:
    """uint8 or [0, 1] images jittered (brightness, contrast, saturation `factors`, if any), clamped to [0, 1] and
    normalised in one batched float pass.

    The three are linear in the pixels (contrast around the image's mean gray after brightness, saturation
    towards each pixel's gray), so each image gets one 3x3 colour matrix and an offset, whatever their order.
    """
    if factors is None:
        return normalize(x, mean, std)
    n, dev = x.shape[0], x.device
    xf = x.float().reshape(n, 3, -1)  # jittered and normalised in one baddbmm
    matrix, per_gray = (t.to(dev, torch.float32) for t in _colour_matrices(factors))
    offset = (per_gray * (xf.mean(2) @ LUMA.to(dev, torch.float32))).view(n, 1, 1)
    scale = 1 / 255 if x.dtype == torch.uint8 else 1.0
    m = torch.tensor(mean, device=dev).view(1, 3, 1)
    sd = torch.tensor(std, device=dev).view(1, 3, 1)
    # Normalising is a per-channel affine map that keeps order, so it folds into the matrix and the clamp bounds.
    out = torch.baddbmm((offset * scale - m) / sd, matrix * scale / sd, xf)
    for ch, (mu, sigma) in enumerate(zip(mean, std)):  # scalar bounds: a clamp to tensor bounds is far slower
        out[:, ch].clamp_(-mu / sigma, (1 - mu) / sigma)
    return out.view(n, *x.shape[1:])


def _colour_matrices(factors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, from its brightness, contrast and saturation factors: the 3x3 matrix of the three applied in
    turn, and the factor that makes the image's mean gray (before jitter) the offset added to every channel."""
    b, c, s = (f.double().view(-1, 1, 1) for f in factors)
    matrix = c * b * (s * torch.eye(3, dtype=torch.float64) + (1 - s) * LUMA)
    return matrix, ((1 - c) * b).view(-1)


def _opencv_crops(x: torch.Tensor, boxes: torch.Tensor, crop: int, flip: torch.Tensor,
                  factors: list[torch.Tensor] | None) -> torch.Tensor:
    """uint8 crops on the CPU, each image in one cache-hot pass with OpenCV: its box resized (bilinear; area-averaged
    where it shrinks over 2x), flipped where drawn and jittered, rounded and saturated as torchvision's ColorJitter
    does on PIL images; uint8, channels_last.

    Per image rather than per batch: the tile stays in cache from resize to jitter, which is faster than torch's
    per-image resize followed by a batched float jitter (bench/throughput.py compares the two).
    """
    n, c, h, w = x.shape
    src = x.permute(0, 2, 3, 1).contiguous().numpy()  # no copy for channels_last pixels
    out = np.empty((n, crop, crop, c), np.uint8)
    if factors:  # [matrix | offset] per image; the offset needs the mean of the resized crop, known in the loop
        matrix, per_gray = _colour_matrices(factors)
        affine = torch.cat([matrix, torch.zeros(n, 3, 1, dtype=matrix.dtype)], 2).numpy()
        per_gray, luma = per_gray.tolist(), LUMA.tolist()
    for i, (img, dst, (t, le, bh, bw), f) in enumerate(zip(src, out, _pixel_boxes(boxes, h, w), flip.tolist())):
        # Bilinear's two taps reach every source pixel up to a 2x shrink; beyond it, area averaging antialiases
        # (and costs 5x more, so it is not used below it).
        shrink = min(bh, bw) > 2 * crop
        cv2.resize(img[t:t + bh, le:le + bw], (crop, crop), dst=dst,
                   interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        if f:
            cv2.flip(dst, 1, dst=dst)
        if factors:
            gray = sum(m * y for m, y in zip(cv2.mean(dst), luma))
            affine[i, :, 3] = per_gray[i] * gray
            cv2.transform(dst, affine[i], dst=dst)
    return torch.from_numpy(out).permute(0, 3, 1, 2)
