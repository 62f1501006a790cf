"""The FastAPI application: API, pages, static files and security headers; no CDN assets."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from server import api, pages
from server.context import AppContext


class SecurityHeaders:
    """Pure ASGI middleware (it does not buffer streams) that adds the same security headers to every response."""

    def __init__(self, app, csp: str):
        self.app = app
        self.headers = [
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"same-origin"),
            (b"content-security-policy", csp.encode()),
        ]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        no_store = scope["path"].startswith("/api/")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.extend(self.headers)
                if no_store and not any(k == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with where and why; FastAPI's own handler echoes the input back and fails with a 500 on input that is
    not UTF-8 or holds NaN or infinity (Python's JSON parser accepts both)."""
    errors = [{k: e[k] for k in ("type", "loc", "msg") if k in e} for e in exc.errors()]
    return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)


async def out_of_range(request: Request, exc: OverflowError) -> JSONResponse:
    """422: an id in the path beyond 64 bits, which SQLite cannot even compare (Python ints have no bound)."""
    return JSONResponse({"detail": "a number in the request is out of range"}, status_code=422)


def create_app(ctx: AppContext) -> FastAPI:
    """Build the app around a running server's parts."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        ctx.hub.attach(asyncio.get_running_loop())
        yield
        ctx.hub.close()

    # FastAPI's /docs loads Swagger UI from a CDN; classrooms may be offline, so /api/docs is a local page instead.
    app = FastAPI(
        title="Aula server",
        version="1",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(OverflowError, out_of_range)
    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=pages.STATIC_DIR, check_dir=False), name="static")
    app.add_middleware(SecurityHeaders, csp=ctx.config.http.content_security_policy)
    return app
