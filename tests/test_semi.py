"""Semi-supervised fine-tuning (common/semi.py): the threshold, the views, the pseudo-label loss, and whole runs."""
import json

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import part2_mobilenet
from common import transfer
from common.loader import BatchLoader, train_subset
from common.runs import load_checkpoint
from common.semi import Cutout, PseudoLabelling, default_threshold, feature_dropout, strong_transform
from common.split import load_split
from conftest import Killed, kill_after, refusal, tiny_args


def test_the_default_threshold_is_fixmatchs_share_of_what_the_smoothed_targets_ask_for():
    assert default_threshold(0.0, 10) == pytest.approx(0.95)
    assert default_threshold(0.1, 10) == pytest.approx(0.95 * 0.91)  # the true class's target is 0.91


def test_cutout_blanks_one_square_of_at_most_a_quarter_of_the_image_per_image():
    x = torch.ones(64, 3, 32, 32)
    out = Cutout(torch.Generator().manual_seed(0))(x)
    blank = (out == 0).all(1)  # every channel blanked together
    assert ((out == 0) | (out == 1)).all() and blank.any()
    shares = blank.float().mean((1, 2))
    assert (shares > 0).all() and (shares <= (17 / 32) ** 2).all()
    rows, cols = blank.any(2), blank.any(1)
    assert torch.equal(blank, rows.unsqueeze(2) & cols.unsqueeze(1))  # a rectangle (a square clipped at the edges)


def test_the_strong_views_are_seeded_and_differ_from_the_weak_one():
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 3, 48, 48), dtype=np.uint8))
    torch.manual_seed(0)  # RandAugment draws from torch's global generator, which checkpoints save
    a = strong_transform(32, (0.5,) * 3, (0.25,) * 3, torch.Generator().manual_seed(1))(images)
    torch.manual_seed(0)
    b = strong_transform(32, (0.5,) * 3, (0.25,) * 3, torch.Generator().manual_seed(1))(images)
    assert a.shape == (4, 3, 32, 32) and torch.equal(a, b)
    feats = torch.ones(1000, 8)
    dropped = feature_dropout(0.5, torch.Generator().manual_seed(0))(feats)
    assert set(dropped.unique().tolist()) == {0.0, 2.0} and abs((dropped == 0).float().mean() - 0.5) < 0.05


def _loaders(n_labelled: int, n_unlabelled: int, batch: int, ratio: int):
    rng = np.random.default_rng(0)
    feats = torch.from_numpy(rng.normal(size=(n_labelled + n_unlabelled, 6)).astype(np.float32))
    labels = rng.integers(0, 3, n_labelled + n_unlabelled)
    g = torch.Generator().manual_seed(0)
    labelled = BatchLoader(feats, labels, np.arange(n_labelled), batch, torch.device("cpu"), shuffle=True,
                           generator=g, drop_last=True, rank=0, world_size=1)
    unlabelled = BatchLoader(feats, labels, np.arange(n_labelled, n_labelled + n_unlabelled), ratio * batch,
                             torch.device("cpu"), shuffle=True, generator=g, drop_last=True, rank=0, world_size=1)
    return feats, labels, labelled, unlabelled


def test_one_step_minimises_the_labelled_loss_plus_the_weighted_mean_pseudo_label_loss():
    feats, labels, labelled, unlabelled = _loaders(4, 8, 4, 2)
    model = nn.Linear(6, 3)
    with torch.no_grad():
        model.weight.mul_(10)  # confident on some images, not on others
    with torch.no_grad():
        probs = model(feats[4:]).softmax(1)
    threshold = probs.max(1).values.median().item()
    criterion = nn.CrossEntropyLoss()
    term = PseudoLabelling(unlabelled, nn.Identity(), threshold, weight=0.5)
    row = term.train_epoch(model, labelled, nn.Identity(), criterion, torch.optim.SGD(model.parameters(), lr=0.0),
                           torch.device("cpu"))
    keep = probs.max(1).values >= threshold
    pseudo = probs.argmax(1)
    expected = criterion(model(feats[:4]), torch.as_tensor(labels[:4])) + 0.5 * criterion(
        model(feats[4:][keep]), pseudo[keep]) * keep.float().mean()
    assert row["loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert row["pseudo_coverage"] == keep.float().mean().item()
    assert row["pseudo_accuracy"] == pytest.approx((pseudo[keep] == torch.as_tensor(labels[4:])[keep]).float().mean())


def test_an_epoch_is_the_longer_stream_once_and_weight_zero_never_draws_an_unlabelled_image():
    _, _, labelled, unlabelled = _loaders(8, 64, 4, 2)  # 2 labelled batches, 8 unlabelled ones
    model = nn.Linear(6, 3)
    seen = []
    model.register_forward_hook(lambda m, inp, out: seen.append(len(inp[0])))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    PseudoLabelling(unlabelled, nn.Identity(), 0.5, 1.0).train_epoch(model, labelled, nn.Identity(),
                                                                      nn.CrossEntropyLoss(), opt, torch.device("cpu"))
    assert seen == [4 + 8 + 8] * 8  # labelled, weak and strong views in one forward pass, 8 steps
    seen.clear()
    unlabelled.images = None  # drawing an unlabelled batch would now fail
    row = PseudoLabelling(unlabelled, nn.Identity(), 0.5, 0.0).train_epoch(
        model, labelled, nn.Identity(), nn.CrossEntropyLoss(), opt, torch.device("cpu"))
    assert seen == [4] * 8 and "pseudo_coverage" not in row  # the same 8 steps, on the labelled batches alone


def _weights(tmp_path):
    torch.manual_seed(1)
    path = tmp_path / "mnv2.pth"
    torch.save(torchvision.models.mobilenet_v2().state_dict(), path)
    return path


def test_a_cached_feature_run_labels_the_fraction_subset_and_records_its_pseudo_labels(dataset, tmp_path):
    out = tmp_path / "runs"
    argv = tiny_args(dataset, out, "--mode", "fc", "--cache-features", "--weights", str(_weights(tmp_path)),
                     "--epochs", "2", "--batch-size", "8", "--labelled-fraction", "0.25", "--unlabelled-ratio", "2",
                     "--label-smoothing", "0", "--pseudo-threshold", "0.1")
    run = transfer.main(part2_mobilenet.get_args_parser().parse_args(argv), "mobilenet_v2")
    metrics = json.loads((run / "metrics.json").read_text())
    split = load_split(out / "split.json", dataset)
    labelled = train_subset(split.labels, split.indices["train"], 0.25, seed=split.split_seed)
    assert metrics["semi_labelled_images"] == len(labelled) == 30
    assert metrics["semi_unlabelled_images"] == 120 - 30 and metrics["semi_threshold"] == 0.1
    assert metrics["semi_strong_view"] == "feature dropout 0.5"
    assert all(0 < h["pseudo_coverage"] <= 1 and 0 <= h["pseudo_accuracy"] <= 1 for h in metrics["history"])
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt["semi"]["labelled_fraction"] == 0.25 and ckpt["config"]["labelled_fraction"] == 0.25


def test_a_killed_semi_supervised_run_resumes_to_the_weights_of_an_uninterrupted_one(dataset, tmp_path, monkeypatch):
    weights = _weights(tmp_path)

    def argv(out):
        return tiny_args(dataset, out, "--mode", "fc", "--weights", str(weights), "--epochs", "2", "--batch-size", "8",
                         "--labelled-fraction", "0.25", "--unlabelled-ratio", "2", "--pseudo-threshold", "0.1")

    whole = transfer.main(part2_mobilenet.get_args_parser().parse_args(argv(tmp_path / "a")), "mobilenet_v2")
    kill_after(monkeypatch, "last.pt", 0)
    with pytest.raises(Killed):
        part2_mobilenet.main(part2_mobilenet.get_args_parser().parse_args(argv(tmp_path / "b")))
    monkeypatch.undo()
    last = next((tmp_path / "b").glob("*/last.pt"))
    resumed = transfer.main(part2_mobilenet.get_args_parser().parse_args([*argv(tmp_path / "b"), "--resume",
                                                                           str(last)]), "mobilenet_v2")
    a, b = (load_checkpoint(r / "last.pt")["model_state"] for r in (whole, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads((r / "metrics.json").read_text())["history"] for r in (whole, resumed)]
    assert [h["pseudo_coverage"] for h in rows[0]] == [h["pseudo_coverage"] for h in rows[1]]


@pytest.mark.parametrize("argv, says", [
    (["--pseudo-threshold", "0.9"], "give --labelled-fraction F too"),
    (["--unlabelled-weight", "2"], "give --labelled-fraction F too"),
    (["--labelled-fraction", "0.1", "--fraction", "0.5"], "drop --fraction and --imbalance"),
    (["--labelled-fraction", "0.1", "--mixup", "0.2"], "mix labelled batches only"),
    (["--labelled-fraction", "1"], "out of range"),
    (["--labelled-fraction", "0.9", "--unlabelled-ratio", "7"], "fewer than one unlabelled batch"),
])
def test_pseudo_labelling_options_are_refused_in_one_line_where_they_do_not_fit(dataset, tmp_path, capsys, argv,
                                                                                says):
    err = refusal(part2_mobilenet, [*tiny_args(dataset, tmp_path / "runs", "--epochs", "1", "--weights", "none"),
                                    *argv], capsys)
    assert says in err and len(err.strip().splitlines()) == 1


def test_the_linear_probe_of_a_semi_supervised_run_sees_only_the_labelled_images(dataset, tmp_path, capsys):
    argv = tiny_args(dataset, tmp_path / "runs", "--mode", "full", "--weights", str(_weights(tmp_path)), "--epochs",
                     "1", "--batch-size", "8", "--probe-epochs", "1", "--labelled-fraction", "0.25",
                     "--unlabelled-ratio", "1")
    transfer.main(part2_mobilenet.get_args_parser().parse_args(argv), "mobilenet_v2")
    out = capsys.readouterr().out
    assert out.count("training on 30 of 120 training images") == 2 and "linear probe" in out  # probe, then the run
