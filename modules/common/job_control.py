"""`NullControl`: what code that reports to a job (`modules.serving.jobs.JobControl`) uses when it runs
outside any job (direct engine calls, tests, an extension calling A1111's functions): progress and
info go nowhere, and nothing ever interrupts or skips."""

from __future__ import annotations


class NullControl:
    """A JobControl stand-in that reports nowhere and is never interrupted."""

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

    def set_info(self, key: str, value) -> None:
        pass
