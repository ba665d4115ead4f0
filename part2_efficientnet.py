"""Part 2: fine-tune ImageNet EfficientNet-B0 on the Animals-10 subset, training the classifier or everything.

Examples:
    python part2_efficientnet.py --mode fc                     # only the new classifier (lr 1e-3)
    python part2_efficientnet.py --mode fc --cache-features    # frozen backbone runs once; each epoch is near-instant
    python part2_efficientnet.py --mode full                   # everything (lr 1e-4)
    python part2_efficientnet.py --mode fc --weights path/to/efficientnet_b0.pth   # a state-dict file instead
    python part2_efficientnet.py --mode bn                     # BatchNorm layers + head only
    python part2_efficientnet.py --mode gradual --unfreeze-every 2 # head first, one block deeper every 2 epochs

Weights come from torchvision's `EfficientNet_B0_Weights.IMAGENET1K_V1` (downloaded once into $TORCH_HOME);
offline, pass --weights with a state-dict file. Frozen parameters get requires_grad=False, are left out
of the optimizer, and frozen blocks stay in eval mode (BatchNorm statistics and stochastic depth).
Trainable parameters: fc 12,810, bn 54,826, full 4,020,358.
"""
from __future__ import annotations

from common import transfer
from common.cli import run_main

ARCH = "efficientnet_b0"


def get_args_parser():
    return transfer.get_args_parser(ARCH, "Fine-tune ImageNet EfficientNet-B0 (part 2).")


def main(args) -> None:
    transfer.main(args, ARCH)


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())
