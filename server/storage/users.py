"""Users, the rooms a teacher may see, and password checks."""

from __future__ import annotations

from typing import Any

from server.passwords import burn_time, check_new_password, hash_password, verify_password
from server.storage.base import Conflict, NotFound, Repository, now_ms

ROLES = ("teacher", "admin")


class UserRepository(Repository):
    def create(self, username: str, password: str, role: str) -> dict[str, Any]:
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        check_new_password(password)
        password_hash = hash_password(password)
        with self.c.transaction() as c:
            if c.fetchone("SELECT id FROM users WHERE username = ?", (username,)):
                raise Conflict(f"user {username} exists")
            c.execute(
                "INSERT INTO users (username, password_hash, role, created_ms) VALUES (?, ?, ?, ?)",
                (username, password_hash, role, now_ms()),
            )
        return {"username": username, "role": role, "rooms": []}

    def authenticate(self, username: str, password: str) -> dict[str, Any] | None:
        """The user when the password matches, else None (in about the same time either way)."""
        row = self.c.fetchone("SELECT id, username, role, password_hash FROM users WHERE username = ?", (username,))
        if row is None:
            burn_time(password)
            return None
        if not verify_password(password, row[3]):
            return None
        return {"id": int(row[0]), "username": row[1], "role": row[2]}

    def add_room(self, username: str, room_id: int) -> dict[str, Any]:
        with self.c.transaction() as c:
            user = c.fetchone("SELECT id, role FROM users WHERE username = ?", (username,))
            if user is None:
                raise NotFound(f"user {username} does not exist")
            if not c.fetchone("SELECT id FROM rooms WHERE id = ?", (room_id,)):
                raise NotFound(f"room {room_id} does not exist")
            c.execute(
                "INSERT INTO user_rooms (user_id, room_id) VALUES (?, ?) ON CONFLICT (user_id, room_id) DO NOTHING",
                (user[0], room_id),
            )
        return {"username": username, "role": user[1], "rooms": sorted(self.room_ids(int(user[0])))}

    def room_ids(self, user_id: int) -> set[int]:
        return {int(r[0]) for r in self.c.fetchall("SELECT room_id FROM user_rooms WHERE user_id = ?", (user_id,))}

    def list(self) -> list[dict[str, Any]]:
        users = self.c.fetchall("SELECT id, username, role FROM users ORDER BY username")
        links = self.c.fetchall("SELECT user_id, room_id FROM user_rooms ORDER BY room_id")
        rooms: dict[int, list[int]] = {}
        for user_id, room_id in links:
            rooms.setdefault(int(user_id), []).append(int(room_id))
        return [{"username": u[1], "role": u[2], "rooms": rooms.get(int(u[0]), [])} for u in users]
