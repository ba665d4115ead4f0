"""The saved train/val/test split: the class folders, drawing the split (each group of near duplicates whole in one
subset), saving it once for every process, and checking the data against it."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from common.cli import DataError
from common.decode import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, decode_many, undecodable_reason
from common.duplicates import NEAR_THRESHOLD, dhash, duplicate_groups
from common.files import atomic_write_text, file_lock, file_sha256

SPLIT_FORMAT = "animals10-split/1"
SUBSETS = ("train", "val", "test")
# The assignment's data, the defaults of --per-class, --split and --img-size: 450 images per class split 300/75/75,
# cached at 256 x 256.
DEFAULT_PER_CLASS = 450
DEFAULT_SIZES = (300, 75, 75)
DEFAULT_IMG_SIZE = 256
GET_DATA_ADVICE = (
    "download the Kaggle dataset with "
    "`kaggle datasets download -d alessiocorrado99/animals10 --unzip -p data/animals10` "
    "and pass --data-dir data/animals10/raw-img (or set ANIMALS10_DIR)"
)


def parse_split_sizes(text: str, per_class: int) -> tuple[float, float, float]:
    """'300,75,75' (images per class, adding up to --per-class) or '0.7,0.15,0.15' (fractions of each class)."""
    try:
        sizes = tuple(float(v) for v in text.split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 3 or not all(math.isfinite(v) and v > 0 for v in sizes):
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
                 workers: int, log=print, dedup: bool = True, near_threshold: int = NEAR_THRESHOLD,
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


def split_lock(split_file: Path) -> Path:
    """The lock file beside a split file that its drawing holds."""
    return split_file.with_name(f".{split_file.name}.lock")


def load_or_create_split(data_dir: Path, split_file: Path, per_class: int = DEFAULT_PER_CLASS,
                         sizes: Sequence[float] = DEFAULT_SIZES, split_seed: int = 0, img_size: int = DEFAULT_IMG_SIZE,
                         workers: int = 2, log=print, dedup: bool = True,
                         near_threshold: int = NEAR_THRESHOLD,
                         max_pixels: int = DEFAULT_MAX_PIXELS,
                         check: Callable[[Split], object] | None = None) -> tuple[Split, np.ndarray | None]:
    """Reuse the saved split after verifying the data against it, or create and save it.

    Creation is exclusive: of several processes starting together, one draws and saves the split while the
    others wait, then reuse it, or stop with a clear error when their options differ.
    check(split) may refuse the split (raise) before a new one is saved, e.g. a batch larger than its training set.
    Returns (split, pixels): pixels are the freshly decoded images when the split was just made, else None.
    """
    check = check or (lambda split: None)

    def reuse() -> tuple[Split, None]:
        split = _reuse_split(split_file, data_dir, per_class, sizes, split_seed, dedup, log)
        check(split)
        return split, None

    if split_file.exists():  # published whole by an atomic write, so reading needs no lock
        return reuse()
    with file_lock(split_lock(split_file), f"waiting for another process to finish drawing {split_file}", log):
        if split_file.exists():  # made by the process we waited for
            return reuse()
        split, pixels = create_split(data_dir, per_class, sizes, split_seed, img_size, workers, log, dedup,
                                     near_threshold, max_pixels)
        check(split)
        if not atomic_write_text(split_file, json.dumps(split.meta, indent=1, allow_nan=False), exclusive=True):
            return reuse()  # published meanwhile by a process that took no lock (another file system?)
    counts = {tuple(v) for v in split.meta["class_sizes"].values()}
    log(f"saved split to {split_file}: {len(split.classes)} classes, train/val/test per class "
        + (str(counts.pop()) if len(counts) == 1 else "proportional to each class"))
    return split, pixels
