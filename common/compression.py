"""Compressed models for CPU inference: int8 post-training static quantization and global magnitude pruning, and
the checkpoint entry that rebuilds them.

A compressed checkpoint is one of the project's checkpoints (common/runs.py) with one more entry, `compression`:

    {"kind": "int8", "backend": "x86", "scheme": "fx-static", "calibration_images": 256, "source": "runs/.../best.pt"}
    {"kind": "pruned", "sparsity": 0.5, "finetune_epochs": 1, "finetune_lr": 0.0001, "source": "runs/.../best.pt"}

An int8 checkpoint's model_state is the state dict of the converted FX graph (qint8 weights with their per-channel
scales, the activations' scales and zero points), which torch.load(weights_only=True) reads; model_from_checkpoint
rebuilds the float network, prepares and converts it the same way and loads that state. Its quantized kernels run
on the CPU only and have no gradients. A pruned checkpoint is a plain float model whose pruned weights are zeros.
"""
from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import nn
from torch.nn.utils import prune

from common.cli import UserError

BACKEND = "x86"  # PyTorch's own x86 quantized backend (fbgemm and oneDNN kernels)
SCHEME = "fx-static"  # FX graph mode post-training static quantization
KINDS = ("int8", "pruned")
# The notices torch.ao.quantization gives on every call (see quiet_quantization).
_NOTICES = ("torch.ao.quantization is deprecated", "Please use quant_min and quant_max", "TypedStorage is deprecated",
            "torch.quantize_per_tensor, torch.quantize_per_channel")


class CompressionError(UserError):
    """A compression that cannot be done as asked (a sparsity, a method, a model that cannot be quantized)."""


@contextmanager
def quiet_quantization() -> Iterator[None]:
    """Hide torch.ao.quantization's deprecation notices, only around the project's own quantization calls.

    Why: the FX API announces its move to torchao's pt2e flow, which is not a dependency of the project; it works in
    the pinned torch (requirements.txt), and the notices would repeat for every int8 model loaded.
    """
    with warnings.catch_warnings():
        for notice in _NOTICES:
            warnings.filterwarnings("ignore", message=f"^{notice}")
        yield


def _use_backend() -> None:
    """Select the x86 quantized engine (a process-wide torch setting that quantized kernels read)."""
    if BACKEND not in torch.backends.quantized.supported_engines:
        raise CompressionError(f"this PyTorch build has no {BACKEND} quantized engine (it has "
                               f"{', '.join(torch.backends.quantized.supported_engines)}); int8 needs an x86 build")
    torch.backends.quantized.engine = BACKEND


def prepare_int8(model: nn.Module, example: torch.Tensor, name: str = "the model") -> nn.Module:
    """A traced copy of the eval-mode float model: conv-BN(-ReLU) fused, observers placed for the x86 backend."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    _use_backend()
    with quiet_quantization():
        try:
            return prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping(BACKEND),
                              example_inputs=(example,))
        except Exception as e:  # torch.fx raises TraceError, TypeError, ... for code it cannot trace
            raise CompressionError(f"{name} cannot be traced for int8 quantization ({type(e).__name__}); "
                                   "compress it with --methods prune") from None


def convert_int8(prepared: nn.Module) -> nn.Module:
    """The int8 model of a prepared (and calibrated) one."""
    from torch.ao.quantization.quantize_fx import convert_fx

    with quiet_quantization():
        return convert_fx(prepared).eval()


def quantize_int8(model: nn.Module, batches: Iterable[torch.Tensor], example: torch.Tensor,
                  name: str = "the model") -> tuple[nn.Module, int]:
    """Post-training static int8 quantization calibrated on the given normalised batches; (model, images seen)."""
    prepared = prepare_int8(model, example, name)
    seen = 0
    with torch.no_grad(), quiet_quantization():
        for x in batches:
            prepared(x)
            seen += len(x)
    if not seen:
        raise CompressionError("no calibration images; give --calibration-images 1 or more")
    return convert_int8(prepared), seen


def int8_structure(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The int8 graph of a float model with placeholder scales, for loading an int8 state dict into."""
    prepared = prepare_int8(model, example)
    with torch.no_grad(), quiet_quantization():
        prepared(example)  # observers that saw nothing would warn at conversion
    return convert_int8(prepared)


def prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """The (module, "weight") pairs global pruning acts on: every conv and linear layer."""
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]


def check_sparsity(sparsity: float) -> None:
    """CompressionError unless 0 < sparsity < 1."""
    if not 0 < sparsity < 1:
        raise CompressionError(f"sparsity {sparsity:g} is not in (0, 1); give e.g. --sparsities 0.3,0.5,0.7")


def prune_global(model: nn.Module, sparsity: float) -> nn.Module:
    """Zero the sparsity share of the smallest-magnitude conv and linear weights, ranked over all layers at once.

    The masks stay as prune's reparametrisation (weight = weight_orig * weight_mask, recomputed before every forward
    pass), so a fine-tune cannot revive a pruned weight; finish_pruning makes the weights plain tensors again.
    """
    check_sparsity(sparsity)
    prune.global_unstructured(prunable(model), pruning_method=prune.L1Unstructured, amount=sparsity)
    return model


def finish_pruning(model: nn.Module) -> nn.Module:
    """Fold every pruning mask into its weight (prune.remove): a plain float model with zeros."""
    for module, name in prunable(model):
        if prune.is_pruned(module) and hasattr(module, name + "_mask"):
            prune.remove(module, name)
    return model


def weight_tensors(state: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The conv and linear weights of a float or int8 state dict (dequantized): the >= 2-d `*.weight` entries."""
    return [t.dequantize() if t.is_quantized else t for k, t in state.items()
            if k.endswith("weight") and isinstance(t, torch.Tensor) and t.dim() >= 2]


def zero_share(state: dict[str, torch.Tensor]) -> float:
    """The share of the conv and linear weights that are exactly zero."""
    weights = weight_tensors(state)
    total = sum(t.numel() for t in weights)
    return sum(int((t == 0).sum()) for t in weights) / max(total, 1)


def is_int8(ckpt: dict) -> bool:
    """Whether a checkpoint holds an int8 model (CPU only, no gradients)."""
    entry = ckpt.get("compression")
    return isinstance(entry, dict) and entry.get("kind") == "int8"


def require_float(ckpt: dict, what: str) -> None:
    """CompressionError when the checkpoint is int8: what (e.g. "Grad-CAM") needs a float model's gradients."""
    if is_int8(ckpt):
        source = ckpt["compression"].get("source") or "the run's best.pt"
        raise CompressionError(f"this is an int8 model (compress.py), whose quantized layers have no gradients, which "
                               f"{what} needs; pass the float checkpoint it was made from ({source})")
