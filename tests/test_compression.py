"""compress.py and common/compression.py: int8 quantization, global pruning, the compressed checkpoints and the
scripts that take them (synthetic data, CPU)."""
from __future__ import annotations

import json
from functools import partial

import cv2
import numpy as np
import pytest
import torch

import app
import compress
import evaluate
import gradcam
import part1_scratch_cnn as part1
import submit
from common.architectures import ARCHS
from common.compression import CompressionError, prunable, prune_global, quantize_int8, zero_share
from common.compression_study import Finetune, calibration_batches, compressed, pruned_checkpoint
from common.inference import Predictor, load_test_split, model_device
from common.models import WeightsError, build_model, model_from_checkpoint
from common.runs import load_checkpoint, save_checkpoint, slim_checkpoint
from common.transforms import eval_transform
from conftest import ANIMALS, class_image, make_dataset, refusal, tiny_args

CPU = torch.device("cpu")


def QUIET(*_) -> None:
    pass


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread while these tests run: on shared cores, two threads wait on each other (several times
    slower here); the thread count changes no result."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    """A tiny scratch CNN on synthetic data, compressed by compress.py (int8 and pruning at 0.5)."""
    root = tmp_path_factory.mktemp("compress")
    data = make_dataset(root / "raw-img")
    out = root / "runs"
    part1.main(part1.get_args_parser().parse_args(
        tiny_args(data, out, "--epochs", "2", "--batch-size", "16", "--lr", "3e-3", "--jitter", "0")))
    ckpt_path = next(out.glob("*/best.pt"))
    compress.main(compress.get_args_parser().parse_args(
        ["--ckpt", str(ckpt_path), "--sparsities", "0.5", "--batch-size", "16", "--calibration-images", "64",
         "--repeats", "1", "--device", "cpu"]))
    return ckpt_path, ckpt_path.parent / "compressed"


def test_int8_follows_the_float_model(trained):
    path, _ = trained
    ckpt = load_checkpoint(path)
    test = load_test_split(ckpt, log=QUIET)
    transform = partial(eval_transform, crop=ckpt["crop_size"], mean=ckpt["mean"], std=ckpt["std"])
    model = model_from_checkpoint(ckpt)
    qmodel, seen = quantize_int8(model, calibration_batches(test, transform, 48), torch.zeros(1, 3, 64, 64))
    assert seen == 48
    x = transform(torch.from_numpy(np.asarray(test.images[test.indices])).permute(0, 3, 1, 2))
    with torch.no_grad():
        ref, out = model(x), qmodel(x)
    assert (ref.argmax(1) == out.argmax(1)).float().mean() >= 0.9
    assert (out - ref).abs().max() < 0.1 * (ref.max() - ref.min())
    assert any(t.is_quantized for t in qmodel.state_dict().values() if isinstance(t, torch.Tensor))

    # Saved and read back with weights_only, the rebuilt model computes exactly the same logits; the file is small.
    int8 = compressed(ckpt, qmodel, {"kind": "int8", "backend": "x86", "scheme": "fx-static", "source": str(path)})
    save_checkpoint(int8, path.parent / "q.pt")
    torch.load(path.parent / "q.pt", map_location="cpu", weights_only=True)
    with torch.no_grad():
        assert torch.equal(model_from_checkpoint(load_checkpoint(path.parent / "q.pt"))(x), out)
    save_checkpoint(slim_checkpoint(ckpt), path.parent / "float.pt")
    assert (path.parent / "q.pt").stat().st_size < 0.4 * (path.parent / "float.pt").stat().st_size


def test_pruning_reaches_the_sparsity_and_the_fine_tune_keeps_the_zeros(trained):
    path, _ = trained
    ckpt = load_checkpoint(path)
    test = load_test_split(ckpt, log=QUIET)
    masks = {name: m.weight_mask.clone() for name, m in prune_global(model_from_checkpoint(ckpt), 0.6).named_modules()
             if hasattr(m, "weight_mask")}
    total = sum(int(m.numel()) for m in masks.values())
    assert len(masks) == len(prunable(model_from_checkpoint(ckpt))) == 6  # five convs and the linear head
    assert sum(int((m == 0).sum()) for m in masks.values()) == round(0.6 * total)  # global: over all layers

    pruned = pruned_checkpoint(ckpt, test, str(path), 0.6, Finetune(epochs=1, batch_size=16), CPU, log=QUIET)
    state = pruned["model_state"]
    assert not any(k.endswith(("_orig", "_mask")) for k in state)  # plain weights again
    assert zero_share(state) == round(0.6 * total) / total
    for name, mask in masks.items():
        weight, before = state[f"{name}.weight"], ckpt["model_state"][f"{name}.weight"]
        assert torch.equal(weight == 0, mask == 0), name  # the pruned weights stay zero, the rest are not
        assert not torch.equal(weight[mask == 1], before[mask == 1]), name  # and the fine-tune moved them
    entry = pruned["compression"]
    assert entry["kind"] == "pruned" and entry["finetune_images"] == len(test.split.indices["train"])
    assert len(entry["finetune"]) == 1


def test_compress_writes_the_checkpoints_and_the_table(trained):
    path, out = trained
    result = json.loads((out / "compression.json").read_text())
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == ["original (float)", "int8", "pruned 0.5"]
    assert set(result["files"].values()) == {str(out / "int8.pt"), str(out / "pruned-50.pt")}
    float_row, int8, pruned = rows.values()
    assert int8["mib"] < 0.4 * float_row["mib"] and int8["kind"] == "int8"
    assert abs(pruned["mib"] - float_row["mib"]) < 0.02 * float_row["mib"]  # stored dense: no smaller
    assert pruned["gzip_mib"] < 0.85 * float_row["gzip_mib"] and pruned["nonzero"] == pytest.approx(0.5, abs=1e-4)
    for row in rows.values():
        assert row["img_s_b1"] > 0 and row["img_s_b32"] > 0 and 0 <= row["test_acc"] <= 1 and row["test_n"] == 40
        assert row["acc_diff"] == pytest.approx(row["test_acc"] - float_row["test_acc"])
    assert float_row["test_acc"] == pytest.approx(json.loads((path.parent / "metrics.json").read_text())["test_acc"])
    text = (out / "compression.md").read_text()
    assert "| int8 |" in text and "| pruned 0.5 |" in text and "gzip" in text and "thread" in text
    assert load_checkpoint(out / "int8.pt")["compression"]["calibration_images"] == 64


def test_evaluate_and_submit_take_both_compressed_checkpoints(trained, tmp_path):
    _, out = trained
    rows = {r["name"]: r for r in json.loads((out / "compression.json").read_text())["rows"]}
    test_dir = tmp_path / "cnn_test"
    test_dir.mkdir()
    rng = np.random.default_rng(9)
    for n in range(1, 9):
        cv2.imwrite(str(test_dir / f"{n}.jpg"), class_image(n % 10, 10, rng))
    for name, file in (("int8", "int8.pt"), ("pruned 0.5", "pruned-50.pt")):
        result = evaluate.evaluate_checkpoint(evaluate.get_args_parser().parse_args(
            ["--ckpt", str(out / file), "--device", "cpu", "--out-dir", str(tmp_path / file)]))
        assert result["accuracy"] == pytest.approx(rows[name]["test_acc"]) and result["n"] == 40
    submit.main(submit.get_args_parser().parse_args(
        ["--ckpt", str(out / "int8.pt"), str(out / "pruned-50.pt"), "--test-dir", str(test_dir),
         "--out-dir", str(tmp_path / "csv"), "--no-upload"]))
    csvs = sorted(p.name for p in (tmp_path / "csv").glob("*.csv"))
    assert len(csvs) == 2 and csvs[0].endswith("-int8.csv") and csvs[1].endswith("-pruned-50.csv")
    for csv in (tmp_path / "csv").glob("*.csv"):
        lines = csv.read_text().splitlines()
        assert lines[0] == "ID,Label" and len(lines) == 9 and all(line.split(",")[1] in ANIMALS for line in lines[1:])


def test_int8_stays_on_the_cpu_and_gradcam_and_app_refuse_it(trained, capsys, tmp_path):
    path, out = trained
    int8, float_ckpt = load_checkpoint(out / "int8.pt"), load_checkpoint(path)
    notes = []
    assert model_device(int8, "cuda", notes.append) == CPU and "CPU" in notes[0]
    assert model_device(float_ckpt, "cuda", notes.append) == torch.device("cuda") and len(notes) == 1
    assert model_device(int8, "cpu", notes.append) == CPU and len(notes) == 1
    assert Predictor(int8, "cpu").device == CPU
    err = refusal(gradcam, ["--ckpt", str(out / "int8.pt"), "--out-dir", str(tmp_path / "g")], capsys)
    line, = err.strip().splitlines()
    assert line.startswith("error: ") and "int8" in line and "gradients" in line and str(path) in line
    assert not (tmp_path / "g").exists()
    with pytest.raises(CompressionError, match="float checkpoint"):
        app.load_bundle(out / "int8.pt", CPU)
    assert app.load_bundle(out / "pruned-50.pt", CPU).predictor.ckpt["compression"]["kind"] == "pruned"


def test_an_edited_compression_entry_is_one_weights_error(trained):
    _, out = trained
    int8, pruned = load_checkpoint(out / "int8.pt"), load_checkpoint(out / "pruned-50.pt")
    cases = [({**int8, "compression": {**int8["compression"], "kind": "int4"}}, "not one this version writes"),
             ({**int8, "compression": {**int8["compression"], "backend": "qnnpack"}}, "not one this version writes"),
             ({**pruned, "compression": int8["compression"]}, "do not fit scratch_cnn/full int8"),
             ({**int8, "compression": pruned["compression"]}, "do not fit scratch_cnn/full pruned"),
             ({**pruned, "compression": {**pruned["compression"], "sparsity": 0.9}}, "records sparsity 0.9")]
    for ckpt, message in cases:
        with pytest.raises(WeightsError, match=message) as e:
            model_from_checkpoint(ckpt)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("argv, words", [
    (["--sparsities", "0.5,1.5"], ["--sparsities", "(0, 1)"]),
    (["--sparsities", "0"], ["--sparsities", "(0, 1)"]),
    (["--methods", "int8,distill"], ["--methods", "unknown method distill", "int8,prune"]),
])
def test_bad_options_are_one_line(trained, capsys, argv, words):
    path, _ = trained
    err = refusal(compress, ["--ckpt", str(path), *argv], capsys)
    line, = err.strip().splitlines()
    assert line.startswith("error: ") and all(w in line for w in words), line


def test_missing_or_compressed_checkpoints_are_refused(trained, capsys, tmp_path):
    _, out = trained
    line, = refusal(compress, ["--ckpt", str(tmp_path / "none.pt")], capsys).strip().splitlines()
    assert "does not exist" in line
    line, = refusal(compress, ["--ckpt", str(out / "int8.pt"), "--out-dir", str(tmp_path / "o")],
                    capsys).strip().splitlines()
    assert "already compressed" in line and not (tmp_path / "o").exists()


@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_architecture_quantizes(arch):
    model, _ = build_model(arch, 10)
    x = torch.randn(2, 3, ARCHS[arch].min_crop, ARCHS[arch].min_crop)  # the smallest input each takes
    qmodel, _ = quantize_int8(model.eval(), [x], x[:1], arch)
    with torch.no_grad():
        assert qmodel(x).shape == (2, 10)


@pytest.mark.cuda
def test_on_cuda_int8_runs_on_the_cpu_and_pruning_fine_tunes_on_the_gpu(trained):
    path, out = trained
    ckpt, int8 = load_checkpoint(path), load_checkpoint(out / "int8.pt")
    test = load_test_split(ckpt, log=QUIET)
    predictor = Predictor(int8, "cuda", log=QUIET)
    assert predictor.device == CPU
    logits, _, _ = predictor.predict(test.images, test.labels, test.indices)
    cpu_logits, _, _ = Predictor(int8, "cpu").predict(test.images, test.labels, test.indices)
    assert torch.equal(logits, cpu_logits)
    cuda = torch.device("cuda")
    pruned = pruned_checkpoint(ckpt, test, str(path), 0.5, Finetune(epochs=1, batch_size=16), cuda, log=QUIET)
    assert all(t.device == CPU for t in pruned["model_state"].values())
    assert abs(zero_share(pruned["model_state"]) - 0.5) < 1e-3
    assert Predictor(pruned, "cuda").device == cuda
