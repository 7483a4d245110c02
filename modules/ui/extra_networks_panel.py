"""The extra-networks panel under the txt2img prompt: cards for textual-inversion embeddings,
hypernetworks and LoRAs that put themselves into the prompt when clicked (A1111's cards).

Clicking a card adds its text (`<hypernet:name:1>`, `<lora:name:1>`, or an embedding's name) to the
prompt, or takes it out again if it is already there, as A1111 does. Embeddings go to the negative
prompt when that box had the focus last (negative embeddings are common). Embeddings the loaded
model cannot use, and files that could not be read, are listed apart with the reason.

The cards are HTML: `.extra-network-item` elements with `data-kind` and `data-name`. A click sends
kind and name to the server, which looks the name up again before changing the prompt.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from modules.ui.icons import icon_label
from modules.ui.shared import UiShared

TEXTUAL_INVERSION = "textual_inversion"
HYPERNETWORK = "hypernetwork"
LORA = "lora"
SECTION_TITLES = {TEXTUAL_INVERSION: "Textual Inversion", HYPERNETWORK: "Hypernetworks", LORA: "Lora"}
DEFAULT_MULTIPLIER_SETTING = "extra_networks_default_multiplier"  # A1111's setting; 1.0 when unset


@dataclass(frozen=True)
class NetworkCard:
    kind: str
    name: str
    text: str  # what a click puts into the prompt
    description: str = ""


@dataclass(frozen=True)
class SkippedNetwork:
    kind: str
    name: str
    reason: str


@dataclass
class NetworkListing:
    cards: list[NetworkCard] = field(default_factory=list)
    skipped: list[SkippedNetwork] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def card(self, kind: str, name: str) -> NetworkCard | None:
        return next((c for c in self.cards if c.kind == kind and c.name == name), None)


# --- plain functions -----------------------------------------------------------------------------


def insertion_text(kind: str, name: str, multiplier: float = 1.0) -> str:
    """What a card puts into the prompt: `<hypernet:name:1>`, `<lora:name:0.8>`, or the embedding's name."""
    if kind == TEXTUAL_INVERSION:
        return name
    tag = {HYPERNETWORK: "hypernet", LORA: "lora"}.get(kind)
    if tag is None:
        raise ValueError(f"unknown extra network kind {kind!r}; known: {', '.join(SECTION_TITLES)}")
    return f"<{tag}:{name}:{float(multiplier):g}>"


def toggle_in_prompt(prompt: str, text: str) -> str:
    """Add `text` to the end of `prompt`, or remove it if it is already there (a tag matches
    whatever multiplier it has), with one separating space."""
    tag = re.fullmatch(r"<(\w+):([^:>]+)(?::[^>]*)?>", text)
    if tag:
        pattern = re.compile(rf"<{re.escape(tag.group(1))}:{re.escape(tag.group(2))}(?::[^>]*)?>")
    else:
        pattern = re.compile(rf"(?<![\w-]){re.escape(text)}(?![\w-])")
    found = pattern.search(prompt)
    if found is None:
        separator = " " if prompt and not prompt[-1].isspace() else ""
        return f"{prompt}{separator}{text}"
    start, end = found.span()
    if start > 0 and prompt[start - 1] == " ":
        start -= 1
    elif end < len(prompt) and prompt[end] == " ":
        end += 1
    return prompt[:start] + prompt[end:]


def list_networks(context) -> NetworkListing:
    """The cards for what is in the folders now (no rescan; the refresh button rescans)."""
    listing = NetworkListing()
    multiplier = _default_multiplier(context)
    _list_embeddings(context, listing)
    for name in context.hypernetworks.names():
        listing.cards.append(NetworkCard(HYPERNETWORK, name, insertion_text(HYPERNETWORK, name, multiplier)))
    for info in context.loras.list():
        alias = f"trained as {info.alias}" if info.alias != info.name else ""
        listing.cards.append(NetworkCard(LORA, info.name, insertion_text(LORA, info.name, multiplier), alias))
    return listing


def _list_embeddings(context, listing: NetworkListing) -> None:
    model = context.models.current()
    if model is None:
        usable = context.embeddings.embeddings
        skipped: dict[str, str] = {}
        if usable:
            listing.notes.append("Which embeddings fit is checked once a checkpoint is loaded.")
    else:
        from modules.networks.activation import embedding_widths

        found = context.embeddings.for_model(embedding_widths(model))
        usable, skipped = found.loaded, found.skipped
    for name, embedding in usable.items():
        vectors = getattr(embedding, "vector_count", None)
        description = f"{vectors} vector{'s' if vectors != 1 else ''}" if vectors else ""
        listing.cards.append(NetworkCard(TEXTUAL_INVERSION, name, insertion_text(TEXTUAL_INVERSION, name),
                                         description))
    for name, reason in skipped.items():
        listing.skipped.append(SkippedNetwork(TEXTUAL_INVERSION, name, reason))
    for path, reason in context.embeddings.errors.items():
        listing.skipped.append(SkippedNetwork(TEXTUAL_INVERSION, path.name, f"could not be read: {reason}"))


def _default_multiplier(context) -> float:
    value = context.settings.current().get(DEFAULT_MULTIPLIER_SETTING, 1.0)
    try:
        return float(value)
    except (TypeError, ValueError):
        return 1.0


def refresh_networks(context) -> None:
    """Rescan the embedding, hypernetwork and LoRA folders (the panel's refresh button)."""
    context.embeddings.refresh(force=True)
    context.hypernetworks.refresh()
    context.loras.refresh()


def apply_card_click(context, kind: str, name: str, prompt: str, negative_prompt: str,
                     to_negative: bool = False) -> tuple[str, str]:
    """(prompt, negative prompt) after a click on card `kind`/`name`; unchanged for an unknown card.
    Only embeddings go to the negative prompt (tags there are not parsed)."""
    card = list_networks(context).card(kind, name)
    if card is None:
        return prompt, negative_prompt
    if to_negative and kind == TEXTUAL_INVERSION:
        return prompt, toggle_in_prompt(negative_prompt, card.text)
    return toggle_in_prompt(prompt, card.text), negative_prompt


def render_html(listing: NetworkListing) -> str:
    sections = []
    for kind, title in SECTION_TITLES.items():
        cards = [c for c in listing.cards if c.kind == kind]
        skipped = [s for s in listing.skipped if s.kind == kind]
        items = "".join(
            f"<button type='button' class='extra-network-item' data-kind='{kind}' "
            f"data-name='{html.escape(c.name, quote=True)}' title='{html.escape(c.text, quote=True)}'>"
            f"<span class='name'>{html.escape(c.name)}</span>"
            + (f"<span class='description'>{html.escape(c.description)}</span>" if c.description else "")
            + "</button>"
            for c in cards
        ) or "<p class='extra-network-empty'>None found.</p>"
        skipped_html = ""
        if skipped:
            rows = "".join(
                f"<li class='extra-network-skipped' data-kind='{kind}' data-name='{html.escape(s.name, quote=True)}'"
                f" title='{html.escape(s.reason, quote=True)}'><b>{html.escape(s.name)}</b>: skipped, "
                f"{html.escape(s.reason)}</li>"
                for s in skipped
            )
            skipped_html = f"<details class='extra-network-skipped-list' open><summary>Skipped ({len(skipped)})" \
                           f"</summary><ul>{rows}</ul></details>"
        sections.append(f"<section class='extra-network-section' data-kind='{kind}'><h4>{title} "
                        f"<small>{len(cards)}</small></h4><div class='extra-network-cards'>{items}</div>"
                        f"{skipped_html}</section>")
    notes = "".join(f"<p class='extra-network-note'>{html.escape(n)}</p>" for n in listing.notes)
    return f"<div class='extra-networks'>{notes}{''.join(sections)}</div>"


# --- gradio ---------------------------------------------------------------------------------------

# Runs once when the panel mounts. The click listener sits on the panel, so it survives re-renders
# of the cards; the focus listener remembers which prompt box was used last.
_CLICK_JS = """
let negative = false;
document.addEventListener('focusin', (event) => {
    const target = event.target;
    if (!target || !target.closest) return;
    if (target.closest('#txt2img_neg_prompt')) negative = true;
    else if (target.closest('#txt2img_prompt')) negative = false;
});
element.addEventListener('click', (event) => {
    const card = event.target.closest('.extra-network-item');
    if (!card || !element.contains(card)) return;
    trigger('click', {kind: card.dataset.kind, name: card.dataset.name, negative: negative});
});
"""


def build(context, shared: UiShared, prompt: Any, negative_prompt: Any) -> Any:
    """The panel (an accordion, open) with its refresh button; returns the HTML component."""
    with gr.Accordion("Extra networks", open=True, elem_id="txt2img_extra_networks_accordion"):
        refresh = gr.Button(icon_label("txt2img_extra_refresh", "Refresh"), elem_id="txt2img_extra_refresh", size="sm", scale=0)
        panel = gr.HTML(render_html(list_networks(context)), elem_id="txt2img_extra_networks", js_on_load=_CLICK_JS)

    def on_click(prompt_text: str, negative_text: str, event: gr.EventData):
        data = event._data if isinstance(getattr(event, "_data", None), dict) else {}
        return apply_card_click(context, str(data.get("kind", "")), str(data.get("name", "")), prompt_text or "",
                                negative_text or "", bool(data.get("negative")))

    def on_refresh():
        refresh_networks(context)
        return render_html(list_networks(context))

    def on_page_load():
        # The start-up reads the embeddings in the background (reading one imports torch), so the
        # panel built with the UI may lack them: a page opened meanwhile waits here for that scan,
        # and later pages pick up files added since.
        context.embeddings.refresh()
        return render_html(list_networks(context))

    panel.click(on_click, inputs=[prompt, negative_prompt], outputs=[prompt, negative_prompt], show_progress="hidden")
    refresh.click(on_refresh, outputs=panel, show_progress="hidden")
    shared.page_loads.append((on_page_load, [panel]))
    if shared.checkpoint_switched is not None:  # which embeddings fit depends on the model
        shared.checkpoint_switched.then(lambda: render_html(list_networks(context)), outputs=panel,
                                        show_progress="hidden")
    return panel
