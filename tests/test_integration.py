"""Integration checks on the shared Animals-10 subset and MobileNetV2 weights; skipped when ../shared is absent."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from common.decode import decode_image
from common.models import load_pretrained
from common.split import scan_folder
from common.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from conftest import ROOT

SHARED = ROOT.parent / "shared"
DATA = SHARED / "data" / "animals10" / "raw-img"
WEIGHTS = SHARED / "weights" / "mobilenet_v2-4972ace1.pth"
pytestmark = pytest.mark.skipif(not (DATA.is_dir() and WEIGHTS.is_file()),
                                reason=f"shared data or weights not found beside the project ({SHARED})")


def test_shared_folder_has_the_animals10_layout():
    found = scan_folder(DATA)
    assert list(found) == sorted(["cane", "cavallo", "elefante", "farfalla", "gallina", "gatto", "mucca",
                                  "pecora", "ragno", "scoiattolo"])
    assert all(len(files) == 450 for files in found.values())


def test_shared_weights_see_dogs_through_our_preprocessing():
    model = torchvision.models.mobilenet_v2()
    record = load_pretrained(model, "mobilenet_v2", str(WEIGHTS))
    assert record["sha256"].startswith("4972ace1")
    model.eval()
    files = sorted((DATA / "cane").iterdir())[:16]
    x = torch.from_numpy(np.stack([decode_image(f, 256) for f in files])).permute(0, 3, 1, 2)
    with torch.no_grad():
        top1 = model(eval_transform(x, 224, IMAGENET_MEAN, IMAGENET_STD)).argmax(1)
    dogs = ((top1 >= 151) & (top1 <= 268)).float().mean().item()  # ImageNet's dog classes
    assert dogs >= 0.6, f"only {dogs:.0%} of dog photos got an ImageNet dog class"
