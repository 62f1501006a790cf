"""Train the speech-emotion CNN on RAVDESS, actor-independent: 5-fold actor-grouped CV on actors 1-18 picks the
epoch count, then one run on all of actors 1-18; test actors 19-24 are only scored at the end."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from converter import ravdess
from converter.datasets import cache_dir
from converter.metrics import accuracy_and_macro_f1
from converter.speech_augment import Augmenter, windows
from converter.speech_net import FRAMES, build_speech_net
from device.models.log_mel import log_mel

logger = logging.getLogger(__name__)

RECIPE = {"epochs": 30, "lr": 3e-3, "batch_size": 32, "crops_per_clip": 2, "eval_every": 2, "folds": 5}


def load_waves(clips: list[ravdess.Clip]) -> list[np.ndarray]:
    return [ravdess.read_wave(c.path) for c in clips]


def clip_windows(waves: list[np.ndarray], idx: np.ndarray) -> list[np.ndarray]:
    """Each clip's 2 s windows (1 s hop) of its voiced part, normalised as on the device."""
    return [windows(log_mel(waves[i], normalise=False), FRAMES, 100) for i in idx]


def predict_clips(model, clip_wins: list[np.ndarray]) -> np.ndarray:
    """Mean softmax over each clip's windows (the device pools a window's segments the same way)."""
    import keras

    sizes = [len(w) for w in clip_wins]
    logits = model.predict(np.concatenate(clip_wins)[..., None], batch_size=256, verbose=0)
    probs = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    out, at = [], 0
    for n in sizes:
        out.append(probs[at : at + n].mean(axis=0))
        at += n
    return np.stack(out)


def fit(waves, labels, actors, train_idx, eval_sets: dict, epochs: int, seed: int = 0, recipe=RECIPE):
    """Train from scratch on `train_idx`; every `eval_every` epochs score each eval set (clip level).

    Babble for augmentation is mixed only from the training clips' own actors, other than the clip's.
    """
    import keras

    keras.utils.set_random_seed(seed)
    model = build_speech_net()
    steps = epochs * int(np.ceil(len(train_idx) * recipe["crops_per_clip"] / recipe["batch_size"]))
    schedule = keras.optimizers.schedules.CosineDecay(recipe["lr"], steps, warmup_target=None)
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    pools = {a: [waves[i] for i in train_idx if actors[i] != a] for a in set(actors[train_idx])}
    augmenters = {a: Augmenter(pools[a], seed=seed * 100 + int(a)) for a in pools}
    eval_windows = {name: (clip_windows(waves, idx), labels[idx]) for name, idx in eval_sets.items()}
    history = []
    rng = np.random.default_rng(seed)
    for epoch in range(1, epochs + 1):
        t = time.monotonic()
        order = np.repeat(train_idx, recipe["crops_per_clip"])
        rng.shuffle(order)
        x = np.stack([augmenters[actors[i]](waves[i]) for i in order])[..., None]
        y = labels[order]
        loss = model.fit(x, y, batch_size=recipe["batch_size"], epochs=1, verbose=0).history["loss"][-1]
        row = {"epoch": epoch, "loss": round(float(loss), 4), "s": round(time.monotonic() - t, 1)}
        if epoch % recipe["eval_every"] == 0 or epoch == epochs:
            for name, (wins, y_true) in eval_windows.items():
                acc, f1 = accuracy_and_macro_f1(y_true, predict_clips(model, wins).argmax(1))
                row[f"{name}_acc"], row[f"{name}_f1"] = round(acc, 4), round(f1, 4)
        logger.info("%s", row)
        history.append(row)
    return model, history


def cross_validate(epochs: int, out: Path) -> dict:
    clips = ravdess.clips()
    waves = load_waves(clips)
    labels = np.array([c.label for c in clips])
    actors = np.array([c.actor for c in clips])
    results = []
    for k, (tr, va) in enumerate(ravdess.actor_folds(actors, RECIPE["folds"])):
        _, history = fit(waves, labels, actors, tr, {"val": va}, epochs, seed=k)
        results.append(history)
        out.write_text(json.dumps({"recipe": RECIPE, "folds": results}, indent=1))
    return {"recipe": RECIPE, "folds": results}


def train_final(epochs: int, out: Path) -> dict:
    """Train on all of actors 1-18 with the fixed recipe; score test actors 19-24 once, at the end."""
    clips = ravdess.clips()
    waves = load_waves(clips)
    labels = np.array([c.label for c in clips])
    actors = np.array([c.actor for c in clips])
    train = np.flatnonzero(np.isin(actors, list(ravdess.TRAIN_ACTORS)))
    test = np.flatnonzero(np.isin(actors, list(ravdess.TEST_ACTORS)))
    model, history = fit(waves, labels, actors, train, {}, epochs, seed=100)
    model.save(out.with_suffix(".keras"))
    acc, f1 = accuracy_and_macro_f1(labels[test], predict_clips(model, clip_windows(waves, test)).argmax(1))
    result = {"recipe": RECIPE, "epochs": epochs, "history": history, "test": {"accuracy": acc, "macro_f1": f1}}
    out.write_text(json.dumps(result, indent=1))
    logger.info("test actors 19-24: accuracy %.4f, macro-F1 %.4f", acc, f1)
    return result


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m converter.train_speech")
    parser.add_argument("--cv", action="store_true", help="run the 5-fold actor-grouped cross-validation")
    parser.add_argument("--final", action="store_true", help="train on actors 1-18 and score the test actors")
    parser.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    parser.add_argument("--out", type=Path, default=cache_dir() / "speech_cv.json")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    if args.cv:
        cross_validate(args.epochs, args.out)
    if args.final:
        train_final(args.epochs, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
