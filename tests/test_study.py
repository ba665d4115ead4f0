"""study.py: plans, the runner (skip, resume, failures) and the report of a tiny synthetic study."""
from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import part1_scratch_cnn as part1
import study
from common.architectures import ARCHS
from common.cli import DataError, UserError
from common.plans import PLANS, make_plan
from common.sections import GROUPS
from conftest import ROOT, Killed, kill_after, make_dataset

TINY = ["--per-class", "20", "--split", "12,4,4", "--img-size", "72", "--crop-size", "64", "--workers", "2",
        "--epochs", "2", "--batch-size", "16", "--jitter", "0", "--warmup-epochs", "0"]


def write_plan(tmp_path: Path, runs: list[dict]) -> Path:
    plan = {"name": "tiny", "description": "a tiny synthetic study",
            "robustness": {"severities": "1,3", "ood_count": 20},
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


@pytest.mark.parametrize("name, options", [("quick", {}), ("quick", {"resnet18": False}), ("full", {})])
def test_builtin_plans_are_consistent_and_parse(name, options):
    plan = PLANS[name](**options)
    names = [r["name"] for r in plan["runs"]]
    assert len(names) == len(set(names))
    keys = [(r["script"], tuple(r["args"])) for r in plan["runs"]]
    assert len(keys) == len(set(keys))  # a shared baseline is trained once
    assert set(plan["groups"]) == {g for r in plan["runs"] for g in r["groups"]} == set(GROUPS)
    for r in plan["runs"]:
        assert (ROOT / r["script"]).is_file() and r["script"] == ARCHS[r["vars"]["model"]].script
        for g in r["groups"]:
            assert set(GROUPS[g]["vars"]) <= set(r["vars"]), (r["name"], g)
        module = __import__(r["script"][:-3])
        module.get_args_parser().parse_args(r["args"])  # every argument exists and parses
    baseline = [r for r in plan["runs"] if r["vars"].get("option") == "baseline"]
    assert len({r.get("repeat", r["name"]) for r in baseline}) == 1  # one configuration, maybe over seeds
    assert {"scratch_grid", "regularization", "fractions"} <= set(baseline[0]["groups"])
    imbalance = sorted((r["vars"]["ratio"], r["vars"]["remedy"], r["vars"].get("seed", 0))
                       for r in plan["runs"] if "imbalance" in r["groups"])
    assert imbalance == [(1, "none", 0), (1, "none", 1), (1, "none", 2), (10, "none", 0), (10, "oversample", 0),
                         (10, "weights", 0)]  # the transfer baseline is repeated over three seeds
    depth = [(r["vars"]["strategy"], r["vars"]["blocks"], "strategies" in r["groups"]) for r in plan["runs"]
             if "depth" in r["groups"] and r["vars"]["model"] == "mobilenet_v2"]
    # L = 1 up to (in the full plan) every block, beside the strategies' own gradual run, trained once
    assert sorted(depth, key=str) == sorted([("gradual", None, True)] + [
        ("top", b, False) for b in range(1, 4 if name == "quick" else 5)], key=str)
    peft = {r["vars"]["strategy"]: r for r in plan["runs"] if "peft" in r["groups"] and r["vars"]["model"] ==
            "mobilenet_v2"}
    # LoRA and each masked selection, beside the strategies' own fc, bn and full runs (trained once)
    assert set(peft) == {"fc", "bn", "full", "lora", "masked-grad", "masked-random", "masked-last"}
    assert all("strategies" in peft[s]["groups"] for s in ("fc", "bn", "full"))
    after = lambda r, word: r["args"][r["args"].index(word) + 1:]  # noqa: E731  (the arguments after the mode's)
    assert after(peft["masked-random"], "random") == after(peft["lora"], "lora") == after(peft["full"], "full")
    semi = {(r["vars"]["labels"], r["vars"]["labelled_fraction"]): r for r in plan["runs"] if "semi" in r["groups"]}
    # pseudo-labels and the labelled images alone at 1%, 10% and 50% of the labels, on the same steps; all labels
    assert set(semi) == {("all labels", 1.0)} | {(k, f) for k in ("labelled only", "pseudo-labels")
                                                  for f in (0.01, 0.1, 0.5)}
    assert after(semi[("labelled only", 0.1)], "0.1") == ["--unlabelled-weight", "0"]
    assert after(semi[("pseudo-labels", 0.1)], "0.1") == [] and "--labelled-fraction" not in semi[("all labels", 1.0)]
    resnet = {r["vars"]["strategy"]: r for r in plan["runs"]
              if r["vars"]["model"] == "resnet18" and "strategies" in r["groups"]}
    if name == "quick":
        assert set(resnet) == (set() if options else {"fc", "blocks34", "full"})
        mobilenet = next(r for r in plan["runs"] if r["name"] == "mobilenet_v2-full")
        for r in resnet.values():  # sized like the MobileNetV2 strategies: same crops and epochs
            assert r["args"][-8:] == mobilenet["args"][-8:]
        assert not resnet or "--cache-features" in resnet["fc"]["args"]


@pytest.mark.parametrize("resnet18", [True, False])
def test_cpu_plan_is_every_variant_finished_at_224_px_converged_with_two_lr_sweeps(resnet18):
    plan = PLANS["cpu"](resnet18=resnet18)
    runs = {r["name"]: r for r in plan["runs"]}
    assert set(plan["groups"]) == {"scratch_grid", "strategies", "transfer_lr"}
    assert len(runs) == len({(r["script"], tuple(r["args"])) for r in plan["runs"]})
    for r in plan["runs"]:
        args = __import__(r["script"][:-3]).get_args_parser().parse_args(r["args"])
        assert (args.img_size, args.crop_size) == (256, 224)  # the assignment's resolution
        if r["script"] == "part1_scratch_cnn.py":
            assert args.epochs >= 30  # part 1 of the assignment trains at least 30 epochs
            assert (args.low_res, args.low_res_epochs) == (160, 15)  # and its last 15 at 224 px
        else:
            assert args.low_res_epochs == 0
    assert "mobilenet_v2-fc-lr0.001" not in runs and set(runs["mobilenet_v2-fc"]["groups"]) == {
        "strategies", "transfer_lr"}  # the sweep's lr 1e-3 point is the fc strategy's run, trained once
    assert sorted(r["vars"]["lr"] for r in plan["runs"] if "scratch_grid" in r["groups"]) == [3e-4, 1e-3, 3e-3]
    assert sorted(r["vars"]["lr"] for r in plan["runs"] if "transfer_lr" in r["groups"]) == [3e-4, 1e-3, 3e-3]
    strategies = {(r["vars"]["model"], r["vars"]["strategy"]) for r in plan["runs"] if "strategies" in r["groups"]}
    assert strategies == {("mobilenet_v2", "fc"), ("mobilenet_v2", "full")} | (
        {("resnet18", "fc"), ("resnet18", "blocks34"), ("resnet18", "full")} if resnet18 else set())


def test_plan_auto_is_full_with_cuda_and_cpu_without(monkeypatch):
    for cuda, device, want in ((True, "auto", "full"), (True, "cpu", "cpu"), (False, "auto", "cpu")):
        monkeypatch.setattr(study.torch.cuda, "is_available", lambda cuda=cuda: cuda)
        assert study.plan_name("auto", device) == want
    assert study.plan_name("quick", "auto") == "quick" and study.get_args_parser().parse_args([]).plan == "auto"


def test_plan_seeds_repeat_the_merged_baseline_and_unknown_keys_are_errors():
    plan = PLANS["full"]()
    scratch = [r for r in plan["runs"] if r.get("repeat") == "scratch-lr0.001-bs32"]
    assert [r["vars"]["seed"] for r in scratch] == [0, 1, 2]  # the grid point that is also the baseline, repeated
    assert all({"scratch_grid", "regularization", "fractions"} <= set(r["groups"]) for r in scratch)
    with pytest.raises(DataError, match="'scratch' and 'transfer'"):
        make_plan("x", "y", data=[], scratch=[], scratch_lrs=[1e-3], batch_sizes=[32], base_lr=1e-3, base_bs=32,
                  strategies={}, strategy_args=[], lr_model="mobilenet_v2", lr_strategy="fc", lr_args=[],
                  transfer_lrs=[], base_transfer_lr=1e-3, fractions=[1.0], imbalance_ratio=10, severities="1",
                  ood_count=1, seeds={"transfr": [0, 1]})


# ---------- one study, run as a user runs it, shared by the tests below ----------

@pytest.fixture(scope="module")
def study_run(tmp_path_factory) -> SimpleNamespace:
    """study.py started by path from a work folder, with relative paths: a run that fails (missing weights), a
    scratch run killed after its first epoch, and a scratch run repeated over two seeds. Its study.json and page are
    read before any test reruns the study in the same folder."""
    work = tmp_path_factory.mktemp("study") / "work"
    make_dataset(work / "raw-img")
    broken = {"name": "mobilenet-fc", "script": "part2_mobilenet.py", "groups": ["strategies"],
              "args": [*TINY, "--mode", "fc", "--weights", "missing.pth"],
              "vars": {"model": "mobilenet_v2", "strategy": "fc"}}
    write_plan(work, [broken, scratch_run(3e-3), {**scratch_run(1e-3), "seeds": [0, 1]}])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        plan = study.load_plan("plan.json")
        args = study.get_args_parser().parse_args(["--data-dir", "raw-img", "--output-dir", "out", "--device", "cpu"])
        killed_cmd = study.train_command(plan["runs"][1], plan, args)
        with pytest.MonkeyPatch.context() as dying, pytest.raises(Killed):
            kill_after(dying, "last.pt", 0)  # killed after epoch 1 of 2: last.pt, no metrics.json
            part1.main(part1.get_args_parser().parse_args(killed_cmd[2:]))
        killed = run_folders(Path("out")).pop()
        assert not (Path("out") / killed / "metrics.json").exists()
        with contextlib.redirect_stdout(io.StringIO()) as listing:
            assert run_study(Path("plan.json"), Path("raw-img"), Path("out"), "--list") == 0
    proc = subprocess.run([sys.executable, str(ROOT / "study.py"), "--plan", "plan.json", "--data-dir", "raw-img",
                           "--output-dir", "out", "--device", "cpu"], cwd=work, capture_output=True, text=True,
                          timeout=600)
    out = work / "out"
    assert (out / "report" / "study.json").is_file(), proc.stdout[-2000:] + proc.stderr[-2000:]
    return SimpleNamespace(work=work, out=out, proc=proc, killed=killed, killed_cmd=killed_cmd,
                           listing=listing.getvalue(), data=json.loads((out / "report" / "study.json").read_text()),
                           page=(out / "report" / "index.html").read_text())


def test_study_runs_from_another_folder(study_run):
    """Its scripts are found from any folder; relative paths are the user's; a failed run makes the exit code 1."""
    assert study_run.proc.returncode == 1, study_run.proc.stdout[-2000:] + study_run.proc.stderr[-2000:]
    runs = study_run.data["runs"]
    folders = [study_run.work / r["run_dir"] for r in runs[1:]]  # recorded relative to the user's folder, as given
    assert all(folder.parent == study_run.out and (folder / "best.pt").is_file() for folder in folders)
    assert runs[1]["command"].startswith(f"python {ROOT / 'part1_scratch_cnn.py'} ")
    assert (study_run.out / "report" / "index.html").is_file() and not (ROOT / "out").exists()


def test_failed_run_is_reported_and_the_rest_goes_on(study_run):
    runs = study_run.data["runs"]
    assert runs[0]["status"] == "failed" and "missing.pth: no such file" in runs[0]["error"]
    assert [r["status"] for r in runs[1:]] == ["done", "done", "done"]
    assert "missing.pth: no such file" in study_run.page


def test_seed_repeats_train_and_report_mean_std(study_run):
    runs = study_run.data["runs"]
    assert [r["name"] for r in runs[2:]] == ["scratch-lr0.001", "scratch-lr0.001-s1"]
    configs = [json.loads((study_run.work / r["run_dir"] / "config.json").read_text()) for r in runs[2:]]
    assert [c["seed"] for c in configs] == [0, 1]
    assert "scratch-lr0.001 (2 seeds)" in study_run.page and " ± " in study_run.page


def test_study_evaluates_reports_and_then_skips(study_run, monkeypatch, capsys):
    data, out = study_run.data, Path("out")
    monkeypatch.chdir(study_run.work)
    folders = run_folders(out)
    assert len(folders) == 3 and {name.split("-tiny-")[1] for name in folders} == {
        "scratch-lr0.003", "scratch-lr0.001", "scratch-lr0.001-s1"}
    done = data["runs"][1:]
    assert all(r["eval"]["n"] == 40 and r["metrics"]["epochs_run"] == 2 for r in done)
    best = max(done, key=lambda r: r["metrics"]["best_val_acc"])
    others = [r for r in done if r is not best]
    assert best["corruptions"]["severities"] == [1, 3] and best["ood"]["n_out"] == 20  # the best scratch run only
    assert "gradcam_grid" in best["files"] and best["layers"]["layers"] == ["features.18", "features.14"]
    assert all(r["corruptions"] is None and "gradcam_grid" not in r["files"] and r["layers"] is None for r in others)
    assert (Path(best["run_dir"]) / "gradcam" / "gradcam_grid.png").is_file()
    assert "--tag tiny-scratch-lr0.003" in data["runs"][1]["command"]
    assert not any("About the data" in n for n in data["notes"])  # no notes file describes the synthetic folder
    assert (out / "report" / "report.md").is_file()
    notebook = json.loads((out / "report" / "report.ipynb").read_text())  # executed on the real run folders
    outputs = [o for c in notebook["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 8  # class counts, samples, curves, Grad-CAM...
    assert (out / "report" / "logs" / "scratch-lr0.003.log").read_text().count("epoch") >= 2

    plan, dataset = Path("plan.json"), Path("raw-img")
    mtimes = {p: p.stat().st_mtime for p in out.glob("*-tiny-*/**/*.json")}  # gradcam/ too
    assert run_study(plan, dataset, out) == 1  # the failed run is tried again, and fails again
    assert run_folders(out) == folders  # nothing retrained
    assert {p: p.stat().st_mtime for p in out.glob("*-tiny-*/**/*.json")} == mtimes  # nor re-evaluated
    log = capsys.readouterr().out
    assert log.count(": done (") == 3 and "== [1/4] mobilenet-fc" in log

    handin = Path("handin")
    assert run_study(plan, dataset, out, "--report-only", "--handin", str(handin), "--student-id", "s1234567") == 0
    check_handin(handin, "s1234567.zip", best, study_run.work, dataset)
    assert run_study(plan, dataset, out, "--report-only", "--handin", str(handin)) == 0  # a new hand-in replaces it
    assert (handin / "handin.zip").is_file() and not (handin / "s1234567.zip").exists()
    Path("other").mkdir()
    Path("other/notes.txt").write_text("mine")
    with pytest.raises(UserError, match="is not empty and holds no earlier hand-in"):
        run_study(plan, dataset, out, "--report-only", "--handin", "other")
    assert Path("other/notes.txt").read_text() == "mine"


def check_handin(handin: Path, zip_name: str, best: dict, work: Path, dataset: Path) -> None:
    """The hand-in as a grader opens it: unzipped into an empty folder elsewhere, its notebook executed there."""
    import nbformat
    from nbclient import NotebookClient

    names = sorted(zipfile.ZipFile(handin / zip_name).namelist())
    on_disk = sorted(p.relative_to(handin).as_posix() for p in handin.rglob("*") if p.is_file())
    assert on_disk == sorted(names + [zip_name, ".handin.json"])
    assert {"report.ipynb", "report.py", "records/study.json", "records/split.json", "common/notebook.py",
            "part1_scratch_cnn.py", "part2_mobilenet.py", "evaluate.py", "gradcam.py",
            "saved_models/scratch_cnn/best.pt"} <= set(names)
    assert not [n for n in names if n.startswith(("tests/", "bench/", "runs/", "figures/")) or "__pycache__" in n
                or "/cache/" in n or n.endswith(".npy") or re.fullmatch(r"img\d{3}\.(jpg|png)", Path(n).name)]
    # no tests, caches or images of the data (the figures are the runs')
    slim = handin / "saved_models" / "scratch_cnn" / "best.pt"
    ckpt = torch.load(slim, weights_only=True)
    assert "optimizer_state" not in ckpt and "rng" not in ckpt
    assert slim.stat().st_size < 0.6 * (Path(best["run_dir"]) / "last.pt").stat().st_size
    full = torch.load(Path(best["run_dir"]) / "best.pt", weights_only=True)
    assert all(torch.equal(ckpt["model_state"][k], v) for k, v in full["model_state"].items())
    evaluate = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--ckpt", str(slim), "--device", "cpu",
                               "--source-dir", str(dataset), "--split-file", str(Path("out/split.json")),
                               "--out-dir", "eval"], capture_output=True, text=True)
    assert evaluate.returncode == 0, evaluate.stderr
    assert json.loads(Path("eval/eval.json").read_text())["accuracy"] == pytest.approx(best["metrics"]["test_acc"])

    grader = Path(tempfile.mkdtemp(prefix="grader-"))  # outside the project and the study's folder
    try:
        zipfile.ZipFile(handin / zip_name).extractall(grader)
        machine = [str(ROOT), str(work.resolve()), str(dataset.resolve()), str(Path.home())]
        for f in grader.rglob("*"):
            if f.is_file():
                data = f.read_bytes()
                assert not [m for m in machine if m.encode() in data], (f, [m for m in machine if m.encode() in data])
        nb = nbformat.read(grader / "report.ipynb", as_version=4)
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(grader)}}).execute()  # raises on any cell's error
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.execution_count for c in code)
        assert sum("image/png" in o.get("data", {}) or "image/jpeg" in o.get("data", {})
                   for c in code for o in c.outputs) >= 5
        sources = "".join(c.source for c in code)
        assert "class ScratchCNN(nn.Module):" in sources and "def train_one_epoch(" in sources
        assert "class GradCAM:" in sources and "register_forward_hook" in sources and "def freeze(" in sources
        script = subprocess.run([sys.executable, "report.py"], cwd=grader, capture_output=True, text=True,
                                timeout=300)
        assert script.returncode == 0, script.stderr[-3000:]
        assert len(list((grader / "figures").rglob("*.png"))) >= 5
    finally:
        shutil.rmtree(grader)


def test_killed_run_is_resumed_in_its_own_folder(study_run):
    """The run the fixture killed after epoch 1 of 2 was listed as missing, then resumed in its own folder."""
    assert Path(study_run.killed_cmd[1]).name == "part1_scratch_cnn.py"
    assert study_run.killed_cmd[study_run.killed_cmd.index("--epochs") + 1] == "2"
    assert "[missing] scratch-lr0.003" in study_run.listing
    folder = study_run.out / study_run.killed
    assert str(folder.relative_to(study_run.work)) == study_run.data["runs"][1]["run_dir"]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == 1 and [h["epoch"] for h in metrics["history"]] == [1, 2]


def test_bad_plans_and_names_are_clear_errors(dataset, tmp_path):
    with pytest.raises(DataError, match="neither quick nor cpu nor full"):
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


# ---------- scripts a plan may run ----------

@pytest.mark.parametrize("script", ["../part1_scratch_cnn.py", "/bin/sh", str(ROOT / "part1_scratch_cnn.py"),
                                    "evaluate.py", "tests/kaggle_standin.py", "./part2_mobilenet.py"])
def test_plan_may_only_name_the_training_scripts(tmp_path, script):
    plan = write_plan(tmp_path, [{**scratch_run(1e-3), "script": script}])
    with pytest.raises(DataError, match=r"run 'scratch-lr0.001' names script .*; a plan may only run "
                                        r"part1_scratch_cnn.py, part2_efficientnet.py, part2_mobilenet.py, "
                                        r"part2_resnet18.py"):
        study.load_plan(str(plan))


def test_bad_script_is_one_line_from_the_command(tmp_path):
    plan = write_plan(tmp_path, [{**scratch_run(1e-3), "script": "/bin/sh"}])
    proc = subprocess.run([sys.executable, str(ROOT / "study.py"), "--plan", "plan.json", "--list"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.startswith("error: plan file plan.json: run 'scratch-lr0.001' names")
    assert len(proc.stderr.strip().splitlines()) == 1 and plan.is_file()


# ---------- seeds ----------

def test_seeds_expand_into_one_run_per_seed(tmp_path):
    plan = study.load_plan(str(write_plan(tmp_path, [{**scratch_run(1e-3), "seeds": [0, 1, 2]}, scratch_run(3e-3)])))
    runs = {r["name"]: r for r in plan["runs"]}
    assert list(runs) == ["scratch-lr0.001", "scratch-lr0.001-s1", "scratch-lr0.001-s2", "scratch-lr0.003"]
    assert runs["scratch-lr0.001"]["args"] == scratch_run(1e-3)["args"]  # seed 0: the run trained before seeds
    assert runs["scratch-lr0.001-s2"]["args"] == [*scratch_run(1e-3)["args"], "--seed", "2"]
    assert {r["repeat"] for n, r in runs.items() if n != "scratch-lr0.003"} == {"scratch-lr0.001"}
    assert [r["vars"]["seed"] for r in plan["runs"][:3]] == [0, 1, 2] and "repeat" not in runs["scratch-lr0.003"]
    assert all(r["groups"] == ["scratch_grid"] for r in plan["runs"])
    for bad, message in (([1, 1], "distinct integers"), ("3", "distinct integers"), ([-1], "distinct integers")):
        with pytest.raises(DataError, match=message):
            study.load_plan(str(write_plan(tmp_path, [{**scratch_run(1e-3), "seeds": bad}])))
    both = {**scratch_run(1e-3), "seeds": [0, 1]}
    both["args"] = [*both["args"], "--seed", "4"]
    with pytest.raises(DataError, match="both \"seeds\" and --seed"):
        study.load_plan(str(write_plan(tmp_path, [both])))
    with pytest.raises(DataError, match="run name twice"):  # a repeat's name may not clash with another run
        study.load_plan(str(write_plan(tmp_path, [{**scratch_run(1e-3), "seeds": [0, 1]},
                                                  {**scratch_run(3e-3), "name": "scratch-lr0.001-s1"}])))


# ---------- ResNet-18 in the quick plan ----------

def plan_for(tmp_path, resnet_weights: str, plan: str = "quick"):
    args = study.get_args_parser().parse_args(["--plan", plan, "--resnet-weights", resnet_weights,
                                               "--output-dir", str(tmp_path / "runs")])
    return args, *study.plan_and_warnings(args)


def test_quick_plan_has_resnet18_when_its_weights_resolve(tmp_path):
    import torch
    import torchvision
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    args, plan, warnings = plan_for(tmp_path, str(weights))
    assert warnings == []
    resnet = {r["name"]: r for r in plan["runs"] if r["script"] == "part2_resnet18.py"}
    assert set(resnet) == {"resnet18-fc", "resnet18-blocks34", "resnet18-full"}
    cmd = study.train_command(resnet["resnet18-fc"], plan, args)
    assert cmd[1] == str(ROOT / "part2_resnet18.py") and cmd[cmd.index("--weights") + 1] == str(weights)
    assert "--cache-features" in cmd and "ResNet-18" in plan["description"]


def test_quick_plan_without_resnet18_weights_says_so(tmp_path, monkeypatch, capsys):
    import urllib.error

    import torchvision.models._api as tv_api

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty cache
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)  # and never the real network
    for weights, reason in (("imagenet", "URLError"), (str(tmp_path / "missing.pth"), "no such file")):
        _, plan, warnings = plan_for(tmp_path, weights)
        assert not any(r["script"] == "part2_resnet18.py" for r in plan["runs"])
        assert len(warnings) == 1 and reason in warnings[0] and "--resnet-weights FILE" in warnings[0]
        assert "ResNet-18 is missing from this study" in warnings[0]
    _, plan, warnings = plan_for(tmp_path, str(tmp_path / "missing.pth"), "full")  # full keeps its runs, and warns
    assert any(r["script"] == "part2_resnet18.py" for r in plan["runs"]) and "runs fail" in warnings[0]


def test_missing_resnet18_is_at_the_top_of_report_and_log(dataset, tmp_path, capsys):
    out = tmp_path / "runs"
    argv = ["--plan", "quick", "--data-dir", str(dataset), "--output-dir", str(out), "--report-only",
            "--resnet-weights", str(tmp_path / "missing.pth")]
    assert study.main(study.get_args_parser().parse_args(argv)) == 0
    log = capsys.readouterr().out
    assert log.startswith("note: ResNet-18 is missing from this study") and "--resnet-weights FILE" in log
    page, md = (out / "report" / "index.html").read_text(), (out / "report" / "report.md").read_text()
    assert page.index('class="box warn"') < page.index("Read this first") and "missing.pth: no such file" in page
    assert md.index("ResNet-18 is missing from this study") < md.index("Read this first")


# ---------- stopping, and running from any folder ----------

def children(pid: int) -> list[int]:
    """Pids whose parent is pid (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(what, timeout: float, step: float = 0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = what()
        if found:
            return found
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_stopping_study_stops_its_training_and_resumes(dataset, tmp_path):
    """SIGTERM to study.py stops the training child (its process group); so does SIGKILL; a rerun resumes."""
    run = {**scratch_run(1e-3)}
    run["args"] = [*run["args"], "--epochs", "500"]
    write_plan(tmp_path, [run])
    cmd = [sys.executable, str(ROOT / "study.py"), "--plan", "plan.json", "--data-dir", str(dataset),
           "--output-dir", "runs", "--device", "cpu"]
    started = []
    try:
        for sig, resumed in ((signal.SIGTERM, False), (signal.SIGKILL, True)):
            log = tmp_path / f"study-{sig.name}.log"
            with open(log, "wb") as f:
                proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=f, stderr=subprocess.STDOUT)
            started.append(proc)
            child = wait_for(lambda pid=proc.pid: [c for c in children(pid) if "part1_scratch_cnn" in
                                                   Path(f"/proc/{c}/cmdline").read_text(errors="replace")], 120)[0]
            wait_for(lambda: list((tmp_path / "runs").glob("*-tiny-*/last.pt")), 240)  # an epoch is saved
            assert ("(resuming)" in log.read_text()) == resumed
            proc.send_signal(sig)
            assert proc.wait(timeout=30) == (128 + sig if sig == signal.SIGTERM else -sig)
            wait_for(lambda pid=child: not alive(pid), 10)
        assert "stopped by SIGTERM" in (tmp_path / "study-SIGTERM.log").read_text()
        assert "Traceback" not in (tmp_path / "study-SIGTERM.log").read_text()
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_stop_kills_the_group_after_the_grace_period():
    """A child that ignores SIGTERM is killed after the grace period, and so is its own child (same group)."""
    code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); print(p.pid, flush=True); "
            "time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True)
    try:
        grandchild = int(proc.stdout.readline())
        start = time.monotonic()
        study.stop(proc, grace=0.5)
        assert proc.returncode == -signal.SIGKILL and time.monotonic() - start < 5
        wait_for(lambda: not alive(grandchild), 5)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_explanations_are_redone_when_a_check_is_missing_or_made_on_other_images(tmp_path):
    ckpt, cam = tmp_path / "best.pt", tmp_path / "gradcam"
    ckpt.write_bytes(b"weights")
    cam.mkdir()
    (cam / "gradcam_grid.png").write_bytes(b"png")
    (cam / "layers.json").write_text(json.dumps({"layers": ["features.18", "features.14"]}))
    (cam / "faithfulness.json").write_text(json.dumps({"requested": 10}))
    (cam / "sanity.json").write_text(json.dumps({"requested": 4}))  # written before the shuffled-label test
    checks = {"faithfulness": 10, "sanity": 4}
    assert study.explanations_stale(cam, ckpt, checks)
    (cam / "sanity.json").write_text(json.dumps({"requested": 4, "data_randomization": {}}))
    assert not study.explanations_stale(cam, ckpt, checks)
    assert study.explanations_stale(cam, ckpt, {"faithfulness": 20, "sanity": 4})
    assert not study.explanations_stale(cam, ckpt, {"faithfulness": 0, "sanity": 0})
    (cam / "layers.json").unlink()
    assert study.explanations_stale(cam, ckpt, {"faithfulness": 0, "sanity": 0})


def test_the_compression_step_runs_compress_with_the_plans_settings_once(tmp_path, monkeypatch):
    ckpt = tmp_path / "run" / "best.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights")
    calls = []

    def fake_execute(cmd, log_path):  # compress.py's result file, as it writes it
        calls.append(cmd)
        result = {"methods": cmd[cmd.index("--methods") + 1].split(","),
                  "sparsities": [float(v) for v in cmd[cmd.index("--sparsities") + 1].split(",")],
                  "finetune": {"epochs": int(cmd[cmd.index("--finetune-epochs") + 1])}}
        (ckpt.parent / "compressed").mkdir(exist_ok=True)
        (ckpt.parent / "compressed" / "compression.json").write_text(json.dumps(result))
        return 0, ""

    monkeypatch.setattr(study, "execute", fake_execute)
    settings = {"methods": "int8,prune", "sparsities": "0.3,0.5", "finetune_epochs": 1, "finetune_fraction": 0.2}
    assert study.compress_run(ckpt, settings, "cpu", tmp_path / "log") is None
    assert calls[0][1].endswith("compress.py") and calls[0][calls[0].index("--finetune-fraction") + 1] == "0.2"
    study.compress_run(ckpt, settings, "cpu", tmp_path / "log")
    assert len(calls) == 1  # done with these settings: not again
    study.compress_run(ckpt, {**settings, "sparsities": "0.5"}, "cpu", tmp_path / "log")
    assert len(calls) == 2  # other sparsities: compressed again


def test_a_plan_files_compression_entry_must_name_every_setting(tmp_path):
    path = write_plan(tmp_path, [scratch_run(1e-3)])
    plan = json.loads(path.read_text())
    path.write_text(json.dumps({**plan, "compression": {"methods": "int8"}}))
    with pytest.raises(DataError, match="its \"compression\" entry lacks finetune_epochs, finetune_fraction, "
                                        "sparsities"):
        study.load_plan(str(path))
