"""Login sessions and API tokens; only hashes of their secrets are stored."""

from __future__ import annotations

import secrets
from typing import Any

from server.passwords import new_token, token_hash
from server.storage.base import NotFound, Repository, now_ms

DAY_MS = 86_400_000
# A token stops working when its creator's account is disabled, as their sessions do.
_CREATOR_ENABLED = "NOT EXISTS (SELECT 1 FROM users u WHERE u.username = t.created_by AND u.disabled <> 0)"


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
        """The unexpired session of a cookie token, with its user, while that user is enabled."""
        row = self.c.fetchone(
            "SELECT u.id, u.username, u.role, s.csrf FROM sessions s JOIN users u ON u.id = s.user_id "
            "WHERE s.token_hash = ? AND s.expires_ms > ? AND u.disabled = 0",
            (token_hash(token), now_ms()),
        )
        if row is None:
            return None
        return {"user_id": int(row[0]), "username": row[1], "role": row[2], "csrf": row[3]}

    def delete(self, token: str) -> None:
        with self.c.transaction() as c:
            c.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash(token),))

    def end_for_user(self, user_id: int, keep: str | None = None) -> int:
        """End a user's sessions, except the one whose cookie is `keep`; returns how many ended."""
        with self.c.transaction() as c:
            if keep is None:
                cursor = c.execute("DELETE FROM sessions WHERE user_id = ?", (user_id,))
            else:
                cursor = c.execute(
                    "DELETE FROM sessions WHERE user_id = ? AND token_hash <> ?", (user_id, token_hash(keep))
                )
            return max(cursor.rowcount, 0)


class TokenRepository(Repository):
    def create(
        self, name: str, room_ids: list[int], created_by: str | None, expires_days: float = 90
    ) -> dict[str, Any]:
        """Create an API token for some rooms; the secret is returned once and stored only as a hash."""
        if not 0 < expires_days <= 3650:
            raise ValueError("expires_days must be more than 0 and at most 3650")
        token = new_token("aula_")
        created = now_ms()
        expires = created + int(expires_days * DAY_MS)
        with self.c.transaction() as c:
            for room_id in room_ids:
                if not c.fetchone("SELECT id FROM rooms WHERE id = ?", (room_id,)):
                    raise NotFound(f"room {room_id} does not exist")
            row = c.fetchone(
                "INSERT INTO api_tokens (name, token_hash, created_by, created_ms, expires_ms) "
                "VALUES (?, ?, ?, ?, ?) RETURNING id",
                (name, token_hash(token), created_by, created, expires),
            )
            c.executemany(
                "INSERT INTO api_token_rooms (token_id, room_id) VALUES (?, ?)", [(row[0], r) for r in set(room_ids)]
            )
        return {
            "id": int(row[0]),
            "name": name,
            "token": token,
            "room_ids": sorted(set(room_ids)),
            "created_ms": created,
            "expires_ms": expires,
        }

    def get(self, token: str) -> dict[str, Any] | None:
        """The API token of a secret, with its rooms, while it is unrevoked, unexpired and its creator enabled."""
        row = self.c.fetchone(
            "SELECT t.id, t.name FROM api_tokens t WHERE t.token_hash = ? AND t.revoked = 0 AND t.expires_ms > ? "
            f"AND {_CREATOR_ENABLED}",
            (token_hash(token), now_ms()),
        )
        if row is None:
            return None
        links = self.c.fetchall("SELECT room_id FROM api_token_rooms WHERE token_id = ?", (row[0],))
        rooms = {int(r[0]) for r in links}
        return {"id": int(row[0]), "name": row[1], "rooms": rooms}

    def list(self) -> list[dict[str, Any]]:
        """Every token without its secret: who made it, when it expires, its rooms and whether it is revoked."""
        rows = self.c.fetchall(
            "SELECT id, name, created_by, created_ms, expires_ms, revoked FROM api_tokens ORDER BY id"
        )
        links = self.c.fetchall("SELECT token_id, room_id FROM api_token_rooms ORDER BY room_id")
        rooms: dict[int, list[int]] = {}
        for token_id, room_id in links:
            rooms.setdefault(int(token_id), []).append(int(room_id))
        now = now_ms()
        return [
            {
                "id": int(r[0]),
                "name": r[1],
                "created_by": r[2],
                "created_ms": int(r[3]),
                "expires_ms": int(r[4]),
                "revoked": bool(r[5]),
                "expired": int(r[4]) <= now,
                "room_ids": rooms.get(int(r[0]), []),
            }
            for r in rows
        ]

    def revoke(self, token_id: int) -> None:
        """Revoke a token at once; NotFound for an unknown id."""
        with self.c.transaction() as c:
            if not c.fetchone("SELECT id FROM api_tokens WHERE id = ?", (token_id,)):
                raise NotFound(f"token {token_id} does not exist")
            c.execute("UPDATE api_tokens SET revoked = 1 WHERE id = ?", (token_id,))
