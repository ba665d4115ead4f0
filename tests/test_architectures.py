"""The architecture registry: every spec's facts hold for its network; frozen blocks stay in eval mode."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torchvision.ops import StochasticDepth

import part2_efficientnet
from common import transfer
from common.architectures import ARCHS, arch_of_script
from common.explain import DEFAULT_LAYER, GradCAM, find_layer
from common.models import (
    block_depth,
    build_model,
    count_parameters,
    model_from_checkpoint,
    set_train_mode,
    unfreeze_to_depth,
)
from common.runs import load_checkpoint
from conftest import ROOT, tiny_args


@pytest.mark.parametrize("arch", list(ARCHS))
def test_spec_fits_its_network(arch):
    spec = ARCHS[arch]
    model, _ = build_model(arch, 7, next(iter(spec.modes)))
    head = model.get_submodule(spec.head)
    assert isinstance(head, nn.Linear) and head.out_features == 7
    assert spec.head.startswith(spec.head_child + ".") or spec.head == spec.head_child
    children = {name for name, _ in model.named_children()}
    assert all(set(t) <= children for t in spec.modes.values() if t is not None)
    names = [n for n, _ in model.named_parameters()]
    prefixes = [p for block in spec.blocks for p in block]
    assert all(any(n.startswith(p + ".") for n in names) for p in prefixes)  # every block names parameters
    assert all(sum(n.startswith(p + ".") for p in prefixes) <= 1 for n in names)  # none lies in two blocks
    assert [block_depth(arch, n) for n in names if n.startswith(spec.head_child + ".")] == [0, 0]
    if spec.dropout:
        assert isinstance(model.get_submodule(spec.dropout), nn.Dropout)
    find_layer(model, spec.gradcam_layer)
    assert DEFAULT_LAYER[arch] == spec.gradcam_layer
    assert (ROOT / spec.script).is_file() and arch_of_script(spec.script) is spec
    model.eval()(torch.zeros(1, 3, spec.min_crop, spec.min_crop))  # the smallest allowed crop goes through


def test_scripts_that_train_nothing_have_no_spec():
    assert arch_of_script("evaluate.py") is None and arch_of_script("./part2_mobilenet.py") is None


def test_spec_needs_a_rate_for_every_mode():
    spec = ARCHS["mobilenet_v2"]
    with pytest.raises(ValueError, match="default learning rate"):
        type(spec)(**{**spec.__dict__, "lr": {"fc": 1e-3}})


def test_frozen_blocks_stay_in_eval_mode():
    frozen = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    model = nn.Sequential(frozen, nn.Dropout(0.5), nn.Linear(4, 2))
    frozen.requires_grad_(False)
    set_train_mode(model)
    assert not any(m.training for m in frozen.modules())  # its dropout drops nothing, its statistics do not move
    assert model.training and model[1].training and model[2].training
    model[0][1].requires_grad_(True)  # a block with one trainable layer trains as a whole
    set_train_mode(model)
    assert frozen.training and frozen[2].training and not frozen[0].training


# ---------- EfficientNet-B0: the architecture added as one spec entry ----------

@pytest.mark.parametrize("mode, expected", [("fc", 12_810), ("bn", 54_826), ("gradual", 12_810), ("full", 4_020_358)])
def test_efficientnet_trainable_parameter_counts(mode, expected):
    model, _ = build_model("efficientnet_b0", 10, mode)
    assert count_parameters(model) == (expected, 4_020_358)


def test_efficientnet_fc_freezes_the_backbone_in_eval_mode():
    model, _ = build_model("efficientnet_b0", 10, "fc")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"classifier.1.weight", "classifier.1.bias"}
    set_train_mode(model)
    batchnorms = [m for m in model.features.modules() if isinstance(m, nn.BatchNorm2d)]
    drops = [m for m in model.features.modules() if isinstance(m, StochasticDepth)]
    assert batchnorms and drops and not any(m.training for m in batchnorms + drops)
    assert model.classifier.training  # the head's dropout still drops
    with transfer.headless(model, "efficientnet_b0"):
        assert model.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 1280)  # pooled features, for --cache-features


def test_efficientnet_blocks_unfreeze_from_the_top():
    model, _ = build_model("efficientnet_b0", 10, "gradual")
    assert {block_depth("efficientnet_b0", n) for n, _ in model.named_parameters()} == {0, 1, 2, 3, 4}
    assert unfreeze_to_depth(model, "efficientnet_b0", 1) and not unfreeze_to_depth(model, "efficientnet_b0", 1)
    tops = {".".join(n.split(".")[:2]) for n, p in model.named_parameters() if p.requires_grad}
    assert tops == {"classifier.1", "features.6", "features.7", "features.8"}
    assert block_depth("efficientnet_b0", "features.3.0.block.0.0.weight") == 3
    assert block_depth("efficientnet_b0", "features.0.0.weight") == 4 == ARCHS["efficientnet_b0"].max_depth


def test_efficientnet_cli_offers_its_modes_and_minimum_crop(capsys):
    parser = part2_efficientnet.get_args_parser()
    assert parser.parse_args([]).mode == "fc"
    for argv, message in ((["--mode", "blocks34"], "invalid choice: 'blocks34'"),
                          (["--crop-size", "16", "--img-size", "32"], "give at least 32")):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        assert message in capsys.readouterr().err


def test_efficientnet_trains_rebuilds_and_explains(dataset, tmp_path):
    out = tmp_path / "runs"
    args = part2_efficientnet.get_args_parser().parse_args(
        tiny_args(dataset, out, "--mode", "full", "--lr-decay", "0.5", "--weights", "none", "--epochs", "1",
                  "--batch-size", "16"))
    part2_efficientnet.main(args)
    run = next(p for p in out.iterdir() if p.name.endswith("efficientnet_b0-full"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["trainable_params"] == 4_020_358 and metrics["lr"] == 1e-4  # the spec's full-mode rate
    ckpt = load_checkpoint(run / "best.pt")
    model = model_from_checkpoint(ckpt)
    assert not model.training and all(torch.equal(v, ckpt["model_state"][k]) for k, v in model.state_dict().items())
    with GradCAM(model, find_layer(model, DEFAULT_LAYER["efficientnet_b0"])) as cam:
        heat, logits = cam(torch.randn(2, 3, 64, 64))
    assert heat.shape == (2, 64, 64) and logits.shape == (2, 10) and heat.min() >= 0 and heat.max() <= 1
