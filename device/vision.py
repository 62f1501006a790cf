"""The vision step: find faces in a frame, crop them, classify each crop's emotion."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from device.contract.labels import NUM_LABELS

if TYPE_CHECKING:
    from device.config import VisionConfig


@dataclass
class FaceAnalysis:
    """What one analysed frame yields: face boxes, per-face probabilities and stage timings."""

    t_capture: float
    boxes: list[tuple[int, int, int, int, float]]
    probs: np.ndarray = field(default_factory=lambda: np.zeros((0, NUM_LABELS), np.float32))
    detect_ms: float = 0.0
    classify_ms: float = 0.0

    @property
    def n_faces(self) -> int:
        return len(self.boxes)


class VisionStage:
    """Detect faces then classify each one; both models are loaded once and reused."""

    def __init__(self, detector, classifier, min_face_px: int = 20):
        self.detector = detector
        self.classifier = classifier
        self.min_face_px = min_face_px

    @classmethod
    def load(cls, detector_variant: str = "auto", emotion_model: str = "face_emotion_int8",
             runtime: str = "auto", threads: int = 1, mirror_below: float | None = None,
             tile: int | str = "auto", min_face_px: int = 20) -> VisionStage:
        """Load the detector and emotion model from models_tflite/ (arguments: see VisionConfig)."""
        from device.models.face_detector import FaceDetector
        from device.models.face_emotion import FaceEmotionModel

        return cls(FaceDetector.load(variant=detector_variant, threads=threads, tile=tile),
                   FaceEmotionModel.load(emotion_model, runtime=runtime, threads=threads,
                                         mirror_below=mirror_below),
                   min_face_px=min_face_px)

    @classmethod
    def from_config(cls, v: VisionConfig) -> VisionStage:
        """Load the stage a device.config.VisionConfig describes: every one of its model keys takes effect."""
        return cls.load(v.detector, v.emotion_model, v.runtime, v.threads, v.mirror_below, v.tile, v.min_face_px)

    def analyse(self, frame_bgr: np.ndarray, t_capture: float | None = None) -> FaceAnalysis:
        """Run detection and classification on one BGR frame."""
        from device.models.face_crops import crop_faces

        t0 = time.perf_counter()
        boxes = [b for b in self.detector.detect(frame_bgr) if min(b[2], b[3]) >= self.min_face_px]
        t1 = time.perf_counter()
        crops = crop_faces(frame_bgr, boxes, size=self.classifier.size)
        probs = self.classifier.predict_batch(crops)
        t2 = time.perf_counter()
        return FaceAnalysis(
            t_capture=time.monotonic() if t_capture is None else t_capture,
            boxes=boxes,
            probs=probs,
            detect_ms=(t1 - t0) * 1000,
            classify_ms=(t2 - t1) * 1000,
        )
