"""The dataset as the scripts see it: class names, where the data lives, and prepare_data, which turns the data
options (common/config.py) into the saved split and its pixel cache.

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
from typing import TYPE_CHECKING, Callable

import numpy as np

from common import distributed
from common.cache import load_or_build_cache
from common.cli import DataError
from common.decode import DEFAULT_MAX_PIXELS, decode_many, undecodable_reason
from common.files import remove_stale_temp_files, removed_on_failure
from common.split import Split, load_or_create_split, scan_folder, split_lock

if TYPE_CHECKING:
    from common.config import DataConfig

ENGLISH_NAMES = {
    "cane": "dog", "cavallo": "horse", "elefante": "elephant", "farfalla": "butterfly",
    "gallina": "chicken", "gatto": "cat", "mucca": "cow", "pecora": "sheep",
    "ragno": "spider", "scoiattolo": "squirrel",
}
DEFAULT_DATA_DIR = "data/animals10/raw-img"


def data_notes(data_dir: Path) -> list[str]:
    """The caveats a notes file gives about the data folder: its title and its paragraphs that open in bold.

    The file is NOTES.md inside the data folder, else NOTES.md or README.md beside it that names the folder (so an
    unrelated README in a Downloads folder says nothing). A folder no such file describes gets no notes.
    """
    data_dir = Path(data_dir)
    candidates = [(data_dir / "NOTES.md", False)] + [(data_dir.parent / n, True) for n in ("NOTES.md", "README.md")]
    for path, must_name in candidates:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if must_name and data_dir.name not in text:
            continue
        paragraphs = [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]
        title = next((p[2:] for p in paragraphs if p.startswith("# ")), None)
        bold = [p for p in paragraphs if p.startswith("**")][:3]
        if title or bold:
            return [f"About the data (`{path}`): " + " ".join([f"{title}." if title else "", *bold]).strip()]
    return []


def display_name(folder: str) -> str:
    """English display name for an Animals-10 folder name; other names are shown as they are."""
    return ENGLISH_NAMES.get(folder, folder)


def resolve_data_dir(arg: str | None) -> Path:
    """--data-dir, else $ANIMALS10_DIR, else data/animals10/raw-img."""
    return Path(arg or os.environ.get("ANIMALS10_DIR") or DEFAULT_DATA_DIR)


def prepare_data(config: DataConfig, log=print,
                 check: Callable[[Split], object] | None = None) -> tuple[Split, np.ndarray]:
    """Load or create the split and its pixel cache, as the data options say.

    check(split) may refuse the split before anything is written (see load_or_create_split); a refused or failed
    start removes the folders it created.
    """
    if not distributed.is_main():
        distributed.barrier()  # let rank 0 draw the split and build the cache first
    if distributed.is_main():
        for folder in (config.output_dir, config.cache_dir):
            remove_stale_temp_files(folder)
    folders = (config.output_dir, config.cache_dir, config.split_file.parent)
    with removed_on_failure(folders, own=[split_lock(config.split_file).name]):
        split, pixels = load_or_create_split(config.data_dir, config.split_file, config.per_class, config.sizes,
                                             config.split_seed, config.img_size, config.workers, log, config.dedup,
                                             config.near_threshold, config.max_pixels, check)
        images = load_or_build_cache(config.data_dir, split, config.cache_dir, config.img_size, pixels,
                                     config.workers, log, config.max_pixels)
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
