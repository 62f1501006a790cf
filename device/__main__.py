"""Command line of the classroom device: run, demo, selftest, validate-config, verify-models, switch-release."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from device.errors import AulaError, ConfigError, StorageError

logger = logging.getLogger("device")


def _run_overrides(args: argparse.Namespace) -> dict:
    """Map `run`'s command-line options onto config keys (applied on top of the file)."""
    o: dict = {}
    if args.video:
        o["camera"] = {"type": "video", "path": str(args.video)}
    if args.audio:
        o["microphone"] = {"type": "wav", "path": str(args.audio)}
    for flag, key in (("broker", "mqtt.broker"), ("site", "mqtt.site"), ("room", "mqtt.room"),
                      ("device_id", "mqtt.device_id"), ("state_dir", "state_dir")):
        value = getattr(args, flag)
        if value is not None:
            o[key] = str(value)
    return o


def _replay_options(cfg, loop: bool, fast: bool):
    """Apply --loop and --fast to whichever sources are replays."""
    for name in ("camera", "microphone"):
        src = getattr(cfg, name)
        if src is None or src.type not in ("video", "wav", "images"):
            if fast and src is not None:
                raise ConfigError(f"--fast applies to replay sources only; {name} is {src.type}")
            continue
        update = {"loop": loop} if loop else {}
        if fast:
            update["realtime" if src.type in ("video", "wav") else "fps"] = False if src.type != "images" else None
        setattr(cfg, name, src.model_copy(update=update))
    return cfg


def _open_inputs(cfg) -> None:
    """Open and close the camera and microphone once, so that a missing one is an error instead of a retry loop."""
    from device.audio import build_audio_source
    from device.sources import build_source

    for enabled, config, build in ((cfg.vision.enabled, cfg.camera, build_source),
                                   (cfg.speech.enabled, cfg.microphone, build_audio_source)):
        if enabled and config is not None:
            source = build(config)
            source.open()
            source.close()


def _run_service(args: argparse.Namespace, publisher_factory=None) -> int:
    from device.config import load_config
    from device.service import DeviceService

    overrides = _run_overrides(args)
    cfg = _replay_options(load_config(args.config, overrides), args.loop, args.fast)
    if publisher_factory is None:
        try:
            cfg.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # the offline queue reports it (degraded) and retries; events go out directly
            logger.error("state directory %s cannot be created (%s)", cfg.state_dir, exc)
    else:
        _open_inputs(cfg)  # at a terminal, say what is missing at once; the unattended device retries instead
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    service = DeviceService(cfg, args.config, overrides, publisher_factory=publisher_factory,
                            strict_models=publisher_factory is not None)
    code = service.run(stop)
    if args.summary:
        print(json.dumps({"summary": service.final_health}), file=sys.stderr, flush=True)
    return code


def cmd_run(args: argparse.Namespace) -> int:
    """Run the device: capture, analyse, fuse, and publish events until SIGTERM."""
    return _run_service(args)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the device service on the bundled sample (or --video, --audio) and print each window as a JSON line."""
    from device.stdout_sink import StdoutSink

    return _run_service(args, publisher_factory=StdoutSink)


def cmd_validate_config(args: argparse.Namespace) -> int:
    """Validate a config file; print the errors with file, line and key."""
    from device.config import load_config

    load_config(args.file)
    print(f"{args.file}: OK")
    return 0


def cmd_verify_models(args: argparse.Namespace) -> int:
    """Check every file in the model folder against the manifest's sha256 sums; non-zero on a mismatch."""
    from device.model_store import models_dir, verify_all

    folder = args.dir or models_dir()
    results = verify_all(folder)
    for name, path, problem in results:
        print(f"{'OK  ' if problem is None else 'FAIL'}  {name:28s} {path.name}")
        if problem:
            print(f"      {problem}")
    bad = [path.name for _, path, problem in results if problem]
    print(f"{folder}: {len(results) - len(bad)} of {len(results)} models match the manifest"
          + (f"; mismatched: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


def cmd_selftest(args: argparse.Namespace) -> int:
    """Run the on-device self-check and print a pass/fail table."""
    from device.selftest import run_selftest

    return run_selftest(args.config, frames=args.frames, camera=args.camera, broker_check=not args.no_broker,
                        tls_dir=args.tls_dir)


def cmd_switch_release(args: argparse.Namespace) -> int:
    """Switch ROOT/current to an installed release: sha256 check, switch, self-check, or back on its own."""
    from device.release_switch import SwitchPlan, switch_release

    plan = SwitchPlan(args.root, args.version, venv=args.venv, links=tuple(args.link or ()), config=args.config,
                      new_config=args.new_config, restart_unit=args.restart_unit)
    code, _ = switch_release(plan)
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m device`."""
    from device.common.broker_settings import broker_url_arg

    parser = argparse.ArgumentParser(prog="python -m device", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help=cmd_run.__doc__)
    demo = sub.add_parser("demo", help=cmd_demo.__doc__)
    for p in (run, demo):
        p.add_argument("--config", type=Path, help="device config YAML (default: documented defaults)")
        p.add_argument("--video", type=Path, help="replay this video file as the camera (paced at real time)")
        p.add_argument("--audio", type=Path, help="replay this WAV file as the microphone (paced at real time)")
        p.add_argument("--loop", action="store_true", help="replays start again at the end, until stopped")
        p.add_argument("--fast", action="store_true", help="replays run as fast as possible (benchmarks, tests)")
        p.add_argument("--site", help="site id (topic level)")
        p.add_argument("--room", help="room id (topic level)")
        p.add_argument("--device-id", help="device id (topic level and MQTT client id)")
        p.add_argument("--summary", action="store_true", help="print the final figures as one JSON line on stderr")
    run.add_argument("--broker", type=broker_url_arg, help="mqtt://host:port or mqtts://host:port")
    run.add_argument("--state-dir", type=Path, help="writable folder for the offline queue")
    run.set_defaults(func=cmd_run)
    demo.set_defaults(func=cmd_demo, broker=None, state_dir=None)

    val = sub.add_parser("validate-config", help=cmd_validate_config.__doc__)
    val.add_argument("file", type=Path)
    val.set_defaults(func=cmd_validate_config)

    vm = sub.add_parser("verify-models", help=cmd_verify_models.__doc__)
    vm.add_argument("--dir", type=Path, help="model folder (default: $AULA_MODELS_DIR or models_tflite/)")
    vm.set_defaults(func=cmd_verify_models)

    st = sub.add_parser("selftest", help=cmd_selftest.__doc__)
    st.add_argument("--config", type=Path, help="device config YAML whose camera is tested")
    st.add_argument("--camera", choices=["auto", "picamera2", "opencv", "config"], default="auto",
                    help="camera to test (auto: picamera2 if installed, else OpenCV index 0; config: the config's)")
    st.add_argument("--frames", type=int, default=30, help="frames to grab")
    st.add_argument("--no-broker", action="store_true", help="skip the broker check (a bench without a broker)")
    st.add_argument("--tls-dir", type=Path, help="take ca.crt, device.crt and device.key for the broker check from "
                                                 "this folder (make selftest HOST=.. passes /etc/aula/certs: the "
                                                 "config names the unit's credential, which exists only in the unit)")
    st.set_defaults(func=cmd_selftest)

    sw = sub.add_parser("switch-release", help=cmd_switch_release.__doc__)
    sw.add_argument("root", type=Path, help="the install folder (/opt/aula)")
    sw.add_argument("version", help="a release under ROOT/releases/")
    sw.add_argument("--venv", help="point the release's .venv at ROOT/venvs/VENV first")
    sw.add_argument("--link", action="append", help="a link beside current that points into it (repeatable)")
    sw.add_argument("--config", type=Path, help="the device config the self-check uses")
    sw.add_argument("--new-config", type=Path, help="moved over --config with the switch; put back on a rollback")
    sw.add_argument("--restart-unit", help="systemd unit to restart after a rollback")
    sw.set_defaults(func=cmd_switch_release)

    args = parser.parse_args(argv)
    default_level = logging.INFO if args.command == "run" else logging.WARNING
    logging.basicConfig(level=logging.DEBUG if args.verbose else default_level,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except StorageError as exc:  # may clear by itself: not status 2, which systemd does not restart
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except AulaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
