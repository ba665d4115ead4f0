"""common/robustness.py (corruptions, MSP, AUROC, synthetic textures) and evaluate.py --corruptions / --ood."""
from __future__ import annotations

import json
import subprocess
import sys
from functools import partial

import cv2
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

import evaluate
import part1_scratch_cnn as part1
from common.cli import DataError
from common.engine import predict
from common.inference import load_test_split
from common.models import model_from_checkpoint
from common.robustness import CORRUPTIONS, SEVERITIES, auroc, corrupt, fpr_at_tpr, msp, synthetic_textures
from common.runs import load_checkpoint
from common.transforms import eval_transform
from conftest import ROOT, make_dataset, tiny_args

SEEDED = ("gaussian_noise", "rotation")  # the corruptions that draw from the seed; the others ignore it


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> np.ndarray:
    """Eight textured 40 px RGB images as a read-only memory map, like the pixel cache."""
    path = tmp_path_factory.mktemp("pixels") / "images.npy"
    np.save(path, synthetic_textures(8, 40, seed=3))
    return np.load(path, mmap_mode="r")


@pytest.mark.parametrize("severity", SEVERITIES)
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruption_contract(images, name, severity):
    before = np.array(images)
    out = corrupt(images, name, severity, seed=0)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert np.array_equal(images, before)
    assert all(not np.array_equal(o, i) for o, i in zip(out, images)), "every image should change"
    assert np.array_equal(out, corrupt(images, name, severity, seed=0))
    assert np.array_equal(out, corrupt(images, name, severity, seed=1)) == (name not in SEEDED)
    # a batch of rows 2..4, given their global indices, is corrupted exactly as in the whole set
    assert np.array_equal(corrupt(images[2:5], name, severity, seed=0, index=np.array([2, 3, 4])), out[2:5])


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_higher_severity_changes_images_more(images, name):
    diffs = [np.abs(corrupt(images, name, s).astype(np.int16) - images).mean() for s in SEVERITIES]
    assert all(a < b for a, b in zip(diffs, diffs[1:])), diffs


def test_corruptions_do_what_they_say():
    grey = np.full((4, 64, 64, 3), 128, np.uint8)
    noisy = corrupt(grey, "gaussian_noise", 1).astype(np.float64)
    assert noisy.std() == pytest.approx(0.08 * 255, rel=0.05) and abs(noisy.mean() - 128) < 1
    assert corrupt(grey, "brightness", 3).mean() == pytest.approx(128 + 0.3 * 255, abs=1)
    stripes = np.zeros((1, 64, 64, 3), np.uint8)
    stripes[:, ::2] = 200
    low = corrupt(stripes, "contrast", 1).astype(np.float64)
    assert low.std() == pytest.approx(0.4 * stripes.std(), rel=0.02)
    assert low.mean() == pytest.approx(stripes.mean(), abs=1)
    assert corrupt(stripes, "gaussian_blur", 5).std() < 0.05 * stripes.std()
    # the reflected border keeps a flat image flat: no black corners after rotation
    assert np.array_equal(corrupt(grey, "rotation", 5), grey)


def test_bad_corruption_arguments_are_refused(images):
    with pytest.raises(ValueError,
                       match="choose from gaussian_noise, gaussian_blur, brightness, contrast, jpeg, rotation"):
        corrupt(images, "fog", 1)
    for severity in (0, 6):
        with pytest.raises(ValueError, match="not one of 1, 2, 3, 4, 5"):
            corrupt(images, "jpeg", severity)
    with pytest.raises(ValueError, match="index"):
        corrupt(images, "jpeg", 1, index=np.arange(3))


def test_auroc_matches_sklearn_with_ties_and_extremes():
    rng = np.random.default_rng(0)
    for shift in (0.0, 0.2, -0.3):
        pos = rng.integers(0, 6, 37) / 5 + shift  # few distinct values: many ties within and across the groups
        neg = rng.integers(0, 6, 23) / 5
        truth = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        assert auroc(pos, neg) == pytest.approx(roc_auc_score(truth, np.r_[pos, neg]), abs=1e-12)
    pos, neg = rng.random(50), rng.random(80)
    assert auroc(pos, neg) == pytest.approx(roc_auc_score(np.r_[np.ones(50), np.zeros(80)], np.r_[pos, neg]), abs=1e-12)
    assert auroc([0.9, 0.8], [0.1, 0.2, 0.3]) == 1.0
    assert auroc([0.1, 0.2], [0.8, 0.9, 0.3]) == 0.0
    assert auroc([0.5, 0.5], [0.5]) == 0.5
    with pytest.raises(ValueError):
        auroc([], [0.1])


def test_fpr_at_tpr_by_hand():
    pos = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]
    neg = [0.85, 0.5, 0.25, 0.2, 0.15, 0.0]
    # keeping 8 of 10 positives needs threshold 0.2; negatives at or above it: 0.85, 0.5, 0.25, 0.2
    assert fpr_at_tpr(pos, neg, 0.8) == pytest.approx(4 / 6)
    # 95% of 10 positives means all 10: threshold 0.05 lets every negative but 0.0 through
    assert fpr_at_tpr(pos, neg, 0.95) == pytest.approx(5 / 6)
    assert fpr_at_tpr(pos, neg, 0.1) == 0.0
    fpr, tpr, _ = roc_curve(np.r_[np.ones(10), np.zeros(6)], np.r_[pos, neg])
    assert fpr_at_tpr(pos, neg, 0.8) == pytest.approx(fpr[np.argmax(tpr >= 0.8)])


def test_msp():
    logits = np.array([[0.0, 0.0], [10.0, 0.0], [1.0, 2.0]])
    expected = [0.5, 1 / (1 + np.exp(-10)), 1 / (1 + np.exp(-1))]
    assert msp(logits) == pytest.approx(expected)
    assert msp(torch.tensor(logits, dtype=torch.float32)) == pytest.approx(expected, rel=1e-6)


def test_synthetic_textures():
    x = synthetic_textures(12, 32, seed=1)
    assert x.shape == (12, 32, 32, 3) and x.dtype == np.uint8
    assert np.array_equal(x, synthetic_textures(12, 32, seed=1))
    assert np.array_equal(x[:5], synthetic_textures(5, 32, seed=1))
    assert not np.array_equal(x, synthetic_textures(12, 32, seed=2))
    assert len({img.tobytes() for img in x}) == 12 and all(img.std() > 1 for img in x)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny scratch-CNN run on synthetic data."""
    root = tmp_path_factory.mktemp("robust")
    data = make_dataset(root / "raw-img")
    out = root / "runs"
    part1.main(part1.get_args_parser().parse_args(
        tiny_args(data, out, "--epochs", "2", "--batch-size", "16", "--lr", "3e-3")))
    return data, out


def run_evaluate(ckpt, out, *extra: str) -> tuple[dict, ...]:
    evaluate.main(evaluate.get_args_parser().parse_args(
        ["--ckpt", str(ckpt), "--device", "cpu", "--out-dir", str(out), "--batch-size", "16", *extra]))
    return tuple(json.loads((out / f"{name}.json").read_text()) if (out / f"{name}.json").exists() else None
                 for name in ("eval", "corruptions", "ood"))


def assert_png(path):
    img = cv2.imread(str(path))
    assert img is not None and img.shape[0] > 200 and img.shape[1] > 300, path


CORRUPTION_KEYS = {"checkpoint", "arch", "mode", "data", "seed", "n", "clean_acc", "severities", "accuracy",
                   "mean_acc_by_severity", "mean_corrupted_acc", "device", "seconds"}
OOD_KEYS = {"checkpoint", "ood_source", "n_in", "n_out", "auroc", "fpr_at_95_tpr", "msp_in_mean", "msp_out_mean",
            "score"}


def test_corruptions_and_synthetic_ood_end_to_end(trained, tmp_path):
    _, runs = trained
    ev, cor, ood = run_evaluate(runs / "best.pt", tmp_path, "--corruptions", "--severities", "3,1",
                                "--ood", "synthetic", "--ood-count", "20")
    assert set(cor) == CORRUPTION_KEYS and cor["checkpoint"] == str(runs / "best.pt")
    assert cor["n"] == ev["n"] == 40 and cor["clean_acc"] == ev["accuracy"] and cor["severities"] == [1, 3]
    assert (cor["arch"], cor["mode"], cor["seed"], cor["device"]) == ("scratch_cnn", "full", 0, "cpu")
    assert list(cor["accuracy"]) == list(CORRUPTIONS)
    cells = np.array(list(cor["accuracy"].values()))
    assert cells.shape == (6, 2) and np.allclose(cells * 40, np.round(cells * 40))  # whole images out of 40
    assert cor["mean_acc_by_severity"] == pytest.approx(cells.mean(0).tolist())
    assert cor["mean_corrupted_acc"] == pytest.approx(cells.mean()) and cor["seconds"] > 0

    # batch-by-batch corruption (batches of 16) scores exactly what corrupting all test images at once does
    ckpt = load_checkpoint(runs / "best.pt")
    test = load_test_split(ckpt)
    pixels, labels, idx = test.images, test.labels, test.indices
    whole = corrupt(np.asarray(pixels)[idx], "gaussian_noise", 3, seed=0, index=idx)
    loader = [(torch.from_numpy(whole).permute(0, 3, 1, 2), torch.from_numpy(labels[idx]))]
    transform = partial(eval_transform, crop=ckpt["crop_size"], mean=ckpt["mean"], std=ckpt["std"])
    model = model_from_checkpoint(ckpt).to(memory_format=torch.channels_last)  # as evaluate.py runs it
    logits, y, _ = predict(model, loader, transform, torch.device("cpu"))
    assert cor["accuracy"]["gaussian_noise"][1] == pytest.approx((logits.argmax(1) == y).float().mean().item())

    assert set(ood) == OOD_KEYS and ood["ood_source"] == "synthetic" and ood["score"] == "max softmax probability"
    assert (ood["n_in"], ood["n_out"]) == (40, 20) and 0 <= ood["auroc"] <= 1 and 0 <= ood["fpr_at_95_tpr"] <= 1
    assert 0.1 <= ood["msp_out_mean"] <= 1 and 0.1 <= ood["msp_in_mean"] <= 1  # 10 classes: MSP is at least 1/10
    for name in ("corruptions.png", "ood_hist.png", "confusion_matrix.png"):
        assert_png(tmp_path / name)


def test_ood_folder_with_data_dir(trained, tmp_path, capsys):
    _, runs = trained
    holdout = make_dataset(tmp_path / "holdout", classes=["gatto", "cane"], per_class=3, seed=5)
    other = tmp_path / "other"
    (other / "a" / "b").mkdir(parents=True)
    for i, img in enumerate(synthetic_textures(5, 50, seed=7)):
        name = other / f"t{i}.png" if i < 3 else other / "a" / "b" / f"t{i}.JPG"
        cv2.imwrite(str(name), img)
    (other / "a" / "broken.jpg").write_bytes(b"not an image")
    (other / "notes.txt").write_text("ignored")
    ev, cor, ood = run_evaluate(runs / "best.pt", tmp_path / "o", "--data-dir", str(holdout), "--ood", str(other),
                                "--corruptions", "--severities", "5")
    assert "skipping unreadable image" in capsys.readouterr().out
    assert set(ood) == OOD_KEYS and ood["ood_source"] == str(other) and (ood["n_in"], ood["n_out"]) == (6, 5)
    assert cor["n"] == 6 and cor["clean_acc"] == ev["accuracy"] and cor["data"].startswith("folder")
    assert all(len(v) == 1 for v in cor["accuracy"].values())
    assert_png(tmp_path / "o" / "ood_hist.png")


def test_bad_robustness_options_fail_before_evaluating(trained, tmp_path):
    _, runs = trained
    for severities in ("0,9", "1,x", ""):
        with pytest.raises(DataError, match="integers from 1 to 5"):
            run_evaluate(runs / "best.pt", tmp_path, "--corruptions", "--severities", severities)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no .jpg/.jpeg/.png images"):
        run_evaluate(runs / "best.pt", tmp_path, "--ood", str(tmp_path / "empty"))
    assert not (tmp_path / "eval.json").exists()
    proc = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--ckpt", str(runs / "best.pt"),
                           "--ood", str(tmp_path / "missing")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: --ood folder {tmp_path / 'missing'} does not exist; "
                                                "pass a folder of .jpg/.jpeg/.png images or --ood synthetic"]
