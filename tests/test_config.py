"""The options and the configs built from them: one default per fact, each config built once from parsed options."""
from __future__ import annotations

import inspect

from common.cli import ArgumentParser
from common.config import add_data_args
from common.split import load_or_create_split, parse_split_sizes


def test_data_option_defaults_are_the_split_defaults():
    parser = ArgumentParser()
    add_data_args(parser)
    parsed = parser.parse_args([])
    defaults = {k: p.default for k, p in inspect.signature(load_or_create_split).parameters.items()}
    assert (parsed.per_class, parsed.img_size) == (defaults["per_class"], defaults["img_size"]) == (450, 256)
    assert parse_split_sizes(parsed.split, parsed.per_class) == tuple(defaults["sizes"]) == (300, 75, 75)
