"""Square grayscale face crops in the style of FER2013 for the emotion classifier."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import cv2
import numpy as np

logger = logging.getLogger(__name__)

# BlazeFace boxes are square and tight: roughly brows-to-chin and cheek-to-cheek. FER2013 faces (found
# by OpenCV's Viola-Jones detector, then cropped to 48x48) show a little more: the forehead up to about
# the hairline and the cheeks out to the ears, chin near the bottom edge. Growing the box by 12% of its
# side on every side (1.24x) gives that framing on the fixture photographs (chosen by eye; 0 cuts the
# chin and forehead, 0.2+ adds hair and background the classifier never saw in training).
DEFAULT_MARGIN = 0.12
# FER2013 faces sit slightly high in the crop (more forehead than neck); shift the square up by this
# fraction of the box side. BlazeFace's box centre is near the nose tip.
DEFAULT_SHIFT_UP = 0.05


def square_box(
    box: Sequence[float], margin: float = DEFAULT_MARGIN, shift_up: float = DEFAULT_SHIFT_UP
) -> tuple[int, int, int]:
    """Return (x0, y0, side) of the square crop for a face box (x, y, w, h[, score]) in frame pixels."""
    x, y, w, h = (float(v) for v in box[:4])
    side = max(w, h) * (1.0 + 2.0 * margin)
    cx, cy = x + w / 2.0, y + h / 2.0 - shift_up * max(w, h)
    s = max(1, round(side))
    return round(cx - s / 2.0), round(cy - s / 2.0), s


def crop_faces(
    frame_bgr: np.ndarray,
    boxes: Iterable[Sequence[float]],
    size: int = 48,
    margin: float = DEFAULT_MARGIN,
    shift_up: float = DEFAULT_SHIFT_UP,
    border: str = "replicate",
) -> list[np.ndarray]:
    """Return one size x size uint8 grayscale crop per box (x, y, w, h[, score]).

    The box is squared and grown by `margin` of its side on each side; where the square leaves the frame
    it is padded with `border`: "replicate" (edge pixels, closest to what the classifier saw) or "constant"
    (black).
    """
    if border not in ("replicate", "constant"):
        raise ValueError(f"border must be 'replicate' or 'constant', not {border!r}")
    gray = frame_bgr if frame_bgr.ndim == 2 else cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)
    fh, fw = gray.shape[:2]
    mode = cv2.BORDER_REPLICATE if border == "replicate" else cv2.BORDER_CONSTANT
    crops = []
    for box in boxes:
        x0, y0, s = square_box(box, margin, shift_up)
        x1, y1 = x0 + s, y0 + s
        # Crop the in-frame part first, then pad only what is missing: no full-frame copyMakeBorder.
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, fw), min(y1, fh)
        if cx0 >= cx1 or cy0 >= cy1:
            # Entirely outside the frame: nothing to show; keep the list aligned with the boxes.
            crops.append(np.zeros((size, size), np.uint8))
            continue
        patch = gray[cy0:cy1, cx0:cx1]
        if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
            patch = cv2.copyMakeBorder(patch, cy0 - y0, y1 - cy1, cx0 - x0, x1 - cx1, mode, value=0)
        interp = cv2.INTER_AREA if s > size else cv2.INTER_LINEAR
        crops.append(cv2.resize(patch, (size, size), interpolation=interp))
    return crops
