"""The fleet inventory: one CSV row per device (site, room, device, and the ssh host to flash it over)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from device.common.errors import ConfigError

REQUIRED = ("site", "room", "device")
OPTIONAL = ("host",)
_BAD = frozenset("+#/") | {"\0"}


@dataclass(frozen=True)
class DeviceRow:
    """One device of the inventory, with the CSV line it came from (for error messages)."""

    site: str
    room: str
    device: str
    host: str | None = None
    line: int = 0


def check_id(value: str, what: str, where: str) -> str:
    """An id that is one MQTT topic level and a certificate's common name: 1-64 printable characters, no + # /."""
    value = value.strip()
    if not value:
        raise ConfigError(f"{where}: {what} is empty")
    if len(value) > 64 or not value.isprintable() or _BAD & set(value) or value != value.strip():
        raise ConfigError(f"{where}: {what} {value!r} must be 1-64 printable characters without '+', '#' or '/'")
    return value


def read_inventory(path: Path) -> list[DeviceRow]:
    """Read and check the inventory; a bad row is an error that names its line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the inventory {path}: {exc.strerror or exc}") from None
    lines = [ln for ln in text.splitlines()]
    reader = csv.DictReader(lines)
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ConfigError(f"{path}:1: the header must name the columns {', '.join(REQUIRED)} (and optionally host); "
                          f"missing: {', '.join(missing)}")
    unknown = [c for c in header if c not in REQUIRED + OPTIONAL]
    if unknown:
        raise ConfigError(f"{path}:1: unknown column(s) {', '.join(unknown)}; known: {', '.join(REQUIRED + OPTIONAL)}")
    rows: list[DeviceRow] = []
    seen: dict[str, int] = {}
    for raw in reader:
        line = reader.line_num
        where = f"{path}:{line}"
        values = {(k or "").strip(): (v or "") for k, v in raw.items() if k is not None}
        if None in raw:
            raise ConfigError(f"{where}: more fields than the header has columns")
        if not any(v.strip() for v in values.values()) or values.get("site", "").startswith("#"):
            continue  # blank lines and comments
        row = DeviceRow(
            site=check_id(values.get("site", ""), "site", where),
            room=check_id(values.get("room", ""), "room", where),
            device=check_id(values.get("device", ""), "device", where),
            host=values.get("host", "").strip() or None,
            line=line,
        )
        if row.device in seen:
            raise ConfigError(f"{where}: device {row.device!r} is already on line {seen[row.device]}; "
                              "a device id is its MQTT client id and certificate name, so it must be unique")
        seen[row.device] = line
        rows.append(row)
    if not rows:
        raise ConfigError(f"{path}: no devices")
    return rows
