"""eda.py: counts, sizes, colour modes, unreadable files, exact and near duplicates, outputs and refusals."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import eda
from common.cli import DataError
from common.duplicates import hamming, near_pairs
from common.split import load_or_create_split
from conftest import ROOT, make_dataset


def smooth_image(seed: int, size: int = 96) -> np.ndarray:
    """A photo-like BGR image (smooth blobs), whose dhash a lossy re-encode barely changes."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return cv2.GaussianBlur(cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC), (0, 0), 3)


def run_eda(data: Path, out: Path, *extra: str) -> dict:
    return eda.main(eda.get_args_parser().parse_args(
        ["--data-dir", str(data), "--out-dir", str(out), "--workers", "2", *extra]))


@pytest.fixture(scope="module")
def problems(tmp_path_factory) -> tuple[Path, Path, dict]:
    """10 classes x 20 synthetic images plus one of each problem, and the EDA of it."""
    root = tmp_path_factory.mktemp("eda")
    data = make_dataset(root / "raw-img")
    shutil.copyfile(data / "cane" / "img000.jpg", data / "gatto" / "copy_of_dog.jpg")    # exact, across classes
    shutil.copyfile(data / "ragno" / "img001.jpg", data / "ragno" / "img001_copy.jpg")   # exact, same class
    smooth = smooth_image(1)
    cv2.imwrite(str(data / "pecora" / "smooth.png"), smooth)                             # near, same class
    cv2.imwrite(str(data / "pecora" / "smooth_q70.jpg"), smooth, [cv2.IMWRITE_JPEG_QUALITY, 70])
    other = smooth_image(2)
    cv2.imwrite(str(data / "mucca" / "cow.png"), other)                                  # near, across classes
    cv2.imwrite(str(data / "cavallo" / "cow_again.jpg"), other, [cv2.IMWRITE_JPEG_QUALITY, 70])
    (data / "farfalla" / "broken.jpg").write_bytes(np.random.default_rng(0).bytes(3000))
    (data / "farfalla" / "empty.png").write_bytes(b"")
    cv2.imwrite(str(data / "elefante" / "gray.png"), smooth_image(3)[..., 0])
    Image.fromarray(np.dstack([smooth_image(4), np.full((96, 96), 128, np.uint8)])).save(
        data / "elefante" / "alpha.png")
    Image.new("CMYK", (64, 40), (0, 100, 200, 0)).save(data / "gallina" / "cmyk.jpg")
    cv2.imwrite(str(data / "gallina" / "deep.png"), smooth_image(5).astype(np.uint16) * 257)
    cv2.imwrite(str(data / "scoiattolo" / "tiny.png"), smooth_image(6, 20))
    out = root / "out"
    return data, out, run_eda(data, out)


def groups_with(result: dict, *files: str) -> list[dict]:
    return [g for g in result["duplicates"]["groups"] if set(files) <= set(g["files"])]


def test_exact_duplicates_within_and_across_classes(problems):
    _, _, result = problems
    [cross] = groups_with(result, "cane/img000.jpg", "gatto/copy_of_dog.jpg")
    assert cross["kind"] == "exact" and cross["cross_class"] and cross["classes"] == ["cane", "gatto"]
    [same] = groups_with(result, "ragno/img001.jpg", "ragno/img001_copy.jpg")
    assert same["kind"] == "exact" and not same["cross_class"]
    summary = result["duplicates"]["summary"]["exact"]
    assert summary == {"groups": 2, "cross_class_groups": 1, "files": 4, "cross_class_files": 2, "redundant_copies": 2}


def test_reencoded_copies_are_near_duplicates(problems):
    _, _, result = problems
    [same] = groups_with(result, "pecora/smooth.png", "pecora/smooth_q70.jpg")
    assert same["kind"] == "near" and not same["cross_class"] and same["max_bits"] <= 2
    [cross] = groups_with(result, "mucca/cow.png", "cavallo/cow_again.jpg")
    assert cross["kind"] == "near" and cross["cross_class"] and cross["classes"] == ["cavallo", "mucca"]
    # Nothing else: the synthetic class images and the other problem files are all different pictures.
    assert len(result["duplicates"]["groups"]) == 4
    assert result["duplicates"]["summary"]["near"]["cross_class_groups"] == 1


def test_unreadable_files_are_listed(problems):
    _, _, result = problems
    assert result["unreadable"] == ["farfalla/broken.jpg", "farfalla/empty.png"]
    assert result["modes"]["farfalla"]["unknown"] == 2


def test_colour_modes_are_counted_per_class(problems):
    _, _, result = problems
    modes = result["modes"]
    assert modes["elefante"]["L"] == 1 and modes["elefante"]["RGBA"] == 1
    assert result["transparency"]["elefante"] == result["transparency"]["all"] == 1
    assert modes["gallina"]["CMYK"] == 1 and modes["gallina"]["RGB;16"] == 1
    assert modes["all"]["RGB"] == 200 + 2 + 4 + 1  # make_dataset, the exact copies, the near pairs, the tiny image
    assert sum(modes["all"].values()) == result["n_images"] == 213
    assert result["sizes"]["scoiattolo"]["tiny"] == 20 + 1  # 48 px synthetic images and tiny.png
    assert result["sizes"]["all"]["tiny"] == 211 - 7  # all but the 96 px problem files
    text = "\n".join(result["findings"])
    assert "2 unreadable" in text and "1 L (grayscale) in elephant 1" in text and "1 CMYK in chicken 1" in text
    assert "1 with transparency in elephant 1" in text


def test_every_output_is_written(problems):
    _, out, result = problems
    for name in ("class_counts.png", "sizes.png", "samples.png", "duplicates.png"):
        img = cv2.imread(str(out / name))
        assert img is not None and img.shape[0] > 100 and img.shape[1] > 100, name
    assert json.loads((out / "eda.json").read_text()) == json.loads(json.dumps(result))
    report = (out / "report.md").read_text()
    assert "2 exact-duplicate group(s)" in report and "`gatto/copy_of_dog.jpg`" in report
    assert "`farfalla/broken.jpg`" in report and "![duplicate pairs](duplicates.png)" in report
    # The cross-class section comes before everything but the findings and the counts.
    assert report.index("## Duplicates across classes") < report.index("## Image sizes")


def test_uneven_classes_sizes_and_default_out_dir(tmp_path, monkeypatch):
    data = tmp_path / "pets"
    make_dataset(data, classes=["a"], per_class=5, size=40, seed=1)
    make_dataset(data, classes=["b"], per_class=6, size=80, seed=2)
    for i in range(2):
        cv2.imwrite(str(data / "b" / f"wide{i}.png"), cv2.resize(smooth_image(10 + i), (90, 30)))  # 90 wide, 30 high
    make_dataset(data, classes=["c"], per_class=12, size=70, seed=3)
    monkeypatch.chdir(tmp_path)
    result = eda.main(eda.get_args_parser().parse_args(["--data-dir", str(data), "--workers", "2"]))
    out = tmp_path / "runs" / "eda" / "pets"
    assert (out / "report.md").is_file() and (out / "eda.json").is_file()
    assert not (out / "duplicates.png").exists() and result["duplicates"]["groups"] == []
    assert result["class_counts"] == {"a": 5, "b": 8, "c": 12}
    s = result["sizes"]
    assert s["a"]["width"] == s["a"]["height"] == {"min": 40, "median": 40, "max": 40} and s["a"]["tiny"] == 5
    assert s["b"]["width"] == {"min": 80, "median": 80, "max": 90}
    assert s["b"]["height"] == {"min": 30, "median": 80, "max": 80}
    assert s["b"]["aspect"] == {"min": 1, "median": 1, "max": 3} and s["b"]["tiny"] == 2
    assert s["b"]["tiny_share"] == pytest.approx(0.25)
    assert s["c"]["tiny"] == 0 and s["all"]["n"] == 25 and s["all"]["width"]["max"] == 90
    assert "smallest a (5)" in result["findings"][0] and "imbalance 2.4x" in result["findings"][0]


def test_near_pairs_match_brute_force_hamming():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, 700, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, 700, dtype=np.uint64)
    for k in range(0, 60, 3):  # plant close relatives: flip 1 to 8 bits
        flips = rng.choice(64, 1 + k % 8, replace=False)
        hashes[k + 1] = hashes[k] ^ np.uint64(sum(1 << int(b) for b in flips))
    i, j, bits = near_pairs(hashes, 6, chunk=64)
    expected = {(a, b) for a in range(len(hashes)) for b in np.flatnonzero(hamming(int(hashes[a]), hashes) <= 6)
                if a < b}
    assert set(zip(i.tolist(), j.tolist())) == expected and len(expected) >= 15
    assert (bits == [hamming(int(hashes[a]), hashes[[b]])[0] for a, b in zip(i, j)]).all()


def test_find_duplicates_groups():
    paths = ["a/1.jpg", "b/2.jpg", "a/3.jpg", "a/4.jpg", "c/5.jpg", "c/6.jpg", "c/7.jpg"]
    sha = ["x", "x", "y", "z", "u", "v", "v"]
    base = 0x0123456789ABCDEF
    hashes = [base, base, base ^ 0b11, base ^ 0xFFFF_FFFF, None, None, None]
    groups = eda.find_duplicates(paths, sha, hashes, threshold=2)
    assert groups == [
        {"kind": "exact", "files": ["a/1.jpg", "b/2.jpg"], "classes": ["a", "b"], "cross_class": True, "max_bits": 0},
        {"kind": "exact", "files": ["c/6.jpg", "c/7.jpg"], "classes": ["c"], "cross_class": False, "max_bits": 0},
        {"kind": "near", "files": ["a/1.jpg", "a/3.jpg", "b/2.jpg"], "classes": ["a", "b"], "cross_class": True,
         "max_bits": 2},
    ]
    assert eda.find_duplicates(paths, sha, hashes, threshold=1)[2:] == []


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_missing_or_empty_folder_is_a_clear_error(tmp_path, make):
    data = tmp_path / "data"
    if make == "empty":
        (data / "cane").mkdir(parents=True)
    proc = subprocess.run([sys.executable, str(ROOT / "eda.py"), "--data-dir", str(data), "--out-dir",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: data folder") and str(data) in lines[0]
    assert not (tmp_path / "out").exists()


def test_split_file_leakage_check(tmp_path):
    """--split-file: the duplicate groups that straddle a saved split's subsets, in eda.json, findings and report."""
    data = make_dataset(tmp_path / "raw", classes=["a", "b", "c"], per_class=12)
    pair = ["a/img000.jpg", "a/img001.jpg"]
    for name, quality in zip(pair, (95, 60)):
        cv2.imwrite(str(data / name), smooth_image(1), [cv2.IMWRITE_JPEG_QUALITY, quality])
    common = dict(per_class=12, sizes=(6, 3, 3), img_size=48, workers=2, log=lambda *_: None)
    # An image-by-image split (--no-dedup, as older versions made), moved so that the pair straddles train and test.
    load_or_create_split(data, tmp_path / "plain.json", dedup=False, **common)
    meta = json.loads((tmp_path / "plain.json").read_text())
    files = {e["path"]: e for e in meta["files"]}
    for name, subset in zip(pair, ("train", "test")):
        if files[name]["subset"] != subset:
            other = next(e for e in meta["files"] if e["path"].startswith("a/") and e["path"] not in pair
                         and e["subset"] == subset)
            files[name]["subset"], other["subset"] = subset, files[name]["subset"]
    (tmp_path / "plain.json").write_text(json.dumps(meta))
    result = run_eda(data, tmp_path / "out", "--split-file", str(tmp_path / "plain.json"))
    leak = result["split_leakage"]
    assert (leak["straddling_groups"], leak["groups"], leak["images"], leak["group_aware"]) == (1, 1, 36, False)
    assert leak["straddling"][0]["files"] == dict(zip(pair, ("train", "test")))
    assert leak["by_subsets"] == {"train+test": 1} and leak["test_images_with_train_duplicate"] == 1
    line = next(f for f in result["findings"] if "plain.json" in f)
    assert "1 of its 1 duplicate group(s) straddle" in line and "a/img000.jpg (train) ~ a/img001.jpg (test)" in line
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Leakage across the split" in report and "`a/img001.jpg` (test)" in report
    # The default split keeps the pair in one subset: nothing straddles.
    load_or_create_split(data, tmp_path / "grouped.json", **common)
    grouped = run_eda(data, tmp_path / "out2", "--split-file", str(tmp_path / "grouped.json"))["split_leakage"]
    assert (grouped["straddling_groups"], grouped["groups"], grouped["group_aware"]) == (0, 1, True)
    assert "no duplicate group straddles" in (tmp_path / "out2" / "report.md").read_text()
    # A split of other bytes, or no split file at all: one clear error, nothing written.
    (data / "b" / "img002.jpg").write_bytes((data / "b" / "img002.jpg").read_bytes() + b"\0")
    with pytest.raises(DataError, match="b/img002.jpg of .*grouped.json is missing from .* or changed"):
        run_eda(data, tmp_path / "out3", "--split-file", str(tmp_path / "grouped.json"))
    with pytest.raises(DataError, match="no saved split at"):
        run_eda(data, tmp_path / "out4", "--split-file", str(tmp_path / "none.json"))
    assert not (tmp_path / "out3").exists() and not (tmp_path / "out4").exists()
