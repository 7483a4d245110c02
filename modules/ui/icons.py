"""The tool buttons' icons, drawn as inline SVG so they render in any browser.

A1111 labels its tool buttons with emoji (🔄 🎲️ ♻️ ↙️ 📂 ⇅); a browser without an emoji font
(Debian's chromium as installed, many kiosk and LAN machines) draws them as empty boxes. The
buttons keep A1111's element ids and, where A1111's button shows only the emoji, the emoji as their
text (extension scripts look buttons up by it); the text is hidden and the icon is painted by CSS
from an SVG mask in the button's colour, so it follows light and dark themes. Tooltips are set as
`title` attributes when the page loads (A1111 does the same from its hints table).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote


@dataclass(frozen=True)
class Icon:
    glyph: str  # A1111's emoji label
    svg_body: str  # the SVG's children, drawn with a 2 px stroke on a 24×24 grid

    def data_url(self) -> str:
        svg = ("<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 24 24' fill='none' stroke='black' "
               "stroke-width='2' stroke-linecap='round' stroke-linejoin='round'>" + self.svg_body + "</svg>")
        return "data:image/svg+xml," + quote(svg, safe="=:/' ")


ICONS = {
    "refresh": Icon("\U0001f504", "<path d='M20 12a8 8 0 1 1-2.35-5.65'/><path d='M20 4v5h-5'/>"),
    "dice": Icon("\U0001f3b2\ufe0f", "<rect x='3.5' y='3.5' width='17' height='17' rx='3'/>"
                 "<circle cx='8.5' cy='8.5' r='1' fill='black'/><circle cx='15.5' cy='15.5' r='1' fill='black'/>"
                 "<circle cx='15.5' cy='8.5' r='1' fill='black'/><circle cx='8.5' cy='15.5' r='1' fill='black'/>"
                 "<circle cx='12' cy='12' r='1' fill='black'/>"),
    "recycle": Icon("\u267b\ufe0f", "<path d='M4 12a8 8 0 0 1 13.66-5.66'/><path d='M18 2.5v4h-4'/>"
                    "<path d='M20 12a8 8 0 0 1-13.66 5.66'/><path d='M6 21.5v-4h4'/>"),
    "paste": Icon("\u2199\ufe0f", "<path d='M18 6 6 18'/><path d='M6 9v9h9'/>"),
    "folder": Icon("\U0001f4c2", "<path d='M3 7a2 2 0 0 1 2-2h4l2 2.5h8a2 2 0 0 1 2 2V17a2 2 0 0 1-2 2H5a2 2 0 0 1-2-2z'/>"),
    "swap": Icon("\u21c5", "<path d='M8 20V4'/><path d='m4 8 4-4 4 4'/><path d='M16 4v16'/><path d='m12 16 4 4 4-4'/>"),
    "brush": Icon("\U0001f58c\ufe0f", "<path d='M19 3 9.5 12.5'/><path d='m8 11 5 5'/>"
                  "<path d='M8.5 14.5c-2.5 0-4 1.5-4 3.5 0 1.2-.8 2-1.5 2.5 3 .5 7 0 7-4'/>"),
    "clipboard": Icon("\U0001f4cb", "<rect x='5' y='4' width='14' height='17' rx='2'/><path d='M9 4V3h6v1'/>"
                      "<path d='M9 10h6'/><path d='M9 14h6'/><path d='M9 18h4'/>"),
    "image": Icon("\U0001f5bc\ufe0f", "<rect x='3' y='4' width='18' height='16' rx='2'/><circle cx='9' cy='9.5' r='1.5'/>"
                  "<path d='m21 16-5-5-9 9'/>"),
    "palette": Icon("\U0001f3a8\ufe0f", "<path d='M12 3a9 9 0 1 0 0 18c1.1 0 1.6-.8 1.6-1.6 0-.9-.7-1.3-.7-2.2 "
                    "0-1 .8-1.7 1.8-1.7H17a4 4 0 0 0 4-4C21 6.6 17 3 12 3z'/><circle cx='7.5' cy='11' r='1'/>"
                    "<circle cx='10' cy='7' r='1'/><circle cx='15' cy='7.5' r='1'/>"),
    "ruler": Icon("\U0001f4d0", "<path d='M4 20V4l16 16z'/><path d='M8 16v-4l4 4z'/><path d='M4 8h2'/>"
                  "<path d='M4 12h2'/><path d='M4 16h2'/>"),
    "memo": Icon("\U0001f4dd", "<path d='M14 3H6a2 2 0 0 0-2 2v14a2 2 0 0 0 2 2h12a2 2 0 0 0 2-2V9z'/>"
                 "<path d='M14 3v6h6'/><path d='M8 13h8'/><path d='M8 17h5'/>"),
    "ledger": Icon("\U0001f4d2", "<path d='M6 3h12a1 1 0 0 1 1 1v16a1 1 0 0 1-1 1H6a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2z'/>"
                   "<path d='M8 3v18'/><path d='M11 8h5'/><path d='M11 12h5'/>"),
}


@dataclass(frozen=True)
class IconButton:
    icon: str  # a key of ICONS
    tooltip: str
    icon_only: bool = True  # the label is the emoji alone (hidden), else text beside the icon


# Element id → icon and tooltip, for every tool button of the built-in tabs.
ICON_BUTTONS = {
    "refresh_sd_model_checkpoint": IconButton("refresh", "Refresh the list of checkpoints"),
    "refresh_sd_vae": IconButton("refresh", "Refresh the list of VAEs"),
    "modelmerger_refresh": IconButton("refresh", "Refresh the lists of checkpoints"),
    "txt2img_extra_refresh": IconButton("refresh", "Rescan the embedding, hypernetwork and LoRA folders",
                                        icon_only=False),
    "txt2img_random_seed": IconButton("dice", "Set the seed to -1: a new random seed for every generation"),
    "txt2img_reuse_seed": IconButton("recycle", "Reuse the seed of the selected image (or of the last generation)"),
    "paste": IconButton("paste", "Read generation parameters from the prompt, or from the last generation if the "
                                 "prompt is empty, into the fields", icon_only=False),
    "open_folder_txt2img": IconButton("folder", "Open the folder the images are saved in", icon_only=False),
    "txt2img_res_switch_btn": IconButton("swap", "Swap width and height"),
    "txt2img_styles_edit_button": IconButton("brush", "Edit styles"),
    "refresh_txt2img_styles": IconButton("refresh", "Read the styles file again"),
    "txt2img_style_apply_dialog": IconButton("clipboard", "Apply all selected styles to the prompts (and clear the "
                                                          "selection)"),
    "txt2img_style_copy": IconButton("memo", "Copy the main prompts into the style"),
    "txt2img_send_to_img2img": IconButton("image", "Send the selected image to img2img (with prompt, steps, seed "
                                                   "and size)"),
    "txt2img_send_to_inpaint": IconButton("palette", "Send the selected image to img2img's Inpaint tab (with "
                                                     "prompt, steps and seed)"),
    # The img2img tab: the same buttons as txt2img's, with its prefix.
    "img2img_random_seed": IconButton("dice", "Set the seed to -1: a new random seed for every generation"),
    "img2img_reuse_seed": IconButton("recycle", "Reuse the seed of the selected image (or of the last generation)"),
    "img2img_paste": IconButton("paste", "Read generation parameters from the prompt, or from the last generation "
                                         "if the prompt is empty, into the fields", icon_only=False),
    "open_folder_img2img": IconButton("folder", "Open the folder the images are saved in", icon_only=False),
    "img2img_res_switch_btn": IconButton("swap", "Swap width and height"),
    "img2img_styles_edit_button": IconButton("brush", "Edit styles"),
    "refresh_img2img_styles": IconButton("refresh", "Read the styles file again"),
    "img2img_style_apply_dialog": IconButton("clipboard", "Apply all selected styles to the prompts (and clear "
                                                          "the selection)"),
    "img2img_style_copy": IconButton("memo", "Copy the main prompts into the style"),
    "img2img_send_to_img2img": IconButton("image", "Send the selected image to img2img"),
    "img2img_send_to_inpaint": IconButton("palette", "Send the selected image to img2img's Inpaint tab"),
    "txt2img_send_to_extras": IconButton("ruler", "Send the selected image to the Extras tab"),
    "img2img_send_to_extras": IconButton("ruler", "Send the selected image to the Extras tab"),
    "upscaling_res_switch_btn": IconButton("swap", "Swap width and height"),
    "extras_send_to_img2img": IconButton("image", "Send the selected image to img2img"),
    "extras_send_to_inpaint": IconButton("palette", "Send the selected image to img2img's Inpaint tab"),
    # The X/Y/Z plot's 📒 buttons (A1111's ids, the same in both tabs' copies of the script).
    "xyz_grid_fill_x_tool_button": IconButton("ledger", "Fill the X values with every valid value of the axis"),
    "xyz_grid_fill_y_tool_button": IconButton("ledger", "Fill the Y values with every valid value of the axis"),
    "xyz_grid_fill_z_tool_button": IconButton("ledger", "Fill the Z values with every valid value of the axis"),
}

# A1111's hover hints by the button's text (its `titles`): extensions' own tool buttons that show one of
# these symbols get the hint too (javascript/atelier.js gives `titles` to elements without a title).
GLYPH_HINTS = {
    "\U0001f504": "Refresh",
    "\U0001f3b2\ufe0f": "Set the seed to -1: a new random seed for every generation",
    "\u267b\ufe0f": "Reuse the seed of the selected image (or of the last generation)",
    "\u2199\ufe0f": "Read generation parameters from the prompt, or from the last generation, into the fields",
    "\U0001f4c2": "Open the folder the images are saved in",
    "\u21c5": "Swap width and height",
    "\U0001f58c\ufe0f": "Edit styles",
    "\U0001f4cb": "Apply the selected styles to the prompts",
    "\U0001f5bc\ufe0f": "Send the image and its parameters to img2img",
    "\U0001f3a8\ufe0f": "Send the image and its parameters to img2img's Inpaint tab",
    "\U0001f4d0": "Send the image to the Extras tab",
    "\U0001f4dd": "Copy the main prompts into the style",
    "\U0001f4d2": "Fill the axis with every valid value",
    "\U0001f5d1\ufe0f": "Clear the prompt",
    "\U0001f4be": "Save",
}


def icon_label(elem_id: str, text: str = "") -> str:
    """The button's text: A1111's emoji for an icon-only button (hidden by the CSS), else `text`."""
    button = ICON_BUTTONS[elem_id]
    return ICONS[button.icon].glyph if button.icon_only else text


def icon_css() -> str:
    """CSS that paints each button's icon before its (hidden, for icon-only buttons) text."""
    rules = []
    for elem_id, button in ICON_BUTTONS.items():
        url = ICONS[button.icon].data_url()
        rules.append(
            f"#{elem_id}::before {{ content: ''; display: inline-block; flex: none; width: 1.15rem; height: 1.15rem;"
            f" background-color: currentColor; -webkit-mask: url(\"{url}\") center / contain no-repeat;"
            f" mask: url(\"{url}\") center / contain no-repeat; }}")
        if button.icon_only:
            rules.append(f"#{elem_id} {{ font-size: 0 !important; }}")
        else:
            rules.append(f"#{elem_id}::before {{ margin-right: 0.35em; }}")
    return "\n".join(rules)


def tooltip_js() -> str:
    """Statements for the page's load script: set each icon button's `title` (tooltip), and the
    accessible name of icon-only ones, again whenever Gradio renders a tab."""
    import json

    tips = json.dumps({elem_id: [button.tooltip, button.icon_only] for elem_id, button in ICON_BUTTONS.items()})
    hints = json.dumps({**GLYPH_HINTS, **{glyph.replace("\ufe0f", ""): hint for glyph, hint in GLYPH_HINTS.items()}})
    # Every element with the id: a script shown in both tabs (X/Y/Z) repeats its ids, as in A1111.
    return (
        "const atelierTips = " + tips + ";\n"
        "const atelierGlyphHints = " + hints + ";\n"
        "if (typeof titles === 'object' && titles) { for (const [glyph, hint] of Object.entries(atelierGlyphHints)) {"
        " if (!(glyph in titles)) titles[glyph] = hint; } }\n"
        "const atelierTipSelector = Object.keys(atelierTips).map((id) => '[id=\"' + id + '\"]').join(', ');\n"
        "const atelierApplyTips = () => { for (const el of document.querySelectorAll(atelierTipSelector)) {"
        " const [tip, iconOnly] = atelierTips[el.id]; if (el.title !== tip) { el.title = tip;"
        " if (iconOnly) el.setAttribute('aria-label', tip); } }"
        # Gradio's own symbol buttons (a slider's ↺ reset) name themselves only for screen readers.
        " for (const el of document.querySelectorAll('button[aria-label]:not([title])')) {"
        " if (/^[\\p{Extended_Pictographic}\\u2190-\\u21ff\\u2600-\\u27bf\\ufe0f\\s]+$/u.test(el.textContent || ''))"
        " el.title = el.getAttribute('aria-label'); } };\n"
        "atelierApplyTips();\n"
        "new MutationObserver(atelierApplyTips).observe(document.body, {childList: true, subtree: true});\n"
    )
