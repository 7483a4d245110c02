"""The job control a postprocessing run uses when it runs outside any job.

A step's `process(pp, **args)` has A1111's signature, which carries no job: `Postprocessing.run` sets
the job's control on each step's `job_control` attribute for the duration of the run (no module
state), and the built-in steps pass it to the upscaler (interrupt between tiles)."""

from __future__ import annotations


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
