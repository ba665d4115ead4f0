"""Dataset scanning, the saved train/val/test split, the decode-once pixel cache and batched transforms.

The flow every script shares:

    split = load_or_create_split(data_dir, split_file, ...)   # runs/split.json, written once, exclusively
    images = load_or_build_cache(data_dir, split, cache_dir, img_size)   # uint8 memmap, N x H x W x 3
    loader = BatchLoader(images, labels, indices, batch_size, device)    # uint8 batches on the device
    x = train_transform(batch, crop, mean, std)                          # float, augmented, on the device

JPEG/PNG decoding (OpenCV) happens once per image and per image size; later epochs and later
scripts read the memory-mapped uint8 cache and never decode again.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from functools import partial
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from common import distributed
from common.cli import DataError, nonnegative_float, nonnegative_int, number, positive_int, probability
from common.decode import DECODE_VERSION, DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, decode_many, undecodable_reason
from common.duplicates import dhash, duplicate_groups
from common.files import atomic_write, atomic_write_text, file_lock, file_sha256, remove_stale_temp_files
from common.transforms import AUTO_AUGMENT

ENGLISH_NAMES = {
    "cane": "dog", "cavallo": "horse", "elefante": "elephant", "farfalla": "butterfly",
    "gallina": "chicken", "gatto": "cat", "mucca": "cow", "pecora": "sheep",
    "ragno": "spider", "scoiattolo": "squirrel",
}
DEFAULT_DATA_DIR = "data/animals10/raw-img"
SPLIT_FORMAT = "animals10-split/1"

GET_DATA_ADVICE = (
    "download the Kaggle dataset with "
    "`kaggle datasets download -d alessiocorrado99/animals10 --unzip -p data/animals10` "
    "and pass --data-dir data/animals10/raw-img (or set ANIMALS10_DIR)"
)


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
    g.add_argument("--near-threshold", type=number(int, 0, 64), default=4,
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


def train_subset(labels: np.ndarray, train_idx: np.ndarray, fraction: float = 1.0, imbalance: float = 1.0,
                 seed: int = 0) -> np.ndarray:
    """The training indices kept by --fraction (of every class) and --imbalance (long tail over the classes).

    Each class keeps the first images of its own seeded permutation, so a smaller fraction is a subset of a
    larger one. Class k of C keeps round(n_k * fraction * imbalance^(-k/(C-1))) images, at least one.
    The subset is part of the data choice: training passes the split's seed, so repeats over --seed train
    on the same images.
    """
    if not 0 < fraction <= 1:
        raise DataError(f"--fraction {fraction:g} is not in (0, 1]; use e.g. --fraction 0.2")
    if imbalance < 1:
        raise DataError(f"--imbalance {imbalance:g} is below 1; "
                        "give the ratio of the largest to the smallest class, e.g. 10")
    train_idx = np.asarray(train_idx)
    classes = np.unique(labels[train_idx])
    kept = []
    for rank, c in enumerate(classes):
        members = train_idx[labels[train_idx] == c]
        n = len(members) * fraction
        if len(classes) > 1:
            n *= imbalance ** (-rank / (len(classes) - 1))
        order = np.random.default_rng([seed, int(c)]).permutation(len(members))
        kept.append(members[order[:max(1, round(n))]])
    return np.sort(np.concatenate(kept))


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency class weights n / (C * n_c) for weighted cross-entropy (absent classes get 0)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.divide(len(labels), num_classes * counts, out=np.zeros_like(counts), where=counts > 0)
    return torch.tensor(weights, dtype=torch.float32)


def make_loaders(images, split: "Split", args, device: torch.device, generator: torch.Generator,
                 log=print) -> dict[str, "BatchLoader"]:
    """Train (shuffled, full batches only; --fraction/--imbalance subset; --balance oversample), val, test loaders."""
    train_idx = train_subset(split.labels, split.indices["train"], args.fraction, args.imbalance, split.split_seed)
    if len(train_idx) != len(split.indices["train"]):
        counts = np.bincount(split.labels[train_idx], minlength=len(split.classes))
        log(f"training on {len(train_idx)} of {len(split.indices['train'])} training images "
            f"(per class {counts.min()}-{counts.max()}; fraction {args.fraction:g}, imbalance {args.imbalance:g})")
    if len(train_idx) < args.batch_size:
        raise DataError(f"only {len(train_idx)} training images, fewer than --batch-size {args.batch_size}; "
                        "lower --batch-size or raise --fraction")
    sample_weights = None
    if getattr(args, "balance", "none") == "oversample":
        sample_weights = 1 / np.bincount(split.labels[train_idx])[split.labels[train_idx]]
    indices = {"train": train_idx, "val": split.indices["val"], "test": split.indices["test"]}
    return {name: BatchLoader(images, split.labels, idx, args.batch_size, device, shuffle=name == "train",
                              generator=generator, drop_last=name == "train",
                              sample_weights=sample_weights if name == "train" else None)
            for name, idx in indices.items()}


def mix_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, mixup: float, cutmix: float,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp or CutMix of a normalised batch with a shuffled copy of itself; returns (images, soft targets).

    With both alphas set, each batch uses one of the two at random (as in torchvision's references).
    CutMix's mixing weight is the pasted box's actual share of the image, so targets always sum to one.
    """
    g = generator
    use_cutmix = cutmix > 0 and (mixup <= 0 or torch.rand(1, generator=g).item() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    # torch's Beta sampler takes no generator; draw from numpy seeded by ours, so runs stay reproducible.
    lam = float(np.random.default_rng(int(torch.randint(2**62, (1,), generator=g))).beta(alpha, alpha))
    perm = torch.randperm(len(x), generator=g).to(x.device)
    targets = nn.functional.one_hot(y, num_classes).float()
    if use_cutmix:
        h, w = x.shape[-2:]
        cy, cx = (torch.rand(2, generator=g) * torch.tensor([h, w])).long().tolist()
        bh, bw = round(h * math.sqrt(1 - lam)), round(w * math.sqrt(1 - lam))
        y0, y1 = max(cy - bh // 2, 0), min(cy + bh - bh // 2, h)
        x0, x1 = max(cx - bw // 2, 0), min(cx + bw - bw // 2, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = lam * x + (1 - lam) * x[perm]
    return x, lam * targets + (1 - lam) * targets[perm]


def parse_split_sizes(text: str, per_class: int) -> tuple[float, float, float]:
    """'300,75,75' (images per class, adding up to --per-class) or '0.7,0.15,0.15' (fractions of each class)."""
    try:
        sizes = tuple(float(v) for v in text.split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 3 or min(sizes) <= 0:
        raise DataError(f"--split {text!r} is not three positive numbers; use counts like --split 300,75,75 "
                        "or fractions like --split 0.7,0.15,0.15")
    if all(v < 1 for v in sizes):
        if abs(sum(sizes) - 1) > 1e-6:
            raise DataError(f"--split {text} fractions add up to {sum(sizes):g}, not 1; make them add up to 1")
        return sizes  # type: ignore[return-value]
    if not all(v.is_integer() for v in sizes):
        raise DataError(f"--split {text} mixes counts and fractions; give three counts or three fractions")
    sizes = tuple(int(v) for v in sizes)
    if per_class and sum(sizes) != per_class:
        raise DataError(f"--split {text} adds up to {sum(sizes)}, not --per-class {per_class}; make them agree")
    return sizes  # type: ignore[return-value]


def class_split_sizes(cls: str, available: int, sizes: Sequence[float], unreadable: int = 0,
                      copies: int = 0) -> tuple[int, int, int]:
    """Train/val/test counts for one class: exact counts, or fractions of what the class has.

    unreadable and copies (byte-identical copies left out) say why a class has fewer images than files.
    """
    why = ", ".join(f"{n} {what}" for n, what in ((unreadable, "unreadable"), (copies, "byte-identical copies")) if n)
    why = f" ({why} left out)" if why else ""
    if isinstance(sizes[0], int):
        if available < sum(sizes):
            raise DataError(f"class {cls!r} has only {available} usable images{why}, fewer than --per-class "
                            f"{sum(sizes)}; add images, lower --per-class, "
                            + ("keep byte-identical copies with --no-dedup, " if copies else "")
                            + "or split proportionally with fractions (e.g. --split 0.7,0.15,0.15)")
        return tuple(sizes)  # type: ignore[return-value]
    n_val, n_test = round(available * sizes[1]), round(available * sizes[2])
    n_train = available - n_val - n_test
    if min(n_train, n_val, n_test) < 1:
        raise DataError(f"class {cls!r} has only {available} usable images{why}, too few to fill train, val and test; "
                        "add images or remove the class folder")
    return n_train, n_val, n_test


def scan_folder(data_dir: Path) -> dict[str, list[str]]:
    """Map each class folder to its sorted image file names; a clear error when there is nothing to read."""
    if not data_dir.is_dir():
        raise DataError(f"data folder {data_dir} does not exist; {GET_DATA_ADVICE}")
    classes = {}
    for sub in sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f.name for f in sub.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        if files:
            classes[sub.name] = files
    if not classes:
        raise DataError(f"data folder {data_dir} holds no <class>/ folders with .jpg/.jpeg/.png images; "
                        f"{GET_DATA_ADVICE}")
    if len(classes) < 2:
        raise DataError(f"data folder {data_dir} holds only one class ({next(iter(classes))}); "
                        "point --data-dir at the folder of class folders")
    return classes


def _split_fingerprint(entries: Sequence[dict]) -> str:
    h = hashlib.sha256()
    for e in entries:
        h.update(f"{e['path']}\0{e['sha256']}\0{e['subset']}\n".encode())
    return h.hexdigest()


class Split:
    """The saved subset and train/val/test assignment: classes, files in cache order, and index arrays."""

    def __init__(self, meta: dict):
        self.meta = meta
        self.classes: list[str] = meta["classes"]
        self.entries: list[dict] = meta["files"]
        self.labels = np.array([self.classes.index(e["path"].split("/")[0]) for e in self.entries], dtype=np.int64)
        subsets = np.array([e["subset"] for e in self.entries])
        self.indices = {s: np.flatnonzero(subsets == s) for s in ("train", "val", "test")}

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def split_seed(self) -> int:
        """The seed the split was drawn with (files saved before --split-seed existed call it 'seed')."""
        return int(self.meta.get("split_seed", self.meta.get("seed", 0)))

    def paths(self, data_dir: Path) -> list[Path]:
        return [data_dir / e["path"] for e in self.entries]


def _check_split_counts(split: Split) -> None:
    paths = [e["path"] for e in split.entries]
    if len(set(paths)) != len(paths):
        raise DataError("the saved split lists a file twice; delete it to re-split")
    for k, name in enumerate(("train", "val", "test")):
        counts = np.bincount(split.labels[split.indices[name]], minlength=len(split.classes))
        wanted = [split.meta["class_sizes"][c][k] for c in split.classes]
        if counts.tolist() != wanted:
            raise DataError(f"the saved split's {name} set does not hold the recorded images per class; "
                            "delete it to re-split")
    subset_of = {e["path"]: e["subset"] for e in split.entries}
    for group in split.meta.get("groups") or []:
        if len({subset_of.get(p) for p in group}) != 1 or group[0] not in subset_of:
            raise DataError(f"the saved split puts the near duplicates {group[:3]} into different subsets or leaves "
                            "some out; delete it to re-split")


SUBSETS = ("train", "val", "test")


def assign_subsets(labels: np.ndarray, groups: Sequence[Sequence[int]], quotas: np.ndarray, rng: np.random.Generator,
                   paths: Sequence[str] = ()) -> np.ndarray:
    """Subset of each image (0 train, 1 val, 2 test, -1 beyond the quotas): every group whole in one subset,
    and class c gets exactly quotas[c] = (train, val, test) images.

    Groups go biggest first (ties in seeded random order), each into a subset drawn with probability
    proportional to its room, among the subsets with room for all its members in every class it spans;
    the other images then fill what is left, in their (already random) drawn order. Without groups this
    is the plain stratified split: the first images of each class train, the next validate, the rest test.
    """
    room = np.array(quotas, dtype=np.int64).reshape(-1, 3)
    subset = np.full(len(labels), -1, np.int64)
    for g in sorted(rng.permutation(len(groups)).tolist(), key=lambda k: -len(groups[k])):
        members = np.asarray(groups[g])
        need = np.bincount(labels[members], minlength=len(room))
        fits = (room >= need[:, None]).all(0)
        if not fits.any():
            names = [paths[i] for i in members[:3]] if len(paths) else members[:3].tolist()
            raise DataError(f"a group of {len(members)} near-duplicate images (e.g. {names}) does not fit whole into "
                            "train, val or test; lower --near-threshold, split with fractions (e.g. --split "
                            "0.7,0.15,0.15), or split image by image with --no-dedup")
        weight = np.where(fits, room[need > 0].sum(0), 0)
        s = int(rng.choice(3, p=weight / weight.sum()))
        room[:, s] -= need
        subset[members] = s
    for c in range(len(room)):
        rest = np.flatnonzero((labels == c) & (subset < 0))[:room[c].sum()]
        subset[rest] = np.repeat(np.arange(3), room[c])[:len(rest)]
    return subset


def _draw_class(data_dir: Path, cls: str, files: list[str], order: np.ndarray, limit: int, img_size: int,
                workers: int, log, seen: dict[str, str] | None,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[list[tuple], list[str], list[list[str]]]:
    """Decode a class's files in drawn order until limit are usable.

    Returns (name, pixels, sha256, bytes) of each usable image, the unreadable files, and the byte-identical
    copies left out as [copy, kept]; seen (sha256 -> path, shared by all classes) is None to keep copies.
    """
    chosen, skipped, copies, start = [], [], [], 0
    # Decode candidates in shuffled order until the class is full; unusable ones are replaced.
    while len(chosen) < limit and start < len(order):
        batch = [files[i] for i in order[start:start + limit - len(chosen)]]
        start += len(batch)
        for name, img in zip(batch, decode_many([data_dir / cls / n for n in batch], img_size, workers, max_pixels)):
            rel, path = f"{cls}/{name}", data_dir / cls / name
            if img is None:
                skipped.append(rel)
                log(f"skipping image {path}: {undecodable_reason(path, max_pixels)}")
                continue
            sha = file_sha256(path)
            if seen is not None:
                if sha in seen:
                    copies.append([rel, seen[sha]])
                    continue
                seen[sha] = rel
            chosen.append((name, img, sha, path.stat().st_size))
    return chosen, skipped, copies


def create_split(data_dir: Path, per_class: int, sizes: Sequence[float], split_seed: int, img_size: int,
                 workers: int, log=print, dedup: bool = True, near_threshold: int = 4,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Split, np.ndarray]:
    """Draw up to per_class usable images per class (seeded; 0 = all), split them stratified, decode them once.

    Unreadable files are reported and skipped. With dedup, byte-identical copies of an image already drawn
    (in any class) are left out and counted, and each group of near duplicates (`duplicate_groups`, across
    classes) goes whole into train, val or test (`assign_subsets`), so none straddles the split and none is
    dropped. Returns the split and the decoded uint8 pixels in split order, so the caller can cache them
    without decoding twice. Files over max_pixels count as unreadable.
    """
    if split_seed < 0:
        raise DataError(f"--split-seed {split_seed} is negative; use 0 or more")
    found = scan_folder(data_dir)
    rng = np.random.default_rng(split_seed)
    seen: dict[str, str] | None = {} if dedup else None
    items, skipped, copies, class_sizes = [], [], [], {}
    for cls, files in found.items():
        chosen, bad, dup = _draw_class(data_dir, cls, files, rng.permutation(len(files)), per_class or len(files),
                                       img_size, workers, log, seen, max_pixels)
        class_sizes[cls] = list(class_split_sizes(cls, len(chosen), sizes, len(bad), len(dup)))
        items += [(f"{cls}/{name}", img, sha, size) for name, img, sha, size in chosen]
        skipped, copies = skipped + bad, copies + dup
    paths = [it[0] for it in items]
    labels = np.array([list(found).index(p.split("/")[0]) for p in paths], dtype=np.int64)
    groups = [g.members for g in duplicate_groups([it[2] for it in items], [dhash(it[1]) for it in items],
                                                  near_threshold)] if dedup else []
    subset = assign_subsets(labels, groups, np.array(list(class_sizes.values())),
                            np.random.default_rng([split_seed, 1]), paths)
    order = sorted(np.flatnonzero(subset >= 0).tolist(), key=lambda i: (labels[i], subset[i]))  # stable: drawn order
    entries = [{"path": paths[i], "subset": SUBSETS[subset[i]], "size": items[i][3], "sha256": items[i][2]}
               for i in order]
    _log_dedup(log, skipped, copies, [[paths[i] for i in g] for g in groups], dedup)
    meta = {"format": SPLIT_FORMAT, "classes": list(found), "per_class": per_class, "sizes": list(sizes),
            "split_seed": split_seed, "dedup": dedup, "near_threshold": near_threshold if dedup else None,
            "class_sizes": class_sizes, "skipped": skipped, "exact_copies_dropped": len(copies),
            "exact_copies": copies, "groups": sorted(sorted(paths[i] for i in g) for g in groups),
            "files": entries, "fingerprint": _split_fingerprint(entries)}
    split = Split(meta)
    _check_split_counts(split)
    return split, np.stack([items[i][1] for i in order])


def _log_dedup(log, skipped: list[str], copies: list[list[str]], groups: list[list[str]], dedup: bool) -> None:
    if skipped:
        log(f"skipped {len(skipped)} unreadable or oversized image(s)")
    if not dedup:
        return
    log(f"left out {len(copies)} byte-identical copies of drawn images"
        + (f" (e.g. {copies[0][0]} = {copies[0][1]})" if copies else ""))
    cross = sum(len({p.split("/")[0] for p in g}) > 1 for g in groups)
    log(f"kept {len(groups)} group(s) of near duplicates ({sum(map(len, groups))} images, {cross} spanning classes) "
        "whole in train, val or test" + (f" (e.g. {' ~ '.join(groups[0][:2])})" if groups else ""))


def verify_split(split: Split, data_dir: Path) -> None:
    """Stop with a clear error when a file of the saved split is missing or its bytes changed."""
    classes = list(scan_folder(data_dir))
    if classes != split.classes:
        raise DataError(f"{data_dir} has classes {classes}, the saved split has {split.classes}; "
                        "point --data-dir at the data the split was made from, or pass a new --split-file")
    for e in split.entries:
        path = data_dir / e["path"]
        if not path.is_file():
            raise DataError(f"{path} is in the saved split but missing from the data folder; "
                            "restore it, or pass a new --split-file to re-split")
        if path.stat().st_size != e["size"] or file_sha256(path) != e["sha256"]:
            raise DataError(f"{path} changed since the split was saved; "
                            "restore it, or pass a new --split-file to re-split")


def read_split(split_file: Path) -> Split:
    """Read a saved split file, of this or an older version of the format, without looking at the data."""
    if not split_file.is_file():
        raise DataError(f"no saved split at {split_file}; train a model first, or pass --split-file")
    try:
        meta = json.loads(split_file.read_text())
        if meta.get("format") != SPLIT_FORMAT:
            raise DataError(f"{split_file} is not a split file of this project; delete it or pass another --split-file")
        # Older files: their 'seed' drew the split; no per-class sizes (equal counts), no de-duplication, no groups.
        meta.setdefault("split_seed", meta.get("seed", 0))
        meta.setdefault("class_sizes", {c: meta["sizes"] for c in meta["classes"]})
        meta.setdefault("dedup", False)
        meta.setdefault("groups", [])
        split = Split(meta)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{split_file} is not a readable split file ({e}); delete it to re-split") from None
    return split


def load_split(split_file: Path, data_dir: Path) -> Split:
    """Read a saved split and verify the data folder still matches it."""
    split = read_split(split_file)
    verify_split(split, data_dir)
    _check_split_counts(split)
    return split


def _options_text(options: dict) -> str:
    flags = {"per_class": "--per-class", "sizes": "--split", "split_seed": "--split-seed"}
    return " ".join(f"{flags[k]} {','.join(f'{x:g}' for x in v) if k == 'sizes' else v}" for k, v in options.items())


def _reuse_split(split_file: Path, data_dir: Path, per_class: int, sizes: Sequence[float], split_seed: int,
                 dedup: bool, log=print) -> Split:
    """The saved split, when it was made with these options; else a clear error."""
    split = load_split(split_file, data_dir)
    wanted = {"per_class": per_class, "sizes": list(sizes), "split_seed": split_seed}
    saved = {k: split.split_seed if k == "split_seed" else split.meta[k] for k in wanted}
    if saved != wanted:
        differ = {k: v for k, v in saved.items() if v != wanted[k]}
        raise DataError(f"{split_file} was made with {_options_text(differ)}, not "
                        f"{_options_text({k: wanted[k] for k in differ})}; pass {_options_text(differ)} (or drop "
                        "those options) to reuse it, or pass a new --split-file")
    if split.meta["dedup"] != dedup:
        log(f"note: reusing {split_file}, made {'with' if split.meta['dedup'] else 'without'} de-duplication; "
            "pass a new --split-file to re-split")
    return split


def load_or_create_split(data_dir: Path, split_file: Path, per_class: int = 450, sizes: Sequence[float] = (300, 75, 75),
                         split_seed: int = 0, img_size: int = 256, workers: int = 2, log=print, dedup: bool = True,
                         near_threshold: int = 4,
                         max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Split, np.ndarray | None]:
    """Reuse the saved split after verifying the data against it, or create and save it.

    Creation is exclusive: of several processes starting together, one draws and saves the split while the
    others wait, then reuse it, or stop with a clear error when their options differ.
    Returns (split, pixels): pixels are the freshly decoded images when the split was just made, else None.
    """
    reuse = partial(_reuse_split, split_file, data_dir, per_class, sizes, split_seed, dedup, log)
    if split_file.exists():  # published whole by an atomic write, so reading needs no lock
        return reuse(), None
    with file_lock(split_file.with_name(f".{split_file.name}.lock"),
                   f"waiting for another process to finish drawing {split_file}", log):
        if split_file.exists():  # made by the process we waited for
            return reuse(), None
        split, pixels = create_split(data_dir, per_class, sizes, split_seed, img_size, workers, log, dedup,
                                     near_threshold, max_pixels)
        if not atomic_write_text(split_file, json.dumps(split.meta, indent=1), exclusive=True):
            return reuse(), None  # published meanwhile by a process that took no lock (another file system?)
    counts = {tuple(v) for v in split.meta["class_sizes"].values()}
    log(f"saved split to {split_file}: {len(split.classes)} classes, train/val/test per class "
        + (str(counts.pop()) if len(counts) == 1 else "proportional to each class"))
    return split, pixels


def cache_key(fields: dict) -> str:
    """A short hash of everything that changes a cache's content: any change gives another file name."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def key_file(path: Path) -> Path:
    """The JSON file next to a cache that records the fields its key was made of."""
    return path.with_name(path.name + ".key.json")


def save_cache_key(path: Path, fields: dict) -> None:
    """Record a cache's key fields; written before the cache, so every cache file has its record."""
    atomic_write_text(key_file(path), json.dumps(fields, indent=1, sort_keys=True) + "\n")


def _read_fields(file: Path) -> dict | None:
    try:
        fields = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    return fields if isinstance(fields, dict) else None


def _differences(old: dict, new: dict) -> list[str]:
    def short(v):
        return f"{v[:12]}..." if isinstance(v, str) and len(v) > 16 else v
    return [f"{k} {short(old.get(k))} -> {short(new.get(k))}" for k in sorted(new.keys() | old.keys())
            if old.get(k) != new.get(k)]


def cache_mismatch(path: Path, fields: dict) -> str:
    """Why the existing cache file at path cannot be trusted for fields ('' when its recorded key matches)."""
    recorded = _read_fields(key_file(path))
    if recorded is None:
        return f"has no readable key record {key_file(path).name}"
    diff = _differences(recorded, fields)
    return f"was made for other settings ({', '.join(diff)})" if diff else ""


def explain_miss(path: Path, fields: dict) -> str:
    """How fields differ from the nearest other cache of the same kind next to path ('' when there is none)."""
    diffs = []
    for other in path.parent.glob(f"*{path.suffix}.key.json"):
        recorded = _read_fields(other)
        if recorded is not None and recorded.get("cache") == fields.get("cache") and recorded != fields:
            diffs.append(_differences(recorded, fields))
    return f"; the nearest cache there differs in {', '.join(min(diffs, key=len))}" if diffs else ""


def pixel_cache_fields(split: Split, img_size: int) -> dict:
    """Everything that changes the pixel cache's content: the split's files and how they are decoded."""
    return {"cache": "pixels", "split": split.fingerprint, "img_size": int(img_size), "decode_version": DECODE_VERSION}


def cache_path(cache_dir: Path, split: Split, img_size: int) -> Path:
    """The pixel cache file for this split's exact file list, this image size and this decoder."""
    return cache_dir / f"pixels-{img_size}px-{cache_key(pixel_cache_fields(split, img_size))}.npy"


def _open_pixel_cache(path: Path, fields: dict, shape: tuple, log=print) -> np.ndarray | None:
    """Memory-map an existing pixel cache; None (after saying why) when it is unreadable, stale or the wrong shape."""
    problem = cache_mismatch(path, fields)
    if problem:
        log(f"pixel cache {path} {problem}; rebuilding it (it is derived from the images)")
        return None
    try:  # no pickles: an object array fails to memory-map instead of being unpickled
        images = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        log(f"pixel cache {path} is unreadable ({type(e).__name__}); rebuilding it (it is derived from the images)")
        return None
    if isinstance(images, np.ndarray) and images.shape == shape and images.dtype == np.uint8:
        return images
    if not isinstance(images, np.ndarray):
        images.close()  # an .npz archive
        log(f"pixel cache {path} is not a .npy array; rebuilding it (it is derived from the images)")
        return None
    log(f"pixel cache {path} holds {images.shape} {images.dtype}, not {shape} uint8; "
        "rebuilding it (it is derived from the images)")
    return None


def load_or_build_cache(data_dir: Path, split: Split, cache_dir: Path, img_size: int,
                        pixels: np.ndarray | None = None, workers: int = 2, log=print,
                        max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Memory-map the uint8 N x H x W x 3 cache of the split's images, decoding and writing it first if needed.

    The file name is a key of everything that changes the pixels; a cache that is unreadable, has the wrong
    shape or records another key is rebuilt (it is derived data), with a line saying which file and why.
    """
    path, fields = cache_path(cache_dir, split, img_size), pixel_cache_fields(split, img_size)
    n = len(split.entries)
    shape = (n, img_size, img_size, 3)
    if path.exists():
        images = _open_pixel_cache(path, fields, shape, log)
        if images is not None:
            return images
    if pixels is None:
        log(f"decoding {n} images into {path} (once){'' if path.exists() else explain_miss(path, fields)}")
        pixels = np.empty(shape, np.uint8)
        decoded = decode_many(split.paths(data_dir), img_size, workers, max_pixels)
        for i, (p, img) in enumerate(zip(split.paths(data_dir), decoded)):
            if img is None:
                raise DataError(f"{p} is in the saved split but can no longer be decoded: "
                                f"{undecodable_reason(p, max_pixels)}; restore it or re-split")
            pixels[i] = img

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object, so np.save does not append .npy to the name
            np.save(f, pixels, allow_pickle=False)

    path.unlink(missing_ok=True)  # so a kill after the key record never leaves a stale cache under it
    save_cache_key(path, fields)
    atomic_write(path, write)
    return np.load(path, mmap_mode="r", allow_pickle=False)


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


def to_device(images: np.ndarray, device: torch.device, max_fraction: float = 0.5) -> np.ndarray | torch.Tensor:
    """Move the whole uint8 cache onto a CUDA device when it takes under max_fraction of free memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if images.nbytes < max_fraction * free:
            return torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return images


class BatchLoader:
    """Yields (uint8 N x 3 x H x W, int64 labels) batches on the device from the cached pixels.

    `images` is the memory-mapped cache (batches are gathered, pinned on CUDA and copied without
    blocking), a tensor already resident on the device (see `to_device`), or a tensor of features.
    """

    def __init__(self, images: np.ndarray | torch.Tensor, labels: np.ndarray, indices: np.ndarray,
                 batch_size: int, device: torch.device, shuffle: bool = False,
                 generator: torch.Generator | None = None, drop_last: bool = False,
                 rank: int | None = None, world_size: int | None = None, sample_weights: np.ndarray | None = None):
        self.images, self.labels = images, torch.as_tensor(labels)
        self.indices = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        self.batch_size, self.device, self.shuffle = batch_size, device, shuffle
        self.generator, self.drop_last = generator, drop_last
        # Oversampling: each epoch draws len(indices) images with replacement, image i with weight sample_weights[i].
        self.sample_weights = None if sample_weights is None else torch.as_tensor(sample_weights, dtype=torch.double)
        # Under torchrun each process takes its slice of every global batch of batch_size x world_size
        # images, so N processes see exactly the batches one process with N times the batch would.
        self.rank = distributed.rank() if rank is None else rank
        self.world = distributed.world_size() if world_size is None else world_size

    def __len__(self) -> int:
        n, step = len(self.indices), self.batch_size * self.world
        return n // step if self.drop_last else math.ceil(n / step)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.indices
        # The same generator state in every process, so all draw the same order and take their own slices.
        if self.sample_weights is not None:
            picks = torch.multinomial(self.sample_weights, len(order), replacement=True, generator=self.generator)
            order = order[picks]
        elif self.shuffle:
            order = order[torch.randperm(len(order), generator=self.generator)]
        step = self.batch_size * self.world
        for b in range(len(self)):
            start = b * step + self.rank * self.batch_size
            idx = order[start:start + self.batch_size]
            if len(idx):
                yield self._gather(idx), self.labels[idx].to(self.device, non_blocking=True)

    def _gather(self, idx: torch.Tensor) -> torch.Tensor:
        if isinstance(self.images, torch.Tensor):  # resident images (N x H x W x 3) or cached features (N x D)
            x = self.images[idx.to(self.images.device)]
            return x.permute(0, 3, 1, 2) if x.dim() == 4 else x
        # Sorted reads are kinder to the memory map; the batch order is restored afterwards.
        sorted_idx, order = torch.sort(idx)
        x = torch.from_numpy(np.ascontiguousarray(self.images[sorted_idx.numpy()]))[torch.argsort(order)]
        if self.device.type == "cuda":
            x = x.pin_memory()
        return x.to(self.device, non_blocking=True).permute(0, 3, 1, 2)


def upscale_check(images: np.ndarray, crop: int) -> None:
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
