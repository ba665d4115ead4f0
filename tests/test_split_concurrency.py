"""Two real processes drawing the split in one runs/ folder at once: one draws it, the other reuses it or stops."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, make_dataset

# A process that says it is ready, waits for the go file, then prepares the data as a training script does. Drawing
# the split is slowed down by a second, so that both processes are sure to look for split.json before either has
# saved it.
WORKER = """
import json, os, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
import argparse
import common.config as config
import common.data as data
import common.split
from common.cli import DataError

draw = common.split.create_split
common.split.create_split = lambda *a, **k: (time.sleep(1.0), draw(*a, **k))[1]
parser = argparse.ArgumentParser()
config.add_data_args(parser)
args = parser.parse_args(sys.argv[1:])
(Path(args.output_dir) / f"ready-{{os.getpid()}}").touch()
go = Path(args.output_dir) / "go"
while not go.exists():
    time.sleep(0.01)
messages = []
try:
    split, _ = data.prepare_data(config.DataConfig.from_args(args), log=messages.append)
except DataError as e:
    sys.exit(f"error: {{e}}")
print(json.dumps({{"fingerprint": split.fingerprint, "messages": messages}}))
"""


def start(data: Path, out: Path, *extra: str) -> subprocess.Popen:
    args = ["--data-dir", str(data), "--output-dir", str(out), "--per-class", "20", "--split", "12,4,4",
            "--img-size", "32", "--workers", "1", *extra]
    return subprocess.Popen([sys.executable, "-c", WORKER.format(root=str(ROOT)), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def race(data: Path, out: Path, *options: list[str]) -> list[tuple[int, str, str]]:
    """Start one process per option list, let them go at once, and return (exit code, stdout, stderr) of each."""
    out.mkdir(parents=True)
    procs = [start(data, out, *extra) for extra in options]
    deadline = time.monotonic() + 120
    while len(list(out.glob("ready-*"))) < len(procs) and time.monotonic() < deadline:
        time.sleep(0.05)  # until all are past their imports (torch) and wait for the go file
    (out / "go").touch()
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        results.append((p.returncode, stdout, stderr))
    return results


def test_concurrent_runs_share_one_split_or_stop_clearly(tmp_path):
    # The case, two trainings with different --seed started together in one runs/ folder, and a
    # third with another --split-seed: one process draws the split, the others wait for it; those with the
    # same split options reuse it, the other stops with a one-line error. Nothing is overwritten.
    data = make_dataset(tmp_path / "raw", classes=["a", "b", "c"], per_class=20)
    out = tmp_path / "runs"
    options = [["--seed", "0"], ["--seed", "1"], ["--split-seed", "1"]]
    split_seeds = [0, 0, 1]
    results = race(data, out, *options)
    saved = json.loads((out / "split.json").read_text())
    drew = [rc == 0 and any(m.startswith("saved split to") for m in json.loads(stdout)["messages"])
            for rc, stdout, _ in results]
    assert drew.count(True) == 1, [err for _, _, err in results]
    assert saved["split_seed"] == split_seeds[drew.index(True)]
    for (rc, stdout, stderr), seed, made_it in zip(results, split_seeds, drew):
        if seed == saved["split_seed"]:
            assert rc == 0, stderr
            report = json.loads(stdout)
            assert report["fingerprint"] == saved["fingerprint"]
            assert made_it or any(m.startswith("waiting for another process") for m in report["messages"])
        else:
            lines = stderr.strip().splitlines()
            assert rc == 1 and len(lines) == 1 and lines[0].startswith("error: ") and (
                f"split.json was made with --split-seed {saved['split_seed']}, not --split-seed {seed}" in lines[0])
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []
