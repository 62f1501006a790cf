"""Ordered schema migrations; each runs once, in one transaction, recorded in schema_migrations."""

from __future__ import annotations

from dataclasses import dataclass

from device.contract.labels import LABELS


@dataclass(frozen=True)
class Migration:
    """One schema step; `{id}`, `{bigint}` and `{real}` are replaced per database."""

    version: int
    name: str
    statements: tuple[str, ...]


_PROB_COLUMNS = ", ".join(f"p_{label} {{real}} NOT NULL DEFAULT 0" for label in LABELS)


def modality_columns(name: str, count_key: str | None = None) -> tuple[str, ...]:
    """Statements adding one modality's sums to the aggregates (server/aggregates.py: ModalitySums.columns).

    One column per statement, as SQLite's ALTER TABLE needs. The defaults make rows written before read as
    "no windows had this modality". A later modality gets its own migration with these statements.
    """
    columns = [f"{name}_n INTEGER NOT NULL DEFAULT 0"]
    columns += [f"{name}_p_{label} {{real}} NOT NULL DEFAULT 0" for label in LABELS]
    if count_key:
        columns.append(f"{count_key}_sum {{bigint}} NOT NULL DEFAULT 0")
    return tuple(f"ALTER TABLE aggregates ADD COLUMN {column}" for column in columns)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "initial schema",
        (
            "CREATE TABLE rooms (id {id}, site TEXT NOT NULL, room TEXT NOT NULL, name TEXT NOT NULL, "
            "created_ms {bigint} NOT NULL, UNIQUE (site, room))",
            # room_id is the assigned room; reported_room is what the device's topic says.
            "CREATE TABLE devices (id {id}, site TEXT NOT NULL, device_id TEXT NOT NULL, "
            "reported_room TEXT NOT NULL, room_id {bigint} REFERENCES rooms(id), status TEXT NOT NULL, "
            "first_seen_ms {bigint} NOT NULL, last_seen_ms {bigint} NOT NULL, state TEXT, state_reason TEXT, "
            "paused INTEGER NOT NULL DEFAULT 0, last_status TEXT, last_health TEXT, UNIQUE (site, device_id))",
            "CREATE TABLE events (id {id}, event_id TEXT NOT NULL UNIQUE, site TEXT NOT NULL, "
            "device_id TEXT NOT NULL, room_id {bigint}, seq {bigint} NOT NULL, window_start_ms {bigint} NOT NULL, "
            "window_end_ms {bigint} NOT NULL, received_ms {bigint} NOT NULL, payload TEXT NOT NULL)",
            "CREATE INDEX events_window ON events (window_start_ms)",
            "CREATE INDEX events_device ON events (site, device_id, room_id)",
            # Sums and counts, so buckets merge by addition (across devices, instances and time).
            f"CREATE TABLE aggregates (room_id {{bigint}} NOT NULL, bucket_ms {{bigint}} NOT NULL, "
            f"windows INTEGER NOT NULL DEFAULT 0, dist_n INTEGER NOT NULL DEFAULT 0, {_PROB_COLUMNS}, "
            "valence_n INTEGER NOT NULL DEFAULT 0, valence_sum {real} NOT NULL DEFAULT 0, "
            "arousal_n INTEGER NOT NULL DEFAULT 0, arousal_sum {real} NOT NULL DEFAULT 0, "
            "faces_n INTEGER NOT NULL DEFAULT 0, faces_sum {bigint} NOT NULL DEFAULT 0, "
            "PRIMARY KEY (room_id, bucket_ms))",
            "CREATE TABLE users (id {id}, username TEXT NOT NULL UNIQUE, password_hash TEXT NOT NULL, "
            "role TEXT NOT NULL CHECK (role IN ('teacher', 'admin')), created_ms {bigint} NOT NULL)",
            "CREATE TABLE user_rooms (user_id {bigint} NOT NULL REFERENCES users(id) ON DELETE CASCADE, "
            "room_id {bigint} NOT NULL REFERENCES rooms(id) ON DELETE CASCADE, PRIMARY KEY (user_id, room_id))",
            # Only a hash of the session cookie is stored: a copy of the database cannot log anyone in.
            "CREATE TABLE sessions (token_hash TEXT PRIMARY KEY, user_id {bigint} NOT NULL "
            "REFERENCES users(id) ON DELETE CASCADE, csrf TEXT NOT NULL, created_ms {bigint} NOT NULL, "
            "expires_ms {bigint} NOT NULL)",
            "CREATE INDEX sessions_expiry ON sessions (expires_ms)",
            "CREATE TABLE api_tokens (id {id}, name TEXT NOT NULL, token_hash TEXT NOT NULL UNIQUE, "
            "created_by TEXT, created_ms {bigint} NOT NULL, revoked INTEGER NOT NULL DEFAULT 0)",
            "CREATE TABLE api_token_rooms (token_id {bigint} NOT NULL REFERENCES api_tokens(id) ON DELETE CASCADE, "
            "room_id {bigint} NOT NULL REFERENCES rooms(id) ON DELETE CASCADE, PRIMARY KEY (token_id, room_id))",
            "CREATE TABLE segments (id {id}, room_id {bigint} NOT NULL REFERENCES rooms(id) ON DELETE CASCADE, "
            "name TEXT NOT NULL, start_ms {bigint} NOT NULL, end_ms {bigint}, created_by TEXT)",
            "CREATE INDEX segments_room ON segments (room_id, start_ms)",
        ),
    ),
    Migration(
        2,
        "face and speech sums in aggregates",
        (*modality_columns("face"), *modality_columns("speech", count_key="speech_segments")),
    ),
    Migration(3, "text sums in aggregates", modality_columns("text", count_key="text_utterances")),
    Migration(
        4,
        "api token expiry",
        (
            "ALTER TABLE api_tokens ADD COLUMN expires_ms {bigint}",
            # Tokens made before expiry existed get the default lifetime of 90 days from their creation.
            "UPDATE api_tokens SET expires_ms = created_ms + 7776000000 WHERE expires_ms IS NULL",
        ),
    ),
    Migration(5, "disabled users", ("ALTER TABLE users ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0",)),
    # Retention goes by the server's clock (received_ms): a sender cannot date an event out of its reach.
    Migration(
        6,
        "events by arrival time",
        (
            "CREATE INDEX events_received ON events (received_ms)",
            # Counts the raw events of unassigned devices (capped by intake.unassigned_events_max) cheaply.
            "CREATE INDEX events_unassigned ON events (received_ms) WHERE room_id IS NULL",
        ),
    ),
    Migration(
        7,
        "quarantine of events this release cannot read",
        (
            "CREATE TABLE quarantine (id {id}, topic TEXT NOT NULL, payload TEXT NOT NULL, reason TEXT NOT NULL, "
            "received_ms {bigint} NOT NULL)",
            "CREATE INDEX quarantine_received ON quarantine (received_ms)",
        ),
    ),
    Migration(
        8,
        "health trends of the fleet page",
        (
            # The last fleet.trend_samples health messages of each device (server/storage/health_trend.py):
            # ts_ms is when the server received it, figures the trend's figures as a JSON object. The rows of a
            # device go with it when it is deleted.
            "CREATE TABLE device_health_trend (id {id}, site TEXT NOT NULL, device_id TEXT NOT NULL, "
            "ts_ms {bigint} NOT NULL, figures TEXT NOT NULL, FOREIGN KEY (site, device_id) "
            "REFERENCES devices (site, device_id) ON DELETE CASCADE)",
            "CREATE INDEX device_health_trend_device ON device_health_trend (site, device_id, ts_ms, id)",
        ),
    ),
    Migration(
        9,
        "one health trend row per health message",
        (
            # sent_ms is the message's own ts_ms: a message the broker delivers again (QoS 1 after a lost
            # acknowledgement) has the same one and adds no second row. Rows written before have NULL, which a
            # unique index lets repeat.
            "ALTER TABLE device_health_trend ADD COLUMN sent_ms {bigint}",
            "CREATE UNIQUE INDEX device_health_trend_sent ON device_health_trend (site, device_id, sent_ms)",
        ),
    ),
    Migration(
        10,
        "when each device entered its reported state",
        (
            # Set by the batch that stores a status with another state than the stored one (server/storage/
            # ingest.py), so that the fleet page's "since" and its alerts outlive a server restart. NULL for
            # devices whose state changed before this migration: the server then counts from its own start.
            "ALTER TABLE devices ADD COLUMN state_since_ms {bigint}",
        ),
    ),
)
