"""Model building, pretrained-weight resolution, freezing by mode, and rebuilding from a checkpoint."""
from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from common.architectures import ARCHS, ScratchCNN  # noqa: F401  (ScratchCNN: callers import it from here)
from common.cli import UserError
from common.compression import BACKEND, KINDS, SCHEME, int8_structure, zero_share
from common.files import file_sha256
from common.lora import add_lora, merge_lora


class WeightsError(UserError):
    """Pretrained weights could not be had or do not fit; the message says what to do."""


def replace_head(model: nn.Module, arch: str, num_classes: int) -> None:
    """Put a fresh num_classes linear layer where the ImageNet classifier was."""
    parent, _, leaf = ARCHS[arch].head.rpartition(".")
    owner = model.get_submodule(parent)
    setattr(owner, leaf, nn.Linear(getattr(owner, leaf).in_features, num_classes))


def load_pretrained(model: nn.Module, arch: str, weights: str) -> dict:
    """Load ImageNet weights into a torchvision model; returns a record of what was loaded.

    weights: "imagenet" (torchvision's weights API and its cache under $TORCH_HOME), a state-dict
    file path, or "none" (random initialisation).
    """
    if weights == "none":
        return {"source": "none (random initialisation)", "sha256": None}
    if weights == "imagenet":
        name = ARCHS[arch].weights
        enum = torchvision.models.get_weight(name)
        try:
            state = enum.get_state_dict(progress=False, check_hash=False)
        except Exception as e:  # URLError, socket errors, ... : offline with nothing cached
            cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
            raise WeightsError(
                f"cannot get {name} ({type(e).__name__}: {e}); either go online once so torchvision "
                f"caches it at {cache}, or pass --weights PATH to a state-dict file (or --weights none)") from None
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
        source = f"torchvision {name} ({path})"
    else:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"--weights {weights}: no such file; pass a state-dict file, 'imagenet' or 'none'")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch's own message suggests weights_only=False, i.e. running the file's code
            raise WeightsError(
                f"--weights {weights} cannot be read as a state dict ({type(e).__name__}: it is corrupt, or holds "
                f"Python objects, which are never loaded); pass a file saved with torch.save(model.state_dict()) "
                f"from torchvision's {arch}, or --weights imagenet / none") from None
        if isinstance(state, dict) and "model_state" in state:
            state = state["model_state"]
        source = str(path)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, AttributeError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(f"weights from {source} do not fit torchvision {arch}: {first}; "
                           f"pass {arch} ImageNet weights") from None
    return {"source": source, "sha256": file_sha256(path) if path.is_file() else None}


def block_depth(arch: str, name: str) -> int:
    """How many blocks a parameter lies below the head (0 for the head), for per-block rates and unfreezing."""
    blocks = ARCHS[arch].blocks
    return next((depth for depth, prefixes in enumerate(blocks)
                 if any(name == p or name.startswith(p + ".") for p in prefixes)), len(blocks))


def freeze(model: nn.Module, arch: str, mode: str, blocks: int = 0) -> None:
    """Set requires_grad so only the mode's trainable children (in bn mode also all BatchNorm layers; in top mode
    the head and the `blocks` blocks below it) learn."""
    trainable = ARCHS[arch].modes[mode]
    for name, p in model.named_parameters():
        p.requires_grad = (trainable is None or name.split(".")[0] in trainable
                           or (mode == "top" and block_depth(arch, name) <= blocks))
    if mode == "bn":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.requires_grad_(True)


def unfreeze_to_depth(model: nn.Module, arch: str, depth: int) -> bool:
    """Make every block within `depth` of the head trainable (gradual unfreezing); True if anything changed."""
    changed = False
    for name, p in model.named_parameters():
        if not p.requires_grad and block_depth(arch, name) <= depth:
            p.requires_grad = changed = True
    return changed


def build_model(arch: str, num_classes: int, mode: str = "full", weights: str = "none",
                blocks: int = 0, lora: tuple[int, float] | None = None) -> tuple[nn.Module, dict]:
    """Build an architecture for num_classes, load its weights, freeze for the mode (top mode: `blocks` below the
    head train; lora mode: adapters of (rank, alpha) = `lora`); returns (model, weights record)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    spec = ARCHS[arch]
    if mode not in spec.modes:
        raise ValueError(f"unknown mode {mode!r} for {arch}; choose one of {', '.join(spec.modes)}")
    if (mode == "lora") != (lora is not None):
        raise ValueError("lora mode needs its (rank, alpha), and only lora mode takes them")
    if spec.weights is None:
        model, record = spec.build(num_classes=num_classes), {"source": "none (trained from scratch)", "sha256": None}
    else:
        model = spec.build()
        record = load_pretrained(model, arch, weights)
        replace_head(model, arch, num_classes)
    freeze(model, arch, mode, blocks)
    if lora is not None:
        add_lora(model, *lora, skip=spec.head_child)
    return model, record


def set_dropout(model: nn.Module, arch: str, p: float) -> None:
    """Set the dropout probability of the architecture's head."""
    if ARCHS[arch].dropout is None:
        raise ValueError(f"{arch} has no dropout layer in its head")
    model.get_submodule(ARCHS[arch].dropout).p = p


def set_train_mode(model: nn.Module) -> nn.Module:
    """model.train(), except modules whose parameters are all frozen stay in eval mode.

    So frozen BatchNorm statistics do not move, and a frozen block drops nothing (stochastic depth, dropout):
    a frozen backbone computes the same features as in evaluation, and as the feature cache.
    """
    model.train()
    for m in model.modules():
        params = list(m.parameters())
        if params and not any(p.requires_grad for p in params):
            m.eval()
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def model_from_checkpoint(ckpt: dict) -> nn.Module:
    """Rebuild an eval-mode model from a checkpoint dict alone (no weights download); LoRA adapters merged; a
    compressed checkpoint (its `compression` entry, common/compression.py) as its int8 or pruned model."""
    if ckpt["arch"] not in ARCHS or ckpt["mode"] not in ARCHS[ckpt["arch"]].modes:
        raise WeightsError(f"the checkpoint is a {ckpt['arch']}/{ckpt['mode']} model, which this version cannot "
                           "build; use a checkpoint written by this project's training scripts")
    lora = ckpt.get("lora")
    if (ckpt["mode"] == "lora") != isinstance(lora, dict):
        raise WeightsError(f"the checkpoint is a {ckpt['arch']}/{ckpt['mode']} model with lora {lora!r}: it was "
                           "edited; use another checkpoint")
    kind = _compression_kind(ckpt)
    try:
        model, _ = build_model(ckpt["arch"], len(ckpt["classes"]), ckpt["mode"], weights="none",
                               lora=(lora["rank"], lora["alpha"]) if lora else None)
        if kind == "int8":  # the state is the converted graph's: build that graph from the float network
            example = torch.zeros(1, 3, ckpt["crop_size"], ckpt["crop_size"])
            model = int8_structure(merge_lora(model).eval(), example)
        elif kind == "pruned":  # saved after merging, like every compressed model
            model = merge_lora(model)
        model.load_state_dict(ckpt["model_state"])
    except (RuntimeError, TypeError, AttributeError, KeyError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        what = f"{ckpt['arch']}/{ckpt['mode']}" + (f" {kind}" if kind else "")
        raise WeightsError(f"the checkpoint's weights do not fit {what} with {len(ckpt['classes'])} classes "
                           f"({first}); it was edited: use another checkpoint") from None
    if kind == "pruned" and zero_share(ckpt["model_state"]) < ckpt["compression"]["sparsity"] - 1e-3:
        raise WeightsError(f"the checkpoint records sparsity {ckpt['compression']['sparsity']:g}, but only "
                           f"{zero_share(ckpt['model_state']):.3f} of its weights are zero: it was edited; "
                           "use another checkpoint")
    return merge_lora(model).eval()


def _compression_kind(ckpt: dict) -> str | None:
    """The checkpoint's compression kind (None: a float model as trained), or WeightsError for an edited entry."""
    if "compression" not in ckpt:
        return None
    entry = ckpt["compression"]
    kind = entry.get("kind") if isinstance(entry, dict) else None
    fits = {"int8": lambda: entry.get("backend") == BACKEND and entry.get("scheme") == SCHEME,
            "pruned": lambda: isinstance(entry.get("sparsity"), float) and 0 < entry["sparsity"] < 1}
    if kind not in fits or not fits[kind]():
        raise WeightsError(f"the checkpoint's compression entry {entry!r} is not one this version writes (kind "
                           f"{' or '.join(KINDS)}; int8 with backend {BACKEND}): it was edited; use another checkpoint")
    return kind
