"""The hand-in folder: an earlier hand-in is recognised by the marker it wrote, never by a file name, and a folder
holding the user's other work or the study's own folders is refused before anything runs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import study
from common.cli import UserError
from common.handin import MARKER, MARKER_FORMAT, check_handin_folder


def protected(tmp_path: Path) -> dict[str, Path]:
    """What study.py protects, as four separate folders under tmp_path."""
    return {"output folder": tmp_path / "work" / "runs", "data folder": tmp_path / "data" / "raw-img",
            "project": tmp_path / "project", "current folder": tmp_path / "work"}


def earlier_handin(folder: Path) -> list[str]:
    """A folder as write_handin leaves it: its files and the marker listing them."""
    files = ["report.ipynb", "saved_models/scratch_cnn/best.pt", "handin.zip"]
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")
    (folder / MARKER).write_text(json.dumps({"format": MARKER_FORMAT, "files": sorted(files)}))
    return files


def test_a_handin_zip_alone_is_no_earlier_handin(tmp_path):
    victim = tmp_path / "victim"
    (victim / "thesis").mkdir(parents=True)
    (victim / "notes.txt").write_text("mine")
    (victim / "thesis" / "ch1.tex").write_text("chapter")
    (victim / "handin.zip").write_bytes(b"PK")
    with pytest.raises(UserError, match="holds no earlier hand-in"):
        check_handin_folder(victim, protected(tmp_path))
    assert (victim / "notes.txt").read_text() == "mine" and (victim / "thesis" / "ch1.tex").is_file()


def test_an_earlier_handin_is_replaced_only_when_it_holds_nothing_else(tmp_path):
    folder = tmp_path / "handin"
    earlier_handin(folder)
    check_handin_folder(folder, protected(tmp_path))  # exactly what the marker lists: accepted
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds notes.txt besides the earlier hand-in"):
        check_handin_folder(folder, protected(tmp_path))
    (folder / "notes.txt").unlink()
    (folder / "saved_models" / "drafts").mkdir()  # an empty folder of the user's counts too
    with pytest.raises(UserError, match="saved_models/drafts"):
        check_handin_folder(folder, protected(tmp_path))


@pytest.mark.parametrize("marker", ["not json", json.dumps({"format": "other", "files": []}),
                                    json.dumps({"format": MARKER_FORMAT, "files": "report.ipynb"})])
def test_a_marker_not_written_by_the_project_is_refused(tmp_path, marker):
    folder = tmp_path / "handin"
    folder.mkdir()
    (folder / MARKER).write_text(marker)
    (folder / "report.ipynb").write_text("{}")
    with pytest.raises(UserError, match="holds no earlier hand-in"):
        check_handin_folder(folder, protected(tmp_path))


@pytest.mark.parametrize("which", ["output folder", "data folder", "project"])
def test_the_studys_own_folders_are_refused(tmp_path, which):
    folders = protected(tmp_path)
    folders[which].mkdir(parents=True)
    (folders[which] / "handin.zip").write_bytes(b"PK")  # even with a hand-in's zip copied into it
    with pytest.raises(UserError, match=f"is the {which}"):
        check_handin_folder(folders[which], folders)
    assert (folders[which] / "handin.zip").is_file()


def test_the_current_folder_and_parents_of_the_studys_folders_are_refused(tmp_path):
    folders = protected(tmp_path)
    with pytest.raises(UserError, match="holds the output folder"):  # the first it holds
        check_handin_folder(folders["current folder"], folders)
    with pytest.raises(UserError, match="holds the data folder"):
        check_handin_folder(tmp_path / "data", folders)
    with pytest.raises(UserError, match="holds the output folder"):
        check_handin_folder(tmp_path.parent, folders)
    only_cwd = {"current folder": folders["current folder"]}
    with pytest.raises(UserError, match="is the current folder"):
        check_handin_folder(folders["current folder"], only_cwd)
    check_handin_folder(tmp_path / "work" / "handin", folders)  # a new folder inside the current one is fine


@pytest.mark.parametrize("handin", [".", "rs3", "rs3/report"])
def test_study_refuses_before_training(tmp_path, monkeypatch, dataset, handin):
    """--handin . (a folder that holds a handin.zip), or the output folder itself: refused before any run."""
    monkeypatch.chdir(tmp_path)
    Path("handin.zip").write_bytes(b"PK")
    argv = ["--plan", "quick", "--data-dir", str(dataset), "--output-dir", "rs3", "--device", "cpu",
            "--handin", handin]
    with pytest.raises(UserError, match="the hand-in replaces its folder whole"):
        study.main(study.get_args_parser().parse_args(argv))
    assert not Path("rs3").exists() and Path("handin.zip").is_file()


@pytest.mark.parametrize("bad", ["../evil", "a/b", ".hidden", "x..y", "", "name with space", "a" * 65, "id."])
def test_a_student_id_that_is_not_a_safe_file_name_is_refused_when_parsed(bad, capsys):
    with pytest.raises(SystemExit) as e:
        study.get_args_parser().parse_args(["--student-id", bad])
    assert e.value.code == 2 and "is not a safe file name" in capsys.readouterr().err


@pytest.mark.parametrize("good", ["2512345", "s1234567", "jane.doe_2026-A"])
def test_a_student_id_names_the_zip(good):
    assert study.get_args_parser().parse_args(["--student-id", good]).student_id == good
