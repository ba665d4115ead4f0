"""A run's TensorBoard events, in its run folder."""
from __future__ import annotations

from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


class Board:
    """The run's TensorBoard scalars, one step per epoch, in the run folder (opened at the first epoch written)."""

    SCALARS = (("train_loss", "loss/train"), ("val_loss", "loss/val"), ("train_acc", "accuracy/train"),
               ("val_acc", "accuracy/val"), ("lr", "lr"), ("epoch_seconds", "time/epoch_seconds"),
               ("train_img_per_s", "throughput/train_img_per_s"), ("eval_img_per_s", "throughput/eval_img_per_s"))

    def __init__(self, start_epoch: int, log=print):
        # Events of steps after the last committed epoch are from a killed attempt: drop them.
        self.purge_step = start_epoch + 1 if start_epoch else None
        self.writer, self.log = None, log

    def add(self, run_dir: Path, row: dict) -> None:
        if self.writer is None:
            self.log(f"run folder {run_dir}")
            self.writer = SummaryWriter(str(run_dir), purge_step=self.purge_step)
        for key, tag in self.SCALARS:
            self.writer.add_scalar(tag, row[key], row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
