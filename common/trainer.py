"""`fit`: one training run around the epochs of common/engine.py (run folder, checkpoints, resume, the final test)."""
from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from common.cli import UserError
from common.data import Split, class_weights, display_name, mix_batch
from common.distributed import barrier, broadcast, is_distributed, is_main, rank, world_size
from common.engine import (
    Transform,
    evaluate,
    make_optimizer,
    make_scheduler,
    param_groups,
    peak_memory_mb,
    predict,
    train_one_epoch,
)
from common.metrics import macro_f1
from common.models import count_parameters
from common.runs import CheckpointError, CheckpointSaver, load_checkpoint, run_dir_name


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
    on_epoch_start: Callable[[int], None] | None = None  # e.g. gradual unfreezing; also called on resume

    @property
    def train_labels(self) -> np.ndarray:
        """The labels of the images the training loader draws from (after --fraction and --imbalance)."""
        return self.split.labels[self.loaders["train"].indices.numpy()]

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


def _log_scalars(writer: SummaryWriter, row: dict, step: int) -> None:
    for key, tb in (("train_loss", "loss/train"), ("val_loss", "loss/val"), ("train_acc", "accuracy/train"),
                    ("val_acc", "accuracy/val"), ("lr", "lr"), ("epoch_seconds", "time/epoch_seconds"),
                    ("train_img_per_s", "throughput/train_img_per_s"),
                    ("eval_img_per_s", "throughput/eval_img_per_s")):
        writer.add_scalar(tb, row[key], step)
    writer.flush()


def fit(model: nn.Module, data: TrainingData, args, generators: dict[str, torch.Generator], device: torch.device,
        *, lr: float, objective: Objective, optimizer: torch.optim.Optimizer | None = None,
        save_model: nn.Module | None = None, extra_metrics: dict | None = None, log=print) -> Path:
    """Train with per-epoch validation, checkpoints and TensorBoard; test the best epoch; returns the run folder.

    `save_model` is the module whose state goes into checkpoints when it differs from the trained one
    (a head trained on cached features is saved inside its full network). Under torchrun the model is
    wrapped in DistributedDataParallel, metrics are reduced over all processes, and only rank 0 writes.
    lr is the peak learning rate the run records (the script's default when --lr is not given); the recipe
    builds the objective (criteria, batch mixing) and, when it needs per-block rates, the optimizer.
    """
    save_model = save_model or model
    main_process = is_main()
    if not main_process:
        log = lambda *a, **k: None  # noqa: E731
    if args.sync_bn:
        if not (is_distributed() and device.type == "cuda"):
            raise UserError("--sync-bn synchronises BatchNorm across GPU processes; use it under torchrun on CUDA")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    train_model = model
    if is_distributed():
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    amp = args.amp == "auto" and device.type == "cuda"
    output_dir = Path(args.output_dir)
    optimizer = optimizer or make_optimizer(param_groups(model, args.weight_decay, lr), args.opt, lr)
    scheduler = make_scheduler(optimizer, args)
    use_scaler = amp and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    trainable, total = count_parameters(save_model)
    config = {"arch": data.arch, "mode": data.mode, **vars(args), "lr": lr, "device": str(device), "amp": amp,
              "world_size": world_size(),
              "classes": data.split.classes, "split_fingerprint": data.split.fingerprint,
              "trainable_params": trainable, "total_params": total, **data.meta,
              "torch": str(torch.__version__), "python": platform.python_version(), "host": platform.node()}
    config = json.loads(json.dumps(config, default=str))  # plain types only, so weights_only loading accepts it
    saver = CheckpointSaver(output_dir / run_dir_name(data.arch, data.mode, args.tag), config, data.describe(),
                            write=main_process)
    if main_process:
        # Heals runs/best.pt when an earlier run was killed after its metrics.json, before updating it.
        saver.update_global_best(log)
    if args.resume:
        ckpt = saver.resume(args.resume, {k: v for k, v in config.items() if k in vars(args)})
        barrier()
        save_model.load_state_dict(ckpt["model_state"])
        optimizer.load_state_dict(ckpt["optimizer_state"])
        scheduler.load_state_dict(ckpt["scheduler_state"])
        if scaler is not None and ckpt.get("scaler_state"):
            scaler.load_state_dict(ckpt["scaler_state"])
        _set_rng_state(ckpt["rng"], generators)
        log(f"resuming {saver.run_dir} at epoch {saver.start_epoch + 1}/{args.epochs}")
    start_epoch = saver.start_epoch
    log(f"{data.arch}/{data.mode}: {trainable:,} trainable of {total:,} parameters; device {device}"
        + (" with AMP" if amp else "") + (f"; {world_size()} processes" if is_distributed() else ""))
    writer = None

    def training_state() -> dict:
        return {"model_state": save_model.state_dict(),
                "optimizer_state": optimizer.state_dict(), "scheduler_state": scheduler.state_dict(),
                "scaler_state": scaler.state_dict() if scaler is not None else None,
                "rng": _rng_state(generators)}

    # An early-stopped run that was killed before its test must not train on after resuming.
    epochs_without_gain = start_epoch - 1 - saver.best_epoch if start_epoch else 0
    for epoch in range(start_epoch, args.epochs):
        if args.patience and epochs_without_gain >= args.patience:
            log(f"early stop: no better val accuracy for {args.patience} epochs")
            break
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        if data.on_epoch_start is not None:
            data.on_epoch_start(epoch)
        epoch_lr = optimizer.param_groups[0]["lr"]
        t0 = time.perf_counter()
        tr = train_one_epoch(train_model, data.loaders["train"], data.train_transform, objective.train, optimizer,
                             device, amp, scaler, desc=f"epoch {epoch + 1}/{args.epochs}", mix=objective.mix)
        va = evaluate(model, data.loaders["val"], data.eval_transform, objective.val, device, amp, desc="val")
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(va["acc"])
        else:
            scheduler.step()
        epoch_seconds = time.perf_counter() - t0
        row = {"epoch": epoch + 1, "lr": epoch_lr, "train_loss": tr["loss"], "train_acc": tr["acc"],
               "val_loss": va["loss"], "val_acc": va["acc"], "epoch_seconds": epoch_seconds,
               "train_img_per_s": tr["img_per_s"], "eval_img_per_s": va["img_per_s"],
               "peak_memory_mb": peak_memory_mb(device)}
        state = training_state()  # every process takes part: it gathers their RNG states
        if main_process:
            saver.ensure_dir()
            if writer is None:
                log(f"run folder {saver.run_dir}")
                # Events of steps after the last committed epoch are from a killed attempt: drop them.
                writer = SummaryWriter(str(saver.run_dir), purge_step=start_epoch + 1 if start_epoch else None)
            _log_scalars(writer, row, epoch + 1)
        improved = saver.save(epoch, row, state)
        log(f"epoch {epoch + 1:3d}/{args.epochs}  lr {epoch_lr:.2e}  train loss {tr['loss']:.4f} acc {tr['acc']:.4f}  "
            f"val loss {va['loss']:.4f} acc {va['acc']:.4f}{' *' if improved else '  '}  "
            f"{epoch_seconds:.1f}s  {tr['img_per_s']:.0f} img/s")
        epochs_without_gain = 0 if improved else epochs_without_gain + 1
    if writer is not None:
        writer.close()
    run_dir = Path(broadcast(str(saver.run_dir) if main_process else None))
    barrier()  # best.pt is written by rank 0
    best = load_checkpoint(run_dir / "best.pt")
    save_model.load_state_dict(best["model_state"])
    te = _test(model, data, device, amp)
    history = saver.history
    train_seconds = sum(h["epoch_seconds"] for h in history)
    metrics = {
        "arch": data.arch, "mode": data.mode, "lr": lr, "batch_size": args.batch_size,
        "epochs_run": len(history), "best_epoch": saver.best_epoch + 1, "best_val_acc": saver.best_acc,
        "test_acc": te["acc"], "test_loss": te["loss"], "test_macro_f1": te["macro_f1"],
        "train_seconds": train_seconds, "seconds_per_epoch": train_seconds / max(len(history), 1),
        "train_img_per_s": float(np.mean([h["train_img_per_s"] for h in history])) if history else None,
        "eval_img_per_s": te["img_per_s"],
        "peak_memory_mb": max(h["peak_memory_mb"] for h in history) if history else None,
        "trainable_params": count_parameters(save_model)[0], "total_params": total, "device": str(device),
        "checkpoint_mb": (run_dir / "best.pt").stat().st_size / 2**20, **(extra_metrics or {}),
        "history": history,
    }
    if args.resume:
        metrics["resumed_from_epoch"] = start_epoch
    log(f"best val acc {saver.best_acc:.4f} (epoch {saver.best_epoch + 1}); test acc {te['acc']:.4f}; "
        f"{train_seconds:.0f}s training")
    if main_process:
        saver.finish(metrics, log)
    barrier()
    return run_dir


def _test(model: nn.Module, data: TrainingData, device: torch.device, amp: bool) -> dict:
    """Accuracy, loss, macro F1 and throughput on the test split."""
    logits, labels, seconds = predict(model, data.loaders["test"], data.eval_transform, device, amp, desc="test")
    preds = logits.argmax(1)
    return {"acc": (preds == labels).float().mean().item(), "loss": nn.functional.cross_entropy(logits, labels).item(),
            "img_per_s": len(labels) / seconds,
            "macro_f1": macro_f1(labels.numpy(), preds.numpy(), len(data.split.classes))}
