"""Loudness gate: cut a 16 kHz stream into speech segments, keeping a pre-roll so each utterance starts whole.

Per frame (default 30 ms) the level is the RMS in dBFS. The noise floor is the quietest frame of the last
noise_window_s seconds (minimum statistics): pauses between words keep it low during speech, and a steady noise
(a projector fan) becomes the floor once it has lasted that long. A frame is voiced when it is louder than both
floor + margin_db and min_level_dbfs. A segment opens on a voiced frame, with up to pre_roll_s of audio before it,
and closes after hangover_s without a voiced frame; segments whose voiced span is shorter than min_speech_s are
discarded as clicks, and long ones are split at max_segment_s. Times are the sources' time.monotonic stamps.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from pydantic import Field, model_validator

from device.audio.base import SAMPLE_RATE, AudioChunk
from device.common.config_loader import StrictModel

logger = logging.getLogger(__name__)

SILENCE_DBFS = -120.0  # level reported for digital silence (log of 0)
# A chunk that starts further than this from where the last one ended is a gap in the audio: close what is open.
_GAP_S = 0.05


class VoiceGateConfig(StrictModel):
    """Settings of the loudness gate in front of the speech models."""

    frame_ms: int = Field(30, ge=10, le=100, description="Analysis frame length in milliseconds.")
    margin_db: float = Field(10.0, gt=0, le=40, description="How far above the noise floor a frame must be to count.")
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


def frame_levels(samples: np.ndarray, frame: int) -> np.ndarray:
    """Return the RMS level in dBFS of each whole frame of int16 samples."""
    n = len(samples) // frame
    x = samples[: n * frame].astype(np.float32).reshape(n, frame) / 32768.0
    rms = np.sqrt((x * x).mean(axis=1))
    with np.errstate(divide="ignore"):
        return np.maximum(20.0 * np.log10(rms), SILENCE_DBFS)


class VoiceGate:
    """Feed AudioChunks in order with process(); get SpeechSegments back as they close."""

    def __init__(self, config: VoiceGateConfig | None = None, sample_rate: int = SAMPLE_RATE):
        self.config = config or VoiceGateConfig()
        self.sample_rate = sample_rate
        self.frame = sample_rate * self.config.frame_ms // 1000
        frame_s = self.frame / sample_rate
        self._noise: deque[float] = deque(maxlen=max(1, round(self.config.noise_window_s / frame_s)))
        self._warmup_frames = round(self.config.warmup_s / frame_s)
        self._pre_roll: deque[tuple[np.ndarray, float]] = deque(maxlen=math.ceil(self.config.pre_roll_s / frame_s))
        self._hangover_frames = math.ceil(self.config.hangover_s / frame_s)
        self._max_frames = max(2, int(self.config.max_segment_s / frame_s))
        self._min_voiced_frames = math.ceil(round(self.config.min_speech_s / frame_s, 6))
        self._pending = np.zeros(0, np.int16)
        self._pending_t: float | None = None
        self._frames_seen = 0
        self._segment: list[np.ndarray] | None = None  # frames of the open segment
        self._segment_t = 0.0
        self._voiced = 0  # frames from the first to the last voiced frame of the open segment
        self._since_voiced = 0
        self.level_dbfs = SILENCE_DBFS
        self.noise_floor_dbfs = SILENCE_DBFS
        self.segments = 0
        self.discarded = 0

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
        levels = frame_levels(self._pending, self.frame)
        for i in range(n):
            frame = self._pending[i * self.frame : (i + 1) * self.frame]
            seg = self._step(frame, float(levels[i]), self._pending_t + i * self.frame / self.sample_rate)
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
        return [seg] if seg is not None else []

    def _step(self, frame: np.ndarray, level: float, t: float) -> SpeechSegment | None:
        """Advance the state machine by one frame; return a segment if this frame closed one."""
        cfg = self.config
        self.level_dbfs = level
        # Judge against the floor of the frames before this one; then let this one teach the floor.
        floor = min(self._noise) if self._noise else level
        self._noise.append(level)
        self.noise_floor_dbfs = min(self._noise)
        self._frames_seen += 1
        voiced = self._frames_seen > self._warmup_frames and level > max(floor + cfg.margin_db, cfg.min_level_dbfs)

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
