"""The study's plans as plain data: which runs to train, with which arguments, and which question each answers.

A plan is a dict (or a JSON file of the same shape, passed as `study.py --plan FILE.json`):

    {"name": "quick", "description": "...",
     "robustness": {"severities": "1,3,5", "ood_count": 300, "faithfulness": 5, "sanity": 2},
     "compression": {"methods": "int8,prune", "sparsities": "0.3,0.5", "finetune_epochs": 1,
                     "finetune_fraction": 0.2},   # optional: compress.py on the tested transfer run
     "groups": {"scratch_grid": {"title": ..., "question": ..., "vars": ["lr", "batch_size"]}, ...},
     "runs": [{"name": "scratch-lr0.001-bs32", "script": "part1_scratch_cnn.py", "args": ["--lr", "0.001", ...],
               "groups": ["scratch_grid", "regularization"], "vars": {"lr": 0.001, "batch_size": 32, ...}}, ...]}

study.py adds --data-dir, --output-dir, --tag <plan>-<name> and, for the part 2 scripts, --weights to every
run. A run may belong to several groups (the baseline of one experiment is a point of another), so it is
trained once. Group keys are the experiments of common/sections.py (SECTIONS; a group it does not know gets
a plain runs table in the report). "script" must be the script of an architecture in common/architectures.py (a
file of the repository, named without a folder).

A run may carry "seeds": [0, 1, 2]: it stands for one run per seed (expand_seeds), in the same groups, with
"--seed N" added and the name suffixed "-sN"; seed 0 keeps the plain name and arguments, so a plan that gains
seeds still finds the runs it trained before. Every copy records "repeat" (the plain name) and vars["seed"], so
the report shows the copies as one configuration, mean ± std.
"""
from __future__ import annotations

import itertools

from common.architectures import ARCHS
from common.cli import DataError
from common.lora import RANK as LORA_RANK
from common.masking import FRACTION as MASK_FRACTION
from common.masking import SELECTIONS as MASK_SELECTIONS
from common.sections import GROUPS

STRATEGY_ARGS = {  # strategy -> --mode and extra arguments of the part 2 scripts
    "fc": ["--mode", "fc"], "blocks34": ["--mode", "blocks34"], "full": ["--mode", "full"], "bn": ["--mode", "bn"],
    "gradual": ["--mode", "gradual"], "discriminative": ["--mode", "full", "--lr-decay", "0.5"],
}
REGULARIZATION_ARGS = {
    "no_label_smoothing": ["--label-smoothing", "0"], "mixup": ["--mixup", "0.2"], "cutmix": ["--cutmix", "1.0"],
    "randaugment": ["--auto-augment", "randaugment"], "trivialaugment": ["--auto-augment", "trivialaugment"],
}


def _run(name: str, model: str, args: list[str], groups: list[str], label: str, *, seeds: list[int] | None = None,
         **vars_) -> dict:
    """One run of a plan; seeds (see expand_seeds) repeats it over those seeds."""
    run = {"name": name, "label": f"{ARCHS[model].display} {label}", "script": ARCHS[model].script,
           "args": [str(a) for a in args], "groups": groups, "vars": {"model": model, **vars_}}
    return {**run, "seeds": list(seeds)} if seeds else run


def _merge(runs: list[dict]) -> list[dict]:
    """One entry per distinct (script, args): a run listed by several experiments is trained once (over the seeds
    any of them asks for)."""
    merged: dict[tuple, dict] = {}
    for r in runs:
        key = (r["script"], tuple(r["args"]))
        if key in merged:
            merged[key]["groups"] += [g for g in r["groups"] if g not in merged[key]["groups"]]
            merged[key]["vars"].update(r["vars"])
            if "seeds" in r:
                merged[key]["seeds"] = r["seeds"]
        else:
            merged[key] = r
    return list(merged.values())


def expand_seeds(runs: list[dict]) -> list[dict]:
    """One run per entry of a run's "seeds" (seed 0 keeps the plain name and arguments); a DataError for bad seeds."""
    out = []
    for r in runs:
        seeds = r.get("seeds")
        if seeds is None:
            out.append(r)
            continue
        if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
            raise DataError(f"run {r.get('name')!r}: \"seeds\" must be a list of distinct integers >= 0, "
                            f"not {seeds!r}; e.g. \"seeds\": [0, 1, 2]")
        if "--seed" in r.get("args", []):
            raise DataError(f"run {r.get('name')!r} has both \"seeds\" and --seed in its args; keep one of them")
        base = {k: v for k, v in r.items() if k != "seeds"}
        for s in seeds:
            out.append({**base, "name": base["name"] + (f"-s{s}" if s else ""), "repeat": base["name"],
                        "label": base.get("label", base["name"]) + (f", seed {s}" if s else ""),
                        "args": [*base.get("args", []), *(["--seed", str(s)] if s else [])],
                        "groups": list(base.get("groups", [])), "vars": {**base.get("vars", {}), "seed": s}})
    return out


def _semi_runs(model: str, args: list[str], fractions: list[float]) -> list[dict]:
    """The semi-supervised curve: pseudo-labels and labelled images only at each labelled fraction, and all labels."""
    runs = [_run(f"{model}-semi-all", model, args, ["semi"], "all labels", labels="all labels",
                 labelled_fraction=1.0)]
    for f in fractions:
        only = ["--labelled-fraction", f, "--unlabelled-weight", "0"]
        runs.append(_run(f"{model}-semi{f:g}-labelled", model, [*args, *only], ["semi"],
                         f"{f:.0%} labelled, labelled images only", labels="labelled only", labelled_fraction=f))
        runs.append(_run(f"{model}-semi{f:g}-pseudo", model, [*args, "--labelled-fraction", f], ["semi"],
                         f"{f:.0%} labelled, pseudo-labels", labels="pseudo-labels", labelled_fraction=f))
    return runs


def make_plan(name: str, description: str, *, data: list[str], scratch: list[str], scratch_lrs: list[float],
              batch_sizes: list[int],
              base_lr: float, base_bs: int, strategies: dict[str, list[str]], strategy_args: list[str],
              lr_model: str, lr_strategy: str, lr_args: list[str], transfer_lrs: list[float], base_transfer_lr: float,
              fractions: list[float], imbalance_ratio: float | None, severities: str, ood_count: int,
              notes: list[str] = (), strategy_extra: dict[tuple[str, str], list[str]] | None = None,
              seeds: dict[str, list[int]] | None = None, regularization: bool = True, faithfulness: int = 0,
              sanity: int = 0, depth: dict[str, list[int]] | None = None, peft: list[str] = (),
              semi: tuple[str, list[str], list[float]] | None = None, compression: dict | None = None) -> dict:
    """Expand the experiments of the assignment into one list of runs sharing their common points.

    `data` goes to every run (split options: the first run draws runs/split.json, the others reuse it).
    `strategy_extra` adds arguments to one (model, strategy) run; `seeds` repeats the scratch baseline
    ("scratch") and the transfer baseline ("transfer") over those seeds. regularization=False leaves out the
    regularization runs, fractions of only 1.0 the data-fraction runs, and imbalance_ratio None the imbalance runs.
    faithfulness and sanity are how many test images gradcam.py scores the explained runs' methods on, by
    deletion/insertion and by cascading randomisation (0: not at all). depth gives, per model, the block counts L
    its top-mode runs train (the depth curve), each beside that model's gradual run, all with strategy_args.
    peft names the models whose parameter-efficient runs (LoRA, and masked fine-tuning by each selection) are
    compared with their fc, bn and full runs, all like the strategies. semi = (model, args, labelled fractions): at
    each fraction that model trains with pseudo-labels and on the labelled images alone (the same steps), and once
    with all labels, all with args. compression (compress.py's methods, sparsities, finetune_epochs and
    finetune_fraction) compresses the tested transfer run.
    """
    strategy_extra, seeds = strategy_extra or {}, seeds or {}
    some = [f for f in fractions if f < 1]
    scratch_groups = ["regularization"] * regularization + ["fractions"] * bool(some)
    transfer_groups = ["fractions"] * bool(some) + ["imbalance"] * (imbalance_ratio is not None)
    if set(seeds) - {"scratch", "transfer"}:
        raise DataError(f"make_plan seeds {sorted(seeds)}: the repeatable runs are 'scratch' and 'transfer'")
    runs = []
    for lr, bs in itertools.product(scratch_lrs, batch_sizes):
        runs.append(_run(f"scratch-lr{lr:g}-bs{bs}", "scratch_cnn", [*scratch, "--lr", lr, "--batch-size", bs],
                         ["scratch_grid"], f"lr {lr:g}, batch {bs}", lr=lr, batch_size=bs))
    base = [*scratch, "--lr", base_lr, "--batch-size", base_bs]
    runs.append(_run(f"scratch-lr{base_lr:g}-bs{base_bs}", "scratch_cnn", base, scratch_groups,
                     f"lr {base_lr:g}, batch {base_bs}", seeds=seeds.get("scratch"), option="baseline",
                     fraction=1.0, lr=base_lr, batch_size=base_bs))
    for option, extra in REGULARIZATION_ARGS.items() if regularization else ():
        runs.append(_run(f"scratch-{option}", "scratch_cnn", [*base, *extra], ["regularization"],
                         option.replace("_", " "), option=option))
    def strategy_run(model: str, s: str, groups: list[str], **vars_) -> dict:
        """The strategies' run of (model, s); another group listing it shares it (merged below)."""
        more = strategy_extra.get((model, s), [])
        return _run(f"{model}-{s}", model, [*STRATEGY_ARGS[s], *more, *strategy_args], groups,
                    s + (", cached features" if "--cache-features" in more else ""), strategy=s, **vars_)

    for model, names in strategies.items():
        runs += [strategy_run(model, s, ["strategies"]) for s in names]
    for model, depths in (depth or {}).items():
        for blocks in depths:
            runs.append(_run(f"{model}-top{blocks}", model, ["--mode", "top", "--blocks", blocks, *strategy_args],
                             ["depth"], f"top {blocks} block(s)", strategy="top", blocks=blocks))
        runs.append(strategy_run(model, "gradual", ["depth"], blocks=None))
    for model in peft:
        runs += [strategy_run(model, s, ["peft"]) for s in ("fc", "bn", "full")]
        runs.append(_run(f"{model}-lora", model, ["--mode", "lora", *strategy_args], ["peft"],
                         f"LoRA rank {LORA_RANK}", strategy="lora"))
        for how in MASK_SELECTIONS:
            runs.append(_run(f"{model}-masked-{how}", model, ["--mode", "masked", "--mask-select", how,
                                                              *strategy_args], ["peft"],
                             f"masked {MASK_FRACTION:.0%}, by {how}", strategy=f"masked-{how}"))
    if semi:
        runs += _semi_runs(*semi)
    lr_base = [*STRATEGY_ARGS[lr_strategy], *lr_args]
    for lr in transfer_lrs:
        runs.append(_run(f"{lr_model}-{lr_strategy}-lr{lr:g}", lr_model, [*lr_base, "--lr", lr], ["transfer_lr"],
                         f"{lr_strategy}, lr {lr:g}", strategy=lr_strategy, lr=lr))
    transfer_base = [*lr_base, "--lr", base_transfer_lr]
    runs.append(_run(f"{lr_model}-{lr_strategy}-lr{base_transfer_lr:g}", lr_model, transfer_base,
                     transfer_groups, f"{lr_strategy}, lr {base_transfer_lr:g}", seeds=seeds.get("transfer"),
                     strategy=lr_strategy, lr=base_transfer_lr, fraction=1.0, ratio=1, remedy="none"))
    for f in some:
        runs.append(_run(f"scratch-fraction{f:g}", "scratch_cnn", [*base, "--fraction", f], ["fractions"],
                         f"{f:.0%} of the training data", fraction=f))
        runs.append(_run(f"{lr_model}-{lr_strategy}-fraction{f:g}", lr_model, [*transfer_base, "--fraction", f],
                         ["fractions"], f"{lr_strategy}, {f:.0%} of the training data", fraction=f))
    for remedy in ("none", "weights", "oversample") if imbalance_ratio is not None else ():
        runs.append(_run(f"{lr_model}-{lr_strategy}-imbalance{imbalance_ratio:g}-{remedy}", lr_model,
                         [*transfer_base, "--imbalance", imbalance_ratio, "--balance", remedy], ["imbalance"],
                         f"{lr_strategy}, imbalance {imbalance_ratio:g}, remedy {remedy}", ratio=imbalance_ratio,
                         remedy=remedy))
    for r in runs:
        r["args"] = [*data, *r["args"]]
    runs = expand_seeds(_merge(runs))  # a repeated baseline is often also a point of another group: merged first
    used = {g for r in runs for g in r["groups"]}
    robustness = {"severities": severities, "ood_count": ood_count, "faithfulness": faithfulness, "sanity": sanity}
    plan = {"name": name, "description": description, "robustness": robustness,
            "notes": list(notes), "groups": {k: v for k, v in GROUPS.items() if k in used}, "runs": runs}
    return {**plan, "compression": compression} if compression else plan


# The assignment's split: 300/75/75 of 450 images per class, near-duplicate groups kept whole (the default).
SPLIT = ["--per-class", "450", "--split", "300,75,75"]
SPLIT_NOTE = ("The split is 300/75/75 images per class. Byte-identical copies are left out and each group of near "
              "duplicates goes whole into train, val or test (runs/split.json lists the groups), so no near duplicate "
              "straddles the split.")


SEMI_FRACTIONS = [0.01, 0.1, 0.5]  # the labelled fractions of the semi-supervised curve (1%: 3 images a class)


def quick(resnet18: bool = True) -> dict:
    """Minutes on a 2-core CPU: few epochs, 112 px crops for trained backbones, 224 px cached features for the head.

    resnet18=False leaves out the ResNet-18 strategies (fc on cached features, blocks34, full), for a machine
    that has no ResNet-18 weights; study.py then says so at the top of the report.
    """
    small = ["--img-size", "128", "--crop-size", "112"]
    strategies = {"mobilenet_v2": ["fc", "bn", "gradual", "full", "discriminative"]}
    if resnet18:
        strategies["resnet18"] = ["fc", "blocks34", "full"]
    return make_plan(
        "quick",
        "A smoke run of the whole study for a CPU: the scratch CNN and the fine-tuning strategies "
        f"({' and '.join(ARCHS[m].display for m in strategies)}) train for 5 and "
        "3 epochs on 112x112 crops of 128x128 images; the learning-rate, data-fraction and imbalance experiments "
        "train a MobileNetV2 head for 15 epochs on cached 224x224 ImageNet features, its baseline repeated over "
        "3 seeds; the depth curve trains MobileNetV2's last 1 to 3 blocks, and LoRA and masked fine-tuning train it, "
        "like the strategies; with 1%, 10% and 50% of the labels its head trains on cached features with "
        "pseudo-labels (FixMatch-style) and on the labelled images alone, beside all labels. Read the numbers "
        "for their ranking, not their level: every model here is far from converged.",
        data=SPLIT, scratch=[*small, "--epochs", "5"],
        notes=[SPLIT_NOTE, "The cached-feature runs of one network and size share one feature extraction, paid (and "
                           "counted in train time) by whichever of them ran first; the others' train time leaves it "
                           "out."], scratch_lrs=[3e-3, 1e-3, 3e-4], batch_sizes=[32, 64], base_lr=1e-3,
        base_bs=32, strategies=strategies, strategy_extra={("resnet18", "fc"): ["--cache-features"]},
        strategy_args=[*small, "--epochs", "3", "--unfreeze-every", "1"],
        lr_model="mobilenet_v2", lr_strategy="fc", lr_args=["--cache-features", "--epochs", "15"],
        transfer_lrs=[3e-4, 1e-3, 3e-3], base_transfer_lr=1e-3, fractions=[0.2, 0.5, 1.0], imbalance_ratio=10,
        severities="1,3,5", ood_count=300, seeds={"transfer": [0, 1, 2]}, faithfulness=5,
        sanity=2, depth={"mobilenet_v2": [1, 2, 3]}, peft=["mobilenet_v2"],
        semi=("mobilenet_v2", ["--mode", "fc", "--cache-features", "--epochs", "15", "--batch-size", "16"],
              SEMI_FRACTIONS),
        compression={"methods": "int8,prune", "sparsities": "0.3,0.5", "finetune_epochs": 1, "finetune_fraction": 0.2})


def full() -> dict:
    """The complete study at 224 px and full length: hours on a GPU, days on a CPU."""
    return make_plan(
        "full",
        "The complete study at the assignment's resolution (224x224 crops of 256x256 images): a 3x3 learning-rate x "
        "batch-size grid for the scratch CNN (40 epochs), every fine-tuning strategy for ResNet-18 and MobileNetV2 "
        "(15 epochs), the depth of fine-tuning as a curve (the last 1 block up to every block of both), LoRA and "
        "masked fine-tuning of both against their fc, bn and full runs, MobileNetV2 fine-tuned with 1%, 10% and "
        "50% of the labels with FixMatch-style pseudo-labels and on the labelled images alone, a "
        "learning-rate study of fully fine-tuned ResNet-18, data fractions, regularization and class imbalance; "
        "the scratch and the ResNet-18 baselines are repeated over 3 seeds.",
        data=SPLIT, notes=[SPLIT_NOTE], scratch=["--epochs", "40"], scratch_lrs=[1e-2, 1e-3, 1e-4],
        batch_sizes=[16, 32, 64], base_lr=1e-3,
        base_bs=32, strategies={"resnet18": ["fc", "bn", "blocks34", "gradual", "full", "discriminative"],
                                "mobilenet_v2": ["fc", "bn", "gradual", "full", "discriminative"]},
        strategy_args=["--epochs", "15"],
        lr_model="resnet18", lr_strategy="full", lr_args=["--epochs", "15"],
        transfer_lrs=[3e-5, 1e-4, 3e-4], base_transfer_lr=1e-4, fractions=[0.2, 0.5, 1.0], imbalance_ratio=10,
        severities="1,2,3,4,5", ood_count=1000, seeds={"scratch": [0, 1, 2], "transfer": [0, 1, 2]},
        faithfulness=200, sanity=20, depth={"resnet18": [1, 2, 3, 4, 5], "mobilenet_v2": [1, 2, 3, 4]},
        peft=["resnet18", "mobilenet_v2"],
        semi=("mobilenet_v2", ["--mode", "full", "--probe-epochs", "15", "--epochs", "15", "--batch-size", "16"],
              SEMI_FRACTIONS),
        compression={"methods": "int8,prune", "sparsities": "0.3,0.5,0.7", "finetune_epochs": 2,
                     "finetune_fraction": 1.0})


def cpu(resnet18: bool = True) -> dict:
    """The assignment converged on a 2-core CPU with bf16 units, for hand-in, finishing every run at 224 px.

    Each variant once, with a learning-rate sweep of the scratch CNN and of the MobileNetV2 head; cached features for
    the frozen-backbone heads and a linear probe before a short fine-tuning keep it short. The scratch CNN trains its
    first 15 of 30 epochs on 160 px crops (progressive resizing), which halves their cost at the test accuracy of 30
    epochs at 224 px, where most epochs at 112 px cost points (the cpu plan's runs are in bench/results/). The
    head's lr-1e-3 point of the sweep is the fc strategy's run, trained once.
    """
    head = ["--cache-features", "--epochs", "15"]
    # fine-tuning from the probed head is near its best after one epoch (bench/time_to_accuracy.py measures it)
    tune = ["--probe-epochs", "15", "--epochs", "2"]
    head_lr = 1e-3  # the fc strategy's run says its lr, so the sweep's point at this lr is the same run
    strategies = {"mobilenet_v2": ["fc", "full"]}
    extra = {("mobilenet_v2", "fc"): [*head, "--lr", str(head_lr)], ("mobilenet_v2", "full"): tune}
    if resnet18:
        strategies["resnet18"] = ["fc", "blocks34", "full"]
        extra.update({("resnet18", "fc"): head, ("resnet18", "blocks34"): tune, ("resnet18", "full"): tune})
    return make_plan(
        "cpu",
        "The assignment at its resolution (224x224 crops of 256x256 images), sized for a CPU: the scratch CNN "
        "trains 30 epochs at three learning rates, the first 15 on 160x160 crops (progressive resizing) and the "
        "last 15 at 224x224; each pretrained network "
        f"({' and '.join(ARCHS[m].display for m in strategies)}) trains its head for 15 epochs on cached 224x224 "
        "features, and fine-tunes for 2 epochs starting from such a head (a linear probe of 15 epochs, then "
        "fine-tuning); the MobileNetV2 head's learning rate is swept over three values. Validation and test use "
        "224x224 centre crops. On a CPU with bf16 units (AMX, AVX512-BF16) the training steps and validation run in "
        "bf16, the test in float32 (--amp auto).",
        data=SPLIT, notes=[SPLIT_NOTE], scratch=["--epochs", "30", "--low-res", "160", "--low-res-epochs", "15"],
        scratch_lrs=[3e-3, 1e-3, 3e-4], batch_sizes=[32], base_lr=1e-3, base_bs=32, strategies=strategies,
        strategy_extra=extra, strategy_args=[], lr_model="mobilenet_v2", lr_strategy="fc",
        lr_args=head, transfer_lrs=[3e-4, head_lr, 3e-3], base_transfer_lr=head_lr,
        fractions=[1.0], imbalance_ratio=None, severities="3", ood_count=300, regularization=False, faithfulness=8,
        sanity=3)


PLANS = {"quick": quick, "cpu": cpu, "full": full}
