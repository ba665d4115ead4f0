"""No loader ever unpickles: every one is handed a file whose unpickling would create a marker file."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import app
from common.cache import cache_key, cache_path, load_or_build_cache, pixel_cache_fields, save_cache_key
from common.models import WeightsError, load_pretrained
from common.runs import CKPT_FORMAT, CheckpointError
from common.split import load_or_create_split
from common.transfer import cached_features, feature_cache_fields
from common.transforms import IMAGENET_MEAN, IMAGENET_STD
from conftest import ROOT, make_dataset, tiny_args
from test_caches import SHA, Log, backbone, tiny_images, tiny_split


class Trap:
    """Unpickling this creates the marker file (open(marker, 'w')): the proof that a loader ran pickled code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def trap_checkpoint(path: Path, marker: Path) -> Path:
    """A file that looks like one of our checkpoints (and like a state dict) but carries a Trap."""
    torch.save({"format": CKPT_FORMAT, "arch": "scratch_cnn", "mode": "full", "classes": ["a", "b"],
                "model_state": {"features.0.weight": torch.zeros(1)}, "config": Trap(marker)}, path)
    return path


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "UNPICKLED"


def test_the_trap_works(tmp_path, marker):
    """The check below means something: unpickling the file does create the marker."""
    torch.load(trap_checkpoint(tmp_path / "trap.pt", marker), weights_only=False)
    assert marker.exists()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "raw-img")


def script_args(name: str, trap: Path, data: Path, tmp: Path) -> list[str]:
    if name in ("evaluate.py", "gradcam.py"):
        return ["--ckpt", str(trap), "--device", "cpu"]
    if name == "submit.py":
        return ["--ckpt", str(trap), "--test-dir", str(data / "cane"), "--no-upload", "--out-dir", str(tmp / "sub"),
                "--device", "cpu"]
    if name == "part1_scratch_cnn.py":
        return [*tiny_args(data, tmp / "runs1", "--epochs", "1", "--device", "cpu"), "--resume", str(trap)]
    return [*tiny_args(data, tmp / "runs2", "--epochs", "1", "--device", "cpu", "--mode", "fc"), "--weights", str(trap)]


SCRIPTS = ("evaluate.py", "gradcam.py", "submit.py", "part1_scratch_cnn.py", "part2_mobilenet.py")

# Runs each script's own __main__ block in turn in one child process, so torch is imported once, not five times.
DRIVER = """
import contextlib, io, json, runpy, sys, traceback
sys.path.insert(0, sys.argv[1])
results = {}
for script, argv in json.loads(sys.argv[2]):
    err, code = io.StringIO(), 0
    sys.argv = [script, *argv]
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) or e.code is None else 1
            if code == 1 and not isinstance(e.code, int):
                print(e.code, file=err)
        except BaseException:
            code = 2
            traceback.print_exc()
    results[script] = {"rc": code or 0, "stderr": err.getvalue()}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def script_runs(data, tmp_path_factory) -> dict:
    """{script: (trap file, marker, exit status, stderr)} for every script handed its own trapped checkpoint."""
    tmp = tmp_path_factory.mktemp("scripts")
    jobs, traps = [], {}
    for script in SCRIPTS:
        marker = tmp / f"UNPICKLED-{script}"
        trap = trap_checkpoint(tmp / f"trap-{script}.pt", marker)
        traps[script] = (trap, marker)
        jobs.append((str(ROOT / script), script_args(script, trap, data, tmp)))
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(ROOT), json.dumps(jobs)], capture_output=True,
                          text=True, timeout=600, cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    return {s: (*traps[s], results[str(ROOT / s)]["rc"], results[str(ROOT / s)]["stderr"]) for s in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_refuse_a_trapped_checkpoint(script_runs, script):
    trap, marker, rc, stderr = script_runs[script]
    assert not marker.exists(), f"{script} unpickled the file"
    assert rc != 0 and "Traceback" not in stderr, stderr
    error = stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and str(trap) in error, stderr
    assert "weights_only=False" not in stderr and "weights_only` set to `False" not in stderr


def test_app_refuses_a_trapped_checkpoint(tmp_path, marker):
    with pytest.raises(CheckpointError, match="cannot be read"):
        app.load_bundle(trap_checkpoint(tmp_path / "trap.pt", marker), torch.device("cpu"))
    assert not marker.exists()


def test_weights_file_of_objects_or_random_bytes_gets_one_safe_line(tmp_path, marker):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(4096))
    for path in (trap_checkpoint(tmp_path / "trap.pth", marker), junk):
        with pytest.raises(WeightsError) as e:
            load_pretrained(torch.nn.Linear(1, 1), "mobilenet_v2", str(path))
        message = str(e.value)
        assert str(path) in message and "state dict" in message and "torchvision's mobilenet_v2" in message
        assert "weights_only" not in message and "\n" not in message
    assert not marker.exists()


def test_feature_cache_refuses_a_trapped_file(tmp_path, marker):
    split, images = tiny_split(), tiny_images(40)
    fields = feature_cache_fields("resnet18", SHA, split, 40, 32, IMAGENET_MEAN, IMAGENET_STD)
    path = tmp_path / f"features-resnet18-{cache_key(fields)}.pt"
    save_cache_key(path, fields)
    torch.save({"features": torch.zeros(6, 512), "x": Trap(marker)}, path)
    log = Log()
    feats, seconds = cached_features(backbone("resnet18"), "resnet18", {"sha256": SHA}, images, split,
                                     torch.device("cpu"), tmp_path, 32, IMAGENET_MEAN, IMAGENET_STD, log=log)
    assert not marker.exists()
    assert seconds > 0 and feats.shape == (6, 512)  # recomputed, not read
    assert str(path) in log[0] and "recomputing it" in log[0] and "weights_only" not in log[0]


def test_pixel_cache_refuses_a_pickled_object_array(tmp_path, marker):
    data = make_dataset(tmp_path / "raw-img", classes=["a", "b"], per_class=5)
    split, pixels = load_or_create_split(data, tmp_path / "split.json", per_class=5, sizes=(3, 1, 1), img_size=32,
                                         log=lambda *_: None)
    path = cache_path(tmp_path / "cache", split, 32)
    save_cache_key(path, pixel_cache_fields(split, 32))
    np.save(path, np.array([Trap(marker)] * 10, dtype=object), allow_pickle=True)
    lines = []
    images = load_or_build_cache(data, split, tmp_path / "cache", 32, log=lines.append)
    assert not marker.exists()
    np.testing.assert_array_equal(images, pixels)
    assert str(path) in lines[0] and "rebuilding it" in lines[0]
