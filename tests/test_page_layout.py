"""The dashboard pages share one layout: head, top bar and the legal footer come from server/web/layout.html."""

from __future__ import annotations

import pytest

from server import page_layout


def test_every_page_renders_once_with_the_shared_parts():
    names = page_layout.page_names()
    assert names == ["account.html", "admin.html", "fleet.html", "index.html", "login.html", "report.html", "room.html"]
    for name in names:
        page = page_layout.render(name)
        assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>"), name
        assert page.count('<footer class="legal">') == 1 and "Article 5(1)(f)" in page, name
        assert page.count("<main") == 1 and page.count("<title>") == 1 and "{{" not in page, name
        assert '<script src="/static/app.js" defer></script>' in page, name
    assert '<nav id="nav"' in page_layout.render("room.html")
    assert '<nav id="nav"' not in page_layout.render("login.html")  # nothing to navigate before logging in
    assert '<script src="/static/chart.js" defer></script>' in page_layout.render("room.html")


def test_a_page_without_its_front_comment_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(page_layout, "PAGES_DIR", tmp_path)
    page_layout.render.cache_clear()
    try:
        (tmp_path / "bare.html").write_text("<main>hello</main>\n")
        with pytest.raises(page_layout.PageError, match="must start with <!-- aula-page"):
            page_layout.render("bare.html")
        odd = '<!-- aula-page title="x" scripts="" body="b" nav="maybe" -->\n<main></main>\n'
        (tmp_path / "odd.html").write_text(odd)
        with pytest.raises(page_layout.PageError, match="nav yes or no"):
            page_layout.render("odd.html")
        with pytest.raises(FileNotFoundError):
            page_layout.render("missing.html")
    finally:
        page_layout.render.cache_clear()
