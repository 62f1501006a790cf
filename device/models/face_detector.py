"""BlazeFace face detection (MediaPipe short/full-range TFLite), decoded in numpy, tiled for room cameras."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from device.errors import ModelError
from device.model_store import model_entry
from device.runtime import InferenceBackend

logger = logging.getLogger(__name__)

Box = tuple[int, int, int, int, float]

# Manifest entry of each variant. An entry carries MediaPipe's anchor and decoder options, which `load` passes
# to the detector; converter/register_detector.py writes them (`python -m converter register-detector`).
VARIANT_MODELS = {"short": "face_detection_short_range", "full": "face_detection_full_range"}


def _anchor_scale(min_scale: float, max_scale: float, index: int, count: int) -> float:
    if count == 1:
        return (min_scale + max_scale) * 0.5
    return min_scale + (max_scale - min_scale) * index / (count - 1.0)


def ssd_anchors(cfg: dict[str, Any]) -> np.ndarray:
    """Return (N, 4) float32 anchors (cx, cy, w, h) in [0, 1], built as MediaPipe's SsdAnchorsCalculator."""
    if cfg.get("reduce_boxes_in_lowest_layer"):
        raise ModelError("anchor option reduce_boxes_in_lowest_layer is not supported")
    n, strides = int(cfg["num_layers"]), list(cfg["strides"])
    ratios = list(cfg.get("aspect_ratios", [1.0]))
    interp = float(cfg.get("interpolated_scale_aspect_ratio", 1.0))
    in_h, in_w = int(cfg["input_size_height"]), int(cfg["input_size_width"])
    out = []
    layer = 0
    while layer < n:
        # Consecutive layers with the same stride share one feature map; their anchors interleave per cell.
        sizes: list[tuple[float, float]] = []  # (w, h)
        last = layer
        while last < n and strides[last] == strides[layer]:
            scale = _anchor_scale(cfg["min_scale"], cfg["max_scale"], last, n)
            for r in ratios:
                sizes.append((scale * math.sqrt(r), scale / math.sqrt(r)))
            if interp > 0.0:
                nxt = 1.0 if last == n - 1 else _anchor_scale(cfg["min_scale"], cfg["max_scale"], last + 1, n)
                s = math.sqrt(scale * nxt)
                sizes.append((s * math.sqrt(interp), s / math.sqrt(interp)))
            last += 1
        fm_h, fm_w = math.ceil(in_h / strides[layer]), math.ceil(in_w / strides[layer])
        ys, xs = np.meshgrid(np.arange(fm_h), np.arange(fm_w), indexing="ij")
        cx = (xs.ravel() + cfg["anchor_offset_x"]) / fm_w
        cy = (ys.ravel() + cfg["anchor_offset_y"]) / fm_h
        k = len(sizes)
        wh = np.ones((k, 2)) if cfg.get("fixed_anchor_size") else np.asarray(sizes)
        cell = np.stack([np.repeat(cx, k), np.repeat(cy, k)], axis=1)
        out.append(np.concatenate([cell, np.tile(wh, (fm_h * fm_w, 1))], axis=1))
        layer = last
    anchors = np.concatenate(out).astype(np.float32)
    expected = cfg.get("num_anchors")
    if expected is not None and len(anchors) != expected:
        raise ModelError(f"anchor options give {len(anchors)} anchors, expected {expected}")
    return anchors


def weighted_nms(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe's weighted NMS: each cluster (IoU > threshold with its top box) becomes its weighted mean.

    boxes are (M, 4) x0, y0, x1, y1; returns the merged boxes and each cluster's best score.
    """
    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    areas = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    remaining = np.arange(len(boxes))
    kept_boxes, kept_scores = [], []
    while remaining.size:
        top = remaining[0]
        rest = boxes[remaining]
        iw = np.minimum(rest[:, 2], boxes[top, 2]) - np.maximum(rest[:, 0], boxes[top, 0])
        ih = np.minimum(rest[:, 3], boxes[top, 3]) - np.maximum(rest[:, 1], boxes[top, 1])
        inter = np.maximum(iw, 0) * np.maximum(ih, 0)
        union = areas[remaining] + areas[top] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        member = iou > iou_threshold
        member[0] = True  # the top box always belongs to its own cluster, even if degenerate
        cluster = remaining[member]
        w = scores[cluster]
        kept_boxes.append((boxes[cluster] * w[:, None]).sum(axis=0) / w.sum())
        kept_scores.append(scores[top])
        remaining = remaining[~member]
    if not kept_boxes:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
    return np.asarray(kept_boxes, np.float32), np.asarray(kept_scores, np.float32)


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Return evenly spread tile starts covering [0, length) with at least `overlap` pixels shared."""
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def downscale(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to `size` (w, h), antialiased when shrinking, without OpenCV's slow fractional INTER_AREA.

    INTER_AREA costs ~6 ms for 1280x720 -> 512x288 here but ~0.6 ms for an exact halving, so halve
    while the image is at least twice the target, then finish with INTER_LINEAR (under 2x: little aliasing).
    """
    w, h = size
    while img.shape[1] >= 2 * w and img.shape[0] >= 2 * h:
        ih, iw = img.shape[:2]
        if iw % 2 == 0 and ih % 2 == 0:
            img = cv2.resize(img, (iw // 2, ih // 2), interpolation=cv2.INTER_AREA)
        else:
            img = cv2.pyrDown(img)
    if (img.shape[1], img.shape[0]) != (w, h):
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    return img


def _to_input(frame_bgr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Return the frame resized to `size` as RGB float32 in [-1, 1]."""
    rgb = cv2.cvtColor(downscale(frame_bgr, size), cv2.COLOR_BGR2RGB).astype(np.float32)
    rgb *= np.float32(2.0 / 255.0)
    rgb -= np.float32(1.0)
    return rgb


@dataclass
class _Plan:
    """Per frame size: where each batch slot comes from and which detections it owns."""

    frame_size: tuple[int, int]  # (w, h)
    tile_scale: float  # model px per frame px for the tile slots
    tiled_size: tuple[int, int]  # frame size after scaling by tile_scale
    tiles: list[tuple[int, int, int, int]]  # (x, y, w, h) of each tile in the scaled frame
    full_scale: float  # model px per frame px of the letterboxed full-frame slot (0: no such slot)
    full_size: tuple[int, int]
    origin: np.ndarray  # (B, 2) frame px of each slot's top-left corner
    inv_scale: np.ndarray  # (B,) frame px per model px
    core: np.ndarray  # (B, 4) x0, y0, x1, y1: a slot keeps only detections centred inside its core
    batch: np.ndarray  # (B, S, S, 3) float32 input, padding pre-filled with -1 (black)


class FaceDetector:
    """BlazeFace on whole frames and/or overlapping tiles; `detect` returns (x, y, w, h, score) boxes.

    Why tiles: BlazeFace short-range misses faces below ~17 px in its 128 px input, i.e. below ~1/8 of
    the frame's long side when the whole frame is letterboxed in; classroom faces are 25-80 px wide in a
    1280x720 frame. Tiling scales the frame so that a `tile`-pixel square becomes the model input (320 px
    -> 128: a 40 px face becomes 16 px), cuts it into tiles that overlap by `overlap` frame pixels, and
    runs each tile. A tile keeps only detections centred in its core (the half of each overlap on its
    side), so a face up to `overlap` px wide is taken whole from one tile and never twice; weighted NMS
    then merges what the tiles found (and the optional full-frame pass).

    Arguments (also of `load`):
      tile: "auto" tiles frames whose long side is >= `auto_tile_min_side` (960) px with tiles of
        long_side * input / 512 px (320 px for the short model at 1280 wide, i.e. 15 tiles at 1280x720,
        the same count at any resolution); None or 0 never tiles; an int is the tile side in frame px.
      overlap: frame pixels shared by neighbouring tiles; default tile // 4 (80 px for 320 px tiles).
      full_frame: when tiling, also run the whole letterboxed frame (+1 run) for faces too large for a
        tile (over ~0.7 of a tile side; 320 px tiles alone found faces up to 220 px at 1280x720). Off by
        default: on the test composites its coarse view added false positives (a coffee cup), no faces.
      score_threshold: minimum sigmoid score; default the manifest's (MediaPipe's 0.5).
    Not thread-safe (it reuses its input buffers): use one detector per capture thread.
    """

    def __init__(
        self,
        backend: InferenceBackend,
        anchors_cfg: dict[str, Any],
        decoder_cfg: dict[str, Any],
        score_threshold: float | None = None,
        tile: int | str | None = "auto",
        overlap: int | None = None,
        full_frame: bool = False,
        auto_tile_min_side: int = 960,
        name: str = "face_detector",
    ):
        self.backend = backend
        self.name = name
        self.anchors = ssd_anchors(anchors_cfg)
        self.size = int(anchors_cfg["input_size_width"])
        spec = backend.inputs[0]
        if tuple(spec.shape[1:]) != (self.size, self.size, 3):
            raise ModelError(
                f"{backend.path}: input {spec.shape} does not match the anchors for {self.size}x{self.size}"
            )
        self.scale = float(decoder_cfg["scale"])
        self.clip = float(decoder_cfg.get("score_clipping_thresh", 100.0))
        self.nms_threshold = float(decoder_cfg["nms"]["min_suppression_threshold"])
        self.xy_order = (0, 1) if decoder_cfg.get("reverse_output_order", True) else (1, 0)
        if score_threshold is None:
            score_threshold = decoder_cfg["min_score_thresh"]
        self.score_threshold = float(score_threshold)
        # Thresholding logits instead of sigmoids skips exp() for the ~99% of anchors that are background.
        p = min(max(self.score_threshold, 1e-6), 1 - 1e-6)
        self._logit_threshold = math.log(p / (1 - p))
        if not (tile in (None, 0, "auto") or (isinstance(tile, int) and tile > 0)):
            raise ValueError(f"tile must be 'auto', None/0 or a positive int, not {tile!r}")
        self.tile = tile
        self.overlap = overlap
        self.full_frame = bool(full_frame)
        self.auto_tile_min_side = auto_tile_min_side
        self._plans: dict[tuple[int, int], _Plan] = {}

    @classmethod
    def load(
        cls,
        variant: str = "auto",
        runtime: str = "auto",
        threads: int = 1,
        score_threshold: float | None = None,
        tile: int | str | None = "auto",
        overlap: int | None = None,
        full_frame: bool = False,
        auto_tile_min_side: int = 960,
        folder: Path | None = None,
    ) -> FaceDetector:
        """Open a BlazeFace model from the manifest; the tiling arguments are described on the class.

        variant: "short" (128 px input, ~2 ms a run on one core here), "full" (192 px sparse model, ~3x the
        cost per run for ~1.5x the input side) or "auto" = "short", which reached the classroom target
        (recall >= 0.9 on faces >= 40 px in 1280x720) at the lower cost.
        """
        if variant == "auto":
            variant = "short"
        if variant not in VARIANT_MODELS:
            known = ", ".join(VARIANT_MODELS)
            raise ModelError(f"unknown face detector variant '{variant}' (known: auto, {known})")
        entry = model_entry(VARIANT_MODELS[variant], folder)
        backend = entry.open(runtime, threads)
        meta = entry.meta
        if "anchors" not in meta or "decoder" not in meta:
            raise ModelError(f"manifest entry '{entry.name}' lacks its anchors/decoder options")
        return cls(
            backend,
            meta["anchors"],
            meta["decoder"],
            score_threshold=score_threshold,
            tile=tile,
            overlap=overlap,
            full_frame=full_frame,
            auto_tile_min_side=auto_tile_min_side,
            name=entry.name,
        )

    # -- planning ---------------------------------------------------------------------------------

    def tile_side(self, w: int, h: int) -> int:
        """Return the tile side in frame px used for a w x h frame (0: no tiling)."""
        if not self.tile:
            return 0
        if self.tile == "auto":
            long_side = max(w, h)
            return round(long_side * self.size / 512) if long_side >= self.auto_tile_min_side else 0
        return int(self.tile)

    def _plan(self, w: int, h: int) -> _Plan:
        plan = self._plans.get((w, h))
        if plan is not None:
            return plan
        s = self.size
        side = self.tile_side(w, h)
        tiles: list[tuple[int, int, int, int]] = []
        origin, inv, core = [], [], []
        tile_scale, tiled_size = 0.0, (0, 0)
        if side:
            overlap = self.overlap if self.overlap is not None else side // 4
            if not 0 <= overlap < side:
                raise ValueError(f"tile overlap {overlap} must be in [0, {side})")
            tile_scale = s / side
            tiled_size = (max(1, round(w * tile_scale)), max(1, round(h * tile_scale)))
            xs, ys = tile_origins(w, side, overlap), tile_origins(h, side, overlap)
            # Core bounds: halfway through each overlap, open at the frame's outer edges.
            bx = [-math.inf] + [(xs[i] + xs[i - 1] + side) / 2 for i in range(1, len(xs))] + [math.inf]
            by = [-math.inf] + [(ys[i] + ys[i - 1] + side) / 2 for i in range(1, len(ys))] + [math.inf]
            for j, y in enumerate(ys):
                for i, x in enumerate(xs):
                    tx, ty = round(x * tile_scale), round(y * tile_scale)
                    tw, th = min(s, tiled_size[0] - tx), min(s, tiled_size[1] - ty)
                    tiles.append((tx, ty, tw, th))
                    origin.append((tx / tile_scale, ty / tile_scale))
                    inv.append(1.0 / tile_scale)
                    core.append((bx[i], by[j], bx[i + 1], by[j + 1]))
        full = self.full_frame or not side
        full_scale, full_size = 0.0, (0, 0)
        if full:
            full_scale = s / max(w, h)
            full_size = (max(1, round(w * full_scale)), max(1, round(h * full_scale)))
            origin.append((0.0, 0.0))
            inv.append(1.0 / full_scale)
            core.append((-math.inf, -math.inf, math.inf, math.inf))
        batch = np.full((len(origin), s, s, 3), -1.0, np.float32)
        plan = _Plan(
            (w, h),
            tile_scale,
            tiled_size,
            tiles,
            full_scale,
            full_size,
            np.asarray(origin, np.float32),
            np.asarray(inv, np.float32),
            np.asarray(core, np.float32),
            batch,
        )
        logger.info(
            "%s: %dx%d frame -> %d tile(s) of %d px%s",
            self.name, w, h, len(tiles), side, " + full frame" if full else "",
        )
        self._plans[(w, h)] = plan
        return plan

    def describe(self, w: int, h: int) -> str:
        """Return a one-line description of how a w x h frame is processed."""
        p = self._plan(w, h)
        side = round(self.size / p.tile_scale) if p.tiles else 0
        return f"{len(p.tiles)} tiles of {side} px" + (" + full frame" if p.full_scale else "")

    # -- per frame --------------------------------------------------------------------------------

    def _fill(self, frame_bgr: np.ndarray, plan: _Plan) -> np.ndarray:
        batch = plan.batch
        slot = 0
        if plan.tiles:
            rgb = _to_input(frame_bgr, plan.tiled_size)  # scale once; then every tile is a slice copy
            for tx, ty, tw, th in plan.tiles:
                batch[slot, :th, :tw] = rgb[ty : ty + th, tx : tx + tw]
                slot += 1
        if plan.full_scale:
            fw, fh = plan.full_size
            batch[slot, :fh, :fw] = _to_input(frame_bgr, (fw, fh))
        return batch

    def detect_array(self, frame_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (K, 4) float boxes x0, y0, x1, y1 in frame pixels and their (K,) scores."""
        if frame_bgr.ndim == 2:
            frame_bgr = cv2.cvtColor(frame_bgr, cv2.COLOR_GRAY2BGR)
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 BGR frame, got {frame_bgr.shape} {frame_bgr.dtype}")
        frame_bgr = np.ascontiguousarray(frame_bgr)  # OpenCV rejects views with negative strides (flips)
        h, w = frame_bgr.shape[:2]
        plan = self._plan(w, h)
        batch = self._fill(frame_bgr, plan)
        # One invoke per slot: these models fold the batch axis into the anchor axis in their final
        # reshapes, and batched XNNPACK runs measured no faster per image here anyway.
        n = len(batch)
        raw_boxes = np.empty((n, len(self.anchors), 4), np.float32)
        logits = np.empty((n, len(self.anchors)), np.float32)
        for i in range(n):
            b, c = self.backend.run(batch[i : i + 1])
            raw_boxes[i] = b[0, :, :4]  # box only; the 6 keypoints are unused
            logits[i] = c[0, :, 0]
        slot, idx = np.nonzero(logits > self._logit_threshold)
        if slot.size == 0:
            return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
        r = raw_boxes[slot, idx]
        anc = self.anchors[idx]
        ix, iy = self.xy_order
        # Model px of the slot: centre offsets are relative to the anchor, sizes relative to the anchor size.
        cx = r[:, ix] / self.scale * anc[:, 2] * self.size + anc[:, 0] * self.size
        cy = r[:, iy] / self.scale * anc[:, 3] * self.size + anc[:, 1] * self.size
        bw = r[:, 2 + ix] / self.scale * anc[:, 2] * self.size
        bh = r[:, 2 + iy] / self.scale * anc[:, 3] * self.size
        inv = plan.inv_scale[slot]
        cx = plan.origin[slot, 0] + cx * inv
        cy = plan.origin[slot, 1] + cy * inv
        bw, bh = bw * inv, bh * inv
        core = plan.core[slot]
        own = (cx >= core[:, 0]) & (cx < core[:, 2]) & (cy >= core[:, 1]) & (cy < core[:, 3])
        lg = np.clip(logits[slot, idx][own], -self.clip, self.clip)
        scores = 1.0 / (1.0 + np.exp(-lg))
        cx, cy, bw, bh = cx[own], cy[own], bw[own], bh[own]
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
        return weighted_nms(boxes, scores.astype(np.float32), self.nms_threshold)

    def detect(self, frame_bgr: np.ndarray) -> list[Box]:
        """Return faces as (x, y, w, h, score) in frame pixels; boxes may extend past the frame edge."""
        boxes, scores = self.detect_array(frame_bgr)
        out: list[Box] = []
        for (x0, y0, x1, y1), sc in zip(boxes.tolist(), scores.tolist(), strict=True):
            x, y = round(x0), round(y0)
            out.append((x, y, round(x1) - x, round(y1) - y, float(sc)))
        return out
