"""Attacks by one user of a `--multi-user` server on another's jobs and images, over HTTP against the app
webui.py serves (the API and the Gradio UI mounted, HTTP Basic logins from --gradio-auth, a tiny
checkpoint loaded).

ben is the attacker, ann the victim, cat the operator. ben knows ann's job ids, her force_task_id, the
URLs of her gallery and her saved images (a shared screen, a guessed name, a log line) and tries them on
every route: the job routes, interrupt and skip, the UI's Interrupt and My queue events, the file
routes with `..`, links, percent-encoding and /proc paths, Gradio event bodies naming her files, and
global options. tests/test_api_multi_user.py covers the API routes on a bare API app and
tests/test_user_files.py the guard on stand-in routes; here every attack goes through the whole served
stack (auth middleware, request guards, user file guard, Gradio's own routes and rules).

Jobs that must stay running or waiting while ben tries are plain work functions submitted to the queue
with ann as owner (`held`), so nothing depends on timing. A server without --multi-user keeps A1111's
behaviour: every login sees every job and image (the last test).
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import pytest

from modules.serving.accounts import USER_STATE_KEY, user_of
from modules.serving.paths import REPO_ROOT
from tests.test_api_support import WAIT, LiveServer, basic_auth, make_context
from tests.test_api_multi_user import held_job as held, running, wait_for

PASSWORDS = {"ann": "ann-pw-5e1f0c", "ben": "ben-pw-77a2d9", "cat": "cat-pw-0b93e4"}
AUTH = ",".join(f"{user}:{password}" for user, password in PASSWORDS.items())
MULTI = ["--multi-user", "--gradio-auth", AUTH, "--admin-users", "cat", "--api"]
SMALL = {"width": 64, "height": 64, "steps": 2, "sampler_name": "Euler"}
PANEL = "atelier_my_queue"


@dataclasses.dataclass
class Site:
    url: str
    data: Path
    cache: Path
    context: object

    def client(self, user: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=basic_auth(user, PASSWORDS[user]), timeout=WAIT)


def _serve(tmp_path_factory, name: str, flags: list[str]) -> Iterator[Site]:
    import webui

    data = tmp_path_factory.mktemp(name)
    context = make_context(data, names=("a",), args=flags)
    try:
        app = webui.build_app(context.args, context)
        cache = Path(os.environ["GRADIO_TEMP_DIR"])  # this app's Gradio cache, set while it was built
        with LiveServer(app, lifespan="on") as server:
            yield Site(server.url, data, cache, context)
    finally:
        context.jobs.shutdown(timeout=WAIT)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    yield from _serve(tmp_path_factory, "multi-user-attacks", MULTI)


# --- jobs held in place -----------------------------------------------------------------------------

def untouched(job) -> bool:
    return not job.interrupt_requested and not job.skip_requested and not job.finished


# --- Gradio's protocol, as the page speaks it -----------------------------------------------------------

def _elem_ids(config: dict) -> dict[int, str | None]:
    return {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}


def _event(config: dict, elem_id: str, trigger: str) -> tuple[int, int, dict]:
    """(fn_index, trigger id, dependency) of the first `trigger` event of the component `elem_id`."""
    component = next(cid for cid, elem in _elem_ids(config).items() if elem == elem_id)
    for index, dependency in enumerate(config["dependencies"]):
        if [component, trigger] in [list(target) for target in dependency.get("targets") or []]:
            return dependency.get("id", index), component, dependency
    raise AssertionError(f"no {trigger} event on #{elem_id}: the probe would test nothing")


def _defaults(config: dict, dependency: dict, **values) -> list:
    """The inputs of a dependency as a freshly loaded page sends them, `values` by elem_id replaced."""
    components = {c["id"]: c for c in config["components"]}
    data = []
    for component_id in dependency["inputs"]:
        props = components[component_id].get("props", {})
        data.append(values.get(props.get("elem_id"), props.get("value")))
    return data


def run_event(client: httpx.Client, fn_index: int, trigger: int, data: list, event_data=None) -> dict:
    """One event through Gradio's queue; the final message, or {"joined": status} when refused."""
    session = uuid.uuid4().hex
    joined = client.post("/gradio_api/queue/join", json={
        "data": data, "event_data": event_data, "fn_index": fn_index, "trigger_id": trigger,
        "session_hash": session})
    if joined.status_code != 200:
        return {"joined": joined.status_code, "text": joined.text}
    with client.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") in ("process_completed", "unexpected_error"):
                    return message
    return {}


def ui_generate(client: httpx.Client, prompt: str) -> dict:
    """Press txt2img's Generate (64x64, 2 steps); the final message of its event."""
    config = client.get("/config").json()
    fn_index, trigger, dependency = _event(config, "txt2img_generate", "click")
    data = _defaults(config, dependency, txt2img_prompt=prompt, txt2img_width=64, txt2img_height=64,
                     txt2img_steps=2)
    return run_event(client, fn_index, trigger, data)


def panel_event(client: httpx.Client, trigger: str, event_data=None) -> str:
    """The My queue panel's HTML after its `trigger` event ("click" = a Cancel button)."""
    config = client.get("/config").json()
    fn_index, component, dependency = _event(config, PANEL, trigger)
    message = run_event(client, fn_index, component, _defaults(config, dependency), event_data)
    assert message.get("success") is True, message
    return message["output"]["data"][0]


def panel_refresh(client: httpx.Client) -> str:
    config = client.get("/config").json()
    panel = next(cid for cid, elem in _elem_ids(config).items() if elem == PANEL)
    for index, dependency in enumerate(config["dependencies"]):
        triggers = [target[1] for target in dependency.get("targets") or []]
        if dependency["outputs"] == [panel] and "tick" in triggers:
            message = run_event(client, dependency.get("id", index), dependency["targets"][0][0],
                                _defaults(config, dependency))
            assert message.get("success") is True, message
            return message["output"]["data"][0]
    raise AssertionError("no timer refreshes #atelier_my_queue")


# --- ann's images ----------------------------------------------------------------------------------------

@dataclasses.dataclass
class AnnsImages:
    prompt: str  # in each image's infotext: seeing it in an answer is seeing her image
    saved: Path  # outputs/ann/txt2img-images/<date>/<name>.png (API, save_images)
    gallery: str  # the path of her gallery image in Gradio's cache (UI Generate)
    gallery_url: str


@pytest.fixture(scope="module")
def anns(site) -> AnnsImages:
    prompt = f"ann's private lighthouse {uuid.uuid4().hex[:8]}"
    with site.client("ann") as ann:
        answer = ann.post("/sdapi/v1/txt2img", json={"prompt": prompt, "save_images": True, "seed": 11, **SMALL})
        assert answer.status_code == 200, answer.text
        message = ui_generate(ann, prompt)
    assert message.get("success") is True, message
    # Both saved an image (the UI saves by default): the first is hers all the same.
    saved = sorted(path for path in (site.data / "outputs").rglob("*.png") if "ann" in path.parts)[0]
    assert saved.resolve().is_relative_to((site.data / "outputs" / "ann").resolve()), saved
    assert prompt.encode() in saved.read_bytes()
    (item,) = message["output"]["data"][0]  # the gallery: one image
    image = item["image"]
    assert prompt.encode() in Path(image["path"]).read_bytes()
    return AnnsImages(prompt, saved, image["path"], image["url"])


def raw_get(site: Site, user: str, target: str, method: str = "GET") -> tuple[int, bytes]:
    """A request whose target goes out byte for byte (httpx would resolve `..` and re-encode)."""
    parts = urlsplit(site.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=WAIT)
    try:
        connection.putrequest(method, target, skip_accept_encoding=True)
        for key, value in basic_auth(user, PASSWORDS[user]).items():
            connection.putheader(key, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# --- jobs ------------------------------------------------------------------------------------------------

def test_ben_cannot_see_follow_or_stop_anns_job_by_id(site):
    with running(site.context, "ann") as job, site.client("ben") as ben, site.client("ann") as ann:
        unknown = ben.get("/sdapi/v1/jobs/task-999999")
        assert unknown.status_code == 404
        seen = ben.get(f"/sdapi/v1/jobs/{job.id}")
        assert seen.status_code == 404
        assert seen.json()["errors"].replace(job.id, "<id>") == unknown.json()["errors"].replace("task-999999", "<id>")
        assert ben.post(f"/sdapi/v1/jobs/{job.id}/interrupt").status_code == 404
        assert job.id not in ben.get("/sdapi/v1/jobs").text
        assert ben.get("/sdapi/v1/progress").json()["current_task"] != job.id
        for route in ("/sdapi/v1/interrupt", "/sdapi/v1/skip"):
            assert ben.post(route).status_code == 200  # A1111 answers 200; nothing of ann's is touched
        assert untouched(job)
        assert ann.get(f"/sdapi/v1/jobs/{job.id}").json()["state"] == "running"


def test_bens_interrupt_and_skip_buttons_do_not_reach_anns_job(site):
    """The page's Interrupt/Skip send the tab's job id from the session state; a session that has no
    job of its own falls back to the running job of the tab's kind, which must be the caller's."""
    with running(site.context, "ann") as job, site.client("ben") as ben:
        config = ben.get("/config").json()
        for elem_id in ("txt2img_interrupt", "txt2img_skip"):
            fn_index, trigger, dependency = _event(config, elem_id, "click")
            for sent in (None, job.id):  # a client-sent state value is not taken as the session's
                message = run_event(ben, fn_index, trigger, [sent] * len(dependency["inputs"]))
                assert message.get("success") is True, (elem_id, message)
        assert untouched(job)


class _FakeRequest:
    """What Gradio passes a handler: something with the Starlette request's scope."""

    def __init__(self, scope: dict):
        self.scope = scope


def test_my_queue_shows_ben_only_his_jobs_and_his_cancel_cannot_reach_anns(site):
    from modules.ui import my_queue

    with running(site.context, "cat") as cats, held(site.context, "ann") as anns, held(site.context, "ben") as bens, \
            site.client("ben") as ben, site.client("cat") as cat:
        assert anns.state.value == bens.state.value == "queued"
        shown = panel_refresh(ben)
        assert f"data-job-id='{bens.id}'" in shown
        assert anns.id not in shown and cats.id not in shown
        # Crafted Cancel clicks naming ann's waiting job and cat's running one.
        for victim in (anns, cats):
            after = panel_event(ben, "click", {"job_id": victim.id})
            assert victim.id not in after
        assert anns.state.value == "queued" and untouched(anns) and untouched(cats)
        # The handler itself, called with a request whose scope names ben.
        request = _FakeRequest({"state": {USER_STATE_KEY: "ben"}})
        assert my_queue.cancel_job(site.context, user_of(site.context.accounts, request), anns.id) is False
        assert anns.state.value == "queued"
        # The operator sees everyone's jobs with their owners.
        everything = panel_refresh(cat)
        for job in (cats, anns, bens):
            assert f"data-job-id='{job.id}'" in everything
        # ben's own Cancel does work: the probe above could have seen a cancel.
        panel_event(ben, "click", {"job_id": bens.id})
        assert bens.state.value == "interrupted"


def test_a_users_hostile_prompt_and_task_id_are_inert_in_the_operators_panel(site):
    """The operator's My queue lists every user's jobs with their prompts: ben's markup stays text."""
    prompt = "<img src=x onerror=alert(1)> ' onmouseover='alert(2)"
    task_id = "t' onclick='alert(3)"
    answers: list = []

    def submit() -> None:
        with site.client("ben") as ben:
            answers.append(ben.post("/sdapi/v1/txt2img", json={"prompt": prompt, "force_task_id": task_id, **SMALL}))

    thread = threading.Thread(target=submit)
    with running(site.context, "cat"):
        thread.start()
        wait_for(lambda: any(job.owner == "ben" for job in site.context.jobs.waiting_jobs()))
        (bens,) = (job for job in site.context.jobs.waiting_jobs() if job.owner == "ben")
        with site.client("cat") as cat:
            shown = panel_refresh(cat)
        assert f"data-job-id='{bens.id}'" in shown
        assert "<img" not in shown and "onmouseover='" not in shown and "onclick='" not in shown, shown
        assert "&lt;img src=x" in shown  # shown, as text
        site.context.jobs.interrupt(bens.id)
    thread.join(WAIT)


def test_force_task_id_collision_reaches_only_ones_own_job(site):
    """ann and ben both wait behind cat's job with the same force_task_id; ben following, cancelling
    or interrupting that id reaches his own job only, and ann's job then runs and finishes."""
    answers: dict[str, httpx.Response] = {}

    def submit(user: str) -> None:
        with site.client(user) as client:
            answers[user] = client.post("/sdapi/v1/txt2img", json={"prompt": f"{user} x", "force_task_id": "my-task",
                                                                  **SMALL})

    jobs = site.context.jobs
    with running(site.context, "cat"):
        threads = [threading.Thread(target=submit, args=(user,)) for user in ("ann", "ben")]
        for thread in threads:
            thread.start()
        wait_for(lambda: {job.owner for job in jobs.waiting_jobs()} >= {"ann", "ben"})
        waiting = {job.owner: job for job in jobs.waiting_jobs() if job.owner in ("ann", "ben")}
        with site.client("ben") as ben:
            assert ben.get("/sdapi/v1/jobs/my-task").json()["id"] == waiting["ben"].id
            assert ben.post("/sdapi/v1/jobs/my-task/interrupt").json()["id"] == waiting["ben"].id
        assert waiting["ben"].state.value == "interrupted"
        assert waiting["ann"].state.value == "queued" and untouched(waiting["ann"])
    for thread in threads:
        thread.join(WAIT)
    assert answers["ann"].status_code == 200, answers["ann"].text
    assert waiting["ann"].state.value == "done"
    assert json.loads(answers["ann"].json()["info"])["job_id"] == waiting["ann"].id


def test_the_queue_limit_is_429_on_the_api_and_a_message_on_the_page(site):
    context = site.context
    limit = context.settings.current()["multi_user_queue_limit"]
    with running(context, "cat"), ExitStack() as stack, site.client("ben") as ben, site.client("ann") as ann:
        for _ in range(limit):
            stack.enter_context(held(context, "ben"))
        refused = ben.post("/sdapi/v1/txt2img", json={"prompt": "one too many", **SMALL})
        assert refused.status_code == 429 and f"{limit} jobs waiting" in refused.json()["errors"], refused.text
        message = ui_generate(ben, "one too many")
        assert message.get("success") is True, message
        page = json.dumps(message["output"]["data"])
        assert f"{limit} jobs waiting" in page and "My queue" in page, page
        assert sum(job.owner == "ben" for job in context.jobs.waiting_jobs()) == limit
        with held(context, "ann") as anns:  # per user: ann still gets a place
            assert anns.state.value == "queued"
        assert ann.get("/sdapi/v1/jobs").status_code == 200


def test_bens_option_post_of_a_global_key_is_403_and_changes_nothing(site):
    config_file = site.data / "config.json"
    before_file = config_file.read_bytes() if config_file.exists() else None
    with site.client("ben") as ben, site.client("ann") as ann:
        before = ann.get("/sdapi/v1/options").json()
        before_page = ann.get("/atelier/opts.json").json()
        for body in ({"samples_format": "jpg"}, {"outdir_txt2img_samples": str(site.data / "outputs" / "ann")},
                     {"CLIP_stop_at_last_layers": 2, "save_images_add_number": False},
                     {"multi_user_queue_limit": 1000}, {"queue_order": "fifo"}):
            answer = ben.post("/sdapi/v1/options", json=body)
            assert answer.status_code == 403 and "--admin-users" in answer.json()["errors"], (body, answer.text)
        assert ann.get("/sdapi/v1/options").json() == before
        assert ann.get("/atelier/opts.json").json() == before_page
        assert site.context.user_choices.of("ben") == {}
    assert (config_file.read_bytes() if config_file.exists() else None) == before_file


def test_bens_settings_tab_apply_changes_nothing(site):
    """The Settings tab's Apply event, sent by ben with a global setting changed, is refused."""
    config_file = site.data / "config.json"
    before_file = config_file.read_bytes() if config_file.exists() else None
    before = dict(site.context.settings.current())
    assert before["samples_format"] != "jpg"
    with site.client("ben") as ben:
        config = ben.get("/config").json()
        fn_index, trigger, dependency = _event(config, "settings_submit", "click")
        data = _defaults(config, dependency, setting_samples_format="jpg", setting_multi_user_queue_limit=1000)
        text = json.dumps(run_event(ben, fn_index, trigger, data))
    assert "--admin-users" in text, text[:500]
    assert site.context.settings.current() == before
    assert (config_file.read_bytes() if config_file.exists() else None) == before_file


# --- files -----------------------------------------------------------------------------------------------

def _attack_targets(site: Site, anns: AnnsImages) -> list[str]:
    """Request targets naming ann's saved image or gallery image, as ben could write them."""
    outputs = site.data / "outputs"
    saved = str(anns.saved)
    under_ann = anns.saved.relative_to(outputs / "ann").as_posix()
    ben_folder = outputs / "ben" / "txt2img-images"
    ben_folder.mkdir(parents=True, exist_ok=True)
    link = ben_folder / "look.png"
    if not link.is_symlink():
        link.symlink_to(anns.saved)
    folder_link = outputs / "ben" / "shortcut"
    if not folder_link.is_symlink():
        folder_link.symlink_to(outputs / "ann", target_is_directory=True)
    paths = [
        saved,
        f"{outputs}/ben/../ann/{under_ann}",
        f"{outputs}/ben/txt2img-images/../../ann/{under_ann}",
        f"{outputs}/./ann/{under_ann}",
        f"{outputs}//ann//{under_ann}",
        "/" + saved,
        os.path.relpath(saved, REPO_ROOT),
        os.path.relpath(saved, Path.cwd()),
        f"/proc/self/root{saved}",
        f"/proc/self/cwd/{os.path.relpath(saved, Path.cwd())}",
        str(link),
        f"{folder_link}/{under_ann}",
        anns.gallery,
        f"/proc/self/root{anns.gallery}",
        f"{site.cache}/../{site.cache.name}/{Path(anns.gallery).relative_to(site.cache).as_posix()}",
    ]
    targets = []
    for path in paths:
        targets += [path, quote(path, safe=""), quote(path, safe="/").replace(".", "%2e"),
                    quote(quote(path, safe=""), safe=""), path + "?123", path + "%00.png"]
    return targets


def test_ben_gets_none_of_anns_images_from_the_file_routes(site, anns):
    secret = anns.prompt.encode()
    leaks, statuses = [], set()
    for prefix in ("/file=", "/gradio_api/file=", "/gradio_api/file/"):
        for target in _attack_targets(site, anns):
            for method in ("GET", "HEAD"):
                status, body = raw_get(site, "ben", prefix + target, method)
                statuses.add(status)
                if status == 200 or secret in body:
                    leaks.append(f"{method} {prefix}{target} -> {status}")
    assert not leaks, "ben reads ann's image:\n" + "\n".join(leaks)
    assert statuses <= {400, 403, 404, 405}, statuses
    # The same URLs serve ann and the operator: the refusals above are about who asks.
    with site.client("ann") as ann, site.client("cat") as cat:
        for client in (ann, cat):
            assert secret in client.get(f"/file={anns.saved}").content
            assert secret in client.get(anns.gallery_url.replace(site.url, "")).content


def test_the_gallery_url_the_page_got_is_404_for_ben(site, anns):
    path = urlsplit(anns.gallery_url).path
    assert "/atelier-users/ann/" in path, anns.gallery_url
    with site.client("ben") as ben:
        answer = ben.get(path)
        assert answer.status_code == 404 and anns.prompt.encode() not in answer.content
        # His own gallery image is his: the route works for a user's own file.
        message = ui_generate(ben, "ben's own")
        (item,) = message["output"]["data"][0]
        assert "/atelier-users/ben/" in item["image"]["url"]
        assert ben.get(urlsplit(item["image"]["url"]).path).status_code == 200


def test_events_naming_anns_images_as_inputs_are_refused(site, anns):
    """PNG Info would hand back the image's infotext: an event naming ann's file as its input must
    not run for ben, in any spelling of the path or of a `.../file=` url."""
    secret = anns.prompt
    with site.client("ben") as ben, site.client("ann") as ann:
        config = ben.get("/config").json()
        fn_index, trigger, dependency = _event(config, "pnginfo_image", "change")
        position = next(i for i, cid in enumerate(dependency["inputs"])
                        if _elem_ids(config).get(cid) == "pnginfo_image")

        def send(client: httpx.Client, file: dict) -> dict:
            data = _defaults(config, dependency)
            data[position] = {"orig_name": "x.png", "meta": {"_type": "gradio.FileData"}, **file}
            return run_event(client, fn_index, trigger, data)

        # ann's own gallery image: PNG Info shows her prompt (so a leak would be seen below).
        mine = send(ann, {"path": anns.gallery})
        assert secret in json.dumps(mine), mine
        leaks = []
        for target in _attack_targets(site, anns):
            for file in ({"path": target}, {"path": "x.png", "url": f"{site.url}/gradio_api/file={target}"},
                         {"path": "x.png", "url": f"{site.url}/file={target}"}):
                message = send(ben, file)
                if secret in json.dumps(message) or message.get("success") is True:
                    leaks.append(f"{file} -> {str(message)[:200]}")
        assert not leaks, "ben's events read ann's image:\n" + "\n".join(leaks)


def test_bens_extras_batch_cannot_read_or_write_anns_folders(site, anns):
    """Extras' Batch from Directory names server folders as text (no FileData for the guard to see):
    ann's folder, reached by `..`, by a link in ben's own folder, or as the output, is refused; a link
    to her image inside his own folder is not processed."""
    from PIL import Image

    outputs = site.data / "outputs"
    _attack_targets(site, anns)  # makes ben's link to ann's folder
    anns_day = anns.saved.parent
    under_ann = anns_day.relative_to(outputs / "ann").as_posix()
    own = outputs / "ben" / "in"
    own.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "green").save(own / "own.png")
    if not (own / "hers.png").is_symlink():
        (own / "hers.png").symlink_to(anns.saved)
    before = {path: path.stat().st_mtime_ns for path in outputs.rglob("*") if path.is_file()}
    with site.client("ben") as ben:
        config = ben.get("/config").json()
        fn_index, trigger, dependency = _event(config, "extras_generate", "click")

        def batch(input_dir: str, output_dir: str = "") -> str:
            data = _defaults(config, dependency, extras_selected_mode=2, extras_batch_input_dir=input_dir,
                             extras_batch_output_dir=output_dir)
            return json.dumps(run_event(ben, fn_index, trigger, data))

        for input_dir, output_dir in ((str(anns_day), ""), (anns_day.relative_to(site.data).as_posix(), ""),
                                      (f"{outputs}/ben/../ann/{under_ann}", ""),
                                      (f"{outputs}/ben/shortcut/{under_ann}", ""),
                                      (str(own), str(outputs / "ann" / "extras-images")),
                                      (str(own), f"{outputs}/ben/shortcut/extras-images"),
                                      (str(own), f"{outputs}/ben/../ann/extras-images")):
            text = batch(input_dir, output_dir)
            assert anns.prompt not in text, (input_dir, output_dir, text[:300])
            assert "not one of your folders" in text, (input_dir, output_dir, text[:300])
        # His own folder is processed (so the refusals above are about ann's): his image only.
        assert anns.prompt not in batch(str(own))
    after = {path: path.stat().st_mtime_ns for path in outputs.rglob("*") if path.is_file()}
    assert {path: after[path] for path in before} == before
    made = sorted(set(after) - set(before))
    assert made and all(path.relative_to(outputs).parts[:2] == ("ben", "extras-images") for path in made), made
    assert len(made) == 1 and anns.prompt.encode() not in made[0].read_bytes(), made


def test_bens_img2img_batch_cannot_read_anns_folders(site, anns):
    """img2img Batch names folders as text too: ann's folder as the PNG info folder (her prompts for his
    same-named images), as the mask folder, through `..` or his link, with folder or uploaded input."""
    from PIL import Image

    outputs = site.data / "outputs"
    _attack_targets(site, anns)  # makes ben's link to ann's folder
    anns_day = anns.saved.parent
    under_ann = anns_day.relative_to(outputs / "ann").as_posix()
    own = outputs / "ben" / "same-names"
    own.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), "gray").save(own / anns.saved.name)  # named as her image, to pick up its infotext
    before = {path: path.stat().st_mtime_ns for path in outputs.rglob("*") if path.is_file()}
    with site.client("ben") as ben:
        config = ben.get("/config").json()
        fn_index, trigger, dependency = _event(config, "img2img_generate", "click")
        upload = ben.post("/gradio_api/upload", files={"files": (anns.saved.name, (own / anns.saved.name).read_bytes(),
                                                                 "image/png")})
        assert upload.status_code == 200, upload.text
        uploaded = [{"path": upload.json()[0], "orig_name": anns.saved.name, "meta": {"_type": "gradio.FileData"}}]
        theirs = (str(anns_day), f"{outputs}/ben/../ann/{under_ann}", f"{outputs}/ben/shortcut/{under_ann}",
                  anns_day.relative_to(site.data).as_posix())
        cases = [{"img2img_batch_source_type": "from dir", "img2img_batch_input_dir": str(own),
                  "img2img_batch_use_png_info": True, "img2img_batch_png_info_dir": folder} for folder in theirs]
        cases += [{"img2img_batch_source_type": "from dir", "img2img_batch_input_dir": str(own),
                   "img2img_batch_inpaint_mask_dir": folder} for folder in theirs[:3]]
        cases += [{"img2img_batch_source_type": "upload", "img2img_image_batch": uploaded,
                   "img2img_batch_use_png_info": True, "img2img_batch_png_info_dir": folder} for folder in theirs[:3]]
        for case in cases:
            data = _defaults(config, dependency, img2img_selected_mode=5, img2img_width=64, img2img_height=64,
                             img2img_steps=2, img2img_prompt="ben's", **case)
            text = json.dumps(run_event(ben, fn_index, trigger, data))
            assert anns.prompt not in text, (case, text[:300])
            assert "not one of your folders" in text, (case, text[:300])
        # His own folders are accepted (so the refusals above are about ann's).
        data = _defaults(config, dependency, img2img_selected_mode=5, img2img_width=64, img2img_height=64,
                         img2img_steps=2, img2img_prompt="ben's", img2img_batch_source_type="from dir",
                         img2img_batch_input_dir=str(own), img2img_batch_use_png_info=True,
                         img2img_batch_png_info_dir=str(own))
        text = json.dumps(run_event(ben, fn_index, trigger, data))
        assert "not one of your folders" not in text and anns.prompt not in text, text[:300]
    after = {path: path.stat().st_mtime_ns for path in outputs.rglob("*") if path.is_file()}
    assert {path: after[path] for path in before} == before
    made = sorted(set(after) - set(before))
    assert made and all(path.relative_to(outputs).parts[0] == "ben" for path in made), made
    assert not any(anns.prompt.encode() in path.read_bytes() for path in made)


def test_no_page_or_route_ben_reads_shows_another_users_password(site):
    with site.client("ben") as ben:
        for route in ("/", "/config", "/sdapi/v1/cmd-flags", "/sdapi/v1/options", "/atelier/opts.json",
                      "/sdapi/v1/jobs", "/atelier/v1/workers"):
            answer = ben.get(route)
            assert answer.status_code == 200, (route, answer.status_code)
            for user in ("ann", "cat"):
                assert PASSWORDS[user] not in answer.text, (route, user)


# --- a server without --multi-user -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def shared_site(tmp_path_factory):
    yield from _serve(tmp_path_factory, "single-user-shared", ["--gradio-auth", AUTH, "--api"])


def test_without_multi_user_every_login_sees_and_controls_every_job_and_image(shared_site):
    site = shared_site
    assert not site.context.accounts.multi_user
    with site.client("ann") as ann, site.client("ben") as ben:
        prompt = f"a shared lighthouse {uuid.uuid4().hex[:8]}"
        assert ann.post("/sdapi/v1/txt2img", json={"prompt": prompt, "save_images": True, **SMALL}).status_code == 200
        (saved,) = (site.data / "outputs" / "txt2img-images").rglob("*.png")
        assert prompt.encode() in ben.get(f"/file={saved}").content
        assert PANEL not in json.dumps(ben.get("/config").json())  # no My queue: the page is A1111's
        with running(site.context, None) as first, held(site.context, None) as second:
            listed = [job["id"] for job in ben.get("/sdapi/v1/jobs").json()]
            assert first.id in listed and second.id in listed
            assert ben.get("/sdapi/v1/progress").json()["current_task"] == first.id
            assert ben.post(f"/sdapi/v1/jobs/{second.id}/interrupt").json()["state"] == "interrupted"
            assert ben.post("/sdapi/v1/interrupt").status_code == 200
            wait_for(lambda: first.interrupt_requested)
