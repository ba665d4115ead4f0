"""Low-rank adapters (LoRA, Hu et al. 2021) for convolutions and linear layers, written here, and their merge.

An adapted layer keeps its pretrained weight W frozen and learns W + (alpha / rank) * B A, with A a rank-R
"down" projection and B an "up" projection that starts at zero, so training starts from the pretrained network.
For a k x k convolution A is a k x k convolution to R channels (with the layer's stride, padding and dilation) and
B a 1 x 1 convolution back; B A is then itself a k x k kernel, so the adapter merges into W exactly.
Grouped (depthwise) convolutions are left frozen: a per-channel filter has no channel dimension to factor.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from common.cli import UserError


class Adapter(nn.Module):
    """A frozen base layer plus scale * up(down(x)); up starts at zero, so the adapter starts as its layer."""

    def __init__(self, base: nn.Module, down: nn.Module, up: nn.Module, rank: int, alpha: float):
        super().__init__()
        self.base, self.down, self.up, self.scale = base, down, up, alpha / rank
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)
        base.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * self.up(self.down(x))


class LoRAConv2d(Adapter):
    """A frozen Conv2d plus a trainable rank-R update (down: k x k to R channels, up: 1 x 1, zero at the start)."""

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float):
        down = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding, base.dilation,
                         bias=False, padding_mode=base.padding_mode)
        super().__init__(base, down, nn.Conv2d(rank, base.out_channels, 1, bias=False), rank, alpha)

    def delta(self) -> torch.Tensor:
        """The update the adapter adds to the base kernel: scale * B A, out x in x k x k."""
        return self.scale * torch.einsum("or,rikl->oikl", self.up.weight[:, :, 0, 0], self.down.weight)


class LoRALinear(Adapter):
    """A frozen Linear plus a trainable rank-R update (down to R features, up from them, zero at the start)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__(base, nn.Linear(base.in_features, rank, bias=False),
                         nn.Linear(rank, base.out_features, bias=False), rank, alpha)

    def delta(self) -> torch.Tensor:
        """The update the adapter adds to the base weight: scale * B A, out x in."""
        return self.scale * self.up.weight @ self.down.weight

RANK, ALPHA = 8, 8.0  # the defaults of --lora-rank (capped at rank_limit) and --lora-alpha (scale 1, as PEFT's)


def _adaptable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def _targets(model: nn.Module, skip: str) -> list[tuple[str, nn.Module]]:
    """The layers add_lora adapts: every linear and ungrouped conv layer outside the `skip` child."""
    return [(name, m) for name, m in model.named_modules() if _adaptable(m) and name.split(".")[0] != skip]


def _full_rank(m: nn.Module) -> int:
    """The largest rank an update of the layer's weight can have (a conv's k x k kernel counts as inputs)."""
    if isinstance(m, nn.Linear):
        return min(m.in_features, m.out_features)
    return min(m.in_channels * math.prod(m.kernel_size), m.out_channels)


def rank_limit(model: nn.Module, skip: str) -> tuple[int, str]:
    """(the largest rank that fits every adapted layer, the smallest such layer's name)."""
    return min((_full_rank(m), name) for name, m in _targets(model, skip))


def check_rank(model: nn.Module, rank: int, skip: str) -> None:
    """UserError when rank exceeds what the smallest adapted layer's weight can hold (its adapter would only waste
    memory: a rank of 100000 asks for gigabytes)."""
    limit, layer = rank_limit(model, skip)
    if not 1 <= rank <= limit:
        raise UserError(f"--lora-rank {rank} does not fit: the smallest adapted layer ({layer}) has rank {limit}; "
                        f"give --lora-rank 1 to {limit}")


def add_lora(model: nn.Module, rank: int, alpha: float, skip: str) -> int:
    """Wrap every linear and ungrouped conv layer outside the `skip` child in an adapter; returns how many.

    The wrapped layers' own weights are frozen; the adapters' are new and trainable.
    """
    if alpha <= 0:
        raise ValueError(f"LoRA needs alpha > 0, not {alpha}")
    if any(isinstance(m, Adapter) for m in model.modules()):
        raise ValueError("the model already has LoRA adapters")
    check_rank(model, rank, skip)
    targets = _targets(model, skip)
    for name, m in targets:
        parent, _, leaf = name.rpartition(".")
        wrapper = LoRAConv2d if isinstance(m, nn.Conv2d) else LoRALinear
        setattr(model.get_submodule(parent) if parent else model, leaf, wrapper(m, rank, alpha))
    return len(targets)


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base layer (W += scale * B A) and put the plain layer back; returns the model.

    The merged network has the architecture's own layers and state-dict names, and computes the same function.
    """
    for name, m in list(model.named_modules()):
        if isinstance(m, Adapter):
            m.base.weight += m.delta().to(m.base.weight.dtype)
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, m.base)
    return model
