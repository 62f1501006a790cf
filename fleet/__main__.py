"""python -m fleet: certificates and the broker's configuration for a fleet, flashing devices and installing the
server over ssh (the Makefile's certs, revoke-cert, broker-setup, flash, flash-all, rollout, selftest and
server-install targets call these)."""

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
    from fleet.broker_config import MONITORS
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
    for name in MONITORS:
        ca.client(name, "monitor")
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


def _flash_options(args: argparse.Namespace):
    from fleet.flash import FlashOptions

    return FlashOptions(certs=args.certs, broker=args.broker, dest_root=args.dest_root, identity=args.identity,
                        known_hosts=args.known_hosts, connect_timeout=args.connect_timeout, inputs=args.inputs,
                        base_config=args.base_config, wheelhouse_cache=args.wheelhouse_cache,
                        online_timeout=args.online_timeout, watch_as=args.watch_as, keep_releases=args.keep_releases,
                        reserve_mib=args.reserve_mib)


def cmd_flash(args: argparse.Namespace) -> int:
    """Install a release on one device over ssh, configure, self-check and start it; roll back if it fails."""
    from fleet.errors import FlashError
    from fleet.flash import flash_device, spec_from_args
    from fleet.release import build_release

    spec = spec_from_args(args.site, args.room, args.device, args.host, args.inventory)
    opts = _flash_options(args)
    release = build_release(args.source)
    try:
        flash_device(spec, release, opts, say=lambda line: print(line, flush=True))
    except FlashError as exc:
        print(f"error: {spec.device}: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


def cmd_flash_all(args: argparse.Namespace) -> int:
    """Flash every device of the inventory in parallel; a table of which succeeded and why the others failed."""
    from fleet.flash import flash_fleet, summary_table
    from fleet.release import build_release

    opts = _flash_options(args)
    release = build_release(args.source)
    print(f"release {release.version}: {len(release.files)} files; {args.jobs} device(s) at a time", flush=True)
    results = flash_fleet(args.inventory, release, opts, jobs=args.jobs, out=lambda line: print(line, flush=True))
    print(flush=True)
    for line in summary_table(results):
        print(line, flush=True)
    return 0 if all(r.ok for r in results) else 1


def cmd_rollout(args: argparse.Namespace) -> int:
    """Flash a release to a chosen group of devices; each verifies it first and goes back if its self-check fails."""
    from fleet.flash import flash_fleet, summary_table
    from fleet.inventory import read_inventory
    from fleet.release import build_release
    from fleet.rollout import export_ref, select_devices

    rows = read_inventory(args.inventory)
    split = lambda text: [x.strip() for x in (text or "").split(",") if x.strip()]  # noqa: E731
    group = select_devices(rows, split(args.devices), split(args.rooms), args.percent)
    source = export_ref(args.version) if args.version else args.source
    release = build_release(source)
    others = len(rows) - len(group)
    print(f"rollout of release {release.version} to {len(group)} of {len(rows)} device(s) "
          f"({', '.join(r.device for r in group)}); {others} not contacted", flush=True)
    results = flash_fleet(args.inventory, release, _flash_options(args), jobs=args.jobs,
                          out=lambda line: print(line, flush=True), rows=group)
    print(flush=True)
    for line in summary_table(results):
        print(line, flush=True)
    return 0 if all(r.ok for r in results) else 1


def cmd_selftest(args: argparse.Namespace) -> int:
    """The device's self-check over ssh (models, camera, microphone, broker with its key, clock): a pass/fail table."""
    from fleet.errors import FlashError
    from fleet.remote_selftest import remote_selftest

    try:
        return remote_selftest(args.host, _flash_options(args), say=lambda line: print(line, flush=True))
    except FlashError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2


def cmd_server_install(args: argparse.Namespace) -> int:
    """Install the aggregation server on a host over ssh: release, venv, config, certificates, user, state directory
    and the hardened unit; start it and wait for /healthz. A second run with the same release changes nothing."""
    from fleet.errors import FlashError
    from fleet.flash import FlashOptions
    from fleet.release import SERVER, build_release
    from fleet.server_install import ServerOptions, install_server
    from fleet.ssh_remote import SshTarget

    host = SshTarget.parse(args.host)
    opts = FlashOptions(certs=args.certs, broker=args.broker, dest_root=args.dest_root, identity=args.identity,
                        known_hosts=args.known_hosts, connect_timeout=args.connect_timeout,
                        wheelhouse_cache=args.wheelhouse_cache, keep_releases=args.keep_releases,
                        reserve_mib=args.reserve_mib)
    server = ServerOptions(broker=args.broker, config=args.config, account=args.account,
                           health_timeout=args.health_timeout)
    release = build_release(args.source, SERVER)
    try:
        install_server(host, release, opts, server, say=lambda line: print(line, flush=True))
    except FlashError as exc:
        print(f"error: {host.host}: {exc}", file=sys.stderr, flush=True)
        return 1
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

    def flashing(p: argparse.ArgumentParser, device: bool = True) -> None:
        """The ssh, release and wheelhouse options; with device, also the device's inputs, config and watcher."""
        from fleet.release import DEFAULT_WHEELHOUSE_CACHE, ROOT

        p.add_argument("--certs", type=Path, default=Path("certs"), help="the folder `certs` made (default certs)")
        p.add_argument("--broker", help="the broker as the devices reach it: mqtts://host:8883")
        p.add_argument("--dest-root", default="/",
                       help="prefix of every installed path on the device (default /; a scratch folder in tests: "
                            "then the unit is enabled with systemctl --root and not started); {device} is the id")
        p.add_argument("--identity", type=Path, help="ssh private key (default: ssh's own choice)")
        p.add_argument("--known-hosts", type=Path,
                       help="known_hosts file that must already hold the device's key (default: ~/.ssh/known_hosts, "
                            "a new device's key accepted on first contact)")
        p.add_argument("--connect-timeout", type=int, default=10, help="seconds for ssh to connect (default 10)")
        if device:
            p.add_argument("--inputs", choices=["hardware", "sample"],
                           help="camera and microphone: hardware (picamera2, PyAudio) or sample (the bundled "
                                "recording); default: the base config's, else hardware")
            p.add_argument("--base-config", type=Path,
                           help="a device.yaml whose other keys the rendered config keeps (identity, broker, TLS are "
                                "set)")
        p.add_argument("--source", type=Path, default=ROOT, help="the source tree to ship (default: this checkout)")
        p.add_argument("--wheelhouse-cache", type=Path, default=DEFAULT_WHEELHOUSE_CACHE,
                       help=f"where wheelhouses are kept between flashes (default {DEFAULT_WHEELHOUSE_CACHE})")
        if device:
            p.add_argument("--online-timeout", type=float, default=120.0,
                           help="seconds to wait for the device's status online and its first health (default 120)")
            p.add_argument("--watch-as", help="the certificate account that watches the broker (default aula-flash "
                                              "if the certificates' folder has it, else aula-server)")
        p.add_argument("--keep-releases", type=int, default=3, help="releases kept on the device (default 3)")
        p.add_argument("--reserve-mib", type=int, default=64, help="MiB left free on the device (default 64)")

    fl = sub.add_parser("flash", help=cmd_flash.__doc__)
    fl.add_argument("--host", help="user@host or ssh://user@host:port (default: the inventory row's)")
    fl.add_argument("--inventory", type=Path, help="fleet CSV to take the device's site, room and host from")
    fl.add_argument("--site")
    fl.add_argument("--room")
    fl.add_argument("--device", help="device id (MQTT client id and certificate name)")
    flashing(fl)
    fl.set_defaults(func=cmd_flash)

    fa = sub.add_parser("flash-all", help=cmd_flash_all.__doc__)
    fa.add_argument("--inventory", type=Path, required=True, help="fleet CSV: site,room,device,host")
    fa.add_argument("--jobs", type=int, default=4, help="devices flashed at a time (default 4)")
    flashing(fa)
    fa.set_defaults(func=cmd_flash_all)

    ro = sub.add_parser("rollout", help=cmd_rollout.__doc__)
    ro.add_argument("--inventory", type=Path, required=True, help="fleet CSV: site,room,device,host")
    ro.add_argument("--version", help="a git tag or commit to roll out (default: the source tree as it is)")
    ro.add_argument("--devices", help="comma-separated device ids")
    ro.add_argument("--rooms", help="comma-separated rooms (room or site/room)")
    ro.add_argument("--percent", type=float, help="this share of the inventory, chosen by a hash of the device id")
    ro.add_argument("--jobs", type=int, default=4, help="devices flashed at a time (default 4)")
    flashing(ro)
    ro.set_defaults(func=cmd_rollout)

    st = sub.add_parser("selftest", help=cmd_selftest.__doc__)
    st.add_argument("--host", required=True, help="user@host or ssh://user@host:port")
    flashing(st)
    st.set_defaults(func=cmd_selftest)

    si = sub.add_parser("server-install", help=cmd_server_install.__doc__)
    si.add_argument("--host", required=True, help="user@host or ssh://user@host:port (root, or passwordless sudo)")
    si.add_argument("--config", type=Path, help="a server.yaml to install (BROKER and the TLS files are set in it); "
                                                "default: a minimal one for --broker, SQLite in the state directory")
    si.add_argument("--account", default="aula-server",
                    help="the server's certificate in CERTS/clients/ (default aula-server)")
    si.add_argument("--health-timeout", type=float, default=60.0,
                    help="seconds to wait for /healthz after the start (default 60)")
    flashing(si, device=False)
    si.set_defaults(func=cmd_server_install)

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
