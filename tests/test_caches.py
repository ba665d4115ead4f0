"""The pixel and feature caches: keyed by everything that changes their content, and rebuilt when unreadable."""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision

import common.cache
from common import transfer
from common.cache import cache_path, key_file, load_or_build_cache, pixel_cache_fields
from common.decode import decode_image
from common.models import replace_head
from common.split import Split, load_or_create_split
from common.transfer import cached_features, feature_cache_fields
from common.transforms import eval_transform

CPU = torch.device("cpu")
SHA = "ab" * 32  # a weights file's sha256; only weights with one are cached


class Log(list):
    """Collects log lines."""

    def __call__(self, *parts):
        self.append(" ".join(str(p) for p in parts))


@pytest.fixture
def split_and_pixels(dataset, tmp_path):
    return load_or_create_split(dataset, tmp_path / "split.json", per_class=20, sizes=(12, 4, 4), img_size=40,
                                log=lambda *_: None)


@pytest.fixture
def decodes(monkeypatch) -> list:
    """Counts decode passes of load_or_build_cache."""
    calls, real = [], common.cache.decode_many

    def counted(paths, size, *args, **kwargs):
        calls.append(size)
        return real(paths, size, *args, **kwargs)
    monkeypatch.setattr(common.cache, "decode_many", counted)
    return calls


# ---- pixel cache ----------------------------------------------------------------------------------------------

def test_pixel_cache_is_reused_and_records_its_key(dataset, tmp_path, split_and_pixels, decodes):
    split, pixels = split_and_pixels
    first = load_or_build_cache(dataset, split, tmp_path / "cache", 40, pixels)
    again = load_or_build_cache(dataset, split, tmp_path / "cache", 40, log=pytest.fail)
    np.testing.assert_array_equal(again, first)
    assert decodes == []
    path = cache_path(tmp_path / "cache", split, 40)
    assert json.loads(key_file(path).read_text()) == pixel_cache_fields(split, 40)


@pytest.mark.parametrize("change", ["img_size", "split", "decode_version"])
def test_pixel_cache_rebuilds_when_any_key_field_changes(dataset, tmp_path, split_and_pixels, decodes, monkeypatch,
                                                         change):
    split, pixels = split_and_pixels
    cache = tmp_path / "cache"
    load_or_build_cache(dataset, split, cache, 40, pixels)
    size = 48 if change == "img_size" else 40
    if change == "split":  # the same files drawn with another seed: another fingerprint
        split, _ = load_or_create_split(dataset, tmp_path / "split1.json", per_class=20, sizes=(12, 4, 4), split_seed=1,
                                        img_size=40, log=lambda *_: None)
        decodes.clear()
    if change == "decode_version":
        monkeypatch.setattr(common.cache, "DECODE_VERSION", common.cache.DECODE_VERSION + 1)
    log = Log()
    images = load_or_build_cache(dataset, split, cache, size, log=log)
    assert decodes == [size], f"changing {change} must decode again"
    assert images.shape == (200, size, size, 3)
    np.testing.assert_array_equal(images, np.stack([decode_image(p, size) for p in split.paths(dataset)]))
    assert len(list(cache.glob("*.npy"))) == 2
    assert f"differs in {change}" in log[0]  # says why it did not reuse the cache already there


def _pickled_objects(path: Path) -> None:
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)


CORRUPTIONS = {
    "garbage": lambda p: p.write_bytes(os.urandom(5000)),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:p.stat().st_size // 2]),
    "empty": lambda p: p.write_bytes(b""),
    "wrong shape": lambda p: np.save(p, np.zeros((3, 40, 40, 3), np.uint8)),
    "wrong dtype": lambda p: np.save(p, np.zeros((200, 40, 40, 3), np.float32)),
    "pickled objects": _pickled_objects,
    "npz archive": lambda p: np.savez(open(p, "wb"), a=np.zeros(3)),
    "no key record": lambda p: key_file(p).unlink(),
    "other key record": lambda p: key_file(p).write_text(json.dumps({"cache": "pixels", "img_size": 96})),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_broken_pixel_cache_is_rebuilt_with_a_line_naming_it(dataset, tmp_path, split_and_pixels, decodes,
                                                             corruption):
    split, pixels = split_and_pixels
    load_or_build_cache(dataset, split, tmp_path / "cache", 40, pixels)
    path = cache_path(tmp_path / "cache", split, 40)
    CORRUPTIONS[corruption](path)
    log = Log()
    images = load_or_build_cache(dataset, split, tmp_path / "cache", 40, log=log)
    assert decodes == [40]
    np.testing.assert_array_equal(images, pixels)
    assert str(path) in log[0] and "rebuilding it" in log[0] and "\n" not in log[0]
    again = load_or_build_cache(dataset, split, tmp_path / "cache", 40, log=pytest.fail)  # the rebuilt one is good
    np.testing.assert_array_equal(again, pixels)


# ---- feature cache --------------------------------------------------------------------------------------------

def tiny_split(n: int = 6, fingerprint: str = "f" * 64) -> Split:
    files = [{"path": f"{'ab'[i % 2]}/{i}.jpg", "subset": ("train", "val", "test")[i % 3]} for i in range(n)]
    return Split({"classes": ["a", "b"], "files": files, "fingerprint": fingerprint})


def tiny_images(size: int, n: int = 6) -> np.ndarray:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (n, 48, 48, 3), dtype=np.uint8)
    return np.stack([cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA) for img in base])


def backbone(arch: str = "mobilenet_v2") -> torch.nn.Module:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)()
    replace_head(model, arch, 2)
    return model.eval()


@pytest.fixture
def extractions(monkeypatch) -> list:
    """Fakes the backbone pass (fast) and records the pixel size and crop each one saw."""
    def fake(model, arch, images, split, transform, device, batch_size=64):
        x = transform(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))
        calls.append((images.shape[1], x.shape[-1]))
        return torch.full((len(split.entries), transfer._feature_width(model, arch)), float(len(calls)))
    calls = []
    monkeypatch.setattr(transfer, "extract_features", fake)
    return calls


def features(cache_dir: Path, arch="mobilenet_v2", sha=SHA, split=None, size=40, crop=32,
             mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), log=None, model=None):
    model = model or backbone(arch)
    return cached_features(model, arch, {"sha256": sha}, tiny_images(size), split or tiny_split(), CPU, cache_dir,
                           crop, mean, std, log=Log() if log is None else log)


CHANGES = {
    "arch": dict(arch="resnet18"),
    "weights_sha256": dict(sha="cd" * 32),
    "split": dict(split=tiny_split(fingerprint="e" * 64)),
    "img_size": dict(size=48),
    "crop_size": dict(crop=24),
    "mean": dict(mean=(0.5, 0.5, 0.5)),
    "std": dict(std=(0.5, 0.5, 0.5)),
    "transform_version": {},
    "decode_version": {},
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_feature_cache_recomputes_when_any_key_field_changes(tmp_path, extractions, monkeypatch, change):
    first, _ = features(tmp_path)
    reused, seconds = features(tmp_path, log=pytest.fail)
    assert len(extractions) == 1 and seconds == 0.0 and torch.equal(reused, first)
    if change == "transform_version":
        monkeypatch.setattr(transfer, "TRANSFORM_VERSION", transfer.TRANSFORM_VERSION + 1)
    if change == "decode_version":
        monkeypatch.setattr(common.cache, "DECODE_VERSION", common.cache.DECODE_VERSION + 1)
    log = Log()
    changed, _ = features(tmp_path, log=log, **CHANGES[change])
    assert len(extractions) == 2, f"changing {change} must extract again"
    assert not torch.equal(changed[:, :1], first[:, :1])
    assert len(list(tmp_path.glob("features-*.pt"))) == 2
    assert f"differs in {change}" in log[0]  # says why it did not reuse the cache already there


def test_feature_cache_key_covers_the_brief():
    fields = feature_cache_fields("resnet18", SHA, tiny_split(), 40, 32, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert set(CHANGES) <= set(fields) and fields["cache"] == "features"
    assert json.loads(json.dumps(fields)) == fields  # what the key record stores is what is compared


def test_96px_run_does_not_reuse_72px_features(tmp_path):
    """The reported bug: real features of the same images at two pixel sizes (same crop) must differ."""
    model = backbone()
    small, _ = features(tmp_path, size=40, crop=32, model=model)
    large, seconds = features(tmp_path, size=48, crop=32, model=model)
    assert seconds > 0 and not torch.allclose(small, large, rtol=1e-2, atol=0)
    direct = transfer.extract_features(model, "mobilenet_v2", tiny_images(48), tiny_split(),
                                       lambda x: eval_transform(x, 32, (0.485, 0.456, 0.406),
                                                                (0.229, 0.224, 0.225)), CPU)
    torch.testing.assert_close(large, direct)
    reused, seconds = features(tmp_path, size=48, crop=32, model=model, log=pytest.fail)
    assert seconds == 0.0 and torch.equal(reused, large)


def test_random_weights_are_never_cached(tmp_path, extractions):
    log = Log()
    features(tmp_path, sha=None, log=log)
    features(tmp_path, sha=None, log=log)
    assert len(extractions) == 2 and not list(tmp_path.iterdir())
    assert "random weights: not cached" in log[0]


FEATURE_CORRUPTIONS = {
    "garbage": lambda p: p.write_bytes(os.urandom(5000)),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:p.stat().st_size // 2]),
    "empty": lambda p: p.write_bytes(b""),
    "wrong shape": lambda p: torch.save(torch.zeros(3, 1280), p),
    "wrong width": lambda p: torch.save(torch.zeros(6, 512), p),
    "not a tensor": lambda p: torch.save({"features": torch.zeros(6, 1280)}, p),
    "no key record": lambda p: key_file(p).unlink(),
    "other key record": lambda p: key_file(p).write_text("{not json"),
}


@pytest.mark.parametrize("corruption", list(FEATURE_CORRUPTIONS))
def test_broken_feature_cache_is_recomputed_with_a_line_naming_it(tmp_path, extractions, corruption):
    features(tmp_path)
    (path,) = tmp_path.glob("features-*.pt")
    FEATURE_CORRUPTIONS[corruption](path)
    log = Log()
    feats, seconds = features(tmp_path, log=log)
    assert len(extractions) == 2 and seconds > 0 and feats.shape == (6, 1280)
    assert str(path) in log[0] and "recomputing it" in log[0] and "\n" not in log[0]
    reused, _ = features(tmp_path, log=pytest.fail)  # the recomputed one is written back and good
    assert torch.equal(reused, feats)
