"""Model and labeler text as safe HTML: markdown with raw HTML off, then an allow-list sanitiser.

Prompts and candidates are often markdown (lists, code blocks); shown raw in a proportional font
they are hard to judge. Two independent layers keep them inert, so one failing is not enough:

1. markdown-it-py (CommonMark) with ``html=False``: raw HTML in the text — ``<script>``, an ``<img
   onerror=…>``, an HTML block — is escaped and shown as text; its link validator refuses
   ``javascript:``, ``vbscript:``, ``file:`` and ``data:`` URLs. Images are off (a remote image in a
   task would be a tracking pixel). ``breaks=True``: a single newline is a line break, as model
   text means it.
2. nh3 (the Ammonia sanitiser) over the result: only the tags markdown makes survive, only
   ``href`` (http, https, mailto), ``dir``, ``title`` and table alignment attributes; every link
   gets ``rel="noopener noreferrer nofollow"`` and opens in a new tab (so a click never loses the
   labeler's ranking).

Every block gets ``dir="auto"``: Arabic or Hebrew paragraphs run right to left, each on its own.
The labeling pages call ``markdown`` through the Jinja filter of the same name; the result is
memoised (item texts never change after import, and each is shown many times).
"""

from __future__ import annotations

from functools import lru_cache

import nh3
from markdown_it import MarkdownIt
from markupsafe import Markup

TAGS = {"p", "br", "hr", "em", "strong", "s", "code", "pre", "blockquote", "ul", "ol", "li", "a",
        "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td"}
ATTRIBUTES = {"*": {"dir"}, "a": {"href", "title"}, "ol": {"start"}, "th": {"style"}, "td": {"style"}}
URL_SCHEMES = {"http", "https", "mailto"}
# the blocks a reader sees as paragraphs: each decides its own direction
_BLOCKS = {"paragraph_open", "heading_open", "list_item_open", "blockquote_open", "th_open", "td_open", "fence", "code_block"}

_md = MarkdownIt("commonmark", {"html": False, "breaks": True, "linkify": False}).enable("table").enable("strikethrough")
_md.disable("image")


def _with_dir(tokens) -> None:
    for t in tokens:
        if t.type in _BLOCKS:
            t.attrSet("dir", "auto")


def to_html(text: str) -> str:
    """``text`` (markdown) as sanitised HTML: no script, no event handler, no raw HTML, no image."""
    tokens = _md.parse(text)
    _with_dir(tokens)
    html = _md.renderer.render(tokens, _md.options, {})
    return nh3.clean(html, tags=TAGS, attributes=ATTRIBUTES, url_schemes=URL_SCHEMES, link_rel="noopener noreferrer nofollow",
                     set_tag_attribute_values={"a": {"target": "_blank"}}, strip_comments=True,
                     filter_style_properties={"text-align"})


@lru_cache(maxsize=8192)
def markdown(text: str | None) -> Markup:
    """The Jinja filter: ``{{ text | markdown }}`` (already safe: not escaped again)."""
    return Markup(to_html(text or ""))
