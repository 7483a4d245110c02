"""pydantic's validation errors as messages for people: one line per problem, named by what the
user sees (a widget's label in the UI, the JSON field in the API), with the rule and the value.
The API's 422s and the tabs' error boxes share it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def validation_problems(error: Any, labels: Mapping[str, str] | None = None) -> list[str]:
    """`error`: a pydantic `ValidationError` (or FastAPI's `RequestValidationError`). Each line reads
    `name: what is wrong (got value)`; `labels` maps a field to the label shown instead of its name."""
    lines = []
    for problem in error.errors():
        location = [str(part) for part in problem.get("loc") or () if part != "body"]
        if labels and location and location[0] in labels:
            location[0] = labels[location[0]]
        name = ".".join(location)
        message = str(problem.get("msg", "invalid value")).removeprefix("Value error, ")
        got = problem.get("input")
        shown = ""
        if got is not None and not isinstance(got, (dict, list)) and str(got) not in message:
            shown = f" (got {got!r})"
        lines.append(f"{name}: {message}{shown}" if name else f"{message}{shown}")
    return lines
