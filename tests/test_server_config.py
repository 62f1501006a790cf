"""Server config: defaults, strictness with file:line:key errors, CLI overrides, create-admin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from device.errors import ConfigError
from server.__main__ import build_parser, load
from server.config import ServerConfig, load_server_config, parse_database_url, parse_listen
from server.db import Database
from server.storage import Storage

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_need_no_file():
    config = load_server_config(None)
    assert config.mqtt.broker == "mqtt://localhost:1883"
    assert config.mqtt.protocol == "5"
    assert config.mqtt.persistent_session and config.mqtt.ack_after_commit
    assert config.database.kind == "sqlite"
    assert config.http.host_port == ("127.0.0.1", 8080)
    assert config.summaries.interval_s == 2.0


def test_every_field_is_documented():
    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                walk(annotation)

    walk(ServerConfig)


def test_unknown_key_names_file_line_and_key(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text("mqtt:\n  broker: mqtt://10.0.0.5:1883\n  clientid: x\n")
    with pytest.raises(ConfigError) as err:
        load_server_config(path)
    assert f"{path}:3: mqtt.clientid: unknown key" in str(err.value)


def test_bad_values_are_rejected(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text("database:\n  url: mysql://db/aula\nhttp:\n  listen: nowhere\n")
    with pytest.raises(ConfigError) as err:
        load_server_config(path)
    text = str(err.value)
    assert f"{path}:2: database.url" in text and f"{path}:4: http.listen" in text


def test_protocol_and_shared_group(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text("mqtt:\n  protocol: 5\n  shared_group: aula\n")
    assert load_server_config(path).mqtt.protocol == "5"
    path.write_text("mqtt:\n  shared_group: a/b\n")
    with pytest.raises(ConfigError, match="shared_group"):
        load_server_config(path)


@pytest.mark.parametrize(
    ("url", "kind", "target"),
    [
        ("sqlite:///aula.db", "sqlite", "aula.db"),
        ("sqlite:////var/lib/aula/server.sqlite3", "sqlite", "/var/lib/aula/server.sqlite3"),
        ("postgresql://aula@db:5432/aula", "postgresql", "postgresql://aula@db:5432/aula"),
    ],
)
def test_database_urls(url, kind, target):
    assert parse_database_url(url) == (kind, target)


@pytest.mark.parametrize("url", ["", "mysql://x/y", "postgresql://aula:secret@db/aula", "sqlite:///"])
def test_bad_database_urls(url):
    with pytest.raises(ValueError):
        parse_database_url(url)


def test_listen_parsing():
    assert parse_listen("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_listen("[::1]:8080") == ("::1", 8080)
    with pytest.raises(ValueError):
        parse_listen("8080")


def test_cli_overrides_before_or_after_the_subcommand(tmp_path):
    args = build_parser().parse_args(
        ["--broker", "mqtt://broker:1884", "run", "--database", f"sqlite:///{tmp_path}/x.db", "--http", "0.0.0.0:9000"]
    )
    config = load(args)
    assert config.mqtt.broker == "mqtt://broker:1884"
    assert config.database.url == f"sqlite:///{tmp_path}/x.db"
    assert config.http.listen == "0.0.0.0:9000"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--broker", "http://x"])


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_validate_config_command(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("retention:\n  raw_days: 7\n")
    assert _cli("validate-config", "--config", str(good)).returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("retention:\n  raw_dayz: 7\n")
    result = _cli("validate-config", "--config", str(bad))
    assert result.returncode == 2
    assert f"{bad}:2: retention.raw_dayz: unknown key" in result.stderr


def test_create_admin_from_environment(tmp_path):
    db_url = f"sqlite:///{tmp_path}/admin.db"
    env = {"AULA_ADMIN_PW": "correct horse battery"}
    first = _cli("create-admin", "root", "--password-env", "AULA_ADMIN_PW", "--database", db_url, env=env)
    assert first.returncode == 0, first.stderr
    again = _cli("create-admin", "root", "--password-env", "AULA_ADMIN_PW", "--database", db_url, env=env)
    assert again.returncode == 1 and "exists" in again.stderr
    short = _cli("create-admin", "other", "--password-env", "PW", "--database", db_url, env={"PW": "short"})
    assert short.returncode == 2 and "at least" in short.stderr
    db = Database(load_server_config(None, {"database.url": db_url}).database)
    try:
        user = Storage(db).users.authenticate("root", "correct horse battery")
        assert user is not None and user["role"] == "admin"
        assert Storage(db).users.authenticate("root", "wrong password") is None
    finally:
        db.close()
