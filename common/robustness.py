"""Common image corruptions, maximum-softmax-probability OOD scores, AUROC, and synthetic non-animal images.

The corruptions follow ImageNet-C (Hendrycks & Dietterich, ICLR 2019): five severities each, with
parameter tables taken from (or, for rotation, modelled on) theirs. They act on uint8 RGB images
before the centre crop, so the network sees exactly what a corrupted photo would give it.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

CORRUPTIONS = ("gaussian_noise", "gaussian_blur", "brightness", "contrast", "jpeg", "rotation")
SEVERITIES = (1, 2, 3, 4, 5)
# One value per severity 1..5. Noise sigma, brightness shift and contrast factor are on the [0, 1] pixel
# scale; blur sigma is in pixels, as in ImageNet-C for 224 px images (ours are 256 px before the crop).
PARAMS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),  # sigma of the added noise
    "gaussian_blur": (1, 2, 3, 4, 6),                 # sigma of the Gaussian kernel
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),           # added to V in HSV
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),            # factor on the distance from each channel's mean
    "jpeg": (25, 18, 15, 10, 7),                       # JPEG quality
    "rotation": (5, 10, 15, 20, 30),                   # degrees, random sign per image; reflected border
}


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


def _corrupt_one(img: np.ndarray, name: str, c: float, rng: np.random.Generator) -> np.ndarray:
    """One uint8 RGB image, corrupted with parameter c."""
    if name == "gaussian_noise":
        return _to_uint8(img / np.float32(255) + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(c))
    if name == "gaussian_blur":
        return cv2.GaussianBlur(img, (0, 0), sigmaX=c)
    if name == "brightness":
        hsv = cv2.cvtColor(img.astype(np.float32) / 255, cv2.COLOR_RGB2HSV)  # float HSV: V in [0, 1]
        hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
        return _to_uint8(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB))
    if name == "contrast":
        x = img.astype(np.float32) / 255
        mean = x.mean(axis=(0, 1), keepdims=True)
        return _to_uint8((x - mean) * c + mean)
    if name == "jpeg":
        # OpenCV's encoder expects BGR; encoding RGB as-is would subsample the wrong chroma channels.
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(c)])
        return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    # rotation: a reflected border, so no black corners give the model a cue that is not rotation itself
    h, w = img.shape[:2]
    angle = c if rng.random() < 0.5 else -c
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0,
            index: np.ndarray | None = None) -> np.ndarray:
    """A corrupted copy of uint8 N x H x W x 3 RGB images; index gives their global indices (default 0..N-1)."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity {severity!r} of {name} is not one of {', '.join(map(str, SEVERITIES))}")
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 N x H x W x 3 images, got {images.dtype} {images.shape}")
    index = np.arange(len(images)) if index is None else np.asarray(index)
    if index.shape != (len(images),):
        raise ValueError(f"index has shape {index.shape}, expected ({len(images)},)")
    c = PARAMS[name][severity - 1]
    out = np.empty(images.shape, np.uint8)  # never write into the input: it may be a read-only memmap
    for k, (img, i) in enumerate(zip(images, index)):
        # Each image's generator depends on its global index only, so batches agree with the whole set.
        rng = np.random.default_rng([seed, CORRUPTIONS.index(name), severity, int(i)])
        out[k] = _corrupt_one(np.asarray(img), name, c, rng)
    return out


def msp(logits: torch.Tensor | np.ndarray) -> np.ndarray:
    """Maximum softmax probability of each row of logits."""
    return torch.as_tensor(logits).detach().double().softmax(1).amax(1).cpu().numpy()


def _scores(scores_pos, scores_neg) -> tuple[np.ndarray, np.ndarray]:
    pos, neg = np.asarray(scores_pos, np.float64).ravel(), np.asarray(scores_neg, np.float64).ravel()
    if not len(pos) or not len(neg):
        raise ValueError("need at least one positive and one negative score")
    return pos, neg


def auroc(scores_pos, scores_neg) -> float:
    """Area under the ROC curve: the chance a positive outscores a negative, ties counted half."""
    pos, neg = _scores(scores_pos, scores_neg)
    # Mann-Whitney U from mid-ranks: tied scores share the mean of their ranks, which counts each tie as half.
    values, inverse, counts = np.unique(np.concatenate([pos, neg]), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mid_ranks = ends - (counts - 1) / 2
    u = mid_ranks[inverse[:len(pos)]].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def fpr_at_tpr(scores_pos, scores_neg, tpr: float = 0.95) -> float:
    """Fraction of negatives scoring at or above the highest threshold that keeps at least tpr of the positives."""
    pos, neg = _scores(scores_pos, scores_neg)
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    k = int(np.ceil(tpr * len(pos) - 1e-9))  # positives that must score >= the threshold
    threshold = np.sort(pos)[::-1][k - 1]
    return float((neg >= threshold).mean())


def _pattern(rng: np.random.Generator, size: int) -> np.ndarray:
    """One float H x W x 3 pattern in [0, 1]: coloured noise, stripes, checkerboard, or gradient with blobs."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c1, c2 = rng.random(3, dtype=np.float32), rng.random(3, dtype=np.float32)
    kind = rng.integers(4)
    if kind == 0:  # coloured noise, from pixel-fine to blotchy
        cells = int(rng.choice([2, 4, 8, 16, 32, size]))
        small = rng.random((min(cells, size), min(cells, size), 3), dtype=np.float32)
        return cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    theta = rng.uniform(0, np.pi)
    u, v = xx * np.cos(theta) + yy * np.sin(theta), -xx * np.sin(theta) + yy * np.cos(theta)
    if kind == 1:  # stripes, smooth or hard-edged
        t = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 20) * u + rng.uniform(0, 2 * np.pi))
        t = (t > 0.5).astype(np.float32) if rng.random() < 0.5 else t
    elif kind == 2:  # rotated checkerboard
        cells = rng.integers(2, 16)
        t = ((np.floor(u * cells) + np.floor(v * cells)) % 2).astype(np.float32)
    else:  # gradient with a few soft blobs
        t = (u - u.min()) / (u.max() - u.min())
        img = t[..., None] * c1 + (1 - t[..., None]) * c2
        for _ in range(rng.integers(1, 6)):
            cy, cx, r = rng.random(), rng.random(), rng.uniform(0.05, 0.3)
            w = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
            img = img * (1 - w) + w * rng.random(3, dtype=np.float32)
        return img
    return t[..., None] * c1 + (1 - t[..., None]) * c2


def synthetic_textures(n: int, size: int, seed: int = 0) -> np.ndarray:
    """n uint8 size x size x 3 RGB images of patterns that are not animals, deterministic per seed."""
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        img = _pattern(rng, size)
        if rng.random() < 0.5:  # blend two patterns for more variety than four families give
            alpha = rng.uniform(0.3, 0.7)
            img = alpha * img + (1 - alpha) * _pattern(rng, size)
        out[i] = _to_uint8(img)
    return out
