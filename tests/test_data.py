"""Split, cache, decoding and batched transforms."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from common.cache import load_or_build_cache
from common.cli import DataError, UserError
from common.config import DataConfig, LoaderConfig, add_data_args
from common.data import prepare_data
from common.decode import decode_image
from common.duplicates import duplicate_groups
from common.files import atomic_write_text
from common.loader import BatchLoader, make_loaders
from common.split import assign_subsets, load_or_create_split, parse_split_sizes, scan_folder
from common.transforms import (
    _colour_normalize,
    _opencv_crops,
    _random_boxes,
    eval_transform,
    normalize,
    train_transform,
)
from conftest import ANIMALS, make_dataset


def make_split(data_dir: Path, out: Path, **kw):
    opts = dict(per_class=20, sizes=(12, 4, 4), split_seed=0, img_size=40, workers=2, log=lambda *_: None)
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
    c, _ = make_split(dataset, tmp_path / "c", split_seed=1)
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
    with pytest.raises(DataError, match="was made with --split-seed 0, not --split-seed 3; pass --split-seed 0"):
        make_split(dataset, tmp_path, split_seed=3)
    with pytest.raises(DataError,
                       match="was made with --per-class 20 --split 12,4,4, not --per-class 10 --split 6,2,2"):
        make_split(dataset, tmp_path, per_class=10, sizes=(6, 2, 2))


def smooth(seed: int, size: int = 96) -> np.ndarray:
    """A photo-like BGR image (smooth blobs): its re-encoded copies stay near duplicates (dhash within 0-2 bits)."""
    small = np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return cv2.GaussianBlur(cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC), (0, 0), 3)


def near_duplicate_data(root: Path) -> Path:
    """3 classes of exactly 12 images: a near-duplicate pair in a, a triple in b, a pair across b and c."""
    data = make_dataset(root, classes=["a", "b", "c"], per_class=12)
    for name, seed, quality in (("a/img000.jpg", 1, 95), ("a/img001.jpg", 1, 60), ("b/img000.jpg", 2, 95),
                                ("b/img001.jpg", 2, 70), ("b/img002.jpg", 2, 50), ("b/img004.jpg", 3, 95),
                                ("c/img004.jpg", 3, 60)):
        cv2.imwrite(str(data / name), smooth(seed), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return data


GROUPS = [["a/img000.jpg", "a/img001.jpg"], ["b/img000.jpg", "b/img001.jpg", "b/img002.jpg"],
          ["b/img004.jpg", "c/img004.jpg"]]


def test_near_duplicates_are_grouped_not_dropped(tmp_path):
    # Exactly --per-class images per class with near duplicates among them: the old split dropped them and
    # stopped ("class 'a' has only 11 usable images"); now every image is kept and no group straddles.
    data = near_duplicate_data(tmp_path / "raw")
    placements = set()
    for seed in range(4):
        split, pixels = make_split(data, tmp_path / str(seed), per_class=12, sizes=(6, 3, 3), split_seed=seed)
        assert len(split.entries) == len(pixels) == 36 and split.meta["class_sizes"] == {c: [6, 3, 3] for c in "abc"}
        assert split.meta["groups"] == GROUPS and split.meta["exact_copies_dropped"] == 0
        saved = json.loads((tmp_path / str(seed) / "split.json").read_text())
        assert saved["groups"] == GROUPS and saved["split_seed"] == seed
        subset_of = {e["path"]: e["subset"] for e in split.entries}
        assert all(len({subset_of[p] for p in g}) == 1 for g in GROUPS)
        placements.add(tuple(subset_of[g[0]] for g in GROUPS))
    assert len(placements) > 1  # groups are placed at random (seeded), not always into train
    plain, _ = make_split(data, tmp_path / "plain", per_class=12, sizes=(6, 3, 3), dedup=False)
    assert plain.meta["groups"] == [] and len(plain.entries) == 36


def test_assign_subsets_keeps_groups_whole_and_counts_exact():
    labels = np.repeat([0, 1], 10)
    groups = [[0, 1, 2, 3, 4, 5], [6, 7], [8, 10]]  # a big group, a small one, one spanning both classes
    quotas = np.array([[6, 2, 2], [6, 2, 2]])
    for seed in range(20):
        subset = assign_subsets(labels, groups, quotas, np.random.default_rng(seed))
        for c in (0, 1):
            assert np.bincount(subset[labels == c], minlength=3).tolist() == [6, 2, 2]
        assert all(len(set(subset[g])) == 1 for g in groups)
        assert (subset[groups[0]] == 0).all()  # six images fit only into train
    # Without groups: the plain stratified split, the first images of each class in train, then val, then test.
    assert assign_subsets(labels, [], quotas, np.random.default_rng(0)).tolist() == [0] * 6 + [1] * 2 + [2] * 2 + [
        0] * 6 + [1] * 2 + [2] * 2
    with pytest.raises(DataError, match="group of 7 near-duplicate images .*does not fit.*--no-dedup"):
        assign_subsets(labels, [list(range(7))], np.array([[5, 3, 2], [6, 2, 2]]), np.random.default_rng(0))


def test_duplicate_groups_join_bytes_and_near_hashes():
    base = 0x0123456789ABCDEF
    sha = ["x", "x", "y", "z", "u", "v", "v"]
    hashes = [base, base, base ^ 0b11, base ^ 0b11 ^ 0b1100, base ^ 0xFFFF_FFFF, None, None]
    groups = duplicate_groups(sha, hashes, threshold=2)
    # 0-1 by bytes, 2 within 2 bits of them, 3 within 2 bits of 2 (4 from 0: joined transitively); 5-6 by bytes.
    assert [(g.members, g.contents, g.max_bits) for g in groups] == [([0, 1, 2, 3], 3, 2), ([5, 6], 1, 0)]
    assert [g.members for g in duplicate_groups(sha, hashes, threshold=1)] == [[0, 1], [5, 6]]


def test_byte_identical_copies_are_dropped_and_counted(tmp_path):
    data = make_dataset(tmp_path / "raw", classes=["a", "b", "c"], per_class=10)
    shutil.copy(data / "a" / "img000.jpg", data / "a" / "img000_copy.jpg")
    shutil.copy(data / "a" / "img001.jpg", data / "b" / "copy_of_a.jpg")
    split, _ = make_split(data, tmp_path, per_class=0, sizes=(0.6, 0.2, 0.2))
    assert split.meta["exact_copies_dropped"] == 2 and len(split.entries) == 30
    assert len({e["sha256"] for e in split.entries}) == 30
    # Class a has 11 files but 10 different images: 11 per class is an error that says why and the way out.
    with pytest.raises(DataError, match=r"class 'a' has only 10 usable images \(1 byte-identical copies left out\)"
                                        ".*--no-dedup"):
        make_split(data, tmp_path / "short", per_class=11, sizes=(7, 2, 2))
    plain, _ = make_split(data, tmp_path / "plain", per_class=0, sizes=(0.6, 0.2, 0.2), dedup=False)
    assert len(plain.entries) == 32 and plain.meta["exact_copies_dropped"] == 0


def old_format(split_file: Path, oldest: bool = False) -> None:
    """Rewrite a split file as the project wrote it before --split-seed (and, oldest, before per-class sizes)."""
    meta = json.loads(split_file.read_text())
    meta["seed"] = meta.pop("split_seed")
    meta["duplicates_removed"] = []
    for key in ("groups", "exact_copies", "exact_copies_dropped") + (("class_sizes", "dedup") if oldest else ()):
        meta.pop(key)
    split_file.write_text(json.dumps(meta))


@pytest.mark.parametrize("oldest", [False, True])
def test_older_split_files_are_reused(dataset, tmp_path, oldest):
    first, _ = make_split(dataset, tmp_path, split_seed=2, dedup=False)
    old_format(tmp_path / "split.json", oldest)
    again, pixels = make_split(dataset, tmp_path, split_seed=2, dedup=False)
    assert pixels is None and again.entries == first.entries and again.split_seed == 2
    with pytest.raises(DataError, match="made with --split-seed 2, not --split-seed 0"):
        make_split(dataset, tmp_path, dedup=False)


def test_saved_split_with_a_straddling_group_is_refused(tmp_path):
    data = near_duplicate_data(tmp_path / "raw")
    make_split(data, tmp_path, per_class=12, sizes=(6, 3, 3))
    meta = json.loads((tmp_path / "split.json").read_text())
    files = {e["path"]: e for e in meta["files"]}
    member = files["a/img000.jpg"]
    other = next(e for e in meta["files"] if e["path"].startswith("a/") and e["subset"] != member["subset"])
    member["subset"], other["subset"] = other["subset"], member["subset"]  # class counts stay right
    (tmp_path / "split.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="puts the near duplicates .*into different subsets"):
        make_split(data, tmp_path, per_class=12, sizes=(6, 3, 3))


def data_config(data: Path, out: Path, *extra: str) -> DataConfig:
    parser = argparse.ArgumentParser()
    add_data_args(parser)
    return DataConfig.from_args(parser.parse_args(["--data-dir", str(data), "--output-dir", str(out), "--per-class",
                                                   "20", "--split", "12,4,4", "--img-size", "40", "--workers", "2",
                                                   *extra]))


def test_seed_and_split_seed_are_separate(dataset, tmp_path):
    first, _ = prepare_data(data_config(dataset, tmp_path), log=lambda *_: None)
    # Another --seed (initialisation, augmentation, batch order) reuses the saved split ...
    again, _ = prepare_data(data_config(dataset, tmp_path, "--seed", "1"), log=lambda *_: None)
    assert again.entries == first.entries
    # ... another --split-seed is refused, and with its own --split-file it draws another split.
    with pytest.raises(DataError, match="made with --split-seed 0, not --split-seed 1"):
        prepare_data(data_config(dataset, tmp_path, "--split-seed", "1"), log=lambda *_: None)
    other, _ = prepare_data(data_config(dataset, tmp_path, "--split-seed", "1", "--split-file",
                                        str(tmp_path / "split1.json")), log=lambda *_: None)
    assert other.split_seed == 1 and other.entries != first.entries
    with pytest.raises(DataError, match="--split-seed -1 is negative"):  # the library refuses it too
        load_or_create_split(dataset, tmp_path / "neg.json", 20, (12, 4, 4), split_seed=-1, img_size=40,
                             log=lambda *_: None)


def test_fraction_subset_follows_the_split_seed(dataset, tmp_path):
    def train_indices(split, seed: int) -> list[int]:
        config = LoaderConfig(batch_size=4, fraction=0.5, imbalance=1.0, balance="none")
        loaders = make_loaders(np.zeros((len(split.entries), 1)), split, config, torch.device("cpu"),
                               torch.Generator().manual_seed(seed), log=lambda *_: None)
        return loaders["train"].indices.tolist()

    split, _ = make_split(dataset, tmp_path / "a")
    other, _ = make_split(dataset, tmp_path / "b", split_seed=1)
    assert train_indices(split, 0) == train_indices(split, 1) == train_indices(split, 2)  # repeats: same images
    assert len(train_indices(split, 0)) == 60
    chosen = [{s.entries[i]["path"] for i in train_indices(s, 0)} for s in (split, other)]
    assert chosen[0] != chosen[1]


def test_atomic_create_never_replaces(tmp_path):
    path = tmp_path / "sub" / "split.json"
    assert atomic_write_text(path, "first", exclusive=True)
    assert not atomic_write_text(path, "second", exclusive=True)
    assert path.read_text() == "first" and [p.name for p in path.parent.iterdir()] == ["split.json"]


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
    # Every resizer draws the same flips from the same seed.
    ramp = (torch.arange(40) * 4).to(torch.uint8).expand(8, 3, 40, 40).contiguous()
    flips = []
    for resize in ("roi_align", "interpolate", "opencv"):
        out = train_transform(ramp, 40, (0.0,) * 3, (1.0,) * 3, generator=torch.Generator().manual_seed(1),
                              scale=(1.0, 1.0), ratio=(1.0, 1.0), resize=resize)
        want = ramp.float() / 255
        inner = (..., slice(2, 38), slice(2, 38))
        same = (out - want)[inner].abs().amax((1, 2, 3)) < 1e-4
        mirrored = (out - want.flip(-1))[inner].abs().amax((1, 2, 3)) < 1e-4
        assert (same ^ mirrored).all() and same.any() and mirrored.any()
        flips.append(mirrored)
    assert all(torch.equal(flips[0], f) for f in flips[1:])


@pytest.mark.parametrize("resize", ["interpolate", "opencv"])
def test_resized_crop_resizes_exactly_the_drawn_box(resize):
    # One bright pixel column at x=30 of a 64-px image: a box holding it keeps it, in proportion, after resizing.
    x = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    x[..., 30] = 255
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        state = g.get_state()
        out = train_transform(x, 32, (0.0,) * 3, (1.0,) * 3, generator=g, scale=(0.3, 1.0), resize=resize)
        g2 = torch.Generator()
        g2.set_state(state)
        x0, _, bw, _ = _random_boxes(1, 64, 64, (0.3, 1.0), (3 / 4, 4 / 3), g2)[0].tolist()
        flipped = bool(torch.rand(1, generator=g2) < 0.5)
        left, width = min(int(x0), 64 - round(bw)), round(bw)
        col = out[0, 0].mean(0)
        if left <= 30 < left + width:
            peak = int(col.argmax())
            expected = (30 - left + 0.5) * 32 / width - 0.5
            assert abs((31 - peak if flipped else peak) - expected) <= 1.0
        else:
            assert col.max() == 0


@pytest.mark.parametrize("path", ["float", "uint8", "opencv"])
def test_fused_jitter_equals_brightness_contrast_saturation_applied_in_turn(path):
    x = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    g = torch.Generator().manual_seed(3)
    factors = [torch.empty(6).uniform_(0.6, 1.4, generator=g) for _ in range(3)]
    out = {"float": lambda: _colour_normalize(x.float() / 255, factors, mean, std),
           "uint8": lambda: _colour_normalize(x, factors, mean, std),
           "opencv": lambda: normalize(_opencv_crops(x, torch.tensor([[0.0, 0.0, 16.0, 16.0]] * 6), 16,
                                                     torch.zeros(6, dtype=torch.bool), factors), mean, std)}[path]()
    b, c, s = (f.view(6, 1, 1, 1) for f in factors)
    y = x.float() / 255 * b                                               # brightness
    gray = lambda t: (0.299 * t[:, 0] + 0.587 * t[:, 1] + 0.114 * t[:, 2]).unsqueeze(1)  # noqa: E731
    y = (y - gray(y).mean((2, 3), keepdim=True)) * c + gray(y).mean((2, 3), keepdim=True)  # contrast
    y = (y - gray(y)) * s + gray(y)                                       # saturation
    want = (y.clamp(0, 1) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    # OpenCV's pixels stay uint8 (rounded, as ColorJitter's on PIL images are): within one grey level of exact.
    atol = 1 / 255 / min(std) if path == "opencv" else 1e-5
    torch.testing.assert_close(out, want, atol=atol, rtol=1e-5)


def test_transforms_hand_the_models_channels_last_batches_equal_to_the_plain_formula():
    x = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    for pixels in (x, x.contiguous(memory_format=torch.channels_last)):
        ev = eval_transform(pixels, 32, mean, std)
        assert ev.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(ev, (x[..., 4:36, 4:36].float() / 255 - m) / s)
        for scale, jitter in ((None, 0.0), ((0.3, 1.0), 0.0), ((0.3, 1.0), 0.2)):  # the CPU default: opencv
            tr = train_transform(pixels, 32, mean, std, generator=torch.Generator().manual_seed(0), scale=scale,
                                 jitter=jitter)
            assert tr.shape == (4, 3, 32, 32) and tr.is_contiguous(memory_format=torch.channels_last)


def test_opencv_crops_match_torch_antialiased_resizing_on_smooth_images_and_refuse_floats():
    # The same boxes resized by OpenCV (bilinear, area-averaged where shrinking) and by torch (antialiased
    # bilinear) differ by rounding and, where a box shrinks, by the filter: small on natural, smooth images.
    smooth = nn.functional.interpolate(torch.rand(16, 3, 8, 8), size=(64, 64), mode="bicubic").clamp(0, 1)
    x = (smooth * 255).round().to(torch.uint8)
    crops = {resize: train_transform(x, 48, (0.0,) * 3, (1.0,) * 3, generator=torch.Generator().manual_seed(0),
                                     scale=(0.2, 1.0), resize=resize) * 255 for resize in ("interpolate", "opencv")}
    diff = (crops["interpolate"] - crops["opencv"]).abs()
    assert diff.mean() < 0.5 and diff.max() < 8  # grey levels
    # Shrunk over 2x, boxes are area-averaged: noise is smoothed as much as by torch's antialiasing, not aliased.
    noise = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8)
    small = {resize: train_transform(noise, 24, (0.0,) * 3, (1.0,) * 3, scale=(1.0, 1.0), ratio=(1.0, 1.0),
                                     resize=resize) * 255 for resize in ("interpolate", "opencv")}
    assert small["opencv"].std() < 0.4 * noise.float().std() and small["interpolate"].std() < 0.4 * noise.float().std()
    with pytest.raises(UserError, match="--crop-resize opencv works on uint8 pixels on the CPU"):
        train_transform(x.float(), 48, (0.0,) * 3, (1.0,) * 3, resize="opencv")


def test_data_notes_come_from_the_notes_file_that_describes_the_folder(tmp_path):
    from common.data import data_notes
    folder = tmp_path / "animals" / "raw-img"
    folder.mkdir(parents=True)
    assert data_notes(folder) == []
    readme = tmp_path / "animals" / "README.md"
    readme.write_text("# Some other project\n\n**Install** with pip.\n")  # does not name raw-img: not about it
    assert data_notes(folder) == []
    readme.write_text("# A subset\n\nImages live in `raw-img/<class>/`.\n\n**Not all of it is real.**\nSix classes\n"
                      "come from elsewhere.\n\n- **A** a source\n")
    assert data_notes(folder) == [f"About the data (`{readme}`): A subset. **Not all of it is real.** Six classes "
                                  "come from elsewhere."]
    (folder / "NOTES.md").write_text("**Horses** are cut-outs.\n")  # inside the folder: wins, need not name it
    assert data_notes(folder) == [f"About the data (`{folder / 'NOTES.md'}`): **Horses** are cut-outs."]
