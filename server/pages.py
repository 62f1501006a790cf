"""HTML pages of the dashboard (static files, behind login) and the local API index at /api/docs."""

from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from server import page_layout
from server.api import Ctx
from server.auth import Principal, identify

STATIC_DIR = Path(__file__).resolve().parent / "web" / "static"

router = APIRouter(include_in_schema=False)

_MISSING = (
    "<!doctype html><meta charset=utf-8><title>Aula</title>"
    "<p>The dashboard page <code>{name}</code> is not installed in server/web/pages/.</p>"
)


def _page(name: str) -> Response:
    try:
        body = page_layout.render(name)
    except FileNotFoundError:
        return HTMLResponse(_MISSING.format(name=html.escape(name)), status_code=404)
    return HTMLResponse(body, headers={"Cache-Control": "no-cache"})


def _logged_in(request: Request, c) -> Principal | None:
    return identify(request, c.storage)


def _to_login(request: Request) -> RedirectResponse:
    """Send an anonymous visitor to the login page, which brings them back here afterwards."""
    return RedirectResponse(f"/login?next={quote(request.url.path, safe='/')}", status_code=303)


def _forbidden(title: str, text: str) -> HTMLResponse:
    body = (
        "<!doctype html><meta charset=utf-8><title>No access - Aula</title><link rel=stylesheet href=/static/app.css>"
        f"<main class=page><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>"
        "<p><a href=/>Back to my rooms</a></p></main>"
    )
    return HTMLResponse(body, status_code=403)


@router.get("/login")
def login_page() -> Response:
    return _page("login.html")


@router.get("/")
def index_page(request: Request, c: Ctx) -> Response:
    if _logged_in(request, c) is None:
        return _to_login(request)
    return _page("index.html")


def _room_page(request: Request, c, room_id: int, name: str) -> Response:
    who = _logged_in(request, c)
    if who is None:
        return _to_login(request)
    if not who.can_see(room_id):
        return _forbidden("You do not have access to this room", "This room belongs to another teacher.")
    if c.storage.rooms.get(room_id) is None:
        raise HTTPException(404, f"room {room_id} does not exist")
    return _page(name)


@router.get("/rooms/{room_id}")
def room_page(room_id: int, request: Request, c: Ctx) -> Response:
    return _room_page(request, c, room_id, "room.html")


@router.get("/rooms/{room_id}/report")
def report_page(room_id: int, request: Request, c: Ctx) -> Response:
    return _room_page(request, c, room_id, "report.html")


@router.get("/account")
def account_page(request: Request, c: Ctx) -> Response:
    if _logged_in(request, c) is None:
        return _to_login(request)
    return _page("account.html")


def _admin_page(request: Request, c, name: str, refusal: str) -> Response:
    """A page for administrators: the login page for a visitor, 403 with `refusal` for anyone else."""
    who = _logged_in(request, c)
    if who is None:
        return _to_login(request)
    if not who.is_admin:
        return _forbidden("Administrators only", refusal)
    return _page(name)


@router.get("/admin")
def admin_page(request: Request, c: Ctx) -> Response:
    return _admin_page(request, c, "admin.html", "Ask an administrator if you need to manage rooms or devices.")


@router.get("/fleet")
def fleet_page(request: Request, c: Ctx) -> Response:
    return _admin_page(request, c, "fleet.html", "The fleet page is for administrators and technicians.")


@router.get("/api/docs")
def api_docs(request: Request) -> HTMLResponse:
    """A plain list of the endpoints from the OpenAPI document; no scripts or styles from a CDN."""
    spec = request.app.openapi()
    rows = []
    for path, methods in sorted(spec.get("paths", {}).items()):
        for method, op in methods.items():
            params = ", ".join(p["name"] for p in op.get("parameters", []) if p.get("in") == "query")
            rows.append(
                f"<tr><td><code>{html.escape(method.upper())}</code></td><td><code>{html.escape(path)}</code></td>"
                f"<td>{html.escape(op.get('summary', ''))}</td><td>{html.escape(params)}</td></tr>"
            )
    body = (
        "<!doctype html><html lang=en><meta charset=utf-8><title>Aula API</title>"
        "<style>body{font-family:sans-serif;margin:2em}td{padding:.2em .8em;border-bottom:1px solid #ddd}</style>"
        f"<h1>{html.escape(spec['info']['title'])} {html.escape(spec['info']['version'])}</h1>"
        '<p>Machine-readable: <a href="/openapi.json">/openapi.json</a>. Unsafe requests with a session cookie need '
        "the <code>X-CSRF-Token</code> header from <code>/api/me</code>; API tokens use "
        "<code>Authorization: Bearer</code>.</p>"
        "<table><tr><th>Method</th><th>Path</th><th>What</th><th>Query</th></tr>" + "".join(rows) + "</table></html>"
    )
    return HTMLResponse(body)
