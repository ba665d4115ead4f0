"""What the CPU benchmarks in bench/ share: a synthetic training step and how their results are written."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from common.engine import autocast
from common.files import atomic_write_text
from common.models import build_model, set_train_mode


def synthetic_train_step(arch: str, batch_size: int, crop: int) -> Callable[[bool], None]:
    """One full-mode training step (AdamW, channels_last, seeded random weights and batch) on the CPU; the callable
    takes whether to run it under bf16 autocast."""
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    model = build_model(arch, 10, "full")[0].to(memory_format=torch.channels_last)
    set_train_mode(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch_size, 3, crop, crop).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,))

    def step(bf16: bool) -> None:
        with autocast(cpu, bf16):
            loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def write_results(results_dir: str | Path, stem: str, result: dict, markdown: str) -> Path:
    """<results_dir>/<stem>.json and .md, each written atomically; prints the Markdown and returns the stem path."""
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / stem
    atomic_write_text(path.with_suffix(".json"), json.dumps(result, indent=2, allow_nan=False) + "\n")
    atomic_write_text(path.with_suffix(".md"), markdown)
    print(markdown)
    print(f"wrote {path}.json and .md")
    return path
