"""Near-duplicate images: a perceptual hash (dhash), and the groups of files joined by equal bytes or near hashes."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

NEAR_THRESHOLD = 4  # dhash bits within which images count as near duplicates, by default (the split's and eda.py's)


def dhash(rgb: np.ndarray) -> int:
    """64-bit difference hash of an RGB image: near-identical images (re-encoded, resized) get near hashes."""
    gray = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (9, 8), interpolation=cv2.INTER_AREA)
    bits = (gray[:, 1:] > gray[:, :-1]).flatten()
    return int(np.packbits(bits).view(">u8")[0])


def hamming(a: int, hashes: np.ndarray) -> np.ndarray:
    """Bit differences between one 64-bit hash and an array of them."""
    x = np.bitwise_xor(hashes.astype(np.uint64), np.uint64(a))
    return np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(1)


def near_pairs(hashes: np.ndarray, threshold: int, chunk: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs i < j of 64-bit hashes at most threshold bits apart (as `hamming` counts), as (i, j, bits).

    Exhaustive and vectorised: a chunk of rows against every later hash at a time, so memory stays at
    chunk x n and 26,000 hashes take a second or two.
    """
    h = np.asarray(hashes, dtype=np.uint64)
    parts = [(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.uint8))]
    for lo in range(0, len(h), chunk):
        bits = np.bitwise_count(h[lo:lo + chunk, None] ^ h[None, lo:])
        i, j = np.nonzero(bits <= threshold)
        upper = i < j  # column j stands for hash lo + j, row i for hash lo + i
        parts.append((lo + i[upper], lo + j[upper], bits[i[upper], j[upper]]))
    i, j, bits = (np.concatenate(p) for p in zip(*parts))
    return i, j, bits


@dataclass
class DuplicateGroup:
    """A connected set of duplicate files: their indices (sorted), how many distinct contents (sha256) they
    hold, and the largest dhash distance of a pair that joined them (0 for byte-identical copies only)."""
    members: list[int]
    contents: int
    max_bits: int


def duplicate_groups(sha256s: Sequence[str], hashes: Sequence[int | None], threshold: int) -> list[DuplicateGroup]:
    """Groups of at least two files joined by equal bytes (sha256) or by dhashes within threshold bits, in any class.

    Union-find over one representative per content, joined pair by pair, so a group's ends can be further
    apart than threshold. hashes may hold None (unreadable files), which join only by their bytes. The
    split keeps each group whole in one subset; eda.py reports them. Groups come in order of first member.
    """
    copies: dict[str, list[int]] = defaultdict(list)
    for i, sha in enumerate(sha256s):
        copies[sha].append(i)
    contents = list(copies.values())
    hashed = [k for k, members in enumerate(contents) if hashes[members[0]] is not None]
    a, b, bits = near_pairs(np.array([hashes[contents[k][0]] for k in hashed], dtype=np.uint64), threshold)
    parent = list(range(len(contents)))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for x, y in zip(a.tolist(), b.tolist()):
        parent[root(hashed[x])] = root(hashed[y])
    max_bits: dict[int, int] = defaultdict(int)
    for x, d in zip(a.tolist(), bits.tolist()):
        max_bits[root(hashed[x])] = max(max_bits[root(hashed[x])], d)
    components: dict[int, list[int]] = defaultdict(list)
    for k in range(len(contents)):
        components[root(k)].append(k)
    groups = [DuplicateGroup(sorted(i for k in ks for i in contents[k]), len(ks), max_bits[r])
              for r, ks in components.items() if sum(len(contents[k]) for k in ks) > 1]
    return sorted(groups, key=lambda g: g.members[0])
