"""The architecture registry: every spec's facts hold for its network; frozen blocks stay in eval mode."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from common.architectures import ARCHS, arch_of_script
from common.explain import DEFAULT_LAYER, find_layer
from common.models import block_depth, build_model, set_train_mode
from conftest import ROOT


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
    for prefixes in spec.blocks:  # every block names parameters, none twice
        assert all(any(n.startswith(p + ".") for n in names) for p in prefixes)
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
