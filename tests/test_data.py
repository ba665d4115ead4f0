"""Split, cache, decoding and batched transforms."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common.data import (BatchLoader, DataError, decode_image, eval_transform, load_or_build_cache,
                         load_or_create_split, parse_split_sizes, scan_folder, train_transform)
from conftest import ANIMALS, make_dataset


def make_split(data_dir: Path, out: Path, **kw):
    opts = dict(per_class=20, sizes=(12, 4, 4), seed=0, img_size=40, workers=2, log=lambda *_: None)
    opts.update(kw)
    return load_or_create_split(data_dir, out / "split.json", **opts)


def test_split_sizes_stratified_disjoint(dataset, tmp_path):
    split, pixels = make_split(dataset, tmp_path)
    assert split.classes == ANIMALS
    assert pixels.shape == (200, 40, 40, 3) and pixels.dtype == np.uint8
    sets = {name: {split.entries[i]["path"] for i in idx} for name, idx in split.indices.items()}
    assert [len(sets[s]) for s in ("train", "val", "test")] == [120, 40, 40]
    assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"] or sets["val"] & sets["test"])
    for name, n in (("train", 12), ("val", 4), ("test", 4)):
        assert np.bincount(split.labels[split.indices[name]], minlength=10).tolist() == [n] * 10
    saved = json.loads((tmp_path / "split.json").read_text())
    assert all(len(e["sha256"]) == 64 and e["size"] > 0 for e in saved["files"])


def test_split_is_deterministic_per_seed(dataset, tmp_path):
    a, _ = make_split(dataset, tmp_path / "a")
    b, _ = make_split(dataset, tmp_path / "b")
    c, _ = make_split(dataset, tmp_path / "c", seed=1)
    assert a.entries == b.entries
    assert [e["path"] for e in a.entries] != [e["path"] for e in c.entries]


def test_saved_split_is_reused_and_subset_drawn(tmp_path):
    data = make_dataset(tmp_path / "raw", per_class=25)
    first, pixels = make_split(data, tmp_path)
    assert pixels is not None
    again, pixels = make_split(data, tmp_path)
    assert pixels is None and again.entries == first.entries
    assert len(first.entries) == 200  # 20 of the 25 images per class


def test_split_mismatch_is_an_error(dataset, tmp_path):
    split, _ = make_split(dataset, tmp_path)
    victim = dataset / split.entries[0]["path"]
    victim.write_bytes(victim.read_bytes() + b"\0")
    with pytest.raises(DataError, match="changed since the split was saved"):
        make_split(dataset, tmp_path)
    victim.unlink()
    with pytest.raises(DataError, match="missing from the data folder"):
        make_split(dataset, tmp_path)


def test_split_options_must_match_saved_split(dataset, tmp_path):
    make_split(dataset, tmp_path)
    with pytest.raises(DataError, match="was made with"):
        make_split(dataset, tmp_path, seed=3)


def test_cache_round_trip_equals_direct_decode(dataset, tmp_path):
    split, pixels = make_split(dataset, tmp_path)
    cached = load_or_build_cache(dataset, split, tmp_path / "cache", 40, pixels)
    assert isinstance(cached, np.memmap)
    rebuilt = load_or_build_cache(dataset, split, tmp_path / "cache2", 40, None, log=lambda *_: None)
    direct = np.stack([decode_image(p, 40) for p in split.paths(dataset)])
    np.testing.assert_array_equal(cached, direct)
    np.testing.assert_array_equal(rebuilt, direct)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1


def test_decode_gives_rgb(tmp_path):
    import cv2
    bgr = np.zeros((10, 10, 3), np.uint8)
    bgr[..., 2] = 255  # red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    rgb = decode_image(tmp_path / "red.png", 8)
    assert rgb.shape == (8, 8, 3) and (rgb[..., 0] == 255).all() and (rgb[..., 2] == 0).all()


def test_corrupt_files_are_skipped_and_reported(tmp_path):
    data = make_dataset(tmp_path / "raw", per_class=22)
    (data / "gatto" / "broken.jpg").write_bytes(b"\xff\xd8not a jpeg at all")
    (data / "cane" / "empty.png").write_bytes(b"")
    messages = []
    split, _ = make_split(data, tmp_path, log=messages.append)
    paths = {e["path"] for e in split.entries}
    assert "gatto/broken.jpg" not in paths and "cane/empty.png" not in paths
    assert set(split.meta["skipped"]) <= {"gatto/broken.jpg", "cane/empty.png"}
    assert any("broken.jpg" in m for m in messages) or "gatto/broken.jpg" not in split.meta["skipped"]


def test_corrupt_files_leaving_class_short_name_the_class(tmp_path):
    data = make_dataset(tmp_path / "raw", per_class=20)
    for i in range(3):
        (data / "mucca" / f"img{i:03d}.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match="class 'mucca' has only 17 usable images.*fractions"):
        make_split(data, tmp_path)


def test_missing_and_empty_data_folders(tmp_path):
    with pytest.raises(DataError, match="does not exist.*alessiocorrado99/animals10"):
        scan_folder(tmp_path / "nope")
    (tmp_path / "empty" / "cane").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no <class>/ folders"):
        scan_folder(tmp_path / "empty")


def test_parse_split_sizes():
    assert parse_split_sizes("300,75,75", 450) == (300, 75, 75)
    with pytest.raises(DataError, match="adds up to"):
        parse_split_sizes("300,75,70", 450)
    with pytest.raises(DataError, match="three positive numbers"):
        parse_split_sizes("300,75", 450)


def test_batch_loader_and_transforms(dataset, tmp_path):
    split, pixels = make_split(dataset, tmp_path)
    idx = split.indices["val"]
    loader = BatchLoader(pixels, split.labels, idx, 16, torch.device("cpu"))
    xs, ys = zip(*loader)
    assert len(loader) == 3 and [len(y) for y in ys] == [16, 16, 8]
    x = torch.cat(xs)
    assert x.dtype == torch.uint8 and x.shape == (40, 3, 40, 40)
    assert torch.equal(x, torch.from_numpy(pixels[idx]).permute(0, 3, 1, 2))
    assert torch.equal(torch.cat(ys), torch.from_numpy(split.labels[idx]))
    shuffled = BatchLoader(pixels, split.labels, idx, 16, torch.device("cpu"), shuffle=True,
                           generator=torch.Generator().manual_seed(0))
    xs2, ys2 = zip(*shuffled)
    order = torch.cat(ys2)
    assert sorted(order.tolist()) == sorted(torch.cat(ys).tolist()) and not torch.equal(order, torch.cat(ys))

    ev = eval_transform(x, 32, (0.5,) * 3, (0.5,) * 3)
    expected = (x[..., 4:36, 4:36].float() / 255 - 0.5) / 0.5
    assert torch.allclose(ev, expected, atol=1e-6)
    g = torch.Generator().manual_seed(0)
    for scale in (None, (0.3, 1.0)):
        tr = train_transform(x, 32, (0.0,) * 3, (1.0,) * 3, generator=g, scale=scale, jitter=0.2)
        assert tr.shape == (40, 3, 32, 32) and tr.min() >= 0 and tr.max() <= 1
    # A full-image box at the same size on a horizontal ramp gives the ramp back (bilinear sampling is exact on
    # linear images), mirrored for the flipped half of the batch.
    ramp = (torch.arange(40) * 4).to(torch.uint8).expand(8, 3, 40, 40).contiguous()
    out = train_transform(ramp, 40, (0.0,) * 3, (1.0,) * 3, generator=torch.Generator().manual_seed(1),
                          scale=(1.0, 1.0), ratio=(1.0, 1.0))
    want = ramp.float() / 255
    inner = (..., slice(2, 38), slice(2, 38))
    same = (out - want)[inner].abs().amax((1, 2, 3)) < 1e-4
    mirrored = (out - want.flip(-1))[inner].abs().amax((1, 2, 3)) < 1e-4
    assert (same ^ mirrored).all() and same.any() and mirrored.any()
