"""Kaggle submissions for the hidden test set: one validated CSV per model (or one of their ensemble), uploaded
with the official client.

Examples:
    python submit.py --competition COMPETITION                    # three best runs by val accuracy, upload
    python submit.py --no-upload                                  # only write and validate the CSVs
    python submit.py --ckpt runs/a/best.pt runs/b/best.pt runs/c/best.pt --tta --no-upload
    python submit.py --sample-submission sample_submission.csv    # adopt its columns, ids and order exactly
    python submit.py --ensemble --tta --no-upload                 # one CSV: the three best runs' mean probabilities

Test images: --test-dir, else $ANIMALS10_TEST_DIR, else data/animals10/cnn_test (one flat folder; the
course's files carry a number in their names). CSV (defaults follow what is known of the course
competition, see README): header `ID,Label`; ID runs 1..N in the numeric order of the number in each
file name (--id-form index; a file without a number, or two files with the same number, is an error;
or --id-form name or stem); Label is the Italian class folder name (--label-form italian; or english,
or index). The labels a CSV may hold are the competition's 10 Animals-10 classes, or the labels of
--sample-submission when its label column holds more than one distinct label (one label throughout is a
placeholder); a checkpoint trained on other classes is refused before any prediction. Every CSV is
validated in memory before it is written (atomically: a failure leaves the previous file as it was),
and nothing is uploaded before every CSV is valid.
Uploading needs Kaggle credentials (~/.kaggle/kaggle.json or KAGGLE_USERNAME/KAGGLE_KEY) and the
competition's rules accepted on its web page; the competition comes from --competition or
$KAGGLE_COMPETITION.
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
import re
from pathlib import Path

import numpy as np

from common.cli import ArgumentParser, UserError, positive_int, run_main
from common.data import ENGLISH_NAMES, display_name
from common.decode import IMAGE_EXTENSIONS, decode_many
from common.engine import resolve_device
from common.files import atomic_write_text
from common.inference import Predictor
from common.runs import load_checkpoint, runs_on_split

DEFAULT_TEST_DIR = "data/animals10/cnn_test"
COMPETITION_CLASSES = list(ENGLISH_NAMES)  # the course competition's labels: Animals-10's Italian folder names


class SubmissionError(UserError):
    """A submission that cannot be written, validated or uploaded; the message says why and what to do."""


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Write, validate and upload Kaggle submissions.")
    parser.add_argument("--ckpt", nargs="+", default=None,
                        help="checkpoints (default: the three best runs by val accuracy)")
    parser.add_argument("--runs-dir", default="runs", help="where to look for the best runs")
    parser.add_argument("--top", type=int, default=3, help="how many of the best runs to submit")
    parser.add_argument("--test-dir", default=None,
                        help=f"flat folder of test images (default: $ANIMALS10_TEST_DIR, else {DEFAULT_TEST_DIR})")
    parser.add_argument("--out-dir", default="submissions")
    parser.add_argument("--columns", default="ID,Label", help="id and label column names")
    parser.add_argument("--id-form", choices=("index", "stem", "name"), default="index",
                        help="index: 1..N in the numeric order of the files; stem or name: from the file name")
    parser.add_argument("--label-form", choices=("italian", "english", "index"), default="italian")
    parser.add_argument("--sample-submission", default=None, help="adopt this CSV's columns, ids and row order")
    parser.add_argument("--tta", action="store_true", help="average each image's and its mirror image's predictions")
    parser.add_argument("--ensemble", action="store_true",
                        help="one CSV from the mean class probabilities of all the checkpoints (any architectures)")
    parser.add_argument("--no-upload", action="store_true", help="only write and validate the CSVs")
    parser.add_argument("--competition", default=os.environ.get("KAGGLE_COMPETITION"),
                        help="Kaggle competition slug (default: $KAGGLE_COMPETITION)")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="images per forward pass (default: 16 on a CPU, 64 on CUDA)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return parser


def natural_key(name: str) -> tuple:
    """Sort key that orders the numbers inside names numerically (2 before 10)."""
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name))


def list_test_images(test_dir: Path) -> list[Path]:
    """Image files of a flat test folder, in natural numeric order."""
    if not test_dir.is_dir():
        raise SubmissionError(f"test folder {test_dir} does not exist; download the competition's test images and "
                              "pass --test-dir (or set ANIMALS10_TEST_DIR)")
    files = sorted((p for p in test_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
                   key=lambda p: natural_key(p.name))
    if not files:
        raise SubmissionError(f"test folder {test_dir} holds no .jpg/.jpeg/.png images; pass the folder of test images")
    return files


def file_number(path: Path) -> int | None:
    """The last number in a file's stem (img_0042.jpg -> 42), or None when it has none."""
    numbers = re.findall(r"\d+", path.stem)
    return int(numbers[-1]) if numbers else None


def _few(names: list[str], show: int = 5) -> str:
    return ", ".join(names[:show]) + (f" and {len(names) - show} more" if len(names) > show else "")


def image_ids(files: list[Path], form: str) -> list[str]:
    """The id of each test image: its rank 1..N by the number in its name (index), its file name, or its stem."""
    if form == "index":
        keys = [file_number(f) for f in files]
        unnumbered = [f.name for f, n in zip(files, keys) if n is None]
        if unnumbered:
            raise SubmissionError(f"--id-form index takes each test image's id from the number in its name, but "
                                  f"{_few(unnumbered)} {'has' if len(unnumbered) == 1 else 'have'} no number; "
                                  "remove those files from the test folder or pass --id-form name")
    else:
        keys = [f.name if form == "name" else f.stem for f in files]
    groups: dict = {}
    for f, key in zip(files, keys):
        groups.setdefault(key, []).append(f.name)
    clashes = [" = ".join(names) for names in groups.values() if len(names) > 1]
    if clashes:
        what = "carry the same number" if form == "index" else "have the same stem"
        raise SubmissionError(f"test images that {what} would get one id: {_few(clashes, 3)}; keep one file of "
                              "each group in the test folder or pass --id-form name")
    if form == "index":
        rank = {n: i + 1 for i, n in enumerate(sorted(keys))}
        return [str(rank[n]) for n in keys]
    return keys


def label_vocabulary(classes: list[str], form: str, reference: list[str] | None = None) -> list[str]:
    """How each class is written in the CSV; index labels count in `reference` order (default: classes)."""
    if form == "english":
        return [display_name(c) for c in classes]
    if form == "index":
        return [str((reference or classes).index(c)) for c in classes]
    return list(classes)


def competition_vocabulary(sample_labels: list[str], form: str,
                           sample: str | None = None) -> tuple[list[str], str, str]:
    """(labels a submission may hold, where they come from, the fix for a model of other classes)."""
    distinct = list(dict.fromkeys(sample_labels))
    # A single label throughout is a placeholder (the usual sample), not a one-class competition.
    if len(distinct) > 1:
        return distinct, f"the labels of the sample submission {sample}", \
            f"pick a run trained on these classes, or check --label-form (now {form})"
    return label_vocabulary(COMPETITION_CLASSES, form), "the competition's 10 Animals-10 labels", \
        ("pick a run trained on the 10 classes (--ckpt runs/<run>/best.pt), or pass --sample-submission FILE "
         "if the competition takes other labels")


def checkpoint_labels(path: Path, classes: list[str], form: str, vocabulary: tuple[list[str], str, str]) -> list[str]:
    """The checkpoint's classes as CSV labels; a SubmissionError when they are not exactly the vocabulary."""
    expected, source, fix = vocabulary
    # Index labels count in the competition's order, whatever order the model's output units have.
    reference = COMPETITION_CLASSES if set(classes) == set(COMPETITION_CLASSES) else None
    labels = label_vocabulary(classes, form, reference)
    if set(labels) != set(expected):
        raise SubmissionError(f"checkpoint {path} was trained on {len(classes)} classes ({', '.join(classes)}) but a "
                              f"submission takes {source} ({', '.join(expected)}); {fix}")
    return labels


def read_sample(path: Path) -> tuple[list[str], list[str], list[str]]:
    """(columns, ids in order, the non-empty labels) of a sample submission."""
    try:
        rows = list(csv.reader(io.StringIO(path.read_text())))
    except (OSError, UnicodeDecodeError) as e:
        raise SubmissionError(f"cannot read --sample-submission {path} ({e})") from None
    if len(rows) < 2 or len(rows[0]) < 2:
        raise SubmissionError(f"--sample-submission {path} needs a header with an id and a label column "
                              "and one row per image")
    body = [r for r in rows[1:] if r]
    return rows[0][:2], [r[0] for r in body], [r[1].strip() for r in body if len(r) > 1 and r[1].strip()]


def render_csv(columns: list[str], rows: list[tuple[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buf.getvalue()


def validate_submission(text: str, columns: list[str], expected_ids: list[str], vocabulary: list[str],
                        show: int = 5) -> list[str]:
    """Problems with a submission CSV (empty when valid): header, one row per image in expected_ids' order, labels."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or rows[0] != columns:
        return [f"header is {rows[0] if rows else 'missing'}, expected {columns}"]
    problems, seen = [], {}
    expected, vocab = set(expected_ids), set(vocabulary)
    if len(rows) - 1 != len(expected_ids):
        problems.append(f"{len(rows) - 1} rows for {len(expected_ids)} test images")
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(columns) or any(not cell.strip() for cell in row):
            problems.append(f"line {line}: {row} has an empty or missing cell")
            continue
        rid, label = row
        if rid in seen:
            problems.append(f"line {line}: id {rid} repeats line {seen[rid]}")
        elif rid not in expected:
            problems.append(f"line {line}: id {rid} is not a test image")
        seen.setdefault(rid, line)
        if label not in vocab:
            problems.append(f"line {line}: label {label!r} is not one of {sorted(vocab)}")
    missing = [i for i in expected_ids if i not in seen]
    if missing:
        problems.append(f"{len(missing)} test image id(s) missing, first: {', '.join(missing[:show])}")
    if not problems and [r[0] for r in rows[1:]] != list(expected_ids):
        problems.append("the rows are not in the expected order of ids")
    return problems


def decode_folder(files: list[Path], size: int) -> np.ndarray:
    """Every test image as RGB uint8 size x size; an unreadable one is an error (each needs a prediction)."""
    pixels = []
    for f, img in zip(files, decode_many(files, size)):
        if img is None:
            raise SubmissionError(f"test image {f} cannot be decoded; every test image needs a prediction, "
                                  "so restore the file from the competition's data")
        pixels.append(img)
    return np.stack(pixels)


def best_checkpoints(runs_dir: Path, top: int) -> list[Path]:
    """best.pt of the `top` finished runs with the best validation accuracy on the saved split and the 10 classes."""
    runs = runs_on_split(runs_dir, "", COMPETITION_CLASSES)
    if not runs:
        raise SubmissionError(f"no finished runs on {runs_dir / 'split.json'} and the {len(COMPETITION_CLASSES)} "
                              "competition classes; train models first or pass --ckpt")
    return [r["run_dir"] / "best.pt" for r in runs[:top]]


def upload(path: Path, message: str, competition: str) -> str:
    """Submit a CSV with the official kaggle client; returns the server's message or raises SubmissionError."""
    try:
        # kaggle authenticates at import time; without credentials it prints a help text and carries on
        # unauthenticated, so authenticate explicitly (quietly) and turn its SystemExit into advice.
        with contextlib.redirect_stdout(io.StringIO()):
            import kaggle
            kaggle.api.authenticate()
    except (Exception, SystemExit) as e:
        reason = str(e).strip()
        detail = reason.splitlines()[0] if reason and not isinstance(e, SystemExit) else "no credentials"
        raise SubmissionError(
            f"the kaggle client could not authenticate ({detail}); put your API token in ~/.kaggle/kaggle.json "
            "(Kaggle > Settings > Create New Token) or set KAGGLE_USERNAME and KAGGLE_KEY, "
            "or use --no-upload") from None
    try:
        response = kaggle.api.competition_submit(str(path), message, competition, quiet=True)
    except Exception as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        server = _server_message(e)
        if status in (401, 403):
            raise SubmissionError(
                f"Kaggle refused the submission to {competition!r} (HTTP {status}: {server}); check the competition "
                "name, your credentials, and that you accepted the competition's rules on its web page") from None
        if status is not None:
            raise SubmissionError(f"Kaggle answered HTTP {status} for {competition!r}: {server}") from None
        raise SubmissionError(f"could not reach Kaggle ({type(e).__name__}: {server}); check your network, "
                              f"the CSV is kept at {path}") from None
    text = getattr(response, "message", "") or ""
    # A failed upload step does not raise: the client returns this message instead.
    if text == getattr(kaggle.api, "COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE", None):
        raise SubmissionError(f"the upload of {path} failed ({text}); the CSV is kept, try again later")
    return text


def _server_message(e: Exception) -> str:
    response = getattr(e, "response", None)
    if response is not None:
        try:
            body = response.json()
            return str(body.get("message") or body.get("error") or body)
        except ValueError:
            return (response.text or "").strip()[:300] or str(e)
    return str(e).strip().splitlines()[0] if str(e).strip() else repr(e)


def row_order(files: list[Path], ids: list[str], args) -> tuple[list[str], list[int], list[str]]:
    """(columns, which test image each CSV row holds, the sample's labels): the sample's order, else by id."""
    columns = [c.strip() for c in args.columns.split(",")]
    if len(columns) != 2 or not all(columns):
        raise SubmissionError(f"--columns {args.columns!r} must name two columns, e.g. ID,Label")
    if not args.sample_submission:
        order = sorted(range(len(files)), key=lambda k: int(ids[k])) if args.id_form == "index" else range(len(files))
        return columns, list(order), []
    columns, sample_ids, sample_labels = read_sample(Path(args.sample_submission))
    position = {i: k for k, i in enumerate(ids)}
    unknown = [i for i in sample_ids if i not in position]
    if unknown or len(sample_ids) != len(ids):
        raise SubmissionError(
            f"the sample submission's ids do not match the {len(ids)} test images with --id-form {args.id_form} "
            f"(first unmatched: {', '.join(unknown[:3]) or 'count differs'}); try another --id-form or --test-dir")
    return columns, [position[i] for i in sample_ids], sample_labels


class Rows:
    """The CSV every submission writes: its columns, the test images' ids in row order, the labels allowed."""

    def __init__(self, columns: list[str], ids: list[str], order: list[int], allowed: list[str]):
        self.columns, self.ids, self.order, self.allowed = columns, ids, order, allowed

    def write(self, out: Path, vocab: list[str], pred: np.ndarray, what: str) -> None:
        """Validate the CSV of one model's (or one ensemble's) predicted class indices into vocab, then write it."""
        text = render_csv(self.columns, [(self.ids[k], vocab[pred[k]]) for k in self.order])
        problems = validate_submission(text, self.columns, [self.ids[k] for k in self.order], self.allowed)
        if problems:  # before writing: a previous valid CSV at `out` stays as it was
            raise SubmissionError(f"the submission of {what} is not valid: " + "; ".join(problems[:5]) +
                                  f"; {out} left as it was, nothing uploaded")
        atomic_write_text(out, text)
        counts = np.bincount(pred, minlength=len(vocab))
        print(f"{out}: {len(self.order)} rows, valid; {what}; predicted per class: "
              f"{dict(zip(vocab, counts.tolist()))}")


def main(args) -> None:
    device = resolve_device(args.device)
    test_dir = Path(args.test_dir or os.environ.get("ANIMALS10_TEST_DIR") or DEFAULT_TEST_DIR)
    files = list_test_images(test_dir)
    if not args.no_upload and not args.competition:
        raise SubmissionError("no competition given; "
                              "pass --competition SLUG (or set KAGGLE_COMPETITION), or --no-upload")
    ids = image_ids(files, args.id_form)
    columns, order, sample_labels = row_order(files, ids, args)
    vocabulary = competition_vocabulary(sample_labels, args.label_form, args.sample_submission)
    chosen = [Path(p) for p in args.ckpt] if args.ckpt else best_checkpoints(Path(args.runs_dir), args.top)
    # Every checkpoint is checked before the first prediction, so a wrong one fails in seconds, not after the others.
    ckpts = [load_checkpoint(path) for path in chosen]
    labels = [checkpoint_labels(p, c["classes"], args.label_form, vocabulary) for p, c in zip(chosen, ckpts)]
    decoded: dict[int, np.ndarray] = {}  # models of one size share one decode of the test folder

    def probabilities(ckpt: dict) -> np.ndarray:
        if ckpt["img_size"] not in decoded:
            decoded[ckpt["img_size"]] = decode_folder(files, ckpt["img_size"])
        return Predictor(ckpt, device).probabilities(decoded[ckpt["img_size"]], args.batch_size, args.tta)

    rows = Rows(columns, ids, order, vocabulary[0])
    tta = "-tta" if args.tta else ""
    written = []
    if args.ensemble:
        if len(ckpts) < 2:
            raise SubmissionError("--ensemble averages the predictions of several models; pass two or more "
                                  "checkpoints with --ckpt, or --top 2 or more")
        vocab = labels[0]  # every checkpoint's labels are the same set (checkpoint_labels): align them by name
        probs = np.mean([probabilities(c)[:, [mine.index(v) for v in vocab]] for c, mine in zip(ckpts, labels)], 0)
        out = Path(args.out_dir) / f"ensemble-{len(ckpts)}{tta}.csv"
        members = ", ".join(f"{c['arch']}/{c['mode']} val {c['best_val_acc']:.4f}" for c in ckpts)
        rows.write(out, vocab, probs.argmax(1), f"the mean probabilities of {len(ckpts)} models ({members})")
        written.append((out, f"ensemble of {len(ckpts)}: {members}" + (" tta" if args.tta else "")))
    for path, ckpt, vocab in ([] if args.ensemble else zip(chosen, ckpts, labels)):
        name = path.parent.name if path.parent.name != Path(args.runs_dir).name else path.stem
        if "compression" in ckpt:  # <run>/compressed/int8.pt, pruned-50.pt, ...: one CSV each
            name = f"{path.parent.parent.name}-{path.stem}"
        out = Path(args.out_dir) / f"{name}{tta}.csv"
        rows.write(out, vocab, probabilities(ckpt).argmax(1),
                   f"{ckpt['arch']}/{ckpt['mode']} val acc {ckpt['best_val_acc']:.4f} ({path})")
        written.append((out, f"{name} {ckpt['arch']}/{ckpt['mode']} val_acc={ckpt['best_val_acc']:.4f}"
                        + (" tta" if args.tta else "")))
    if args.no_upload:
        print(f"--no-upload: {len(written)} CSV(s) written and validated in {args.out_dir}")
        return
    for out, message in written:
        reply = upload(out, message, args.competition)
        print(f"uploaded {out} to {args.competition}: {reply}")


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())
