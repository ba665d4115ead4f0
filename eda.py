"""Look at a folder of <class>/<images> before training and report what is wrong with it.

Examples:
    python eda.py --data-dir data/animals10/raw-img                    # report into runs/eda/raw-img/
    python eda.py --data-dir holdout/ --out-dir /tmp/eda-holdout
    python eda.py --data-dir data/animals10/raw-img --near-threshold 6 # looser near-duplicate match
    python eda.py --data-dir data/animals10/raw-img --split-file runs/split.json   # + leakage check of a split

It counts images per class; reads every image's size and colour mode from its header (PIL, no decode);
decodes every image once, small, with OpenCV (as training does) to find unreadable files and to hash
it; and finds exact duplicates (same sha256) and near duplicates (64-bit dhash within --near-threshold
bits), within and across classes. Duplicates across classes are label noise and leak between train
and test. With --split-file, it also reports the duplicate groups whose files fall into different subsets
of that saved split (a leakage check, e.g. of a split made elsewhere or with --no-dedup). Writes report.md,
eda.json, class_counts.png, sizes.png, samples.png and, when there are duplicates, duplicates.png into
--out-dir (default runs/eda/<folder name>/).
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import matplotlib.ticker as ticker
import numpy as np
from PIL import Image
from tqdm import tqdm

from common.cli import ArgumentParser, DataError, run_main
from common.data import display_name, resolve_data_dir
from common.decode import PNG_SIGNATURE, decode_image
from common.duplicates import NEAR_THRESHOLD, DuplicateGroup, dhash, duplicate_groups, hamming
from common.files import atomic_write_text, file_sha256
from common.markdown import markdown_table
from common.plots import plot_image_grid, save_figure
from common.split import SUBSETS, Split, read_split, scan_folder

MODE_NAMES = {
    "1": "black and white", "L": "grayscale", "LA": "grayscale + alpha", "P": "palette", "PA": "palette + alpha",
    "RGB": "colour", "RGBA": "colour + alpha", "CMYK": "CMYK", "YCbCr": "YCbCr", "I": "32-bit grayscale",
    "I;16": "16-bit grayscale", "RGB;16": "16-bit colour", "RGBA;16": "16-bit colour + alpha",
    "LA;16": "16-bit grayscale + alpha", "unknown": "header unreadable",
}
MAX_LISTED = 100  # groups or files listed in report.md; eda.json has them all
THUMBNAILS = {"tile": (2.2, 2.4), "fontsize": 7, "dpi": 100}  # sample and duplicate grids: many small tiles


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Exploratory data analysis of a <class>/<images> folder.")
    parser.add_argument("--data-dir", default=None,
                        help="folder of <class>/<images> (default: $ANIMALS10_DIR, else data/animals10/raw-img)")
    parser.add_argument("--out-dir", default=None, help="where the report goes (default: runs/eda/<folder name>)")
    parser.add_argument("--near-threshold", type=int, default=NEAR_THRESHOLD,
                        help="near duplicates: dhashes at most this many bits (of 64) apart")
    parser.add_argument("--split-file", default=None,
                        help="a saved split (e.g. runs/split.json): report the duplicate groups that straddle its "
                             "train, val and test subsets (leakage)")
    parser.add_argument("--tiny", type=int, default=64, help="images whose shorter side is below this many px are tiny")
    parser.add_argument("--decode-size", type=int, default=128, help="images are decoded once at this square size")
    parser.add_argument("--samples", type=int, default=5, help="sample images per class in samples.png")
    parser.add_argument("--max-pairs", type=int, default=8, help="duplicate pairs shown in duplicates.png")
    parser.add_argument("--seed", type=int, default=0, help="seed for choosing the sample images")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="decoding threads")
    return parser


def read_header(path: Path) -> tuple[int, int, str, bool] | None:
    """(width, height, colour mode, has transparency) from the header without decoding; None if PIL cannot read it."""
    try:
        with open(path, "rb") as f:
            head = f.read(25)
            f.seek(0)
            with Image.open(f) as im:
                mode = im.mode
                # PIL opens 16-bit colour PNGs as 8-bit modes; the bit-depth byte of the PNG header tells them apart.
                if head[:8] == PNG_SIGNATURE and head[24:25] == b"\x10" and ";16" not in mode:
                    mode += ";16"
                return im.width, im.height, mode, im.has_transparency_data
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def inspect_image(path: Path, size: int) -> tuple[dict, np.ndarray | None]:
    """One file's header facts, sha256 and dhash, and its size x size RGB decode (None when unreadable)."""
    width, height, mode, alpha = read_header(path) or (None, None, "unknown", False)
    rgb = decode_image(path, size)
    record = {"width": width, "height": height, "mode": mode, "transparency": alpha, "sha256": file_sha256(path),
              "dhash": None if rgb is None else dhash(rgb)}
    return record, rgb


def inspect_folder(data_dir: Path, found: dict[str, list[str]], size: int, workers: int,
                   keep: set[str]) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Inspect every image once on a thread pool: one record per file, and the decoded images of the paths in keep."""
    paths = [f"{cls}/{name}" for cls, files in found.items() for name in files]
    records, kept = [], {}
    # cv2 and hashlib release the GIL, so threads scale across cores.
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = pool.map(lambda p: inspect_image(data_dir / p, size), paths)
        for path, (record, rgb) in zip(paths, tqdm(results, total=len(paths), desc="inspecting", dynamic_ncols=True)):
            records.append({"path": path, "class": path.split("/")[0], **record})
            if path in keep and rgb is not None:
                kept[path] = rgb
    return records, kept


def find_duplicates(paths: Sequence[str], sha256s: Sequence[str], hashes: Sequence[int | None], threshold: int,
                    components: Sequence[DuplicateGroup] | None = None) -> list[dict]:
    """Groups of exact duplicates (same sha256) and of near duplicates (dhash within threshold bits).

    A file's class is its parent folder's name (paths like 'cane/x.jpg', or full paths). hashes may hold
    None for unreadable files; they can only be exact duplicates. A near group is a connected set of at
    least two distinct contents (common.duplicates.duplicate_groups, which the split keeps whole; pass its result
    as components to reuse it), and lists every file of those contents, exact copies included. Each group is
    a dict: kind ('exact' or 'near'), files (sorted), classes, cross_class, and max_bits (the largest distance
    of a joining pair). Exact groups come first, then near ones; within each, cross-class groups, then larger.
    """
    classes = [Path(p).parent.name for p in paths]
    copies = defaultdict(list)
    for i, sha in enumerate(sha256s):
        copies[sha].append(i)

    def group(kind: str, members: Sequence[int], max_bits: int) -> dict:
        names = sorted({classes[i] for i in members})
        return {"kind": kind, "files": sorted(str(paths[i]) for i in members), "classes": names,
                "cross_class": len(names) > 1, "max_bits": max_bits}

    if components is None:
        components = duplicate_groups(sha256s, hashes, threshold)
    groups = [group("exact", members, 0) for members in copies.values() if len(members) > 1]
    groups += [group("near", g.members, g.max_bits) for g in components if g.contents > 1]
    groups.sort(key=lambda g: (g["kind"] != "exact", not g["cross_class"], -len(g["files"]), g["files"]))
    return groups


def split_leakage(split: Split, split_file: Path, records: list[dict], components: Sequence[DuplicateGroup],
                  data_dir: Path) -> dict:
    """The duplicate groups (exact and near, joined) whose files in a saved split lie in more than one subset.

    records are inspect_folder's, in the order the components index; the split's files must be in the
    folder with the bytes they had when it was made.
    """
    by_path = {r["path"]: r for r in records}
    for e in split.entries:
        if by_path.get(e["path"], {}).get("sha256") != e["sha256"]:
            raise DataError(f"{e['path']} of {split_file} is missing from {data_dir} or changed since the split was "
                            "made; point --data-dir at the data the split was made from")
    subset_of = {e["path"]: e["subset"] for e in split.entries}
    in_split = [[records[i]["path"] for i in g.members if records[i]["path"] in subset_of] for g in components]
    straddling = []
    for g, files in zip(components, in_split):
        if len({subset_of[f] for f in files}) > 1:
            names = sorted({f.split("/")[0] for f in files})
            straddling.append({"files": {f: subset_of[f] for f in sorted(files)}, "classes": names,
                               "cross_class": len(names) > 1, "max_bits": g.max_bits})
    straddling.sort(key=lambda g: (not g["cross_class"], -len(g["files"]), list(g["files"])))
    pairs = Counter("+".join(s for s in SUBSETS if s in g["files"].values()) for g in straddling)
    test_leaks = sum(sub == "test" for g in straddling if "train" in g["files"].values() for sub in g["files"].values())
    group_aware = bool(split.meta["dedup"]) and "exact_copies_dropped" in split.meta  # made by a group-aware version
    return {"split_file": str(split_file), "images": len(split.entries), "group_aware": group_aware,
            "groups": sum(len(files) > 1 for files in in_split), "straddling_groups": len(straddling),
            "straddling_images": sum(len(g["files"]) for g in straddling), "by_subsets": dict(sorted(pairs.items())),
            "test_images_with_train_duplicate": test_leaks, "straddling": straddling}


def _min_median_max(values: np.ndarray) -> dict:
    return {"min": float(values.min()), "median": float(np.median(values)), "max": float(values.max())}


def size_stats(records: list[dict], classes: list[str], tiny: int) -> dict[str, dict]:
    """Per class and over 'all': min/median/max width, height and aspect ratio (w/h), and the tiny images.

    Files whose header PIL cannot read are left out ('n' counts the rest); 'all' also has aspect percentiles.
    """
    sized = [r for r in records if r["width"] is not None]
    stats = {}
    for name in [*classes, "all"]:
        wh = np.array([(r["width"], r["height"]) for r in sized if name == "all" or r["class"] == name],
                      dtype=np.float64).reshape(-1, 2)
        if not len(wh):
            stats[name] = {"n": 0}
            continue
        w, h = wh[:, 0], wh[:, 1]
        n_tiny = int((np.minimum(w, h) < tiny).sum())
        stats[name] = {"n": len(wh), "width": _min_median_max(w), "height": _min_median_max(h),
                       "aspect": _min_median_max(w / h), "tiny": n_tiny, "tiny_share": n_tiny / len(wh)}
        if name == "all":
            stats[name]["aspect_percentiles"] = {str(p): float(np.percentile(w / h, p)) for p in (5, 25, 50, 75, 95)}
    return stats


def mode_counts(records: list[dict], classes: list[str]) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """Colour modes per class and over 'all' (most common first), and the images with transparency likewise."""
    modes = {name: Counter() for name in [*classes, "all"]}
    transparency = dict.fromkeys([*classes, "all"], 0)
    for r in records:
        for name in (r["class"], "all"):
            modes[name][r["mode"]] += 1
            transparency[name] += r["transparency"]
    return {name: dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))) for name, c in modes.items()}, transparency


def plot_class_counts(counts: dict[str, int], path: Path) -> None:
    """Bar chart of images per class."""
    names = [display_name(c) for c in counts]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(counts) + 2), 4))
    bars = ax.bar(range(len(names)), list(counts.values()), color="tab:blue")
    ax.bar_label(bars, fontsize=8)
    ax.margins(y=0.1)  # room for the labels
    ax.set(ylabel="images", title=f"images per class ({sum(counts.values())} in all)")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)


def plot_sizes(records: list[dict], classes: list[str], tiny: int, path: Path) -> None:
    """Width against height per class (log axes), and the histogram of aspect ratios."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 5))
    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    sized = [r for r in records if r["width"]]
    # One scatter in shuffled order, so that no class is painted over by the classes drawn after it.
    order = np.random.default_rng(0).permutation(len(sized))
    a.scatter([sized[i]["width"] for i in order], [sized[i]["height"] for i in order], s=5, alpha=0.4,
              c=[colours(classes.index(sized[i]["class"]) % colours.N) for i in order], edgecolors="none")
    for k, cls in enumerate(classes):
        a.scatter([], [], s=20, color=colours(k % colours.N), label=display_name(cls))  # legend entries only
    a.axvline(tiny, color="red", ls="--", lw=1)
    a.axhline(tiny, color="red", ls="--", lw=1, label=f"{tiny} px (tiny below)")
    a.set(xscale="log", yscale="log", xlabel="width (px, log scale)", ylabel="height (px, log scale)",
          title="image sizes")
    for axis in (a.xaxis, a.yaxis):
        axis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
        axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(ticker.NullFormatter())
    a.grid(alpha=0.3)
    a.legend(fontsize=7, loc="upper left")
    aspect = np.array([r["width"] / r["height"] for r in sized])
    if len(aspect):
        lo, hi = min(aspect.min(), 0.5), max(aspect.max(), 2.0)
        b.hist(aspect, bins=np.geomspace(lo, hi, 60), color="tab:blue")
    b.axvline(1, color="gray", ls="--", lw=1)
    b.set(xscale="log", xlabel="aspect ratio, width : height (log scale)", ylabel="images", title="aspect ratios")
    b.xaxis.set_major_locator(ticker.FixedLocator([1 / 3, 1 / 2, 3 / 4, 1, 4 / 3, 2, 3]))
    b.xaxis.set_major_formatter(ticker.FixedFormatter(["1:3", "1:2", "3:4", "1:1", "4:3", "2:1", "3:1"]))
    b.xaxis.set_minor_formatter(ticker.NullFormatter())
    b.grid(alpha=0.3)
    save_figure(fig, path)


def _size_text(record: dict) -> str:
    return f"{record['width']}x{record['height']} {record['mode']}" if record["width"] else record["mode"]


def plot_samples(sampled: dict[str, list[str]], images: dict[str, np.ndarray], by_path: dict[str, dict],
                 size: int, seed: int, path: Path) -> None:
    """Rows of sample images, one row per class; blank where a class has fewer, grey where a file is unreadable."""
    cols = max(1, *(len(v) for v in sampled.values()))
    tiles, captions = [], []
    for cls, chosen in sampled.items():
        for p in chosen:
            r = by_path[p]
            tiles.append(images.get(p, np.full((size, size, 3), 128, np.uint8)))
            captions.append(f"{display_name(cls)}: {_size_text(r)}" + ("" if p in images else "\nunreadable"))
        tiles += [np.full((size, size, 3), 255, np.uint8)] * (cols - len(chosen))
        captions += [""] * (cols - len(chosen))
    plot_image_grid(tiles, captions, path, f"{cols} random images per class (seed {seed}), squashed to square as "
                    "training decodes them; captions: original size and mode", cols, **THUMBNAILS)


def plot_duplicates(groups: list[dict], by_path: dict[str, dict], data_dir: Path, size: int, max_pairs: int,
                    path: Path) -> None:
    """Pairs from the first duplicate groups, cross-class ones first: two pairs per row."""
    order = sorted(groups, key=lambda g: (not g["cross_class"], g["kind"] != "near"))[:max_pairs]
    tiles, captions = [], []
    for g in order:
        first = g["files"][0]
        # Show what makes the group a problem: a file from another class, else a different (not byte-equal) file.
        other = next((f for f in g["files"] if by_path[f]["class"] != by_path[first]["class"]), None) or next(
            (f for f in g["files"] if by_path[f]["sha256"] != by_path[first]["sha256"]), g["files"][1])
        if by_path[first]["sha256"] == by_path[other]["sha256"]:
            relation = "same bytes"
        else:
            relation = f"{int(hamming(by_path[first]['dhash'], np.array([by_path[other]['dhash']]))[0])} bits apart"
        for f in (first, other):
            r = by_path[f]
            img = decode_image(data_dir / f, size)  # a few files decoded again: keeping every thumbnail costs GBs
            tiles.append(img if img is not None else np.full((size, size, 3), 128, np.uint8))
            name = Path(f).name
            name = name if len(name) <= 26 else name[:23] + "..."
            captions.append(f"{display_name(r['class'])}: {name}\n{_size_text(r)}"
                            + (f"  ({g['kind']}, {relation})" if f == other else ""))
    n_cross = sum(g["cross_class"] for g in groups)
    plot_image_grid(tiles, captions, path, f"duplicate pairs from {len(order)} of {len(groups)} groups ("
                    + (f"{n_cross} across classes, shown first)" if n_cross else "none across classes)"), 4,
                    **THUMBNAILS)


def duplicate_summary(groups: list[dict]) -> dict:
    """Group, cross-class group and file counts per kind."""
    out = {}
    for kind in ("exact", "near"):
        of_kind = [g for g in groups if g["kind"] == kind]
        out[kind] = {"groups": len(of_kind), "cross_class_groups": sum(g["cross_class"] for g in of_kind),
                     "files": len({f for g in of_kind for f in g["files"]}),
                     "cross_class_files": len({f for g in of_kind if g["cross_class"] for f in g["files"]})}
    out["exact"]["redundant_copies"] = sum(len(g["files"]) - 1 for g in groups if g["kind"] == "exact")
    return out


def _mode_label(mode: str) -> str:
    name = MODE_NAMES.get(mode, mode)
    return mode if name == mode else f"{mode} ({name})"


def _by_class(counts: dict[str, int], classes: list[str], shown: int = 3) -> str:
    per_class = sorted(((n, c) for c in classes if (n := counts.get(c, 0))), reverse=True)
    text = ", ".join(f"{display_name(c)} {n}" for n, c in per_class[:shown])
    return text + (f" and {len(per_class) - shown} more classes" if len(per_class) > shown else "")


def findings(result: dict) -> list[str]:
    """The few lines at the top of the report: what is wrong with the data."""
    counts = result["class_counts"]
    big, small = max(counts, key=counts.get), min(counts, key=counts.get)
    dup = result["duplicates"]["summary"]
    ex, near = dup["exact"], dup["near"]
    balance = (f"{counts[big]} in each" if counts[big] == counts[small] else
               f"largest {display_name(big)} ({counts[big]}), smallest {display_name(small)} ({counts[small]}): "
               f"imbalance {counts[big] / counts[small]:.1f}x")
    lines = [f"{result['n_images']} images in {len(counts)} classes; {balance}",
             f"{len(result['unreadable'])} unreadable file(s) (OpenCV cannot decode them; training skips them)",
             f"{ex['groups']} exact-duplicate group(s) ({ex['files']} files, "
             f"{ex['redundant_copies']} redundant copies), "
             f"{ex['cross_class_groups']} across classes",
             f"{near['groups']} near-duplicate group(s) (dhash within {result['near_threshold']} of 64 bits; "
             f"{near['files']} files), {near['cross_class_groups']} across classes"]
    n_cross = ex["cross_class_groups"] + near["cross_class_groups"]
    if n_cross:
        lines.append(f"**{n_cross} duplicate group(s) span classes: "
                     "label noise, and they leak between train and test**")
    if result.get("split_leakage"):
        lines.append(_leakage_line(result["split_leakage"]))
    # Which classes a rare mode sits in matters: a mode (or format) peculiar to one class is a shortcut to learn.
    modes, classes, alpha = result["modes"], result["classes"], result["transparency"]
    other = [f", {n} {_mode_label(m)} in {_by_class({c: modes[c].get(m, 0) for c in classes}, classes)}"
             for m, n in modes["all"].items() if m != "RGB"]
    lines.append(f"colour modes: {modes['all'].get('RGB', 0)} RGB" + "".join(other)
                 + f"; {alpha['all']} with transparency" + (f" in {_by_class(alpha, classes)}" if alpha["all"] else ""))
    s = result["sizes"]["all"]
    if s["n"]:
        p = s["aspect_percentiles"]
        lines.append(f"sizes: width {s['width']['min']:.0f}-{s['width']['max']:.0f} px, height "
                     f"{s['height']['min']:.0f}-{s['height']['max']:.0f} px (median {s['width']['median']:.0f}x"
                     f"{s['height']['median']:.0f}); {s['tiny']} tiny (shorter side < {result['tiny']} px); "
                     f"aspect ratio {p['5']:.2f}-{p['95']:.2f} (5-95%), "
                     f"{s['aspect']['min']:.2f}-{s['aspect']['max']:.2f} in all")
    return lines


def _leakage_line(leak: dict) -> str:
    """The finding about a saved split: how many duplicate groups straddle its subsets, with an example."""
    head = f"split {leak['split_file']} ({leak['images']} images{', group-aware' if leak['group_aware'] else ''}): "
    n = leak["straddling_groups"]
    if not n:
        return head + f"no duplicate group straddles train/val/test ({leak['groups']} group(s), each within one subset)"
    g = leak["straddling"][0]
    example = " ~ ".join(f"{f} ({sub})" for f, sub in g["files"].items())
    by = ", ".join(f"{k} {v}" for k, v in leak["by_subsets"].items())
    return (f"**{head}{n} of its {leak['groups']} duplicate group(s) straddle train/val/test ({by}; "
            f"{leak['straddling_images']} images); {leak['test_images_with_train_duplicate']} test image(s) have a "
            f"duplicate in train; e.g. {example}**")


def _listed(items: list[str]) -> list[str]:
    lines = [f"- {item}" for item in items[:MAX_LISTED]]
    if len(items) > MAX_LISTED:
        lines.append(f"- ... and {len(items) - MAX_LISTED} more in eda.json")
    return lines or ["none"]


def _group_lines(groups: list[dict]) -> list[str]:
    return _listed([f"{g['kind']}, {len(g['files'])} files ({', '.join(display_name(c) for c in g['classes'])}"
                    + (f"; joined at up to {g['max_bits']} bits" if g["kind"] == "near" else "") + "): "
                    + ", ".join(f"`{f}`" for f in g["files"]) for g in groups])


def _leakage_section(result: dict) -> list[str]:
    leak = result.get("split_leakage")
    if not leak:
        return []
    return ["## Leakage across the split", "",
            f"Duplicate groups (exact, and near within {result['near_threshold']} bits, joined transitively) whose "
            f"files in `{leak['split_file']}` lie in different subsets: a test or validation image with a copy in "
            "another subset. A group-aware split (the default) keeps every group in one subset; groups found here "
            "with another --near-threshold or --decode-size can still differ slightly.", "",
            _leakage_line(leak), "",
            *_listed([", ".join(f"`{f}` ({sub})" for f, sub in g["files"].items())
                      + (f" (classes {', '.join(display_name(c) for c in g['classes'])})" if g["cross_class"] else "")
                      for g in leak["straddling"]]), ""]


def _min_median_max_text(s: dict, key: str, fmt: str) -> str:
    return "-" if not s["n"] else "/".join(format(s[key][k], fmt) for k in ("min", "median", "max"))


def markdown_report(result: dict, figures: list[str]) -> str:
    """report.md: findings first, then per-class tables, duplicate and unreadable lists, and the figures."""
    classes, total = result["classes"], result["n_images"]
    counts, sizes, modes = result["class_counts"], result["sizes"], result["modes"]
    groups = result["duplicates"]["groups"]
    rows = [*classes, "all"]
    names = {**{c: display_name(c) for c in classes}, "all": "**all**"}
    md = [f"# Data report: {result['data_dir']}", "",
          f"Inspected {total} images in {result['seconds']:.0f} s. Paths are relative to `{result['data_dir']}`.", "",
          "## Found", "", *[f"- {line}" for line in result["findings"]], "",
          "## Images per class", "",
          markdown_table(["class", "folder", "images", "share"],
                         [[names[c], c, counts[c], f"{counts[c] / total:.1%}"] for c in classes]), "",
          "![images per class](class_counts.png)", "",
          "## Duplicates across classes", "",
          "The same picture under two labels: label noise, and a leak between train and test when the copies "
          "land in different subsets.", "",
          *_group_lines([g for g in groups if g["cross_class"]]), "",
          *_leakage_section(result),
          "## Unreadable files", "", *_listed([f"`{p}`" for p in result["unreadable"]]), "",
          "## Image sizes", "",
          f"From the file headers; tiny = shorter side below {result['tiny']} px; aspect ratio = width / height.", "",
          markdown_table(["class", "headers read", "width min/median/max", "height min/median/max",
                          "aspect min/median/max", "tiny"],
                         [[names[c], sizes[c]["n"], _min_median_max_text(sizes[c], "width", ".0f"),
                           _min_median_max_text(sizes[c], "height", ".0f"),
                           _min_median_max_text(sizes[c], "aspect", ".2f"),
                           f"{sizes[c].get('tiny', 0)} ({sizes[c].get('tiny_share', 0):.1%})"] for c in rows]), ""]
    if sizes["all"]["n"]:
        md += ["Aspect ratio percentiles: "
               + ", ".join(f"{k}%: {v:.2f}" for k, v in sizes["all"]["aspect_percentiles"].items()), ""]
    md += ["![sizes](sizes.png)", "",
           "## Colour modes", "",
           "From the file headers (PIL modes; `;16` marks 16-bit PNGs). Decoding turns every mode into 8-bit RGB; "
           "transparency is composited on white.", "",
           markdown_table(["class", *[_mode_label(m) for m in modes["all"]], "with transparency"],
                          [[names[c], *[modes[c].get(m, 0) for m in modes["all"]], result["transparency"][c]]
                           for c in rows]), "",
           "## Duplicates within a class", "",
           f"Exact: same bytes (sha256). Near: dhash of the decoded image within {result['near_threshold']} of 64 "
           "bits (a re-encoded copy differs by 0-2); groups join pairs transitively.", "",
           *_group_lines([g for g in groups if not g["cross_class"]]), ""]
    if "duplicates.png" in figures:
        md += ["![duplicate pairs](duplicates.png)", ""]
    md += ["## Samples", "", "![samples](samples.png)", ""]
    return "\n".join(md)


def main(args) -> dict:
    start = time.perf_counter()
    data_dir = resolve_data_dir(args.data_dir)
    found = scan_folder(data_dir)
    split = read_split(Path(args.split_file)) if args.split_file else None  # a bad file stops us before the work
    out = Path(args.out_dir) if args.out_dir else Path("runs/eda") / data_dir.resolve().name
    classes = list(found)
    rng = np.random.default_rng(args.seed)
    sampled = {cls: [f"{cls}/{files[i]}" for i in sorted(rng.choice(len(files), min(args.samples, len(files)),
                                                                        replace=False))]
               for cls, files in found.items()}
    records, thumbs = inspect_folder(data_dir, found, args.decode_size, args.workers,
                                     {p for chosen in sampled.values() for p in chosen})
    by_path = {r["path"]: r for r in records}
    paths, shas, hashes = ([r[k] for r in records] for k in ("path", "sha256", "dhash"))
    components = duplicate_groups(shas, hashes, args.near_threshold)
    groups = find_duplicates(paths, shas, hashes, args.near_threshold, components)
    leakage = split_leakage(split, Path(args.split_file), records, components, data_dir) if split else None
    modes, transparency = mode_counts(records, classes)
    result = {"data_dir": str(data_dir), "n_images": len(records), "classes": classes,
              "display_names": {c: display_name(c) for c in classes},
              "class_counts": {c: len(files) for c, files in found.items()},
              "tiny": args.tiny, "sizes": size_stats(records, classes, args.tiny),
              "modes": modes, "transparency": transparency,
              "unreadable": [r["path"] for r in records if r["dhash"] is None],
              "near_threshold": args.near_threshold,
              "duplicates": {"summary": duplicate_summary(groups), "groups": groups}, "split_leakage": leakage}

    figures = ["class_counts.png", "sizes.png", "samples.png"]
    plot_class_counts(result["class_counts"], out / "class_counts.png")
    plot_sizes(records, classes, args.tiny, out / "sizes.png")
    plot_samples(sampled, thumbs, by_path, args.decode_size, args.seed, out / "samples.png")
    if groups:
        plot_duplicates(groups, by_path, data_dir, args.decode_size, args.max_pairs, out / "duplicates.png")
        figures.append("duplicates.png")
    else:
        (out / "duplicates.png").unlink(missing_ok=True)  # a stale one from an earlier run would mislead
    result["seconds"] = time.perf_counter() - start
    result["findings"] = findings(result)
    atomic_write_text(out / "eda.json", json.dumps(result, indent=1, allow_nan=False))
    atomic_write_text(out / "report.md", markdown_report(result, figures))
    print("\n".join(result["findings"]))
    print(f"wrote report.md, eda.json, {', '.join(figures)} to {out}")
    return result


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())
