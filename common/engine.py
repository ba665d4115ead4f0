"""What `fit` (common/trainer.py) is made of: devices, one epoch of training, evaluation, optimizer, schedule, seeds."""
from __future__ import annotations

import math
import platform
import resource
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Collection, Iterable

import torch
from torch import nn
from tqdm import tqdm

from common.cli import UserError
from common.distributed import gather_cat, is_distributed, is_main, rank, sum_across
from common.models import set_train_mode

Transform = Callable[[torch.Tensor], torch.Tensor]
PROCESS_START = time.perf_counter()  # history rows' elapsed_s counts from here: about when the script started


class DivergedError(UserError):
    """Training diverged (a non-finite loss); the message says which option to change."""


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu; a clear error when cuda is asked for and absent."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is visible; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels once
        if is_distributed():
            return torch.device("cuda", torch.cuda.current_device())  # set from LOCAL_RANK by init_distributed
    return torch.device(name)


def inference_batch_size(device: torch.device) -> int:
    """Images per forward pass when nothing is trained: 16 on a CPU, where a float32 MobileNetV2 batch of 16 keeps
    most activations in the allocator's reused heap (common/allocator.py), so it runs faster than a batch of 64
    (bench/allocator.py); 64 on CUDA."""
    return 16 if device.type == "cpu" else 64


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one), for the machine a figure was measured on."""
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def cpu_has_bf16_units() -> bool:
    """Whether this CPU computes bf16 dot products natively (Intel AMX, or AVX512-BF16 as on AMD Zen 4), where bf16
    training steps are faster than float32 ones (bench/cpu_precision.py measures by how much)."""
    return any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_amx_tile_supported",
                                                                      "_is_avx512_bf16_supported"))


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA where supported (fp16 otherwise) and on a CPU; nothing when not enabled."""
    if not enabled:
        return nullcontext()
    if device.type != "cuda":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated on a GPU, else the process's peak resident set size, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def backward_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler | None = None) -> None:
    """One optimizer step on a training loss (through the fp16 loss scaler if any); DivergedError if not finite."""
    if not torch.isfinite(loss):
        raise DivergedError(f"the training loss became {loss.item()}; lower --lr")
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def check_finite_weights(model: nn.Module, epoch: int) -> None:
    """DivergedError when a weight or buffer holds inf or NaN: an update can break the model on a finite loss."""
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise DivergedError(f"the weights became inf or NaN in epoch {epoch + 1} ({bad[0]}{more}); "
                            "lower --lr or --weight-decay")


def train_one_epoch(model: nn.Module, loader: Iterable, transform: Transform, criterion: nn.Module,
                    optimizer: torch.optim.Optimizer, device: torch.device, amp: bool = False,
                    scaler: torch.amp.GradScaler | None = None, desc: str = "train",
                    mix: Callable | None = None) -> dict:
    """One pass over the loader; returns mean loss, accuracy, images and seconds.

    mix(x, y) -> (x, soft targets) applies MixUp/CutMix; accuracy is then counted against the unmixed labels.
    """
    set_train_mode(model)
    loss_sum, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    for x, y in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not is_main()):
        x = transform(x).contiguous(memory_format=torch.channels_last) if x.dim() == 4 else transform(x)
        x, target = mix(x, y) if mix is not None else (x, y)
        with autocast(device, amp):
            logits = model(x)
            loss = criterion(logits, target)
        backward_step(loss, optimizer, scaler)
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    loss_sum, correct, seen = sum_across(loss_sum, correct, seen)
    return {"loss": loss_sum / max(seen, 1), "acc": correct / max(seen, 1), "images": int(seen), "seconds": seconds,
            "img_per_s": seen / max(seconds, 1e-9)}


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable, transform: Transform, device: torch.device,
            amp: bool = False, desc: str = "eval", tta: bool = False) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Eval-mode logits and labels for every batch of the loader (of all processes under torchrun), and the seconds.

    With tta, the image and its mirror image are both scored and the log of their mean probabilities returned.
    """
    model.eval()
    logits, labels = [], []
    start = time.perf_counter()
    for x, y in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not is_main()):
        x = transform(x)
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            out = model(x).float()
            if tta:
                out = ((out.softmax(1) + model(x.flip(-1)).float().softmax(1)) / 2).log()
        logits.append(out.cpu())
        labels.append(y.cpu())
    seconds = time.perf_counter() - start
    if not logits:  # this process's shard was empty
        # 1-D empty tensors are skipped by torch.cat, whatever the other processes' shapes
        return gather_cat(torch.empty(0)), gather_cat(torch.empty(0, dtype=torch.long)), seconds
    return gather_cat(torch.cat(logits)), gather_cat(torch.cat(labels)), seconds


def evaluate(model: nn.Module, loader: Iterable, transform: Transform, criterion: nn.Module,
             device: torch.device, amp: bool = False, desc: str = "eval") -> dict:
    """Loss, accuracy and inference throughput on a loader."""
    logits, labels, seconds = predict(model, loader, transform, device, amp, desc)
    return {"loss": criterion(logits, labels).item(), "acc": (logits.argmax(1) == labels).float().mean().item(),
            "images": len(labels), "seconds": seconds,
            "img_per_s": len(labels) / max(seconds, 1e-9)}


def param_groups(model: nn.Module, weight_decay: float, lr: float, lr_of: Callable[[str], float] | None = None,
                 names: Collection[str] | None = None) -> list[dict]:
    """Trainable parameters only, no weight decay on norms and biases; lr_of(name) sets per-parameter rates.

    names limits the groups to those parameters (e.g. the ones a gradual unfreezing step just made trainable).
    """
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad or (names is not None and name not in names):
            continue
        wd = 0.0 if p.ndim <= 1 else weight_decay
        groups.setdefault((wd, lr_of(name) if lr_of else lr), []).append(p)
    return [{"params": ps, "weight_decay": wd, "lr": rate} for (wd, rate), ps in groups.items()]


def add_param_groups(optimizer: torch.optim.Optimizer, groups: list[dict]) -> None:
    """Add groups to an optimizer whose schedule is under way: each starts at its rate times the schedule's factor.

    The factor is the one the first group is at (the schedules of make_scheduler scale every group alike; 1 before
    one is made), and "initial_lr" keeps the group's own rate for them to scale from in later epochs.
    """
    first = optimizer.param_groups[0]
    factor = first["lr"] / first.get("initial_lr", first["lr"])
    for group in groups:
        optimizer.add_param_group({**group, "initial_lr": group["lr"], "lr": group["lr"] * factor})


def make_optimizer(groups: list[dict], opt: str, lr: float) -> torch.optim.Optimizer:
    """AdamW or SGD (momentum 0.9, Nesterov) over the given parameter groups; lr is for groups that set none."""
    if opt == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=lr)


class _EpochLR(torch.optim.lr_scheduler.LambdaLR):
    """LambdaLR with one factor for every group, also for groups added after it was made (add_param_groups)."""

    def get_lr(self) -> list[float]:
        factor = self.lr_lambdas[0](self.last_epoch)
        return [group["initial_lr"] * factor for group in self.optimizer.param_groups]


def make_scheduler(optimizer: torch.optim.Optimizer, sched: str, warmup_epochs: int, epochs: int):
    """Per-epoch scheduler: linear warmup + cosine to zero ("cosine"), ReduceLROnPlateau on val accuracy
    ("plateau"), or constant ("none")."""
    for group in optimizer.param_groups:  # each group's own rate, which the schedule scales
        group.setdefault("initial_lr", group["lr"])
    if sched == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.3, patience=3)
    warmup, total = warmup_epochs, max(epochs, 1)

    def factor(epoch: int) -> float:
        if sched == "none":
            return 1.0
        if epoch < warmup:
            return (epoch + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / max(total - warmup, 1)))

    return _EpochLR(optimizer, factor)


def seed_everything(seed: int) -> dict[str, torch.Generator]:
    """Seed torch's global RNG (init, dropout); return the generators for shuffling and for augmentation.

    The global RNG and the shuffling generator are the same in every process (identical initial weights;
    one permutation that the processes split); the augmentation generator differs per process.
    """
    torch.manual_seed(seed)
    return {"data": torch.Generator().manual_seed(seed),
            "augment": torch.Generator().manual_seed(seed + 1_000_003 * (rank() + 1))}
