"""Grad-CAM, occlusion and integrated gradients, and gradcam.py end to end."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import cv2
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradcam
import part1_scratch_cnn as part1
from common.cli import UserError
from common.explain import GradCAM, completeness_gap, find_layer, integrated_gradients, occlusion
from common.models import build_model
from conftest import ROOT, tiny_args


class GapNet(nn.Module):
    """conv -> ReLU (in place) -> conv -> global average pool -> linear: the classic CAM setting."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True))
        self.last = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.last(self.body(x)), 1).flatten(1))


def normalized(cam):
    cam = cam.clamp_min(0)
    flat = cam.flatten(1)
    lo, hi = flat.min(1).values.view(-1, 1, 1), flat.max(1).values.view(-1, 1, 1)
    return (cam - lo) / (hi - lo)


def test_gradcam_equals_classic_cam_on_gap_linear_model():
    torch.manual_seed(0)
    model = GapNet().eval()
    x = torch.randn(3, 3, 16, 16)
    target = torch.tensor([0, 2, 3])
    with GradCAM(model, model.last) as cam:
        heat, logits = cam(x, target)
    feats = model.last(model.body(x.clone()))
    classic = torch.einsum("nchw,nc->nhw", feats, model.fc.weight[target])
    assert heat.shape == (3, 16, 16)  # same size as the feature map here, so no upsampling blur
    torch.testing.assert_close(heat, normalized(classic), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits, model(x))


def test_hooks_are_removed_also_after_an_exception():
    model = GapNet().eval()
    with GradCAM(model, model.last) as cam:
        cam(torch.randn(1, 3, 8, 8))
        assert len(model.last._forward_hooks) == 1
    assert len(model.last._forward_hooks) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with GradCAM(model, model.last):
            raise RuntimeError("boom")
    assert len(model.last._forward_hooks) == 0
    with pytest.raises(RuntimeError, match="with"):
        GradCAM(model, model.last)(torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("arch, mode, layer", [
    ("scratch_cnn", "full", "features.18"),    # target is an in-place ReLU
    ("resnet18", "fc", "layer4"),              # frozen backbone
    ("mobilenet_v2", "fc", "features.18"),
])
def test_gradcam_on_our_models_frozen_and_in_place(arch, mode, layer):
    torch.manual_seed(0)
    model, _ = build_model(arch, 10, mode)
    for p in model.parameters():
        p.requires_grad_(False)  # fully frozen
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():  # also works inside an outer no_grad block, beside plain forward passes
        with GradCAM(model, find_layer(model, layer)) as cam:
            model(x)
            heat, _ = cam(x)
    assert heat.shape == (2, 64, 64) and heat.min() >= 0 and heat.max() <= 1
    assert (heat.flatten(1).max(1).values == 1).all()
    assert all(p.grad is None for p in model.parameters())


def test_unknown_layer_lists_valid_ones():
    model, _ = build_model("resnet18", 10, "fc")
    with pytest.raises(ValueError, match="valid layers: .*layer4"):
        find_layer(model, "layer9")


class LeftHalfNet(nn.Module):
    """Looks only at the left half of the image."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return self.fc(x[..., : x.shape[-1] // 2].mean((2, 3)))


def test_occlusion_of_an_ignored_region_changes_nothing():
    torch.manual_seed(0)
    model = LeftHalfNet().eval()
    x = torch.randn(2, 3, 32, 32)
    heat = occlusion(model, x, torch.tensor([0, 1]), patch=8, stride=8)
    assert heat.shape == (2, 32, 32)
    assert torch.equal(heat[..., 16:], torch.zeros_like(heat[..., 16:]))
    assert heat[..., :16].abs().sum() > 0


def test_integrated_gradients_completeness_and_batching():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3)).eval()
    x = torch.randn(3, 3, 12, 12)
    target = torch.tensor([1, 2, 0])
    attr = integrated_gradients(model, x, target, steps=64)
    with torch.no_grad():
        index = target.view(-1, 1)
        gap = model(x).gather(1, index)[:, 0] - model(torch.zeros_like(x)).gather(1, index)[:, 0]
    torch.testing.assert_close(attr.sum((1, 2, 3)), gap, atol=2e-3, rtol=1e-2)
    relative = (attr.sum((1, 2, 3)) - gap).abs() / gap.abs()
    torch.testing.assert_close(completeness_gap(model, x, target, attr), relative)
    # how the 3 x 64 path points are batched (one at a time, chunks that straddle images, all at once) changes
    # nothing but the speed
    for internal_batch in (1, 50, 192):
        torch.testing.assert_close(integrated_gradients(model, x, target, steps=64, internal_batch=internal_batch),
                                   attr, atol=1e-6, rtol=1e-5)
    coarse = completeness_gap(model, x, target, integrated_gradients(model, x, target, steps=2))
    assert coarse.mean() > completeness_gap(model, x, target, attr).mean()  # more steps, smaller gap


def test_gradcam_script_writes_grid_and_error_analysis(dataset, tmp_path, capsys):
    out = tmp_path / "runs"
    part1.main(part1.get_args_parser().parse_args(tiny_args(dataset, out, "--epochs", "1", "--batch-size", "16")))
    args = gradcam.get_args_parser().parse_args(
        ["--ckpt", str(out / "best.pt"), "--num", "5", "--out-dir", str(tmp_path / "cam"), "--device", "cpu"])
    gradcam.main(args)
    grid = cv2.imread(str(tmp_path / "cam" / "gradcam_grid.png"))
    assert grid is not None and grid.shape[0] > grid.shape[1]  # 5 rows of 3 panels
    md = (tmp_path / "cam" / "error_analysis.md").read_text()
    assert "# Error analysis: scratch_cnn/full" in md and ("top-3" in md or "No misclassified" in md)
    gradcam.main(gradcam.get_args_parser().parse_args(
        ["--ckpt", str(out / "best.pt"), "--num", "5", "--out-dir", str(tmp_path / "faith"), "--device", "cpu",
         "--method", "none", "--faithfulness", "4", "--sanity", "2", "--ig-steps", "8", "--compare-layer", "default"]))
    layers = json.loads((tmp_path / "faith" / "layers.json").read_text())
    assert layers["layers"] == ["features.18", "features.14"] and layers["n"] == 5
    assert layers["scores"]["features.14"]["size"] == [4, 4] and layers["scores"]["features.18"]["size"] == [2, 2]
    assert -1 <= layers["rank_correlation"]["mean"] <= 1
    scores = json.loads((tmp_path / "faith" / "faithfulness.json").read_text())
    assert scores["n"] == 4 and set(scores["methods"]) == {"Grad-CAM", "integrated gradients", "occlusion", "random"}
    assert all(0 <= m["deletion_mean"] <= 1 and 0 <= m["insertion_mean"] <= 1 for m in scores["methods"].values())
    assert "## Faithfulness" in (tmp_path / "faith" / "error_analysis.md").read_text()
    sanity = json.loads((tmp_path / "faith" / "sanity.json").read_text())
    assert sanity["n"] == 2 and [r["randomized"] for r in sanity["cascade"]] == ["classifier", "everything else"]
    shuffled = sanity["data_randomization"]
    assert shuffled["train_images"] == 120 and shuffled["head_only"] is False  # the scratch CNN trains everything
    assert set(shuffled["methods"]) == {"Grad-CAM", "integrated gradients", "occlusion"} and shuffled["fit_acc"] > 0.2
    faith_md = (tmp_path / "faith" / "error_analysis.md").read_text()
    assert "## Sanity check: cascading" in faith_md and "## Sanity check: data randomisation" in faith_md
    assert "the test covers the head only" in faith_md and "## Grad-CAM on two layers" in faith_md
    assert "- Grad-CAM (features.14) for " in faith_md or "No misclassified" in faith_md
    gradcam.main(gradcam.get_args_parser().parse_args(["--ckpt", str(out / "best.pt"), "--layer", "list"]))
    listed = capsys.readouterr().out
    assert re.search(r"features\.0 +32 x 32 x 32", listed) and re.search(r"features\.18 +384 x \d+ x \d+", listed)
    one = dataset / "gatto" / "img000.jpg"
    gradcam.main(gradcam.get_args_parser().parse_args(
        ["--ckpt", str(out / "best.pt"), "--image", str(one), "--target-class", "cat",
         "--method", "integrated-gradients",
         "--out-dir", str(tmp_path / "one")]))
    explained = (tmp_path / "one" / "error_analysis.md").read_text()
    assert "Grad-CAM (features.18) for cat: " in explained
    assert re.search(r"integrated-gradients for cat: .*\(completeness gap \d+\.\d%\)", explained)
    proc = subprocess.run([sys.executable, str(ROOT / "gradcam.py"), "--ckpt", str(out / "best.pt"),
                           "--layer", "nope"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "valid layers: " in proc.stderr and "features.18" in proc.stderr
    with pytest.raises(UserError, match="is the Grad-CAM layer itself"):
        gradcam.main(gradcam.get_args_parser().parse_args(["--ckpt", str(out / "best.pt"), "--compare-layer",
                                                           "features.18"]))


class PatchNet(nn.Module):
    """The class is decided by the 8 x 8 patch at the top left alone: the positive part of its channel k."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.conv.bias.zero_()

    def forward(self, x):
        return 4 * F.relu(self.conv(x))[..., :8, :8].mean((2, 3))


def patch_images(n: int = 6, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = 0.3 * torch.randn(n, 3, size, size, generator=g)
    y = torch.arange(n) % 3
    checker = (torch.arange(8).view(-1, 1) + torch.arange(8)) % 2 * 4.0 - 2  # fine detail: a blur wipes it out
    for i, k in enumerate(y.tolist()):
        x[i, k, :8, :8] += checker
    return x, y


def test_deletion_and_insertion_reward_the_true_evidence_and_not_a_random_order():
    from common.faithfulness import deletion_insertion
    model = PatchNet().eval()
    x, y = patch_images()
    truth = torch.zeros(len(x), 32, 32)
    truth[:, :8, :8] = 1
    d_true, i_true = deletion_insertion(model, x, y, truth)
    noise = torch.rand(len(x), 32, 32, generator=torch.Generator().manual_seed(1))
    d_rand, i_rand = deletion_insertion(model, x, y, noise)
    d_worst, i_worst = deletion_insertion(model, x, y, -truth)  # the evidence last
    assert (d_true < d_rand).all() and (i_true > i_rand).all()
    assert (d_rand < d_worst).all() and (i_rand > i_worst).all()
    assert ((0 <= d_true) & (i_true <= 1)).all()


def test_every_method_is_more_faithful_than_random_on_a_model_whose_evidence_is_known():
    from common.faithfulness import faithfulness
    model = PatchNet().eval()
    x, y = patch_images()
    scores = faithfulness(model, model.conv, [(x[:3], y[:3]), (x[3:], y[3:])], ig_steps=32)
    assert set(scores) == {"Grad-CAM", "integrated gradients", "occlusion", "random"}
    assert all(s["n"] == 6 for s in scores.values())
    for method in ("Grad-CAM", "integrated gradients", "occlusion"):
        assert scores[method]["deletion_mean"] < scores["random"]["deletion_mean"] - 0.1, (method, scores)
        assert scores[method]["insertion_mean"] > scores["random"]["insertion_mean"] + 0.1, (method, scores)


def test_cascading_randomization_goes_from_the_head_down_and_leaves_the_model_alone():
    from common.architectures import ARCHS
    from common.sanity import cascade, cascading_randomization, flagged
    resnet, _ = build_model("resnet18", 10)
    assert [name for name, _ in cascade(resnet, ARCHS["resnet18"].blocks)] == [
        "fc", "layer4", "layer3", "layer2", "layer1", "everything else"]  # the stem: conv1 and bn1
    torch.manual_seed(0)
    model, _ = build_model("scratch_cnn", 10)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 64, 64)
    rows = cascading_randomization(model, ARCHS["scratch_cnn"].blocks, "features.18", x, torch.tensor([1, 2]),
                                   ig_steps=4)
    assert [r["randomized"] for r in rows] == ["classifier", "everything else"]
    assert set(rows[0]) == {"randomized", "Grad-CAM", "integrated gradients", "occlusion"}
    assert all(-1 <= r[k]["mean"] <= 1 for r in rows for k in r if k != "randomized")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # every weight random: a map that still ranks the pixels as the trained model's did is flagged
    last = {"randomized": "everything else", "Grad-CAM": {"mean": 0.1, "std": 0.1},
            "integrated gradients": {"mean": 0.8, "std": 0.1}}
    assert flagged([rows[0], last]) == ["integrated gradients"]


def test_a_head_fitted_to_shuffled_labels_changes_the_maps_and_leaves_the_model_alone():
    from common.sanity import data_randomization, head_inputs
    torch.manual_seed(0)
    model = GapNet().eval()
    images = torch.randn(80, 3, 16, 16)
    with torch.no_grad():
        labels = model(images).argmax(1)  # labels the trained head predicts perfectly
    before = {k: v.clone() for k, v in model.state_dict().items()}
    features = head_inputs(model, "fc", images.split(32))
    assert features.shape == (80, 6)
    x, target = images[:4], labels[:4]
    result = data_randomization(model, "fc", "last", x, target, features, labels, ig_steps=8)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert result["train_images"] == 80 and result["fit_acc"] > 0.4  # 4 classes: chance is 0.25
    assert set(result["methods"]) == {"Grad-CAM", "integrated gradients", "occlusion"}
    # the features are the same, the class evidence is not: the class-weighted maps move away from the trained ones
    assert result["methods"]["Grad-CAM"]["mean"] < 0.9, result


@pytest.mark.parametrize("option", ["--faithfulness", "--sanity"])
def test_negative_image_counts_are_one_line_errors(option, capsys):
    with pytest.raises(SystemExit) as e:
        gradcam.get_args_parser().parse_args([option, "-2"])
    assert e.value.code == 2
    assert f"argument {option}: -2 is out of range; give an integer >= 0" in capsys.readouterr().err
