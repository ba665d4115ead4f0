"""Model building, pretrained-weight resolution, freezing by mode, and rebuilding from a checkpoint."""
from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from common.cli import UserError
from common.data import file_sha256

# Which top-level children each (architecture, mode) trains; every other parameter is frozen.
# "bn" also trains every BatchNorm layer; "gradual" starts as "fc" and unfreezes deeper blocks on a schedule.
TRAINABLE = {
    ("scratch_cnn", "full"): None,
    ("resnet18", "fc"): ("fc",),
    ("resnet18", "blocks34"): ("layer3", "layer4", "fc"),
    ("resnet18", "full"): None,
    ("resnet18", "bn"): ("fc",),
    ("resnet18", "gradual"): ("fc",),
    ("mobilenet_v2", "fc"): ("classifier",),
    ("mobilenet_v2", "full"): None,
    ("mobilenet_v2", "bn"): ("classifier",),
    ("mobilenet_v2", "gradual"): ("classifier",),
}
MODES = {
    "scratch_cnn": ("full",),
    "resnet18": ("fc", "blocks34", "full", "bn", "gradual"),
    "mobilenet_v2": ("fc", "full", "bn", "gradual"),
}
HEAD = {"resnet18": "fc", "mobilenet_v2": "classifier"}
MAX_DEPTH = {"resnet18": 5, "mobilenet_v2": 4}  # block_depth of the stem
TV_WEIGHTS = {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "mobilenet_v2": "MobileNet_V2_Weights.IMAGENET1K_V1",
}


class WeightsError(UserError):
    """Pretrained weights could not be had or do not fit; the message says what to do."""


class ScratchCNN(nn.Module):
    """Five conv blocks (conv 3x3, BatchNorm, ReLU, 2x2 max-pool) and a dropout + linear head.

    The first conv has stride 2, so a 224x224 input is 7x7 after the fifth block; global average
    pooling then keeps the head small and the network input-size agnostic.
    """

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (32, 64, 128, 256, 384),
                 dropout: float = 0.3):
        super().__init__()
        layers, c_in = [], 3
        for i, c in enumerate(widths):
            stride = 2 if i == 0 else 1
            layers += [nn.Conv2d(c_in, c, 3, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


def _torchvision_model(arch: str) -> nn.Module:
    return getattr(torchvision.models, arch)()


def replace_head(model: nn.Module, arch: str, num_classes: int) -> None:
    """Put a fresh num_classes linear layer where the ImageNet classifier was."""
    if arch == "resnet18":
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    elif arch == "mobilenet_v2":
        model.classifier[1] = nn.Linear(model.classifier[1].in_features, num_classes)


def load_pretrained(model: nn.Module, arch: str, weights: str) -> dict:
    """Load ImageNet weights into a torchvision model; returns a record of what was loaded.

    weights: "imagenet" (torchvision's weights API and its cache under $TORCH_HOME), a state-dict
    file path, or "none" (random initialisation).
    """
    if weights == "none":
        return {"source": "none (random initialisation)", "sha256": None}
    if weights == "imagenet":
        enum = torchvision.models.get_weight(TV_WEIGHTS[arch])
        try:
            state = enum.get_state_dict(progress=False, check_hash=False)
        except Exception as e:  # URLError, socket errors, ... : offline with nothing cached
            cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
            raise WeightsError(
                f"cannot get {TV_WEIGHTS[arch]} ({type(e).__name__}: {e}); either go online once so torchvision "
                f"caches it at {cache}, or pass --weights PATH to a state-dict file (or --weights none)") from None
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
        source = f"torchvision {TV_WEIGHTS[arch]} ({path})"
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
    top = name.split(".")[0]
    if arch == "resnet18":
        order = {"fc": 0, "layer4": 1, "layer3": 2, "layer2": 3, "layer1": 4}
        return order.get(top, 5)
    if top == "classifier":
        return 0
    index = int(name.split(".")[1])
    return 1 if index >= 14 else 2 if index >= 7 else 3 if index >= 4 else 4


def freeze(model: nn.Module, arch: str, mode: str) -> None:
    """Set requires_grad so only the mode's trainable children (and, in bn mode, all BatchNorm layers) learn."""
    trainable = TRAINABLE[(arch, mode)]
    for name, p in model.named_parameters():
        p.requires_grad = trainable is None or name.split(".")[0] in trainable
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


def build_model(arch: str, num_classes: int, mode: str = "full", weights: str = "none") -> tuple[nn.Module, dict]:
    """Build an architecture for num_classes, load its weights, freeze for the mode; returns (model, weights record)."""
    if arch not in MODES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(MODES)}")
    if mode not in MODES[arch]:
        raise ValueError(f"unknown mode {mode!r} for {arch}; choose one of {', '.join(MODES[arch])}")
    if arch == "scratch_cnn":
        model, record = ScratchCNN(num_classes), {"source": "none (trained from scratch)", "sha256": None}
    else:
        model = _torchvision_model(arch)
        record = load_pretrained(model, arch, weights)
        replace_head(model, arch, num_classes)
    freeze(model, arch, mode)
    return model, record


def set_train_mode(model: nn.Module) -> nn.Module:
    """model.train(), except BatchNorm layers whose parameters are frozen stay in eval mode (stats do not move)."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def model_from_checkpoint(ckpt: dict) -> nn.Module:
    """Rebuild an eval-mode model from a checkpoint dict alone (no weights download)."""
    if ckpt["arch"] not in MODES or ckpt["mode"] not in MODES[ckpt["arch"]]:
        raise WeightsError(f"the checkpoint is a {ckpt['arch']}/{ckpt['mode']} model, which this version cannot "
                           "build; use a checkpoint written by this project's training scripts")
    model, _ = build_model(ckpt["arch"], len(ckpt["classes"]), ckpt["mode"], weights="none")
    try:
        model.load_state_dict(ckpt["model_state"])
    except (RuntimeError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(f"the checkpoint's weights do not fit {ckpt['arch']}/{ckpt['mode']} with "
                           f"{len(ckpt['classes'])} classes ({first}); it was edited: use another checkpoint") from None
    return model.eval()
