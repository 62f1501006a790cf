"""Login sessions and API tokens; only hashes of their secrets are stored."""

from __future__ import annotations

import secrets
from typing import Any

from server.passwords import new_token, token_hash
from server.storage.base import NotFound, Repository, now_ms


class SessionRepository(Repository):
    def create(self, user_id: int, ttl_ms: int) -> tuple[str, str]:
        """Return (cookie token, CSRF token); only the cookie's hash is stored."""
        token = new_token()
        csrf = secrets.token_urlsafe(24)
        created = now_ms()
        with self.c.transaction() as c:
            c.execute(
                "INSERT INTO sessions (token_hash, user_id, csrf, created_ms, expires_ms) VALUES (?, ?, ?, ?, ?)",
                (token_hash(token), user_id, csrf, created, created + ttl_ms),
            )
        return token, csrf

    def get(self, token: str) -> dict[str, Any] | None:
        """The unexpired session of a cookie token, with its user."""
        row = self.c.fetchone(
            "SELECT u.id, u.username, u.role, s.csrf FROM sessions s JOIN users u ON u.id = s.user_id "
            "WHERE s.token_hash = ? AND s.expires_ms > ?",
            (token_hash(token), now_ms()),
        )
        if row is None:
            return None
        return {"user_id": int(row[0]), "username": row[1], "role": row[2], "csrf": row[3]}

    def delete(self, token: str) -> None:
        with self.c.transaction() as c:
            c.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash(token),))


class TokenRepository(Repository):
    def create(self, name: str, room_ids: list[int], created_by: str | None) -> dict[str, Any]:
        """Create an API token for some rooms; the secret is returned once and stored only as a hash."""
        token = new_token("aula_")
        with self.c.transaction() as c:
            for room_id in room_ids:
                if not c.fetchone("SELECT id FROM rooms WHERE id = ?", (room_id,)):
                    raise NotFound(f"room {room_id} does not exist")
            row = c.fetchone(
                "INSERT INTO api_tokens (name, token_hash, created_by, created_ms) VALUES (?, ?, ?, ?) RETURNING id",
                (name, token_hash(token), created_by, now_ms()),
            )
            c.executemany(
                "INSERT INTO api_token_rooms (token_id, room_id) VALUES (?, ?)", [(row[0], r) for r in set(room_ids)]
            )
        return {"id": int(row[0]), "name": name, "token": token, "room_ids": sorted(set(room_ids))}

    def get(self, token: str) -> dict[str, Any] | None:
        """The unrevoked API token of a secret, with its rooms."""
        row = self.c.fetchone(
            "SELECT id, name FROM api_tokens WHERE token_hash = ? AND revoked = 0", (token_hash(token),)
        )
        if row is None:
            return None
        links = self.c.fetchall("SELECT room_id FROM api_token_rooms WHERE token_id = ?", (row[0],))
        rooms = {int(r[0]) for r in links}
        return {"id": int(row[0]), "name": row[1], "rooms": rooms}
