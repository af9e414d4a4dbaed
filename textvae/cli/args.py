"""Argument checks the commands share, so that any value typed is one error
line rather than a traceback: seeds that fit the random generators, finite
numbers, and caps on what would take unbounded memory."""

from __future__ import annotations

import argparse
import math

from ..errors import TextVAEError

SEED_LIMIT = 2**63  # torch and numpy generators take seeds in [0, 2**63)


def seed(text: str) -> int:
    """``--seed``: an integer in [0, 2**63)."""
    value = int(text)  # a ValueError is argparse's "invalid seed value"
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 2**63 - 1, got {text[:40]}")
    return value


def require(condition: bool, message: str) -> None:
    if not condition:
        raise TextVAEError(message)


def finite(**values: float) -> None:
    """One error line for the first of ``--name value`` pairs that is NaN or infinite."""
    for name, value in values.items():
        require(math.isfinite(value), f"--{name.replace('_', '-')} must be a finite number, got {value}")
