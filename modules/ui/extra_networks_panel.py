"""The extra-networks panel under the txt2img prompt: cards for textual-inversion embeddings,
hypernetworks, checkpoints and LoRAs (A1111's cards and tabs, in its order).

Each card shows what A1111 shows: the model's preview (`<name>.png`, `<name>.preview.png`, ...,
served through `/file=` for listed models only, modules.ui.model_previews), its description (the
user metadata's `description` from `<name>.json`, else `<name>.txt` / `<name>.description.txt`;
HTML from a source such as Civitai is sanitized to formatting only, modules.ui.safe_html) and its
trigger words (the user metadata's `activation text`).

Clicking a card adds its text (`<hypernet:name:1>`, an embedding's name, or for a LoRA
`<lora:name:W>` followed by its activation text, W being its `preferred weight` when not 0, else the
default multiplier) to the prompt, or takes it out again if it is already there (a LoRA's
activation text with it), as A1111 does. Embeddings go to the negative prompt when that box had the
focus last (negative embeddings are common). Clicking a checkpoint card loads that checkpoint, as
choosing it in the top bar's dropdown does. Embeddings the loaded model cannot use, and files that
could not be read, are listed apart with the reason.

The cards are HTML: `.extra-network-item` elements with `data-kind` and `data-name`. A click sends
kind and name to the server, which looks the name up again before changing the prompt or loading.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import gradio as gr

from modules.model_sources.cards import find_preview, read_user_metadata
from modules.ui.icons import icon_label
from modules.ui.safe_html import sanitize_html
from modules.ui.shared import UiShared

TEXTUAL_INVERSION = "textual_inversion"
HYPERNETWORK = "hypernetwork"
CHECKPOINT = "checkpoint"
LORA = "lora"
SECTION_TITLES = {TEXTUAL_INVERSION: "Textual Inversion", HYPERNETWORK: "Hypernetworks", CHECKPOINT: "Checkpoints",
                  LORA: "Lora"}
DEFAULT_MULTIPLIER_SETTING = "extra_networks_default_multiplier"  # A1111's setting (section Extra Networks)
# A1111's description files beside a model, read when its user metadata has no description.
DESCRIPTION_SUFFIXES = (".txt", ".description.txt")
MAX_DESCRIPTION_BYTES = 64 << 10
CARD_DESCRIPTION_CHARS = 300  # a card (and its tooltip) shows the start


@dataclass(frozen=True)
class NetworkCard:
    kind: str
    name: str
    text: str  # what a click puts into the prompt (nothing for a checkpoint: a click loads it)
    description: str = ""  # facts Atelier knows about the file ("2 vectors", "trained as ...")
    label: str = ""  # the name shown, when it is not `name` (a checkpoint's file name without folder)
    path: Path | None = None
    preview: Path | None = None
    about: str = ""  # the user's or the source's description: HTML or text, sanitized when shown
    trigger_words: str = ""  # the user metadata's `activation text`


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


def insertion_text(kind: str, name: str, multiplier: float = 1.0, activation_text: str = "") -> str:
    """What a card puts into the prompt: `<hypernet:name:1>`, `<lora:name:0.8>` (followed by the
    LoRA's activation text after a space, when it has one), or the embedding's name."""
    if kind == TEXTUAL_INVERSION:
        return name
    if kind == CHECKPOINT:
        raise ValueError("a checkpoint card puts nothing into the prompt: a click loads the checkpoint")
    tag = {HYPERNETWORK: "hypernet", LORA: "lora"}.get(kind)
    if tag is None:
        raise ValueError(f"unknown extra network kind {kind!r}; known: {', '.join(SECTION_TITLES)}")
    text = f"<{tag}:{name}:{float(multiplier):g}>"
    activation_text = " ".join(activation_text.split()) if kind == LORA else ""
    return f"{text} {activation_text}" if activation_text else text


def toggle_in_prompt(prompt: str, text: str) -> str:
    """Add `text` to the end of `prompt`, or remove it if it is already there (a tag matches
    whatever multiplier it has; the words a tag brought along go with it when they still follow
    it), with one separating space."""
    tag = re.fullmatch(r"<(\w+):([^:>]+)(?::[^>]*)?>(?:\s+(.+))?", text, flags=re.DOTALL)
    if tag:
        after = rf"(?:[ \t]*{re.escape(tag.group(3))})?" if tag.group(3) else ""
        pattern = re.compile(rf"<{re.escape(tag.group(1))}:{re.escape(tag.group(2))}(?::[^>]*)?>{after}")
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


@dataclass(frozen=True)
class ModelCard:
    """What a model's own files say about it (the card's picture and words)."""

    preview: Path | None = None
    about: str = ""
    trigger_words: str = ""
    preferred_weight: float = 0.0  # 0: the default multiplier


def read_model_card(model_file: Path) -> ModelCard:
    """The preview, description, activation text and preferred weight of `model_file`, from A1111's
    files beside it (see the module docstring); empty parts when there are none."""
    model_file = Path(model_file)
    metadata = read_user_metadata(model_file)
    about = metadata.get("description")
    about = about if isinstance(about, str) and about.strip() else _description_file(model_file)
    trigger = metadata.get("activation text")
    try:
        weight = float(metadata.get("preferred weight") or 0.0)
    except (TypeError, ValueError):
        weight = 0.0
    return ModelCard(find_preview(model_file), about, trigger.strip() if isinstance(trigger, str) else "",
                     weight if math.isfinite(weight) else 0.0)


def _description_file(model_file: Path) -> str:
    for suffix in DESCRIPTION_SUFFIXES:
        path = model_file.with_name(model_file.stem + suffix)
        try:
            with open(path, "rb") as file:
                return file.read(MAX_DESCRIPTION_BYTES).decode("utf-8", errors="replace")
        except OSError:
            continue
    return ""


def _card(kind: str, name: str, path: Path | None, multiplier: float, description: str = "", label: str = "") \
        -> NetworkCard:
    card = read_model_card(path) if path is not None else ModelCard()
    if kind == CHECKPOINT:
        text = ""
    else:
        weight = card.preferred_weight if kind == LORA and card.preferred_weight else multiplier
        text = insertion_text(kind, name, weight, card.trigger_words)
    return NetworkCard(kind, name, text, description, label, path, card.preview, card.about, card.trigger_words)


def list_networks(context) -> NetworkListing:
    """The cards for what is in the folders now (no rescan; the refresh button rescans)."""
    listing = NetworkListing()
    multiplier = _default_multiplier(context)
    _list_embeddings(context, listing)
    for name in context.hypernetworks.names():
        try:
            path = context.hypernetworks.path(name)
        except KeyError:  # gone with a refresh meanwhile
            continue
        listing.cards.append(_card(HYPERNETWORK, name, path, multiplier))
    for info in context.checkpoints.list():
        problem = f"cannot be loaded: {info.problem.summary}" if info.problem else ""
        listing.cards.append(_card(CHECKPOINT, info.name, info.filename, multiplier, problem, info.name_for_extra))
    for info in context.loras.list():
        alias = f"trained as {info.alias}" if info.alias != info.name else ""
        listing.cards.append(_card(LORA, info.name, info.path, multiplier, alias))
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
        listing.cards.append(_card(TEXTUAL_INVERSION, name, Path(embedding.filename), 1.0, description))
    for name, reason in skipped.items():
        listing.skipped.append(SkippedNetwork(TEXTUAL_INVERSION, name, reason))
    for path, reason in context.embeddings.errors.items():
        listing.skipped.append(SkippedNetwork(TEXTUAL_INVERSION, path.name, f"could not be read: {reason}"))


def _default_multiplier(context) -> float:
    """The Extra Networks setting (a number between 0 and 2, checked by its SettingSpec)."""
    return float(context.settings.current()[DEFAULT_MULTIPLIER_SETTING])


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
    if card is None or not card.text:
        return prompt, negative_prompt
    if to_negative and kind == TEXTUAL_INVERSION:
        return prompt, toggle_in_prompt(negative_prompt, card.text)
    return toggle_in_prompt(prompt, card.text), negative_prompt


def checkpoint_for_card(context, name: str) -> str | None:
    """The title to load for a click on checkpoint card `name` (its path in the checkpoint folder),
    or None when no such checkpoint is listed (a forged or stale click)."""
    for info in context.checkpoints.list():
        if info.name == name:
            return info.title
    return None


def preview_url(path: Path) -> str:
    """The `/file=` URL of a preview (A1111's form, modules.ui.file_route), its path percent-encoded
    so that a name with spaces, `#` or `?` still names the file."""
    from modules.ui.file_route import file_url

    url = file_url(path)
    shown, _, mtime = url.removeprefix("file=").rpartition("?")
    return f"file={quote(shown, safe='/')}?{mtime}"


def card_html(card: NetworkCard) -> str:
    """One card: a button with the preview, the name, what Atelier knows, the description
    (sanitized, shortened) and the trigger words."""
    tooltip = card.text or f"Load {card.name}"
    about = sanitize_html(card.about, inline=True, max_chars=CARD_DESCRIPTION_CHARS) if card.about else ""
    if about.strip():
        # The sanitized text has bare tags only (no attributes), so a tag is everything in <...>.
        tooltip += "\n\n" + " ".join(html.unescape(re.sub(r"<[^>]*>", " ", about)).split())
    parts = [f"<button type='button' class='extra-network-item' data-kind='{card.kind}' "
             f"data-name='{html.escape(card.name, quote=True)}' title='{html.escape(tooltip, quote=True)}'>"]
    if card.preview is not None:
        parts.append(f"<img class='preview' src='{html.escape(preview_url(card.preview), quote=True)}' alt='' "
                     "loading='lazy'>")
    parts.append(f"<span class='name'>{html.escape(card.label or card.name)}</span>")
    if card.description:
        parts.append(f"<span class='description'>{html.escape(card.description)}</span>")
    if about.strip():
        parts.append(f"<span class='about'>{about}</span>")
    if card.trigger_words:
        parts.append(f"<span class='trigger-words' title='Activation text'>{html.escape(card.trigger_words)}</span>")
    parts.append("</button>")
    return "".join(parts)


def render_html(listing: NetworkListing) -> str:
    sections = []
    for kind, title in SECTION_TITLES.items():
        cards = [c for c in listing.cards if c.kind == kind]
        skipped = [s for s in listing.skipped if s.kind == kind]
        items = "".join(card_html(c) for c in cards) or "<p class='extra-network-empty'>None found.</p>"
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
    // A checkpoint card loads a model (a job, with the top bar's status): a listener of its own.
    trigger(card.dataset.kind === 'checkpoint' ? 'submit' : 'click',
            {kind: card.dataset.kind, name: card.dataset.name, negative: negative});
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
    _wire_checkpoint_cards(context, shared, panel)
    refresh.click(on_refresh, outputs=panel, show_progress="hidden")
    shared.page_loads.append((on_page_load, [panel]))
    if shared.checkpoint_switched is not None:  # which embeddings fit depends on the model
        shared.checkpoint_switched.then(lambda: render_html(list_networks(context)), outputs=panel,
                                        show_progress="hidden")
    if shared.model_status_ticks is not None:
        # A page opened while the start-up load ran lists the embeddings without knowing which fit:
        # once the load is done, the cards are drawn again (only if that changes them, so a click is
        # never lost to a needless re-render).
        def after_load(shown: str):
            if context.load_state.loading:
                return gr.skip()
            fresh = render_html(list_networks(context))
            return gr.skip() if fresh == shown else fresh

        shared.model_status_ticks.then(after_load, inputs=panel, outputs=panel, show_progress="hidden")
    return panel


def _wire_checkpoint_cards(context, shared: UiShared, panel: Any) -> None:
    """A checkpoint card's click switches the checkpoint as the top bar's dropdown does (the same
    job, status line and dropdown value), then re-renders the cards (which embeddings fit)."""
    if shared.checkpoint_dropdown is None or shared.model_status is None:
        return
    from modules.ui.top_bar import switch_outputs

    def on_checkpoint(event: gr.EventData, request: gr.Request | None = None):
        from modules.serving.accounts import caller

        data = event._data if isinstance(getattr(event, "_data", None), dict) else {}
        title = checkpoint_for_card(context, str(data.get("name", "")))
        if title is None:
            yield gr.skip(), gr.skip()
            return
        # With --multi-user: the caller's own checkpoint, as the top bar's dropdown does.
        yield from switch_outputs(context, title, caller(context, request))

    panel.submit(on_checkpoint, outputs=[shared.model_status, shared.checkpoint_dropdown], show_progress="hidden",
                 concurrency_limit=None).then(lambda: render_html(list_networks(context)), outputs=panel,
                                              show_progress="hidden")
