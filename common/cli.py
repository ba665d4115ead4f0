"""Command-line plumbing shared by the scripts: the errors a user can fix, checked argument types, one-line errors,
and the `__main__` runner."""
from __future__ import annotations

import argparse
import math
import sys
from typing import Callable, Sequence

from common.allocator import retain_freed_memory


class UserError(Exception):
    """A problem the user can fix (data, checkpoint, weights, options); its message says how."""


class DataError(UserError):
    """A problem with the input data that the user must fix; its message says how."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default once, and none where there is no default or the help already states it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or not action.option_strings or action.default is None \
                or action.default is argparse.SUPPRESS or isinstance(action.default, bool):
            return text
        return text + " (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's help format, one-line errors, and checks across arguments after parsing."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self._checks: list[Callable[[argparse.Namespace], str | None]] = []

    def add_check(self, check: Callable[[argparse.Namespace], str | None]) -> None:
        """check(args) returns an error message (naming the flags and the fix) or None."""
        self._checks.append(check)

    def parse_args(self, args: Sequence[str] | None = None, namespace=None) -> argparse.Namespace:
        parsed = super().parse_args(args, namespace)
        for check in self._checks:
            problem = check(parsed)
            if problem:
                self.error(problem)
        return parsed

    def error(self, message: str):
        """One line, `error: ...`, exit code 2 (argparse's own code for bad options)."""
        self.exit(2, f"error: {message}; see {self.prog} --help\n")


def number(kind: type, low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False) -> Callable[[str], float]:
    """An argparse type: `kind` within [low, high] (open at an end when asked); the message names the range."""
    lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
    hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
    if low is not None and high is not None:
        wanted = f"in {lo}, {hi}"
    elif low is not None:
        wanted = f"{'>' if low_open else '>='} {low:g}"
    else:
        wanted = f"{'<' if high_open else '<='} {high:g}"
    name = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {name}; give {name} {wanted}") from None
        if not math.isfinite(value):  # inf and nan pass the range tests below, or train a model of NaNs
            raise argparse.ArgumentTypeError(f"{text} is not a finite number; give {name} {wanted}")
        if (low is not None and (value < low or (low_open and value == low))) or \
                (high is not None and (value > high or (high_open and value == high))):
            raise argparse.ArgumentTypeError(f"{text} is out of range; give {name} {wanted}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


positive_int = number(int, 1)
nonnegative_int = number(int, 0)
positive_float = number(float, 0, low_open=True)
nonnegative_float = number(float, 0)
probability = number(float, 0, 1, high_open=True)  # dropout, label smoothing: [0, 1)


def run_main(main: Callable, args: argparse.Namespace, errors: tuple[type[BaseException], ...] = (),
             retain_memory: bool = True) -> None:
    """Run a script's main(args), first retaining freed memory (common/allocator.py) unless told not to: a UserError
    (or one of `errors`) becomes `error: ...` and exit code 1."""
    if retain_memory:
        retain_freed_memory()
    try:
        code = main(args)
    except (UserError, *errors) as e:
        sys.exit(f"error: {e}")
    sys.exit(code if isinstance(code, int) else 0)
