"""HTML for the Models tab: the look-up card, its files table, the downloads with progress bars, the
cards results and a checkpoint's report. Plain functions (values in, HTML text out, no gradio).

Everything that came from the network is untrusted: names, trigger words, licenses and file names are
escaped, a description keeps only formatting tags and http(s) links (modules.ui.safe_html), and the preview is
never an address the browser would load from a stranger's host: it is shown from bytes the server
fetched through its guarded client (a `data:` URI of a checked image type), or not at all.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from urllib.parse import urlsplit

from modules.model_sources.service import ACTIVE_STATES
from modules.ui.safe_html import sanitize_html

STATE_LABELS = {"queued": "Queued", "checking": "Looking for the same file among yours", "running": "Downloading",
                "verifying": "Verifying", "done": "Done", "failed": "Failed", "cancelled": "Cancelled",
                "exists": "Already here"}
# Image types a preview may have, by their first bytes; anything else (SVG above all: it can carry
# script) is not shown.
IMAGE_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"),
                    (b"GIF87a", "image/gif"), (b"GIF89a", "image/gif"))
MAX_PREVIEW_BYTES = 8 << 20
MAX_DESCRIPTION_CHARS = 20_000


def page_link(url: str | None) -> str | None:
    """`url` when it is an http(s) address without user info (a model's page); None otherwise."""
    try:
        parts = urlsplit((url or "").strip())
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        return None
    return parts.geturl()


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def format_bytes(count: float | None) -> str:
    if count is None:
        return "?"
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, round(seconds))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def image_mime(data: bytes) -> str | None:
    """The image type of `data` by its signature (PNG, JPEG, GIF, WebP); None for anything else."""
    for signature, mime in IMAGE_SIGNATURES:
        if data.startswith(signature):
            return mime
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def preview_data_uri(data: bytes | None) -> str | None:
    """A `data:` URI for preview bytes of a known image type and a sane size; None otherwise."""
    if not data or len(data) > MAX_PREVIEW_BYTES:
        return None
    mime = image_mime(data)
    if mime is None:
        return None
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def message_html(text: str) -> str:
    return "<div class='models-message'>" + "<br>".join(esc(line) for line in text.split("\n")) + "</div>"


# -- the look-up card --------------------------------------------------------------------------------


def card_html(result, preview_uri: str | None = None) -> str:
    """The look-up card: name, type, base model, version, license, trigger words, where it goes (or
    why it cannot be downloaded), the preview and the description."""
    remote = result.remote
    page = page_link(remote.page_url)
    title = esc(remote.name)
    if page:
        title = f"<a href='{esc(page)}' target='_blank' rel='noopener noreferrer nofollow'>{title}</a>"
    rows = [("Source", remote.source), ("Type", remote.model_type or "not given by the source"),
            ("Base model", remote.base_model), ("Version", remote.version_name), ("License", remote.license)]
    table = "".join(f"<tr><th>{esc(label)}</th><td>{esc(value)}</td></tr>" for label, value in rows if value)
    if remote.trigger_words:
        words = ", ".join(f"<code class='models-trigger-word'>{esc(w)}</code>" for w in remote.trigger_words)
        table += f"<tr><th>Trigger words</th><td class='models-trigger-words'>{words}</td></tr>"
    if remote.model_type is None:
        table += "<tr><th>Saved to</th><td>the source does not say what this is: choose its type below</td></tr>"
    elif result.refusal:
        table += f"<tr><th>Saved to</th><td class='models-refusal'>Cannot be downloaded: {esc(result.refusal)}</td></tr>"
    elif result.folder:
        table += f"<tr><th>Saved to</th><td>{esc(result.folder)}</td></tr>"
    preview = (f"<img class='models-preview' alt='preview' src='{preview_uri}'>" if preview_uri
               else "<div class='models-preview-none'>no preview</div>")
    description = ""
    if remote.description:
        # Civitai writes HTML, Hugging Face cards Markdown: the allow-list keeps the former's formatting
        # and shows the latter as text with its line breaks.
        style = " style='white-space: pre-wrap'" if remote.source == "huggingface" else ""
        clean = sanitize_html(remote.description, links=True, max_chars=MAX_DESCRIPTION_CHARS)
        description = f"<div class='models-description'{style}>{clean}</div>"
    return (f"<div class='models-card'><div class='models-card-preview'>{preview}</div>"
            f"<div class='models-card-body'><h3 class='models-name'>{title}</h3>"
            f"<table class='models-card-table'>{table}</table>{description}</div></div>")


def files_table_html(result) -> str:
    """The version's files: name, size, format, precision, pruned/full, pickle scan and a copy already here."""
    existing: Mapping[str, str] = result.existing or {}
    head = ("<tr><th>File</th><th>Size</th><th>Format</th><th>Precision</th><th>Pruned/full</th>"
            "<th>Pickle scan</th><th>Already here</th></tr>")
    rows = []
    for f in result.remote.files:
        marks = " <span class='models-default'>(default)</span>" if f.name == result.default_file else ""
        scan = f.pickle_scan or ""
        scan_class = " class='models-danger'" if scan.lower() == "danger" else ""
        rows.append(f"<tr><td>{esc(f.name)}{marks}</td><td>{esc(format_bytes(f.size) if f.size else '?')}</td>"
                    f"<td>{esc(f.format)}</td><td>{esc(f.precision or '')}</td><td>{esc(f.size_kind or '')}</td>"
                    f"<td{scan_class}>{esc(scan)}</td><td>{esc(existing.get(f.name, ''))}</td></tr>")
    return f"<table class='models-files'>{head}{''.join(rows)}</table>"


# -- downloads ---------------------------------------------------------------------------------------


def download_line(d) -> str:
    """Bytes, speed and time left (or the outcome) of one download."""
    if d.state in ACTIVE_STATES:
        done = format_bytes(d.bytes_done) + (f" of {format_bytes(d.total)}" if d.total else "")
        parts = [STATE_LABELS.get(d.state, d.state), done]
        if d.state == "running":
            parts.append(f"{format_bytes(d.speed)}/s")
            if d.eta is not None:
                parts.append(f"{format_duration(d.eta)} left")
        return " · ".join(parts)
    if d.state in ("done", "exists"):
        return f"{STATE_LABELS[d.state]}: {d.destination or ''}".rstrip(": ")
    return f"{STATE_LABELS.get(d.state, d.state)}: {d.error or d.message or ''}".rstrip(": ")


def downloads_html(downloads: Sequence) -> str:
    """One block per download, newest first: a progress bar with bytes, speed and ETA while it runs,
    where the file went or why it stopped when it is over."""
    if not downloads:
        return "<div class='models-downloads-empty'>No downloads yet.</div>"
    blocks = []
    for d in downloads:
        if d.total:
            percent = max(0.0, min(100.0, 100.0 * d.bytes_done / d.total))
        else:
            percent = 100.0 if d.state in ("done", "exists") else 0.0
        label = f"{percent:.0f}% · {download_line(d)}" if d.state in ACTIVE_STATES and d.total else download_line(d)
        blocks.append(
            f"<div class='models-download state-{esc(d.state)}' data-id='{esc(d.id)}' data-state='{esc(d.state)}'>"
            f"<div class='models-download-title'><b>{esc(d.model_name)}</b> — {esc(d.file_name)} "
            f"<span class='models-kind'>({esc(d.kind)})</span></div>"
            f"<progress class='models-progress' max='100' value='{percent:.1f}'>{percent:.0f}%</progress>"
            f"<div class='models-download-line'>{esc(label)}</div></div>")
    return "<div class='models-downloads'>" + "".join(blocks) + "</div>"


def cancel_choices(downloads: Iterable) -> list[tuple[str, str]]:
    """`(label, id)` for the downloads that can still be cancelled."""
    return [(f"{d.model_name} — {d.file_name}", d.id) for d in downloads if d.state in ACTIVE_STATES]


# -- cards and tools ---------------------------------------------------------------------------------


def cards_table_html(results: Sequence[tuple[str, str]]) -> str:
    if not results:
        return message_html("No files of this kind here.")
    rows = "".join(f"<tr><td>{esc(name)}</td><td>{esc(outcome)}</td></tr>" for name, outcome in results)
    return f"<table class='models-cards-results'><tr><th>File</th><th>Result</th></tr>{rows}</table>"


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping):
        if not value:
            return "none"
        return f"<pre>{esc(json.dumps(value, indent=1, ensure_ascii=False, default=str))}</pre>"
    if isinstance(value, (list, tuple)):
        return esc(", ".join(str(v) for v in value)) or "none"
    if value is None:
        return "none"
    return esc(value)


def report_html(name: str, report: Any) -> str:
    """A checkpoint's report (a dataclass, or a mapping) as a two-column table; byte counts readable."""
    values = ({f.name: getattr(report, f.name) for f in dataclasses.fields(report)}
              if dataclasses.is_dataclass(report) else dict(report))
    rows = []
    for key, value in values.items():
        text = f"{esc(format_bytes(value))} ({value:,} bytes)" if key.endswith("bytes") and isinstance(value, int) \
            else _cell(value)
        rows.append(f"<tr><th>{esc(key.replace('_', ' '))}</th><td>{text}</td></tr>")
    return f"<table class='models-report'><caption>{esc(name)}</caption>{''.join(rows)}</table>"


def tool_result_text(result: Any) -> str:
    """One line for what a checkpoint tool did: its own sentence, else the file it wrote."""
    for attribute in ("report_line", "path"):
        value = getattr(result, attribute, None)
        if value:
            return str(value)
    return str(result)
