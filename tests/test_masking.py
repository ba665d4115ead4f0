"""Masked fine-tuning: the three selections, updates confined to the chosen entries, and masks kept over a resume."""
from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn

import part2_mobilenet
from common.masking import MaskedUpdates, backbone_parameters, gradient_scores, select_masks
from common.runs import load_checkpoint
from conftest import Killed, kill_after, tiny_args


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def test_each_selection_chooses_its_share_of_entries():
    params = backbone_parameters(_net(), head_child="7")
    total = sum(p.numel() for p in params.values())
    scores = {n: torch.rand_like(p) for n, p in params.items()}
    for how in ("grad", "random", "last"):
        masks = select_masks(params, 0.1, how, scores, torch.Generator().manual_seed(0))
        assert sum(int(m.sum()) for m in masks.values()) == round(0.1 * total)
        assert all(m.shape == params[n].shape and m.dtype == torch.bool for n, m in masks.items())
    top = select_masks(params, 0.1, "grad", scores)
    flat = torch.cat([scores[n].flatten() for n in params])
    chosen = torch.cat([top[n].flatten() for n in params])
    assert flat[chosen].min() >= flat[~chosen].max()  # the largest gradient magnitudes
    last = select_masks(params, 0.1, "last")
    assert last["3.bias"].all() and not last["0.weight"].any()  # from the layer below the head down
    draws = [select_masks(params, 0.1, "random", generator=torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
    assert torch.equal(draws[0]["3.weight"], draws[1]["3.weight"])
    assert not torch.equal(draws[0]["3.weight"], draws[2]["3.weight"])


def test_gradient_scores_leave_the_model_as_they_found_it():
    model = _net()
    model[0].requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(torch.randn(4, 3, 9, 9), torch.arange(4))]
    scores = gradient_scores(model, "7", batches, nn.CrossEntropyLoss())
    assert set(scores) == {"0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"}
    assert all((s >= 0).all() for s in scores.values()) and scores["3.weight"].sum() > 0
    assert not model[0].weight.requires_grad and model[3].weight.requires_grad and model[0].weight.grad is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # eval mode: no BatchNorm update


def test_only_chosen_entries_move_under_momentum_and_weight_decay():
    model = _net()
    params = backbone_parameters(model, "7")
    masks = select_masks(params, 0.05, "last")
    masks["1.weight"][:2] = True  # a partly chosen BatchNorm weight as well
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    updates = MaskedUpdates(model, masks)
    assert not model[0].weight.requires_grad  # no chosen entry: frozen outright, and out of the optimizer
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1, weight_decay=0.5)
    updates.attach(optimizer)
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(8, 3, 9, 9)), torch.arange(8) % 4).backward()
        optimizer.step()
    for n, p in model.named_parameters():
        moved = p.detach() != start[n]
        if n in masks:
            assert not (moved & ~masks[n]).any(), f"an unchosen entry of {n} moved"
        else:
            assert moved.all(), f"the head's {n} should train whole"
    assert (model[3].bias != start["3.bias"]).any() and updates.updated == sum(int(m.sum()) for m in masks.values())


def test_masked_run_trains_its_share_and_a_resumed_run_keeps_its_masks(dataset, tmp_path, monkeypatch):
    torch.manual_seed(1)
    pretrained = torchvision.models.mobilenet_v2().state_dict()
    weights = tmp_path / "mnv2.pth"
    torch.save(pretrained, weights)
    out = tmp_path / "runs"
    argv = tiny_args(dataset, out, "--mode", "masked", "--mask-fraction", "0.01", "--weights", str(weights),
                     "--epochs", "2", "--batch-size", "16")
    kill_after(monkeypatch, "last.pt", 0)
    with pytest.raises(Killed):
        part2_mobilenet.main(part2_mobilenet.get_args_parser().parse_args(argv))
    monkeypatch.undo()
    last = next(out.glob("*/last.pt"))
    masks = load_checkpoint(last, keys=("callbacks",))["callbacks"]["MaskedUpdates"]["masks"]
    part2_mobilenet.main(part2_mobilenet.get_args_parser().parse_args([*argv, "--resume", str(last)]))
    run = last.parent
    final = load_checkpoint(run / "last.pt", keys=("callbacks",))
    assert all(torch.equal(final["callbacks"]["MaskedUpdates"]["masks"][n], m) for n, m in masks.items())
    backbone = sum(v.numel() for k, v in pretrained.items() if k in masks)
    chosen = sum(int(m.sum()) for m in masks.values())
    assert chosen == round(0.01 * backbone)
    for name, m in masks.items():  # every unchosen pretrained entry is where the weights file had it
        assert torch.equal(final["model_state"][name][~m], pretrained[name][~m]), name
    assert any((final["model_state"][n][m] != pretrained[n][m]).any() for n, m in masks.items())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["trainable_params"] == 12_810 + chosen and metrics["resumed_from_epoch"] == 1
    assert final["mask"] == {"fraction": 0.01, "select": "grad"}
