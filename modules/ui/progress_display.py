"""Where a running job shows besides its progress bar, so it is seen wherever the page is scrolled.

- The Generate button shows the job's short progress ("42% · ETA 3.1 s", "Queued (next)") under
  its label and fills from the left as the job advances. The button's own DOM is Gradio's: the page
  only sets a `data-atelier-progress` attribute on it (CSS draws the text) and the fill width in a
  style element of its own, so a re-render of the button never fights the script, and its text stays
  "Generate" for extensions and scripts that look it up.
- While the Generate button and the progress bar are both scrolled out of view, a strip fixed at
  the top of the screen (`#atelier_progress_strip`) shows the same; tapping it brings the result
  column into view.
- When a job ends on a narrow or touch screen (modules.ui.mobile), the result column is scrolled
  into view unless its first image (or, before that has loaded, the gallery) is already fully
  visible; checked again for about two seconds, as the new image renders and loads, unless the user
  scrolls or touches the page meanwhile. Wide screens with a mouse are never scrolled: A1111's page
  does not move.
- Interrupt and Skip show only while the tab's job runs (A1111's habit): hidden whenever the tab's
  Generate button carries no progress. A click on Generate while the tab's job runs
  (Gradio lets one run at a time per tab and drops the click) says so in a notice
  (`#atelier_notice`) instead of doing nothing. On a server shared with `--multi-user` the click is
  not dropped: it queues another job (modules.ui.generation_form), and the notice says where that
  job stands ("Queued: 2nd in the queue, ~40 s"), read once from its note in the tab's message line
  (`[data-atelier-notice]`, modules.ui.my_queue.queue_note_html).

All of it follows the progress bar's HTML (modules.ui.generation.render_progress: `aria-valuenow`
and `data-short`), so it works the same for a job started by Generate, Ctrl+Enter or an extension.
"""

from __future__ import annotations

import json

from modules.ui.mobile import TOUCH_OR_NARROW

# The tabs whose Generate button shows progress, with the element that holds their Generate /
# Interrupt / Skip (the scope of the hide rule) and what shows only while a job runs.
PROGRESS_TABS = {
    "txt2img": ("#txt2img_actions_column", "#txt2img_interrupt_row"),
    "img2img": ("#img2img_actions_column", "#img2img_interrupt_row"),
    "extras": ("#extras_generate_box", "#extras_interrupt, #extras_skip"),
}


def _tab_css() -> str:
    buttons = ", ".join(f"#{tab}_generate[data-atelier-progress]" for tab in PROGRESS_TABS)
    after = ", ".join(f"#{tab}_generate[data-atelier-progress]::after" for tab in PROGRESS_TABS)
    # By id inside the tab's button box, not by position: an extension may add components after Generate.
    idle = ", ".join(f"{box}:not(:has(#{tab}_generate[data-atelier-progress])) :is({hidden})"
                     for tab, (box, hidden) in PROGRESS_TABS.items())
    return f"""
{buttons} {{
  flex-direction: column; gap: 0.1em;
  background-image: linear-gradient(to right, rgba(255, 255, 255, 0.28) var(--atelier-progress, 0%),
                                    transparent var(--atelier-progress, 0%));
}}
{after} {{
  content: attr(data-atelier-progress); font-size: max(12px, 0.65em); font-weight: normal; opacity: 0.95;
}}
{idle} {{ display: none; }}
"""


CSS = _tab_css() + """
.progress-bar.progress-hidden { display: none; }  /* show_progressbar off: the button still reads it */
#atelier_notice {
  position: fixed; left: 50%; bottom: 16px; transform: translateX(-50%); z-index: 1001; max-width: min(90vw, 36em);
  padding: 10px 16px; border-radius: 8px; font-size: 14px; line-height: 1.4;
  color: var(--body-text-color, #111); background: var(--block-background-fill, #fff);
  border: 1px solid var(--color-accent, #f97316); box-shadow: 0 2px 10px rgba(0, 0, 0, 0.25);
}
#atelier_notice[hidden] { display: none; }
#atelier_progress_strip {
  position: fixed; top: 0; left: 0; right: 0; z-index: 1000; cursor: pointer;
  min-height: 44px; display: flex; align-items: center; justify-content: center;
  font-size: 14px; color: var(--button-primary-text-color, #fff);
  background: var(--button-primary-background-fill, #f97316);
  box-shadow: 0 2px 6px rgba(0, 0, 0, 0.25);
}
#atelier_progress_strip[hidden] { display: none; }
#atelier_progress_strip .strip-fill { position: absolute; left: 0; top: 0; bottom: 0;
  background: rgba(255, 255, 255, 0.28); pointer-events: none; }
#atelier_progress_strip .strip-text { position: relative; }
"""

# After a job ends, the result is checked this many times, this far apart, and scrolled into view
# whenever it is not (see `settle` in the script).
SETTLE_CHECKS = 4
SETTLE_MS = 700
NOTICE_MS = 6000
BUSY_TEXT = ("This tab is still generating: it runs one job at a time. Interrupt or Skip it, or wait until it "
             "ends, then press Generate again.")

_JS_TEMPLATE = """
(() => {
  const tabs = %TABS%;
  const scrollMedia = window.matchMedia(%SCROLL_MEDIA%);
  const fill = document.createElement('style');
  fill.id = 'atelier-progress-fill';
  document.head.appendChild(fill);
  // Outside Gradio's tree: nothing Gradio renders can replace them.
  const overlay = (id) => {
    const element = document.createElement('div');
    element.id = id;
    element.hidden = true;
    element.setAttribute('role', 'status');
    document.body.appendChild(element);
    return element;
  };
  const strip = overlay('atelier_progress_strip');
  strip.innerHTML = "<div class='strip-fill'></div><span class='strip-text'></span>";
  const notice = overlay('atelier_notice');
  notice.setAttribute('aria-live', 'polite');
  let noticeTimer = null;
  const say = (text) => {
    notice.textContent = text;
    notice.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { notice.hidden = true; }, %NOTICE_MS%);
  };
  // Capture phase: seen before Gradio's own handler, which drops a click while the tab's event runs.
  const multiUser = %MULTI_USER%;
  const announced = new Set();
  document.addEventListener('click', (event) => {
    const button = event.target && event.target.closest && event.target.closest(
      tabs.map((tab) => '#' + tab + '_generate').join(', '));
    if (!button || !button.hasAttribute('data-atelier-progress')) return;
    if (multiUser && button.id !== 'extras_generate') return;  // it queues a job; its note is announced below
    say(%BUSY_TEXT%);
  }, true);
  const followed = {};
  let stripTab = null;
  const byId = (id) => document.getElementById(id);
  const shown = (el) => !!el && el.getClientRects().length > 0;
  const inView = (el) => {
    const box = el.getBoundingClientRect();
    return box.bottom > 0 && box.top < window.innerHeight;
  };
  const wholeInView = (el) => {
    const box = el.getBoundingClientRect();
    return box.top >= 0 && box.bottom <= window.innerHeight;
  };
  const bringResults = (tab) => {
    const results = byId(tab + '_results');
    if (!results) return;
    const smooth = !window.matchMedia('(prefers-reduced-motion: reduce)').matches;
    results.scrollIntoView({block: 'start', behavior: smooth ? 'smooth' : 'auto'});
  };
  // Checked again a few times after the job ends: the gallery's new image may render a moment after
  // the bar goes, and Gradio loads it lazily (only once it is near the screen).
  let lastGesture = 0;
  for (const kind of ['wheel', 'touchstart', 'keydown', 'mousedown']) {
    window.addEventListener(kind, () => { lastGesture = Date.now(); }, {passive: true, capture: true});
  }
  const settle = (tab, checks, since) => {
    const results = byId(tab + '_results');
    if (!shown(results) || lastGesture > since) return;  // the user has moved on: leave the page be
    const image = document.querySelector('#' + tab + '_gallery img');
    const loaded = image && image.complete && image.naturalWidth > 0;
    const target = loaded ? image : byId(tab + '_gallery') || results;
    if (!wholeInView(target)) bringResults(tab);
    if (checks > 1) setTimeout(() => settle(tab, checks - 1, since), %SETTLE_MS%);
  };
  const update = () => {
    if (multiUser) {
      for (const note of document.querySelectorAll('[data-atelier-notice]')) {
        const id = note.getAttribute('data-atelier-notice');
        if (!announced.has(id)) { announced.add(id); say(note.textContent); }
      }
    }
    const rules = [];
    let strip_state = null;
    for (const tab of tabs) {
      const state = followed[tab] || (followed[tab] = {busy: false});
      const button = byId(tab + '_generate');
      const bar = document.querySelector('#' + tab + '_progress .progress-bar');
      if (bar && button) {
        const percent = Math.max(0, Math.min(100, parseFloat(bar.getAttribute('aria-valuenow')) || 0));
        const text = bar.getAttribute('data-short') || (percent.toFixed(0) + '%');
        if (button.getAttribute('data-atelier-progress') !== text) button.setAttribute('data-atelier-progress', text);
        rules.push('#' + tab + '_generate { --atelier-progress: ' + percent + '%; }');
        state.busy = true;
        if (!strip_state && shown(button) && !inView(button) && !inView(bar)) strip_state = {tab, percent, text};
      } else if (state.busy) {
        state.busy = false;
        if (button) button.removeAttribute('data-atelier-progress');
        if (scrollMedia.matches) settle(tab, %SETTLE_CHECKS%, Date.now());
      }
    }
    const css = rules.join('\\n');
    if (fill.textContent !== css) fill.textContent = css;
    if (strip_state) {
      stripTab = strip_state.tab;
      strip.querySelector('.strip-fill').style.width = strip_state.percent + '%';
      const label = strip_state.tab + ': ' + strip_state.text;
      const textEl = strip.querySelector('.strip-text');
      if (textEl.textContent !== label) textEl.textContent = label;
      strip.hidden = false;
    } else if (!strip.hidden) {
      strip.hidden = true;
    }
  };
  strip.addEventListener('click', () => { if (stripTab) bringResults(stripTab); });
  new MutationObserver(update).observe(document.body, {
    childList: true, subtree: true, characterData: true, attributes: true,
    attributeFilter: ['aria-valuenow', 'data-short']});
  window.addEventListener('scroll', update, {passive: true});
})();
"""


def progress_js(multi_user: bool = False) -> str:
    """Statements for the page's load script (see the module docstring). `multi_user`: the page of a
    `--multi-user` server, whose Generate queues another job while one runs."""
    return (_JS_TEMPLATE.replace("%TABS%", json.dumps(list(PROGRESS_TABS)))
            .replace("%MULTI_USER%", json.dumps(bool(multi_user)))
            .replace("%SCROLL_MEDIA%", json.dumps(TOUCH_OR_NARROW))
            .replace("%SETTLE_CHECKS%", str(SETTLE_CHECKS))
            .replace("%SETTLE_MS%", str(SETTLE_MS))
            .replace("%NOTICE_MS%", str(NOTICE_MS))
            .replace("%BUSY_TEXT%", json.dumps(BUSY_TEXT)))
