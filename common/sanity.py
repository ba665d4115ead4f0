"""Sanity checks for saliency maps (Adebayo et al., "Sanity Checks for Saliency Maps", 2018).

Cascading model randomisation: the weights are re-initialised from the head down, one block at a time, and each
method's map is compared with the trained model's by rank correlation. Data randomisation, where it is cheap: the
head is refitted to the training features with the labels shuffled. A method whose map barely changes when the
weights it explains are random, or learnt nothing true, shows the image, not the model.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from common.explain import find_layer
from common.faithfulness import method_maps

STILL_SIMILAR = 0.5  # mean rank correlation with every weight random at or above which a method is flagged
HEAD_IMAGES = 1000  # training images (seeded) the shuffled-label head is fitted to
HEAD_EPOCHS = 100  # epochs the shuffled-label head is fitted for: enough to memorise most of its labels


def cascade(model: nn.Module, blocks: tuple[tuple[str, ...], ...]) -> list[tuple[str, list[nn.Module]]]:
    """The randomisation stages, head first: each block (parameter-name prefixes, as an ArchSpec's blocks), then
    all that comes before them."""
    resettable = {n: m for n, m in model.named_modules() if n and hasattr(m, "reset_parameters")}
    stages = []
    for prefixes in [*blocks, ("",)]:
        names = [n for n in resettable if n.startswith(prefixes)]
        if names:
            name = ("everything else" if prefixes == ("",) else
                    "+".join(prefixes) if len(prefixes) < 3 else f"{prefixes[0]} to {prefixes[-1]}")
            stages.append((name, [resettable.pop(n) for n in names]))
    return stages


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Spearman correlation per image of two N x H x W map batches; a constant map counts as uncorrelated (0)."""
    out = []
    for x, y in zip(a.flatten(1).cpu().numpy(), b.flatten(1).cpu().numpy()):
        out.append(0.0 if np.ptp(x) == 0 or np.ptp(y) == 0 else spearmanr(x, y).statistic)
    return np.asarray(out, dtype=np.float64)


def reference_maps(model: nn.Module, layer: str, x: torch.Tensor, target: torch.Tensor, ig_steps: int,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """The trained model's map of each method (the random order left out): what every check compares with."""
    maps = method_maps(model, find_layer(model, layer), x, target, ig_steps, torch.Generator().manual_seed(seed))
    return {k: v for k, v in maps.items() if k != "random"}


def _similarity(reference: dict[str, torch.Tensor], model: nn.Module, layer: str, x: torch.Tensor,
                target: torch.Tensor, ig_steps: int, generator: torch.Generator) -> dict[str, dict[str, float]]:
    """Mean and std rank correlation of each method's map on model with the reference maps."""
    maps = method_maps(model, find_layer(model, layer), x, target, ig_steps, generator)
    corr = {k: rank_correlation(reference[k], maps[k]) for k in reference}
    return {k: {"mean": float(c.mean()), "std": float(c.std())} for k, c in corr.items()}


def cascading_randomization(model: nn.Module, blocks: tuple[tuple[str, ...], ...], layer: str, x: torch.Tensor,
                            target: torch.Tensor, ig_steps: int, seed: int = 0,
                            reference: dict[str, torch.Tensor] | None = None) -> list[dict]:
    """Per stage (cumulative): the mean and std rank correlation of each method's map with the trained model's,
    for the trained model's target classes. The model itself is left untouched (a copy is randomised)."""
    reference = reference or reference_maps(model, layer, x, target, ig_steps, seed)
    generator = torch.Generator().manual_seed(seed)
    shuffled = copy.deepcopy(model)
    rows = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, modules in cascade(shuffled, blocks):
            for m in modules:
                m.reset_parameters()
            rows.append({"randomized": name,
                         **_similarity(reference, shuffled, layer, x, target, ig_steps, generator)})
    return rows


@torch.no_grad()
def head_inputs(model: nn.Module, head: str, batches) -> torch.Tensor:
    """What the top-level child `head` receives for each input batch (eval mode), concatenated."""
    seen = []
    handle = getattr(model, head).register_forward_pre_hook(lambda _, inputs: seen.append(inputs[0].float()))
    try:
        for x in batches:
            model(x)
    finally:
        handle.remove()
    return torch.cat(seen)


def shuffled_label_head(model: nn.Module, head: str, features: torch.Tensor, labels: torch.Tensor,
                        epochs: int = HEAD_EPOCHS, seed: int = 0) -> tuple[nn.Module, float]:
    """A copy of the model whose head is re-initialised and fitted to the features with the labels shuffled
    (seeded); (that model in eval mode, its accuracy on the shuffled labels it was fitted to)."""
    shuffled = copy.deepcopy(model)
    fitted = getattr(shuffled, head)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        y = labels[torch.randperm(len(labels))].to(features.device)
        for m in fitted.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        fitted.requires_grad_(True).train()
        optimizer = torch.optim.Adam(fitted.parameters(), lr=1e-3)
        with torch.enable_grad():
            for _ in range(epochs):
                for batch in torch.randperm(len(y)).split(64):
                    loss = nn.functional.cross_entropy(fitted(features[batch]), y[batch])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
    fitted.eval()
    with torch.no_grad():
        fit = float((fitted(features).argmax(1) == y).float().mean())
    return shuffled, fit


def data_randomization(model: nn.Module, head: str, layer: str, x: torch.Tensor, target: torch.Tensor,
                       features: torch.Tensor, labels: torch.Tensor, ig_steps: int, seed: int = 0,
                       reference: dict[str, torch.Tensor] | None = None) -> dict:
    """The data-randomisation test on the head: each method's map, for the same target classes, on a copy whose
    head learnt shuffled labels from `features`, against the trained model's (rank correlation mean and std)."""
    reference = reference or reference_maps(model, layer, x, target, ig_steps, seed)
    shuffled, fit = shuffled_label_head(model, head, features, labels, seed=seed)
    similarity = _similarity(reference, shuffled, layer, x, target, ig_steps, torch.Generator().manual_seed(seed))
    return {"train_images": len(labels), "epochs": HEAD_EPOCHS, "fit_acc": fit, "methods": similarity,
            "flagged": [k for k, v in similarity.items() if v["mean"] >= STILL_SIMILAR]}


def flagged(rows: list[dict]) -> list[str]:
    """Methods whose map still correlates with the trained model's once every weight is random."""
    last = rows[-1] if rows else {}
    return [k for k, v in last.items() if k != "randomized" and v["mean"] >= STILL_SIMILAR]
