"""Whisper tiny.en's encoder as a feature extractor for the speech-emotion head.

The encoder (CTranslate2, int8) runs on the segment itself, not on Whisper's 30 s of padding: CTranslate2
accepts a shorter log-mel input, and one 2 s window then costs a fraction of a padded pass. Each window's
encoder frames (50 per second, 384 wide) are pooled, by their mean (384 numbers) or their mean and standard
deviation (768), as the head's manifest entry says; the head (a small int8 TFLite model) maps them to the 7
labels. Which pooling the shipped head uses was chosen in cross-validation
(models_tflite/cards/speech_emotion_whisper.md). Loudness is normalised first
(device/audio/loudness.py), so the head never sees absolute level.

The same code makes the training features (converter/whisper_features.py) and runs on the device.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from device.audio.loudness import normalise_loudness
from device.errors import ModelError

SAMPLE_RATE = 16000
CHUNK_S = 30  # Whisper's input: every padded pass covers 30 s
FRAMES_PER_S = 50  # encoder frames per second of audio
WINDOW_S = 2.0
HOP_S = 1.0
MIN_S = 0.5
WIDTH = 384
POOLING = {"mean": WIDTH, "mean+std": 2 * WIDTH}  # pooled statistics -> features per window


def pooled_width(stats: str, layers: tuple[int, ...] = ()) -> int:
    """Features per window of `pool` over `layers` side by side (CTranslate2's output alone without layers)."""
    return POOLING[stats] * max(1, len(layers))


def pool(frames: np.ndarray, stats: str = "mean") -> np.ndarray:
    """(n, 384) encoder frames -> their mean, or their mean and standard deviation, as float32."""
    if stats not in POOLING:
        raise ValueError(f"pooling must be one of {sorted(POOLING)}, got {stats!r}")
    parts = [frames.mean(axis=0)] + ([frames.std(axis=0)] if stats == "mean+std" else [])
    return np.concatenate(parts).astype(np.float32)


def window_starts(n_samples: int, window_s: float = WINDOW_S, hop_s: float = HOP_S) -> list[int]:
    """Sample offsets of the windows that cover a segment: one window if it is no longer than `window_s`."""
    win, hop = int(window_s * SAMPLE_RATE), int(hop_s * SAMPLE_RATE)
    if n_samples <= win:
        return [0]
    starts = list(range(0, n_samples - win + 1, hop))
    if starts[-1] + win < n_samples - hop // 2:  # a tail of more than half a hop gets a window of its own
        starts.append(n_samples - win)
    return starts


def windows(samples: np.ndarray) -> list[np.ndarray]:
    """The 2 s windows (1 s apart) that cover a segment, as the head classifies them."""
    win = int(WINDOW_S * SAMPLE_RATE)
    return [samples[s : s + win] for s in window_starts(len(samples))]


# CTranslate2 Whisper models already in memory, by folder: the words path's recogniser registers the one it
# loaded (device/speech_to_text/whisper.py), and an encoder for the same folder uses it instead of loading a
# second copy (about 120 MB). CTranslate2 queues calls from several threads on one model.
_LOADED: dict[str, object] = {}


def share_loaded(folder: str | Path, model) -> None:
    """Offer an already loaded CTranslate2 Whisper model of `folder` to the encoders made after this call."""
    _LOADED[str(Path(folder).resolve())] = model


class WhisperEncoder:
    """Loads the CTranslate2 Whisper model once; `frames` encodes one window, `features` pools its windows.

    With `layers` (1..4, device/models/whisper_layers.py), the encoder runs in numpy from the same file instead,
    and a window's frames are those of each of these layers side by side ((n, 384 x len(layers))), so that their
    pooled statistics are each layer's, in the order given.
    """

    def __init__(self, folder: str | Path, threads: int = 1, compute_type: str = "int8",
                 layers: tuple[int, ...] | None = None):
        from device.lazy_av import defer_av

        defer_av()  # PyAV decodes files; this path hands faster-whisper numpy samples only
        try:
            from faster_whisper.feature_extractor import FeatureExtractor
        except ImportError as exc:
            raise ModelError(f"the speech model needs faster-whisper (pip install faster-whisper): {exc}") from exc
        self.layers = tuple(layers) if layers else None
        if self.layers:
            from device.models.whisper_layers import WhisperLayers

            if min(self.layers) < 1:
                raise ModelError(f"{folder}: encoder layers are numbered from 1, asked for {self.layers}")
            self._numpy = WhisperLayers(folder, up_to=max(self.layers))  # later blocks are neither kept nor run
            self._mel = FeatureExtractor(feature_size=self._numpy.n_mels)
            return
        try:
            import ctranslate2
        except ImportError as exc:
            raise ModelError(f"the speech model needs faster-whisper (pip install faster-whisper): {exc}") from exc
        # the recogniser loads int8: another compute type gets a copy of its own
        self._model = _LOADED.get(str(Path(folder).resolve())) if compute_type == "int8" else None
        if self._model is None:
            try:
                self._model = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type=compute_type,
                                                         intra_threads=threads)
            except Exception as exc:  # CTranslate2 raises RuntimeError/ValueError for a folder it cannot read
                raise ModelError(f"cannot load the Whisper encoder from {folder}: {exc}") from exc
        self._storage = ctranslate2.StorageView
        self._mel = FeatureExtractor(feature_size=self._model.n_mels)
        self._lock = threading.Lock()  # one CTranslate2 model, called from one thread at a time

    def frames(self, samples: np.ndarray, pad_to_s: float | None = None) -> np.ndarray:
        """(n, 384) float32 encoder frames of one window of 16 kHz mono float32 samples, loudness-normalised.

        `pad_to_s` (measurement only): the window followed by silence up to that many seconds, as Whisper's
        own padding does up to 30 s; only the frames that hold the window are returned.
        """
        x = normalise_loudness(samples)
        if pad_to_s:
            mel = self._mel(x, padding=max(0, int(pad_to_s * SAMPLE_RATE) - len(x)))[:, : int(pad_to_s * 100)]
            n = max(1, int(np.ceil(len(samples) / SAMPLE_RATE * FRAMES_PER_S)))
            return self._encode(mel[:, : (mel.shape[1] // 2) * 2])[:n]
        mel = self._mel(x)  # (80, len/160), Whisper's own log-mel; no 30 s padding
        return self._encode(mel[:, : (mel.shape[1] // 2) * 2])  # the encoder halves the frame rate

    def _encode(self, mel: np.ndarray) -> np.ndarray:
        """(frames / 2, 384) float32 encoder output of one (80, frames) log-mel (x layers, with `layers`)."""
        if self.layers:
            return np.hstack(self._numpy.frames(mel, self.layers))
        with self._lock:
            out = self._model.encode(self._storage.from_array(np.ascontiguousarray(mel[None], np.float32)),
                                     to_cpu=True)
        return np.array(out, dtype=np.float32)[0]

    def padded_frames(self, samples: np.ndarray) -> np.ndarray:
        """(n, 384) encoder frames of a segment of up to 30 s, padded to 30 s as Whisper was trained (the pass
        speech-to-text makes as well); only the frames that hold the segment are returned."""
        if len(samples) > CHUNK_S * SAMPLE_RATE:
            raise ValueError(f"a padded pass covers at most {CHUNK_S} s, got {len(samples) / SAMPLE_RATE:.1f} s")
        return self.frames(samples, pad_to_s=CHUNK_S)

    def window_frames(self, samples: np.ndarray, padded: bool = False,
                      pad_to_s: float | None = None) -> list[np.ndarray]:
        """The encoder frames of each 2 s window (1 s apart) of a segment of at least 0.5 s: each window
        encoded on its own (followed by silence up to `pad_to_s`, if given), or (`padded`) one padded pass per
        30 s whose frames are cut into the windows."""
        samples = np.asarray(samples, dtype=np.float32)
        if len(samples) < MIN_S * SAMPLE_RATE:
            raise ValueError(f"speech must be at least {MIN_S} s long, got {len(samples) / SAMPLE_RATE:.2f} s")
        if not padded:
            return [self.frames(w, pad_to_s) for w in windows(samples)]
        win = int(WINDOW_S * SAMPLE_RATE)
        starts = window_starts(len(samples))
        chunk = CHUNK_S * SAMPLE_RATE
        frames = np.concatenate([self.padded_frames(samples[c : c + chunk]) for c in range(0, len(samples), chunk)])
        per = SAMPLE_RATE // FRAMES_PER_S
        return [frames[s // per : max(s // per + 1, (s + win) // per)] for s in starts]

    def features(self, samples: np.ndarray, stats: str = "mean", padded: bool = False) -> np.ndarray:
        """(n_windows, 384 or 768): each 2 s window's pooled encoder frames, the head's input."""
        return np.stack([pool(f, stats) for f in self.window_frames(samples, padded)])
