"""The workers line under the model status: in Ray mode the pool's "2 workers, 1 busy" with one hover
line per worker, everything escaped; in the embedded mode no element at all; refreshed by its timer."""

from __future__ import annotations

import dataclasses
from html.parser import HTMLParser
from types import SimpleNamespace

import pytest

from modules.cluster.types import WorkerInfo, workers_summary
from modules.ui.workers_status import MAX_ERROR_CHARS, workers_status_html
from tests.ui_support import make_context, run_event

HOSTILE_ID = "<img src=x onerror=alert(1)>"
HOSTILE_NODE = "node\" onmouseover=\"alert(2)"
HOSTILE_ERROR = "RuntimeError: \"><script>alert(3)</script>\nTraceback line two"
LONG_ERROR = "E" * (MAX_ERROR_CHARS * 3)


class FakeCluster:
    """What the UI may call on a WorkerPool: describe(), summary(), trial_info(), holders()."""

    def __init__(self, workers: list[WorkerInfo]):
        self.workers = workers

    def describe(self) -> list[WorkerInfo]:
        return list(self.workers)

    def summary(self) -> str:
        return workers_summary(self.workers)

    def trial_info(self):  # the top bar's status asks for a merge being tried: none
        return None

    def holders(self, title: str) -> int:
        return sum(1 for worker in self.workers if title in worker.loaded_checkpoints)


def two_workers() -> list[WorkerInfo]:
    return [
        WorkerInfo(HOSTILE_ID, HOSTILE_NODE, "cuda:0", "busy", ("<b>ckpt</b> [1]",), current_job="job-3", jobs_done=5),
        WorkerInfo("worker-1", "node-2", "cpu", "idle", (), jobs_done=1, last_error=HOSTILE_ERROR),
        WorkerInfo("worker-2", "node-2", "", "dead", (), last_error=LONG_ERROR),
    ]


class _Reader(HTMLParser):
    """The tags, the title attributes and the text of the status HTML, as a browser would read them."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.titles: list[str] = []
        self.text = ""

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.titles += [value for name, value in attrs if name == "title"]
        assert [name for name, _ in attrs] == ["class", "title"], attrs  # no attribute smuggled in

    def handle_data(self, data):
        self.text += data


def read(markup: str) -> _Reader:
    reader = _Reader()
    reader.feed(markup)
    reader.close()
    return reader


def test_the_line_says_how_many_work_and_escapes_every_name():
    markup = workers_status_html(SimpleNamespace(cluster=FakeCluster(two_workers())))
    page = read(markup)
    assert page.tags == ["span"]  # the hostile id, title and error made no element of their own
    assert page.text == "2 workers, 1 busy"  # the dead one is not counted
    [title] = page.titles
    lines = title.split("\n")
    assert len(lines) == 3  # one line per worker: the error's own newline did not add one
    assert lines[0].startswith(f"{HOSTILE_ID} on {HOSTILE_NODE}: busy") and "job-3" in lines[0]
    assert "<b>ckpt</b> [1]" in lines[0] and "5 done" in lines[0]
    assert lines[1].startswith("worker-1 on node-2: idle")
    assert " ".join(HOSTILE_ERROR.split()) in lines[1]  # the text survives, on one line
    assert lines[2].startswith("worker-2 on node-2: dead") and len(lines[2]) < len(LONG_ERROR)


@pytest.mark.parametrize("context", [SimpleNamespace(), SimpleNamespace(cluster=None)],
                         ids=["no attribute", "None"])
def test_the_embedded_mode_shows_nothing(context):
    assert workers_status_html(context) == ""


# -- in the whole UI -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    context = make_context(tmp_path_factory.mktemp("workers-ui"), load=False)
    yield context
    context.jobs.shutdown()


def element_ids(blocks) -> dict[str, int]:
    return {c.get("props", {}).get("elem_id"): c["id"] for c in blocks.get_config_file()["components"]}


def test_the_embedded_page_has_no_workers_element(context):
    from modules.ui.app import build_ui

    assert "workers_status" not in element_ids(build_ui(context))


def test_in_ray_mode_the_line_is_on_the_page_and_its_timer_refreshes_it(context):
    from modules.ui.app import build_ui

    cluster = FakeCluster(two_workers())
    ray_context = dataclasses.replace(context)
    ray_context.cluster = cluster
    blocks = build_ui(ray_context)
    status_id = element_ids(blocks)["workers_status"]
    [tick] = [fn for fn in blocks.fns.values()
              if fn.targets and fn.targets[0][1] == "tick" and [o._id for o in fn.outputs] == [status_id]]
    cluster.workers = [dataclasses.replace(worker, state="busy") for worker in two_workers()[:2]]
    [markup] = run_event(blocks, tick.targets[0][0], "tick", [], context=ray_context)
    assert read(markup).text == "2 workers, 2 busy"
