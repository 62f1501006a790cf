"""Build the bundled sample recording: public-domain heads composited on a real photograph, drifting.

Run once by a developer; the outputs are committed in device/samples/ (see device/samples/README.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.classroom import FIXTURES, make_classroom_frame  # noqa: E402

OUT = ROOT / "device" / "samples"
SIZE = (640, 480)
FPS = 15
SECONDS = 12


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    # A scene 25% larger than the frame; a slowly moving crop window makes the heads drift and scale.
    big_w, big_h = int(SIZE[0] * 1.25), int(SIZE[1] * 1.25)
    scene, _ = make_classroom_frame(5, sizes=(70, 110), seed=11, size=(big_w, big_h), bg="rocket.jpg",
                                    head_margin=0.6)
    writer = cv2.VideoWriter(str(OUT / "classroom_sample.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
    if not writer.isOpened():
        raise SystemExit("OpenCV cannot write mp4v video here")
    n = FPS * SECONDS
    for i in range(n):
        phase = 2 * np.pi * i / n
        zoom = 1.0 + 0.08 * np.sin(phase)
        cw, ch = int(SIZE[0] * 1.15 / zoom), int(SIZE[1] * 1.15 / zoom)
        cx = (big_w - cw) / 2 + 0.35 * (big_w - cw) * np.sin(phase)
        cy = (big_h - ch) / 2 + 0.35 * (big_h - ch) * np.cos(phase)
        crop = scene[int(cy):int(cy) + ch, int(cx):int(cx) + cw]
        frame = cv2.resize(crop, SIZE, interpolation=cv2.INTER_AREA)
        gain = 1.0 + 0.06 * np.sin(3 * phase)  # lighting flicker a camera would see
        writer.write(np.clip(frame.astype(np.float32) * gain, 0, 255).astype(np.uint8))
    writer.release()
    face = cv2.imread(str(FIXTURES / "grace_hopper.jpg"))
    cv2.imwrite(str(OUT / "selftest_face.jpg"), face, [cv2.IMWRITE_JPEG_QUALITY, 88])
    print(f"wrote {OUT / 'classroom_sample.mp4'} ({(OUT / 'classroom_sample.mp4').stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
