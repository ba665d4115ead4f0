"""LoRA mode: the adapters, what trains, the exact merge, and a run whose checkpoint evaluates merged."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

import part2_mobilenet
from common import transfer
from common.inference import Predictor
from common.lora import Adapter, LoRAConv2d, LoRALinear, add_lora, merge_lora
from common.models import WeightsError, build_model, count_parameters, model_from_checkpoint, set_train_mode
from common.runs import load_checkpoint
from conftest import tiny_args


def _perturb_up(model: nn.Module) -> None:
    """The up projections start at zero (the adapter adds nothing); give them values, as training would."""
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, Adapter):
            nn.init.normal_(m.up.weight, std=0.05)


@pytest.mark.parametrize("layer, shape", [
    (nn.Conv2d(6, 10, 3, stride=2, padding=1, bias=True), (2, 6, 15, 15)),
    (nn.Conv2d(6, 10, 5, padding=4, dilation=2, bias=False), (2, 6, 12, 12)),
    (nn.Conv2d(6, 10, 1), (2, 6, 7, 7)),
    (nn.Linear(12, 5), (3, 12)),
])
def test_an_adapter_starts_as_its_layer_and_merges_into_it_exactly(layer, shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    wrapped = (LoRAConv2d if isinstance(layer, nn.Conv2d) else LoRALinear)(copy.deepcopy(layer), rank=3, alpha=6.0)
    assert torch.allclose(wrapped(x), layer(x), atol=1e-6)  # B = 0: the pretrained layer, unchanged
    nn.init.normal_(wrapped.up.weight)
    adapted = wrapped(x)
    assert not torch.allclose(adapted, layer(x), atol=1e-3)
    holder = nn.Sequential(wrapped)
    merged = merge_lora(holder)[0]
    assert type(merged) is type(layer) and torch.allclose(merged(x), adapted, atol=1e-5)


def test_lora_wraps_every_linear_and_ungrouped_conv_but_the_head_and_trains_only_adapters_and_head():
    model, _ = build_model("mobilenet_v2", 10, "lora", lora=(4, 8.0))
    convs = [m for m in build_model("mobilenet_v2", 10, "full")[0].features.modules() if isinstance(m, nn.Conv2d)]
    adapters = [m for m in model.modules() if isinstance(m, LoRAConv2d)]
    assert len(adapters) == sum(c.groups == 1 for c in convs) and len(adapters) < len(convs)  # depthwise: frozen
    assert isinstance(model.classifier[1], nn.Linear)  # the new head trains whole, unadapted
    for name, p in model.named_parameters():
        assert p.requires_grad == (".down." in name or ".up." in name or name.startswith("classifier")), name
    assert all(m.scale == 2.0 for m in adapters)  # alpha / rank
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        add_lora(model, 4, 8.0, skip="classifier")


def test_a_lora_training_step_moves_the_adapters_and_head_only():
    torch.manual_seed(0)
    model, _ = build_model("resnet18", 10, "lora", lora=(4, 4.0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    set_train_mode(model)
    assert not model.bn1.training and model.layer1[0].conv1.training  # frozen BatchNorm stays in eval
    for _ in range(2):  # the down projections get a gradient once the up ones are off zero
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.arange(4)).backward()
        opt.step()
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved == {k for k in before if ".down." in k or ".up." in k or k.startswith("fc.")}


def test_merged_network_is_the_plain_architecture_computing_the_same_function():
    model, _ = build_model("resnet18", 10, "lora", lora=(8, 16.0))
    _perturb_up(model)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        adapted = model(x)
        merged = merge_lora(copy.deepcopy(model))
        assert torch.allclose(merged(x), adapted, atol=1e-4)
    assert not any(isinstance(m, Adapter) for m in merged.modules())
    assert merged.state_dict().keys() == build_model("resnet18", 10, "full")[0].state_dict().keys()


def test_lora_run_records_its_adapters_and_its_checkpoint_evaluates_merged(dataset, tmp_path):
    out = tmp_path / "runs"
    run = transfer.main(part2_mobilenet.get_args_parser().parse_args(tiny_args(
        dataset, out, "--mode", "lora", "--lora-rank", "4", "--weights", "none", "--epochs", "2",
        "--batch-size", "16")), "mobilenet_v2")
    metrics = json.loads((run / "metrics.json").read_text())
    unmerged, _ = build_model("mobilenet_v2", 10, "lora", lora=(4, 8.0))
    assert metrics["mode"] == "lora" and metrics["trainable_params"] == count_parameters(unmerged)[0] == 87_158
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt["lora"] == {"rank": 4, "alpha": 8.0} and ckpt["config"]["lr"] == 1e-3
    unmerged.load_state_dict(ckpt["model_state"])
    assert any(unmerged.state_dict()[k].abs().sum() > 0 for k in ckpt["model_state"] if ".up." in k)  # it trained
    predictor = Predictor(ckpt)
    assert not any(isinstance(m, Adapter) for m in predictor.model.modules())
    images = np.random.default_rng(0).integers(0, 256, (3, 72, 72, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = unmerged.eval()(predictor.prepare(images))
    assert torch.allclose(predictor.logits(images), expected, atol=1e-4)


def test_an_edited_lora_checkpoint_is_refused_in_one_line(dataset, tmp_path):
    model, _ = build_model("mobilenet_v2", 10, "lora", lora=(4, 8.0))
    ckpt = {"arch": "mobilenet_v2", "mode": "lora", "classes": [str(i) for i in range(10)],
            "model_state": model.state_dict(), "lora": {"rank": 4, "alpha": 8.0}}
    assert not any(isinstance(m, Adapter) for m in model_from_checkpoint(ckpt).modules())
    for edit in ({"lora": None}, {"lora": {"rank": 8, "alpha": 8.0}}, {"mode": "fc"}):
        with pytest.raises(WeightsError, match="it was edited") as e:
            model_from_checkpoint({**ckpt, **edit})
        assert "\n" not in str(e.value)
