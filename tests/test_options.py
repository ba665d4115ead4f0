"""Study options: data fractions, class imbalance and its remedies, MixUp/CutMix, auto-augment, bn and gradual modes."""
from __future__ import annotations

import dataclasses
import importlib
import json
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

import part1_scratch_cnn as part1
import part2_mobilenet
from common.cli import DataError
from common.config import AugmentConfig, ObjectiveConfig, TrainConfig, TransferConfig
from common.engine import make_optimizer, make_scheduler, param_groups, seed_everything
from common.loader import BatchLoader, class_weights, mix_batch, train_subset
from common.models import build_model, count_parameters, set_train_mode, unfreeze_to_depth
from common.runs import load_checkpoint
from common.trainer import Callback, Precision, make_objective
from common.transfer import GradualUnfreeze
from common.transforms import make_transforms
from conftest import Killed, kill_after, tiny_args

LABELS = np.repeat(np.arange(10), 50)          # 10 classes x 50 images
TRAIN = np.flatnonzero(np.tile(np.arange(50) < 30, 10))  # 30 training images per class


def per_class(idx: np.ndarray) -> list[int]:
    return np.bincount(LABELS[idx], minlength=10).tolist()


def test_fraction_is_stratified_nested_and_seeded():
    fifth, half = train_subset(LABELS, TRAIN, 0.2, seed=1), train_subset(LABELS, TRAIN, 0.5, seed=1)
    assert per_class(fifth) == [6] * 10 and per_class(half) == [15] * 10
    assert set(fifth) < set(half) < set(TRAIN)
    assert np.array_equal(fifth, train_subset(LABELS, TRAIN, 0.2, seed=1))
    assert not np.array_equal(fifth, train_subset(LABELS, TRAIN, 0.2, seed=2))
    assert np.array_equal(train_subset(LABELS, TRAIN), TRAIN)


@pytest.mark.parametrize("ratio, fraction, head", [(10, 1.0, 30), (3, 1.0, 30), (5, 0.5, 15)])
def test_imbalance_ratio_is_exact_and_long_tailed(ratio, fraction, head):
    counts = per_class(train_subset(LABELS, TRAIN, fraction, ratio))
    assert counts[0] == head and counts[-1] == head / ratio
    assert counts[0] / counts[-1] == ratio
    assert all(a >= b for a, b in zip(counts, counts[1:])) and counts[4] < head


@pytest.mark.parametrize("fraction, ratio", [(0, 1), (1.5, 1), (1, 0.5)])
def test_bad_fraction_or_ratio_is_a_clear_error(fraction, ratio):
    with pytest.raises(DataError, match="--fraction|--imbalance"):
        train_subset(LABELS, TRAIN, fraction, ratio)


def test_class_weights_are_inverse_frequency():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    w = class_weights(labels, 4)
    assert torch.allclose(w, torch.tensor([10 / 24, 10 / 12, 10 / 4, 0.0]))
    # every class weighs the same
    assert torch.allclose(w[:3] * torch.tensor([6.0, 3.0, 1.0]), torch.full((3,), 10 / 4))


def test_objective_weights_training_only_and_mixes_when_asked():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    cpu = torch.device("cpu")
    plain = make_objective(labels, 3, 0.1, "none", 0.0, 0.0, torch.Generator(), cpu)
    assert plain.train is plain.val and plain.train.weight is None and plain.mix is None
    assert plain.val.label_smoothing == 0.1
    weighted = make_objective(labels, 3, 0.1, "weights", 0.0, 0.0, torch.Generator(), cpu)
    assert torch.equal(weighted.train.weight, class_weights(labels, 3)) and weighted.train.label_smoothing == 0.1
    assert weighted.val.weight is None  # validation loss stays comparable across remedies
    # the mixing draws from the generator it was given: the same seed, the same batch
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    a = make_objective(labels, 3, 0.0, "none", 0.4, 1.0, torch.Generator().manual_seed(5), cpu).mix(x, y)
    b = make_objective(labels, 3, 0.0, "none", 0.4, 1.0, torch.Generator().manual_seed(5), cpu).mix(x, y)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[1].shape == (4, 3)


def test_oversampling_balances_classes_reproducibly():
    idx = train_subset(LABELS, TRAIN, 1.0, 10)
    weights = 1 / np.bincount(LABELS[idx])[LABELS[idx]]
    images = np.zeros((len(LABELS), 4, 4, 3), np.uint8)

    def draw(seed: int) -> np.ndarray:
        loader = BatchLoader(images, LABELS, idx, 50, torch.device("cpu"), shuffle=True,
                             generator=torch.Generator().manual_seed(seed), sample_weights=weights)
        return np.concatenate([y.numpy() for _ in range(20) for _, y in loader])

    seen = draw(0)
    assert len(seen) == 20 * len(idx)  # an epoch is as long as the training set
    share = np.bincount(seen, minlength=10) / len(seen)
    assert share.min() > 0.07 and share.max() < 0.13  # balanced, although the data is 10:1
    assert np.array_equal(seen, draw(0)) and not np.array_equal(seen, draw(1))


@pytest.mark.parametrize("mixup, cutmix", [(0.4, 0), (0, 1.0), (0.4, 1.0)])
def test_mixup_cutmix_targets_sum_to_one_and_match_the_pixels(mixup, cutmix):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(8) % 5
    # Each image is filled with its label, so its mean pixel must equal the target-weighted label.
    x = y.float().view(-1, 1, 1, 1).expand(-1, 3, 32, 32).contiguous()
    for _ in range(10):
        mixed, targets = mix_batch(x, y, 5, mixup, cutmix, g)
        assert mixed.shape == x.shape and targets.shape == (8, 5)
        assert torch.allclose(targets.sum(1), torch.ones(8))
        assert torch.allclose(mixed.mean((1, 2, 3)), targets @ torch.arange(5.0), atol=1e-5)
    assert torch.equal(x, y.float().view(-1, 1, 1, 1).expand(-1, 3, 32, 32))  # input untouched


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment"])
def test_auto_augment_changes_images_per_image_and_keeps_shape(policy):
    config = AugmentConfig(crop_size=32, no_augment=False, scale_min=1.0, jitter=0.0, auto_augment=policy)
    x = torch.randint(0, 256, (16, 3, 40, 40), dtype=torch.uint8)

    def augment(seed: int, config: AugmentConfig = config) -> torch.Tensor:
        torch.manual_seed(seed)  # the policy draws from torch's global RNG, the crops from the generator
        return make_transforms(config, torch.Generator().manual_seed(0))[0](x)

    out = augment(0)
    assert out.shape == (16, 3, 32, 32) and out.dtype == torch.float32
    assert torch.equal(out, augment(0)) and not torch.equal(out, augment(1))
    plain = augment(0, dataclasses.replace(config, auto_augment="none"))
    differs = [not torch.equal(a, b) for a, b in zip(out, plain)]
    assert sum(differs) >= 8  # drawn per image: most images get a visible operation


def test_bn_mode_trains_batchnorm_and_head_only():
    model, _ = build_model("mobilenet_v2", 10, "bn")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    bn = {f"{n}.{k}" for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) for k in ("weight", "bias")}
    assert trainable == bn | {"classifier.1.weight", "classifier.1.bias"}
    assert count_parameters(model)[0] == 34_112 + 12_810
    set_train_mode(model)
    assert all(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))  # its statistics adapt


def test_gradual_unfreezing_goes_deeper_block_by_block():
    model, _ = build_model("resnet18", 10, "gradual")
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"fc"}
    groups = param_groups(model, 1e-4, 1e-3)  # the optimizer starts with the head alone (GradualUnfreeze adds blocks)
    assert sum(len(g["params"]) for g in groups) == 2
    assert unfreeze_to_depth(model, "resnet18", 2)
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"fc", "layer4", "layer3"}
    assert not unfreeze_to_depth(model, "resnet18", 2)
    unfreeze_to_depth(model, "resnet18", 5)
    assert all(p.requires_grad for p in model.parameters())


def in_optimizer(optimizer) -> set[int]:
    return {id(p) for g in optimizer.param_groups for p in g["params"]}


def gradual(arch: str = "resnet18", every: int = 2):
    """A gradual-mode model, its AdamW over the trainable parameters, and its GradualUnfreeze callback."""
    model, _ = build_model(arch, 10, "gradual")
    groups = partial(param_groups, model, 1e-4, 1e-3, None)
    optimizer = make_optimizer(groups(), "adamw", 1e-3)
    return model, optimizer, GradualUnfreeze(model, arch, every, groups, log=lambda *a: None)


def test_gradual_unfreeze_adds_each_block_to_the_optimizer_at_the_schedules_rate():
    model, optimizer, callback = gradual()
    scheduler = make_scheduler(optimizer, "cosine", warmup_epochs=0, epochs=6)
    for epoch in range(6):
        callback.on_epoch_start(epoch, optimizer)
        assert in_optimizer(optimizer) == {id(p) for p in model.parameters() if p.requires_grad}
        assert callback.depth == epoch // 2
        factor = scheduler.lr_lambdas[0](epoch)  # a block unfrozen late starts where the schedule is
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-3 * factor] * len(optimizer.param_groups))
        optimizer.step()
        scheduler.step()
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"fc", "layer4", "layer3"}
    set_train_mode(model)
    assert model.layer3[0].bn1.training and not model.layer2[0].bn1.training  # frozen BatchNorm stays in eval

    # A resumed run: the callback's state brings back the same groups, so the optimizer's saved state fits.
    fresh, fresh_optimizer, fresh_callback = gradual()
    fresh_callback.load_state_dict(callback.state_dict(), fresh_optimizer)
    fresh_optimizer.load_state_dict(optimizer.state_dict())
    assert fresh_callback.depth == 2
    sizes = [[len(g["params"]) for g in o.param_groups] for o in (fresh_optimizer, optimizer)]
    assert sizes[0] == sizes[1] and len(sizes[0]) > 2
    assert in_optimizer(fresh_optimizer) == {id(p) for p in fresh.parameters() if p.requires_grad}


def test_gradual_run_resumed_after_a_kill_matches_an_uninterrupted_one(dataset, tmp_path, monkeypatch):
    def run(out, *extra):
        argv = tiny_args(dataset, out, "--mode", "gradual", "--weights", "none", "--unfreeze-every", "1",
                         "--epochs", "3", "--batch-size", "16", "--lr", "1e-2", "--warmup-epochs", "0", *extra)
        part2_mobilenet.main(part2_mobilenet.get_args_parser().parse_args(argv))
        return next(p for p in out.iterdir() if p.is_dir() and p.name.endswith("gradual"))

    straight = run(tmp_path / "a")
    kill_after(monkeypatch, "last.pt", 1)  # epoch 2 (depth 1) committed; epoch 3 would unfreeze depth 2
    with pytest.raises(Killed):
        run(tmp_path / "b")
    monkeypatch.undo()
    last = next((tmp_path / "b").glob("*gradual/last.pt"))
    assert load_checkpoint(last)["callbacks"] == {"GradualUnfreeze": {"depth": 1}}
    resumed = run(tmp_path / "b", "--resume", str(last))
    a, b = load_checkpoint(resumed / "last.pt"), load_checkpoint(straight / "last.pt")
    assert a["callbacks"] == b["callbacks"] == {"GradualUnfreeze": {"depth": 2}}
    for key, value in b["model_state"].items():
        torch.testing.assert_close(a["model_state"][key], value, rtol=1e-4, atol=1e-5)
    assert len(a["optimizer_state"]["param_groups"]) == len(b["optimizer_state"]["param_groups"])
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (resumed, straight))
    assert [h["val_acc"] for h in ma["history"]] == [h["val_acc"] for h in mb["history"]]
    assert [h["lr"] for h in ma["history"]] == [h["lr"] for h in mb["history"]]
    assert ma["test_acc"] == pytest.approx(mb["test_acc"]) and ma["resumed_from_epoch"] == 2


def test_gradual_run_leaves_deeper_blocks_untouched_until_their_epoch(dataset, tmp_path):
    out = tmp_path / "runs"
    argv = tiny_args(dataset, out, "--mode", "gradual", "--weights", "none", "--unfreeze-every", "1",
                     "--epochs", "2", "--batch-size", "16", "--lr", "1e-2", "--warmup-epochs", "0")
    part2_mobilenet.main(part2_mobilenet.get_args_parser().parse_args(argv))
    run = next(p for p in out.iterdir() if p.is_dir() and p.name.endswith("gradual"))
    seed_everything(0)
    initial = build_model("mobilenet_v2", 10, "gradual")[0].state_dict()
    last = load_checkpoint(run / "last.pt")["model_state"]
    changed = {k.split(".")[1] for k, v in last.items() if k.startswith("features.") and not torch.equal(v, initial[k])}
    # depth 1, unfrozen for epoch 2; BatchNorm stats of frozen blocks kept
    assert changed == {"14", "15", "16", "17", "18"}
    assert not torch.equal(last["classifier.1.weight"], initial["classifier.1.weight"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["trainable_params"] > 12_810


def test_study_options_run_end_to_end_and_are_recorded(dataset, tmp_path):
    out = tmp_path / "runs"
    argv = tiny_args(dataset, out, "--epochs", "1", "--batch-size", "8", "--mixup", "0.2", "--cutmix", "1.0",
                     "--auto-augment", "trivialaugment", "--fraction", "0.5", "--imbalance", "3",
                     "--balance", "weights")
    part1.main(part1.get_args_parser().parse_args(argv))
    run = next(p for p in out.iterdir() if p.is_dir() and p.name.endswith("full"))
    config = json.loads((run / "config.json").read_text())
    assert (config["fraction"], config["imbalance"], config["balance"]) == (0.5, 3, "weights")
    assert (config["mixup"], config["cutmix"], config["auto_augment"]) == (0.2, 1.0, "trivialaugment")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["history"][0]["train_loss"] > 0 and 0 <= metrics["test_acc"] <= 1


def test_oversampled_run_sees_a_full_epoch(dataset, tmp_path, capsys):
    out = tmp_path / "runs"
    argv = tiny_args(dataset, out, "--epochs", "1", "--batch-size", "8", "--imbalance", "6", "--balance", "oversample")
    part1.main(part1.get_args_parser().parse_args(argv))
    assert "training on 57 of 120 training images (per class 2-12" in capsys.readouterr().out
    metrics = json.loads(next(out.glob("*/metrics.json")).read_text())
    assert metrics["history"][0]["train_img_per_s"] > 0


@pytest.mark.parametrize("extra, message", [
    (["--mode", "fc", "--cache-features", "--mixup", "0.2"], "drop --cache-features"),
    (["--mode", "bn", "--lr-decay", "0.5"], "full or gradual only"),
    (["--mode", "gradual", "--unfreeze-every", "0"], "--unfreeze-every: 0 is out of range; give an integer >= 1"),
    (["--mode", "fc", "--cache-features", "--low-res-epochs", "1", "--epochs", "2"], "drop --cache-features"),
    (["--low-res-epochs", "1"], "leaves no epoch at --crop-size 64"),
    (["--low-res-epochs", "1", "--epochs", "2", "--low-res", "96"], "--low-res 96 must lie between"),
])
def test_conflicting_options_are_refused(dataset, tmp_path, capsys, extra, message):
    argv = tiny_args(dataset, tmp_path / "runs", "--weights", "none", "--epochs", "1", *extra)
    with pytest.raises(SystemExit) as stop:  # refused when the arguments are parsed, before any work
        part2_mobilenet.get_args_parser().parse_args(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and err[0].startswith("error:") and message in err[0]
    assert not (tmp_path / "runs").exists()


def test_fraction_smaller_than_a_batch_is_a_clear_error(dataset, tmp_path):
    argv = tiny_args(dataset, tmp_path / "runs", "--epochs", "1", "--fraction", "0.05", "--batch-size", "32")
    with pytest.raises(DataError, match="raise --fraction"):
        part1.main(part1.get_args_parser().parse_args(argv))


@pytest.mark.parametrize("script", ["part1_scratch_cnn", "part2_resnet18", "part2_mobilenet", "part2_efficientnet"])
def test_configs_are_built_from_each_scripts_parsed_defaults(script):
    args = importlib.import_module(script).get_args_parser().parse_args([])
    configs = [TrainConfig, ObjectiveConfig] + ([TransferConfig] if script.startswith("part2") else [])
    for cls in configs:
        cfg = cls.from_args(args)
        assert {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)} == {
            f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.__setattr__(dataclasses.fields(cls)[0].name, None)


def test_progressive_resizing_trains_small_then_full_size_and_resumes_at_full_size(dataset, tmp_path, monkeypatch):
    seen = []  # (epoch, crop size of the training batches)
    real = part1.fit

    def spy(model, data, cfg, *a, callbacks=(), **kw):
        class Record(Callback):
            def on_epoch_start(self, epoch, optimizer):
                seen.append((epoch, data.train_transform(next(iter(data.loaders["train"]))[0]).shape[-1]))
        return real(model, data, cfg, *a, callbacks=[*callbacks, Record()], **kw)

    monkeypatch.setattr(part1, "fit", spy)
    argv = tiny_args(dataset, tmp_path / "runs", "--epochs", "3", "--low-res-epochs", "2", "--low-res", "64",
                     "--img-size", "100", "--crop-size", "96")
    kill_after(monkeypatch, "last.pt", 0)
    with pytest.raises(Killed):
        part1.main(part1.get_args_parser().parse_args(argv))
    monkeypatch.undo()
    monkeypatch.setattr(part1, "fit", spy)
    last = next((tmp_path / "runs").glob("*/last.pt"))
    part1.main(part1.get_args_parser().parse_args([*argv, "--resume", str(last)]))
    assert seen == [(0, 64), (1, 64), (2, 96)]  # the resumed run picks up epoch 1 still at the low size
    metrics = json.loads(next((tmp_path / "runs").glob("*/metrics.json")).read_text())
    assert metrics["epochs_run"] == 3


def test_precision_auto_uses_bf16_on_a_cpu_only_with_bf16_units_and_never_for_the_test(monkeypatch):
    from common import trainer
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert Precision.choose("off", cuda) == Precision(False, False, False)
    assert Precision.choose("auto", cuda) == Precision(True, True, True)
    for units in (True, False):
        monkeypatch.setattr(trainer, "cpu_has_bf16_units", lambda units=units: units)
        assert Precision.choose("auto", cpu) == Precision(units, units, False)  # the test stays float32 on a CPU


@pytest.mark.parametrize("amx, avx512_bf16", [(True, False), (False, True), (False, False)])
def test_bf16_units_are_amx_or_avx512_bf16(monkeypatch, amx, avx512_bf16):
    from common.engine import cpu_has_bf16_units
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert cpu_has_bf16_units() == (amx or avx512_bf16)


def test_default_low_res_too_small_for_the_network_is_refused_when_parsed(dataset, tmp_path, capsys):
    with pytest.raises(SystemExit):  # half of the 64 px crop is below the scratch CNN's 64 px minimum
        part1.get_args_parser().parse_args(tiny_args(dataset, tmp_path, "--low-res-epochs", "1", "--epochs", "2"))
    assert "--low-res 32 must lie between this network's smallest crop 64" in capsys.readouterr().err
