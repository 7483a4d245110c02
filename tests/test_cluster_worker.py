"""The worker side of the Ray mode without Ray: the job control a worker's job reports to (what the
server's relay polls), errors made safe to send, and the queue's exclusive jobs the Ray mode needs."""

from __future__ import annotations

import pickle
import threading

import pytest

from modules.cluster.worker import RemoteJobControl, portable_error
from modules.serving.jobs import JobInterrupted, JobQueue, JobState

WAIT = 30


def test_a_poll_carries_interrupt_skip_and_preview_requests_and_takes_what_was_reported():
    control = RemoteJobControl("task-1#1")
    made = []
    control.report(1, 4, lambda: made.append(1) or "preview-1")
    assert made == []  # nobody asked for a preview: none is made
    status = control.poll(want_preview=True)
    assert (status.step, status.total, status.preview) == (1, 4, None)
    control.report(2, 4, lambda: "preview-2")
    control.add_info("a note")
    control.set_info("job_count", 3)
    status = control.poll()
    assert (status.step, status.preview, status.preview_step) == (2, "preview-2", 2)
    assert status.info_lines == ["a note"] and status.info_values == {"job_count": 3}
    again = control.poll()
    assert again.preview is None and again.info_lines == [] and again.info_values == {}  # sent once

    control.poll(skip=True)
    assert control.consume_skip() is True and control.consume_skip() is False  # one image only
    control.check()
    control.poll(interrupt=True)
    control.poll()  # an interrupt sticks
    assert control.interrupted
    with pytest.raises(JobInterrupted):
        control.check()


def test_a_failing_preview_never_fails_the_job():
    control = RemoteJobControl("task-1#1")
    control.poll(want_preview=True)
    control.report(1, 2, lambda: 1 / 0)
    assert control.poll().preview is None


class _NeedsTwoArguments(ValueError):
    def __init__(self, name: str, detail: str):
        super().__init__(f"{name}: {detail}")


def test_an_error_that_cannot_cross_a_process_becomes_its_builtin_base_with_its_message():
    error = _NeedsTwoArguments("model.safetensors", "broken header")
    with pytest.raises(TypeError):
        pickle.loads(pickle.dumps(error))  # what Ray would fail to do on the server
    sent = portable_error(error)
    assert type(sent) is ValueError and str(sent) == "model.safetensors: broken header"
    plain = KeyError("x")
    assert portable_error(plain) is plain


def test_an_exclusive_job_waits_for_running_jobs_and_holds_back_later_ones():
    queue = JobQueue(slots=2)
    queue.start()
    release_first, first_started = threading.Event(), threading.Event()
    order: list[str] = []

    def blocking(name, started=None, release=None):
        def work(control):
            order.append(f"{name} start")
            if started:
                started.set()
            if release:
                assert release.wait(WAIT)
            order.append(f"{name} end")
        return work

    try:
        first = queue.submit(blocking("first", first_started, release_first), kind="test")
        assert first_started.wait(WAIT)
        switch = queue.submit(blocking("switch"), kind="checkpoint", exclusive=True)
        later = queue.submit(blocking("later"), kind="test")
        # Two slots, one used: neither the exclusive job nor the one behind it may start yet.
        assert switch.state is JobState.QUEUED and later.state is JobState.QUEUED
        release_first.set()
        for job in (first, switch, later):
            job.wait(WAIT)
        assert order == ["first start", "first end", "switch start", "switch end", "later start", "later end"]
    finally:
        release_first.set()
        queue.shutdown(timeout=WAIT)


def test_with_workers_the_server_reads_the_selected_checkpoints_architecture_from_its_header(tmp_path):
    """Nothing is loaded on a Ray server: img2img's instruct-pix2pix fields follow the selected file."""
    import torch

    from modules.library.model_detection import Architectures
    from modules.library.synthetic_checkpoints import write_checkpoint
    from modules.ui.img2img import is_edit_model
    from tests.test_api_support import make_context

    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    write_checkpoint(folder / "p2p.safetensors", "sd1-pix2pix", size="tiny", dtype=torch.float32)
    context = make_context(tmp_path, names=("plain",), load=False, start_jobs=False)
    context.cluster = _NoTrial()
    context.settings.apply({"sd_model_checkpoint": "p2p.safetensors"})
    assert context.current_architecture() == Architectures.SD1_PIX2PIX and is_edit_model(context)
    context.settings.apply({"sd_model_checkpoint": "plain.safetensors"})
    assert context.current_architecture() == Architectures.SD1 and not is_edit_model(context)
    assert context.models.current() is None  # read from the headers, nothing loaded


class _NoTrial:
    def trial_info(self):
        return None
