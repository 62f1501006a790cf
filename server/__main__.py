"""Command line: `python -m server` runs the server; create-admin, validate-config, replay-quarantine."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys

from device.common.broker_settings import broker_url_arg
from device.common.errors import ConfigError
from server.config import ServerConfig, database_url_arg, listen_arg, load_server_config
from server.db import DatabaseError

logger = logging.getLogger("server")


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    # Subcommands repeat the options with SUPPRESS defaults, so `--config` works before or after the subcommand.
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--config", default=default, help="YAML config file (documented defaults without one)")
    parser.add_argument("--broker", type=broker_url_arg, default=default, help="override mqtt.broker")
    parser.add_argument("--database", type=database_url_arg, default=default, help="override database.url")
    parser.add_argument("--http", type=listen_arg, default=default, help="override http.listen (HOST:PORT)")
    parser.add_argument("-v", "--verbose", action="store_true", default=default, help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m server", description="Aula aggregation server")
    _common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the server (the default)")
    _common(run, suppress=True)
    admin = sub.add_parser("create-admin", help="create an administrator (the first one, typically)")
    admin.add_argument("username")
    admin.add_argument("--password-env", help="read the password from this environment variable (else prompt)")
    _common(admin, suppress=True)
    check = sub.add_parser("validate-config", help="check the config file and exit")
    _common(check, suppress=True)
    replay = sub.add_parser(
        "replay-quarantine", help="after an upgrade: store the quarantined events this release reads, keep the rest"
    )
    _common(replay, suppress=True)
    return parser


def load(args: argparse.Namespace) -> ServerConfig:
    overrides = {}
    if args.broker:
        overrides["mqtt.broker"] = args.broker
    if args.database:
        overrides["database.url"] = args.database
    if args.http:
        overrides["http.listen"] = args.http
    return load_server_config(args.config, overrides)


def _password(args: argparse.Namespace) -> str:
    if args.password_env:
        value = os.environ.get(args.password_env)
        if not value:
            raise ConfigError(f"--password-env names ${args.password_env}, but it is not set")
        return value
    first = getpass.getpass(f"Password for {args.username}: ")
    if first != getpass.getpass("Repeat the password: "):
        raise ConfigError("the passwords differ")
    return first


def create_admin(config: ServerConfig, args: argparse.Namespace) -> int:
    from server.db import Database
    from server.storage import Storage
    from server.storage.base import Conflict

    password = _password(args)
    db = Database(config.database)
    try:
        db.migrate()
        Storage(db).users.create(args.username, password, "admin")
    except Conflict as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except DatabaseError:
        raise
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        db.close()
    print(f"created admin {args.username} in {db.description}")
    return 0


def replay_quarantine(config: ServerConfig) -> int:
    from server.db import Database
    from server.quarantine import replay_quarantine as replay
    from server.storage import Storage

    db = Database(config.database)
    try:
        db.migrate()
        counts = replay(Storage(db), config)
    finally:
        db.close()
    print(f"replayed the quarantine of {db.description}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load(args)
    except ConfigError as exc:
        print(f"config error:\n{exc}", file=sys.stderr)
        return 2
    level = logging.DEBUG if args.verbose else getattr(logging, config.log_level.upper())
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "validate-config":
        print(f"{args.config or '<defaults>'}: OK")
        return 0
    try:
        if args.command == "create-admin":
            return create_admin(config, args)
        if args.command == "replay-quarantine":
            return replay_quarantine(config)
        from server.service import AulaServer

        AulaServer(config).serve()
        return 0
    except (ConfigError, DatabaseError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
