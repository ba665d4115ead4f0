"""Part 2: fine-tune ImageNet ResNet-18 on the Animals-10 subset, training the head, layer3+layer4+head, or all.

Examples:
    python part2_resnet18.py --mode fc                      # only the new 10-class fc layer (lr 1e-3)
    python part2_resnet18.py --mode fc --cache-features     # frozen backbone runs once; each epoch is near-instant
    python part2_resnet18.py --mode blocks34                # layer3, layer4 and fc (lr 3e-4)
    python part2_resnet18.py --mode full --lr 1e-4          # everything
    python part2_resnet18.py --mode full --lr-decay 0.5     # per-block rates: fc lr, layer4 lr/2, layer3 lr/4, ...
    python part2_resnet18.py --mode fc --weights path/to/resnet18.pth   # state-dict file instead of the torch cache
    python part2_resnet18.py --mode full --weights none     # random initialisation (not transfer learning)
    python part2_resnet18.py --mode bn                      # BatchNorm layers + head only
    python part2_resnet18.py --mode gradual --unfreeze-every 2 # head first, one block deeper every 2 epochs
    python part2_resnet18.py --mode top --blocks 2          # the head and the 2 blocks below it from the start
    python part2_resnet18.py --mode lora --lora-rank 8      # low-rank adapters + head, merged for evaluation
    python part2_resnet18.py --mode masked --mask-fraction 0.05  # the head + 5% of the entries, by gradient magnitude
    python part2_resnet18.py --mode fc --cache-features --labelled-fraction 0.1  # 10% of the labels + pseudo-labels

Weights come from torchvision's `ResNet18_Weights.IMAGENET1K_V1` (downloaded once into $TORCH_HOME);
offline, pass --weights with a state-dict file. Frozen parameters get requires_grad=False, are left out
of the optimizer, and their BatchNorm layers stay in eval mode. Trainable parameters: fc 5,130,
lora (rank 8) 292,514, masked (5%) 563,956, blocks34 10,498,570, full 11,181,642.
"""
from __future__ import annotations

from common import transfer
from common.cli import run_main

ARCH = "resnet18"


def get_args_parser():
    return transfer.get_args_parser(ARCH, "Fine-tune ImageNet ResNet-18 (part 2).")


def main(args) -> None:
    transfer.main(args, ARCH)


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())
