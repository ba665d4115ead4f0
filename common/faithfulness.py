"""Is an explanation worth believing? Deletion and insertion curves (Petsiuk et al., "RISE", 2018) for any map.

Pixels are removed (deletion) or put back (insertion) in the order of a map, most important first, and the
target-class probability is followed: a faithful map makes it fall fast when deleting (a low area under the
curve) and rise fast when inserting (a high one). A random order is the baseline every method must beat.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.transforms.functional import gaussian_blur

CURVE_STEPS = 16  # points after the first: every 1/16 of the pixels


def pixel_order(maps: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """N x (H*W) pixel indices, highest map value first; ties (flat Grad-CAM regions) in a seeded random order."""
    n, h, w = maps.shape
    perm = torch.randperm(h * w, generator=generator).to(maps.device)
    ranked = torch.sort(maps.flatten(1)[:, perm], dim=1, descending=True, stable=True).indices
    return perm[ranked]


@torch.no_grad()
def deletion_insertion(model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
                       steps: int = CURVE_STEPS, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image deletion and insertion AUC of maps (N x H x W, larger = more important) for the target classes.

    Deleted pixels become 0, the dataset mean after normalisation; insertion starts from a blurred copy of the
    image (as RISE), so its first point is an image without detail rather than an out-of-distribution grey one.
    Each AUC is the trapezoid rule over steps + 1 points from no pixels to all of them, so it lies in [0, 1].
    """
    n, _, h, w = x.shape
    order = pixel_order(maps.float(), torch.Generator().manual_seed(seed))
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(h * w, device=x.device).expand(n, -1))
    rank = rank.view(n, 1, h, w)
    side = max(3, (min(h, w) // 8) | 1)  # an odd kernel an eighth of the image wide
    blurred = gaussian_blur(x, [side, side], [side / 4, side / 4])
    index = torch.as_tensor(target, device=x.device).view(-1, 1)

    def prob(z: torch.Tensor) -> torch.Tensor:
        return model(z).float().softmax(1).gather(1, index)[:, 0]

    fractions = torch.linspace(0, 1, steps + 1)
    deletion, insertion = [], []
    for f in fractions.tolist():
        top = rank < round(f * h * w)
        deletion.append(prob(torch.where(top, torch.zeros_like(x), x)))
        insertion.append(prob(torch.where(top, x, blurred)))
    auc = lambda curve: torch.trapezoid(torch.stack(curve, 1).cpu(), fractions, dim=1)  # noqa: E731
    return auc(deletion), auc(insertion)


def method_maps(model: nn.Module, layer: nn.Module, x: torch.Tensor, target: torch.Tensor, ig_steps: int,
                generator: torch.Generator) -> dict[str, torch.Tensor]:
    """N x H x W maps of each method for the target classes: Grad-CAM, integrated gradients, occlusion, random."""
    from common.explain import GradCAM, integrated_gradients, occlusion
    with GradCAM(model, layer) as cam:
        heat, _ = cam(x, target)
    n, _, h, w = x.shape
    patch = max(4, min(h, w) // 7)  # 32 px at 224, occlusion's default, and as fine on smaller inputs
    return {"Grad-CAM": heat,
            "integrated gradients": integrated_gradients(model, x, target, steps=ig_steps).abs().sum(1),
            "occlusion": occlusion(model, x, target, patch=patch, stride=max(2, patch // 2)),
            "random": torch.rand(n, h, w, generator=generator).to(x.device)}


def faithfulness(model: nn.Module, layer: nn.Module, batches, ig_steps: int, seed: int = 0) -> dict:
    """Deletion and insertion AUC of every method over (x, target) batches: per method the mean, the sample
    standard deviation and the count."""
    generator = torch.Generator().manual_seed(seed)
    scores: dict[str, dict[str, list]] = {}
    for x, target in batches:
        for name, maps in method_maps(model, layer, x, target, ig_steps, generator).items():
            deletion, insertion = deletion_insertion(model, x, target, maps, seed=seed)
            s = scores.setdefault(name, {"deletion": [], "insertion": []})
            s["deletion"] += deletion.tolist()
            s["insertion"] += insertion.tolist()
    return {name: {f"{kind}_{stat}": value for kind, values in s.items()
                   for stat, value in zip(("mean", "std"), _mean_std(values))} | {"n": len(s["deletion"])}
            for name, s in scores.items()}


def _mean_std(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(t) > 1 else 0.0
