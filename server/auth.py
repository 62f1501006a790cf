"""Who is calling: session cookies with CSRF tokens, bearer API tokens scoped to rooms, and login throttling."""

from __future__ import annotations

import hmac
import threading
import time
from dataclasses import dataclass

from fastapi import HTTPException, Request

from server.storage import Storage

SESSION_COOKIE = "aula_session"
CSRF_HEADER = "X-CSRF-Token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass
class Principal:
    """An authenticated caller: a logged-in user (session) or an API token."""

    kind: str  # session | token
    username: str
    role: str  # teacher | admin | token
    rooms: set[int] | None  # None: every room (admins)
    csrf: str | None = None
    user_id: int | None = None

    @property
    def is_admin(self) -> bool:
        return self.kind == "session" and self.role == "admin"

    def can_see(self, room_id: int) -> bool:
        return self.rooms is None or room_id in self.rooms


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def identify(request: Request, storage: Storage) -> Principal | None:
    """The caller of a request, or None; a bearer token takes precedence over a cookie."""
    token = _bearer(request)
    if token is not None:
        found = storage.tokens.get(token)
        if found is None:
            return None
        return Principal("token", f"token:{found['name']}", "token", found["rooms"])
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie or len(cookie) > 256:
        return None
    session = storage.sessions.get(cookie)
    if session is None:
        return None
    rooms = None if session["role"] == "admin" else storage.users.room_ids(session["user_id"])
    return Principal("session", session["username"], session["role"], rooms, session["csrf"], session["user_id"])


def check_csrf(request: Request, principal: Principal) -> None:
    """Unsafe cookie-authenticated requests need the session's CSRF token and a JSON body type, else 403."""
    if principal.kind != "session" or request.method not in UNSAFE_METHODS:
        return  # a bearer token is not sent by browsers on their own, so it cannot be forged cross-site
    sent = request.headers.get(CSRF_HEADER, "")
    if not principal.csrf or not hmac.compare_digest(sent.encode(), principal.csrf.encode()):
        raise HTTPException(403, "missing or wrong X-CSRF-Token header")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise HTTPException(403, "unsafe requests must send Content-Type: application/json")


class LoginLimiter:
    """Counts failed logins per user name and per client address; too many in the window locks that key out."""

    def __init__(self, max_failures: int, window_s: float):
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> list[float]:
        times = [t for t in self._failures.get(key, []) if now - t < self.window_s]
        if times:
            self._failures[key] = times
        else:
            self._failures.pop(key, None)
        return times

    def retry_after(self, keys: list[str]) -> float:
        """Seconds until these keys may try again (0: now)."""
        now = time.monotonic()
        with self._lock:
            wait = 0.0
            for key in keys:
                times = self._recent(key, now)
                if len(times) >= self.max_failures:
                    wait = max(wait, self.window_s - (now - times[-self.max_failures]))
            return wait

    def failed(self, keys: list[str]) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._failures) > 100_000:  # bound memory under a spray of random names
                self._failures.clear()
            for key in keys:
                self._recent(key, now)
                self._failures.setdefault(key, []).append(now)

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)
