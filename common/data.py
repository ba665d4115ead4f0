"""The dataset as the scripts see it: class names, where the data lives, the data and augmentation arguments, and
prepare_data, which turns them into the saved split and its pixel cache.

The flow every script shares:

    split = load_or_create_split(data_dir, split_file, ...)   # common/split.py: runs/split.json, written once
    images = load_or_build_cache(data_dir, split, cache_dir, img_size)   # common/cache.py: uint8 memmap, N x H x W x 3
    loader = BatchLoader(images, labels, indices, batch_size, device)    # common/loader.py: uint8 batches on the device
    x = train_transform(batch, crop, mean, std)                          # common/transforms.py: float, augmented

JPEG/PNG decoding (common/decode.py, OpenCV) happens once per image and per image size; later epochs and later
scripts read the memory-mapped uint8 cache and never decode again.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from common import distributed
from common.cache import load_or_build_cache
from common.cli import DataError, nonnegative_float, nonnegative_int, number, positive_int, probability
from common.decode import DEFAULT_MAX_PIXELS, decode_many, undecodable_reason
from common.duplicates import NEAR_THRESHOLD
from common.files import remove_stale_temp_files
from common.split import Split, load_or_create_split, parse_split_sizes, scan_folder
from common.transforms import AUTO_AUGMENT

ENGLISH_NAMES = {
    "cane": "dog", "cavallo": "horse", "elefante": "elephant", "farfalla": "butterfly",
    "gallina": "chicken", "gatto": "cat", "mucca": "cow", "pecora": "sheep",
    "ragno": "spider", "scoiattolo": "squirrel",
}
DEFAULT_DATA_DIR = "data/animals10/raw-img"


def display_name(folder: str) -> str:
    """English display name for an Animals-10 folder name; other names are shown as they are."""
    return ENGLISH_NAMES.get(folder, folder)


def resolve_data_dir(arg: str | None) -> Path:
    """--data-dir, else $ANIMALS10_DIR, else data/animals10/raw-img."""
    return Path(arg or os.environ.get("ANIMALS10_DIR") or DEFAULT_DATA_DIR)


def add_data_args(parser) -> None:
    """Arguments shared by every script that reads the dataset."""
    g = parser.add_argument_group("data")
    g.add_argument("--data-dir", default=None,
                   help=f"folder of <class>/<images> (default: $ANIMALS10_DIR, else {DEFAULT_DATA_DIR})")
    g.add_argument("--output-dir", default="runs", help="where run folders, split.json and the cache go")
    g.add_argument("--split-file", default=None, help="saved split (default: <output-dir>/split.json)")
    g.add_argument("--per-class", type=nonnegative_int, default=450, help="images drawn per class (0: all)")
    g.add_argument("--split", default="300,75,75",
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
    g.add_argument("--img-size", type=positive_int, default=256,
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
        return None

    parser.add_check(check)


def add_augment_args(parser, scale_min: float, jitter: float) -> None:
    """Augmentation arguments of the training scripts, with the script's defaults."""
    g = parser.add_argument_group("augmentation")
    g.add_argument("--scale-min", type=number(float, 0, 1, low_open=True), default=scale_min,
                   help="smallest crop area of the random-resized crop (1 = plain random crop of --crop-size)")
    g.add_argument("--jitter", type=probability, default=jitter, help="brightness/contrast/saturation jitter (0 = off)")
    g.add_argument("--no-augment", action="store_true", help="train on centre crops (no random crop, flip, jitter)")
    g.add_argument("--auto-augment", choices=tuple(AUTO_AUGMENT), default="none",
                   help="torchvision's RandAugment or TrivialAugmentWide on each training image before cropping")
    g.add_argument("--mixup", type=nonnegative_float, default=0.0, metavar="ALPHA",
                   help="MixUp with Beta(ALPHA, ALPHA) (0 = off)")
    g.add_argument("--cutmix", type=nonnegative_float, default=0.0, metavar="ALPHA",
                   help="CutMix with Beta(ALPHA, ALPHA) (0 = off); with --mixup too, each batch uses one of them")


def prepare_data(args, log=print) -> tuple[Split, np.ndarray]:
    """Resolve paths from parsed arguments, then load or create the split and its pixel cache."""
    data_dir = resolve_data_dir(args.data_dir)
    out = Path(args.output_dir)
    if not distributed.is_main():
        distributed.barrier()  # let rank 0 draw the split and build the cache first
    if distributed.is_main():
        for folder in (out, out / "cache"):
            remove_stale_temp_files(folder)
    split_file = Path(args.split_file) if args.split_file else out / "split.json"
    sizes = parse_split_sizes(args.split, args.per_class)
    split, pixels = load_or_create_split(data_dir, split_file, args.per_class, sizes, args.split_seed,
                                         args.img_size, args.workers, log, args.dedup, args.near_threshold,
                                         args.max_pixels)
    images = load_or_build_cache(data_dir, split, out / "cache", args.img_size, pixels, args.workers, log,
                                 args.max_pixels)
    if distributed.is_main():
        distributed.barrier()
    return split, images


def check_crop_fits(images: np.ndarray, crop: int) -> None:
    """Refuse a crop larger than the cached images."""
    if images.shape[1] < crop or images.shape[2] < crop:
        raise DataError(f"--crop-size {crop} is larger than the cached {images.shape[1]}px images; "
                        "lower it or raise --img-size")


def load_folder(data_dir: Path, classes: list[str], img_size: int, workers: int = 2, log=print,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """Decode every image of a <class>/ folder whose classes are among `classes` (e.g. a hold-out set).

    Returns (uint8 N x S x S x 3, labels as indices into `classes`, paths); unreadable files and those over
    max_pixels are skipped.
    """
    found = scan_folder(data_dir)
    unknown = [c for c in found if c not in classes]
    if unknown:
        raise DataError(f"{data_dir} has class folders {unknown} that the model does not know (it knows {classes}); "
                        "pass a folder whose classes are the checkpoint's")
    paths = [data_dir / c / f for c, files in found.items() for f in files]
    labels, pixels, kept = [], [], []
    for path, img in zip(paths, decode_many(paths, img_size, workers, max_pixels)):
        if img is None:
            log(f"skipping image {path}: {undecodable_reason(path, max_pixels)}")
            continue
        pixels.append(img)
        labels.append(classes.index(path.parent.name))
        kept.append(path)
    if not pixels:
        raise DataError(f"{data_dir} holds no readable images")
    return np.stack(pixels), np.array(labels, dtype=np.int64), kept
