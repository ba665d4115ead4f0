"""`fit`: one training run around the epochs of common/engine.py (run folder, checkpoints, resume, the final test)."""
from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from common.board import Board, augmented_grid, gradcam_figure
from common.cli import UserError
from common.config import AugmentConfig, TrainConfig
from common.data import display_name
from common.distributed import barrier, broadcast, is_distributed, is_main, main_log, rank, world_size
from common.engine import (
    PROCESS_START,
    DivergedError,
    Transform,
    check_finite_weights,
    cpu_has_bf16_units,
    evaluate,
    make_optimizer,
    make_scheduler,
    param_groups,
    peak_memory_mb,
    predict,
    train_one_epoch,
)
from common.loader import class_weights, mix_batch
from common.metrics import confusion, macro_f1
from common.models import count_parameters
from common.plots import confusion_figure
from common.runs import CheckpointError, CheckpointSaver, load_checkpoint, run_dir_name
from common.semi import PseudoLabelling
from common.sources import UNLISTED, breakdown, describe_gap
from common.split import Split
from common.transforms import TrainTransform, eval_transform


@dataclass
class TrainingData:
    """What `fit` needs besides the model: the data, the transforms and the checkpoint's description."""

    split: Split
    loaders: dict                      # "train", "val", "test" -> BatchLoader (or any iterable of (x, y))
    train_transform: Transform
    eval_transform: Transform
    arch: str
    mode: str
    meta: dict = field(default_factory=dict)  # img_size, crop_size, mean, std, weights record, ...
    pixels: np.ndarray | None = None  # the uint8 N x H x W x 3 images of the split, for TensorBoard's pictures
    sources: Mapping[str, str] | None = None  # image path -> source (sources.csv): the test's breakdown by source

    @property
    def train_labels(self) -> np.ndarray:
        """The labels of the images the training loader draws from (after --fraction and --imbalance)."""
        return self.split.labels[self.loaders["train"].indices.numpy()]

    def eval_crop(self) -> Transform:
        """The centre crop and normalisation the model is validated and tested with, on uint8 batches."""
        return partial(eval_transform, crop=self.meta["crop_size"], mean=self.meta["mean"], std=self.meta["std"])

    def describe(self) -> dict:
        """What every checkpoint carries so that any script can rebuild and run the model from the file alone."""
        return {"arch": self.arch, "mode": self.mode, "classes": self.split.classes,
                "display_names": [display_name(c) for c in self.split.classes], **self.meta,
                "split_fingerprint": self.split.fingerprint}


@dataclass
class Objective:
    """What training minimises: the training criterion on (optionally mixed) batches, and the validation criterion."""

    train: nn.Module
    val: nn.Module
    mix: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None  # -> (x, soft y)
    semi: PseudoLabelling | None = None  # semi-supervised runs: the pseudo-label term and its unlabelled images


def make_objective(train_labels: np.ndarray, num_classes: int, label_smoothing: float, balance: str,
                   mixup: float, cutmix: float, generator: torch.Generator, device: torch.device) -> Objective:
    """The criteria and batch mixing of the --label-smoothing, --balance, --mixup and --cutmix options.

    Training uses inverse-frequency class weights when balance is "weights" (validation stays unweighted);
    MixUp/CutMix draw from the given (augmentation) generator.
    """
    val = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    train = val
    if balance == "weights":
        train = nn.CrossEntropyLoss(weight=class_weights(train_labels, num_classes).to(device),
                                    label_smoothing=label_smoothing)
    mix = None
    if mixup > 0 or cutmix > 0:
        mix = partial(mix_batch, num_classes=num_classes, mixup=mixup, cutmix=cutmix, generator=generator)
    return Objective(train, val, mix)


def _rng_state(generators: dict[str, torch.Generator]) -> list[dict]:
    """RNG states of every process (index = rank), so a resumed run draws what an uninterrupted one would."""
    state = {"torch": torch.get_rng_state(), **{k: g.get_state() for k, g in generators.items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    if not is_distributed():
        return [state]
    states = [None] * world_size()
    torch.distributed.all_gather_object(states, state)
    return states


def _set_rng_state(states: list[dict], generators: dict[str, torch.Generator]) -> None:
    if len(states) != world_size():
        raise CheckpointError(f"the checkpoint was written by {len(states)} process(es), this run has {world_size()}; "
                              "resume with the same number of processes")
    state = states[rank()]
    torch.set_rng_state(state["torch"])
    for k, g in generators.items():
        g.set_state(state[k])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class Callback:
    """A hook into fit's epochs (as Lightning's callbacks): called before each epoch, its state kept in checkpoints."""

    def on_epoch_start(self, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        """Before epoch `epoch` (0-based) trains; the first epoch of a resumed run too."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict, optimizer: torch.optim.Optimizer) -> None:
        """Take up the state a checkpoint saved; called before the optimizer's own state is loaded."""


@dataclass
class TrainState:
    """What a checkpoint holds to continue training: weights, optimizer, schedule, loss scaler and RNG states."""

    model: nn.Module  # the module whose state is saved
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau
    scaler: torch.amp.GradScaler | None
    generators: dict[str, torch.Generator]
    callbacks: list[Callback] = field(default_factory=list)
    # Figures of what ran before the first epoch (feature extraction, linear probe), which a resumed run skips:
    # kept in every checkpoint so its metrics still report them.
    prelude: dict = field(default_factory=dict)

    def state_dict(self) -> dict:
        """The checkpoint's training state; every process takes part (it gathers their RNG states)."""
        return {"model_state": self.model.state_dict(), "optimizer_state": self.optimizer.state_dict(),
                "scheduler_state": self.scheduler.state_dict(),
                "scaler_state": self.scaler.state_dict() if self.scaler is not None else None,
                "rng": _rng_state(self.generators),
                "callbacks": {type(cb).__name__: cb.state_dict() for cb in self.callbacks},
                "prelude": dict(self.prelude)}

    def load_state_dict(self, ckpt: dict) -> None:
        """Continue from a checkpoint's training state."""
        self.model.load_state_dict(ckpt["model_state"])
        self.prelude = {**self.prelude, **ckpt.get("prelude", {})}
        for cb in self.callbacks:  # first: a callback may add the parameter groups the optimizer's state has
            cb.load_state_dict(ckpt.get("callbacks", {}).get(type(cb).__name__, {}), self.optimizer)
        try:
            self.optimizer.load_state_dict(ckpt["optimizer_state"])
        except ValueError:  # other parameter groups: e.g. gradual unfreezing as an earlier version did it
            raise CheckpointError("the checkpoint's optimizer state does not fit this run's parameters; it was "
                                  "written by another version: start a new run") from None
        self.scheduler.load_state_dict(ckpt["scheduler_state"])
        if self.scaler is not None and ckpt.get("scaler_state"):
            self.scaler.load_state_dict(ckpt["scaler_state"])
        _set_rng_state(ckpt["rng"], self.generators)

    def step_schedule(self, val_acc: float) -> None:
        """The end of an epoch: ReduceLROnPlateau watches the validation accuracy, the others count epochs."""
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(val_acc)
        else:
            self.scheduler.step()


@dataclass(frozen=True)
class Precision:
    """Where a run uses mixed precision: its training steps, its validation, and its final test."""

    train: bool
    validate: bool
    test: bool

    @classmethod
    def choose(cls, amp: str, device: torch.device) -> Precision:
        """--amp auto: AMP on CUDA; on a CPU with bf16 units, bf16 training steps and validation (float32
        validation took a third of a scratch CNN epoch there), while the final test stays float32 (as evaluate.py)."""
        if amp != "auto":
            return cls(False, False, False)
        if device.type == "cuda":
            return cls(True, True, True)
        bf16 = cpu_has_bf16_units()
        return cls(bf16, bf16, False)

    def describe(self) -> str:
        if self.test:
            return " with AMP"
        return (" with bf16 training steps and validation (the CPU's bf16 units; the test in float32)"
                if self.train else "")


class ProgressiveResize(Callback):
    """Progressive resizing: the first `epochs` epochs train on `size`-pixel crops, the others at the full size."""

    def __init__(self, transform: TrainTransform, size: int, epochs: int):
        self.transform, self.size, self.epochs, self.full = transform, size, epochs, transform.crop

    def on_epoch_start(self, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        self.transform.crop = self.size if epoch < self.epochs else self.full


def progressive_resize(transform: Transform, augment: AugmentConfig) -> list[Callback]:
    """The --low-res-epochs callback for a training transform (none when it is off or there is no augmentation)."""
    if not augment.low_res_epochs or not isinstance(transform, TrainTransform):
        return []
    return [ProgressiveResize(transform, augment.low_res or augment.crop_size // 2, augment.low_res_epochs)]


class EarlyStopping:
    """Stop after `patience` epochs without a better validation accuracy (0: never)."""

    def __init__(self, patience: int, start_epoch: int = 0, best_epoch: int = -1):
        self.patience = patience
        # An early-stopped run that was killed before its test must not train on after resuming.
        self.epochs_without_gain = start_epoch - 1 - best_epoch if start_epoch else 0

    def update(self, improved: bool) -> None:
        self.epochs_without_gain = 0 if improved else self.epochs_without_gain + 1

    @property
    def stop(self) -> bool:
        return bool(self.patience) and self.epochs_without_gain >= self.patience


def fit(model: nn.Module, data: TrainingData, cfg: TrainConfig, generators: dict[str, torch.Generator],
        device: torch.device, *, lr: float, objective: Objective, options: Mapping | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        callbacks: Sequence[Callback] = (), save_model: nn.Module | None = None, extra_metrics: dict | None = None,
        log=print) -> Path:
    """Train with per-epoch validation, checkpoints and TensorBoard; test the best epoch; returns the run folder.

    `save_model` is the module whose state goes into checkpoints when it differs from the trained one
    (a head trained on cached features is saved inside its full network). Under torchrun the model is
    wrapped in DistributedDataParallel, metrics are reduced over all processes, and only rank 0 writes.
    lr is the peak learning rate the run records (the script's default when --lr is not given); the recipe
    builds the objective (criteria, batch mixing) and, when it needs per-block rates, the optimizer.
    callbacks (e.g. gradual unfreezing) run before every epoch, and their state is checkpointed.
    options are every option the script got (vars(args)): config.json records them, and --resume compares them.
    """
    log = main_log(log)
    save_model = save_model or model
    model, train_model = _parallel(model, device, cfg.sync_bn)
    amp = Precision.choose(cfg.amp, device)
    optimizer = optimizer or make_optimizer(param_groups(model, cfg.weight_decay, lr), cfg.opt, lr)
    fp16 = amp.train and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda") if fp16 else None
    scheduler = make_scheduler(optimizer, cfg.sched, cfg.warmup_epochs, cfg.epochs)
    state = TrainState(save_model, optimizer, scheduler, scaler, generators, list(callbacks), dict(extra_metrics or {}))
    options = {**(options or {}), **asdict(cfg)}  # what this run was given, the config's fields as it ran them
    config = _run_config(options, data, lr, save_model, device, amp)
    saver = _open_run(cfg, options, data, state, config, log)
    log(f"{data.arch}/{data.mode}: {config['trainable_params']:,} trainable of {config['total_params']:,} parameters; "
        f"device {device}" + amp.describe() + (f"; {world_size()} processes" if is_distributed() else ""))
    board = Board(saver.start_epoch, log) if saver.write else None
    try:
        _train_epochs(train_model, model, data, objective, state, saver, board, cfg, device, amp, log)
    except DivergedError:
        if board is not None:
            board.close()
        saver.discard(log)  # a diverged run is no run: nothing to resume, nothing to compete for the best
        raise
    run_dir, test = _test_best(model, save_model, data, saver, device, amp.test)
    metrics = _metrics(saver, test, run_dir, save_model, device, saver.start_epoch if cfg.resume else None,
                       state.prelude)
    if board is not None:
        board.open(run_dir)
        _picture_results(board, data, save_model, saver.config, metrics, test["confusion"], device, log)
        board.close()
    log(f"best val acc {saver.best_acc:.4f} (epoch {saver.best_epoch + 1}); test acc {test['acc']:.4f}; "
        f"{metrics['train_seconds']:.0f}s training")
    if test.get("source_gap"):
        log(f"test by source: {describe_gap(test['source_gap'])}")
    if saver.write:
        saver.finish(metrics, log)
    barrier()
    return run_dir


def _train_epochs(train_model: nn.Module, model: nn.Module, data: TrainingData, objective: Objective,
                  state: TrainState, saver: CheckpointSaver, board: Board | None, cfg: TrainConfig,
                  device: torch.device, amp: Precision, log=print) -> None:
    """The epochs from the saver's start to cfg.epochs (or an early stop), each validated, logged and committed."""
    stopper = EarlyStopping(cfg.patience, saver.start_epoch, saver.best_epoch)
    for epoch in range(saver.start_epoch, cfg.epochs):
        if stopper.stop:
            log(f"early stop: no better val accuracy for {cfg.patience} epochs")
            break
        row = _train_epoch(train_model, model, data, objective, state, device, amp, epoch, cfg.epochs)
        if cfg.monitor_test:  # monitoring only: after the epoch's timing, never read to choose or stop
            row["test_acc"] = evaluate(model, data.loaders["test"], data.eval_transform, objective.val, device,
                                       amp.validate, desc="test")["acc"]
        row["elapsed_s"] = time.perf_counter() - PROCESS_START
        checkpoint = state.state_dict()  # every process takes part: it gathers their RNG states
        if board is not None:
            saver.ensure_dir()
            board.add(saver.run_dir, row)
            if epoch == 0:
                _picture_training_batch(board, data)
        improved = saver.save(epoch, row, checkpoint)
        stopper.update(improved)
        log(f"epoch {epoch + 1:3d}/{cfg.epochs}  lr {row['lr']:.2e}  train loss {row['train_loss']:.4f} "
            f"acc {row['train_acc']:.4f}  val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}"
            f"{' *' if improved else '  '}  {row['epoch_seconds']:.1f}s  {row['train_img_per_s']:.0f} img/s"
            + _pseudo_note(row))


def _pseudo_note(row: dict) -> str:
    """A semi-supervised epoch's share of unlabelled images with a pseudo-label, and how many of those were right."""
    if "pseudo_coverage" not in row:
        return ""
    right = "" if row["pseudo_accuracy"] is None else f" ({row['pseudo_accuracy']:.0%} right)"
    return f"  pseudo-labels {row['pseudo_coverage']:.0%}{right}"


def _parallel(model: nn.Module, device: torch.device, sync_bn: bool) -> tuple[nn.Module, nn.Module]:
    """(model, the module to train): with SyncBatchNorm for --sync-bn, and in DistributedDataParallel under torchrun."""
    if sync_bn:
        if not (is_distributed() and device.type == "cuda"):
            raise UserError("--sync-bn synchronises BatchNorm across GPU processes; use it under torchrun on CUDA")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if not is_distributed():
        return model, model
    device_ids = [device.index] if device.type == "cuda" else None
    return model, nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def _run_config(options: Mapping, data: TrainingData, lr: float, save_model: nn.Module, device: torch.device,
                amp: Precision) -> dict:
    """config.json: the options, the data and model, and where the run ran, as plain types only."""
    trainable, total = count_parameters(save_model)
    config = {"arch": data.arch, "mode": data.mode, **options, "lr": lr, "device": str(device), "amp": amp.train,
              "amp_validate": amp.validate, "amp_test": amp.test,
              "world_size": world_size(),
              "classes": data.split.classes, "split_fingerprint": data.split.fingerprint,
              "trainable_params": trainable, "total_params": total, **data.meta,
              "torch": str(torch.__version__), "python": platform.python_version(), "host": platform.node()}
    return json.loads(json.dumps(config, default=str))  # plain types only, so weights_only loading accepts it


def _open_run(cfg: TrainConfig, options: Mapping, data: TrainingData, state: TrainState, config: dict,
              log=print) -> CheckpointSaver:
    """The new run's saver; with --resume, the killed run's, with the training state it left restored."""
    saver = CheckpointSaver(Path(cfg.output_dir) / run_dir_name(data.arch, data.mode, cfg.tag), config,
                            data.describe(), write=is_main())
    if saver.write:
        # Heals runs/best.pt when an earlier run was killed after its metrics.json, before updating it.
        saver.update_global_best(log)
    if cfg.resume:
        ckpt = saver.resume(cfg.resume, {k: v for k, v in config.items() if k in options})
        barrier()  # rank 0 has recovered the run folder
        state.load_state_dict(ckpt)
        log(f"resuming {saver.run_dir} at epoch {saver.start_epoch + 1}/{cfg.epochs}")
    return saver


def _train_epoch(train_model: nn.Module, model: nn.Module, data: TrainingData, objective: Objective,
                 state: TrainState, device: torch.device, amp: Precision, epoch: int, epochs: int) -> dict:
    """Train one epoch, validate, step the schedule; returns the epoch's history row."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for cb in state.callbacks:
        cb.on_epoch_start(epoch, state.optimizer)
    lr = state.optimizer.param_groups[0]["lr"]
    t0 = time.perf_counter()
    epoch_fn = objective.semi.train_epoch if objective.semi else partial(train_one_epoch, mix=objective.mix)
    tr = epoch_fn(train_model, data.loaders["train"], data.train_transform, objective.train, state.optimizer,
                  device, amp.train, state.scaler, desc=f"epoch {epoch + 1}/{epochs}")
    check_finite_weights(state.model, epoch)  # before validation scores a broken model and it is saved
    va = evaluate(model, data.loaders["val"], data.eval_transform, objective.val, device, amp.validate, desc="val")
    state.step_schedule(va["acc"])
    return {"epoch": epoch + 1, "lr": lr, "train_loss": tr["loss"], "train_acc": tr["acc"], "val_loss": va["loss"],
            "val_acc": va["acc"], "epoch_seconds": time.perf_counter() - t0, "train_img_per_s": tr["img_per_s"],
            "eval_img_per_s": va["img_per_s"], "peak_memory_mb": peak_memory_mb(device),
            **{k: v for k, v in tr.items() if k.startswith("pseudo_")}}


def _test_best(model: nn.Module, save_model: nn.Module, data: TrainingData, saver: CheckpointSaver,
               device: torch.device, amp: bool) -> tuple[Path, dict]:
    """Load the best epoch's weights and score them on the test split; returns (run folder, scores)."""
    run_dir = Path(broadcast(str(saver.run_dir) if saver.write else None))
    barrier()  # best.pt is written by rank 0
    save_model.load_state_dict(load_checkpoint(run_dir / "best.pt")["model_state"])
    logits, labels, seconds = predict(model, data.loaders["test"], data.eval_transform, device, amp, desc="test")
    preds = logits.argmax(1)
    test = {"acc": (preds == labels).float().mean().item(),
            "confusion": confusion(labels.numpy(), preds.numpy(), len(data.split.classes)),
            "loss": nn.functional.cross_entropy(logits, labels).item(), "img_per_s": len(labels) / seconds,
            "macro_f1": macro_f1(labels.numpy(), preds.numpy(), len(data.split.classes))}
    if data.sources is not None and not is_distributed():  # under torchrun the gathered order is the processes'
        names = [data.split.entries[i]["path"] for i in data.loaders["test"].indices.numpy()]
        test.update(breakdown([data.sources.get(n, UNLISTED) for n in names], (preds == labels).numpy()))
    return run_dir, test


def _picture_training_batch(board: Board, data: TrainingData, n: int = 16) -> None:
    """TensorBoard: the first training images as the first epoch's transform gave them to the model."""
    if data.pixels is None:
        return
    idx = np.sort(data.loaders["train"].indices.numpy()[:n])
    # cached-feature runs trained on features of the centre crops
    transform = data.eval_crop() if isinstance(data.train_transform, nn.Identity) else data.train_transform
    board.add_image("images/training_batch", augmented_grid(data.pixels[idx], transform, data.meta["mean"],
                                                            data.meta["std"]), 1)


def _picture_results(board: Board, data: TrainingData, model: nn.Module, config: dict, metrics: dict,
                     cm: np.ndarray, device: torch.device, log=print, n: int = 8) -> None:
    """TensorBoard at the end: hyperparameters with the final metrics, the confusion matrix, a Grad-CAM grid."""
    step = metrics["epochs_run"]
    board.add_hparams(config, metrics, step)
    names = [display_name(c) for c in data.split.classes]
    board.add_figure("images/confusion_matrix_test", confusion_figure(cm, names, "test"), step)
    if data.pixels is None:
        return
    idx = data.split.indices["test"][:n]  # the first test images, in cache order
    try:
        fig = gradcam_figure(model, data.arch, data.pixels[idx], data.split.labels[idx], names,
                             data.meta["crop_size"], data.meta["mean"], data.meta["std"], device)
    except ValueError as e:  # a model without the spec's Grad-CAM layer: the run is still good
        log(f"TensorBoard: no Grad-CAM grid ({e})")
        return
    board.add_figure("images/gradcam_test", fig, step)


def _metrics(saver: CheckpointSaver, test: dict, run_dir: Path, save_model: nn.Module, device: torch.device,
             resumed_from: int | None, extra: dict) -> dict:
    """metrics.json: the run's options in brief, its best epoch and test scores, cost, and every epoch's row."""
    history, config = saver.history, saver.config
    train_seconds = sum(h["epoch_seconds"] for h in history)
    metrics = {
        "arch": config["arch"], "mode": config["mode"], "lr": config["lr"], "batch_size": config["batch_size"],
        "epochs_run": len(history), "best_epoch": saver.best_epoch + 1, "best_val_acc": saver.best_acc,
        "test_acc": test["acc"], "test_loss": test["loss"], "test_macro_f1": test["macro_f1"],
        "train_seconds": train_seconds, "seconds_per_epoch": train_seconds / max(len(history), 1),
        "train_img_per_s": float(np.mean([h["train_img_per_s"] for h in history])) if history else None,
        "eval_img_per_s": test["img_per_s"],
        "peak_memory_mb": max(h["peak_memory_mb"] for h in history) if history else None,
        "trainable_params": count_parameters(save_model)[0], "total_params": config["total_params"],
        "device": str(device), "checkpoint_mb": (run_dir / "best.pt").stat().st_size / 2**20, **extra,
        **{f"test_{k}": test[k] for k in ("by_source", "source_gap") if k in test},
        "history": history,
    }
    if resumed_from is not None:
        metrics["resumed_from_epoch"] = resumed_from
    return metrics
