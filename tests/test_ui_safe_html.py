"""Descriptions written by others (Civitai's HTML) shown without running anything: only formatting
tags survive, without attributes; links only http(s), and only where allowed."""

from __future__ import annotations

import pytest

from modules.ui.safe_html import html_to_text, sanitize_html


@pytest.mark.parametrize("hostile", [
    "<img src=x onerror=alert(1)>",
    "<script>alert(1)</script>",
    "<script/>alert(1)",
    "<svg/onload=alert(1)>",
    "<svg><script>alert(1)</script></svg>",
    "<iframe src=javascript:alert(1)></iframe>",
    "<style>body{background:url(javascript:alert(1))}</style>",
    "<b onclick=alert(1)>x</b>",
    "<a href='javascript:alert(1)'>x</a>",
    "<a href=' JaVaScRiPt:alert(1)'>x</a>",
    "<a href='data:text/html,<script>alert(1)</script>'>x</a>",
    "<p style='background:url(x)' onmouseover=alert(1)>x</p>",
    "<math><mi xlink:href=javascript:alert(1)>x</mi></math>",
    "<object data=x.swf></object><embed src=x.swf>",
    "<!--<img src=x onerror=alert(1)>-->",
    "<form action=//evil><input name=q><button>go</button></form>",
])
@pytest.mark.parametrize("links", [False, True])
def test_nothing_that_runs_survives(hostile, links):
    for inline in (False, True):
        out = sanitize_html(hostile, inline=inline, links=links).lower()
        for marker in ("<script", "<img", "<svg", "<iframe", "<style", "<object", "<embed", "<form", "<input",
                       "<math", "onerror", "onclick", "onload", "onmouseover", "javascript:", "data:", " style="):
            assert marker not in out, (hostile, out)


def test_formatting_text_and_escapes_are_kept():
    source = "<h2>Title</h2><p>Use <strong>tw1</strong> &amp; <em>tw2</em><br>then &lt;b&gt;</p><ul><li>one</li></ul>"
    assert sanitize_html(source) == ("<h2>Title</h2><p>Use <strong>tw1</strong> &amp; <em>tw2</em><br>then "
                                     "&lt;b&gt;</p><ul><li>one</li></ul>")
    # A card (a button) takes phrasing tags only: blocks become spaces.
    assert sanitize_html(source, inline=True) == "Title Use <strong>tw1</strong> &amp; <em>tw2</em><br>then &lt;b&gt; one"


def test_links_only_http_and_never_with_the_opener():
    out = sanitize_html("<a href='https://civitai.com/models/1' title=x>page</a>", links=True)
    assert out == ('<a href="https://civitai.com/models/1" target="_blank" rel="noopener noreferrer nofollow">'
                   'page</a>')
    assert sanitize_html("<a href='https://civitai.com/models/1'>page</a>") == "page"
    assert sanitize_html("<a href='/relative'>page</a>", links=True) == "page"


def test_unclosed_tags_are_closed_and_text_is_cut():
    assert sanitize_html("<b>bold <i>both") == "<b>bold <i>both</i></b>"
    assert sanitize_html("<b>abcdef</b>ghij", max_chars=4) == "<b>abcd…</b>"
    assert html_to_text("<p>a &amp;  <b>b</b></p>\n<p>c</p><script>x</script>") == "a & b c"
    assert html_to_text("abcdef", max_chars=3) == "abc…"


def test_long_descriptions_are_cut_without_reading_them_to_the_end():
    long = "<p>" + "word " * 50_000 + "</p><script>alert(1)</script>"
    out = sanitize_html(long, inline=True, max_chars=100)
    assert out.endswith("…") and len(out) < 120 and "script" not in out
    assert html_to_text("a" + " " * 5000 + "b", max_chars=10) == "a…"
    assert html_to_text("<b>x</b>" * 3) == "xxx"
