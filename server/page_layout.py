"""Assemble the dashboard's pages: one shared layout (head, top bar, legal footer) around each page's content.

A page file in server/web/pages/ starts with one comment that says what the layout needs, then its <main>:
    <!-- aula-page title="Live room" scripts="chart.js room.js" body="page-room" nav="yes" -->
Pages are plain HTML with no build step; they are assembled once, when first served.
"""

from __future__ import annotations

import functools
import html
import re
from pathlib import Path

WEB_DIR = Path(__file__).resolve().parent / "web"
PAGES_DIR = WEB_DIR / "pages"

_FRONT = re.compile(r"\A<!-- aula-page((?:\s+\w+=\"[^\"]*\")*)\s*-->\n")
_ATTR = re.compile(r"(\w+)=\"([^\"]*)\"")
_KEYS = {"title", "scripts", "body", "nav"}
_BRAND = '  <a class="brand" href="/"><span class="brand-mark" aria-hidden="true"></span>Aula</a>\n'
_TOPBAR = {
    "yes": '<a class="skip-link" href="#main">Skip to content</a>\n<header class="topbar">\n' + _BRAND
    + '  <nav id="nav" class="nav" aria-label="Main"></nav>\n  <div id="who" class="who"></div>\n</header>',
    "no": '<header class="topbar">\n' + _BRAND + "</header>",
}


class PageError(ValueError):
    """A page file is missing its front comment or has a bad one."""


def page_names() -> list[str]:
    """Return the file names of the pages that can be rendered."""
    return sorted(p.name for p in PAGES_DIR.glob("*.html"))


@functools.cache
def render(name: str) -> str:
    """Return the complete HTML of page `name` (e.g. "room.html"); FileNotFoundError when there is none."""
    text = (PAGES_DIR / name).read_text(encoding="utf-8")
    match = _FRONT.match(text)
    if match is None:
        raise PageError(f"{PAGES_DIR / name} must start with <!-- aula-page title=... scripts=... body=... nav=... -->")
    attrs = dict(_ATTR.findall(match.group(1)))
    if set(attrs) != _KEYS or attrs["nav"] not in _TOPBAR:
        raise PageError(f"{PAGES_DIR / name}: the aula-page comment needs exactly {sorted(_KEYS)} (nav yes or no)")
    scripts = "\n".join(f'<script src="/static/{html.escape(s)}" defer></script>' for s in attrs["scripts"].split())
    parts = {
        "title": html.escape(attrs["title"]),
        "scripts": scripts,
        "body": html.escape(attrs["body"]),
        "topbar": _TOPBAR[attrs["nav"]],
        "content": text[match.end():].rstrip("\n"),
    }
    out = (WEB_DIR / "layout.html").read_text(encoding="utf-8")
    for key, value in parts.items():
        out = out.replace("{{" + key + "}}", value)
    return out
