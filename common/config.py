"""The command-line options, the checks across them, and the configs built from them: the one module of common/
that reads argparse's Namespace.

A script parses its options once and builds each config once from them, with `Config.from_args(args)`:

    DataConfig       prepare_data (common/data.py): where the data and the split are, how the split is drawn and cached
    LoaderConfig     make_loaders (common/loader.py): the batch size and which training images are drawn how often
    AugmentConfig    make_transforms (common/transforms.py): the crop and the augmentation of the images
    TrainConfig      fit (common/trainer.py): epochs, optimiser, schedule, patience, AMP, run folder and resume
    ObjectiveConfig  make_objective (common/trainer.py): label smoothing, --balance weights, MixUp/CutMix
    TransferConfig   common/transfer.py's train: the part 2 options (mode, weights, cached features, lr decay, ...)

Library functions take these configs or plain values, never the Namespace; from_args reads only its own fields, so
one Namespace builds them all. The checks given to parser.add_check read the Namespace too, and live here.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path

from common.cli import nonnegative_float, nonnegative_int, number, positive_float, positive_int, probability
from common.data import DEFAULT_DATA_DIR, resolve_data_dir
from common.decode import DEFAULT_MAX_PIXELS
from common.duplicates import NEAR_THRESHOLD
from common.lora import ALPHA as LORA_ALPHA
from common.lora import RANK as LORA_RANK
from common.masking import FRACTION as MASK_FRACTION
from common.masking import SELECTIONS as MASK_SELECTIONS
from common.semi import RATIO as SEMI_RATIO
from common.semi import THRESHOLD as SEMI_THRESHOLD
from common.semi import WEIGHT as SEMI_WEIGHT
from common.split import DEFAULT_IMG_SIZE, DEFAULT_PER_CLASS, DEFAULT_SIZES, parse_split_sizes
from common.transforms import AUTO_AUGMENT


def add_data_args(parser) -> None:
    """Arguments shared by every script that reads the dataset."""
    g = parser.add_argument_group("data")
    g.add_argument("--data-dir", default=None,
                   help=f"folder of <class>/<images> (default: $ANIMALS10_DIR, else {DEFAULT_DATA_DIR})")
    g.add_argument("--output-dir", default="runs", help="where run folders, split.json and the cache go")
    g.add_argument("--split-file", default=None, help="saved split (default: <output-dir>/split.json)")
    g.add_argument("--per-class", type=nonnegative_int, default=DEFAULT_PER_CLASS,
                   help="images drawn per class (0: all)")
    g.add_argument("--split", default=",".join(map(str, DEFAULT_SIZES)),
                   help="train,val,test images per class, or fractions of each class (e.g. 0.7,0.15,0.15)")
    g.add_argument("--no-dedup", dest="dedup", action="store_false",
                   help="draw a new split image by image: keep byte-identical copies and let near duplicates fall "
                        "into different subsets (default: drop byte-identical copies, keep each group of near "
                        "duplicates whole in train, val or test)")
    g.add_argument("--near-threshold", type=number(int, 0, 64), default=NEAR_THRESHOLD,
                   help="dhash bits within which images count as near duplicates")
    g.add_argument("--split-seed", type=nonnegative_int, default=0,
                   help="seed for drawing the split and the --fraction/--imbalance subset (saved in split.json; a "
                        "saved split is reused only with its own split seed)")
    g.add_argument("--seed", type=nonnegative_int, default=0,
                   help="seed for initialisation, augmentation and batch order (repeat a run on the same split "
                        "with --seed 0, 1, 2 to see the run-to-run spread)")
    g.add_argument("--img-size", type=positive_int, default=DEFAULT_IMG_SIZE,
                   help="images are resized to this square size and cached")
    g.add_argument("--crop-size", type=positive_int, default=224, help="networks see crops of this size")
    g.add_argument("--workers", type=positive_int, default=min(8, os.cpu_count() or 1), help="decoding threads")
    g.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                   help="skip images whose header announces more pixels (width x height) than this, unread: "
                        "a small file can decode into gigabytes")
    g.add_argument("--fraction", type=number(float, 0, 1, low_open=True), default=1.0,
                   help="train on this fraction of each class's training images (stratified; val and test unchanged)")
    g.add_argument("--imbalance", type=number(float, 1), default=1.0,
                   help="long-tailed training set: class k of C keeps n * RATIO^(-k/(C-1)) images, so the first "
                        "class has RATIO times the last (1 = balanced)")


def add_crop_check(parser, min_crop: int = 1) -> None:
    """Refuse, when the arguments are parsed, a crop larger than the cached images or too small for the network."""
    def check(args) -> str | None:
        if args.crop_size > args.img_size:
            return (f"--crop-size {args.crop_size} is larger than the cached --img-size {args.img_size} images; "
                    "lower it or raise --img-size")
        if args.crop_size < min_crop:
            return f"--crop-size {args.crop_size} is too small for this network; give at least {min_crop}"
        low = args.crop_size // 2 if args.low_res is None else args.low_res
        if (args.low_res is not None or args.low_res_epochs) and not min_crop <= low <= args.crop_size:
            return (f"--low-res {low} must lie between this network's smallest crop {min_crop} and "
                    f"--crop-size {args.crop_size}")
        if args.low_res_epochs and args.low_res_epochs >= args.epochs:
            return (f"--low-res-epochs {args.low_res_epochs} leaves no epoch at --crop-size {args.crop_size}; "
                    f"give fewer than --epochs {args.epochs}")
        return None

    parser.add_check(check)


def add_augment_args(parser, scale_min: float, jitter: float) -> None:
    """Augmentation arguments of the training scripts, with the script's defaults."""
    g = parser.add_argument_group("augmentation")
    g.add_argument("--scale-min", type=number(float, 0, 1, low_open=True), default=scale_min,
                   help="smallest crop area of the random-resized crop (1 = plain random crop of --crop-size)")
    g.add_argument("--jitter", type=probability, default=jitter, help="brightness/contrast/saturation jitter (0 = off)")
    g.add_argument("--no-augment", action="store_true", help="train on centre crops (no random crop, flip, jitter)")
    g.add_argument("--crop-resize", choices=("auto", "opencv", "interpolate", "roi_align"), default="auto",
                   help="how crops are resized: opencv, each uint8 image resized, flipped and jittered in one pass "
                        "(fast on a CPU); interpolate, each box alone with torch's antialiased bilinear (any "
                        "device); roi_align, the whole batch in one call (fast on a GPU); auto: roi_align on CUDA, "
                        "opencv on the CPU")
    g.add_argument("--low-res", type=positive_int, default=None, metavar="SIZE",
                   help="crop size of the --low-res-epochs (progressive resizing); default: half of --crop-size")
    g.add_argument("--low-res-epochs", type=nonnegative_int, default=0, metavar="N",
                   help="train the first N epochs on --low-res crops, which cost a fraction of full-size ones, and "
                        "the rest at --crop-size; validation and test always use --crop-size (0 = off)")
    g.add_argument("--auto-augment", choices=tuple(AUTO_AUGMENT), default="none",
                   help="torchvision's RandAugment or TrivialAugmentWide on each training image before cropping")
    g.add_argument("--mixup", type=nonnegative_float, default=0.0, metavar="ALPHA",
                   help="MixUp with Beta(ALPHA, ALPHA) (0 = off)")
    g.add_argument("--cutmix", type=nonnegative_float, default=0.0, metavar="ALPHA",
                   help="CutMix with Beta(ALPHA, ALPHA) (0 = off); with --mixup too, each batch uses one of them")


def add_semi_args(parser) -> None:
    """The semi-supervised options of the part 2 scripts (common/semi.py)."""
    g = parser.add_argument_group("semi-supervised (pseudo-labelling)")
    g.add_argument("--labelled-fraction", type=number(float, 0, 1, low_open=True, high_open=True), default=None,
                   metavar="F", help="keep the labels of this stratified part of each class's training images (the "
                                     "images --fraction F trains on) and pseudo-label the rest, FixMatch-style")
    g.add_argument("--pseudo-threshold", type=number(float, 0, 1, low_open=True), default=None, metavar="T",
                   help=f"confidence on the weak view that makes a pseudo-label (default {SEMI_THRESHOLD:g} times "
                        "the confidence the label-smoothed targets ask for: 0.86 with --label-smoothing 0.1)")
    g.add_argument("--unlabelled-ratio", type=positive_int, default=SEMI_RATIO, metavar="MU",
                   help="unlabelled images per labelled image in each step")
    g.add_argument("--unlabelled-weight", type=nonnegative_float, default=SEMI_WEIGHT, metavar="LAMBDA",
                   help="weight of the pseudo-label loss (0: the labelled images alone, on the same steps: the "
                        "supervised baseline of a pseudo-labelling run)")


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
                   help="auto: mixed precision on CUDA (bf16 where supported), and bf16 training steps and "
                        "validation on a CPU with bf16 units, AMX or AVX512-BF16 (the final test stays float32 "
                        "there); off: float32")
    g.add_argument("--tag", default=None, help="suffix for the run folder name")
    g.add_argument("--resume", default=None, help="continue a killed run from its runs/<run>/last.pt")
    g.add_argument("--sync-bn", action="store_true",
                   help="under torchrun on GPUs: synchronise BatchNorm statistics across processes")
    g.add_argument("--monitor-test", action="store_true",
                   help="also evaluate the test set after every epoch and record test_acc in metrics.json's history "
                        "(monitoring only, e.g. for time to accuracy: never used to choose the best epoch or to stop)")


class Options:
    """Base of the configs: `from_args` reads each field from the option of its name and ignores the others."""

    @classmethod
    def from_args(cls, args: argparse.Namespace, **given):
        """The config, with the fields in `given` (resolved or parsed values) instead of the raw options."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if f.name not in given}, **given)


@dataclass(frozen=True)
class DataConfig(Options):
    """What prepare_data reads: the data folder, the split (file, size, seed, de-duplication) and the cache."""

    data_dir: Path
    output_dir: Path
    split_file: Path
    per_class: int
    sizes: tuple[float, float, float]
    split_seed: int
    img_size: int
    workers: int
    dedup: bool
    near_threshold: int
    max_pixels: int

    @property
    def cache_dir(self) -> Path:
        return self.output_dir / "cache"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DataConfig:
        """--data-dir and --split-file resolved, --split parsed (a DataError when it is malformed)."""
        out = Path(args.output_dir)
        return super().from_args(args, data_dir=resolve_data_dir(args.data_dir), output_dir=out,
                                 split_file=Path(args.split_file) if args.split_file else out / "split.json",
                                 sizes=parse_split_sizes(args.split, args.per_class))


@dataclass(frozen=True)
class LoaderConfig(Options):
    """What make_loaders reads: the batch size, the --fraction/--imbalance training subset, and --balance."""

    batch_size: int
    fraction: float
    imbalance: float
    balance: str  # "oversample" draws the training images by inverse class frequency; the others are the loss's


@dataclass(frozen=True)
class AugmentConfig(Options):
    """What make_transforms reads: the crop size and the augmentation options (MixUp/CutMix: ObjectiveConfig)."""

    crop_size: int
    no_augment: bool
    scale_min: float
    jitter: float
    auto_augment: str  # a key of common/transforms.py's AUTO_AUGMENT
    crop_resize: str = "auto"  # "opencv", "interpolate", "roi_align", or "auto" (roi_align on CUDA, else opencv)
    low_res: int | None = None  # None: half of crop_size
    low_res_epochs: int = 0  # progressive resizing: the first epochs train on low_res crops


@dataclass(frozen=True)
class TrainConfig(Options):
    """What fit reads: the epochs, optimiser and schedule, early stopping, AMP and the run folder (and resume)."""

    epochs: int
    opt: str
    weight_decay: float
    sched: str  # "cosine" (after warmup), "plateau" or "none"
    warmup_epochs: int
    patience: int  # 0: never stop early
    amp: str  # "auto": mixed precision on CUDA, bf16 training and validation on a CPU with bf16 units; "off"
    sync_bn: bool
    output_dir: str
    resume: str | None  # the killed run's last.pt
    tag: str | None  # suffix for the run folder name
    monitor_test: bool


@dataclass(frozen=True)
class ObjectiveConfig(Options):
    """What make_objective reads: label smoothing, the --balance remedy, and the MixUp/CutMix strengths."""

    label_smoothing: float
    balance: str  # "weights": inverse-frequency weighted cross-entropy in training
    mixup: float
    cutmix: float


@dataclass(frozen=True)
class SemiConfig(Options):
    """What common/semi.py's pseudo-labelling reads; labelled_fraction None: a supervised run."""

    labelled_fraction: float | None
    pseudo_threshold: float | None  # None: common/semi.py's default_threshold for the run's label smoothing
    unlabelled_ratio: int
    unlabelled_weight: float


@dataclass(frozen=True)
class TransferConfig(Options):
    """What common/transfer.py's train reads of the part 2 options (and --seed and --img-size)."""

    mode: str  # a mode of the architecture's spec (common/architectures.py)
    weights: str  # "imagenet", a state-dict file, or "none"
    cache_features: bool
    probe_epochs: int  # linear probe on cached features before fine-tuning (0: off)
    lr_decay: float  # per-block rate factor (full and gradual modes)
    unfreeze_every: int  # gradual mode: epochs between unfreezing the next block
    blocks: int  # top mode: blocks below the head that train from the start (0 in other modes)
    lora_rank: int | None  # lora mode: the adapters' rank and scale numerator (None: common/lora.py's defaults)
    lora_alpha: float | None
    mask_fraction: float | None  # masked mode: the share of pretrained entries that train (None: the default)
    mask_select: str | None  # masked mode: how they are chosen (None: the default)
    lr: float | None  # None: the architecture's default rate for the mode
    seed: int
    img_size: int

    @property
    def lora(self) -> tuple[int, float] | None:
        """lora mode's (rank, alpha), the defaults filled in; None in other modes."""
        if self.mode != "lora":
            return None
        return (LORA_RANK if self.lora_rank is None else self.lora_rank,
                LORA_ALPHA if self.lora_alpha is None else float(self.lora_alpha))

    @property
    def mask(self) -> tuple[float, str] | None:
        """masked mode's (fraction, selection), the defaults filled in; None in other modes."""
        if self.mode != "masked":
            return None
        return (MASK_FRACTION if self.mask_fraction is None else self.mask_fraction,
                self.mask_select or MASK_SELECTIONS[0])


def check_mode_options(args) -> str | None:
    """Options that only some part 2 modes can use."""
    if args.cache_features and args.mode != "fc":
        return f"--cache-features needs a frozen backbone; use it with --mode fc, not {args.mode}"
    if args.lr_decay != 1.0 and args.mode not in ("full", "gradual"):
        return "--lr-decay sets per-block rates for --mode full or gradual only"
    if args.cache_features and (args.mixup or args.cutmix or args.auto_augment != "none"):
        return "--mixup, --cutmix and --auto-augment change the images; drop --cache-features to use them"
    if (args.mode == "top") != bool(args.blocks):
        return ("--mode top trains the last --blocks L blocks and the head; give it --blocks L" if args.mode == "top"
                else f"--blocks sets how many blocks --mode top trains; drop it with --mode {args.mode}")
    if args.mode != "lora" and (args.lora_rank is not None or args.lora_alpha is not None):
        return f"--lora-rank and --lora-alpha shape the adapters of --mode lora; drop them with --mode {args.mode}"
    if args.mode != "masked" and (args.mask_fraction is not None or args.mask_select is not None):
        return f"--mask-fraction and --mask-select choose what --mode masked trains; drop them with --mode {args.mode}"
    if args.probe_epochs and args.mode == "fc":
        return "--probe-epochs trains the head before fine-tuning; in fc mode use --cache-features instead"
    if args.cache_features and args.low_res_epochs:
        return "--low-res-epochs changes the training images; drop --cache-features to use it"
    return check_semi_options(args)


def check_semi_options(args) -> str | None:
    """Options that pseudo-labelling cannot be combined with, or that only it uses."""
    if getattr(args, "labelled_fraction", None) is None:  # also a Namespace of an older script's options
        defaults = {"pseudo_threshold": None, "unlabelled_ratio": SEMI_RATIO, "unlabelled_weight": SEMI_WEIGHT}
        if any(getattr(args, k, v) != v for k, v in defaults.items()):
            return ("--pseudo-threshold, --unlabelled-ratio and --unlabelled-weight shape pseudo-labelling; give "
                    "--labelled-fraction F too, or drop them")
        return None
    if args.fraction != 1.0 or args.imbalance != 1.0:
        return ("--labelled-fraction chooses the labelled images itself; drop --fraction and --imbalance (the "
                "supervised baseline of --labelled-fraction F is --fraction F)")
    if args.mixup or args.cutmix:
        return "--mixup and --cutmix mix labelled batches only; drop them with --labelled-fraction"
    if args.low_res_epochs:
        return "--low-res-epochs resizes the weak view but not the strong one; drop it with --labelled-fraction"
    return None
