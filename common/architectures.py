"""The architectures the project trains: the scratch CNN's definition and one ArchSpec per network, in ARCHS.

Every fact about an architecture lives in its spec: the training code (common/models.py, common/transfer.py),
Grad-CAM, the study's plans and study.py read it from here. Adding an architecture is one new ARCHS entry, a
thin part 2 script naming it, and its tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torchvision
from torch import nn


class ScratchCNN(nn.Module):
    """Five conv blocks (conv 3x3, BatchNorm, ReLU, 2x2 max-pool) and a dropout + linear head.

    The first conv has stride 2, so a 224x224 input is 7x7 after the fifth block; global average
    pooling then keeps the head small and the network input-size agnostic.
    """

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (32, 64, 128, 256, 384),
                 dropout: float = 0.3):
        super().__init__()
        layers, c_in = [], 3
        for i, c in enumerate(widths):
            stride = 2 if i == 0 else 1
            layers += [nn.Conv2d(c_in, c, 3, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


@dataclass(frozen=True)
class ArchSpec:
    """What the project knows about one architecture.

    build(num_classes=...) makes the bare network. A pretrained one (weights set) is built with its ImageNet head,
    which build_model replaces at `head` once the weights are loaded; one trained from scratch is built for
    num_classes directly. Every parameter outside a mode's trainable children is frozen; "bn" mode also trains every
    BatchNorm layer, "gradual" starts as "fc" and unfreezes one block deeper at a time (common/transfer.py), and
    "top" trains the head and the --blocks blocks below it from the start (its children: (), freeze sets them),
    "lora" trains the head and low-rank adapters on every other linear and ungrouped conv layer (common/lora.py),
    "masked" the head and a chosen fraction of the other parameters' entries (common/masking.py).
    """

    name: str  # checkpoints, run folders and plans name the architecture by this key
    display: str  # how reports and plans call it
    script: str  # the training script, in the repository root
    build: Callable[..., nn.Module]
    head: str  # dotted path of the final linear layer
    modes: Mapping[str, tuple[str, ...] | None]  # mode -> top-level children it trains (None: all); first: default
    lr: Mapping[str, float]  # default learning rate of each mode
    blocks: tuple[tuple[str, ...], ...]  # parameter-name prefixes of each block from the head down; the rest: stem
    gradcam_layer: str  # the last convolutional feature map
    compare_layer: str  # a finer map (stride 16, 14x14 at 224 px) the report compares Grad-CAM on
    min_crop: int  # the smallest input side the network's downsampling allows
    weights: str | None = None  # torchvision weights enum; None: trained from scratch
    dropout: str | None = None  # the head's dropout layer

    def __post_init__(self):
        if not self.modes or set(self.modes) != set(self.lr):
            raise ValueError(f"{self.name}: every mode needs a default learning rate, and there must be one mode")

    @property
    def max_depth(self) -> int:
        """block_depth of the stem, the deepest block."""
        return len(self.blocks)

    @property
    def head_child(self) -> str:
        """The top-level child holding the head: swapped for an identity, the network returns pooled features."""
        return self.head.split(".")[0]


def _features(*indices: int) -> tuple[str, ...]:
    return tuple(f"features.{i}" for i in indices)


# Part 2's modes and their default rates, which fall as more of the network is unfrozen.
# LoRA's adapters start at zero and are small, so they take the head's rate; masked fine-tuning, a chosen part
# of the network, takes top mode's.
_TRANSFER_LR = {"fc": 1e-3, "blocks34": 3e-4, "full": 1e-4, "bn": 1e-3, "gradual": 3e-4, "top": 3e-4, "lora": 1e-3,
                "masked": 3e-4}
_HEAD_MODES = {"fc": ("classifier",), "full": None, "bn": ("classifier",), "gradual": ("classifier",), "top": (),
               "lora": ("classifier",), "masked": None}

ARCHS = {spec.name: spec for spec in (
    ArchSpec(
        name="scratch_cnn", display="scratch CNN", script="part1_scratch_cnn.py", build=ScratchCNN,
        head="classifier.2", modes={"full": None}, lr={"full": 1e-3}, blocks=(("classifier",),),
        gradcam_layer="features.18",  # the ReLU of block 5, 7x7 at 224 px
        compare_layer="features.14",  # block 4's ReLU
        min_crop=64,  # a stride-2 conv and five 2x2 poolings need 2**6 pixels
        dropout="classifier.1"),
    ArchSpec(
        name="resnet18", display="ResNet-18", script="part2_resnet18.py", build=torchvision.models.resnet18,
        head="fc", modes={"fc": ("fc",), "blocks34": ("layer3", "layer4", "fc"), "full": None, "bn": ("fc",),
                          "gradual": ("fc",), "top": (), "lora": ("fc",), "masked": None},
        lr=_TRANSFER_LR, blocks=(("fc",), ("layer4",), ("layer3",), ("layer2",), ("layer1",)),
        gradcam_layer="layer4", compare_layer="layer3", min_crop=32, weights="ResNet18_Weights.IMAGENET1K_V1"),
    ArchSpec(  # blocks by output stride: 32 (features 14-18), 16, 8; the stem and stride 2-4 stages are the rest
        name="mobilenet_v2", display="MobileNetV2", script="part2_mobilenet.py", build=torchvision.models.mobilenet_v2,
        head="classifier.1", modes=_HEAD_MODES, lr={m: _TRANSFER_LR[m] for m in _HEAD_MODES},
        blocks=(("classifier",), _features(*range(14, 19)), _features(*range(7, 14)), _features(4, 5, 6)),
        gradcam_layer="features.18", compare_layer="features.13", min_crop=32,
        weights="MobileNet_V2_Weights.IMAGENET1K_V1", dropout="classifier.0"),
    # Blocks by output stride: 32 (features 6-8), 16 (4-5), 8 (3); the stem and the stride 2-4 stages are the rest.
    ArchSpec(
        name="efficientnet_b0", display="EfficientNet-B0", script="part2_efficientnet.py",
        build=torchvision.models.efficientnet_b0, head="classifier.1", modes=_HEAD_MODES,
        lr={m: _TRANSFER_LR[m] for m in _HEAD_MODES},
        blocks=(("classifier",), _features(6, 7, 8), _features(4, 5), _features(3)),
        gradcam_layer="features.8", compare_layer="features.5", min_crop=32,
        weights="EfficientNet_B0_Weights.IMAGENET1K_V1", dropout="classifier.0"),
)}


def arch_of_script(script: str) -> ArchSpec | None:
    """The spec of the architecture a training script (named without a folder) trains; None for any other file."""
    return next((spec for spec in ARCHS.values() if spec.script == script), None)
