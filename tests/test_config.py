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
from common.config import DataConfig, LoaderConfig, add_data_args
from common.split import load_or_create_split, parse_split_sizes

PARSERS = {"part1": part1.get_args_parser, "part2": lambda: transfer.get_args_parser("resnet18", "part 2")}


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


def test_from_args_reads_only_its_own_fields():
    parser = ArgumentParser()
    add_data_args(parser)
    args = parser.parse_args([])
    extended = argparse.Namespace(**vars(args), lr=0.1, tag="x")
    config = DataConfig.from_args(extended)
    assert config == DataConfig.from_args(args)
    assert not {"lr", "tag", "seed", "split", "crop_size"} & {f.name for f in dataclasses.fields(config)}
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.img_size = 1
