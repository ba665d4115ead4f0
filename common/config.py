"""The command-line options and the configs built from them: the one module of common/ that reads the Namespace.

A script parses its options once and builds each config once from them, with `Config.from_args(args)`:

    TrainConfig      fit (common/trainer.py): epochs, optimiser, schedule, patience, AMP, run folder and resume
    ObjectiveConfig  make_objective (common/trainer.py): label smoothing, --balance weights, MixUp/CutMix
    TransferConfig   common/transfer.py's train: the part 2 options (mode, weights, cached features, lr decay, ...)

Library functions take these configs or plain values, never the Namespace; from_args reads only its own fields, so
one Namespace builds them all. The checks given to parser.add_check read the Namespace too, and live here.
"""
from __future__ import annotations

# ---------------------------------------------------------------- training: imports
import argparse
from dataclasses import dataclass, fields

from common.cli import nonnegative_float, nonnegative_int, positive_float, positive_int, probability


# ---------------------------------------------------------------- training: options and configs
def add_train_args(parser, lr: float | None, epochs: int, batch_size: int = 32) -> None:
    """Training arguments shared by every training script; the defaults given are the script's own."""
    g = parser.add_argument_group("training")
    g.add_argument("--epochs", type=positive_int, default=epochs, help="epochs to train")
    g.add_argument("--batch-size", type=positive_int, default=batch_size, help="batch size")
    g.add_argument("--lr", type=positive_float, default=lr, help="peak learning rate")
    g.add_argument("--opt", choices=("adamw", "sgd"), default="adamw",
                   help="optimizer (SGD uses momentum 0.9, Nesterov)")
    g.add_argument("--weight-decay", type=nonnegative_float, default=0.05,
                   help="weight decay (not applied to norms and biases)")
    g.add_argument("--sched", choices=("cosine", "plateau", "none"), default="cosine",
                   help="cosine decay after warmup, or ReduceLROnPlateau on val accuracy")
    g.add_argument("--warmup-epochs", type=nonnegative_int, default=1, help="linear warmup epochs (cosine schedule)")
    g.add_argument("--label-smoothing", type=probability, default=0.1, help="label smoothing, in [0, 1)")
    g.add_argument("--balance", choices=("none", "weights", "oversample"), default="none",
                   help="class-imbalance remedy: inverse-frequency weighted cross-entropy, "
                        "or oversampling rare classes")
    g.add_argument("--patience", type=nonnegative_int, default=0,
                   help="stop after this many epochs without a better val accuracy (0: never)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    g.add_argument("--amp", choices=("auto", "off"), default="auto",
                   help="mixed precision on CUDA (bf16 where supported)")
    g.add_argument("--tag", default=None, help="suffix for the run folder name")
    g.add_argument("--resume", default=None, help="continue a killed run from its runs/<run>/last.pt")
    g.add_argument("--sync-bn", action="store_true",
                   help="under torchrun on GPUs: synchronise BatchNorm statistics across processes")
    g.add_argument("--monitor-test", action="store_true",
                   help="also evaluate the test set after every epoch and record test_acc in metrics.json's history "
                        "(monitoring only, e.g. for time to accuracy: never used to choose the best epoch or to stop)")


def _fields_from_args(cls, args: argparse.Namespace, **given):
    """cls with each field read from the option of its name, except those given."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if f.name not in given}, **given)


@dataclass(frozen=True)
class TrainConfig:
    """What fit reads: the epochs, optimiser and schedule, early stopping, AMP and the run folder (and resume)."""

    epochs: int
    opt: str
    weight_decay: float
    sched: str  # "cosine" (after warmup), "plateau" or "none"
    warmup_epochs: int
    patience: int  # 0: never stop early
    amp: str  # "auto": mixed precision on CUDA, "off"
    sync_bn: bool
    output_dir: str
    resume: str | None  # the killed run's last.pt
    tag: str | None  # suffix for the run folder name
    monitor_test: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainConfig:
        return _fields_from_args(cls, args)


@dataclass(frozen=True)
class ObjectiveConfig:
    """What make_objective reads: label smoothing, the --balance remedy, and the MixUp/CutMix strengths."""

    label_smoothing: float
    balance: str  # "weights": inverse-frequency weighted cross-entropy in training
    mixup: float
    cutmix: float

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ObjectiveConfig:
        return _fields_from_args(cls, args)


@dataclass(frozen=True)
class TransferConfig:
    """What common/transfer.py's train reads of the part 2 options (and --seed and --img-size)."""

    mode: str  # a mode of the architecture's spec (common/architectures.py)
    weights: str  # "imagenet", a state-dict file, or "none"
    cache_features: bool
    lr_decay: float  # per-block rate factor (full and gradual modes)
    unfreeze_every: int  # gradual mode: epochs between unfreezing the next block
    lr: float | None  # None: the architecture's default rate for the mode
    seed: int
    img_size: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TransferConfig:
        return _fields_from_args(cls, args)


def check_mode_options(args) -> str | None:
    """Options that only some part 2 modes can use."""
    if args.cache_features and args.mode != "fc":
        return f"--cache-features needs a frozen backbone; use it with --mode fc, not {args.mode}"
    if args.lr_decay != 1.0 and args.mode not in ("full", "gradual"):
        return "--lr-decay sets per-block rates for --mode full or gradual only"
    if args.cache_features and (args.mixup or args.cutmix or args.auto_augment != "none"):
        return "--mixup, --cutmix and --auto-augment change the images; drop --cache-features to use them"
    return None
