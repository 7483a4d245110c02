"""The job control the steps of one postprocessing run see (interrupt between tiles and images).

A step's `process(pp, **args)` has A1111's signature, which carries no job: the runner sets the
control for the duration of a run in a context variable, and the built-in steps read it."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any


class NullControl:
    """The control of a run outside any job (tests, an extension calling run_postprocessing)."""

    interrupted = False
    skip_requested = False

    def report(self, step: int, total: int, preview_factory=None) -> None:
        pass

    def check(self) -> None:
        pass

    def consume_skip(self) -> bool:
        return False

    def add_info(self, line: str) -> None:
        pass


_current: contextvars.ContextVar[Any] = contextvars.ContextVar("atelier_postprocessing_control", default=None)


def current_control() -> Any:
    """The running job's control, or a NullControl."""
    return _current.get() or NullControl()


@contextlib.contextmanager
def control_scope(control: Any) -> Iterator[None]:
    token = _current.set(control)
    try:
        yield
    finally:
        _current.reset(token)
