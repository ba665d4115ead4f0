"""Fine-tuning ImageNet torchvision models (part 2): arguments, feature caching and one training run."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from common.architectures import ARCHS
from common.cache import cache_key, cache_mismatch, explain_miss, pixel_cache_fields, save_cache_key
from common.cli import ArgumentParser, UserError, nonnegative_int, number, positive_int
from common.config import (
    AugmentConfig,
    DataConfig,
    LoaderConfig,
    ObjectiveConfig,
    SemiConfig,
    TrainConfig,
    TransferConfig,
    add_augment_args,
    add_crop_check,
    add_data_args,
    add_semi_args,
    add_train_args,
    check_mode_options,
)
from common.data import check_crop_fits, prepare_data
from common.distributed import cleanup, init_distributed, is_distributed, is_main, main_log
from common.engine import (
    add_param_groups,
    evaluate,
    inference_batch_size,
    make_optimizer,
    make_scheduler,
    param_groups,
    resolve_device,
    seed_everything,
    train_one_epoch,
)
from common.loader import BatchLoader, check_batch_fits, make_loaders, to_device, train_subset
from common.lora import ALPHA as LORA_ALPHA
from common.lora import RANK as LORA_RANK
from common.lora import check_rank, rank_limit
from common.masking import FRACTION as MASK_FRACTION
from common.masking import (
    SCORE_IMAGES,
    SELECTIONS,
    MaskedUpdates,
    backbone_parameters,
    gradient_scores,
    masks_from_checkpoint,
    select_masks,
)
from common.models import block_depth, build_model, load_pretrained, unfreeze_to_depth
from common.runs import check_resume_path, load_checkpoint, save_checkpoint
from common.semi import (
    FEATURE_DROPOUT,
    PseudoLabelling,
    default_threshold,
    feature_dropout,
    strong_transform,
    unlabelled_loader,
)
from common.sources import read_sources
from common.split import Split
from common.trainer import Callback, TrainingData, fit, make_objective, progressive_resize
from common.transforms import IMAGENET_MEAN, IMAGENET_STD, TRANSFORM_VERSION, eval_transform, make_transforms


def get_args_parser(arch: str, description: str) -> ArgumentParser:
    """The part 2 command line for one architecture."""
    spec = ARCHS[arch]
    modes = tuple(spec.modes)
    lrs = ", ".join(f"{m} {spec.lr[m]:g}" for m in modes)
    parser = ArgumentParser(description=description)
    parser.add_argument("--mode", choices=modes, default=modes[0],
                        help=f"what is trained: {', '.join(modes)} (bn: BatchNorm layers + head; gradual: head "
                             "first, then one block deeper every --unfreeze-every epochs; top: the head and the "
                             "--blocks blocks below it; lora: the head and low-rank adapters, merged into the "
                             "weights for evaluation; masked: the head and a chosen --mask-fraction of the other "
                             "parameters' entries)")
    parser.add_argument("--blocks", type=number(int, 1, spec.max_depth), default=0, metavar="L",
                        help=f"top mode: blocks below the head that train, from the head down (1 to "
                             f"{spec.max_depth}; {spec.max_depth} trains everything)")
    parser.add_argument("--lora-rank", type=positive_int, default=None, metavar="R",
                        help=f"lora mode: the rank of each adapter, at most the smallest adapted layer's "
                             f"(default {LORA_RANK}, or that limit where it is lower)")
    parser.add_argument("--lora-alpha", type=number(float, 0, low_open=True), default=None, metavar="A",
                        help=f"lora mode: adapters are scaled by A/R (default {LORA_ALPHA:g})")
    parser.add_argument("--mask-fraction", type=number(float, 0, 1, low_open=True), default=None, metavar="F",
                        help=f"masked mode: the share of the pretrained parameters' entries that train (default "
                             f"{MASK_FRACTION:g}); the head trains whole")
    parser.add_argument("--mask-select", choices=SELECTIONS, default=None,
                        help=f"masked mode: how the entries are chosen (default {SELECTIONS[0]}): by gradient "
                             f"magnitude on {SCORE_IMAGES} training images (after --probe-epochs, if given), at "
                             "random, or the last ones from the head down")
    parser.add_argument("--weights", default="imagenet",
                        help="'imagenet' (torchvision weights API and its cache), a state-dict file, or 'none'")
    parser.add_argument("--cache-features", action="store_true",
                        help="fc mode: run the frozen backbone once (no augmentation) and train the head on its "
                             "features")
    parser.add_argument("--probe-epochs", type=nonnegative_int, default=0, metavar="N",
                        help="modes other than fc: first train the new head alone for N epochs on cached features of "
                             "the pretrained network (linear probe, then fine-tune), so fine-tuning starts from a "
                             "trained head instead of a random one (0 = off)")
    parser.add_argument("--lr-decay", type=number(float, 0, 1, low_open=True), default=1.0,
                        help="full and gradual modes: each block deeper from the head gets this factor more learning "
                             "rate decay (discriminative rates)")
    parser.add_argument("--unfreeze-every", type=positive_int, default=2,
                        help="gradual mode: epochs between unfreezing the next block (head, then from the top down)")
    add_augment_args(parser, scale_min=0.35, jitter=0.2)
    add_data_args(parser)
    add_crop_check(parser, min_crop=spec.min_crop)
    add_train_args(parser, lr=None, epochs=20, batch_size=32)
    add_semi_args(parser)
    parser.set_defaults(weight_decay=1e-4, lr=None)
    parser.description += f" Default learning rates fall as more is unfrozen: {lrs}; --lr overrides."
    parser.add_check(check_mode_options)
    return parser


@contextmanager
def headless(model: nn.Module, arch: str):
    """Temporarily swap the head for an identity, so model(x) returns the pooled backbone features."""
    name = ARCHS[arch].head_child
    head = getattr(model, name)
    setattr(model, name, nn.Identity())
    try:
        yield head
    finally:
        setattr(model, name, head)


@torch.no_grad()
def extract_features(model: nn.Module, arch: str, images, split: Split, transform, device: torch.device,
                     batch_size: int | None = None) -> torch.Tensor:
    """Pooled backbone features of every image in the split (eval mode, centre crop), in split order."""
    loader = BatchLoader(images, split.labels, np.arange(len(split.entries)),
                         batch_size or inference_batch_size(device), device,
                         rank=0, world_size=1)  # every process needs all features
    model.eval()
    out = []
    with headless(model, arch):
        for x, _ in tqdm(loader, desc="features", leave=False, dynamic_ncols=True):
            out.append(model(transform(x).contiguous(memory_format=torch.channels_last)).float().cpu())
    return torch.cat(out)


def feature_cache_fields(arch: str, weights_sha256: str, split: Split, img_size: int, crop: int,
                         mean, std) -> dict:
    """Everything that changes cached features: the pixels, the backbone and its weights, and the eval transform."""
    return {**pixel_cache_fields(split, img_size), "cache": "features", "arch": arch, "weights_sha256": weights_sha256,
            "crop_size": int(crop), "mean": [float(v) for v in mean], "std": [float(v) for v in std],
            "transform_version": TRANSFORM_VERSION}


def _feature_width(model: nn.Module, arch: str) -> int:
    return next(m for m in getattr(model, ARCHS[arch].head_child).modules() if isinstance(m, nn.Linear)).in_features


def _load_features(path: Path, fields: dict, shape: tuple[int, int], log=print) -> torch.Tensor | None:
    """The cached features at path; None (after saying why) when unreadable, stale or the wrong shape."""
    problem = cache_mismatch(path, fields)
    if not problem:
        try:
            feats = torch.load(path, map_location="cpu", weights_only=True)  # tensors only, never other objects
        except Exception as e:  # truncated, garbage, or pickled objects that weights_only refuses
            problem = f"is unreadable ({type(e).__name__})"
        else:
            if isinstance(feats, torch.Tensor) and tuple(feats.shape) == shape and feats.dtype == torch.float32:
                return feats
            got = f"{tuple(feats.shape)} {feats.dtype}" if isinstance(feats, torch.Tensor) else type(feats).__name__
            problem = f"holds {got}, not a {shape} float32 tensor"
    log(f"feature cache {path} {problem}; recomputing it (it is derived data)")
    return None


def cached_features(model, arch, weights: dict, images, split, device, cache_dir: Path, crop: int,
                    mean=IMAGENET_MEAN, std=IMAGENET_STD, log=print) -> tuple[torch.Tensor, float]:
    """Backbone features of the centre-cropped images, from the on-disk cache when one fits; (features, seconds).

    The cache file is keyed by feature_cache_fields, taken from the images and transform actually used.
    Randomly initialised weights (no sha256) are never cached: they depend on the seed, not on a file.
    """
    path, note = None, " (random weights: not cached)"
    if weights["sha256"]:
        fields = feature_cache_fields(arch, weights["sha256"], split, images.shape[1], crop, mean, std)
        path = cache_dir / f"features-{arch}-{cache_key(fields)}.pt"
        if path.exists():
            feats = _load_features(path, fields, (len(split.entries), _feature_width(model, arch)), log)
            if feats is not None:
                return feats, 0.0
            note = f" into {path}"
        else:
            note = f" into {path}{explain_miss(path, fields)}"
    t0 = time.perf_counter()
    feats = extract_features(model, arch, images, split, partial(eval_transform, crop=crop, mean=mean, std=std), device)
    seconds = time.perf_counter() - t0
    log(f"extracted {tuple(feats.shape)} features in {seconds:.1f}s{note}")
    if path is not None and is_main():
        path.unlink(missing_ok=True)  # so a kill after the key record never leaves a stale cache under it
        save_cache_key(path, fields)
        save_checkpoint(feats, path)
    return feats, seconds


def linear_probe(model: nn.Module, arch: str, feats: torch.Tensor, split: Split, loading, epochs: int, lr: float,
                 weight_decay: float, label_smoothing: float, seed: int, device: torch.device, log=print) -> dict:
    """Train the model's new head alone on the pretrained backbone's features (LP-FT's first step); its figures."""
    head = getattr(model, ARCHS[arch].head_child)
    loaders = make_loaders(feats.to(device), split, loading, device, torch.Generator().manual_seed(seed), log)
    optimizer = make_optimizer(param_groups(head, weight_decay, lr), "adamw", lr)
    scheduler = make_scheduler(optimizer, "cosine", 0, epochs)
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        train_one_epoch(head, loaders["train"], nn.Identity(), criterion, optimizer, device,
                        desc=f"probe {epoch + 1}/{epochs}")
        scheduler.step()
    val = evaluate(head, loaders["val"], nn.Identity(), criterion, device, desc="probe val")["acc"]
    seconds = time.perf_counter() - t0
    log(f"linear probe: the head trained {epochs} epochs on cached features (lr {lr:g}): val acc {val:.4f}, "
        f"{seconds:.1f}s; fine-tuning starts from it")
    return {"probe_epochs": epochs, "probe_lr": lr, "probe_val_acc": val, "probe_seconds": seconds}


class GradualUnfreeze(Callback):
    """Gradual unfreezing (as Lightning's BaseFinetuning): the head first, then one block deeper every `every` epochs.

    A block's parameters join the optimizer as new groups when it unfreezes (groups(names) makes them, with the
    run's weight decay and per-block rates), so the optimizer only ever holds trainable parameters. Frozen blocks
    stay in eval mode while training (set_train_mode), so their BatchNorm statistics do not move.
    """

    def __init__(self, model: nn.Module, arch: str, every: int, groups: Callable[[set[str]], list[dict]], log=print):
        self.model, self.arch, self.every, self.groups, self.log = model, arch, every, groups, log
        self.depth = 0  # blocks below the head that train (block_depth)

    def on_epoch_start(self, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        if self._unfreeze_to(min(epoch // self.every, ARCHS[self.arch].max_depth), optimizer):
            trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
            self.log(f"gradual unfreezing: blocks up to depth {self.depth} of {ARCHS[self.arch].max_depth} now "
                     f"train ({trainable:,} parameters)")

    def state_dict(self) -> dict:
        return {"depth": self.depth}

    def load_state_dict(self, state: dict, optimizer: torch.optim.Optimizer) -> None:
        self._unfreeze_to(state.get("depth", 0), optimizer)

    def _unfreeze_to(self, depth: int, optimizer: torch.optim.Optimizer) -> bool:
        """One block at a time, so a resumed run adds the optimizer's groups in the order the killed one did."""
        changed = False
        while self.depth < depth:
            self.depth += 1
            before = {n for n, p in self.model.named_parameters() if p.requires_grad}
            unfreeze_to_depth(self.model, self.arch, self.depth)
            new = {n for n, p in self.model.named_parameters() if p.requires_grad} - before
            if new:
                add_param_groups(optimizer, self.groups(new))
                changed = True
        return changed


def choose_masks(model: nn.Module, arch: str, fraction: float, how: str, seed: int, images, split: Split,
                 train_indices: np.ndarray, eval_tf, device: torch.device, resume: str | None,
                 log=print) -> dict[str, torch.Tensor]:
    """masked mode's masks: the ones a resumed run's checkpoint saved, else chosen now from the training images."""
    if resume:
        return masks_from_checkpoint(load_checkpoint(resume, keys=("callbacks",)))
    head = ARCHS[arch].head_child
    params = backbone_parameters(model, head)
    scores = None
    if how == "grad":
        pick = torch.randperm(len(train_indices), generator=torch.Generator().manual_seed(seed))[:SCORE_IMAGES]
        loader = BatchLoader(images, split.labels, train_indices[pick.numpy()], 64, device, rank=0, world_size=1)
        batches = ((eval_tf(x).contiguous(memory_format=torch.channels_last), y) for x, y in loader)
        scores = gradient_scores(model, head, batches, nn.CrossEntropyLoss())
    masks = select_masks(params, fraction, how, scores, torch.Generator().manual_seed(seed))
    chosen, tensors = sum(int(m.sum()) for m in masks.values()), sum(bool(m.any()) for m in masks.values())
    log(f"masked fine-tuning: {chosen:,} of {sum(p.numel() for p in params.values()):,} pretrained parameters "
        f"train, chosen by {how}, in {tensors} of {len(masks)} tensors; the head trains whole")
    return masks


def checkpoint_meta(recipe: TransferConfig, crop: int, weights: dict) -> dict:
    """What a part 2 checkpoint records besides the weights, for any script to rebuild and run the model."""
    meta = {"img_size": recipe.img_size, "crop_size": crop, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "weights": weights}
    if recipe.lora:
        meta["lora"] = dict(zip(("rank", "alpha"), recipe.lora))  # model_from_checkpoint rebuilds the adapters
    if recipe.mask:
        meta["mask"] = dict(zip(("fraction", "select"), recipe.mask))
    return meta


def pseudo_labelling(semi: SemiConfig, images, split: Split, labelled: BatchLoader, augment: AugmentConfig,
                     cached: bool, label_smoothing: float, generators: dict[str, torch.Generator],
                     device: torch.device, log=print) -> tuple[PseudoLabelling, dict]:
    """A semi-supervised run's pseudo-label term over the training images outside `labelled`; (it, its record)."""
    unlabelled = unlabelled_loader(images, split.labels, split.indices["train"], labelled.indices.numpy(),
                                   semi.unlabelled_ratio * labelled.batch_size, device, generators["data"])
    if cached:
        strong, how = feature_dropout(FEATURE_DROPOUT, generators["augment"]), f"feature dropout {FEATURE_DROPOUT:g}"
    else:
        strong = strong_transform(augment.crop_size, IMAGENET_MEAN, IMAGENET_STD, generators["augment"],
                                  augment.crop_resize)
        how = "RandAugment, random-resized crop, colour jitter, Cutout"
    threshold = semi.pseudo_threshold or default_threshold(label_smoothing, len(split.classes))
    record = {"labelled_fraction": semi.labelled_fraction, "labelled_images": len(labelled.indices),
              "unlabelled_images": len(unlabelled.indices), "threshold": threshold, "ratio": semi.unlabelled_ratio,
              "weight": semi.unlabelled_weight, "strong_view": how}
    if semi.unlabelled_weight:
        log(f"pseudo-labelling: {record['labelled_images']} labelled and {record['unlabelled_images']} unlabelled "
            f"training images; steps of {labelled.batch_size} labelled and {unlabelled.batch_size} unlabelled; "
            f"threshold {threshold:.3f}; strong view: {how}")
    else:
        log(f"labelled-only baseline (--unlabelled-weight 0): {record['labelled_images']} labelled images in batches "
            f"of {labelled.batch_size}, {max(len(labelled), len(unlabelled))} steps an epoch, as pseudo-labelling")
    return PseudoLabelling(unlabelled, strong, threshold, semi.unlabelled_weight), record


def train(arch: str, split: Split, images, device: torch.device, recipe: TransferConfig, cfg: TrainConfig,
          objective_cfg: ObjectiveConfig, *, augment, loading, options: dict, semi: SemiConfig | None = None,
          sources: dict[str, str] | None = None, log=print) -> Path:
    """Build, freeze and fine-tune one model; returns its run folder.

    augment and loading are what make_transforms and make_loaders take; options go to fit (config.json, resume);
    semi with a labelled fraction makes the run semi-supervised (common/semi.py); sources (image path -> source,
    common/sources.py) break the final test down by source.
    """
    semi = semi if semi is not None and semi.labelled_fraction is not None else None
    if is_distributed() and (recipe.mode == "gradual" or semi):
        raise UserError("--mode gradual and --labelled-fraction are not made for torchrun (gradual changes the "
                        "trainable parameters, which DistributedDataParallel cannot follow); run without torchrun")
    lr = ARCHS[arch].lr[recipe.mode] if recipe.lr is None else recipe.lr
    generators = seed_everything(recipe.seed)
    model, weights = build_model(arch, len(split.classes), recipe.mode, recipe.weights, recipe.blocks, recipe.lora)
    log(f"weights: {weights['source']}" + (f" (sha256 {weights['sha256'][:12]}...)" if weights["sha256"] else ""))
    model = model.to(device, memory_format=torch.channels_last)
    crop = augment.crop_size
    train_tf, eval_tf = make_transforms(augment, generators["augment"])
    meta = checkpoint_meta(recipe, crop, weights)
    if semi:  # the labelled part, in batches no larger than it; before the probe, which must not see other labels
        labelled = train_subset(split.labels, split.indices["train"], semi.labelled_fraction, seed=split.split_seed)
        loading = replace(loading, fraction=semi.labelled_fraction, batch_size=min(loading.batch_size, len(labelled)))
    extra = {}
    trained, save_model, pixels = model, None, images
    if recipe.probe_epochs and not cfg.resume:  # a resumed run's checkpoint holds the probed head and what followed
        feats, seconds = cached_features(model, arch, weights, images, split, device, Path(cfg.output_dir) / "cache",
                                         crop, IMAGENET_MEAN, IMAGENET_STD, log)
        extra = {"feature_extraction_seconds": seconds, **linear_probe(
            model, arch, feats, split, loading, recipe.probe_epochs, ARCHS[arch].lr["fc"], cfg.weight_decay,
            objective_cfg.label_smoothing, recipe.seed, device, log)}
    if recipe.cache_features:
        feats, seconds = cached_features(model, arch, weights, images, split, device, Path(cfg.output_dir) / "cache",
                                         crop, IMAGENET_MEAN, IMAGENET_STD, log)
        extra["feature_extraction_seconds"] = seconds
        images, trained, save_model = feats.to(device), getattr(model, ARCHS[arch].head_child), model
        train_tf = eval_tf = nn.Identity()
    loaders = make_loaders(images, split, loading, device, generators["data"], log)
    masked = None
    if recipe.mask:  # chosen before the optimizer is built, so it holds only tensors with chosen entries
        masks = choose_masks(model, arch, *recipe.mask, recipe.seed, images, split, loaders["train"].indices.numpy(),
                             eval_tf, device, cfg.resume, log)
        masked = MaskedUpdates(model, masks)
        head = sum(p.numel() for p in getattr(model, ARCHS[arch].head_child).parameters())
        extra["trainable_params"] = head + masked.updated  # entries that can change, not whole tensors
    lr_of = None
    if recipe.lr_decay != 1.0:
        lr_of = lambda name: lr * recipe.lr_decay ** block_depth(arch, name)  # noqa: E731
    groups = partial(param_groups, trained, cfg.weight_decay, lr, lr_of)
    optimizer = make_optimizer(groups(), cfg.opt, lr)
    callbacks = progressive_resize(train_tf, augment)
    if recipe.mode == "gradual":
        callbacks.append(GradualUnfreeze(model, arch, recipe.unfreeze_every, groups, log))
    if masked is not None:
        masked.attach(optimizer)
        callbacks.append(masked)
    data = TrainingData(split, loaders, train_tf, eval_tf, arch, recipe.mode, meta, pixels, sources)
    o = objective_cfg
    objective = make_objective(data.train_labels, len(split.classes), o.label_smoothing, o.balance, o.mixup,
                               o.cutmix, generators["augment"], device)
    if semi:
        term, meta["semi"] = pseudo_labelling(semi, images, split, loaders["train"], augment, recipe.cache_features,
                                              o.label_smoothing, generators, device, log)
        objective = replace(objective, semi=term)
        extra.update({f"semi_{k}": v for k, v in meta["semi"].items()})
    return fit(trained, data, cfg, generators, device, lr=lr, objective=objective, options=options,
               optimizer=optimizer, callbacks=callbacks, save_model=save_model, extra_metrics=extra, log=log)


def preflight(arch: str, recipe: TransferConfig, cfg: TrainConfig) -> TransferConfig:
    """Every refusal that needs no data, before anything is written: the --resume path, the weights, the LoRA rank.

    Returns the recipe with lora mode's default rank resolved (common/lora.py's, capped at what the layers hold).
    """
    if cfg.resume:
        check_resume_path(Path(cfg.resume), Path(cfg.output_dir))
    model = ARCHS[arch].build()
    load_pretrained(model, arch, recipe.weights)
    if recipe.mode != "lora":
        return recipe
    skip = ARCHS[arch].head_child
    if recipe.lora_rank is None:
        return replace(recipe, lora_rank=min(LORA_RANK, rank_limit(model, skip)[0]))
    check_rank(model, recipe.lora_rank, skip)
    return recipe


def main(args, arch: str) -> Path:
    """What the part 2 scripts run: data, then one fine-tuning run (also under torchrun)."""
    init_distributed(args.device)  # a no-op unless started by torchrun
    try:
        device = resolve_device(args.device)
        log = main_log()
        problem = check_mode_options(args)  # also for a Namespace that no parser checked
        if problem:
            raise UserError(problem)
        cfg, loading = TrainConfig.from_args(args), LoaderConfig.from_args(args)
        recipe = preflight(arch, TransferConfig.from_args(args), cfg)
        data = DataConfig.from_args(args)
        split, images = prepare_data(data, log, check=partial(check_batch_fits, config=loading))
        augment = AugmentConfig.from_args(args)
        check_crop_fits(images, augment.crop_size)
        return train(arch, split, to_device(images, device), device, recipe, cfg, ObjectiveConfig.from_args(args),
                     augment=augment, loading=loading, options=vars(args), semi=SemiConfig.from_args(args),
                     sources=read_sources(data.data_dir), log=log)
    finally:
        cleanup()
