"""Voice gate: cut a 16 kHz stream into speech segments, keeping a pre-roll so each utterance starts whole.

A voice-activity detector (device/audio/speech_detectors.py, chosen by `detector`) judges each frame. The
loudness detector, the default and the fallback, measures each frame's RMS level in dBFS against a noise floor:
the quietest frame of the last noise_window_s seconds (minimum statistics). Pauses between words keep the floor
low during speech, and a steady noise (a projector fan) becomes the floor once it has lasted that long; a frame
is voiced when it is louder than both floor + margin_db and min_level_dbfs. Silero VAD and WebRTC VAD judge
frames by a trained model instead. A segment opens on a voiced frame, with up to pre_roll_s of audio before it,
and closes after hangover_s without a voiced frame; segments whose voiced span is shorter than min_speech_s are
discarded as clicks, and long ones are split at max_segment_s. Times are the sources' time.monotonic stamps.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from device.audio.base import SAMPLE_RATE, AudioChunk
from device.audio.speech_detectors import (
    SILENCE_DBFS,
    LoudnessDetector,
    SpeechDetector,
    build_detector,
    frame_levels,
)
from device.common.config_loader import StrictModel

__all__ = ["SILENCE_DBFS", "SpeechSegment", "VoiceGate", "VoiceGateConfig", "frame_levels"]

logger = logging.getLogger(__name__)
# A chunk that starts further than this from where the last one ended is a gap in the audio: close what is open.
_GAP_S = 0.05


class VoiceGateConfig(StrictModel):
    """Settings of the voice gate in front of the speech models."""

    detector: Literal["loudness", "silero", "webrtc"] = Field(
        "silero",
        description="Voice-activity detector: silero (Silero VAD on ONNX Runtime, 32 ms frames; the default: on "
        "RAVDESS test actors and classroom non-speech it lets no fan, chair, door or music time through, where the "
        "loudness detector lets 29-49% of chairs, doors and music through, docs/benchmarks.md), webrtc "
        "(webrtcvad-wheels) or loudness (no dependencies); one that cannot be built is reported and replaced by "
        "loudness.",
    )
    silero_threshold: float = Field(0.5, gt=0, lt=1, description="silero: speech probability that counts as voiced.")
    webrtc_aggressiveness: int = Field(2, ge=0, le=3, description="webrtc: 0 lets most through, 3 is strictest.")
    frame_ms: int = Field(
        30, ge=10, le=100, description="Frame length in milliseconds (loudness; webrtc takes 10, 20 or 30)."
    )
    margin_db: float = Field(
        10.0, gt=0, le=40, description="loudness: how far above the noise floor a frame must be to count."
    )
    min_level_dbfs: float = Field(
        -50.0, le=0, description="Frames quieter than this never count as speech, however quiet the room."
    )
    noise_window_s: float = Field(
        5.0, gt=0, le=120, description="The noise floor is the quietest frame of this many past seconds."
    )
    warmup_s: float = Field(
        0.3, ge=0, le=10, description="Audio at the start that only teaches the noise floor (no speech decided)."
    )
    pre_roll_s: float = Field(0.3, ge=0, le=5, description="Audio kept from before the first voiced frame.")
    hangover_s: float = Field(0.3, ge=0, le=5, description="Unvoiced time after the last voiced frame that ends it.")
    min_speech_s: float = Field(
        0.25, ge=0, le=10, description="Segments with a shorter voiced span (first to last voiced frame) are dropped."
    )
    max_segment_s: float = Field(
        10.0, gt=0, le=60, description="Longer speech is split into segments of at most this length."
    )

    @model_validator(mode="after")
    def _fits(self) -> VoiceGateConfig:
        frame_s = self.frame_ms / 1000
        if self.max_segment_s < self.pre_roll_s + 2 * frame_s:
            raise ValueError("max_segment_s must leave room for the pre-roll and at least two frames")
        return self


@dataclass
class SpeechSegment:
    """One utterance: 16 kHz mono int16 samples from t_start to t_end (time.monotonic seconds)."""

    samples: np.ndarray
    t_start: float
    t_end: float
    sample_rate: int = SAMPLE_RATE
    voiced_s: float = 0.0  # first to last voiced frame, without pre-roll and hangover

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


class VoiceGate:
    """Feed AudioChunks in order with process(); get SpeechSegments back as they close."""

    def __init__(self, config: VoiceGateConfig | None = None, sample_rate: int = SAMPLE_RATE,
                 detector: SpeechDetector | None = None):
        self.config = config or VoiceGateConfig()
        self.sample_rate = sample_rate
        self.detector = detector or build_detector(self.config)
        self.frame = self.detector.frame_samples
        frame_s = self.frame / sample_rate
        self._pre_roll: deque[tuple[np.ndarray, float]] = deque(maxlen=math.ceil(self.config.pre_roll_s / frame_s))
        self._hangover_frames = math.ceil(self.config.hangover_s / frame_s)
        self._max_frames = max(2, int(self.config.max_segment_s / frame_s))
        self._min_voiced_frames = math.ceil(round(self.config.min_speech_s / frame_s, 6))
        self._pending = np.zeros(0, np.int16)
        self._pending_t: float | None = None
        self._segment: list[np.ndarray] | None = None  # frames of the open segment
        self._segment_t = 0.0
        self._voiced = 0  # frames from the first to the last voiced frame of the open segment
        self._since_voiced = 0
        self.segments = 0
        self.discarded = 0
        self.frames = 0
        self.voiced_frames = 0

    @property
    def voiced_share(self) -> float | None:
        """Share of the frames seen that the detector called speech (None before the first frame)."""
        return self.voiced_frames / self.frames if self.frames else None

    @property
    def level_dbfs(self) -> float:
        return self.detector.level_dbfs if isinstance(self.detector, LoudnessDetector) else SILENCE_DBFS

    @property
    def noise_floor_dbfs(self) -> float:
        return self.detector.noise_floor_dbfs if isinstance(self.detector, LoudnessDetector) else SILENCE_DBFS

    @property
    def in_speech(self) -> bool:
        return self._segment is not None

    def process(self, chunk: AudioChunk) -> list[SpeechSegment]:
        """Add a chunk; return the segments it closed (usually none)."""
        if chunk.sample_rate != self.sample_rate:
            raise ValueError(f"chunk is {chunk.sample_rate} Hz, gate is {self.sample_rate} Hz")
        out: list[SpeechSegment] = []
        if self._pending_t is not None:
            expected = self._pending_t + len(self._pending) / self.sample_rate
            if abs(chunk.t_capture - expected) > _GAP_S:
                # Audio was lost (or the source restarted): an utterance does not continue across the hole.
                out += self._close_for_gap()
        if self._pending_t is None or len(self._pending) == 0:
            self._pending_t = chunk.t_capture
        self._pending = np.concatenate([self._pending, chunk.samples])
        n = len(self._pending) // self.frame
        if n == 0:
            return out
        for i in range(n):
            frame = self._pending[i * self.frame : (i + 1) * self.frame]
            seg = self._step(frame, self._pending_t + i * self.frame / self.sample_rate)
            if seg is not None:
                out.append(seg)
        self._pending = self._pending[n * self.frame :].copy()
        self._pending_t += n * self.frame / self.sample_rate
        return out

    def segments_from(self, chunks: Iterable[AudioChunk]) -> Iterator[SpeechSegment]:
        """Yield the segments of a whole stream, closing the last one at its end."""
        for chunk in chunks:
            yield from self.process(chunk)
        last = self.flush()
        if last is not None:
            yield last

    def flush(self) -> SpeechSegment | None:
        """End of stream: close an open segment (kept if long enough) and forget the partial frame."""
        seg = self._close() if self._segment is not None else None
        self._pending = np.zeros(0, np.int16)
        self._pending_t = None
        self._pre_roll.clear()
        return seg

    def _close_for_gap(self) -> list[SpeechSegment]:
        seg = self.flush()
        self.detector.reset()
        return [seg] if seg is not None else []

    def _step(self, frame: np.ndarray, t: float) -> SpeechSegment | None:
        """Advance the state machine by one frame; return a segment if this frame closed one."""
        voiced = self.detector.is_speech(frame)
        self.frames += 1
        self.voiced_frames += voiced

        if self._segment is None:
            if not voiced:
                self._pre_roll.append((frame, t))
                return None
            self._segment = [f for f, _ in self._pre_roll] + [frame]
            self._segment_t = self._pre_roll[0][1] if self._pre_roll else t
            self._pre_roll.clear()
            self._voiced = 1
            self._since_voiced = 0
            return None

        self._segment.append(frame)
        if voiced:
            self._voiced += self._since_voiced + 1
            self._since_voiced = 0
        else:
            self._since_voiced += 1
        if self._since_voiced >= self._hangover_frames and not voiced:
            return self._close()
        if len(self._segment) >= self._max_frames:
            # Split long speech; the next frame continues it at once, without pre-roll.
            seg = self._close()
            self._segment = []
            self._segment_t = t + self.frame / self.sample_rate
            return seg
        return None

    def _close(self) -> SpeechSegment | None:
        frames, t0, voiced = self._segment, self._segment_t, self._voiced
        self._segment = None
        self._voiced = self._since_voiced = 0
        voiced_s = voiced * self.frame / self.sample_rate
        if voiced == 0:
            return None  # the silent tail after a split: nothing was said
        if voiced < self._min_voiced_frames:
            self.discarded += 1
            logger.debug("dropped a %.2f s sound shorter than min_speech_s", voiced_s)
            return None
        samples = np.concatenate(frames)
        self.segments += 1
        return SpeechSegment(samples, t0, t0 + len(samples) / self.sample_rate, self.sample_rate, voiced_s)
