"""Part 2: fine-tune ImageNet MobileNetV2 on the Animals-10 subset, training the classifier or everything.

Examples:
    python part2_mobilenet.py --mode fc                     # only the new classifier (lr 1e-3)
    python part2_mobilenet.py --mode fc --cache-features    # frozen backbone runs once; each epoch is near-instant
    python part2_mobilenet.py --mode full                   # everything (lr 1e-4)
    python part2_mobilenet.py --mode fc --weights ../shared/weights/mobilenet_v2-4972ace1.pth
    python part2_mobilenet.py --mode bn                     # BatchNorm layers + head only
    python part2_mobilenet.py --mode gradual --unfreeze-every 2 # head first, one block deeper every 2 epochs
    python part2_mobilenet.py --mode top --blocks 2          # the head and the 2 blocks below it from the start
    python part2_mobilenet.py --mode lora --lora-rank 8      # low-rank adapters + head, merged for evaluation
    python part2_mobilenet.py --mode masked --mask-fraction 0.05  # the head + 5% of the entries, by gradient magnitude
    python part2_mobilenet.py --mode fc --cache-features --labelled-fraction 0.1  # 10% of the labels + pseudo-labels

Weights come from torchvision's `MobileNet_V2_Weights.IMAGENET1K_V1` (downloaded once into $TORCH_HOME);
offline, pass --weights with a state-dict file. Frozen parameters get requires_grad=False, are left out
of the optimizer, and their BatchNorm layers stay in eval mode. Trainable parameters: fc 12,810,
top 1 1,694,154, lora (rank 8) 161,506, masked (5%) 124,004, full 2,236,682.
"""
from __future__ import annotations

from common import transfer
from common.cli import run_main

ARCH = "mobilenet_v2"


def get_args_parser():
    return transfer.get_args_parser(ARCH, "Fine-tune ImageNet MobileNetV2 (part 2).")


def main(args) -> None:
    transfer.main(args, ARCH)


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())
