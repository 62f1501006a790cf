"""Synthetic classroom frames (real heads pasted on a real photograph) with ground-truth face boxes."""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

logger = logging.getLogger(__name__)

FIXTURES = Path(__file__).resolve().parent / "fixtures"

# Face boxes (x, y, w, h) in each source photograph at its native size, measured with
# FaceDetector.load("short", tile=None) on the fixture file (see PROVENANCE.md). BlazeFace boxes are
# square and scale with the face, so a head scaled by k has the face box scaled by k.
HEAD_SOURCES: dict[str, tuple[int, int, int, int]] = {
    "astronaut.jpg": (178, 81, 94, 94),
    "grace_hopper.jpg": (169, 145, 195, 195),
}
# How far the cut-out head reaches beyond the face box, in face widths: hair above, chin and neck below.
HEAD_MARGIN = {"left": 0.55, "right": 0.55, "top": 0.75, "bottom": 0.9}

Box = tuple[int, int, int, int]


@lru_cache(maxsize=8)
def _image(name: str) -> np.ndarray:
    img = cv2.imread(str(FIXTURES / name), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(FIXTURES / name)
    return img


def _head(name: str, margin: float = 1.0) -> tuple[np.ndarray, Box]:
    """Return the head cut-out (HEAD_MARGIN x `margin`) of a source photograph and its face box."""
    img = _image(name)
    x, y, w, h = HEAD_SOURCES[name]
    m = {k: v * margin for k, v in HEAD_MARGIN.items()}
    x0 = max(0, round(x - m["left"] * w))
    y0 = max(0, round(y - m["top"] * w))
    x1 = min(img.shape[1], round(x + w + m["right"] * w))
    y1 = min(img.shape[0], round(y + h + m["bottom"] * w))
    return img[y0:y1, x0:x1], (x - x0, y - y0, w, h)


def background(name: str = "coffee.jpg", size: tuple[int, int] = (1280, 720)) -> np.ndarray:
    """Return a fixture photograph scaled to cover `size` (w, h) and centre-cropped to it."""
    img = _image(name)
    w, h = size
    k = max(w / img.shape[1], h / img.shape[0])
    big = cv2.resize(img, (max(w, round(img.shape[1] * k)), max(h, round(img.shape[0] * k))))
    oy, ox = (big.shape[0] - h) // 2, (big.shape[1] - w) // 2
    return np.ascontiguousarray(big[oy : oy + h, ox : ox + w])


def _feather_mask(h: int, w: int) -> np.ndarray:
    # An elliptical, blurred alpha so pasted heads have no hard rectangular edges for a detector to key on.
    mask = np.zeros((h, w), np.float32)
    cv2.ellipse(mask, (w // 2, h // 2), (max(1, w // 2 - 1), max(1, h // 2 - 1)), 0, 0, 360, 1.0, -1)
    k = max(3, (min(h, w) // 8) | 1)
    return cv2.GaussianBlur(mask, (k, k), 0)[..., None]


def make_classroom_frame(
    n_faces: int,
    sizes: tuple[int, int] = (25, 80),
    seed: int = 0,
    size: tuple[int, int] = (1280, 720),
    bg: str = "coffee.jpg",
    head_margin: float = 1.0,
) -> tuple[np.ndarray, list[Box]]:
    """Return a BGR frame of `size` (w, h) with `n_faces` non-overlapping heads and their face boxes.

    Face widths are uniform in `sizes` (pixels); each head is randomly flipped and brightness-jittered.
    head_margin < 1 cuts heads tighter (less hair and neck) so a few large faces fit a small frame.
    """
    rng = np.random.default_rng(seed)
    frame = background(bg, size).astype(np.float32)
    W, H = size
    occupied = np.zeros((H, W), np.uint8)  # pixels already covered by a head
    faces: list[Box] = []
    names = sorted(HEAD_SOURCES)
    targets = rng.uniform(*sizes, size=n_faces)
    # Largest heads first: random placement of the big ones fails far less often in an empty frame.
    for i in np.argsort(-targets, kind="stable"):
        head, (fx, fy, fw, fh) = _head(names[i % len(names)], head_margin)
        k = targets[i] / fw
        hw, hh = max(1, round(head.shape[1] * k)), max(1, round(head.shape[0] * k))
        patch = cv2.resize(head, (hw, hh), interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR)
        face = [fx * k, fy * k, fw * k, fh * k]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
            face[0] = hw - face[0] - face[2]
        gain, bias = rng.uniform(0.7, 1.25), rng.uniform(-20, 20)
        patch = np.clip(patch.astype(np.float32) * gain + bias, 0, 255)
        # Every free top-left corner at once: a window is free when its sum in the occupancy integral is 0.
        ii = cv2.integral(occupied)
        free = ii[hh:, hw:] - ii[:-hh, hw:] - ii[hh:, :-hw] + ii[:-hh, :-hw]
        spots = np.argwhere(free == 0)
        if len(spots) == 0:
            raise ValueError(f"cannot place {n_faces} heads of {sizes} px faces without overlap in {size}")
        y, x = (int(v) for v in spots[rng.integers(len(spots))])
        occupied[y : y + hh, x : x + hw] = 1
        alpha = _feather_mask(hh, hw)
        roi = frame[y : y + hh, x : x + hw]
        roi[:] = roi * (1 - alpha) + patch * alpha
        faces.append((round(x + face[0]), round(y + face[1]), round(face[2]), round(face[3])))
    return np.clip(frame, 0, 255).astype(np.uint8), faces


def _iou(a, b) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def match(pred_boxes, gt_boxes, iou: float = 0.3) -> list[bool]:
    """Return, per ground-truth box, whether a distinct prediction overlaps it by IoU >= `iou` (greedy)."""
    pairs = sorted(
        ((_iou(p[:4], g), pi, gi) for pi, p in enumerate(pred_boxes) for gi, g in enumerate(gt_boxes)),
        reverse=True,
    )
    used_p, hit = set(), [False] * len(gt_boxes)
    for v, pi, gi in pairs:
        if v < iou:
            break
        if pi not in used_p and not hit[gi]:
            used_p.add(pi)
            hit[gi] = True
    return hit


def recall(pred_boxes, gt_boxes, iou: float = 0.3, min_size: int = 40) -> float:
    """Return the share of ground-truth faces at least `min_size` px wide that a prediction finds."""
    hit = match(pred_boxes, gt_boxes, iou)
    wanted = [h for h, g in zip(hit, gt_boxes, strict=True) if g[2] >= min_size]
    return sum(wanted) / len(wanted) if wanted else 1.0


def _benchmark() -> None:
    """Print recall by face-size bucket and per-frame detection time for the default detector."""
    import argparse
    import sys
    import time

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from device.models.face_detector import FaceDetector

    ap = argparse.ArgumentParser(description=_benchmark.__doc__)
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--variant", default="auto")
    ap.add_argument("--tile", default="auto", help="'auto', 'none' or a tile side in px")
    ap.add_argument("--overlap", type=int, default=None)
    ap.add_argument("--full-frame", action="store_true")
    ap.add_argument("--threshold", type=float, default=None)
    args = ap.parse_args()
    tile = {"auto": "auto", "none": None}[args.tile] if args.tile in ("auto", "none") else int(args.tile)
    det = FaceDetector.load(
        args.variant, threads=1, tile=tile, overlap=args.overlap, full_frame=args.full_frame,
        score_threshold=args.threshold,
    )
    backgrounds = ["coffee.jpg", "rocket.jpg", "brick.jpg"]
    scenes = {
        "1280x720, 20 faces 25-80 px": lambda s: make_classroom_frame(
            20, (25, 80), s, (1280, 720), backgrounds[s % 3]
        ),
        "640x480, 4 faces 80-120 px": lambda s: make_classroom_frame(
            4, (80, 120), s, (640, 480), backgrounds[s % 3], head_margin=0.4
        ),
    }
    buckets = [(25, 40), (40, 60), (60, 81), (81, 121)]
    for title, make in scenes.items():
        hits = {b: [0, 0] for b in buckets}
        times, fps = [], 0
        for seed in range(args.frames):
            frame, gt = make(seed)
            pred = det.detect(frame)  # the first call per frame size also builds the tile plan
            for _ in range(3):
                t = time.perf_counter()
                det.detect(frame)
                times.append(time.perf_counter() - t)
            found = match(pred, gt)
            fps += len(pred) - sum(found)
            for ok, g in zip(found, gt, strict=True):
                for lo, hi in buckets:
                    if lo <= g[2] < hi:
                        hits[(lo, hi)][0] += ok
                        hits[(lo, hi)][1] += 1
        h, w = frame.shape[:2]
        rec = ", ".join(f"{lo}-{hi - 1} px {k / n:.2f} ({n})" for (lo, hi), (k, n) in hits.items() if n)
        print(f"{title}: {det.describe(w, h)}")
        print(f"  recall: {rec}; false positives {fps} in {args.frames} frames")
        print(f"  detect: median {np.median(times) * 1e3:.1f} ms, min {min(times) * 1e3:.1f} ms (threads=1)")


if __name__ == "__main__":
    _benchmark()
