"""Axis values in A1111's X/Y/Z plot syntax (A1111.md §11), parsed into typed lists.

The text is CSV (`csv` module, so `"a, b", c` is two values) and each numeric item may be a range:

    int    1-5          → 1, 2, 3, 4, 5           (inclusive)
           1-10 (+2)    → 1, 3, 5, 7, 9           (step; the end is kept when a step lands on it)
           1-10 [5]     → 1, 3, 5, 7, 10          (count: numpy linspace truncated to int, as A1111)
    float  0.2-0.8 (+0.2) → 0.2, 0.4, 0.6, 0.8
           0-1 [5]      → 0.0, 0.25, 0.5, 0.75, 1.0

Where A1111 is sloppy this is not: float ranges are computed as `start + i*step` and rounded to 10
decimals, so `0.2-0.8 (+0.2)` gives 0.6 (not 0.6000000000000001) and never an extra value past the
end through rounding; a range that runs downwards (`10-1`, `10-1 (-3)`) counts down instead of
giving nothing; a step pointing away from the end is an error. Empty items of numeric axes are
dropped (a trailing comma); for text axes they are kept (Prompt S/R may replace with nothing).

An axis of type `str_permutations` (A1111's Prompt order) takes the items as one list and has every
ordering of it as its values: `a, b, c` gives six values, ("a", "b", "c") first.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

_INT = r"[+-]?\s*\d+"
_FLOAT = r"[+-]?\s*(?:\d+(?:\.\d*)?|\.\d+)"


def _range_pattern(number: str) -> re.Pattern[str]:
    # start - end, then optionally (step) or [count]; A1111 also accepts a count with no closing `]`.
    return re.compile(rf"\s*({number})\s*-\s*({number})\s*(?:\(\s*({number})\s*\)|\[\s*(\d+)\s*\]?)?\s*")


_INT_RANGE = _range_pattern(_INT)
_FLOAT_RANGE = _range_pattern(_FLOAT)
# 8 items are 40320 orderings, already past what a grid can hold at any size; more would be
# refused by the grid's size check only after the list was built.
MAX_PERMUTED_ITEMS = 8
_SYNTAX_HELP = "write numbers separated by commas, or ranges like 1-5, 1-10 (+2), 1-10 [5]"


def str_permutations(value: Any) -> Any:
    """A1111's marker type for an axis whose values are the orderings of its items (Prompt order);
    as a function it leaves a value as it is, as A1111's does."""
    return value


class AxisValueError(ValueError):
    """Axis values that cannot be used; the message names the axis and the bad item."""


def split_csv(text: str) -> list[str]:
    """A1111's value list: CSV items (quotes allowed, newlines also separate), each stripped."""
    return [item.strip() for row in csv.reader(io.StringIO(text), skipinitialspace=True) for item in row]


def join_csv(values: Sequence[Any]) -> str:
    """Values back to one CSV line (A1111's `list_to_csv_string`): what `X Values` records for values
    that came from a dropdown."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow([str(v) for v in values])
    return buffer.getvalue()


def _number(text: str) -> str:
    return text.replace(" ", "")


def _int_range(label: str, item: str, match: re.Match[str]) -> list[int]:
    start, end = int(_number(match.group(1))), int(_number(match.group(2)))
    step_text, count_text = match.group(3), match.group(4)
    if count_text is not None:
        count = _count(label, item, count_text)
        return [int(v) for v in np.linspace(start, end, num=count).astype(int).tolist()]
    step = int(_number(step_text)) if step_text is not None else (1 if end >= start else -1)
    _check_step(label, item, start, end, step)
    return list(range(start, end + (1 if step > 0 else -1), step))


def _float_range(label: str, item: str, match: re.Match[str]) -> list[float]:
    start, end = float(_number(match.group(1))), float(_number(match.group(2)))
    step_text, count_text = match.group(3), match.group(4)
    if count_text is not None:
        count = _count(label, item, count_text)
        return [round(v, 10) for v in np.linspace(start, end, num=count).tolist()]
    step = float(_number(step_text)) if step_text is not None else (1.0 if end >= start else -1.0)
    _check_step(label, item, start, end, step)
    # 1e-9: a step that lands on the end through float error (0.1 * 3 vs 0.3) still includes it.
    count = math.floor((end - start) / step + 1e-9) + 1
    return [round(start + i * step, 10) for i in range(count)]


def _count(label: str, item: str, text: str) -> int:
    count = int(text)
    if count < 1:
        raise AxisValueError(f"{label}: {item!r} asks for {count} values; a count in [brackets] must be 1 or more")
    return count


def _check_step(label: str, item: str, start: float, end: float, step: float) -> None:
    if step == 0:
        raise AxisValueError(f"{label}: {item!r} has a step of 0; use a step like (+1) or a count like [5]")
    if (end - start) * step < 0:
        raise AxisValueError(f"{label}: {item!r} steps by {step:+g}, away from its end {end:g}; "
                             f"use ({-step:+g}) or swap the ends")


def parse_values(axis, values: str | Sequence[Any]) -> list[Any]:
    """The typed values of `axis` (an `AxisType`) from A1111's text syntax, or from a list (a
    dropdown's choices: each item converted to the axis type, no range syntax).

    Raises `AxisValueError` naming the axis and the item that is wrong and how to write it.
    """
    label, kind = axis.label, axis.type
    if kind is str_permutations:
        items = split_csv(values) if isinstance(values, str) else [str(v) for v in values]
        if len(items) > MAX_PERMUTED_ITEMS:
            raise AxisValueError(f"{label}: {len(items)} items have {math.factorial(len(items))} orderings; "
                                 f"give at most {MAX_PERMUTED_ITEMS} (each ordering is a cell)")
        return [tuple(order) for order in itertools.permutations(items)]
    if not isinstance(values, str):
        return [_convert(label, kind, v) for v in values]
    items = split_csv(values)
    if kind is str:
        return items
    parsed: list[Any] = []
    for item in items:
        if not item:
            continue
        pattern = _INT_RANGE if kind is int else _FLOAT_RANGE if kind is float else None
        match = pattern.fullmatch(item) if pattern is not None else None
        if match is not None:
            parsed += _int_range(label, item, match) if kind is int else _float_range(label, item, match)
        else:
            parsed.append(_convert(label, kind, item))
    return parsed


def _convert(label: str, kind: type, value: Any) -> Any:
    if kind is str:
        return str(value)
    try:
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        converted = kind(value)
    except (TypeError, ValueError):
        what = "a whole number" if kind is int else "a number" if kind is float else f"a {kind.__name__}"
        raise AxisValueError(f"{label}: {value!r} is not {what}; {_SYNTAX_HELP}") from None
    if kind is float and not math.isfinite(converted):
        raise AxisValueError(f"{label}: {value!r} is not a finite number")
    return converted
