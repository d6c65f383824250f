"""Helpers the metrics share."""

from __future__ import annotations

from typing import Any

__all__ = ["one_record"]


def one_record(records: list[Any]) -> list[Any]:
    if len(records) != 1:
        names = [r.name for r in records]
        raise ValueError(
            f"the model has several attention blocks of this kind {names}; pass block="
        )
    return records
