"""python -m fleet: certificates and the broker's configuration for a fleet (the Makefile's certs, revoke-cert and
broker-setup targets call these)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from device.common.errors import AulaError


def _accounts(args: argparse.Namespace):
    from fleet.broker_config import check_accounts, read_feeds
    from fleet.inventory import read_inventory

    devices = read_inventory(args.inventory)
    feeds = read_feeds(args.feeds)
    check_accounts(devices, args.server, feeds)
    return devices, feeds


def cmd_certs(args: argparse.Namespace) -> int:
    """Make the CA, the broker's certificate and one client certificate per device, server and feed (idempotent)."""
    from fleet.certs import CertificateAuthority

    devices, feeds = _accounts(args)
    hosts = [h.strip() for h in ",".join(args.broker_host).split(",") if h.strip()]
    ca = CertificateAuthority(args.dir)
    ca.broker(hosts)
    for name in args.server:
        ca.client(name, "server")
    for d in devices:
        ca.client(d.device, "device")
    for f in feeds:
        ca.client(f.name, "feed")
    ca.write_crl()
    for line in ca.report.lines():
        print(line)
    print(f"certificates in {args.dir} (keep this folder private and backed up; it is never committed)")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    """Revoke a client's certificate (a lost or stolen device); the broker refuses it once it has the new CRL."""
    from fleet.certs import CertificateAuthority

    ca = CertificateAuthority(args.dir)
    serial = ca.revoke(args.name)
    print(f"revoked {args.name} (serial {serial:x}); run `make broker-setup` to give the broker the new crl.pem")
    return 0


def cmd_broker_config(args: argparse.Namespace) -> int:
    """Write mosquitto.conf, the ACL and the TLS files for the broker (idempotent; says what changed)."""
    from fleet.broker_config import write_broker_config

    devices, feeds = _accounts(args)
    changed = write_broker_config(args.out, args.certs, devices, args.server, feeds, port=args.port, bind=args.bind,
                                  state_dir=args.state_dir, log_file=args.log_file, user=args.user)
    print(f"{args.out}: " + (f"changed {', '.join(changed)}" if changed else "unchanged"))
    if args.systemd:
        from fleet.broker_config import install_systemd_dropin

        for line in install_systemd_dropin(args.out, restart=bool(changed)):
            print(line)
    print(f"{len(devices)} device(s), {len(args.server)} server account(s), {len(feeds)} feed(s) in the ACL")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def accounts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--inventory", type=Path, required=True, help="fleet CSV: site,room,device[,host]")
        p.add_argument("--feeds", type=Path, help="teacher feeds CSV: feed,site,room (one row per room)")
        p.add_argument("--server", action="append", default=None,
                       help="server account name (repeat for several instances; default aula-server)")

    c = sub.add_parser("certs", help=cmd_certs.__doc__)
    c.add_argument("--dir", type=Path, required=True, help="the certificates' folder (created, mode 0700)")
    c.add_argument("--broker-host", action="append", required=True,
                   help="a name or address the devices use for the broker (comma-separated or repeated)")
    accounts(c)
    c.set_defaults(func=cmd_certs)

    r = sub.add_parser("revoke", help=cmd_revoke.__doc__)
    r.add_argument("--dir", type=Path, required=True)
    r.add_argument("name", help="the client's name: a device id, server or feed")
    r.set_defaults(func=cmd_revoke)

    b = sub.add_parser("broker-config", help=cmd_broker_config.__doc__)
    b.add_argument("--certs", type=Path, required=True, help="the folder `certs` made")
    b.add_argument("--out", type=Path, required=True, help="mosquitto's folder for it")
    b.add_argument("--port", type=int, default=8883)
    b.add_argument("--bind", default="0.0.0.0", help="address of the TLS listener")
    b.add_argument("--state-dir", type=Path, default=Path("/var/lib/mosquitto"), help="the broker's persistence")
    b.add_argument("--log-file", type=Path, help="log to this file instead of syslog")
    b.add_argument("--user", default="mosquitto", help="the user the broker runs as")
    b.add_argument("--systemd", action="store_true",
                   help="as root: point mosquitto.service at this configuration (a drop-in) and restart it on a change")
    accounts(b)
    b.set_defaults(func=cmd_broker_config)

    args = parser.parse_args(argv)
    if getattr(args, "server", None) is None and args.command != "revoke":
        args.server = ["aula-server"]
    try:
        return args.func(args)
    except AulaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
