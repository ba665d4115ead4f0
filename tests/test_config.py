"""The options and the configs built from them: one default per fact, each config built once from parsed options."""
from __future__ import annotations

import argparse
import dataclasses
import inspect
from pathlib import Path

import pytest

import part1_scratch_cnn as part1
from common import transfer
from common.cli import ArgumentParser
from common.config import AugmentConfig, DataConfig, LoaderConfig, ObjectiveConfig, add_data_args
from common.split import load_or_create_split, parse_split_sizes

PARSERS = {"part1": part1.get_args_parser, "part2": lambda: transfer.get_args_parser("resnet18", "part 2")}
CONFIGS = (DataConfig, LoaderConfig, AugmentConfig)


def test_data_option_defaults_are_the_split_defaults():
    parser = ArgumentParser()
    add_data_args(parser)
    parsed = parser.parse_args([])
    defaults = {k: p.default for k, p in inspect.signature(load_or_create_split).parameters.items()}
    assert (parsed.per_class, parsed.img_size) == (defaults["per_class"], defaults["img_size"]) == (450, 256)
    assert parse_split_sizes(parsed.split, parsed.per_class) == tuple(defaults["sizes"]) == (300, 75, 75)


@pytest.mark.parametrize("script", PARSERS)
def test_data_config_from_the_script_defaults(script, monkeypatch):
    monkeypatch.delenv("ANIMALS10_DIR", raising=False)
    args = PARSERS[script]().parse_args([])
    config = DataConfig.from_args(args)
    assert config == DataConfig(data_dir=Path("data/animals10/raw-img"), output_dir=Path("runs"),
                                split_file=Path("runs/split.json"), per_class=450, sizes=(300, 75, 75), split_seed=0,
                                img_size=256, workers=args.workers, dedup=True, near_threshold=args.near_threshold,
                                max_pixels=args.max_pixels)
    assert config.cache_dir == Path("runs/cache")
    monkeypatch.setenv("ANIMALS10_DIR", "/elsewhere")
    args = PARSERS[script]().parse_args(["--split-file", "s.json", "--split", "0.7,0.15,0.15", "--no-dedup"])
    config = DataConfig.from_args(args)
    assert (config.data_dir, config.split_file, config.sizes, config.dedup) == \
        (Path("/elsewhere"), Path("s.json"), (0.7, 0.15, 0.15), False)


@pytest.mark.parametrize("script", PARSERS)
def test_loader_config_from_the_script_defaults(script):
    args = PARSERS[script]().parse_args([])
    assert LoaderConfig.from_args(args) == LoaderConfig(batch_size=32, fraction=1.0, imbalance=1.0, balance="none")
    args = PARSERS[script]().parse_args(["--batch-size", "8", "--fraction", "0.5", "--imbalance", "10",
                                         "--balance", "oversample"])
    assert LoaderConfig.from_args(args) == LoaderConfig(batch_size=8, fraction=0.5, imbalance=10, balance="oversample")


@pytest.mark.parametrize("script, scale_min, jitter", [("part1", 0.25, 0.3), ("part2", 0.35, 0.2)])
def test_augment_config_from_the_script_defaults(script, scale_min, jitter):
    args = PARSERS[script]().parse_args([])
    assert AugmentConfig.from_args(args) == AugmentConfig(crop_size=224, no_augment=False, scale_min=scale_min,
                                                          jitter=jitter, auto_augment="none")
    args = PARSERS[script]().parse_args(["--crop-size", "128", "--no-augment", "--auto-augment", "randaugment",
                                         "--mixup", "0.2", "--cutmix", "1"])
    assert AugmentConfig.from_args(args) == AugmentConfig(crop_size=128, no_augment=True, scale_min=scale_min,
                                                          jitter=jitter, auto_augment="randaugment")
    assert (ObjectiveConfig.from_args(args).mixup, ObjectiveConfig.from_args(args).cutmix) == (0.2, 1.0)


@pytest.mark.parametrize("config_type", CONFIGS)
def test_from_args_reads_only_its_own_fields(config_type):
    args = PARSERS["part1"]().parse_args([])
    config = config_type.from_args(args)
    names = {f.name for f in dataclasses.fields(config)}
    assert not {"lr", "tag", "seed", "epochs", "sweep"} & names  # script and training options stay out
    assert config_type.from_args(argparse.Namespace(**vars(args), unknown_option=1)) == config
    # Its own options are all it needs (DataConfig resolves --split and the paths into its fields).
    options = names | {"split", "data_dir", "output_dir", "split_file"}
    own = argparse.Namespace(**{k: v for k, v in vars(args).items() if k in options})
    assert config_type.from_args(own) == config
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(config, next(iter(names)), None)

