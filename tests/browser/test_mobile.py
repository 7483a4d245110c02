"""Phones and tablets: a 390x844 touch phone and an 820x1180 touch tablet in portrait (modules.ui.mobile,
modules.ui.progress_display). The result is where the thumb is when a job ends, the Generate button
shows the job's progress, touch targets and text are large enough, the page never scrolls sideways,
and a finger scrolling over a slider does not move it.

The tests never scroll while they wait for a job's result: a job the user started from the top of the
page must end with its image on screen (Playwright's own actions scroll to their element, so the
form is filled first, then the page is put back at the top, as a user who scrolled up to Generate)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from modules.ui.mobile import MIN_TEXT_PX, NARROW_MAX_WIDTH_PX, TOUCH_TARGET_PX
from tests.browser.harness import open_page
from tests.browser.ui import (
    CHECKPOINT_DROPDOWN,
    GENERATION_TIMEOUT_MS,
    choose,
    fill,
    open_dropdown,
    open_ui,
    small_job,
    unique_prompt,
)

PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True, "device_scale_factor": 2}
TABLET = {"viewport": {"width": 820, "height": 1180}, "is_mobile": True, "has_touch": True, "device_scale_factor": 2}
# Each main tab's label and the element id of its panel.
MAIN_TABS = {"txt2img": "tab_txt2img", "img2img": "tab_img2img", "Extras": "tab_extras", "PNG Info": "tab_pnginfo",
             "Checkpoint Merger": "tab_modelmerger", "Models": "tab_models", "Settings": "tab_settings",
             "Extensions": "tab_extensions"}

# The first result image's box, and whether it lies wholly inside the viewport.
IMAGE_IN_VIEW_JS = """() => {
    const img = document.querySelector('#txt2img_gallery img');
    if (!img || !img.complete || !img.naturalWidth) return false;
    const box = img.getBoundingClientRect();
    return box.width > 0 && box.top >= 0 && box.left >= 0 && box.bottom <= window.innerHeight
        && box.right <= window.innerWidth;
}"""

# Visible elements that break a touch rule: buttons under the target height, text under the minimum
# size (a text of size 0 is the hidden emoji of an icon button, drawn by CSS). Scoped to what shows.
TOUCH_PROBLEMS_JS = """([minTarget, minText]) => {
    const visible = (el) => {
        if (el.closest('.visually-hidden, [hidden]')) return false;
        if (el.checkVisibility && !el.checkVisibility({checkOpacity: true, checkVisibilityCSS: true})) return false;
        const box = el.getBoundingClientRect();
        return box.width > 1 && box.height > 1;
    };
    const name = (el) => (el.id ? '#' + el.id : el.tagName.toLowerCase() + '.' + String(el.className).split(' ')[0])
        + ' "' + el.textContent.trim().slice(0, 24) + '"';
    const small = [];
    for (const button of document.querySelectorAll('.gradio-container button')) {
        if (!visible(button)) continue;
        const height = button.getBoundingClientRect().height;
        if (height < minTarget - 0.5) small.push(name(button) + ' ' + height.toFixed(1) + 'px tall');
    }
    const tiny = [];
    for (const el of document.querySelectorAll('.gradio-container *')) {
        const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
        if (!own || !visible(el)) continue;
        const size = parseFloat(getComputedStyle(el).fontSize);
        if (size > 0 && size < minText - 0.05) tiny.push(name(el) + ' ' + size.toFixed(1) + 'px');
    }
    return {small, tiny};
}"""


@pytest.fixture(params=["phone", "tablet"])
def device_page(request, browser, artifacts_dir, atelier_server):
    options = PHONE if request.param == "phone" else TABLET
    yield from open_page(browser, request, artifacts_dir, atelier_server, **options)


@pytest.fixture
def phone_page(request, browser, artifacts_dir, atelier_server):
    yield from open_page(browser, request, artifacts_dir, atelier_server, **PHONE)


def _no_sideways_scroll(page: Page) -> None:
    widths = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], f"the page scrolls sideways: content {widths[0]}px in a {widths[1]}px viewport"


def _next_frames(page: Page) -> None:
    """Wait until the browser has rendered two more frames (layout and paint of what came before)."""
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")


def _back_to_top(page: Page) -> None:
    page.evaluate("() => window.scrollTo(0, 0)")
    page.wait_for_function("() => window.scrollY === 0")


def test_result_is_on_screen_when_the_job_ends(device_page: Page, atelier_server):
    page = device_page
    open_ui(page, atelier_server.url)
    width = page.viewport_size["width"]
    choose(page, CHECKPOINT_DROPDOWN, "alpha")
    small_job(page)
    prompt = unique_prompt("a harbour at night")
    fill(page, "txt2img_prompt", prompt)
    _back_to_top(page)

    generate = page.locator("#txt2img_generate")
    assert generate.evaluate("b => { const r = b.getBoundingClientRect(); return r.top >= 0 && r.bottom <= innerHeight; }")
    generate.tap()
    expect(page.locator("#html_info_txt2img")).to_contain_text(prompt, timeout=GENERATION_TIMEOUT_MS)
    page.wait_for_function(IMAGE_IN_VIEW_JS, timeout=15_000)
    _no_sideways_scroll(page)

    settings = page.locator("#txt2img_settings").bounding_box()
    results = page.locator("#txt2img_results").bounding_box()
    if width <= NARROW_MAX_WIDTH_PX:
        # One column: the results directly under the Generate row, the settings after them.
        actions = page.locator("#txt2img_actions_column").bounding_box()
        assert actions["y"] + actions["height"] <= results["y"] < settings["y"], (actions, results, settings)
    else:
        # A1111's two columns: the settings on the left, the results on the right.
        assert settings["x"] + settings["width"] <= results["x"] and abs(settings["y"] - results["y"]) < 2, (
            settings, results)


def test_generate_button_shows_progress_and_the_result_comes_back_into_view(phone_page: Page, atelier_server):
    page = phone_page
    open_ui(page, atelier_server.url)
    choose(page, CHECKPOINT_DROPDOWN, "alpha")
    small_job(page, steps=80)  # long enough to scroll away while it runs
    prompt = unique_prompt("a lantern in the fog")
    fill(page, "txt2img_prompt", prompt)
    _back_to_top(page)
    generate = page.locator("#txt2img_generate")
    generate.tap()

    expect(generate).to_have_attribute("data-atelier-progress", re.compile(r"^\d+%"), timeout=GENERATION_TIMEOUT_MS)
    # The progress is drawn by CSS: the button's own text stays "Generate" for scripts that look it up.
    assert generate.evaluate("b => b.textContent.trim()") == "Generate"
    fill_width = generate.evaluate("b => getComputedStyle(b).getPropertyValue('--atelier-progress').trim()")
    assert re.fullmatch(r"\d+(\.\d+)?%", fill_width), fill_width

    # The user scrolls down to the settings while the job runs: a strip keeps the progress in view.
    page.evaluate("() => window.scrollTo(0, document.documentElement.scrollHeight)")
    strip = page.locator("#atelier_progress_strip")
    expect(strip).to_be_visible()
    expect(strip).to_contain_text(re.compile(r"txt2img: \d+%"))
    box = strip.bounding_box()
    assert box["y"] == 0 and box["height"] >= TOUCH_TARGET_PX, box

    # ... and when the job ends, the result is brought back on screen; the button is itself again.
    expect(page.locator("#html_info_txt2img")).to_contain_text(prompt, timeout=GENERATION_TIMEOUT_MS)
    page.wait_for_function(IMAGE_IN_VIEW_JS, timeout=15_000)
    expect(strip).to_be_hidden()
    expect(generate).not_to_have_attribute("data-atelier-progress", re.compile(".*"))


def test_checkpoint_dropdown_opens_on_screen_and_switches(device_page: Page, atelier_server):
    page = device_page
    open_ui(page, atelier_server.url)
    options = open_dropdown(page, CHECKPOINT_DROPDOWN)
    width = page.viewport_size["width"]
    for box in options.evaluate_all("els => els.map(e => { const r = e.getBoundingClientRect();"
                                    " return [r.left, r.right]; })"):
        assert 0 <= box[0] and box[1] <= width, f"a checkpoint option reaches outside the screen: {box}"
    options.filter(has_text=re.compile(r"^\W*beta")).first.tap()
    expect(page.locator("#model_status")).to_contain_text("Loaded beta.safetensors", timeout=GENERATION_TIMEOUT_MS)
    choose(page, CHECKPOINT_DROPDOWN, "alpha")
    expect(page.locator("#model_status")).to_contain_text("Loaded alpha.safetensors", timeout=GENERATION_TIMEOUT_MS)
    _no_sideways_scroll(page)


def test_every_tab_is_reachable_without_sideways_scrolling(phone_page: Page, atelier_server):
    page = phone_page
    open_ui(page, atelier_server.url)
    for label, panel in MAIN_TABS.items():
        visible_tab = page.locator("#tabs > .tab-wrapper .tab-container:not(.visually-hidden) button",
                                   has_text=re.compile("^" + re.escape(label) + "$"))
        if visible_tab.count():
            visible_tab.first.tap()
        else:  # Gradio's overflow menu ("…") holds the tabs that do not fit the width
            page.locator("#tabs > .tab-wrapper .overflow-menu > button").tap()
            entry = page.locator("#tabs .overflow-dropdown button", has_text=re.compile("^" + re.escape(label) + "$"))
            expect(entry).to_be_visible()
            entry.tap()
        expect(page.locator(f"#{panel}")).to_be_visible()
        _next_frames(page)  # the tab's content laid out
        _no_sideways_scroll(page)


def test_touch_targets_and_text_sizes(device_page: Page, atelier_server):
    page = device_page
    open_ui(page, atelier_server.url)
    problems = page.evaluate(TOUCH_PROBLEMS_JS, [TOUCH_TARGET_PX, MIN_TEXT_PX])
    assert problems["small"] == [], f"buttons under {TOUCH_TARGET_PX}px: {problems['small']}"
    assert problems["tiny"] == [], f"text under {MIN_TEXT_PX}px: {problems['tiny']}"
    number = page.locator("#txt2img_steps input[type=number]")
    assert number.evaluate("e => parseFloat(getComputedStyle(e).fontSize)") >= 16  # no zoom-on-focus on phones
    assert number.bounding_box()["height"] >= TOUCH_TARGET_PX


def _touch_drag(page: Page, start: tuple[float, float], end: tuple[float, float], steps: int = 10) -> None:
    """A one-finger drag as touch events (Playwright's touchscreen only taps)."""
    cdp = page.context.new_cdp_session(page)
    (x0, y0), (x1, y1) = start, end
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x0, "y": y0}]})
    for i in range(1, steps + 1):
        point = {"x": x0 + (x1 - x0) * i / steps, "y": y0 + (y1 - y0) * i / steps}
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [point]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    cdp.detach()


def test_a_finger_on_a_slider_track_does_not_move_it_but_its_thumb_does(phone_page: Page, atelier_server):
    page = phone_page
    open_ui(page, atelier_server.url)
    slider = page.locator("#txt2img_cfg_scale input[type=range]")
    number = page.locator("#txt2img_cfg_scale input[type=number]")
    slider.scroll_into_view_if_needed()
    start_text = slider.input_value()
    start = float(start_text)
    low, high = float(slider.get_attribute("min")), float(slider.get_attribute("max"))
    box = slider.bounding_box()
    middle_y = box["y"] + box["height"] / 2

    # A page scroll that starts on the track far from the thumb, and a tap there: the value stays.
    track_x = box["x"] + box["width"] * 0.9
    _touch_drag(page, (track_x, middle_y), (track_x, middle_y - 200))
    page.touchscreen.tap(track_x, middle_y)
    _next_frames(page)  # a slider answers a touch in the same frame; two frames on, nothing moved
    assert slider.input_value() == start_text

    # Dragging the thumb to the right moves it, and the number box follows.
    box = slider.bounding_box()
    middle_y = box["y"] + box["height"] / 2
    thumb_x = box["x"] + (start - low) / (high - low) * box["width"]
    thumb_x = min(max(thumb_x, box["x"] + 8), box["x"] + box["width"] - 8)
    _touch_drag(page, (thumb_x, middle_y), (thumb_x + box["width"] * 0.4, middle_y))
    expect(slider).not_to_have_value(start_text)
    assert float(slider.input_value()) > start
    expect(number).to_have_value(slider.input_value())
