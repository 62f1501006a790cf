"""Pooled Whisper-encoder features of RAVDESS clips, clean and augmented, for the speech-emotion head.

Every clip is trimmed to its voiced part (as the device's voice detector cuts it) and goes through
device/models/whisper_encoder.py, the code the device runs: loudness normalised, 2 s windows 1 s apart. The
cache keeps the mean (the head's input, as the device computes it) and the standard deviation of each
window's encoder frames, 2 x 384 columns, so that the two can be compared. A variant is one pass over a set
of clips:

- `clean`: every clip as recorded;
- `aug<N>`: training actors only (1-18), each clip changed at random: speed (tempo and pitch) 0.9-1.1, a shift
  of up to 0.3 s, and either babble of 2-4 other *training* actors (5-20 dB SNR), white, pink or fan noise
  (5-25 dB SNR), or nothing;
- `gain<G>`, `babble<S>`, `fan<S>`, `reverb<MS>`: test actors only (19-24), at G dB of gain (clipped to
  [-1, 1]), S dB SNR of babble from three other test actors or of fan noise (as converter/export_speech.py
  measures the CNN), or in a room of RT60 MS milliseconds (DRR 0 dB).

Beside the encoder's features, the cache keeps each window's voice statistics (device/models/voice_statistics.py:
spectrum, pitch and loudness contour, 200 columns), from the same windows of the same variant waves; `load(...,
voice=True)` appends them to the encoder's columns.

Features are cached per variant in the cache folder; `python -m converter.whisper_features VARIANT...` fills it
on two processes.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import re
import time
from pathlib import Path

import numpy as np

from converter import ravdess
from converter.datasets import REPO_ROOT, cache_dir
from converter.speech_augment import babble, change_speed, coloured_noise, mix_at_snr, reverberate

ENCODER = REPO_ROOT / "models_tflite" / "whisper-tiny.en"
VERSION = 1  # bump when the variant waves or the encoder features change, so stale caches are not reused
VOICE_VERSION = 1  # bump when device/models/voice_statistics.py changes: its caches record the version they hold

_state: dict = {}


def _voiced(wave: np.ndarray) -> np.ndarray:
    from converter.export_speech import voiced_part

    return voiced_part(wave)


def _init(threads: int, padded: bool, pad_s: float | None = None, encoder: bool = True,
          layers: tuple[int, ...] | None = None) -> None:
    from device.models.whisper_encoder import WhisperEncoder

    if encoder:
        _state["encoder"] = WhisperEncoder(ENCODER, threads=threads, layers=layers)
    _state["padded"], _state["pad_s"], _state["layers"] = padded, pad_s, layers
    _state["clips"] = ravdess.clips()
    _state["waves"] = [_voiced(ravdess.read_wave(c.path)) for c in _state["clips"]]


TRAINING_KINDS = ("aug", "rev", "room")  # variants of the training actors' clips only


def variant_kind(variant: str) -> tuple[str, float | None]:
    """A variant's kind and its number: "reverb600" -> ("reverb", 600.0), "gain-6" -> ("gain", -6.0),
    "clean" -> ("clean", None)."""
    m = re.fullmatch(r"([a-z]+)(-?\d+(?:\.\d+)?)?", variant)
    if m is None:
        raise ValueError(f"unknown variant {variant!r}")
    return m.group(1), None if m.group(2) is None else float(m.group(2))


def _variant_wave(variant: str, i: int) -> np.ndarray:
    clips, waves = _state["clips"], _state["waves"]
    w = waves[i]
    rng = np.random.default_rng([VERSION, i, sum(map(ord, variant))])
    name, number = variant_kind(variant)
    if name == "clean":
        return w
    if name == "gain":
        return np.clip(w * np.float32(10 ** (number / 20)), -1, 1).astype(np.float32)
    if name in ("babble", "fan"):
        snr = number
        if name == "babble":
            others = [j for j, c in enumerate(clips) if c.actor in ravdess.TEST_ACTORS and c.actor != clips[i].actor]
            noise = np.zeros(len(w), np.float32)
            for j in rng.choice(others, size=3, replace=False):
                noise += np.resize(waves[j] / (np.sqrt(np.mean(waves[j] ** 2)) + 1e-9), len(w))
        else:
            noise = coloured_noise(len(w), "fan", rng)
        return np.clip(mix_at_snr(w, noise, snr, rng), -1, 1)
    if name in ("reverb", "room"):
        return np.clip(reverberate(w, number / 1000, 0.0, rng), -1, 1)
    if name in ("aug", "rev"):
        x = w
        if rng.random() < 0.5:
            x = change_speed(x, rng.uniform(0.9, 1.1))
        shift = int(rng.uniform(-0.3, 0.3) * 16000)
        x = x[shift:] if shift > 0 else np.concatenate([np.zeros(-shift, np.float32), x])
        if name == "rev" and rng.random() < 0.7:
            x = reverberate(x, rng.uniform(0.2, 1.0), rng.uniform(-3, 6), rng)
        r = rng.random()
        if r < 0.35:
            pool = [waves[j] for j, c in enumerate(clips)
                    if c.actor in ravdess.TRAIN_ACTORS and c.actor != clips[i].actor]
            x = mix_at_snr(x, babble(pool, len(x), int(rng.integers(2, 5)), rng), rng.uniform(5, 20), rng)
        elif r < 0.7:
            kind = ("white", "pink", "fan")[rng.integers(0, 3)]
            x = mix_at_snr(x, coloured_noise(len(x), kind, rng), rng.uniform(5, 25), rng)
        return np.clip(x, -1, 1).astype(np.float32)
    raise ValueError(f"unknown variant {variant!r}")


def _one(args: tuple[str, int]) -> np.ndarray:
    variant, i = args
    from device.models.whisper_encoder import pool

    frames = _state["encoder"].window_frames(_variant_wave(variant, i), _state["padded"], _state["pad_s"])
    return np.stack([pool(f, "mean" if _state["layers"] else "mean+std") for f in frames])


def _one_voice(args: tuple[str, int]) -> np.ndarray:
    variant, i = args
    from device.models.voice_statistics import window_statistics

    return window_statistics(_variant_wave(variant, i))


def clip_indices(variant: str, clips: list[ravdess.Clip]) -> list[int]:
    actors = ravdess.TRAIN_ACTORS if variant_kind(variant)[0] in TRAINING_KINDS else (
        ravdess.TEST_ACTORS if variant != "clean" else ravdess.TRAIN_ACTORS | ravdess.TEST_ACTORS)
    return [i for i, c in enumerate(clips) if c.actor in actors]


def cache_path(variant: str, padded: bool, pad_s: float | None = None) -> Path:
    mode = "padded_" if padded else f"pad{pad_s:g}_" if pad_s else ""
    return cache_dir() / f"whisper_head_v{VERSION}_{mode}{variant}.npz"


def layers_cache_path(variant: str) -> Path:
    return cache_dir() / f"whisper_layers_v{VERSION}_{variant}.npz"


def voice_cache_path(variant: str) -> Path:
    return cache_dir() / f"voice_statistics_v{VERSION}_{variant}.npz"


def _current(path: Path, version: int | None) -> bool:
    """Whether a cache file exists and holds rows of `version` (files without one hold version 1)."""
    if not path.exists():
        return False
    if version is None:
        return True
    with np.load(path) as data:
        return int(data["version"]) == version if "version" in data.files else version == 1


def _fill(paths: dict[str, Path], worker, initargs: tuple, processes: int, what: str,
          version: int | None = None) -> None:
    """Compute `worker`'s rows for every clip of each variant whose cache file (`paths`) is missing or holds
    another `version`, and save them."""
    todo = {v: p for v, p in paths.items() if not _current(p, version)}
    if not todo:
        return
    clips = ravdess.clips()
    with mp.get_context("fork").Pool(processes, initializer=_init, initargs=initargs) as pool:
        for v, path in todo.items():
            t = time.perf_counter()
            idx = clip_indices(v, clips)
            feats = pool.map(worker, [(v, i) for i in idx], chunksize=8)
            x = np.concatenate(feats)
            extra = {} if version is None else {"version": np.int64(version)}
            np.savez(path, x=x, clip=np.repeat(idx, [len(f) for f in feats]), **extra)
            print(f"{v}: {what} of {len(idx)} clips, {len(x)} windows, {time.perf_counter() - t:.0f} s", flush=True)


def extract(variants: list[str], padded: bool, processes: int = 2, pad_s: float | None = None) -> None:
    """Fill the cache for every variant not cached yet (`pad_s`: each window followed by silence to that length)."""
    _fill({v: cache_path(v, padded, pad_s) for v in variants}, _one, (1, padded, pad_s), processes,
          "encoder features")


def extract_layers(variants: list[str], processes: int = 2) -> None:
    """Fill the per-layer cache (the mean of each of the encoder's four layers' frames, 4 x 384 columns, from
    device/models/whisper_layers.py) for every variant not cached yet."""
    _fill({v: layers_cache_path(v) for v in variants}, _one, (1, False, None, True, LAYERS), processes,
          "encoder layers")


def extract_voice(variants: list[str], processes: int = 2) -> None:
    """Fill the voice-statistics cache (unpadded 2 s windows, as the encoder's) for every variant not cached yet."""
    _fill({v: voice_cache_path(v) for v in variants}, _one_voice, (1, False, None, False), processes,
          "voice statistics", VOICE_VERSION)


STATS = {"mean": slice(0, 384), "mean+std": slice(0, 768)}
LAYERS = (1, 2, 3, 4)  # the layers the per-layer cache holds, in its column order


def load(variant: str, stats: str = "mean", padded: bool = False, pad_s: float | None = None,
         voice: bool = False, layers: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """(windows, 384 or 768, plus 200 with `voice`) features and each window's clip index (into ravdess.clips()).

    With `layers`, the mean of each of those encoder layers' frames (device/models/whisper_layers.py) instead of
    CTranslate2's encoder output: 384 columns per layer, mean pooling only, unpadded only."""
    if layers:
        if stats != "mean" or padded or pad_s:
            raise ValueError("the per-layer features are the mean of unpadded windows only")
        extract_layers([variant])
        data = np.load(layers_cache_path(variant))
        cols = np.concatenate([np.arange(384 * LAYERS.index(k), 384 * (LAYERS.index(k) + 1)) for k in layers])
        x, clip = data["x"][:, cols], data["clip"]
    else:
        extract([variant], padded, pad_s=pad_s)
        data = np.load(cache_path(variant, padded, pad_s))
        x, clip = data["x"][:, STATS[stats]], data["clip"]
    if not voice:
        return x, clip
    if padded:
        raise ValueError("voice statistics are cached for the unpadded windows only")
    extract_voice([variant])
    extra = np.load(voice_cache_path(variant))
    if not np.array_equal(extra["clip"], clip):
        raise ValueError(f"{variant}: the voice statistics and the encoder features cover different windows")
    return np.hstack([x, extra["x"]]), clip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converter.whisper_features", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--padded", action="store_true", help="one padded 30 s pass per clip, cut into windows")
    parser.add_argument("--pad-s", type=float, help="each window followed by silence to this many seconds")
    parser.add_argument("--voice", action="store_true", help="the voice statistics as well")
    parser.add_argument("--layers", action="store_true",
                        help="the mean of each encoder layer's frames (numpy encoder) instead of CTranslate2's output")
    args = parser.parse_args(argv)
    if args.layers:
        extract_layers(args.variants, args.processes)
    else:
        extract(args.variants, args.padded, args.processes, args.pad_s)
    if args.voice:
        extract_voice(args.variants, args.processes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
