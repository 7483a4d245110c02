"""Show HTML written by others (a model's description from Civitai, a user-metadata file) without
letting it run anything in our page.

A whitelist, not a blacklist: the text is parsed (the standard library's HTMLParser, which reads
broken markup the way a browser would tokenize it) and written out again with only formatting tags
and no attributes at all, except `href` on links when links are allowed, and then only http(s)
URLs, opened in a new tab without an opener. `<script>`, `<style>`, `<iframe>`, `<svg>` and
similar lose their content too; every other unknown tag (`<img>`, `<form>`, `<button>`, custom
elements) is dropped and its text kept. Text is escaped again on the way out, so an entity such as
`&lt;script&gt;` stays text.
"""

from __future__ import annotations

import html
from html.parser import HTMLParser
from urllib.parse import urlsplit

# Formatting that reads the same inside a card (phrasing content: allowed inside a <button>).
INLINE_TAGS = frozenset({"b", "strong", "i", "em", "u", "s", "del", "code", "sub", "sup", "br", "span"})
BLOCK_TAGS = frozenset({"p", "div", "ul", "ol", "li", "pre", "blockquote", "hr", "h1", "h2", "h3", "h4", "h5", "h6"})
# Tags whose content is code or an embedded document, never text to show.
DROPPED_WITH_CONTENT = frozenset({"script", "style", "iframe", "object", "template", "noscript", "svg", "math",
                                  "textarea", "select", "title", "head", "frameset", "applet", "audio", "video"})
_VOID = frozenset({"br", "hr"})
_CHUNK = 512
_VOID_DROPPED = frozenset({"embed", "frame", "img", "input", "link", "meta", "base", "source", "track", "param"})


class _Sanitizer(HTMLParser):
    def __init__(self, *, inline: bool, links: bool, max_chars: int | None):
        super().__init__(convert_charrefs=True)
        self.allowed = INLINE_TAGS if inline else INLINE_TAGS | BLOCK_TAGS
        self.inline, self.links, self.budget = inline, links, max_chars
        self.out: list[str] = []
        self.open: list[str] = []
        self.skipping: list[str] = []  # open tags whose content is dropped
        self.truncated = False

    def handle_starttag(self, tag, attrs):
        if self.truncated:
            return
        if tag in _VOID_DROPPED or self.skipping:
            if tag in DROPPED_WITH_CONTENT:
                self.skipping.append(tag)
            return
        if tag in DROPPED_WITH_CONTENT:
            self.skipping.append(tag)
            return
        if tag == "a" and self.links:
            href = next((value for name, value in attrs if name == "href" and value), "")
            parts = urlsplit(href.strip())
            if parts.scheme.lower() in ("http", "https") and parts.netloc:
                self.out.append(f'<a href="{html.escape(href.strip(), quote=True)}" target="_blank" '
                                f'rel="noopener noreferrer nofollow">')
                self.open.append("a")
            return
        if tag in self.allowed:
            self.out.append(f"<{tag}>")
            if tag not in _VOID:
                self.open.append(tag)
        elif self.inline and tag in BLOCK_TAGS:
            self._space()

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if self.skipping and self.skipping[-1] == tag:  # `<svg/>`: nothing inside
            self.skipping.pop()
        elif tag in self.open and tag not in _VOID and self.open[-1] == tag:
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if self.skipping:
            if tag == self.skipping[-1]:
                self.skipping.pop()
            return
        if self.truncated:
            return
        if tag in self.open:
            while self.open:  # close what was left open inside it, as a browser does
                inner = self.open.pop()
                self.out.append(f"</{inner}>")
                if inner == tag:
                    break
        elif self.inline and tag in BLOCK_TAGS:
            self._space()

    def handle_data(self, data):
        if self.skipping or self.truncated:
            return
        if self.budget is not None:
            if len(data) > self.budget:
                data = data[:self.budget].rstrip() + "…"
                self.truncated = True
            self.budget -= len(data)
        self.out.append(html.escape(data, quote=False))

    def _space(self):
        if self.out and not self.out[-1].endswith((" ", ">")):
            self.out.append(" ")

    def result(self) -> str:
        self.close()
        body = "".join(self.out)
        return (body.strip() if self.inline else body) + "".join(f"</{tag}>" for tag in reversed(self.open))


def sanitize_html(text: str, *, inline: bool = False, links: bool = False, max_chars: int | None = None) -> str:
    """`text` (HTML or plain text) with only formatting tags left (see the module docstring).
    `inline`: phrasing tags only, blocks become spaces (for a card, which is a button); `links`:
    keep http(s) links; `max_chars`: cut the text after so many characters, with "…"."""
    return _run(_Sanitizer(inline=inline, links=links, max_chars=max_chars), text)


def _run(parser: _Sanitizer, text: str) -> str:
    # Fed in pieces, so that a long description cut after a few hundred characters is not parsed
    # to its end (a card shows the start of each of hundreds of descriptions).
    text = text or ""
    for start in range(0, len(text), _CHUNK):
        parser.feed(text[start:start + _CHUNK])
        if parser.truncated:
            break
    return parser.result()


def html_to_text(text: str, *, max_chars: int | None = None) -> str:
    """The text of `text` without any markup, whitespace collapsed (for tooltips and search)."""
    # Whitespace collapses afterwards: twice the characters leave enough to cut from.
    parser = _Sanitizer(inline=True, links=False, max_chars=None if max_chars is None else 2 * max_chars + 64)
    parser.allowed = frozenset()
    plain = " ".join(html.unescape(_run(parser, text)).split())
    if parser.truncated:
        plain = plain.removesuffix("…")  # the parser's mark; the cut below puts it back
    if max_chars is not None and (len(plain) > max_chars or parser.truncated):
        plain = plain[:max_chars].rstrip() + "…"
    return plain
