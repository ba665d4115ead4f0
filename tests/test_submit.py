"""submit.py: CSV contents, validation failures, sample submissions, and uploads against a local stand-in."""
from __future__ import annotations

import csv
import io
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

import evaluate
import gradcam
import part1_scratch_cnn as part1
import submit
from common.runs import load_checkpoint, save_checkpoint
from conftest import ANIMALS, ROOT, class_image, make_dataset, one_error_line, tiny_args
from kaggle_standin import KaggleStandIn, PortTaken, isolated_environ


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny scratch CNN on synthetic data, and a flat numbered test folder of the same kind of images."""
    root = tmp_path_factory.mktemp("submit")
    data = make_dataset(root / "raw-img")
    out = root / "runs"
    part1.main(part1.get_args_parser().parse_args(
        tiny_args(data, out, "--epochs", "4", "--batch-size", "16", "--lr", "3e-3", "--jitter", "0")))
    test_dir = root / "cnn_test"
    test_dir.mkdir()
    rng = np.random.default_rng(9)
    truth = {}
    for n in range(1, 13):  # names 1..12: numeric order differs from string order (10 < 2)
        k = (n * 7) % 10
        cv2.imwrite(str(test_dir / f"{n}.jpg"), class_image(k, 10, rng))
        truth[str(n)] = ANIMALS[k]
    return out, test_dir, truth


def run_submit(*argv):
    submit.main(submit.get_args_parser().parse_args(list(argv)))


def read_rows(path):
    return list(csv.reader(io.StringIO(path.read_text())))


def test_csv_contents_for_tiny_model(trained, tmp_path):
    out, test_dir, truth = trained
    run_submit("--runs-dir", str(out), "--test-dir", str(test_dir), "--out-dir", str(tmp_path), "--no-upload")
    files = list(tmp_path.glob("*.csv"))
    assert len(files) == 1  # one run exists
    rows = read_rows(files[0])
    assert rows[0] == ["ID", "Label"] and [r[0] for r in rows[1:]] == [str(i) for i in range(1, 13)]
    assert all(label in ANIMALS for _, label in rows[1:])
    # The model is good on this easy data: most labels are the true classes of the numbered files.
    assert sum(truth[i] == label for i, label in rows[1:]) >= 9
    # The same predictions, written differently.
    run_submit("--ckpt", str(out / "best.pt"), "--test-dir", str(test_dir), "--out-dir", str(tmp_path / "b"),
               "--no-upload", "--columns", "image,animal", "--id-form", "name", "--label-form", "english")
    rows_b = read_rows(next((tmp_path / "b").glob("*.csv")))
    assert rows_b[0] == ["image", "animal"]
    assert [r[0] for r in rows_b[1:]] == [f"{i}.jpg" for i in range(1, 13)]
    english = dict(zip(ANIMALS, ["dog", "horse", "elephant", "butterfly", "chicken", "cat", "cow", "sheep", "spider",
                                 "squirrel"]))
    assert [r[1] for r in rows_b[1:]] == [english[label] for _, label in rows[1:]]


def test_sample_submission_sets_columns_and_order(trained, tmp_path):
    out, test_dir, _ = trained
    sample = tmp_path / "sample_submission.csv"
    sample.write_text("Id,Category\n" + "".join(f"{i},x\n" for i in (3, 1, 12, 2, 4, 5, 6, 7, 8, 9, 10, 11)))
    run_submit("--ckpt", str(out / "best.pt"), "--test-dir", str(test_dir), "--out-dir", str(tmp_path / "s"),
               "--no-upload", "--sample-submission", str(sample), "--id-form", "stem")
    rows = read_rows(next((tmp_path / "s").glob("*.csv")))
    assert rows[0] == ["Id", "Category"] and [r[0] for r in rows[1:4]] == ["3", "1", "12"]
    bad = tmp_path / "bad.csv"
    bad.write_text("Id,Category\n1,x\n99,x\n")
    with pytest.raises(submit.SubmissionError, match="do not match the 12 test images"):
        run_submit("--ckpt", str(out / "best.pt"), "--test-dir", str(test_dir), "--no-upload",
                   "--sample-submission", str(bad), "--out-dir", str(tmp_path / "t"))


@pytest.mark.parametrize("body, problem", [
    ("ID,Label\n1,cane\n2,gatto\n", "1 test image id(s) missing, first: 3"),
    ("ID,Label\n1,cane\n2,gatto\n3,gatto\n3,cane\n", "line 5: id 3 repeats line 4"),
    ("ID,Label\n1,cane\n2,gatto\n3,gatto\n4,cane\n", "line 5: id 4 is not a test image"),
    ("ID,Label\n1,cane\n2,cat\n3,gatto\n", "line 3: label 'cat' is not one of"),
    ("ID,Label\n1,cane\n2,\n3,gatto\n", "line 3: ['2', ''] has an empty or missing cell"),
    ("Id,Label\n1,cane\n2,gatto\n3,gatto\n", "header is ['Id', 'Label'], expected ['ID', 'Label']"),
])
def test_each_validation_failure(body, problem):
    problems = submit.validate_submission(body, ["ID", "Label"], ["1", "2", "3"], ANIMALS)
    assert any(problem in p for p in problems), problems
    good = "ID,Label\n1,cane\n2,gatto\n3,gatto\n"
    assert submit.validate_submission(good, ["ID", "Label"], ["1", "2", "3"], ANIMALS) == []


def test_natural_order_and_missing_test_dir(tmp_path):
    names = ["10.jpg", "2.jpg", "1.jpg", "img_3.png"]
    assert sorted(names, key=submit.natural_key) == ["1.jpg", "2.jpg", "10.jpg", "img_3.png"]
    with pytest.raises(submit.SubmissionError, match="does not exist"):
        submit.list_test_images(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(submit.SubmissionError, match="holds no"):
        submit.list_test_images(tmp_path / "empty")


def test_corrupt_test_image_is_refused(trained, tmp_path):
    out, test_dir, _ = trained
    broken = tmp_path / "t"
    shutil.copytree(test_dir, broken)
    (broken / "5.jpg").write_bytes(b"not an image")
    with pytest.raises(submit.SubmissionError, match="5.jpg cannot be decoded"):
        run_submit("--ckpt", str(out / "best.pt"), "--test-dir", str(broken), "--no-upload", "--out-dir", str(tmp_path))
    assert load_checkpoint(out / "best.pt")["arch"] == "scratch_cnn"


def three_class_checkpoint(src, dst):
    """The tiny model cut down to its first three classes: a real 3-class checkpoint, made in milliseconds."""
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    ckpt["classes"], ckpt["display_names"] = ANIMALS[:3], ckpt["display_names"][:3]
    for key in ("classifier.2.weight", "classifier.2.bias"):
        ckpt["model_state"][key] = ckpt["model_state"][key][:3].clone()
    save_checkpoint(ckpt, dst)
    return dst


def test_checkpoint_of_other_classes_is_refused_before_predicting(trained, tmp_path):
    out, test_dir, _ = trained
    three = three_class_checkpoint(out / "best.pt", tmp_path / "three" / "best.pt")
    subs = tmp_path / "subs"
    # The good checkpoint comes first: nothing is predicted or written for it either.
    with pytest.raises(submit.SubmissionError) as e:
        run_submit("--ckpt", str(out / "best.pt"), str(three), "--test-dir", str(test_dir), "--no-upload",
                   "--out-dir", str(subs))
    message = str(e.value)
    assert "\n" not in message and str(three) in message and "trained on 3 classes (cane, cavallo, elefante)" in message
    assert "the competition's 10 Animals-10 labels (" + ", ".join(ANIMALS) + ")" in message
    assert "pick a run trained on the 10 classes" in message and "--sample-submission" in message
    assert not subs.exists()


def test_sample_submission_labels_are_the_vocabulary(trained, tmp_path):
    out, test_dir, _ = trained
    three = three_class_checkpoint(out / "best.pt", tmp_path / "three" / "best.pt")
    sample = tmp_path / "sample.csv"
    sample.write_text("ID,Label\n" + "".join(f"{i},{ANIMALS[i % 3]}\n" for i in range(1, 13)))
    run_submit("--ckpt", str(three), "--test-dir", str(test_dir), "--no-upload", "--out-dir", str(tmp_path / "s"),
               "--sample-submission", str(sample))
    rows = read_rows(tmp_path / "s" / "three.csv")
    assert len(rows) == 13 and {label for _, label in rows[1:]} <= set(ANIMALS[:3])
    refused = r"trained on 10 classes .* the labels of the sample submission \S*sample.csv \(cavallo, elefante, cane\);"
    with pytest.raises(submit.SubmissionError, match=refused):
        run_submit("--ckpt", str(out / "best.pt"), "--test-dir", str(test_dir), "--no-upload",
                   "--out-dir", str(tmp_path / "t"), "--sample-submission", str(sample))


def test_index_labels_count_in_the_competition_order():
    vocabulary = submit.competition_vocabulary([], "index")
    assert vocabulary[0] == [str(i) for i in range(10)]
    labels = submit.checkpoint_labels("x.pt", ANIMALS[::-1], "index", vocabulary)
    assert labels == [str(i) for i in range(10)][::-1]  # output unit 0 is scoiattolo, competition label 9
    # One label throughout the sample is a placeholder, not a one-class competition.
    assert submit.competition_vocabulary(["cane"] * 5, "italian")[0] == ANIMALS


def test_failed_validation_leaves_the_previous_csv_byte_identical(trained, tmp_path):
    out, test_dir, _ = trained
    subs = tmp_path / "subs"
    run_submit("--ckpt", str(out / "best.pt"), "--test-dir", str(test_dir), "--no-upload", "--out-dir", str(subs),
               "--id-form", "stem")
    before = (subs / "best.csv").read_bytes()
    sample = tmp_path / "sample.csv"  # id 1 twice, id 2 never: as many rows as images, every id known
    sample.write_text("ID,Label\n" + "".join(f"{i},x\n" for i in (1, 1, *range(3, 13))))
    with pytest.raises(submit.SubmissionError, match=r"line 3: id 1 repeats line 2.*best.csv left as it was"):
        run_submit("--ckpt", str(out / "best.pt"), "--test-dir", str(test_dir), "--no-upload", "--out-dir", str(subs),
                   "--id-form", "stem", "--sample-submission", str(sample))
    assert (subs / "best.csv").read_bytes() == before and [p.name for p in subs.iterdir()] == ["best.csv"]


def test_validation_counts_rows_and_checks_their_order():
    problems = submit.validate_submission("ID,Label\n1,cane\n", ["ID", "Label"], ["1", "2"], ANIMALS)
    assert "1 rows for 2 test images" in problems
    problems = submit.validate_submission("ID,Label\n2,cane\n1,cane\n", ["ID", "Label"], ["1", "2"], ANIMALS)
    assert problems == ["the rows are not in the expected order of ids"]


@pytest.mark.parametrize("names, form, message", [
    (["1.jpg", "cat.jpg", "dog.png"], "index", "cat.jpg, dog.png have no number"),
    (["1.jpg", "01.jpg", "1.jpeg", "2.jpg"], "index", "the same number would get one id: 1.jpg = 01.jpg = 1.jpeg;"),
    (["1.jpg", "1.png", "2.jpg"], "stem", "have the same stem would get one id: 1.jpg = 1.png;"),
])
def test_ids_that_cannot_be_told_apart_are_an_error(tmp_path, names, form, message):
    with pytest.raises(submit.SubmissionError, match=message):
        submit.image_ids([tmp_path / n for n in names], form)
    assert submit.image_ids([tmp_path / n for n in names], "name") == names


def test_index_ids_follow_the_number_in_the_name(tmp_path):
    files = [tmp_path / n for n in ("img_10.jpg", "img_2.jpg", "b_1.png", "a_0003.jpg")]
    assert submit.image_ids(files, "index") == ["4", "2", "1", "3"]
    folder = tmp_path / "t"
    folder.mkdir()
    for n in ("1.jpg", "01.jpg", "2.jpg"):
        (folder / n).write_bytes(b"")
    with pytest.raises(submit.SubmissionError, match="1.jpg = 01.jpg|01.jpg = 1.jpg"):
        run_submit("--ckpt", "none.pt", "--test-dir", str(folder), "--no-upload", "--out-dir", str(tmp_path / "s"))
    assert not (tmp_path / "s").exists()


# Bad input to the scripts: one `error:` line on stderr, exit 1, no traceback.

def test_gradcam_missing_image(trained, tmp_path, capsys):
    out, _, _ = trained
    one_error_line(gradcam, ["--ckpt", out / "best.pt", "--image", tmp_path / "missing.jpg", "--out-dir",
                             tmp_path / "g", "--device", "cpu"], capsys, "missing.jpg", "no such file")
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize("name, key", [("evaluate.py", "model_state"), ("gradcam.py", "crop_size"),
                                       ("submit.py", "classes")])
def test_checkpoint_missing_a_key(trained, tmp_path, name, key, capsys):
    out, test_dir, _ = trained
    ckpt = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    del ckpt[key]
    edited = tmp_path / "edited" / "best.pt"
    save_checkpoint(ckpt, edited)
    extra = {"evaluate.py": ["--out-dir", tmp_path / "e"], "gradcam.py": ["--out-dir", tmp_path / "e"],
             "submit.py": ["--test-dir", test_dir, "--no-upload", "--out-dir", tmp_path / "e"]}[name]
    script = {"evaluate.py": evaluate, "gradcam.py": gradcam, "submit.py": submit}[name]
    one_error_line(script, ["--ckpt", edited, *extra, "--device", "cpu"], capsys, str(edited), key)
    assert not (tmp_path / "e").exists()


# Uploads: the real kaggle client, in a subprocess whose environment routes it to a stand-in on loopback.

def submit_process(tmp_path, out, test_dir, standin_port, *extra, credentials=True):
    env = isolated_environ(tmp_path / "kaggle-home", port=standin_port)
    if not credentials:
        env.pop("KAGGLE_USERNAME")
        env.pop("KAGGLE_KEY")
    return subprocess.run([sys.executable, str(ROOT / "submit.py"), "--ckpt", str(out / "best.pt"),
                           "--test-dir", str(test_dir), "--out-dir", str(tmp_path / "subs"),
                           "--competition", "bbm409-animals", "--device", "cpu", *extra],
                          capture_output=True, text=True, env=env, timeout=300)


def standin(**kw):
    try:
        return KaggleStandIn(port=0, **kw)
    except PortTaken as e:  # pragma: no cover - port 0 asks the OS for a free one
        pytest.skip(f"no loopback port for the Kaggle stand-in: {e}")


def test_upload_end_to_end_with_the_real_client(trained, tmp_path):
    out, test_dir, _ = trained
    with standin() as server:
        proc = submit_process(tmp_path, out, test_dir, server.port)
    assert proc.returncode == 0, proc.stderr
    csv_file = next((tmp_path / "subs").glob("*.csv"))
    assert server.uploads == [csv_file.read_bytes()]
    (sub,) = server.submissions
    assert sub["competition"] == "bbm409-animals" and sub["upload"] == csv_file.read_bytes()
    assert "scratch_cnn/full val_acc=" in sub["description"]
    assert "Successfully submitted" in proc.stdout


def test_upload_403_shows_server_message_and_keeps_csv(trained, tmp_path):
    out, test_dir, _ = trained
    rules = "You must accept this competition's rules before you can submit"
    with standin(fail_with=(403, rules)) as server:
        proc = submit_process(tmp_path, out, test_dir, server.port)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "HTTP 403" in proc.stderr and rules in proc.stderr and "accepted the competition's rules" in proc.stderr
    assert next((tmp_path / "subs").glob("*.csv")).stat().st_size > 0 and server.submissions == []


def test_failed_upload_step_is_an_error(trained, tmp_path):
    out, test_dir, _ = trained
    with standin(fail_upload=True) as server:
        proc = submit_process(tmp_path, out, test_dir, server.port)
    assert proc.returncode == 1 and "upload of" in proc.stderr and "failed" in proc.stderr
    assert server.submissions == []


def test_missing_credentials_give_advice(trained, tmp_path):
    out, test_dir, _ = trained
    with standin() as server:
        proc = submit_process(tmp_path, out, test_dir, server.port, credentials=False)
    assert proc.returncode == 1 and "kaggle.json" in proc.stderr and "--no-upload" in proc.stderr
    assert server.requests == [] and next((tmp_path / "subs").glob("*.csv")).exists()


def test_ensemble_averages_the_probabilities_of_several_models(trained, tmp_path):
    """--ensemble writes one validated CSV from the mean class probabilities of every checkpoint, aligned by class
    name whatever order each model's output units have."""
    from common.inference import Predictor

    out, test_dir, truth = trained
    first = out / "best.pt"
    ckpt = load_checkpoint(first)
    # A second model: the same weights with its output units in reverse class order, and a third that differs.
    flipped = dict(ckpt, classes=ckpt["classes"][::-1], model_state=dict(ckpt["model_state"]))
    head = [k for k in flipped["model_state"] if k.startswith("classifier.")]
    for k in head:
        flipped["model_state"][k] = flipped["model_state"][k].flip(0)
    other = dict(ckpt, model_state={k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v
                                    for k, v in ckpt["model_state"].items()})
    paths = [first, tmp_path / "flipped.pt", tmp_path / "other.pt"]
    save_checkpoint(flipped, paths[1])
    save_checkpoint(other, paths[2])
    run_submit("--ckpt", *map(str, paths), "--ensemble", "--test-dir", str(test_dir), "--out-dir",
               str(tmp_path / "e"), "--no-upload", "--device", "cpu")
    assert [p.name for p in (tmp_path / "e").iterdir()] == ["ensemble-3.csv"]
    rows = read_rows(tmp_path / "e" / "ensemble-3.csv")
    files = sorted(test_dir.iterdir(), key=lambda p: int(p.stem))
    images = submit.decode_folder(files, ckpt["img_size"])
    probs = sum(Predictor(load_checkpoint(p), torch.device("cpu")).probabilities(images)[:, order]
                for p, order in zip(paths, [slice(None), slice(None, None, -1), slice(None)])) / 3
    assert [label for _, label in rows[1:]] == [ckpt["classes"][k] for k in probs.argmax(1)]


def test_ensemble_of_one_model_is_refused(trained, tmp_path, capsys):
    out, test_dir, _ = trained
    one_error_line(submit, ["--ckpt", out / "best.pt", "--ensemble", "--test-dir", test_dir, "--out-dir",
                            tmp_path / "e", "--no-upload"], capsys, "--ensemble", "two or more")
    assert not (tmp_path / "e").exists()
