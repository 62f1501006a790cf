"""Who is calling: session cookies with CSRF tokens, bearer API tokens scoped to rooms, and login throttling."""

from __future__ import annotations

import hmac
import threading
import time
from collections import OrderedDict
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
    token_id: int | None = None

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
        return Principal("token", f"token:{found['name']}", "token", found["rooms"], token_id=found["id"])
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
    """Slows password guessing without locking the rightful user out.

    Failures are counted per (client address, user name): after each one that pair waits `base_s`, then twice as
    long, up to `max_s`. A client address also waits once it has `address_factor` times as many failures across all
    names, which slows a sprayer of names. A guesser at another address never delays the teacher's own logins.
    The table keeps at most `max_entries` keys and forgets the least recently failed one first, never everyone.
    """

    def __init__(
        self,
        base_s: float = 1.0,
        max_s: float = 300.0,
        address_factor: int = 10,
        max_entries: int = 10_000,
        forget_s: float = 24 * 3600.0,
        clock=time.monotonic,
    ):
        self.base_s = base_s
        self.max_s = max_s
        self.address_factor = address_factor
        self.max_entries = max_entries
        self.forget_s = forget_s
        self.clock = clock
        self._failures: OrderedDict[tuple[str, ...], tuple[int, float]] = OrderedDict()  # key -> (count, last)
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, http) -> LoginLimiter:
        return cls(http.login_backoff_s, http.login_backoff_max_s, http.login_address_factor, http.login_table_size)

    @staticmethod
    def _keys(address: str, username: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return ("pair", address, username.lower()), ("address", address)

    def _delay(self, steps: int) -> float:
        return 0.0 if steps <= 0 else min(self.max_s, self.base_s * 2 ** min(steps - 1, 60))

    def _wait(self, key: tuple[str, ...], per_step: int, now: float) -> float:
        count, last = self._failures.get(key, (0, now))
        if now - last > self.forget_s:
            self._failures.pop(key, None)
            return 0.0
        return max(0.0, last + self._delay(count // per_step) - now)

    def retry_after(self, address: str, username: str) -> float:
        """Seconds until this address may try this user name again (0: now)."""
        pair, addr = self._keys(address, username)
        now = self.clock()
        with self._lock:
            return max(self._wait(pair, 1, now), self._wait(addr, self.address_factor, now))

    def failed(self, address: str, username: str) -> None:
        now = self.clock()
        with self._lock:
            for key in self._keys(address, username):
                count, _ = self._failures.pop(key, (0, now))
                self._failures[key] = (count + 1, now)  # re-inserted last: the most recently failed
            while len(self._failures) > self.max_entries:
                self._failures.popitem(last=False)

    def succeeded(self, address: str, username: str) -> None:
        with self._lock:
            self._failures.pop(self._keys(address, username)[0], None)

    def __len__(self) -> int:
        return len(self._failures)
