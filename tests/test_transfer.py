"""Part 2: freezing by mode, frozen BatchNorm, weights resolution and feature caching."""
from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import part2_mobilenet
from common import transfer
from common.architectures import ARCHS
from common.engine import param_groups
from common.models import WeightsError, build_model, count_parameters, load_pretrained, set_train_mode
from common.runs import load_checkpoint
from conftest import read_board, refusal, tiny_args


@pytest.mark.parametrize("arch, mode, expected", [
    ("resnet18", "fc", 5_130), ("resnet18", "blocks34", 10_498_570), ("resnet18", "full", 11_181_642),
    ("mobilenet_v2", "fc", 12_810), ("mobilenet_v2", "full", 2_236_682),
])
def test_trainable_parameter_counts(arch, mode, expected):
    model, _ = build_model(arch, 10, mode)
    assert count_parameters(model)[0] == expected


def test_blocks34_trains_exactly_layer3_layer4_fc():
    model, _ = build_model("resnet18", 10, "blocks34")
    tops = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert tops == {"layer3", "layer4", "fc"}
    frozen = {name.split(".")[0] for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "bn1", "layer1", "layer2"}


def test_top_mode_trains_the_last_l_blocks_and_the_head_from_the_head_down():
    resnet = lambda blocks: build_model("resnet18", 10, "top", blocks=blocks)[0]  # noqa: E731
    trained = lambda model: {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}  # noqa: E731
    assert trained(resnet(1)) == {"fc", "layer4"}
    assert trained(resnet(2)) == trained(build_model("resnet18", 10, "blocks34")[0])  # the assignment's mode
    assert trained(resnet(5)) == {"fc", "layer4", "layer3", "layer2", "layer1", "conv1", "bn1"}
    counts = [count_parameters(build_model("mobilenet_v2", 10, "top", blocks=b)[0])[0] for b in range(1, 5)]
    assert counts == sorted(counts) and counts[-1] == 2_236_682  # every block: the whole network
    mnv2 = build_model("mobilenet_v2", 10, "top", blocks=1)[0]
    assert all(p.requires_grad == (n.startswith("classifier") or int(n.split(".")[1]) >= 14)
               for n, p in mnv2.named_parameters())  # features 14-18: the stride-32 stage


def test_top_mode_run_records_its_depth_and_its_checkpoint_evaluates(dataset, tmp_path):
    from common.inference import Predictor
    out = tmp_path / "runs"
    run = transfer.main(part2_mobilenet.get_args_parser().parse_args(tiny_args(
        dataset, out, "--mode", "top", "--blocks", "1", "--weights", "none", "--epochs", "1", "--batch-size", "16")),
        "mobilenet_v2")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["mode"] == "top" and metrics["trainable_params"] == 1_694_154  # the stride-32 stage and the head
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt["mode"] == "top" and ckpt["config"]["blocks"] == 1 and ckpt["config"]["lr"] == ARCHS[
        "mobilenet_v2"].lr["top"]
    logits = Predictor(ckpt).logits(np.zeros((2, 72, 72, 3), np.uint8))
    assert logits.shape == (2, 10)


@pytest.mark.parametrize("arch, mode", [("resnet18", "blocks34"), ("resnet18", "fc"), ("mobilenet_v2", "fc")])
def test_training_step_moves_only_trainable_state(arch, mode):
    torch.manual_seed(0)
    model, _ = build_model(arch, 10, mode)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(trainable)
    set_train_mode(model)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.arange(4))
    loss.backward()
    opt.step()
    after = model.state_dict()
    for key, value in before.items():
        owner = key.rsplit(".", 1)[0]
        is_trainable = key in trainable or any(n.startswith(owner + ".") for n in trainable)
        changed = not torch.equal(value, after[key])
        if key.endswith("num_batches_tracked"):
            continue
        if is_trainable and not key.endswith(("running_mean", "running_var")):
            assert changed, f"trainable {key} did not change"
        if not is_trainable:
            assert not changed, f"frozen {key} changed"


def fake_imagenet_state(arch: str) -> dict:
    torch.manual_seed(1)
    return getattr(torchvision.models, arch)().state_dict()


def test_weights_api_picks_up_torch_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.get_weight(ARCHS["mobilenet_v2"].weights)
    cached = tmp_path / "hub" / "checkpoints" / Path(weights.url).name
    cached.parent.mkdir(parents=True)
    state = fake_imagenet_state("mobilenet_v2")
    torch.save(state, cached)
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tried to download"))
    model, record = build_model("mobilenet_v2", 10, "fc", "imagenet")
    assert "MobileNet_V2_Weights.IMAGENET1K_V1" in record["source"] and len(record["sha256"]) == 64
    assert torch.equal(model.features[0][0].weight, state["features.0.0.weight"])
    assert model.classifier[1].out_features == 10


def test_offline_without_cache_explains_both_ways_out(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsError, match="go online once.*--weights PATH"):
        build_model("resnet18", 10, "fc", "imagenet")


def test_weights_file_loads_and_mismatch_is_clear(tmp_path):
    good = tmp_path / "mnv2.pth"
    torch.save(fake_imagenet_state("mobilenet_v2"), good)
    model = torchvision.models.mobilenet_v2()
    record = load_pretrained(model, "mobilenet_v2", str(good))
    assert record["source"] == str(good) and len(record["sha256"]) == 64
    wrong = tmp_path / "r18.pth"
    torch.save(fake_imagenet_state("resnet18"), wrong)
    with pytest.raises(WeightsError, match="do not fit torchvision mobilenet_v2"):
        load_pretrained(torchvision.models.mobilenet_v2(), "mobilenet_v2", str(wrong))
    with pytest.raises(WeightsError, match="no such file"):
        load_pretrained(torchvision.models.mobilenet_v2(), "mobilenet_v2", str(tmp_path / "absent.pth"))
    assert load_pretrained(torchvision.models.mobilenet_v2(), "mobilenet_v2", "none")["sha256"] is None


def test_feature_cache_matches_uncached_head_training(dataset, tmp_path):
    weights = tmp_path / "mnv2.pth"
    torch.save(fake_imagenet_state("mobilenet_v2"), weights)
    common = ["--mode", "fc", "--weights", str(weights), "--epochs", "2", "--batch-size", "16", "--no-augment",
              "--lr", "1e-2", "--warmup-epochs", "0"]
    heads = []
    for i, extra in enumerate(([], ["--cache-features"])):
        out = tmp_path / f"runs{i}"
        part2_mobilenet.main(part2_mobilenet.get_args_parser().parse_args(tiny_args(dataset, out, *common, *extra)))
        run = next(p for p in out.iterdir() if p.name.endswith("mobilenet_v2-fc"))
        ckpt = load_checkpoint(run / "last.pt")
        heads.append((ckpt, json.loads((run / "metrics.json").read_text())))
    (plain, m_plain), (cached, m_cached) = heads
    for key in ("classifier.1.weight", "classifier.1.bias"):
        torch.testing.assert_close(cached["model_state"][key], plain["model_state"][key], rtol=1e-3, atol=1e-4)
    backbone = [k for k in plain["model_state"] if not k.startswith("classifier")]
    assert all(torch.equal(cached["model_state"][k], plain["model_state"][k]) for k in backbone)
    assert m_cached["test_acc"] == pytest.approx(m_plain["test_acc"])
    assert "feature_extraction_seconds" in m_cached and m_plain["trainable_params"] == 12_810
    assert cached["weights"]["sha256"] == plain["weights"]["sha256"]
    assert list((tmp_path / "runs1" / "cache").glob("features-mobilenet_v2-*.pt"))
    # a head trained on features still shows the centre crops it saw and its network's Grad-CAM in TensorBoard
    board = read_board(next(p for p in (tmp_path / "runs1").iterdir() if p.name.endswith("mobilenet_v2-fc")))
    assert board["hparams"]["cache_features"] == 1 and board["hparams"]["mode"] == "fc"
    assert set(board["images"]) == {"images/training_batch", "images/confusion_matrix_test", "images/gradcam_test"}


@pytest.mark.parametrize("argv, message", [
    (["--mode", "blocks34"], "invalid choice: 'blocks34'"),
    (["--weights", "/nonexistent.pth"], "no such file"),
    (["--mode", "full", "--cache-features", "--weights", "none"], "--cache-features needs a frozen backbone"),
    (["--mode", "top", "--weights", "none"], "--mode top trains the last --blocks L blocks and the head; give it"),
    (["--mode", "full", "--blocks", "2", "--weights", "none"], "--blocks sets how many blocks --mode top trains"),
    (["--mode", "top", "--blocks", "5", "--weights", "none"], "argument --blocks: 5 is out of range; give an "
                                                              "integer in [1, 4]"),
    (["--mode", "fc", "--lora-rank", "4", "--weights", "none"], "--lora-rank and --lora-alpha shape the adapters of "
                                                                "--mode lora; drop them with --mode fc"),
    (["--mode", "lora", "--lora-alpha", "0", "--weights", "none"], "argument --lora-alpha: 0 is out of range"),
    (["--mode", "full", "--mask-select", "random", "--weights", "none"], "--mask-fraction and --mask-select choose "
                                                                         "what --mode masked trains"),
    (["--mode", "masked", "--mask-fraction", "1.5", "--weights", "none"], "argument --mask-fraction: 1.5 is out of "
                                                                          "range"),
])
def test_part2_cli_errors(dataset, tmp_path, capsys, argv, message):
    err = refusal(part2_mobilenet, [*tiny_args(dataset, tmp_path / "runs", "--epochs", "1"), *argv], capsys)
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_lr_decay_gives_deeper_blocks_smaller_rates():
    model, _ = build_model("resnet18", 10, "full")
    lr_of = lambda name: 1e-3 * 0.5 ** transfer.block_depth("resnet18", name)  # noqa: E731
    groups = param_groups(model, 1e-4, 1e-3, lr_of)
    rate = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert rate[id(model.fc.weight)] == 1e-3 and rate[id(model.layer4[0].conv1.weight)] == 5e-4
    assert rate[id(model.layer1[0].conv1.weight)] == 1e-3 / 16 and rate[id(model.conv1.weight)] == 1e-3 / 32
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    mnv2, _ = build_model("mobilenet_v2", 10, "full")
    depths = {transfer.block_depth("mobilenet_v2", n) for n, _ in mnv2.named_parameters()}
    assert depths == {0, 1, 2, 3, 4}


def test_default_learning_rate_is_recorded_without_rewriting_the_options(dataset, tmp_path):
    out = tmp_path / "runs"
    args = part2_mobilenet.get_args_parser().parse_args(
        tiny_args(dataset, out, "--mode", "fc", "--weights", "none", "--epochs", "1", "--batch-size", "16"))
    assert args.lr is None
    run = transfer.main(args, "mobilenet_v2")
    assert args.lr is None  # the caller's options are left as given, so a second run picks its own default
    default = ARCHS["mobilenet_v2"].lr["fc"]
    assert json.loads((run / "config.json").read_text())["lr"] == default
    assert json.loads((run / "metrics.json").read_text())["lr"] == default
    assert load_checkpoint(run / "last.pt")["config"]["lr"] == default


def test_linear_probe_trains_the_head_first_and_fine_tuning_starts_from_it(dataset, tmp_path, monkeypatch):
    from conftest import Killed, kill_after
    weights = tmp_path / "mnv2.pth"
    torch.save(fake_imagenet_state("mobilenet_v2"), weights)
    probed, real = [], transfer.linear_probe

    def spy(model, *a, **k):
        before = model.classifier[1].weight.detach().clone()
        figures = real(model, *a, **k)
        probed.append((before, {n: p.detach().clone() for n, p in model.classifier.named_parameters()}, figures))
        return figures

    out = tmp_path / "runs"
    argv = tiny_args(dataset, out, "--mode", "full", "--weights", str(weights), "--epochs", "2", "--probe-epochs",
                     "4", "--lr", "1e-9", "--no-augment", "--batch-size", "16")
    monkeypatch.setattr(transfer, "linear_probe", spy)
    kill_after(monkeypatch, "last.pt", 0)
    with pytest.raises(Killed):
        part2_mobilenet.main(part2_mobilenet.get_args_parser().parse_args(argv))
    monkeypatch.undo()
    monkeypatch.setattr(transfer, "linear_probe", spy)
    last = next(out.glob("*/last.pt"))
    part2_mobilenet.main(part2_mobilenet.get_args_parser().parse_args([*argv, "--resume", str(last)]))
    assert len(probed) == 1  # the resumed run's checkpoint already holds the probed head
    before, head, figures = probed[0]
    assert not torch.allclose(before, head["1.weight"])  # the probe moved the fresh head
    final = load_checkpoint(next(out.glob("*/best.pt")))["model_state"]
    for name, value in head.items():  # lr 1e-9: fine-tuning left the probed head where the probe put it
        torch.testing.assert_close(final[f"classifier.{name}"], value, atol=1e-6, rtol=1e-5)
    assert figures["probe_epochs"] == 4 and 0 <= figures["probe_val_acc"] <= 1
    assert list((out / "cache").glob("features-mobilenet_v2-*.pt"))  # the fc runs' feature cache, shared
    # the resumed run skipped the probe, yet its metrics report the probe it started from, and its time
    metrics = json.loads(next(out.glob("*/metrics.json")).read_text())
    assert {k: metrics[k] for k in figures} == figures and metrics["resumed_from_epoch"] == 1
    assert "feature_extraction_seconds" in metrics


def test_probe_in_fc_mode_is_refused(dataset, tmp_path, capsys):
    with pytest.raises(SystemExit):
        part2_mobilenet.get_args_parser().parse_args(tiny_args(dataset, tmp_path, "--probe-epochs", "3"))
    assert "use --cache-features instead" in capsys.readouterr().err
