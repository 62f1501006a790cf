"""Users, the rooms a teacher may see, password checks and changes, disabling and deleting accounts."""

from __future__ import annotations

from typing import Any

from server.passwords import burn_time, check_new_password, hash_password, needs_rehash, verify_password
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
        return {"username": username, "role": role, "rooms": [], "disabled": False}

    def authenticate(self, username: str, password: str) -> dict[str, Any] | None:
        """The user when the password matches and the account is enabled, else None (in about the same time).

        A hash at older parameters (scrypt, or weaker argon2) is replaced after it verifies, while the password
        is at hand.
        """
        row = self.c.fetchone(
            "SELECT id, username, role, password_hash, disabled FROM users WHERE username = ?", (username,)
        )
        if row is None:
            burn_time(password)
            return None
        if not verify_password(password, row[3]) or row[4]:
            return None  # a disabled account answers as a wrong password does, telling a guesser nothing
        if needs_rehash(row[3]):
            with self.c.transaction() as c:
                # Only if nobody changed the password meanwhile.
                c.execute(
                    "UPDATE users SET password_hash = ? WHERE id = ? AND password_hash = ?",
                    (hash_password(password), row[0], row[3]),
                )
        return {"id": int(row[0]), "username": row[1], "role": row[2]}

    def _id(self, c, username: str) -> int:
        user = c.fetchone("SELECT id FROM users WHERE username = ?", (username,))
        if user is None:
            raise NotFound(f"user {username} does not exist")
        return int(user[0])

    def get(self, username: str) -> dict[str, Any] | None:
        row = self.c.fetchone("SELECT id, username, role, disabled FROM users WHERE username = ?", (username,))
        if row is None:
            return None
        return {"id": int(row[0]), "username": row[1], "role": row[2], "disabled": bool(row[3])}

    def check_password(self, user_id: int, password: str) -> bool:
        """Whether `password` is this user's current one."""
        row = self.c.fetchone("SELECT password_hash FROM users WHERE id = ?", (user_id,))
        return row is not None and verify_password(password, row[0])

    def set_password(self, username: str, password: str) -> int:
        """Store a new password; returns the user's id (ending sessions is the caller's choice)."""
        check_new_password(password)
        password_hash = hash_password(password)
        with self.c.transaction() as c:
            user_id = self._id(c, username)
            c.execute("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id))
        return user_id

    def set_disabled(self, username: str, disabled: bool) -> int:
        """Disable or enable an account; returns its id."""
        with self.c.transaction() as c:
            user_id = self._id(c, username)
            c.execute("UPDATE users SET disabled = ? WHERE id = ?", (int(disabled), user_id))
        return user_id

    def delete(self, username: str) -> None:
        """Delete an account with its sessions and room links, and revoke the API tokens it created."""
        with self.c.transaction() as c:
            user_id = self._id(c, username)
            c.execute("UPDATE api_tokens SET revoked = 1 WHERE created_by = ?", (username,))
            c.execute("DELETE FROM sessions WHERE user_id = ?", (user_id,))
            c.execute("DELETE FROM user_rooms WHERE user_id = ?", (user_id,))
            c.execute("DELETE FROM users WHERE id = ?", (user_id,))

    def add_room(self, username: str, room_id: int) -> dict[str, Any]:
        with self.c.transaction() as c:
            user_id = self._id(c, username)
            if not c.fetchone("SELECT id FROM rooms WHERE id = ?", (room_id,)):
                raise NotFound(f"room {room_id} does not exist")
            c.execute(
                "INSERT INTO user_rooms (user_id, room_id) VALUES (?, ?) ON CONFLICT (user_id, room_id) DO NOTHING",
                (user_id, room_id),
            )
        return self.view(username)

    def remove_room(self, username: str, room_id: int) -> dict[str, Any]:
        """Take a room away from a user; NotFound when the user had no access to it."""
        with self.c.transaction() as c:
            user_id = self._id(c, username)
            if not c.fetchone("SELECT 1 FROM user_rooms WHERE user_id = ? AND room_id = ?", (user_id, room_id)):
                raise NotFound(f"user {username} has no access to room {room_id}")
            c.execute("DELETE FROM user_rooms WHERE user_id = ? AND room_id = ?", (user_id, room_id))
        return self.view(username)

    def view(self, username: str) -> dict[str, Any]:
        user = self.get(username)
        if user is None:
            raise NotFound(f"user {username} does not exist")
        return {
            "username": username,
            "role": user["role"],
            "rooms": sorted(self.room_ids(user["id"])),
            "disabled": user["disabled"],
        }

    def room_ids(self, user_id: int) -> set[int]:
        return {int(r[0]) for r in self.c.fetchall("SELECT room_id FROM user_rooms WHERE user_id = ?", (user_id,))}

    def list(self) -> list[dict[str, Any]]:
        users = self.c.fetchall("SELECT id, username, role, disabled FROM users ORDER BY username")
        links = self.c.fetchall("SELECT user_id, room_id FROM user_rooms ORDER BY room_id")
        rooms: dict[int, list[int]] = {}
        for user_id, room_id in links:
            rooms.setdefault(int(user_id), []).append(int(room_id))
        return [
            {"username": u[1], "role": u[2], "rooms": rooms.get(int(u[0]), []), "disabled": bool(u[3])} for u in users
        ]
