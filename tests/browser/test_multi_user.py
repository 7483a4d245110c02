"""A server shared with `--multi-user`: ann and ben logged in at once in two browser contexts, cat (the
operator, `--admin-users`) in a third. Each generates and sees only their own images and jobs; queue
places are shown and follow the queue; a second Generate queues a second job; the operator sees every
user's jobs.

What the pages show is compared with what the API tells each user about their own jobs (GET
/sdapi/v1/jobs with their credentials), never with timings: ann's first job is long (many steps) and
is ended by her own Interrupt once everything has been looked at.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.harness import (
    CHECKPOINTS,
    basic_auth_header,
    http_status,
    open_page,
    start_server,
    write_tiny_checkpoints,
)
from tests.browser.ui import (
    GENERATION_TIMEOUT_MS,
    fill,
    gallery_images,
    unique_prompt,
)

PASSWORDS = {"ann": "pw1", "ben": "pw2", "cat": "pw3"}
QUEUE_ROWS = "#atelier_my_queue [data-job-id]"
# ann's first job: 15000 steps of 128x128, minutes even on a fast machine, far longer than the test
# takes to look at it (she interrupts it).
LONG_JOB = {"txt2img_width": 128, "txt2img_height": 128, "txt2img_steps": 150, "txt2img_batch_count": 100}


@pytest.fixture(scope="module")
def multi_server(browser, tmp_path_factory, artifacts_dir):
    data_dir = tmp_path_factory.mktemp("atelier-multi-user-data")
    write_tiny_checkpoints(data_dir, CHECKPOINTS[:1])
    # No live previews: a preview decoded and sent per poll takes CPU the pages and the long job
    # compete for on a 2-core machine; this test is about the queue.
    (data_dir / "config.json").write_text(json.dumps({"live_previews_enable": False}), encoding="utf-8")
    auth = ",".join(f"{user}:{password}" for user, password in PASSWORDS.items())
    server = start_server(data_dir, artifacts_dir / "server-multi-user.log",
                          ["--multi-user", "--gradio-auth", auth, "--admin-users", "cat"],
                          credentials=("ann", PASSWORDS["ann"]))
    yield server
    server.stop()


class _UserNode:
    """The test's item under another name, so each user's page leaves its own screenshot."""

    def __init__(self, node, user: str):
        self._node, self.nodeid = node, f"{node.nodeid}-{user}"

    def __getattr__(self, name):
        return getattr(self._node, name)


class _UserRequest:
    def __init__(self, request, user: str):
        self.node = _UserNode(request.node, user)


@pytest.fixture
def pages(browser, request, artifacts_dir, multi_server):
    """A logged-in page per user, each in its own browser context (its own credentials)."""
    opened, generators = {}, []
    try:
        for user, password in PASSWORDS.items():
            generator = open_page(browser, _UserRequest(request, user), artifacts_dir, multi_server,
                                  http_credentials={"username": user, "password": password})
            generators.append(generator)
            opened[user] = next(generator)
        yield opened
    finally:
        for generator in generators:
            next(generator, None)  # saves the page's screenshot and closes its context


def api_jobs(server, user: str) -> list[dict]:
    """The jobs the API shows `user` (their own; the operator's: everyone's)."""
    answer = httpx.get(server.url + "/sdapi/v1/jobs", headers=basic_auth_header((user, PASSWORDS[user])), timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def unfinished_ids(server, user: str) -> set[str]:
    return {job["id"] for job in api_jobs(server, user) if job["state"] in ("queued", "running")}


def queue_rows(page: Page) -> dict[str, str]:
    """job id -> data-state of each row of the page's My queue panel."""
    return dict(page.locator(QUEUE_ROWS).evaluate_all(
        "rows => rows.map(r => [r.getAttribute('data-job-id'), r.getAttribute('data-state')])"))


def expect_queue_rows(page: Page, expected: dict[str, str]) -> None:
    """Wait until the panel (refreshed by a timer) lists exactly `expected`."""
    rows = page.locator(QUEUE_ROWS)
    expect(rows).to_have_count(len(expected), timeout=GENERATION_TIMEOUT_MS)
    for job_id, state in expected.items():
        expect(page.locator(f"#atelier_my_queue [data-job-id='{job_id}']")).to_have_attribute(
            "data-state", state, timeout=GENERATION_TIMEOUT_MS)


def ordinal(number: int) -> str:
    return f"{number}{'th' if 10 <= number % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(number % 10, 'th')}"


def place_text(position: int) -> str:
    """How the page names a waiting job's place (0 = it starts next)."""
    return "next" if position == 0 else ordinal(position + 1)


def open_pages(pages: dict[str, Page], url: str) -> None:
    """`open_ui` for several pages, their loads overlapping (each is seconds of the server's work)."""
    responses = {user: page.goto(url + "/", wait_until="commit") for user, page in pages.items()}
    for user, page in pages.items():
        assert responses[user] is not None and responses[user].status == 200, (user, responses[user])
    for page in pages.values():
        expect(page.locator("#txt2img_prompt textarea")).to_be_visible(timeout=60_000)
        expect(page.locator("body")).to_have_attribute("data-atelier-ui-loaded", "true", timeout=60_000)


def test_two_users_share_the_queue_and_keep_their_jobs_and_images_apart(pages, multi_server):
    server = multi_server
    ann, ben, cat = pages["ann"], pages["ben"], pages["cat"]
    open_pages(pages, server.url)
    for page in pages.values():
        expect(page.locator("#atelier_my_queue")).to_be_visible()
    # Both forms are filled before anything runs (a page is slower to drive while a job takes a core).
    for elem_id, value in (("txt2img_width", 64), ("txt2img_height", 64), ("txt2img_steps", 3)):
        fill(ben, elem_id, value)  # one image, the default batch count
    ben_prompt = unique_prompt("ben's small boat")
    fill(ben, "txt2img_prompt", ben_prompt)
    for elem_id, value in LONG_JOB.items():
        fill(ann, elem_id, value)
    ann_prompt = unique_prompt("ann's long lighthouse")
    fill(ann, "txt2img_prompt", ann_prompt)

    # ann starts her long job; her panel lists it as running.
    ann.locator("#txt2img_generate").click()
    expect(ann.locator("#txt2img_progress")).to_contain_text(re.compile(r"step [1-9]"), timeout=GENERATION_TIMEOUT_MS)
    (ann_first,) = unfinished_ids(server, "ann")
    expect_queue_rows(ann, {ann_first: "running"})

    # ben presses Generate: his job waits behind ann's, and his bar says so with his place.
    ben.locator("#txt2img_generate").click()
    expect(ben.locator("#txt2img_progress")).to_contain_text("Waiting in the queue", timeout=GENERATION_TIMEOUT_MS)
    (ben_job,) = api_jobs(server, "ben")
    assert ben_job["state"] == "queued", ben_job
    expect(ben.locator("#txt2img_progress")).to_contain_text(
        f"Waiting in the queue: {place_text(ben_job['queue_position'])}")
    expect_queue_rows(ben, {ben_job["id"]: "queued"})

    # ann presses Generate again while her job runs: a second job of hers is queued, after ben's
    # (round-robin: ben has not been served yet), and her page says where it stands.
    ann.locator("#txt2img_generate").click()
    expect(ann.locator(QUEUE_ROWS)).to_have_count(2, timeout=GENERATION_TIMEOUT_MS)  # My queue: two of hers
    ann_jobs = {job["id"]: job for job in api_jobs(server, "ann") if job["state"] in ("queued", "running")}
    assert ann_first in ann_jobs and len(ann_jobs) == 2, ann_jobs
    expect_queue_rows(ann, {job_id: job["state"] for job_id, job in ann_jobs.items()})
    (ann_second,) = (job for job in ann_jobs.values() if job["state"] == "queued")
    assert ann_second["queue_position"] > api_jobs(server, "ben")[0]["queue_position"]
    expect(ann.locator("#html_log_txt2img")).to_contain_text(
        f"Queued: {place_text(ann_second['queue_position'])} in the queue")
    # Her first job keeps the bar: the second click's handler waits quietly.
    expect(ann.locator("#txt2img_progress")).to_contain_text(re.compile(r"step \d+"))

    # Neither panel lists the other's jobs: ann has no row (no Cancel) of ben's, ben none of hers.
    assert ben_job["id"] not in queue_rows(ann)
    assert not set(queue_rows(ben)) & set(ann_jobs)
    # The operator sees everyone's jobs, with their owners.
    expect_queue_rows(cat, {**{job_id: job["state"] for job_id, job in ann_jobs.items()}, ben_job["id"]: "queued"})
    owner = cat.locator(f"#atelier_my_queue [data-job-id='{ben_job['id']}'] .owner")
    expect(owner).to_have_text("ben")

    # ann cancels her second job from her panel and interrupts her first with its button.
    ann.locator(f"#atelier_my_queue [data-cancel='{ann_second['id']}']").click()
    expect(ann.locator(f"#atelier_my_queue [data-job-id='{ann_second['id']}']")).to_have_count(0)
    ann.locator("#txt2img_interrupt").click()
    expect(ann.locator("#html_info_txt2img")).to_contain_text("Interrupted", timeout=GENERATION_TIMEOUT_MS)
    states = {job["id"]: job["state"] for job in api_jobs(server, "ann")}
    assert states[ann_first] == states[ann_second["id"]] == "interrupted", states
    # ben's job starts once hers has ended: his bar leaves the queue and his image comes.
    expect(ben.locator("#html_info_txt2img")).to_contain_text(ben_prompt, timeout=GENERATION_TIMEOUT_MS)
    expect(ben.locator("#txt2img_progress")).not_to_contain_text("Waiting in the queue")
    for page in (ann, ben, cat):
        expect(page.locator(QUEUE_ROWS)).to_have_count(0, timeout=GENERATION_TIMEOUT_MS)

    # Each gallery shows that user's own images (ann's interrupted job keeps the image it was making),
    # served to them and to nobody else.
    ann_images, ben_images = gallery_images(ann, "txt2img_gallery"), gallery_images(ben, "txt2img_gallery")
    assert ann_images and ben_images
    assert all("/atelier-users/ann/" in src for src in ann_images), ann_images
    assert all("/atelier-users/ben/" in src for src in ben_images), ben_images
    ann_auth, ben_auth = (basic_auth_header((user, PASSWORDS[user])) for user in ("ann", "ben"))
    for src in ann_images:
        url = src if src.startswith("http") else server.url + src
        assert http_status(url, headers=ann_auth)[0] == 200, src
        assert http_status(url, headers=ben_auth)[0] == 404, src
    # Saved images are in their user's folder under outputs/: /file= gives ann hers, ben gets 404.
    outputs = Path(server.data_dir, "outputs")
    saved = sorted(outputs.rglob("*.png"))
    assert {path.relative_to(outputs).parts[0] for path in saved} == {"ann", "ben"}, saved
    anns = [path for path in saved if path.relative_to(outputs).parts[0] == "ann"]
    assert http_status(f"{server.url}/file={anns[0]}", headers=ann_auth)[0] == 200
    assert http_status(f"{server.url}/file={anns[0]}", headers=ben_auth)[0] == 404
