"""Text from the network (a Civitai description, a model card) made safe to put in our page.

Model descriptions are HTML written by strangers. They are shown through an allow-list: a few
formatting tags without attributes, links only to http(s) addresses (opened in a new tab, without
the referrer), and the text of everything else. Whatever could run or load something (scripts,
styles, frames, images, forms, event attributes, `javascript:` links) is dropped, and the contents of
script-like elements with it. No third-party sanitizer is a dependency for this: the standard
library's tolerant `HTMLParser` reads the input, and only what this module writes reaches the page.
"""

from __future__ import annotations

import html
from html.parser import HTMLParser
from urllib.parse import urlsplit

# Tags kept as they are (never with attributes, except `href` on `a`).
ALLOWED_TAGS = frozenset({
    "a", "b", "blockquote", "br", "code", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "li", "ol",
    "p", "pre", "s", "strong", "sub", "sup", "u", "ul",
})
VOID_TAGS = frozenset({"br", "hr"})
# Elements whose contents are not text for a reader: dropped with their contents.
DROPPED_WITH_CONTENT = frozenset({"script", "style", "iframe", "object", "embed", "template", "noscript",
                                  "svg", "math", "textarea", "select", "title", "head"})
DEFAULT_MAX_CHARS = 20_000


def safe_link(url: str | None) -> str | None:
    """`url` when it is an absolute http(s) address without credentials; None otherwise."""
    if not url:
        return None
    url = url.strip()
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        return None
    return url


class _Sanitizer(HTMLParser):
    def __init__(self, max_chars: int):
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.open: list[str] = []  # allowed tags opened and not yet closed, innermost last
        self.dropping = 0  # depth inside dropped-with-content elements
        self.max_chars = max_chars
        self.length = 0
        self.truncated = False

    def _write(self, text: str) -> None:
        self.out.append(text)
        self.length += len(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in DROPPED_WITH_CONTENT:
            self.dropping += 1
            return
        if self.dropping or tag not in ALLOWED_TAGS or self.truncated:
            return
        if tag == "a":
            href = safe_link(dict(attrs).get("href"))
            if href is None:
                self.open.append("a-dropped")  # keep the link's text, without a link
                return
            self._write(f'<a href="{html.escape(href, quote=True)}" target="_blank" '
                        'rel="noopener noreferrer nofollow">')
        else:
            self._write(f"<{tag}>")
        if tag not in VOID_TAGS:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs) -> None:
        if tag in VOID_TAGS and not self.dropping and not self.truncated:
            self._write(f"<{tag}>")

    def handle_endtag(self, tag: str) -> None:
        if tag in DROPPED_WITH_CONTENT:
            self.dropping = max(0, self.dropping - 1)
            return
        if self.dropping or tag not in ALLOWED_TAGS or tag in VOID_TAGS:
            return
        wanted = "a-dropped" if tag == "a" and "a" not in self.open else tag
        if wanted not in self.open:
            return  # a stray end tag
        # Close everything opened inside it too, so the output is always well nested.
        while self.open:
            inner = self.open.pop()
            if inner != "a-dropped":
                self._write(f"</{inner}>")
            if inner == wanted:
                break

    def handle_data(self, data: str) -> None:
        if self.dropping or self.truncated:
            return
        room = self.max_chars - self.length
        if len(data) > room:
            data, self.truncated = data[:max(room, 0)] + "…", True
        self._write(html.escape(data, quote=False))

    def result(self) -> str:
        self.close()
        closing = [f"</{tag}>" for tag in reversed(self.open) if tag != "a-dropped"]
        return "".join(self.out + closing)


def sanitize_html(text: str | None, *, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """`text` (HTML from the network) with only the allow-listed tags kept; at most `max_chars`
    characters of text (then "…")."""
    if not text:
        return ""
    parser = _Sanitizer(max_chars)
    parser.feed(text)
    return parser.result()
