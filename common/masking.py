"""Masked fine-tuning: only a chosen fraction of the pretrained parameters' entries is ever updated.

The entries are chosen once, before the optimizer is built: by gradient magnitude on training images ("grad"),
at random ("random"), or from the last layers down ("last"). The head is new and always trains whole. A tensor
with no chosen entry is frozen outright (requires_grad off, out of the optimizer, its BatchNorm in eval).
MaskedUpdates applies the masks at the update step: unchosen entries get no gradient, and after every optimizer
step they are put back, so neither momentum nor weight decay moves them. The masks are its checkpoint state, so a
resumed run keeps the entries it started with.
"""
from __future__ import annotations

import torch
from torch import nn

from common.runs import CheckpointError

SELECTIONS = ("grad", "random", "last")  # --mask-select; the first is the default
FRACTION = 0.05  # the default of --mask-fraction
SCORE_IMAGES = 512  # training images whose gradient magnitudes rank the entries


def backbone_parameters(model: nn.Module, head_child: str) -> dict[str, nn.Parameter]:
    """The pretrained parameters: every one outside the head's top-level child, in the network's order."""
    return {n: p for n, p in model.named_parameters() if n.split(".")[0] != head_child}


def gradient_scores(model: nn.Module, head_child: str, batches, criterion: nn.Module) -> dict[str, torch.Tensor]:
    """Summed |gradient| of the loss for every backbone entry over the batches (eval mode: BatchNorm stays put)."""
    params = backbone_parameters(model, head_child)
    was = {n: p.requires_grad for n, p in model.named_parameters()}
    model.eval().requires_grad_(True)
    scores = {n: torch.zeros_like(p) for n, p in params.items()}
    try:
        for x, y in batches:
            model.zero_grad(set_to_none=True)
            criterion(model(x), y).backward()
            for n, p in params.items():
                scores[n] += p.grad.abs()
    finally:
        model.zero_grad(set_to_none=True)
        for n, p in model.named_parameters():
            p.requires_grad_(was[n])
    return scores


def select_masks(params: dict[str, nn.Parameter], fraction: float, how: str, scores: dict | None = None,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Boolean masks choosing round(fraction x entries) of the parameters' entries: top scores, random, or last."""
    if how not in SELECTIONS or not 0 < fraction <= 1:
        raise ValueError(f"select {how!r} with fraction {fraction}: choose one of {SELECTIONS}, fraction in (0, 1]")
    sizes = [p.numel() for p in params.values()]
    total = sum(sizes)
    k = max(1, round(fraction * total))
    chosen = torch.zeros(total, dtype=torch.bool)
    if how == "grad":
        flat = torch.cat([scores[n].detach().flatten().float().cpu() for n in params])
        chosen[torch.topk(flat, k).indices] = True
    elif how == "random":
        chosen[torch.randperm(total, generator=generator)[:k]] = True
    else:  # the last k entries in the network's order: the top layers first, as --mode top
        chosen[total - k:] = True
    return {n: m.view_as(p) for (n, p), m in zip(params.items(), chosen.split(sizes))}


class MaskedUpdates:
    """Keep every unchosen entry of the masked parameters at its value: no gradient, and restored after each step.

    A fit callback (common/trainer.py's Callback protocol): its state is the masks.
    """

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor]):
        """Freeze the tensors with no chosen entry and mask the others' gradients; before the optimizer is built,
        so frozen tensors stay out of it."""
        self.masks = masks
        params = dict(model.named_parameters())
        for n, m in masks.items():
            params[n].requires_grad_(bool(m.any()))
        self.partial = {params[n]: m.to(params[n].device) for n, m in masks.items() if m.any() and not m.all()}
        for p, m in self.partial.items():
            p.register_hook(lambda g, m=m: g * m)
        self.kept: dict[nn.Parameter, torch.Tensor] = {}

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Put the unchosen entries back after every step of the optimizer (weight decay and momentum move them)."""
        optimizer.register_step_pre_hook(self._keep)
        optimizer.register_step_post_hook(self._restore)

    def _keep(self, optimizer, args, kwargs) -> None:
        self.kept = {p: p.detach().clone() for p in self.partial}

    @torch.no_grad()
    def _restore(self, optimizer, args, kwargs) -> None:
        for p, m in self.partial.items():
            p.copy_(torch.where(m, p, self.kept[p]))
        self.kept = {}

    def on_epoch_start(self, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        """Nothing: the masks hold from the first step to the last."""

    @property
    def updated(self) -> int:
        """How many masked entries can change."""
        return int(sum(m.sum() for m in self.masks.values()))

    def state_dict(self) -> dict:
        return {"masks": {n: m.cpu() for n, m in self.masks.items()}}

    def load_state_dict(self, state: dict, optimizer: torch.optim.Optimizer) -> None:
        saved = state.get("masks", {})
        if saved.keys() != self.masks.keys() or any(not torch.equal(saved[n], self.masks[n].cpu()) for n in saved):
            raise CheckpointError("the checkpoint's masked entries differ from this run's; resume with the masks "
                                  "it saved (masks_from_checkpoint) or start a new run")


def masks_from_checkpoint(ckpt: dict) -> dict[str, torch.Tensor]:
    """The masks a masked run's checkpoint saved, for its resumed run (so it never picks new ones)."""
    masks = ckpt.get("callbacks", {}).get(MaskedUpdates.__name__, {}).get("masks")
    if not isinstance(masks, dict) or not masks:
        raise CheckpointError("the checkpoint holds no masks of a masked run; resume it with the mode it ran")
    return masks
