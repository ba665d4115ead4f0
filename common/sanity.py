"""Sanity checks for saliency maps (Adebayo et al., "Sanity Checks for Saliency Maps", 2018): cascading model
randomisation. The weights are re-initialised from the head down, one block at a time, and each method's map is
compared with the trained model's by rank correlation. A method whose map barely changes when the weights it
explains are random shows the image, not the model.
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


def cascading_randomization(model: nn.Module, blocks: tuple[tuple[str, ...], ...], layer: str, x: torch.Tensor,
                            target: torch.Tensor, ig_steps: int, seed: int = 0) -> list[dict]:
    """Per stage (cumulative): the mean and std rank correlation of each method's map with the trained model's,
    for the trained model's target classes. The model itself is left untouched (a copy is randomised)."""
    generator = torch.Generator().manual_seed(seed)
    trained = {k: v for k, v in method_maps(model, find_layer(model, layer), x, target, ig_steps, generator).items()
               if k != "random"}
    shuffled = copy.deepcopy(model)
    rows = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, modules in cascade(shuffled, blocks):
            for m in modules:
                m.reset_parameters()
            maps = method_maps(shuffled, find_layer(shuffled, layer), x, target, ig_steps, generator)
            corr = {k: rank_correlation(trained[k], maps[k]) for k in trained}
            rows.append({"randomized": name, **{k: {"mean": float(c.mean()), "std": float(c.std())}
                                                for k, c in corr.items()}})
    return rows


def flagged(rows: list[dict]) -> list[str]:
    """Methods whose map still correlates with the trained model's once every weight is random."""
    last = rows[-1] if rows else {}
    return [k for k, v in last.items() if k != "randomized" and v["mean"] >= STILL_SIMILAR]
