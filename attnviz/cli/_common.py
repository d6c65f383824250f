"""What the commands share: argparse types and messages."""

from __future__ import annotations

import argparse

__all__ = ["_count", "_int_at_least", "_message", "_positive"]


def _message(e: BaseException) -> str:
    """An exception's message (a KeyError's without the quotes its str() adds)."""
    if isinstance(e, KeyError) and len(e.args) == 1:
        return str(e.args[0])
    return str(e)


#: the longest and shortest panel side `attnviz overlay --size` draws (3 panels of 4096
#: pixels make a 12-megapixel PNG)


def _positive(text: str) -> int:
    """argparse type: an int >= 1 (the message names the value)."""
    return _int_at_least(text, 1)


def _count(text: str) -> int:
    """argparse type: an int >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value
