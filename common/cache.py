"""Derived-data caches named by a key of everything that changes their content, and the decode-once pixel cache."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from common.cli import DataError
from common.decode import DECODE_VERSION, DEFAULT_MAX_PIXELS, decode_many, undecodable_reason
from common.files import atomic_write, atomic_write_text
from common.split import Split


def cache_key(fields: dict) -> str:
    """A short hash of everything that changes a cache's content: any change gives another file name."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def key_file(path: Path) -> Path:
    """The JSON file next to a cache that records the fields its key was made of."""
    return path.with_name(path.name + ".key.json")


def save_cache_key(path: Path, fields: dict) -> None:
    """Record a cache's key fields; written before the cache, so every cache file has its record."""
    atomic_write_text(key_file(path), json.dumps(fields, indent=1, sort_keys=True, allow_nan=False) + "\n")


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
