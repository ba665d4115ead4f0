"""The assignment's written questions, each answered from a study's measured numbers, for the notebook's markdown.

QUESTIONS holds the questions in the course's order (part 1 steps 10, 16, 19-21; part 2 steps 12, 14-17);
course_answers(rep) writes one Markdown answer per question from the report's finished runs, so every figure an
answer quotes is one the study measured, with its epochs and device.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from common.data import display_name
from common.formatting import f_acc, f_g, f_int, f_rate, f_time, is_num
from common.study_runs import arch_key, delta, macro_f1, metric, mode_name, model_name, recalls, train_time

if TYPE_CHECKING:
    from common.report import Report

QUESTIONS = {  # key -> (the course's step, the question)
    "p1_choices": ("Part 1, step 10", "Why this activation function, loss function and optimizer?"),
    "p1_tuning": ("Part 1, step 16", "How were the learning rate and the batch size chosen?"),
    "p1_findings": ("Part 1, step 19", "What did the experiments with the CNN trained from scratch find?"),
    "p1_test": ("Part 1, step 20", "How does the best from-scratch model do on the test set?"),
    "p1_challenges": ("Part 1, step 21", "What were the challenges, and what would improve the model?"),
    "p2_curves": ("Part 2, step 12", "How do all the models' training curves compare?"),
    "p2_vs_scratch": ("Part 2, step 14", "How do the transfer models compare with the scratch CNN in accuracy, "
                                         "training efficiency and resource use?"),
    "p2_pros_cons": ("Part 2, step 15", "What are the advantages and disadvantages of transfer learning against "
                                        "training from scratch?"),
    "p2_practical": ("Part 2, step 16", "What practical considerations decide between them: dataset size, "
                                        "compute, task complexity?"),
    "p2_summary": ("Part 2, step 17", "Summary."),
}


def course_answers(rep: Report) -> dict[str, str]:
    """Markdown of every question of QUESTIONS, its answer drawn from the study's finished runs."""
    scratch = [r for r in rep.done if arch_key(r) == "scratch_cnn"]
    transfer = [r for r in rep.done if arch_key(r) != "scratch_cnn"]
    writers = {"p1_choices": _choices, "p1_tuning": _tuning, "p1_findings": _findings, "p1_test": _test,
               "p1_challenges": _challenges}
    out = {key: (writers[key](rep, scratch) if scratch else "No CNN trained from scratch finished in this study.")
           for key in writers}
    both = {"p2_curves": _curves, "p2_vs_scratch": _vs_scratch, "p2_pros_cons": _pros_cons,
            "p2_practical": _practical, "p2_summary": _summary}
    for key, write in both.items():
        out[key] = (write(rep, scratch, transfer) if scratch and transfer else
                    "This study has no finished " + ("transfer" if scratch else "from-scratch") + " run to compare.")
    return {key: f"### {QUESTIONS[key][0]}: {QUESTIONS[key][1]}\n\n{out[key]}" for key in QUESTIONS}


def _config(r: dict, key: str, default=None):
    return (r.get("config") or {}).get(key, default)


def _epochs(r: dict, key: str) -> list:
    """One history field of the run, epoch by epoch."""
    return [h.get(key) for h in metric(r, "history") or []]


def _first(r: dict, key: str):
    return (_epochs(r, key) or [None])[0]


def _last(r: dict, key: str):
    return (_epochs(r, key) or [None])[-1]


def _fit_gap(r: dict) -> float | None:
    """Last epoch's training accuracy minus its validation accuracy: how much the model fits the training set only."""
    return delta(_last(r, "train_acc"), _last(r, "val_acc"))


def _near_best(r: dict) -> int | None:
    """The first epoch (1-based) whose validation accuracy is 95% of the run's best."""
    vals = [v for v in _epochs(r, "val_acc") if is_num(v)]
    return next((i + 1 for i, v in enumerate(vals) if v >= 0.95 * max(vals)), None) if vals else None


def _choices(rep: Report, scratch: list[dict]) -> str:
    r = scratch[0]
    opt, sched = _config(r, "opt", "adamw"), _config(r, "sched", "cosine")
    gap = _fit_gap(r)
    return (f"- **Activation: ReLU** after every convolution and its BatchNorm. It is cheap and does not saturate "
            "for positive inputs, so the gradient reaches the first layers of a network that starts from random "
            "weights; BatchNorm before it keeps each layer's inputs centred and scaled, so the units neither all "
            "switch off nor blow up.\n"
            f"- **Loss: cross-entropy** (label smoothing {f_g(_config(r, 'label_smoothing', 0))}): the negative "
            "log-probability the softmax gives the right class, the maximum-likelihood loss for one label out of ten; "
            "its gradient is the predicted minus the true distribution, so it keeps pushing until the right class "
            "wins, which is what accuracy counts.\n"
            f"- **Optimizer: {opt.upper() if opt == 'sgd' else 'AdamW'}** (peak lr {f_g(metric(r, 'lr'))}, weight "
            f"decay {f_g(_config(r, 'weight_decay'))}, {sched} schedule with {f_g(_config(r, 'warmup_epochs', 0))} "
            "warm-up epochs): per-parameter step sizes converge quickly from a random start without a hand-tuned "
            f"momentum schedule, and decoupled weight decay regularises the {f_int(metric(r, 'trainable_params'))} "
            "weights.\n\n"
            f"Measured on the best from-scratch run ({r['label']}, {rep.setting([r])}): best validation accuracy "
            f"{f_acc(metric(r, 'best_val_acc'))} at epoch {f_g(metric(r, 'best_epoch'))}"
            + (f", last epoch's training accuracy {f_acc(_last(r, 'train_acc'))} against validation "
               f"{f_acc(_last(r, 'val_acc'))} ({gap * 100:+.1f} pp)" if is_num(gap) else "") + ".")


def _train_images(r: dict):
    """Training images of the run's split: --split's first count times the classes (None for fractions)."""
    sizes, classes = str(_config(r, "split", "")).split(","), _config(r, "classes") or []
    return int(sizes[0]) * len(classes) if len(sizes) == 3 and sizes[0].isdigit() and classes else None


def _tuning(rep: Report, scratch: list[dict]) -> str:
    scratch = rep.group("scratch_grid") or scratch  # the grid's runs, when the plan has one
    lrs = sorted({metric(r, "lr") for r in scratch if is_num(metric(r, "lr"))})
    batches = sorted({metric(r, "batch_size") for r in scratch if is_num(metric(r, "batch_size"))})
    rows = "; ".join(f"lr {f_g(metric(r, 'lr'))}, batch {f_int(metric(r, 'batch_size'))}: val "
                     f"{f_acc(metric(r, 'best_val_acc'))}, test {f_acc(metric(r, 'test_acc'))}"
                     for r in sorted(scratch, key=lambda r: (metric(r, "batch_size") or 0, metric(r, "lr") or 0)))
    best = scratch[0]
    text = (f"By validation accuracy, never the test set: the runs tried {len(lrs)} learning rate(s) and "
            f"{len(batches)} batch size(s) ({rep.setting(scratch)}): {rows}. The chosen configuration is "
            f"lr {f_g(metric(best, 'lr'))} with batch size {f_int(metric(best, 'batch_size'))} "
            f"(best validation accuracy {f_acc(metric(best, 'best_val_acc'))}).")
    if len(lrs) > 1:
        worst = min(scratch, key=lambda r: metric(r, "best_val_acc") or 0)
        text += (f" The learning rate matters: the worst run (lr {f_g(metric(worst, 'lr'))}) is "
                 f"{rep.spread.noisy(delta(metric(worst, 'best_val_acc'), metric(best, 'best_val_acc')))} on "
                 "validation.")
    if len(batches) == 1:
        text += (f" The batch size stayed {f_int(batches[0])}: on a CPU a larger batch does not train faster per "
                 "image, and with a few thousand training images a smaller one gives more updates per epoch; "
                 "the full plan's grid varies it too.")
    return text


def _findings(rep: Report, scratch: list[dict]) -> str:
    r = scratch[0]
    half, gap = _near_best(r), _fit_gap(r)
    return (f"The best CNN trained from scratch ({r['label']}) reaches validation accuracy "
            f"{f_acc(metric(r, 'best_val_acc'))} and test accuracy {f_acc(metric(r, 'test_acc'))} after "
            f"{f_g(metric(r, 'epochs_run'))} epochs ({f_time(train_time(r))} of training on "
            f"{metric(r, 'device') or rep.study.get('device')})."
            + (f" It reaches 95% of its best validation accuracy by epoch {half} of {len(_epochs(r, 'val_acc'))}, "
               "so most of the training time buys the last few points." if half else "")
            + (f" At the end it fits the training images {gap * 100:+.1f} pp better than the validation images"
               + (": it has started to memorise them." if gap > 0.05 else ": augmentation keeps it from memorising.")
               if is_num(gap) else "")
            + f" {len(scratch)} from-scratch configuration(s) finished; their spread is in the answer above.")


def _confused(r: dict) -> tuple[str, str, int] | None:
    """The most frequent mistake on the test split: (true class, predicted class, count)."""
    ev = r.get("eval") or {}
    cm, classes = ev.get("confusion_matrix"), ev.get("classes") or []
    if not cm or len(cm) != len(classes):
        return None
    cm = np.array(cm, dtype=float)
    np.fill_diagonal(cm, 0)
    i, j = np.unravel_index(int(cm.argmax()), cm.shape)
    return (display_name(classes[i]), display_name(classes[j]), int(cm[i, j])) if cm[i, j] else None


def _test(rep: Report, scratch: list[dict]) -> str:
    r = scratch[0]
    rec = recalls(r)
    text = (f"On the {f_int((r.get('eval') or {}).get('n'))} test images, which no choice looked at, the best "
            f"from-scratch model ({r['label']}) is right on {f_acc(metric(r, 'test_acc'))} of them, macro F1 "
            f"{f_acc(macro_f1(r))} (one image is {100 / rep.n_test:.2f} pp)." if rep.n_test else "")
    if rec:
        best, worst = max(rec, key=rec.get), min(rec, key=rec.get)
        text += f" Recall is highest for {best} ({f_acc(rec[best])}) and lowest for {worst} ({f_acc(rec[worst])})."
    pair = _confused(r)
    if pair:
        text += f" Its most frequent mistake is {pair[0]} taken for {pair[1]} ({pair[2]} images)."
    return text or "No test evaluation was recorded."


def _challenges(rep: Report, scratch: list[dict]) -> str:
    r = scratch[0]
    gap = _fit_gap(r)
    per_epoch = metric(r, "seconds_per_epoch")
    lines = [f"- **Compute:** an epoch took {f_time(per_epoch)} on {metric(r, 'device') or '?'} "
             f"({f_rate(metric(r, 'train_img_per_s'))} training images/s), so one configuration costs "
             f"{f_time(train_time(r))}; the study caches the decoded images once and reuses them in every run.",
             "- **Small data:** ten classes from a few hundred images each; "
             + (f"the last epoch fits the training images {gap * 100:+.1f} pp better than the validation ones, "
                if is_num(gap) else "")
             + "so augmentation (random-resized crops, flips, colour jitter) and weight decay carry the "
               "generalisation.",
             "- **Similar classes:** " + ("{} and {} are the pair it confuses most.".format(*pair[:2])
                                          if (pair := _confused(r)) else "see the confusion matrix above.")]
    lines.append("- **What would improve it:** start from pretrained weights (part 2 measures how much that gives), "
                 "train longer at the chosen learning rate with stronger augmentation (MixUp/CutMix, RandAugment), "
                 "average several seeds or models, and look at the mistakes Grad-CAM explains.")
    return "\n".join(lines)


def _curves(rep: Report, scratch: list[dict], transfer: list[dict]) -> str:
    rows = "; ".join(f"{r['label']}: {f_acc(metric(r, 'best_val_acc'))} at epoch {f_g(metric(r, 'best_epoch'))} "
                     f"of {f_g(metric(r, 'epochs_run'))} (95% of it by epoch {_near_best(r)})"
                     for r in [*transfer[:3], scratch[0]])
    t, s = transfer[0], scratch[0]
    return (f"The validation curves of every run are in the figure above ({rep.setting(rep.done)}). "
            f"Best validation accuracy, the epoch it came and how fast each run got near it: {rows}. The pretrained "
            f"models start high, {f_acc(_first(t, 'val_acc'))} after the first epoch for {t['label']} against "
            f"{f_acc(_first(s, 'val_acc'))} for {s['label']}, and flatten within a few epochs; the scratch CNN "
            "climbs for most of its epochs and ends lower.")


def _vs_scratch(rep: Report, scratch: list[dict], transfer: list[dict]) -> str:
    s = scratch[0]
    lines = ["| run | test acc | vs best scratch | train time | trainable params | peak MiB | train img/s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in [*transfer, s]:
        lines.append(f"| {r['label']} | {f_acc(metric(r, 'test_acc'))} | "
                     f"{rep.spread.noisy(delta(metric(r, 'test_acc'), metric(s, 'test_acc'))) if r is not s else '—'}"
                     f" | {f_time(train_time(r))} | {f_int(metric(r, 'trainable_params'))} | "
                     f"{f_int(metric(r, 'peak_memory_mb'))} | {f_rate(metric(r, 'train_img_per_s'))} |")
    t = transfer[0]
    ratio = train_time(s) / train_time(t) if is_num(train_time(s)) and train_time(t) else None
    reused = metric(t, "feature_extraction_seconds") == 0  # it trained on features an earlier run had cached
    return (f"Measured {rep.setting(rep.done)}. The best transfer model, {t['label']} ({model_name(t)} "
            f"{mode_name(t)}), is {rep.spread.noisy(delta(metric(t, 'test_acc'), metric(s, 'test_acc')))} on the test "
            f"set against the best from-scratch CNN"
            + (f" and trained in {ratio:.1f}× less time" if ratio and ratio >= 1 else
               f" and took {1 / ratio:.1f}× the training time" if ratio else "")
            + (" (on backbone features an earlier run had extracted and cached: that run's time includes the "
               "extraction)" if reused else "")
            + ". Train time is wall-clock on this machine; peak MiB is the process's resident memory on a CPU, "
              "CUDA memory on a GPU.\n\n" + "\n".join(lines))


def _pros_cons(rep: Report, scratch: list[dict], transfer: list[dict]) -> str:
    s, t = scratch[0], transfer[0]
    head = min(transfer, key=lambda r: metric(r, "trainable_params") or float("inf"))
    return (f"- **Advantages, measured here:** accuracy ({f_acc(metric(t, 'test_acc'))} against "
            f"{f_acc(metric(s, 'test_acc'))} test), far fewer epochs to a good model, and, for a frozen backbone, "
            f"few weights to train: {head['label']} trains {f_int(metric(head, 'trainable_params'))} parameters and "
            f"reaches {f_acc(metric(head, 'test_acc'))}. ImageNet's features (edges, textures, animal parts) fit "
            "these photos, so the new task needs little data.\n"
            "- **Disadvantages:** the network is ImageNet's, not sized for this task (a pretrained model is "
            "larger and slower at inference than a small CNN); its input size and normalisation are fixed; it needs "
            "the pretrained weights (this study's notes say where they came from); and what it learnt on ImageNet's "
            "photos can carry over to the training photo sets rather than the animals, so accuracy on photos from "
            "other sources can be lower than the test split says. Training from scratch has none of these ties, "
            "but needs much more data and compute to learn the same features.")


def _practical(rep: Report, scratch: list[dict], transfer: list[dict]) -> str:
    s, t = scratch[0], transfer[0]
    device = metric(t, "device") or rep.study.get("device")
    n = _train_images(s)
    return (f"- **Dataset size:** {f'{f_int(n)} training images' if n else 'a few hundred images per class'} is "
            "small for learning features from pixels; a pretrained backbone brings features learnt from over a "
            "million images, which is why the transfer models need only a few epochs.\n"
            f"- **Compute:** on {device}, the best transfer run trained in {f_time(train_time(t))} and the best "
            f"from-scratch run in {f_time(train_time(s))}; training only the head on cached features costs seconds, "
            "so it fits a laptop CPU, while full fine-tuning costs a forward and backward pass through the whole "
            "pretrained network every step.\n"
            "- **Task complexity:** ten everyday animal classes are close to ImageNet's own, so even a frozen "
            "backbone separates them; a task far from natural photos (medical scans, spectrograms) would need more "
            "of the network retrained, or training from scratch with much more data.")


def _summary(rep: Report, scratch: list[dict], transfer: list[dict]) -> str:
    s, t = scratch[0], transfer[0]
    return (f"The best model is {t['label']} ({model_name(t)} {mode_name(t)}, test accuracy "
            f"{f_acc(metric(t, 'test_acc'))}); the best CNN trained from scratch reaches "
            f"{f_acc(metric(s, 'test_acc'))}, {rep.spread.noisy(delta(metric(s, 'test_acc'), metric(t, 'test_acc')))}"
            f" ({rep.setting([s, t])}). With a few hundred images per class and a CPU, transfer learning is the "
            "better choice: it is more accurate and cheaper to train; training from scratch teaches how the pieces "
            "work and becomes competitive only with far more data and compute.")
