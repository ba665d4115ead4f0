"""common/inference.py: the Predictor against the engine's own path, TTA, the saved test split, and the crop."""
from __future__ import annotations

import ast
from functools import partial

import numpy as np
import pytest
import torch

import part1_scratch_cnn as part1
from common.cli import DataError
from common.engine import predict
from common.inference import Predictor, center_crop, load_labelled_folder, load_test_split
from common.loader import BatchLoader
from common.models import model_from_checkpoint
from common.runs import CheckpointError, load_checkpoint
from common.transforms import eval_transform
from conftest import ROOT, make_dataset, tiny_args

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-epoch scratch CNN on synthetic data: (its best.pt, the checkpoint dict)."""
    root = tmp_path_factory.mktemp("infer")
    data = make_dataset(root / "raw-img")
    out = root / "runs"
    part1.main(part1.get_args_parser().parse_args(tiny_args(data, out, "--epochs", "1", "--batch-size", "16")))
    return out / "best.pt", load_checkpoint(out / "best.pt")


def test_predictor_gives_the_logits_of_the_engine_path(trained):
    path, ckpt = trained
    test = load_test_split(ckpt, log=lambda *_: None)
    assert len(test.indices) == 40 and len(test.names) == 40 and test.description.startswith("saved test split")
    old_model = model_from_checkpoint(ckpt)
    old_transform = partial(eval_transform, crop=ckpt["crop_size"], mean=ckpt["mean"], std=ckpt["std"])
    old, old_y, _ = predict(old_model, BatchLoader(test.images, test.labels, test.indices, 64, CPU), old_transform, CPU)

    predictor = Predictor(path, CPU)
    logits, y, seconds = predictor.predict(test.images, test.labels, test.indices, batch_size=16)
    torch.testing.assert_close(logits, old, atol=1e-5, rtol=1e-5)
    assert torch.equal(y, old_y) and seconds > 0

    class Lazy:  # indexable only, like evaluate.py's corrupted views: no len()
        def __getitem__(self, idx):
            return test.images[idx]
    torch.testing.assert_close(predictor.predict(Lazy(), test.labels, test.indices)[0], old, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(predictor.predict(Lazy(), indices=test.indices)[0], old, atol=1e-5, rtol=1e-5)
    # The whole-array forms and the one-batch prepare() agree with it.
    pixels = np.asarray(test.images)[test.indices]
    torch.testing.assert_close(predictor.logits(pixels, batch_size=7), old, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(predictor.probabilities(pixels), old.softmax(1).numpy(), atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(predictor.model(predictor.prepare(pixels[:5])), old[:5], atol=1e-5, rtol=1e-5)
    assert predictor.model(predictor.prepare(pixels[:1])).shape == (1, 10)


def test_predictor_from_a_dict_keeps_only_the_metadata(trained):
    _, ckpt = trained
    predictor = Predictor(ckpt)
    assert "model_state" not in predictor.ckpt and "optimizer_state" not in predictor.ckpt
    assert predictor.ckpt["arch"] == "scratch_cnn" and predictor.classes == ckpt["classes"]
    assert predictor.names[0] == "dog" and (predictor.img_size, predictor.crop_size) == (72, 64)
    assert not predictor.model.training
    convs = [p for p in predictor.model.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)


def test_tta_averages_the_mirror_images_probabilities(trained):
    path, ckpt = trained
    test = load_test_split(ckpt, log=lambda *_: None)
    pixels = np.asarray(test.images)[test.indices[:12]]
    predictor = Predictor(path)
    plain = predictor.logits(pixels).softmax(1)
    mirrored = predictor.logits(pixels[:, :, ::-1]).softmax(1)  # 72 px, crop 64: the crop is centred both ways
    tta = predictor.logits(pixels, tta=True)
    torch.testing.assert_close(tta, ((plain + mirrored) / 2).log(), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(tta, plain.log(), atol=1e-4)  # the mirror does change the answer


def test_load_test_split_refuses_a_checkpoint_without_or_with_another_split(trained, tmp_path):
    _, ckpt = trained
    for key in ("config", "split_fingerprint"):
        with pytest.raises(CheckpointError, match=f"records no saved split \\(no {key} entry\\)"):
            load_test_split({k: v for k, v in ckpt.items() if k != key})
    with pytest.raises(CheckpointError, match="trained on another split than .*split.json; pass the run's own"):
        load_test_split({**ckpt, "split_fingerprint": "0" * 16})
    other = tmp_path / "elsewhere.json"
    with pytest.raises(DataError):  # an explicit split file that is not there
        load_test_split(ckpt, split_file=other)


def test_load_labelled_folder(trained, tmp_path):
    _, ckpt = trained
    holdout = make_dataset(tmp_path / "holdout", classes=["gatto", "cane"], per_class=3, seed=5)
    got = load_labelled_folder(ckpt, holdout, log=lambda *_: None)
    assert got.images.shape == (6, 72, 72, 3) and got.indices.tolist() == list(range(6))
    assert sorted(got.labels.tolist()) == sorted([ckpt["classes"].index("gatto")] * 3 + [0] * 3)
    assert got.description == f"folder {holdout}" and got.names[0].startswith(str(holdout))
    with pytest.raises(DataError, match="does not know"):
        load_labelled_folder(ckpt, make_dataset(tmp_path / "pets", classes=["beagle", "pug"], per_class=1))


@pytest.mark.parametrize("h, w, crop", [(72, 72, 64), (75, 70, 64), (41, 64, 33), (64, 64, 64)])
def test_center_crop_is_eval_transforms_crop(h, w, crop):
    img = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    seen = eval_transform(torch.from_numpy(img).permute(2, 0, 1)[None], crop, [0.0] * 3, [1 / 255] * 3)
    tile = center_crop(img, crop)
    assert tile.shape == (crop, crop, 3)
    torch.testing.assert_close(seen[0].permute(1, 2, 0), torch.from_numpy(tile).float())


def test_no_script_imports_another_script():
    """Shared code lives in common/: a script is run, never imported by another script."""
    scripts = {p.stem for p in ROOT.glob("*.py")}
    offenders = {}
    for script in sorted(scripts):
        tree = ast.parse((ROOT / f"{script}.py").read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        if imported & (scripts - {script}):
            offenders[script] = sorted(imported & (scripts - {script}))
    assert len(scripts) >= 8 and offenders == {}



def test_forward_passes_stop_page_faulting_once_freed_memory_is_retained():
    """common.allocator: after a few warm-up passes, a forward pass reuses its freed activations (by default glibc
    hands them back and every pass faults thousands of pages in again)."""
    import resource
    import sys

    from common.allocator import retain_freed_memory
    from common.architectures import ScratchCNN
    if not sys.platform.startswith("linux") or not retain_freed_memory():
        pytest.skip("mallopt is glibc's")
    model, x = ScratchCNN().eval(), torch.randn(16, 3, 128, 128)

    def faults_of_a_pass() -> int:
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        with torch.inference_mode():
            model(x)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

    faults = [faults_of_a_pass() for _ in range(6)]
    assert max(faults[-3:]) < 100, faults
