"""study.py: plans, the runner (skip, resume, failures) and the report of a tiny synthetic study."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import part1_scratch_cnn as part1
import study
from common.data import DataError
from common.plans import GROUPS, PLANS, SCRIPTS
from conftest import ROOT, Killed, kill_after

TINY = ["--per-class", "20", "--split", "12,4,4", "--img-size", "72", "--crop-size", "64", "--workers", "2",
        "--epochs", "2", "--batch-size", "16", "--jitter", "0", "--warmup-epochs", "0"]


def write_plan(tmp_path: Path, runs: list[dict]) -> Path:
    plan = {"name": "tiny", "description": "a tiny synthetic study", "robustness": {"severities": "1,3", "ood_count": 20},
            "groups": {"scratch_grid": GROUPS["scratch_grid"], "strategies": GROUPS["strategies"]}, "runs": runs}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    return path


def scratch_run(lr: float) -> dict:
    return {"name": f"scratch-lr{lr:g}", "script": "part1_scratch_cnn.py", "args": [*TINY, "--lr", str(lr)],
            "groups": ["scratch_grid"], "vars": {"model": "scratch_cnn", "lr": lr, "batch_size": 16}}


def run_study(plan: Path, dataset: Path, out: Path, *extra: str) -> int:
    argv = ["--plan", str(plan), "--data-dir", str(dataset), "--output-dir", str(out), "--device", "cpu", *extra]
    return study.main(study.get_args_parser().parse_args(argv))


def run_folders(out: Path) -> set[str]:
    return {p.name for p in out.iterdir() if p.is_dir() and "-tiny-" in p.name}


@pytest.mark.parametrize("name", list(PLANS))
def test_builtin_plans_are_consistent_and_parse(name):
    plan = PLANS[name]()
    names = [r["name"] for r in plan["runs"]]
    assert len(names) == len(set(names))
    keys = [(r["script"], tuple(r["args"])) for r in plan["runs"]]
    assert len(keys) == len(set(keys))  # a shared baseline is trained once
    assert set(plan["groups"]) == {g for r in plan["runs"] for g in r["groups"]} == set(GROUPS)
    for r in plan["runs"]:
        assert (ROOT / r["script"]).is_file() and r["script"] == SCRIPTS[r["vars"]["model"]]
        for g in r["groups"]:
            assert set(GROUPS[g]["vars"]) <= set(r["vars"]), (r["name"], g)
        module = __import__(r["script"][:-3])
        module.get_args_parser().parse_args(r["args"])  # every argument exists and parses
    baseline = [r for r in plan["runs"] if r["vars"].get("option") == "baseline"]
    assert len(baseline) == 1 and {"scratch_grid", "regularization", "fractions"} <= set(baseline[0]["groups"])
    imbalance = sorted((r["vars"]["ratio"], r["vars"]["remedy"]) for r in plan["runs"] if "imbalance" in r["groups"])
    assert imbalance == [(1, "none"), (10, "none"), (10, "oversample"), (10, "weights")]


def test_study_runs_evaluates_reports_and_then_skips(dataset, tmp_path, capsys):
    out = tmp_path / "runs"
    plan = write_plan(tmp_path, [scratch_run(3e-3), scratch_run(1e-3)])
    assert run_study(plan, dataset, out) == 0
    folders = run_folders(out)
    assert len(folders) == 2 and all(name.endswith(("tiny-scratch-lr0.003", "tiny-scratch-lr0.001")) for name in folders)
    data = json.loads((out / "report" / "study.json").read_text())
    assert [r["status"] for r in data["runs"]] == ["done", "done"]
    assert all(r["eval"]["n"] == 40 and r["metrics"]["epochs_run"] == 2 for r in data["runs"])
    best = max(data["runs"], key=lambda r: r["metrics"]["best_val_acc"])
    other = next(r for r in data["runs"] if r is not best)
    assert best["corruptions"]["severities"] == [1, 3] and best["ood"]["n_out"] == 20  # the best scratch run only
    assert other["corruptions"] is None and "gradcam_grid" in best["files"] and "gradcam_grid" not in other["files"]
    assert "--tag tiny-scratch-lr0.003" in data["runs"][0]["command"]
    assert (out / "report" / "index.html").is_file() and (out / "report" / "report.md").is_file()
    assert (out / "report" / "logs" / "scratch-lr0.003.log").read_text().count("epoch") >= 2

    mtimes = {p: p.stat().st_mtime for p in out.glob("*-tiny-*/*.json")}
    capsys.readouterr()
    assert run_study(plan, dataset, out) == 0
    assert run_folders(out) == folders  # nothing retrained
    assert {p: p.stat().st_mtime for p in out.glob("*-tiny-*/*.json")} == mtimes  # nor re-evaluated
    assert capsys.readouterr().out.count(": done (") == 2


def test_killed_run_is_resumed_in_its_own_folder(dataset, tmp_path, capsys, monkeypatch):
    out = tmp_path / "runs"
    plan_path = write_plan(tmp_path, [scratch_run(3e-3)])
    args = study.get_args_parser().parse_args(["--data-dir", str(dataset), "--output-dir", str(out), "--device", "cpu"])
    plan = study.load_plan(str(plan_path))
    cmd = study.train_command(plan["runs"][0], plan, args)
    assert Path(cmd[1]).name == "part1_scratch_cnn.py" and cmd[cmd.index("--epochs") + 1] == "2"
    kill_after(monkeypatch, "last.pt", 0)  # killed after epoch 1 of 2: last.pt, no metrics.json
    with pytest.raises(Killed):
        part1.main(part1.get_args_parser().parse_args(cmd[2:]))
    monkeypatch.undo()
    folder = out / run_folders(out).pop()
    assert not (folder / "metrics.json").exists()
    assert run_study(plan_path, dataset, out, "--list") == 0
    assert "[missing] scratch-lr0.003" in capsys.readouterr().out
    assert run_study(plan_path, dataset, out) == 0
    assert run_folders(out) == {folder.name}
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == 1 and [h["epoch"] for h in metrics["history"]] == [1, 2]


def test_failed_run_is_reported_and_the_rest_goes_on(dataset, tmp_path):
    out = tmp_path / "runs"
    broken = {"name": "mobilenet-fc", "script": "part2_mobilenet.py", "groups": ["strategies"],
              "args": [*TINY, "--mode", "fc", "--weights", str(tmp_path / "missing.pth")],
              "vars": {"model": "mobilenet_v2", "strategy": "fc"}}
    plan = write_plan(tmp_path, [broken, scratch_run(3e-3)])
    assert run_study(plan, dataset, out) == 1
    runs = json.loads((out / "report" / "study.json").read_text())["runs"]
    assert runs[0]["status"] == "failed" and "missing.pth: no such file" in runs[0]["error"]
    assert runs[1]["status"] == "done"
    assert "missing.pth: no such file" in (out / "report" / "index.html").read_text()


def test_bad_plans_and_names_are_clear_errors(dataset, tmp_path):
    with pytest.raises(DataError, match="neither quick nor full"):
        study.load_plan("nope")
    bad = tmp_path / "bad.json"
    bad.write_text('{"runs": [{"name": "a"}]}')
    with pytest.raises(DataError, match="not a valid plan"):
        study.load_plan(str(bad))
    twice = write_plan(tmp_path, [scratch_run(1e-3), scratch_run(1e-3)])
    with pytest.raises(DataError, match="run name twice"):
        study.load_plan(str(twice))
    with pytest.raises(DataError, match="does not have: nope"):
        run_study(write_plan(tmp_path, [scratch_run(1e-3)]), dataset, tmp_path / "runs", "--only", "nope")
