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

if TYPE_CHECKING:
    from common.config import AugmentConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
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
    out = torch.addcmul((-m / s).repeat(w), rows, (scale / s).repeat(w))
    return out.view(n, h, w, c).permute(0, 3, 1, 2)


def eval_transform(x: torch.Tensor, crop: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Centre crop and normalise a uint8 batch."""
    h, w = x.shape[-2:]
    top, left = (h - crop) // 2, (w - crop) // 2
    return normalize(x[..., top:top + crop, left:left + crop], mean, std)


def train_transform(x: torch.Tensor, crop: int, mean: Sequence[float], std: Sequence[float],
                    generator: torch.Generator | None = None, scale: tuple[float, float] | None = (0.25, 1.0),
                    ratio: tuple[float, float] = (3 / 4, 4 / 3), jitter: float = 0.0,
                    resize: str = "auto") -> torch.Tensor:
    """Random-resized crop (or, with scale=None, a plain random crop) + horizontal flip + optional jitter, batched.

    resize says how a random-resized crop is resized: "interpolate" crops each uint8 image first and resizes only
    that box (antialiased bilinear, as torchvision's RandomResizedCrop), which is the fast path on a CPU;
    "roi_align" samples every box of the batch in one bilinear roi_align call, the fast path on a GPU; "auto"
    takes roi_align on CUDA and interpolate elsewhere. Every draw comes from `generator`, on the CPU, so the
    same seed gives the same boxes, flips and jitter on any device.
    """
    n, _, h, w = x.shape
    g = generator
    if scale is None:
        # Classic random crop of crop x crop pixels at a random offset; cropping and flipping stay in uint8.
        top = torch.randint(0, h - crop + 1, (n,), generator=g).tolist()
        left = torch.randint(0, w - crop + 1, (n,), generator=g).tolist()
        flip = (torch.rand(n, generator=g) < 0.5).tolist()
        out = _channels_last_batch(n, x.shape[1], crop, x.dtype, x.device)
        for i, (row, col, f) in enumerate(zip(top, left, flip)):
            tile = x[i, :, row:row + crop, col:col + crop]
            out[i] = tile.flip(-1) if f else tile
    else:
        boxes = _random_boxes(n, h, w, scale, ratio, g)
        flip = torch.rand(n, generator=g) < 0.5
        if resize == "roi_align" or (resize == "auto" and x.device.type == "cuda"):
            out = _roi_align_crops(x, boxes, crop, flip)
        else:
            out = _interpolated_crops(x, boxes, crop, flip)
    if jitter > 0:
        return _jitter_normalize(out, jitter, g, mean, std)
    return normalize(out, mean, std)


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


def _channels_last_batch(n: int, c: int, size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An empty N x C x size x size batch stored channels_last, as the cache's pixels and the models' inputs are."""
    return torch.empty((n, size, size, c), dtype=dtype, device=device).permute(0, 3, 1, 2)


def _interpolated_crops(x: torch.Tensor, boxes: torch.Tensor, crop: int, flip: torch.Tensor) -> torch.Tensor:
    """Each box cut from its image (whole pixels) and resized alone to crop x crop, antialiased: uint8 on a CPU,
    float in [0, 1] elsewhere (uint8 bilinear resizing is a CPU kernel); channels_last, as the resizer writes it."""
    n, c, h, w = x.shape
    src = x if x.device.type == "cpu" else x.float() / 255
    bw = boxes[:, 2].round().clamp(1, w).int()
    bh = boxes[:, 3].round().clamp(1, h).int()
    left = torch.minimum(boxes[:, 0].floor().int(), w - bw)
    top = torch.minimum(boxes[:, 1].floor().int(), h - bh)
    out = _channels_last_batch(n, c, crop, src.dtype, x.device)
    for i, (t, le, bh_i, bw_i, f) in enumerate(zip(top.tolist(), left.tolist(), bh.tolist(), bw.tolist(),
                                                  flip.tolist())):
        tile = nn.functional.interpolate(src[i:i + 1, :, t:t + bh_i, le:le + bw_i], size=(crop, crop),
                                         mode="bilinear", antialias=True, align_corners=False)[0]
        out[i] = tile.flip(-1) if f else tile
    return out


def _jitter_normalize(x: torch.Tensor, strength: float, g: torch.Generator | None, mean: Sequence[float],
                      std: Sequence[float]) -> torch.Tensor:
    """Brightness, contrast and saturation jitter of uint8 or [0, 1] images, clamped to their range and normalised.

    The three are linear in the pixels (contrast around the image's mean gray after brightness, saturation
    towards each pixel's gray), so each image gets one 3x3 colour matrix and an offset, whatever their order.
    uint8 images on a CPU are jittered in uint8 (OpenCV, one pass per image, rounded and saturated as torchvision's
    ColorJitter does on PIL images) and then normalised; others in one batched float pass.
    """
    n = x.shape[0]
    factors = [torch.empty(n).uniform_(1 - strength, 1 + strength, generator=g) for _ in range(3)]
    if x.dtype == torch.uint8 and x.device.type == "cpu":
        return normalize(_jitter_uint8(x, *factors), mean, std)
    dev = x.device
    xf = x.float().reshape(n, 3, -1)  # jittered and normalised in one baddbmm
    matrix, offset = _colour_matrices(xf.mean(2), *(f.to(dev) for f in factors))
    scale = 1 / 255 if x.dtype == torch.uint8 else 1.0
    m = torch.tensor(mean, device=dev).view(1, 3, 1)
    sd = torch.tensor(std, device=dev).view(1, 3, 1)
    # Normalising is a per-channel affine map that keeps order, so it folds into the matrix and the clamp bounds.
    out = torch.baddbmm((offset.unsqueeze(2) * scale - m) / sd, matrix * scale / sd, xf)
    for ch, (mu, sigma) in enumerate(zip(mean, std)):  # scalar bounds: a clamp to tensor bounds is far slower
        out[:, ch].clamp_(-mu / sigma, (1 - mu) / sigma)
    return out.view(n, *x.shape[1:])


def _colour_matrices(channel_means: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
                     saturation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the 3x3 matrix and offset (in pixel units) of brightness, then contrast, then saturation."""
    b, c, s = (t.view(-1, 1, 1) for t in (brightness, contrast, saturation))
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=channel_means.dtype, device=channel_means.device)
    gray_mean = (channel_means @ luma).view(-1, 1, 1) * b
    matrix = c * b * (s * torch.eye(3, dtype=luma.dtype, device=luma.device) + (1 - s) * luma.view(1, 1, 3))
    return matrix, ((1 - c) * gray_mean).view(-1, 1).expand(-1, 3)


def _jitter_uint8(x: torch.Tensor, *factors: torch.Tensor) -> torch.Tensor:
    """The colour matrices applied to uint8 N x 3 x H x W images on the CPU; uint8, channels_last."""
    src = x.permute(0, 2, 3, 1).contiguous().numpy()  # no copy for channels_last pixels
    means = torch.from_numpy(np.array([cv2.mean(img)[:3] for img in src]))
    matrix, offset = _colour_matrices(means, *(f.double() for f in factors))
    affine = torch.cat([matrix, offset.unsqueeze(2)], 2).float().numpy()
    out = np.empty_like(src)
    for img, m, dst in zip(src, affine, out):
        cv2.transform(img, m, dst=dst)
    return torch.from_numpy(out).permute(0, 3, 1, 2)
