"""The narrow-screen / touch rules and the progress shown on the Generate button, without a browser
(tests/browser/test_mobile.py drives them in Chromium at phone and tablet sizes)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from types import SimpleNamespace

import pytest

from modules.serving.jobs import JobState
from modules.ui.app import layout_style
from modules.ui.generation import render_progress
from modules.ui.mobile import NARROW_MAX_WIDTH_PX, RESULT_FIRST_TABS, TOUCH_TARGET_PX


class _BarAttributes(HTMLParser):
    def __init__(self):
        super().__init__()
        self.bar: dict[str, str] | None = None
        self.text = ""
        self._in_text = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "progress-bar" in (attrs.get("class") or "").split():
            self.bar = attrs
        self._in_text = "progress-text" in (attrs.get("class") or "").split()

    def handle_data(self, data):
        if self._in_text:
            self.text += data


def _parse(html: str) -> _BarAttributes:
    parser = _BarAttributes()
    parser.feed(html)
    return parser


def _job(**fields):
    base = dict(state=JobState.RUNNING, queue_position=None, finished=False, total_steps=20, step=10,
                progress=0.5, eta_seconds=3.14)
    return SimpleNamespace(**{**base, **fields})


@pytest.mark.parametrize(("fields", "loading", "short", "percent"), [
    (dict(), False, "50% · ETA 3.1 s", "50"),
    (dict(eta_seconds=None, step=1, progress=0.05), False, "5%", "5"),
    (dict(eta_seconds=125.0, progress=0.25, step=5), False, "25% · ETA 2 min 05 s", "25"),
    (dict(state=JobState.QUEUED, queue_position=0), False, "Queued (next)", "0"),
    (dict(state=JobState.QUEUED, queue_position=2), False, "Queued (3 in line)", "0"),
    (dict(total_steps=0, step=0, progress=0.0), True, "Loading checkpoint…", "0"),
    (dict(total_steps=0, step=0, progress=0.0), False, "Starting…", "0"),
])
def test_progress_bar_carries_the_short_text_the_generate_button_shows(fields, loading, short, percent):
    parsed = _parse(render_progress(_job(**fields), loading))
    assert parsed.bar is not None
    assert parsed.bar["data-short"] == short
    assert parsed.bar["aria-valuenow"] == percent
    # The short form says nothing the bar's own text does not.
    first = short.split(" · ")[0].removeprefix("Queued").strip(" ()")
    assert first.replace("Loading checkpoint", "Waiting for the checkpoint to load") in parsed.text


def test_a_finished_job_has_no_bar():
    assert render_progress(_job(state=JobState.DONE, finished=True)) == ""


def test_short_text_is_escaped_inside_its_attribute():
    parsed = _parse(render_progress(_job(state=JobState.QUEUED, queue_position=None)))
    assert parsed.bar["data-short"] == "Queued"
    html = render_progress(_job())
    assert "data-short='50% · ETA 3.1 s'" in html  # single-quoted attribute, nothing to escape here
    assert "'" not in re.search(r"data-short='([^']*)'", html).group(1)


@pytest.fixture(scope="module")
def element_ids(tmp_path_factory):
    from modules.ui.app import build_ui
    from tests.ui_support import make_context

    context = make_context(tmp_path_factory.mktemp("mobile-ui"), load=False)
    try:
        blocks = build_ui(context)
        yield {block.elem_id for block in blocks.blocks.values() if getattr(block, "elem_id", None)}
    finally:
        context.jobs.shutdown()


def test_every_element_the_rules_name_is_on_the_page(element_ids):
    # A renamed element would silently drop its rule: each id the layout CSS names must be a
    # component's elem_id, except the progress strip and the notice, which the page script adds itself.
    style = layout_style()
    selectors = re.sub(r"\{[^{}]*\}", "{}", style)  # the declarations (colours like #fff) emptied
    named = set(re.findall(r"#([A-Za-z_][\w-]*)", selectors))
    missing = named - element_ids - {"atelier_progress_strip", "atelier_notice"}
    assert not missing, f"the layout rules name elements the page does not have: {sorted(missing)}"
    for tab in RESULT_FIRST_TABS:
        assert {f"{tab}_main", f"{tab}_results", f"{tab}_generate", f"{tab}_actions_column"} <= named


def test_layout_rules_are_unscoped_and_keyed_to_the_documented_breakpoint():
    style = layout_style()
    assert style.startswith("<style") and style.endswith("</style>")
    assert f"@media (max-width: {NARROW_MAX_WIDTH_PX}px)" in style
    assert f"@media (pointer: coarse), (max-width: {NARROW_MAX_WIDTH_PX}px)" in style
    assert f"min-height: {TOUCH_TARGET_PX}px" in style
    # Nothing outside a media query changes the wide-screen page except the progress display.
    outside = re.sub(r"@media[^{]*\{(?:[^{}]*\{[^{}]*\})*[^{}]*\}", "", style)
    assert "#txt2img_results" not in outside and not re.search(r"(?<![\w-])order:", outside)
