"""Phones and tablets: the narrow-screen layout and the touch rules, as CSS over the desktop page.

Nothing here builds components or changes element ids: the desktop page (A1111's two columns) is the
only page, and these rules rearrange it by screen, so extensions find the same elements everywhere.

- Narrow screens (at most `NARROW_MAX_WIDTH_PX` wide: phones in either orientation, small tablets
  in portrait): txt2img's and img2img's result column (progress bar, live preview / gallery,
  infotext) moves directly under the Generate / Interrupt / Skip row, before the settings; the top
  bar and the page margins shrink. From `NARROW_MAX_WIDTH_PX + 1` up (an 820-wide tablet in
  portrait, every desktop), the two columns stay side by side, the result at the top of the right one.
- Touch screens (`pointer: coarse`), and any narrow screen: every button at least
  `TOUCH_TARGET_PX` tall, no text under `MIN_TEXT_PX`, number boxes a finger can tap (16 px text,
  which also keeps phones from zooming into a focused box). On touch screens, sliders move only when
  their thumb is dragged: a finger that lands on a slider's track while scrolling scrolls the page.
"""

from __future__ import annotations

from modules.ui.generation_form import paste_button_id

NARROW_MAX_WIDTH_PX = 767
TOUCH_TARGET_PX = 44
MIN_TEXT_PX = 12
SLIDER_THUMB_PX = 28

NARROW = f"(max-width: {NARROW_MAX_WIDTH_PX}px)"
TOUCH = "(pointer: coarse)"
TOUCH_OR_NARROW = f"{TOUCH}, {NARROW}"

# The tabs whose results move up. Extras keeps its order (input image, options, Generate, then the
# result right under the buttons): there is nothing to show before an image is chosen.
RESULT_FIRST_TABS = ("txt2img", "img2img")


def _narrow_layout_css() -> str:
    rows = ", ".join(f"#{tab}_main" for tab in RESULT_FIRST_TABS)
    results = ", ".join(f"#{tab}_results" for tab in RESULT_FIRST_TABS)
    actions = ", ".join(f"#{tab}_actions_column" for tab in RESULT_FIRST_TABS)
    paste = ", ".join(f"#{tab}_actions_column > #{paste_button_id(tab)}" for tab in RESULT_FIRST_TABS)
    styles = ", ".join(f"#{tab}_actions_column > #{tab}_styles_row" for tab in RESULT_FIRST_TABS)
    buttons = ", ".join(f"#{tab}_actions_column > #{tab}_generate, #{tab}_actions_column > #{tab}_interrupt_row"
                        for tab in RESULT_FIRST_TABS)
    return f"""
@media {NARROW} {{
  /* Gradio's page margins are 32 px a side: a tenth of a phone's width. */
  .gradio-container .main.app {{ padding-left: 6px !important; padding-right: 6px !important; }}
  {rows} {{ flex-direction: column !important; }}
  {results} {{ order: -1; width: 100% !important; }}
  /* The top bar: the checkpoint and its refresh button on one line, the other quicksettings two
     to a line, labels tighter. */
  #quicksettings {{ flex-wrap: wrap; gap: 4px 6px !important; }}
  #quicksettings > .form {{ min-width: 0 !important; flex: 1 1 calc(50% - {TOUCH_TARGET_PX + 12}px) !important; }}
  #quicksettings > .form:first-child {{ flex-basis: calc(100% - {TOUCH_TARGET_PX + 12}px) !important; }}
  #quicksettings .block {{ min-width: 0 !important; padding: 4px 8px !important; }}
  #model_status {{ font-size: {MIN_TEXT_PX}px; }}
  /* The prompt row stacks: the action buttons take the full width under the prompts, Read parameters
     and the styles on one line before Generate / Interrupt / Skip, so the result comes right under those. */
  {actions} {{ min-width: 100% !important; flex-direction: row !important; flex-wrap: wrap !important;
              align-items: center; }}
  {paste} {{ flex: 0 0 auto !important; width: auto !important; }}
  {styles} {{ flex: 1 1 180px !important; min-width: 0 !important; }}
  {buttons} {{ order: 1; flex: 1 1 100% !important; }}
  /* The top bar's sliders (Clip skip) keep their number box only. */
  #quicksettings .slider_input_container {{ display: none !important; }}
  /* Extras keeps its order (input image, options, buttons, result): Generate on a line of its own. */
  #extras_generate_box {{ flex-wrap: wrap; }}
  #extras_generate {{ flex-basis: 100% !important; }}
  #txt2img_generate, #img2img_generate {{ min-height: 3.5em !important; }}
}}
"""


def _touch_css() -> str:
    return f"""
@media {TOUCH_OR_NARROW} {{
  .gradio-container button {{ min-height: {TOUCH_TARGET_PX}px !important; }}
  #txt2img_generate, #img2img_generate {{ min-height: 4.5em !important; }}
  /* Ids outweigh the scoped page rule that sizes tool buttons in em (0 for an icon-only one). */
  #tabs button.tool, #quicksettings button {{ min-width: {TOUCH_TARGET_PX}px !important; }}
  .gradio-container .reset-button {{ min-width: {TOUCH_TARGET_PX}px !important; }}
  /* Gradio's smallest theme sizes are 9-10 px; nothing here goes under {MIN_TEXT_PX} px. */
  :root, .gradio-container {{ --text-xxs: {MIN_TEXT_PX}px; --text-xs: {MIN_TEXT_PX}px; }}
  .token-counter, .extra-network-item .description, .extra-network-item .about,
  .extra-network-item .trigger-words, .extra-network-empty, .extra-network-note, .extra-network-skipped-list,
  .extra-network-skipped-list *, .job-note, .progress-text, #html_info_txt2img .infotext,
  #html_info_img2img .infotext, #html_info_extras .infotext, .extra-network-section summary {{
    font-size: max({MIN_TEXT_PX}px, 1em) !important; }}
  .gradio-container input[type=number] {{ font-size: 16px !important; min-height: {TOUCH_TARGET_PX}px !important;
    min-width: 4.5em !important; }}
  /* A slider's number box and reset button sit in a box of fixed height: let it grow with them. */
  .gradio-container .tab-like-container {{ height: auto !important; min-height: {TOUCH_TARGET_PX}px; }}
  .gradio-container textarea, .gradio-container input[type=text] {{ font-size: 16px !important; }}
}}
@media {TOUCH} {{
  /* On touch only (a mouse keeps clicking the track): a slider follows only a drag of its thumb; the
     track lets the page scroll, and a tap on it is not a jump (the number box takes exact values). */
  .gradio-container input[type=range] {{ pointer-events: none; touch-action: pan-y; }}
  .gradio-container input[type=range]::-webkit-slider-thumb {{ pointer-events: auto;
    width: {SLIDER_THUMB_PX}px !important; height: {SLIDER_THUMB_PX}px !important; }}
  .gradio-container input[type=range]::-moz-range-thumb {{ pointer-events: auto;
    width: {SLIDER_THUMB_PX}px !important; height: {SLIDER_THUMB_PX}px !important; }}
}}
"""


def mobile_css() -> str:
    """The narrow-screen and touch rules, appended after the page's own CSS."""
    return _touch_css() + _narrow_layout_css()  # the narrow rules win where both set a property
