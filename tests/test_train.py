"""The shared train loop through part1_scratch_cnn.py: learning, checkpoints, resume, sweep, errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import part1_scratch_cnn as part1
from common.config import AugmentConfig, DataConfig, LoaderConfig, TrainConfig
from common.data import prepare_data
from common.engine import predict, seed_everything
from common.loader import BatchLoader, make_loaders
from common.models import build_model, model_from_checkpoint
from common.runs import CheckpointError, CheckpointSaver, load_checkpoint
from common.trainer import EarlyStopping, Objective, Precision, TrainingData, fit
from common.transforms import eval_transform, make_transforms
from conftest import Killed, kill_after, read_board, refusal, tiny_args

FAST = ["--epochs", "4", "--batch-size", "16", "--lr", "3e-3", "--jitter", "0", "--warmup-epochs", "0"]


def run_part1(argv: list[str]) -> None:
    part1.main(part1.get_args_parser().parse_args(argv))


def only_run(out: Path) -> Path:
    runs = [p for p in out.iterdir() if p.is_dir() and "scratch_cnn" in p.name]
    assert len(runs) == 1
    return runs[0]


def test_learns_easy_data_and_writes_run_folder(dataset, tmp_path):
    out = tmp_path / "runs"
    run_part1(tiny_args(dataset, out, *FAST))
    run = only_run(out)
    assert {"config.json", "last.pt", "best.pt", "metrics.json"} <= {p.name for p in run.iterdir()}
    assert list(run.glob("events.out.tfevents.*"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["history"]) == 4
    assert metrics["best_val_acc"] >= 0.5, metrics["best_val_acc"]  # chance is 0.1
    assert metrics["test_acc"] >= 0.4, metrics["test_acc"]
    assert metrics["trainable_params"] == metrics["total_params"] > 0
    assert (out / "best.pt").exists()
    assert json.loads((out / "best.json").read_text())["val_acc"] == metrics["best_val_acc"]
    config = json.loads((run / "config.json").read_text())
    assert config["lr"] == 3e-3 and config["arch"] == "scratch_cnn"
    board = read_board(run)  # what the HParams, Scalars and Images tabs show
    assert board["hparams"]["lr"] == 3e-3 and board["hparams"]["batch_size"] == 16
    assert board["hparams"]["arch"] == "scratch_cnn" and board["hparams"]["epochs"] == 4
    assert board["scalars"]["final/test_acc"] == [(4, pytest.approx(metrics["test_acc"]))]
    assert [s for s, _ in board["scalars"]["accuracy/val"]] == [1, 2, 3, 4]
    assert set(board["images"]) == {"images/training_batch", "images/confusion_matrix_test", "images/gradcam_test"}
    assert board["images"]["images/training_batch"] == [(1, 8 * 66 + 2, 2 * 66 + 2)]  # 16 crops of 64 px, 8 a row
    assert [s for s, _, _ in board["images"]["images/gradcam_test"]] == [4]


def test_a_resumed_runs_events_are_read_after_its_killed_attempts(tmp_path):
    # A killed attempt's file opened this second, named to sort after any of this process's: the resumed run's file
    # must still come last in name order, which is the order TensorBoard reads (and purges) a folder's files in.
    import time

    from common.board import Board
    killed = tmp_path / f"events.out.tfevents.{int(time.time()):010d}.zzzz.99999.99"
    killed.write_bytes(b"")
    board = Board(start_epoch=2, log=lambda *_: None)
    board.open(tmp_path)
    board.close()
    names = sorted(p.name for p in tmp_path.glob("events.out.tfevents.*"))
    assert len(names) == 2 and names[0] == killed.name


def test_checkpoint_rebuilds_model_with_identical_predictions(dataset, tmp_path):
    out = tmp_path / "runs"
    argv = tiny_args(dataset, out, *FAST[:1], "1", *FAST[2:])
    run_part1(argv)
    ckpt = load_checkpoint(only_run(out) / "best.pt")
    assert ckpt["classes"][0] == "cane" and ckpt["display_names"][0] == "dog"
    assert (ckpt["img_size"], ckpt["crop_size"]) == (72, 64) and len(ckpt["mean"]) == 3
    model = model_from_checkpoint(ckpt)
    args = part1.get_args_parser().parse_args(argv)
    split, images = prepare_data(DataConfig.from_args(args), log=lambda *_: None)
    loader = BatchLoader(images, split.labels, split.indices["test"], 8, torch.device("cpu"))
    tf = lambda x: eval_transform(x, ckpt["crop_size"], ckpt["mean"], ckpt["std"])  # noqa: E731
    a, labels, _ = predict(model, loader, tf, torch.device("cpu"))
    b, _, _ = predict(model_from_checkpoint(load_checkpoint(out / "best.pt")), loader, tf, torch.device("cpu"))
    assert torch.equal(a, b)
    metrics = json.loads((only_run(out) / "metrics.json").read_text())
    assert (a.argmax(1) == labels).float().mean().item() == pytest.approx(metrics["test_acc"])


def assert_same_run(run: Path, straight: Path) -> None:
    """Every file an epoch writes matches the uninterrupted run's: last.pt, best.pt and metrics.json."""
    for name in ("last.pt", "best.pt"):
        a, b = load_checkpoint(run / name), load_checkpoint(straight / name)
        assert a["epoch"] == b["epoch"] and a["best_epoch"] == b["best_epoch"], name
        for key, value in b["model_state"].items():
            torch.testing.assert_close(a["model_state"][key], value, rtol=1e-4, atol=1e-5)
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (run, straight))
    for key in ("best_epoch", "best_val_acc", "test_acc", "test_macro_f1", "epochs_run"):
        assert ma[key] == pytest.approx(mb[key]), key
    assert [h["val_acc"] for h in ma["history"]] == [h["val_acc"] for h in mb["history"]]
    assert not list(run.glob("best.pt.next")) and not list(run.glob(".*.tmp"))


# FAST's val accuracies improve at epochs 1-3 on this data, so epoch index 2 is an improving epoch.
@pytest.mark.parametrize("name, epoch, epochs", [
    ("best.pt.next", 2, "4"),  # the new best is written, last.pt still holds epoch 2: roll back
    ("last.pt", 2, "4"),       # last.pt committed epoch 3, best.pt not yet moved into place: roll forward
    ("last.pt", 1, "4"),
    ("best.pt.next", 0, "1"),  # a one-epoch run killed before anything committed
    ("last.pt", 0, "1"),       # ... and after its only epoch committed, before best.pt
])
def test_resume_after_kill_matches_uninterrupted_run(dataset, tmp_path, monkeypatch, name, epoch, epochs):
    fast = [*FAST[:1], epochs, *FAST[2:]]
    run_part1(tiny_args(dataset, tmp_path / "a", *fast))
    straight = only_run(tmp_path / "a")
    kill_after(monkeypatch, name, epoch)
    out = tmp_path / "b"
    with pytest.raises(Killed):
        run_part1(tiny_args(dataset, out, *fast))
    monkeypatch.undo()
    last = only_run(out) / "last.pt"
    if not last.exists():  # killed before the first commit: start again, as study.py would
        run_part1(tiny_args(dataset, out, *fast))
    else:
        committed = load_checkpoint(last)["epoch"]
        assert committed == (epoch if name == "last.pt" else epoch - 1)
        run_part1(tiny_args(dataset, out, *fast, "--resume", str(last)))
        metrics = json.loads((only_run(out) / "metrics.json").read_text())
        assert metrics["resumed_from_epoch"] == committed + 1
    run = max(p for p in out.iterdir() if p.is_dir() and (p / "metrics.json").exists())
    assert_same_run(run, straight)
    # the events too: every epoch once, the first batch's picture once, the end's hparams and pictures once
    board, expected = read_board(run), read_board(straight)
    for tag in ("accuracy/val", "loss/train", "final/test_acc"):
        assert board["scalars"][tag] == expected["scalars"][tag], tag
    assert board["images"] == expected["images"] and board["hparams"] == expected["hparams"]
    best = json.loads((out / "best.json").read_text())
    assert best["run_dir"] == str(run)
    assert best["val_acc"] == json.loads((run / "metrics.json").read_text())["best_val_acc"]
    assert (out / "best.pt").read_bytes() == (run / "best.pt").read_bytes()


def test_kill_before_global_best_is_healed_by_the_next_start(dataset, tmp_path, monkeypatch):
    out = tmp_path / "runs"
    calls = []

    def die_on_second_call(*a, **k):  # the first call is the start's healing pass, the second the run's own
        calls.append(1)
        if len(calls) == 2:
            raise Killed
    monkeypatch.setattr(CheckpointSaver, "update_global_best", die_on_second_call)
    with pytest.raises(Killed):
        run_part1(tiny_args(dataset, out, *FAST))
    monkeypatch.undo()
    finished = only_run(out)
    assert (finished / "metrics.json").exists() and not (out / "best.pt").exists()
    with pytest.raises(CheckpointError, match="finished"):
        run_part1(tiny_args(dataset, out, *FAST, "--resume", str(finished / "last.pt")))
    run_part1(tiny_args(dataset, out, "--epochs", "1", "--lr", "1e-6", "--warmup-epochs", "0"))
    assert (out / "best.pt").read_bytes() == (finished / "best.pt").read_bytes()


def test_sweep_writes_table_and_marks_best(dataset, tmp_path):
    out = tmp_path / "runs"
    run_part1(tiny_args(dataset, out, "--sweep", "--lrs", "3e-3,1e-5", "--batch-sizes", "16", "--epochs", "2"))
    sweep = next(out.glob("sweep-*"))
    lines = (sweep / "sweep.csv").read_text().strip().splitlines()
    assert lines[0].startswith("lr,batch_size") and len(lines) == 3
    md = (sweep / "sweep.md").read_text()
    assert md.count("**best**") == 1
    best = json.loads((sweep / "best.json").read_text())
    rows = [json.loads((out / r.name / "metrics.json").read_text())
            for r in out.iterdir() if "scratch_cnn-full-lr" in r.name]
    assert len(rows) == 2 and best["best_val_acc"] == max(r["best_val_acc"] for r in rows)


def test_resume_refuses_checkpoint_from_another_model(dataset, tmp_path):
    fake = tmp_path / "runs" / "20260101-000000-resnet18-fc" / "last.pt"
    fake.parent.mkdir(parents=True)
    (fake.parent / "config.json").write_text("{}")
    torch.save({"format": "animals10-ckpt/1", "arch": "resnet18", "mode": "fc"}, fake)
    with pytest.raises(CheckpointError, match="resnet18/fc run"):
        run_part1(tiny_args(dataset, tmp_path / "runs", "--epochs", "1", "--resume", str(fake)))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x80\x02truncated")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(junk)


@pytest.mark.parametrize("extra, message", [
    (["--data-dir", "/nonexistent/raw-img"], "does not exist"),
    (["--split", "10,5"], "three positive numbers"),
    (["--sweep", "--lrs", "fast"], "--lrs"),
    (["--crop-size", "128"], "larger than the cached"),
])
def test_cli_errors_are_one_clear_line(dataset, tmp_path, extra, message, capsys):
    argv = tiny_args(dataset, tmp_path / "runs", "--epochs", "1") + extra
    last = refusal(part1, argv, capsys).strip().splitlines()[-1]
    assert last.startswith("error:") and message in last


def test_fit_trains_with_the_objective_it_is_given(dataset, tmp_path):
    args = part1.get_args_parser().parse_args(tiny_args(dataset, tmp_path / "runs", "--epochs", "1",
                                                        "--batch-size", "16"))
    cpu, quiet = torch.device("cpu"), lambda *a, **k: None
    split, images = prepare_data(DataConfig.from_args(args), quiet)
    generators = seed_everything(args.seed)
    model, _ = build_model("scratch_cnn", len(split.classes))
    train_tf, eval_tf = make_transforms(AugmentConfig.from_args(args), generators["augment"])
    loaders = make_loaders(images, split, LoaderConfig.from_args(args), cpu, generators["data"], quiet)
    data = TrainingData(split, loaders, train_tf, eval_tf,
                        "scratch_cnn", "full", {"img_size": 72, "crop_size": 64, "mean": [0.5] * 3, "std": [0.2] * 3})
    for option in ("label_smoothing", "balance", "mixup", "cutmix"):
        delattr(args, option)  # the recipe's business: fit builds no criterion or mixing of its own
    seen = {"train": 0, "mixed": 0}

    class Counted(nn.CrossEntropyLoss):
        def forward(self, logits, target):
            seen["train"] += 1
            return super().forward(logits, target)

    def mix(x, y):
        seen["mixed"] += 1
        return x, y

    run = fit(model, data, TrainConfig.from_args(args), generators, cpu, lr=1e-3,
              objective=Objective(Counted(), nn.CrossEntropyLoss(), mix), options=vars(args), log=quiet)
    batches = len(split.indices["train"]) // 16
    assert seen == {"train": batches, "mixed": batches}
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == 1


def test_early_stopping_counts_epochs_without_gain_also_across_a_resume():
    stopper = EarlyStopping(2)
    stops = []
    for improved in (True, False, True, False, False):
        stops.append(stopper.stop)
        stopper.update(improved)
    assert stops == [False] * 5 and stopper.stop
    assert not EarlyStopping(0, start_epoch=9, best_epoch=0).stop  # patience 0: never
    # Killed after epoch index 4 with the best at index 2: two epochs without gain are already behind it.
    assert EarlyStopping(2, start_epoch=5, best_epoch=2).stop
    assert not EarlyStopping(3, start_epoch=5, best_epoch=2).stop


def test_config_json_records_every_option_the_script_got(dataset, tmp_path):
    args = part1.get_args_parser().parse_args(tiny_args(dataset, tmp_path / "runs", "--epochs", "1",
                                                        "--batch-size", "16", "--tag", "opts", "--mixup", "0.2"))
    part1.main(args)
    config = json.loads((only_run(tmp_path / "runs") / "config.json").read_text())
    ran = {"amp": Precision.choose("auto", torch.device("cpu")).train, "device": "cpu"}  # what "auto" resolved to
    given = json.loads(json.dumps(vars(args)))
    assert {k: config[k] for k in given} == {k: ran.get(k, v) for k, v in given.items()}


def test_picture_of_the_training_batch_leaves_the_run_s_random_draws_alone():
    from common.board import augmented_grid
    from common.transforms import TrainTransform
    generator = torch.Generator().manual_seed(3)
    transform = TrainTransform(32, [0.5] * 3, [0.25] * 3, generator, (0.25, 1.0), 0.3, "interpolate")
    pixels = torch.randint(0, 256, (10, 40, 40, 3), dtype=torch.uint8).numpy()
    state, global_state = generator.get_state(), torch.get_rng_state()
    grid = augmented_grid(pixels, transform, [0.5] * 3, [0.25] * 3)
    assert grid.dtype == torch.uint8 and grid.shape == (3, 2 * 34 + 2, 8 * 34 + 2)
    assert torch.equal(generator.get_state(), state) and torch.equal(torch.get_rng_state(), global_state)
    assert torch.equal(grid, augmented_grid(pixels, transform, [0.5] * 3, [0.25] * 3))  # its own seeded draws
