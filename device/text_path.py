"""Speech segment -> transcript -> text emotion, on the device only.

A transcript exists only inside `TextPath._classify`: it is turned into 7 probabilities there and dropped. It
is never logged, stored, queued or sent (privacy.send_transcripts is refused by the config).

Whisper pads every call to 30 s of audio, so a call costs about the same for 1 s of speech as for 10 s. With a
live microphone the path keeps a short wait list and transcribes the newest segment first; when speech comes
faster than the recogniser, the oldest waiting segment is skipped and counted. Class-level mood does not need
every word, and no backlog builds up. A replay at full speed transcribes every segment in order instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

import numpy as np

from device.window_buckets import WindowBuckets
from device.workers import percentile

logger = logging.getLogger(__name__)

_TIMES_KEPT = 200


class TextPath:
    """Transcribes speech segments and adds each utterance's text-emotion probabilities to its window."""

    def __init__(self, transcriber, model, buckets: WindowBuckets | None = None, max_waiting: int = 2):
        """`buckets` may be set later (the service makes them when it starts), but before the first segment."""
        if max_waiting < 1:
            raise ValueError("max_waiting must be at least 1")
        self.transcriber = transcriber
        self.model = model
        self.buckets = buckets
        self.max_waiting = max_waiting
        self._waiting: deque[tuple[np.ndarray, float]] = deque()
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.segments_in = 0
        self.segments_transcribed = 0
        self.segments_skipped = 0
        self.utterances = 0  # transcripts with at least one word
        self.errors = 0
        self.audio_s = 0.0
        self.transcribe_s = 0.0
        self.text_ms: deque[float] = deque(maxlen=_TIMES_KEPT)

    # ---- input -------------------------------------------------------------------------------------------------

    def submit(self, samples: np.ndarray, t_end: float, live: bool) -> None:
        """Hand over one speech segment (float32 mono 16 kHz); `live` segments go through the wait list."""
        self.segments_in += 1
        if not live:
            self._classify(samples, t_end)
            return
        with self._cond:
            if len(self._waiting) >= self.max_waiting:
                self._waiting.popleft()  # the oldest waiting segment: its words would come too late to matter
                self.segments_skipped += 1
            self._waiting.append((samples, t_end))
            self._cond.notify()
        self._ensure_thread()

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop = False
            self._thread = threading.Thread(target=self._run, name="text", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stop:
                    self._cond.wait(0.5)
                if self._stop:
                    return
                samples, t_end = self._waiting.pop()  # newest first
            # A live result lands in the window open when it is ready: the segment's own window may be closed.
            self._classify(samples, t_end, at_least=time.monotonic)

    def discard_waiting(self) -> None:
        """Drop the segments not yet transcribed (privacy pause); they are counted as skipped."""
        with self._cond:
            self.segments_skipped += len(self._waiting)
            self._waiting.clear()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the worker thread; segments still waiting are counted as skipped."""
        self.discard_waiting()
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # ---- the one place a transcript exists ---------------------------------------------------------------------

    def _classify(self, samples: np.ndarray, t_end: float, at_least=None) -> None:
        t0 = time.perf_counter()
        try:
            transcript = self.transcriber.transcribe(samples)
        except Exception as exc:  # one bad segment must not stop the path; the reason is logged, never the words
            self.errors += 1
            logger.warning("transcriber failed on a %.1f s segment: %s", len(samples) / 16000, type(exc).__name__)
            return
        self.segments_transcribed += 1
        self.audio_s += len(samples) / 16000
        self.transcribe_s += time.perf_counter() - t0
        text = transcript.text.strip()
        if not any(ch.isalnum() for ch in text):
            return
        t1 = time.perf_counter()
        probs = self.model.predict(text)
        self.text_ms.append((time.perf_counter() - t1) * 1000)
        self.utterances += 1
        t = max(t_end, at_least()) if at_least is not None else t_end
        self.buckets.add_text(t, probs)

    # ---- health ------------------------------------------------------------------------------------------------

    def health(self) -> dict:
        """Counters and timings for the audio section of the health message (no words)."""
        offered = self.segments_transcribed + self.segments_skipped
        return {
            "transcriber": getattr(self.transcriber, "name", type(self.transcriber).__name__),
            "transcriber_rtf": round(self.transcribe_s / self.audio_s, 3) if self.audio_s else None,
            "segments_transcribed": self.segments_transcribed,
            "segments_not_transcribed": self.segments_skipped,
            "transcribed_share": round(self.segments_transcribed / offered, 3) if offered else None,
            "transcriber_errors": self.errors,
            "text_utterances": self.utterances,
            "text_emotion_ms_p50": percentile(self.text_ms, 50),
            "text_emotion_ms_p95": percentile(self.text_ms, 95),
        }
