"""CUDA behaviour, checked cheaply on a GPU (bench/gpu_check.sh runs these); every test here is skipped without CUDA."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import part1_scratch_cnn as part1
from common.engine import autocast, predict, resolve_device, train_one_epoch
from common.loader import BatchLoader, to_device
from common.models import build_model
from common.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform
from conftest import tiny_args

pytestmark = pytest.mark.cuda


def uint8_images(n: int = 48, size: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


def test_gpu_data_path_gives_the_cpu_paths_batches():
    images, labels = uint8_images()
    cuda = resolve_device("cuda")
    resident = to_device(images, cuda)
    assert isinstance(resident, torch.Tensor) and resident.is_cuda and resident.dtype == torch.uint8
    on_cpu = BatchLoader(images, labels, np.arange(len(labels)), 16, torch.device("cpu"), shuffle=True,
                         generator=torch.Generator().manual_seed(1))
    on_gpu = BatchLoader(resident, labels, np.arange(len(labels)), 16, cuda, shuffle=True,
                         generator=torch.Generator().manual_seed(1))
    for (xc, yc), (xg, yg) in zip(on_cpu, on_gpu):
        assert xg.is_cuda and xg.dtype == xc.dtype == torch.uint8 and xg.shape == xc.shape
        assert torch.equal(xg.cpu(), xc) and torch.equal(yg.cpu(), yc)
        # The same random boxes, flips and jitter (drawn on the CPU generator) give the same crops on either device.
        for resize in ("roi_align", "interpolate"):  # auto would pick a different resizer on each device
            tc = train_transform(xc, 32, IMAGENET_MEAN, IMAGENET_STD, torch.Generator().manual_seed(2), jitter=0.2,
                                 resize=resize)
            tg = train_transform(xg, 32, IMAGENET_MEAN, IMAGENET_STD, torch.Generator().manual_seed(2), jitter=0.2,
                                 resize=resize)
            atol = 1e-3 if resize == "roi_align" else 0.05  # uint8 rounding on the CPU, float on the GPU
            assert tg.is_cuda and tg.dtype == tc.dtype == torch.float32 and tg.shape == tc.shape == (16, 3, 32, 32)
            torch.testing.assert_close(tg.cpu(), tc, atol=atol, rtol=1e-3)
        torch.testing.assert_close(eval_transform(xg, 32, IMAGENET_MEAN, IMAGENET_STD).cpu(),
                                   eval_transform(xc, 32, IMAGENET_MEAN, IMAGENET_STD))


@pytest.mark.parametrize("arch,mode", [("scratch_cnn", "full"), ("resnet18", "full"), ("mobilenet_v2", "fc")])
def test_amp_train_step_on_the_gpu_is_finite_and_learns(arch, mode):
    cuda = resolve_device("cuda")
    images, labels = uint8_images(64, 72)
    torch.manual_seed(0)
    model, _ = build_model(arch, 10, mode)
    model = model.to(cuda, memory_format=torch.channels_last)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scaler = None if torch.cuda.is_bf16_supported() else torch.amp.GradScaler("cuda")
    loader = BatchLoader(to_device(images, cuda), labels, np.arange(64), 16, cuda, shuffle=True,
                         generator=torch.Generator().manual_seed(0), drop_last=True)
    tf = lambda x: train_transform(x, 64, IMAGENET_MEAN, IMAGENET_STD, torch.Generator().manual_seed(3))  # noqa: E731
    with autocast(cuda, True):
        assert model(tf(next(iter(loader))[0])).dtype in (torch.bfloat16, torch.float16)
    out = train_one_epoch(model, loader, tf, nn.CrossEntropyLoss(), opt, cuda, amp=True, scaler=scaler)
    assert np.isfinite(out["loss"]) and out["images"] == 64 and out["img_per_s"] > 0
    after = [p for p in model.parameters() if p.requires_grad]
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    logits, y, _ = predict(model, loader, tf, cuda, amp=True, tta=True)
    assert logits.dtype == torch.float32 and logits.device.type == "cpu" and torch.isfinite(logits).all()
    assert len(y) == 64


def test_a_training_script_runs_on_the_gpu_with_amp(dataset, tmp_path):
    out = tmp_path / "runs"
    part1.main(part1.get_args_parser().parse_args(tiny_args(dataset, out, "--epochs", "1", "--batch-size", "16",
                                                            "--device", "cuda", "--monitor-test")))
    (run,) = [p for p in out.iterdir() if p.is_dir() and "scratch_cnn" in p.name]
    metrics = json.loads((run / "metrics.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert metrics["device"].startswith("cuda") and config["amp"] is True
    assert metrics["peak_memory_mb"] > 0 and 0 <= metrics["history"][0]["test_acc"] <= 1
