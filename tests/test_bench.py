"""The fast data path gives the baseline's images and labels; the benchmark script runs end to end."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets

from common.cache import load_or_build_cache
from common.loader import BatchLoader, to_device
from common.split import load_or_create_split
from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import throughput  # noqa: E402


def test_cache_matches_imagefolder_pil_path(dataset, tmp_path):
    split, pixels = load_or_create_split(dataset, tmp_path / "split.json", 20, (12, 4, 4), 0, 48, 2,
                                         log=lambda *_: None)
    images = load_or_build_cache(dataset, split, tmp_path / "cache", 48, pixels)
    folder = datasets.ImageFolder(str(dataset))
    assert folder.classes == split.classes
    index = {p: i for i, (p, _) in enumerate(folder.samples)}
    for k, entry in enumerate(split.entries):
        path, label = folder.samples[index[str(dataset / entry["path"])]]
        assert label == split.labels[k]
        pil = np.asarray(Image.open(path).convert("RGB").resize((48, 48), Image.BILINEAR), dtype=np.int16)
        # Same image, same size; only the decoders' and resize filters' rounding differs.
        assert np.abs(pil - images[k].astype(np.int16)).mean() < 4


def test_resident_tensor_path_equals_memmap_path(dataset, tmp_path):
    split, pixels = load_or_create_split(dataset, tmp_path / "split.json", 20, (12, 4, 4), 0, 40, 2,
                                         log=lambda *_: None)
    images = load_or_build_cache(dataset, split, tmp_path / "cache", 40, pixels)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resident = to_device(images, device) if device.type == "cuda" else torch.from_numpy(np.array(images))
    a = BatchLoader(images, split.labels, split.indices["train"], 16, device, shuffle=True,
                    generator=torch.Generator().manual_seed(3))
    b = BatchLoader(resident, split.labels, split.indices["train"], 16, device, shuffle=True,
                    generator=torch.Generator().manual_seed(3))
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_benchmark_script_writes_results(dataset, tmp_path):
    args = throughput.get_args_parser().parse_args([
        "--data-dir", str(dataset), "--output-dir", str(tmp_path / "runs"), "--per-class", "20", "--split", "12,4,4",
        "--img-size", "72", "--crop-size", "64", "--quick", "--device", "cpu", "--loader-workers", "0",
        "--repeats", "2", "--models", "scratch_cnn:full,mobilenet_v2:fc", "--results-dir", str(tmp_path / "results")])
    throughput.main(args)
    result = json.loads(next((tmp_path / "results").glob("cpu-*.json")).read_text())
    paths = {p["key"]: p for p in result["data"]["paths"]}
    assert set(paths) == {key for _, key, _ in throughput.DATA_PATHS}
    assert all(p["min"] <= p["img_per_s"] <= p["max"] and len(p["runs"]) == result["data"]["repeats"]
               for p in paths.values())
    assert [(m["arch"], m["mode"]) for m in result["models"]] == [("scratch_cnn", "full"), ("mobilenet_v2", "fc")]
    assert result["feature_cache"]["mobilenet_v2"]["speedup"] > 0
    assert result["data"]["cache_mb"] == pytest.approx(200 * 72 * 72 * 3 / 2**20, rel=0.01)
    md = next((tmp_path / "results").glob("cpu-*.md")).read_text()
    assert "| tutorial: ImageFolder" in md and "mobilenet_v2 | fc" in md
    default = next(line for line in md.splitlines() if "(CPU default)" in line)
    same = paths["opencv-jitter"]["img_per_s"] / paths["tutorial-default"]["img_per_s"]
    assert default.rstrip(" |").endswith(f"{same:.1f}x")  # ratio against the tutorial with the same augmentation


def test_ig_benchmark_agrees_with_the_earlier_path_and_gaps_shrink(dataset, tmp_path):
    import ig
    import part1_scratch_cnn as part1
    from conftest import tiny_args
    out = tmp_path / "runs"
    part1.main(part1.get_args_parser().parse_args(tiny_args(dataset, out, "--epochs", "1", "--batch-size", "16")))
    ig.main(ig.get_args_parser().parse_args(["--ckpt", str(out / "best.pt"), "--num", "3", "--steps", "2,64",
                                             "--speed-steps", "4", "--internal-batch", "5", "--repeats", "2",
                                             "--device", "cpu", "--results-dir", str(tmp_path / "results")]))
    result = json.loads(next((tmp_path / "results").glob("ig-cpu-*.json")).read_text())
    ours = next(r for r in result["speed"] if r["method"].startswith("ours"))
    assert ours["pearson_vs_one_step_at_a_time"] > 0.9999  # the same attributions, batched differently
    assert ours["min_s"] <= ours["median_s"] <= ours["max_s"]
    coarse, fine = result["completeness_gap"]
    assert (coarse["steps"], fine["steps"]) == (2, 64) and fine["mean"] < coarse["mean"]
    assert "| steps | mean | max |" in next((tmp_path / "results").glob("ig-cpu-*.md")).read_text()


@pytest.mark.parametrize("mode", ["lora", "masked", "top", "full"])
def test_the_model_benchmark_times_every_mode_of_the_default_model_list(mode):
    """The default --models is every mode of every spec; lora and masked need their adapters and masks built."""
    assert ("mobilenet_v2", mode) in throughput.ALL_MODELS
    speed = throughput.model_speed("mobilenet_v2", mode, torch.device("cpu"), batch_size=2, steps=1, crop=32)
    assert speed["train_img_per_s"] > 0 and speed["infer_img_per_s"] > 0


def test_cpu_precision_benchmark_times_both_precisions_and_writes_its_ratio(tmp_path):
    import cpu_precision
    cpu_precision.main(cpu_precision.get_args_parser().parse_args([
        "--models", "scratch_cnn", "--crop-size", "64", "--batch-size", "4", "--steps", "1", "--rounds", "2",
        "--results-dir", str(tmp_path)]))
    result = json.loads(next(tmp_path.glob("cpu-precision-*.json")).read_text())
    (row,) = result["models"]
    for name in ("float32", "bf16"):
        assert len(row["rounds"][name]) == 2 and row[name]["min"] <= row[name]["median"] <= row[name]["max"]
    assert row["ratio"] == pytest.approx(row["bf16"]["median"] / row["float32"]["median"])
    assert isinstance(result["machine"]["amp_auto_bf16"], bool)
    assert f"| scratch_cnn | {row['float32']['median']:.1f} " in next(tmp_path.glob("cpu-precision-*.md")).read_text()


@pytest.mark.parametrize("task", ["infer", "train"])
def test_allocator_benchmark_child_times_a_task_and_counts_its_page_faults(task):
    import allocator
    out = allocator.child("scratch_cnn", task, 4, "default", 64, 8)
    assert out["img_per_s"] > 0 and isinstance(out["minor_faults"], int) and out["minor_faults"] >= 0
