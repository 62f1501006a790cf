"""Command line of the classroom device: demo, selftest, validate-config."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from device.errors import AulaError, ConfigError

logger = logging.getLogger("device")


def _wall_clock(t_monotonic: float) -> float:
    return time.time() - (time.monotonic() - t_monotonic)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the vision path on the bundled sample (or --video) and print one JSON line per window."""
    from device.analysis_rate import AnalysisRate
    from device.config import load_config
    from device.face_loop import run_face_windows
    from device.sources import build_source
    from device.vision import VisionStage
    from device.windows import FaceWindowPooler

    cfg = load_config(args.config, {"camera": {"type": "video", "path": str(args.video)}} if args.video else None)
    if args.fast:
        if cfg.camera.type not in ("video", "images"):
            raise ConfigError("--fast applies to replay sources (video or images) only")
        cfg.camera = cfg.camera.model_copy(update={"realtime": False} if cfg.camera.type == "video" else {"fps": None})
    stage = VisionStage.load(cfg.vision.detector, cfg.vision.emotion_model, cfg.vision.runtime, cfg.vision.threads)
    pooler = FaceWindowPooler(cfg.windows.seconds, cfg.windows.min_faces)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def emit(window) -> None:
        record = window.to_dict()
        record["window_start"] = round(_wall_clock(window.start), 3)
        record["window_end"] = round(_wall_clock(window.end), 3)
        print(json.dumps(record), flush=True)

    rate = AnalysisRate(cfg.vision.analysis_fps, cfg.vision.min_analysis_fps, cfg.vision.max_duty)
    stats = run_face_windows(build_source(cfg.camera), stage, pooler, emit, rate, stop)
    print(json.dumps({"summary": vars(stats)}), file=sys.stderr, flush=True)
    return 0


def cmd_validate_config(args: argparse.Namespace) -> int:
    """Validate a config file; print the errors with file, line and key."""
    from device.config import load_config

    load_config(args.file)
    print(f"{args.file}: OK")
    return 0


def cmd_selftest(args: argparse.Namespace) -> int:
    """Run the on-device self-check and print a pass/fail table."""
    from device.selftest import run_selftest

    return run_selftest(args.config, frames=args.frames, camera=args.camera)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m device`."""
    parser = argparse.ArgumentParser(prog="python -m device", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help=cmd_demo.__doc__)
    demo.add_argument("--config", type=Path, help="device config YAML (default: documented defaults)")
    demo.add_argument("--video", type=Path, help="replay this video instead of the bundled sample")
    demo.add_argument("--fast", action="store_true", help="replay as fast as possible instead of real time")
    demo.set_defaults(func=cmd_demo)

    val = sub.add_parser("validate-config", help=cmd_validate_config.__doc__)
    val.add_argument("file", type=Path)
    val.set_defaults(func=cmd_validate_config)

    st = sub.add_parser("selftest", help=cmd_selftest.__doc__)
    st.add_argument("--config", type=Path, help="device config YAML whose camera is tested")
    st.add_argument("--camera", choices=["auto", "picamera2", "opencv", "config"], default="auto",
                    help="camera to test (auto: picamera2 if installed, else OpenCV index 0; config: the config's)")
    st.add_argument("--frames", type=int, default=30, help="frames to grab")
    st.set_defaults(func=cmd_selftest)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except AulaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
