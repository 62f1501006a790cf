"""Train the speech-emotion head on Whisper tiny.en's encoder (route 2 of docs/speech_routes.md).

Inputs are the pooled encoder features of converter/whisper_features.py, with or without the window's voice
statistics (device/models/voice_statistics.py: spectrum, pitch, loudness contour): every training-actor clip
clean plus twelve augmented copies of it (speed, shift, babble of other training actors, white, pink or fan
noise), and optionally twelve more that are also heard in a synthetic room (reverberation). The head is a
logistic regression (scikit-learn) on standardised features.

Choices (which pooled statistics, whether the voice statistics join them, how many augmented and reverberant
copies, the regularisation C) are made by 5-fold cross-validation grouped by actor over actors 1-18, scored on
the validation actors' clips, clip by clip (the mean of a clip's window probabilities, as the device predicts):
the mean of the accuracy on their clean clips and on the same clips in a room of RT60 0.6 s (a classroom's
reverberation; `room600` in converter/whisper_features.py). Test actors 19-24 are not read here. The
shipped head is the mean of the five fold models (each trained without its validation actors), folded into one
linear layer; it gives every training clip an out-of-fold prediction, on which the calibration temperature is
fitted.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from converter import ravdess
from converter import whisper_features as wf
from converter.datasets import cache_dir
from converter.metrics import accuracy_and_macro_f1, fit_temperature

AUGMENTED = tuple(f"aug{i}" for i in range(1, 13))
REVERBERANT = tuple(f"rev{i}" for i in range(1, 13))
ROOM = "room600"  # the validation actors' clips in a room of RT60 0.6 s, scored beside their clean clips


@dataclass(frozen=True)
class HeadConfig:
    stats: str = "mean"  # "mean" or "mean+std" of the window's encoder frames
    copies: int = 12  # augmented copies of each training clip, besides the clean one
    c: float = 0.03  # inverse L2 regularisation of the logistic regression
    voice: bool = False  # the window's voice statistics (200 numbers) beside the pooled encoder frames
    rooms: int = 0  # further augmented copies, seven in ten of them also reverberant (REVERBERANT)
    # the encoder layers (1-4) whose frames' means are pooled, from the numpy encoder (device/models/
    # whisper_layers.py); empty: CTranslate2's int8 encoder output, the features of the heads before layers
    layers: tuple[int, ...] = ()

    def __post_init__(self):  # a report's JSON gives a list; keep it hashable
        object.__setattr__(self, "layers", tuple(self.layers))


# The encoder's output against its layers, with the recipe of the head before layers (mean pooling, voice
# statistics, 12 augmented and 12 reverberant copies). Pooling, voice statistics and copies were chosen on the
# output's features by the grid of 48 settings in docs/speech_routes.md.
LAYER_SETS = ((), (2,), (2, 3), (2, 3, 4), (1, 2, 3, 4))
GRID = tuple(HeadConfig("mean", 12, c, True, 12, layers) for layers in LAYER_SETS for c in (0.003, 0.01, 0.03))


def training_rows(stats: str, copies: int, padded: bool = False, pad_s: float | None = None,
                  voice: bool = False, rooms: int = 0, layers: tuple[int, ...] = ()) -> dict[str, np.ndarray]:
    """Feature rows of training-actor clips: x, label, actor, clip index, and whether the row is clean."""
    clips = ravdess.clips()
    parts = [("clean", True)] + [(v, False) for v in AUGMENTED[:copies] + REVERBERANT[:rooms]]
    xs, cs, clean = [], [], []
    for variant, is_clean in parts:
        x, ci = wf.load(variant, stats, padded, pad_s, voice, layers)
        keep = np.array([clips[i].actor in ravdess.TRAIN_ACTORS for i in ci])
        xs.append(x[keep])
        cs.append(ci[keep])
        clean.append(np.full(int(keep.sum()), is_clean))
    clip = np.concatenate(cs)
    return {"x": np.concatenate(xs), "clip": clip, "clean": np.concatenate(clean),
            "label": np.array([clips[i].label for i in clip]), "actor": np.array([clips[i].actor for i in clip])}


def fit(cfg: HeadConfig, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) of a standardised logistic regression, folded so that logits = x @ W + b on raw features."""
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(0), x.std(0) + 1e-6
    m = LogisticRegression(C=cfg.c, max_iter=3000).fit((x - mean) / scale, y)
    w = (m.coef_ / scale).T
    return w.astype(np.float64), (m.intercept_ - (m.coef_ * mean / scale).sum(1)).astype(np.float64)


def clip_log_probs(head: tuple[np.ndarray, np.ndarray], x: np.ndarray, clip: np.ndarray):
    """Each clip's log of the mean window probability (what the device's predict averages), by clip index."""
    z = x @ head[0] + head[1]
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    ids = np.unique(clip)
    return ids, np.log(np.stack([p[clip == i].mean(0) for i in ids]) + 1e-12)


def room_rows(stats: str, voice: bool, layers: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The training actors' clips in a room (ROOM): features, clip index and actor of each window."""
    x, clip = wf.load(ROOM, stats, voice=voice, layers=layers)
    clips = ravdess.clips()
    return x, clip, np.array([clips[i].actor for i in clip])


def cross_validate(cfg: HeadConfig, rows: dict, room: tuple | None = None) -> dict:
    """Clip-level accuracy and macro-F1 per fold, the out-of-fold log-probabilities, and the fold heads; with
    `room` (room_rows), the accuracy on the validation actors' reverberant clips as well."""
    pool = np.array(sorted(ravdess.TRAIN_ACTORS))
    clips = ravdess.clips()
    scores, room_scores, heads, oof = [], [], [], {}
    for _, va in ravdess.actor_folds(pool, 5):
        held = np.isin(rows["actor"], pool[va])
        head = fit(cfg, rows["x"][~held], rows["label"][~held])
        ev = held & rows["clean"]
        ids, lp = clip_log_probs(head, rows["x"][ev], rows["clip"][ev])
        scores.append(accuracy_and_macro_f1(np.array([clips[i].label for i in ids]), lp.argmax(1)))
        oof.update({int(i): v for i, v in zip(ids, lp, strict=True)})
        heads.append(head)
        if room is not None:
            sel = np.isin(room[2], pool[va])
            ids, lp = clip_log_probs(head, room[0][sel], room[1][sel])
            room_scores.append(accuracy_and_macro_f1(np.array([clips[i].label for i in ids]), lp.argmax(1))[0])
    out = {"accuracy": float(np.mean([s[0] for s in scores])), "accuracy_std": float(np.std([s[0] for s in scores])),
           "macro_f1": float(np.mean([s[1] for s in scores])), "folds": [list(s) for s in scores],
           "oof": oof, "heads": heads}
    if room is not None:
        out["room_accuracy"] = float(np.mean(room_scores))
    return out


def selection_score(r: dict) -> float:
    """What the grid maximises: the mean of clean and reverberant CV accuracy (clean alone without a room score)."""
    return (r["accuracy"] + r["room_accuracy"]) / 2 if "room_accuracy" in r else r["accuracy"]


def train(out: Path, grid=GRID) -> dict:
    """Cross-validate the grid, keep the best, and save its fold-mean head (W, b) and the report beside it."""
    t0 = time.perf_counter()
    clips = ravdess.clips()
    results, best, loaded = [], None, None
    for cfg in grid:
        key = (cfg.stats, cfg.copies, cfg.voice, cfg.rooms, cfg.layers)
        if key != loaded:  # the grid's settings come in runs of one key: one set of rows in memory at a time
            rows = training_rows(cfg.stats, cfg.copies, voice=cfg.voice, rooms=cfg.rooms, layers=cfg.layers)
            room, loaded = room_rows(cfg.stats, cfg.voice, cfg.layers), key
        r = cross_validate(cfg, rows, room)
        results.append({"config": asdict(cfg), "cv_accuracy": round(r["accuracy"], 4),
                        "cv_accuracy_std": round(r["accuracy_std"], 4), "cv_macro_f1": round(r["macro_f1"], 4),
                        "cv_room_accuracy": round(r["room_accuracy"], 4)})
        print(json.dumps(results[-1]), flush=True)
        if best is None or selection_score(r) > selection_score(best[1]):
            best = (cfg, r)
    cfg, r = best
    ids = np.array(sorted(r["oof"]))
    oof = np.stack([r["oof"][i] for i in ids])
    temperature = round(fit_temperature(np.array([clips[i].label for i in ids]), oof), 2)
    w = np.mean([h[0] for h in r["heads"]], axis=0)
    b = np.mean([h[1] for h in r["heads"]], axis=0)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, w=w, b=b)
    report = {"grid": results, "chosen": asdict(cfg), "cv_accuracy": round(r["accuracy"], 4),
              "cv_accuracy_std": round(r["accuracy_std"], 4), "cv_macro_f1": round(r["macro_f1"], 4),
              "cv_room_accuracy": round(r["room_accuracy"], 4),
              "cv_folds": r["folds"], "calibration_temperature": temperature,
              "oof": {"clip": ids.tolist(), "logp": np.round(oof, 5).tolist()},
              "seconds": round(time.perf_counter() - t0, 1)}
    out.with_suffix(".json").write_text(json.dumps(report) + "\n")
    return report


def compare_padding(pad_lengths: list[float]) -> list[dict]:
    """Cross-validation on clean training clips only (no augmented copies) for each way of feeding the encoder:
    each window alone (as shipped), each window followed by silence to each of `pad_lengths` seconds, and one
    30 s padded pass per clip (Whisper's own). Best C per pooling; the test actors are not read."""
    modes = [("window alone", False, None)] + [(f"window + silence to {p:g} s", False, p) for p in pad_lengths]
    out = []
    for name, padded, pad_s in [*modes, ("30 s padded pass per clip", True, None)]:
        for stats in ("mean", "mean+std"):
            rows = training_rows(stats, 0, padded, pad_s)
            scores = [(c, cross_validate(HeadConfig(stats, 0, c), rows)) for c in (0.01, 0.03, 0.1, 0.3)]
            c, r = max(scores, key=lambda cr: cr[1]["accuracy"])
            out.append({"features": name, "stats": stats, "c": c, "cv_accuracy": round(r["accuracy"], 4),
                        "cv_accuracy_std": round(r["accuracy_std"], 4), "cv_macro_f1": round(r["macro_f1"], 4)})
            print(json.dumps(out[-1]), flush=True)
    return out


def compare_layers() -> list[dict]:
    """Cross-validation on clean training clips only (no copies), the voice statistics beside, for each set of
    the encoder's layers in LAYER_SETS and each layer alone; best C of three per row, the test actors not read."""
    out = []
    for layers in dict.fromkeys([(1,), (2,), (3,), (4,), *LAYER_SETS]):
        rows = training_rows("mean", 0, voice=True, layers=layers)
        scores = [(c, cross_validate(HeadConfig("mean", 0, c, True, 0, layers), rows)) for c in (0.003, 0.01, 0.03)]
        c, r = max(scores, key=lambda cr: cr[1]["accuracy"])
        out.append({"layers": list(layers) or "output (CTranslate2 int8)", "c": c,
                    "cv_accuracy": round(r["accuracy"], 4), "cv_accuracy_std": round(r["accuracy_std"], 4),
                    "cv_macro_f1": round(r["macro_f1"], 4)})
        print(json.dumps(out[-1]), flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converter.train_speech_head", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=cache_dir() / "speech_head" / "head.npz")
    parser.add_argument("--compare-padding", type=float, nargs="+", metavar="SECONDS",
                        help="only compare padded and unpadded encoder features in cross-validation (clean clips)")
    parser.add_argument("--compare-layers", action="store_true",
                        help="only compare the encoder's layers in cross-validation (clean clips, voice statistics)")
    args = parser.parse_args(argv)
    if args.compare_layers:
        compare_layers()
        return 0
    if args.compare_padding:
        compare_padding(args.compare_padding)
        return 0
    report = train(args.out)
    print(json.dumps({k: v for k, v in report.items() if k not in ("oof", "grid")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
