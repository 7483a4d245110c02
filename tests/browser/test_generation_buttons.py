"""Generate / Interrupt / Skip as A1111 users expect them, and the buttons' messages on their own
line (issue 22, items 3 and 5), in Chromium."""

from __future__ import annotations

import json
import re
import urllib.request

from playwright.sync_api import Page, expect

from modules.ui.progress_display import BUSY_TEXT
from tests.browser.ui import (
    CHECKPOINT_DROPDOWN,
    GENERATION_TIMEOUT_MS,
    choose,
    fill,
    generate,
    open_ui,
    small_job,
    unique_prompt,
)


def test_interrupt_and_skip_show_only_while_the_job_runs_and_a_second_click_says_why(page: Page, atelier_server):
    open_ui(page, atelier_server.url)
    choose(page, CHECKPOINT_DROPDOWN, "alpha")
    interrupt, skip = page.locator("#txt2img_interrupt"), page.locator("#txt2img_skip")
    expect(interrupt).to_be_hidden()
    expect(skip).to_be_hidden()

    small_job(page, steps=150, batch_count=3)  # long enough to look at while it runs
    prompt = unique_prompt("a quiet library")
    fill(page, "txt2img_prompt", prompt)
    page.locator("#txt2img_generate").click()
    expect(interrupt).to_be_visible(timeout=GENERATION_TIMEOUT_MS)
    expect(skip).to_be_visible()

    # Pressed again while the job runs: nothing new starts, and the page says why.
    page.locator("#txt2img_generate").click()
    notice = page.locator("#atelier_notice")
    expect(notice).to_be_visible()
    expect(notice).to_have_text(BUSY_TEXT)

    interrupt.click()
    expect(page.locator("#html_info_txt2img")).to_contain_text("Interrupted", timeout=GENERATION_TIMEOUT_MS)
    expect(interrupt).to_be_hidden()
    expect(skip).to_be_hidden()
    # The second click started no job: the server knows one job with this prompt (a second one would
    # have been queued at the click, before the interrupt), and Generate works again.
    with urllib.request.urlopen(atelier_server.url + "/sdapi/v1/jobs", timeout=30) as response:
        jobs = json.load(response)
    assert [job["state"] for job in jobs if prompt in job["description"]] == ["interrupted"], jobs
    small_job(page)
    generate(page, unique_prompt("after the second click"))


def test_button_messages_leave_the_infotext_in_place(page: Page, atelier_server):
    open_ui(page, atelier_server.url)
    choose(page, CHECKPOINT_DROPDOWN, "alpha")
    small_job(page)
    prompt = unique_prompt("a red kite")
    infotext = generate(page, prompt)
    info, log = page.locator("#html_info_txt2img"), page.locator("#html_log_txt2img")
    expect(log).to_have_text("")

    page.locator("#open_folder_txt2img").click()
    expect(log).not_to_have_text("")
    expect(info).to_contain_text(prompt)
    assert info.inner_text() == infotext

    # Read parameters with an empty prompt reads the last generation's infotext; its note goes to the log.
    fill(page, "txt2img_prompt", "")
    log_before = log.inner_text()
    page.locator("#paste").click()
    expect(log).not_to_have_text(log_before)
    expect(page.locator("#txt2img_prompt textarea")).to_have_value(prompt)
    assert info.inner_text() == infotext

    # The next job clears the old message.
    generate(page, unique_prompt("a blue kite"))
    expect(log).to_have_text(re.compile(r"^\s*$"))
