"""Hand-written explanations: Grad-CAM (forward hook + tensor hook), occlusion and integrated gradients."""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.architectures import ARCHS
from common.engine import inference_batch_size

# Each architecture's Grad-CAM layer (its last convolutional feature map), read from its spec.
DEFAULT_LAYER = {name: spec.gradcam_layer for name, spec in ARCHS.items()}


def candidate_layers(model: nn.Module) -> list[str]:
    """Names of the modules Grad-CAM can target: convolutions, activations and the blocks holding convolutions."""
    return [n for n, m in model.named_modules()
            if n and (isinstance(m, (nn.ReLU, nn.ReLU6)) or any(isinstance(c, nn.Conv2d) for c in m.modules()))]


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The named submodule, or a ValueError listing the convolutional layers and blocks to choose from."""
    modules = dict(model.named_modules())
    if name in modules and name:
        return modules[name]
    raise ValueError(f"no layer named {name!r}; valid layers: {', '.join(candidate_layers(model))} "
                     "(--layer list shows their output sizes)")


@torch.no_grad()
def layer_sizes(model: nn.Module, x: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """(name, output shape without the batch) of every candidate layer, in the order the forward pass runs them."""
    sizes, modules = [], dict(model.named_modules())
    handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: sizes.append((n, tuple(o.shape[1:]))))
               for n in candidate_layers(model)]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return sizes


def _normalize_maps(cam: torch.Tensor) -> torch.Tensor:
    """Scale each N x H x W map to [0, 1] (all-zero maps stay zero)."""
    flat = cam.flatten(1)
    lo, hi = flat.min(1).values.view(-1, 1, 1), flat.max(1).values.view(-1, 1, 1)
    return torch.where(hi > lo, (cam - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(cam))


class GradCAM:
    """Grad-CAM on one layer: channel weights are spatially averaged gradients of the target score.

    Use as a context manager so the forward hook is always removed:

        with GradCAM(model, model.layer4) as cam:
            heatmaps, logits = cam(x)            # N x H x W in [0, 1], at the input's size

    The gradient is taken with a `tensor.register_hook` on the layer's output, which (unlike full
    backward hooks) works when an in-place ReLU follows the layer. The input is made to require
    grad, so fully frozen models (requires_grad False everywhere) work too; parameter .grad is untouched.
    """

    def __init__(self, model: nn.Module, layer: nn.Module):
        self.model, self.layer = model, layer
        self.handle = None
        self.activations: torch.Tensor | None = None
        self.gradients: torch.Tensor | None = None

    def __enter__(self) -> "GradCAM":
        self.handle = self.layer.register_forward_hook(self._forward_hook)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Remove the hook and drop the saved tensors."""
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        self.activations = self.gradients = None

    def _forward_hook(self, module, inputs, output) -> None:
        # Clone: an in-place op after this layer would otherwise change the saved values.
        self.activations = output.detach().clone()
        if output.requires_grad:  # plain forward passes through a frozen model inside the block build no graph
            output.register_hook(self._save_gradient)

    def _save_gradient(self, grad: torch.Tensor) -> None:
        self.gradients = grad.detach()

    def __call__(self, x: torch.Tensor,
                 target: torch.Tensor | list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Heatmaps (N x H x W in [0, 1]) for the target classes (default: the predicted ones) and the logits."""
        if self.handle is None:
            raise RuntimeError("use GradCAM inside a `with` block so its hook is registered and removed")
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            logits = self.model(x)
            if target is None:
                target = logits.argmax(1)
            target = torch.as_tensor(target, device=logits.device).view(-1, 1)
            score = logits.gather(1, target).sum()
            torch.autograd.grad(score, x)  # runs the tensor hook; parameter gradients are not accumulated
        weights = self.gradients.float().mean((2, 3), keepdim=True)
        cam = F.relu((weights * self.activations.float()).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return _normalize_maps(cam), logits.detach()


@torch.no_grad()
def occlusion(model: nn.Module, x: torch.Tensor, target: torch.Tensor, patch: int = 32, stride: int = 16,
              batch: int | None = None) -> torch.Tensor:
    """Drop in the target probability when a patch is set to zero (the dataset mean after normalisation).

    Returns N x H x W maps, not normalised: 0 where occlusion changes nothing.
    """
    n, _, h, w = x.shape
    batch = batch or inference_batch_size(x.device)
    target = torch.as_tensor(target, device=x.device).view(-1)
    base = model(x).softmax(1).gather(1, target.view(-1, 1))[:, 0]
    # Include the last position so the bottom and right edges are covered too.
    tops = sorted(set(range(0, max(h - patch, 0) + 1, stride)) | {max(h - patch, 0)})
    lefts = sorted(set(range(0, max(w - patch, 0) + 1, stride)) | {max(w - patch, 0)})
    heat = torch.zeros(n, h, w, device=x.device)
    count = torch.zeros(h, w, device=x.device)
    boxes = [(top, left) for top in tops for left in lefts]
    for i in range(n):
        for start in range(0, len(boxes), batch):
            chunk = boxes[start:start + batch]
            xs = x[i:i + 1].repeat(len(chunk), 1, 1, 1)
            for k, (top, left) in enumerate(chunk):
                xs[k, :, top:top + patch, left:left + patch] = 0
            probs = model(xs).softmax(1)[:, target[i]]
            for k, (top, left) in enumerate(chunk):
                heat[i, top:top + patch, left:left + patch] += base[i] - probs[k]
                if i == 0:
                    count[top:top + patch, left:left + patch] += 1
    return heat / count.clamp_min(1)


# Path steps of integrated gradients: enough for a completeness gap of a few percent on MobileNetV2, where half as
# many leave several times that (bench/ig.py measures the gap against the steps).
IG_STEPS = 256


def integrated_gradients(model: nn.Module, x: torch.Tensor, target: torch.Tensor, steps: int = IG_STEPS,
                         baseline: torch.Tensor | None = None, internal_batch: int = 16) -> torch.Tensor:
    """Integrated gradients of the target logit (N x C x H x W), midpoint rule along the straight path.

    The N x steps points of the paths go through the model internal_batch at a time (Captum's
    internal_batch_size), so one image with many steps still fills the batches (16, the CPU's inference batch:
    see inference_batch_size). The model must be in eval
    mode, so a point's score does not depend on the others in its batch. Attributions sum to
    f(x) - f(baseline) up to the discretisation error, which completeness_gap measures.
    """
    baseline = torch.zeros_like(x) if baseline is None else baseline.expand_as(x)
    target = torch.as_tensor(target, device=x.device).view(-1)
    alphas = (torch.arange(steps, device=x.device, dtype=torch.float32) + 0.5) / steps
    pairs = torch.cartesian_prod(torch.arange(len(x)), torch.arange(steps)).to(x.device)  # (image, step)
    total = torch.zeros_like(x)
    # indexing drops channels_last, and a channels_last model then converts every batch
    layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    with torch.enable_grad():
        for chunk in pairs.split(internal_batch):
            i, a = chunk[:, 0], alphas[chunk[:, 1]].view(-1, 1, 1, 1).to(x.dtype)
            point = (baseline[i] + a * (x[i] - baseline[i])).contiguous(memory_format=layout)
            point = point.detach().requires_grad_(True)
            score = model(point).gather(1, target[i].view(-1, 1)).sum()
            total.index_add_(0, i, torch.autograd.grad(score, point)[0])
    return (x - baseline) * total / steps


@torch.no_grad()
def completeness_gap(model: nn.Module, x: torch.Tensor, target: torch.Tensor, attributions: torch.Tensor,
                     baseline: torch.Tensor | None = None) -> torch.Tensor:
    """|sum of attributions - (f(x) - f(baseline))| / |f(x) - f(baseline)| per image, for the target logit."""
    baseline = torch.zeros_like(x) if baseline is None else baseline.expand_as(x)
    index = torch.as_tensor(target, device=x.device).view(-1, 1)
    delta = (model(x).gather(1, index) - model(baseline).gather(1, index))[:, 0].float()
    return (attributions.flatten(1).sum(1).float() - delta).abs() / delta.abs().clamp_min(1e-12)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a [0, 1] heatmap (JET colour map) onto an RGB uint8 image with OpenCV."""
    heat = cv2.resize(heatmap.astype(np.float32), (image.shape[1], image.shape[0]))
    color = cv2.applyColorMap(np.uint8(255 * np.clip(heat, 0, 1)), cv2.COLORMAP_JET)
    color = cv2.cvtColor(color, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(image, 1 - alpha, color, alpha, 0)


def describe_heatmap(heatmap: np.ndarray) -> str:
    """A short, measured description: where the peak is, how spread the attention is, how central."""
    h, w = heatmap.shape
    total = heatmap.sum()
    if total <= 0:
        return "no positive evidence (empty heatmap)"
    py, px = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    rows = ("top", "middle", "bottom")[min(3 * py // h, 2)]
    cols = ("left", "centre", "right")[min(3 * px // w, 2)]
    where = "centre" if (rows, cols) == ("middle", "centre") else f"{rows} {cols}"
    central = heatmap[h // 4:3 * h // 4, w // 4:3 * w // 4].sum() / total
    spread = float((heatmap > 0.5).mean())
    focus = "focused" if spread < 0.15 else "broad" if spread > 0.4 else "moderately spread"
    return f"peak at the {where}; {focus} ({spread:.0%} of pixels above half the peak); " \
           f"{central:.0%} of the heat in the central quarter of the image"
