"""Any class-folder dataset: uneven classes, fractions, de-duplication, colour modes, 3 and 40 classes."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

import evaluate
import part1_scratch_cnn as part1
from common.cli import DataError
from common.decode import decode_image
from common.split import load_or_create_split
from conftest import make_dataset


def split_of(data, out, **kw):
    opts = dict(per_class=0, sizes=(0.6, 0.2, 0.2), split_seed=0, img_size=40, workers=2, log=lambda *_: None)
    opts.update(kw)
    return load_or_create_split(data, out / "split.json", **opts)


def test_uneven_classes_split_proportionally(tmp_path):
    data = tmp_path / "raw"
    for cls, n in (("a", 5), ("b", 10), ("c", 25)):
        make_dataset(data, classes=[cls], per_class=n, seed=len(cls) + n)
    split, _ = split_of(data, tmp_path)
    assert split.meta["class_sizes"] == {"a": [3, 1, 1], "b": [6, 2, 2], "c": [15, 5, 5]}
    counts = {s: np.bincount(split.labels[idx], minlength=3).tolist() for s, idx in split.indices.items()}
    assert counts == {"train": [3, 6, 15], "val": [1, 2, 5], "test": [1, 2, 5]}
    # Counts instead of fractions: a short class is an error naming it and the way out.
    with pytest.raises(DataError, match="class 'a' has only 5 usable images.*fractions"):
        split_of(data, tmp_path / "counts", per_class=9, sizes=(5, 2, 2))
    make_dataset(data, classes=["tiny"], per_class=2)
    with pytest.raises(DataError, match="class 'tiny' has only 2 usable images, too few to fill train, val and test"):
        split_of(data, tmp_path / "tiny")


def photo_like(seed: int, size: int = 96) -> np.ndarray:
    """Smooth random colour blobs: like a photo, the picture survives re-encoding (noise images do not)."""
    coarse = np.random.default_rng(seed).integers(0, 256, (5, 5, 3), dtype=np.uint8)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def test_duplicates_across_classes_are_grouped(tmp_path):
    data = make_dataset(tmp_path / "raw", classes=["cane", "gatto", "mucca"], per_class=9)
    shutil.copy(data / "cane" / "img000.jpg", data / "gatto" / "copy_of_dog.jpg")
    cv2.imwrite(str(data / "mucca" / "img001.png"), photo_like(1))
    cv2.imwrite(str(data / "cane" / "reencoded_cow.jpg"), photo_like(1), [cv2.IMWRITE_JPEG_QUALITY, 60])
    cv2.imwrite(str(data / "gatto" / "other_photo.jpg"), photo_like(2))  # a different photo is kept
    split, _ = split_of(data, tmp_path)
    # The byte-identical copy is dropped (one of the two kept) and counted ...
    assert split.meta["exact_copies_dropped"] == 1
    assert {frozenset(pair) for pair in split.meta["exact_copies"]} == {frozenset({"gatto/copy_of_dog.jpg",
                                                                                   "cane/img000.jpg"})}
    subset_of = {e["path"]: e["subset"] for e in split.entries}
    assert len({"gatto/copy_of_dog.jpg", "cane/img000.jpg"} & set(subset_of)) == 1
    # ... the near duplicates under two labels are both kept, together in one subset, and recorded as a group.
    assert split.meta["groups"] == [["cane/reencoded_cow.jpg", "mucca/img001.png"]]
    assert subset_of["cane/reencoded_cow.jpg"] == subset_of["mucca/img001.png"]
    assert "gatto/other_photo.jpg" in subset_of and len(split.entries) == 30
    plain, _ = split_of(data, tmp_path / "plain", dedup=False)
    assert len(plain.entries) == 31 and plain.meta["groups"] == [] and plain.meta["exact_copies_dropped"] == 0


def test_grayscale_and_rgba_are_converted(tmp_path):
    gray = np.full((20, 20), 100, np.uint8)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    cv2.imwrite(str(tmp_path / "gray.jpg"), gray)
    bgra = np.zeros((20, 20, 4), np.uint8)
    bgra[..., 0] = 255                   # blue ...
    bgra[:10, :, 3] = 255                # ... opaque in the top half, transparent below
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    for name in ("gray.png", "gray.jpg"):
        rgb = decode_image(tmp_path / name, 20)
        assert rgb.shape == (20, 20, 3) and np.abs(rgb.astype(int) - 100).max() <= 2
    rgba = decode_image(tmp_path / "rgba.png", 20)
    assert rgba[2, 5].tolist() == [0, 0, 255]         # opaque blue, in RGB order
    assert rgba[17, 5].tolist() == [255, 255, 255]    # transparent over white
    deep = (np.arange(400, dtype=np.uint16).reshape(20, 20) * 160)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    assert decode_image(tmp_path / "deep.png", 20).dtype == np.uint8


@pytest.mark.parametrize("n_classes, per_class", [(3, 10), (40, 5)])
def test_train_and_evaluate_any_number_of_classes(tmp_path, n_classes, per_class):
    classes = [f"class_{k:02d}" for k in range(n_classes)]
    data = make_dataset(tmp_path / "raw", classes=classes, per_class=per_class)
    out = tmp_path / "runs"
    part1.main(part1.get_args_parser().parse_args([
        "--data-dir", str(data), "--output-dir", str(out), "--per-class", "0", "--split", "0.6,0.2,0.2",
        "--img-size", "72", "--crop-size", "64", "--epochs", "2", "--batch-size", "16", "--lr", "3e-3"]))
    run = next(p for p in out.iterdir() if p.name.endswith("scratch_cnn-full"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["history"]) == 2
    result = evaluate.evaluate_checkpoint(evaluate.get_args_parser().parse_args(
        ["--ckpt", str(run / "best.pt"), "--out-dir", str(tmp_path / "eval")]))
    assert result["classes"] == classes and len(result["confusion_matrix"]) == n_classes
    assert result["accuracy"] == pytest.approx(metrics["test_acc"])
    assert cv2.imread(str(tmp_path / "eval" / "confusion_matrix.png")) is not None
