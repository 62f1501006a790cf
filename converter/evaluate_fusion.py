"""Late fusion of face, speech and text measured on what exists here: RAVDESS pairs and label-paired triples.

No data set holds a classroom's faces, voices and words together, so two measurements stand in:

1. Real pairs: each RAVDESS clip's speech-emotion output fused with the text model's output on the clip's own
   Whisper tiny.en transcript. The two sentences carry no emotion, so fusion must not drag speech towards neutral.
2. Label-paired triples: a FER2013 face, a RAVDESS clip and a GoEmotions sentence drawn independently with the
   same label, fused. This assumes the modalities err independently, which a classroom does not give.

The fusion settings (per-modality weights and neutral discounts) are chosen by a small grid search on validation
data only: FER2013's validation faces (carved from train/ as training carved them), RAVDESS actors 1-18 (the
speech model's training actors: out-of-fold outputs where the model ships them, else over-confident ones) and
GoEmotions dev. The test sets are
scored once, with the chosen setting, which goes into the manifest's `fusion` section for the device.
Per-modality probabilities are computed through the device's model classes and cached outside the repository.
"""

from __future__ import annotations

import itertools
import json
import logging
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converter import goemotions, ravdess
from converter.datasets import REPO_ROOT, cache_dir, load_fer2013, stratified_split
from converter.metrics import accuracy_and_macro_f1
from device.contract.labels import LABELS
from device.fusion import FusionConfig, evidence_factor

logger = logging.getLogger(__name__)

MODELS = REPO_ROOT / "models_tflite"
WHISPER_DIR = MODELS / "whisper-tiny.en"
MODALITIES = ("face", "speech", "text")
NEUTRAL = LABELS.index("neutral")
# FER2013 validation as converter/train_face.py carves it (face_splits: VAL_FRACTION 0.1, seed 13); repeated
# here so this module does not import the training code and TensorFlow with it.
FER_VAL_FRACTION, FER_VAL_SEED = 0.1, 13
PER_LABEL = 300  # triples per label: 2,100 per set, every label equally often
SEEDS = {"validation": 17, "test": 18}
# The grid: weights relative to the face's (only ratios matter), and neutral discounts d (weight x (1 - d P(neutral))).
WEIGHT_GRID = {"face": (1.0,), "speech": (0.25, 0.5, 1.0, 2.0, 4.0), "text": (0.25, 0.5, 1.0, 2.0, 4.0)}
DISCOUNT_GRID = {"face": (0.0, 0.5), "speech": (0.0, 0.5, 0.9), "text": (0.0, 0.5, 0.9, 1.0)}
PAIR_TARGET_DROP = 0.01  # the requirement: on the test actors, fused speech+text loses at most 1 point to speech
# On validation (actors 1-18) a setting may lose nothing: the requirement's 1 point is left as the margin for the
# step to unseen actors. With a 1-point allowance on validation too, the chosen setting lost 0.9 points there and
# 1.4 on the test actors (the head with voice statistics, docs/fusion.md).
MAX_PAIR_DROP = 0.0


# --- fusion, vectorised --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One point of the grid: a weight and a neutral discount per modality."""

    weights: tuple[float, float, float]  # face, speech, text
    discounts: tuple[float, float, float]

    def weight(self, m: str) -> float:
        return self.weights[MODALITIES.index(m)]

    def discount(self, m: str) -> float:
        return self.discounts[MODALITIES.index(m)]

    def as_config(self) -> dict:
        """The FusionConfig fields (and manifest entries) of this setting."""
        return {"weights": dict(zip(MODALITIES, self.weights, strict=True)),
                "neutral_discount": dict(zip(MODALITIES, self.discounts, strict=True))}


NEUTRAL_SETTING = Setting((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))  # the device's defaults before this evaluation


def confidences(q: np.ndarray, measure: str) -> np.ndarray:
    """Row-wise `device.fusion.confidence` of an (n, 7) array."""
    if measure == "entropy":
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -np.where(q > 0, q * np.log(q), 0.0).sum(axis=1)
        c = 1.0 - h / np.log(q.shape[1])
    else:
        c = (q.max(axis=1) - 1.0 / q.shape[1]) / (1.0 - 1.0 / q.shape[1])
    return np.clip(c, 0.0, 1.0)


def fuse(probs: dict[str, np.ndarray], setting: Setting, config: FusionConfig | None = None) -> np.ndarray:
    """LateFusion's per-window distribution (before smoothing) for windows with one row per modality given.

    `probs` maps modality -> (n, 7) calibrated probabilities; tests/test_fusion_eval.py checks this against
    `LateFusion.update`, so what is chosen here is what the device computes.
    """
    cfg = config or FusionConfig()
    num, den = 0.0, 0.0
    for m, q in probs.items():
        q = np.asarray(q, np.float64)
        w = setting.weight(m) * (1.0 - setting.discount(m) * q[:, NEUTRAL])
        if cfg.confidence_weighting:
            w = w * (cfg.confidence_floor + (1.0 - cfg.confidence_floor) * confidences(q, cfg.confidence_measure))
        if cfg.evidence_weighting:
            w = w * evidence_factor(1, getattr(cfg.evidence_half_counts, m))
        num = num + w[:, None] * q
        den = den + w
    den = np.asarray(den)
    uniform = np.full(len(LABELS), 1.0 / len(LABELS))
    return np.where(den[:, None] > 0, num / np.maximum(den, 1e-300)[:, None], uniform)


def scores(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    acc, f1 = accuracy_and_macro_f1(np.asarray(y), np.asarray(probs).argmax(axis=1), len(LABELS))
    return {"accuracy": round(acc, 4), "macro_f1": round(f1, 4)}


# --- label-paired triples --------------------------------------------------------------------------------------------


def sample_triples(labels: dict[str, np.ndarray], per_label: int = PER_LABEL,
                   seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Draw `per_label` index triples per label, each modality's row from its own pool with that label.

    Returns ({modality: row indices into that modality's arrays}, labels). Rows are drawn without replacement
    while a pool is large enough, else with replacement (RAVDESS test has 48 clips per emotion).
    """
    rng = np.random.default_rng(seed)
    chosen: dict[str, list[np.ndarray]] = {m: [] for m in labels}
    for k in range(len(LABELS)):
        for m, y in labels.items():
            pool = np.flatnonzero(np.asarray(y) == k)
            if not len(pool):
                raise ValueError(f"{m} has no row labelled {LABELS[k]}: cannot pair it")
            chosen[m].append(rng.choice(pool, size=per_label, replace=len(pool) < per_label))
    y = np.repeat(np.arange(len(LABELS)), per_label)
    return {m: np.concatenate(v) for m, v in chosen.items()}, y


def triples(probs: dict[str, np.ndarray], labels: dict[str, np.ndarray], seed: int,
            per_label: int = PER_LABEL) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The probabilities of sampled label-paired triples: ({modality: (n, 7)}, labels)."""
    idx, y = sample_triples(labels, per_label, seed)
    return {m: probs[m][idx[m]] for m in probs}, y


def subsets(modalities=MODALITIES) -> list[tuple[str, ...]]:
    """Every non-empty combination of the modalities, singles first."""
    return [c for r in range(1, len(modalities) + 1) for c in itertools.combinations(modalities, r)]


def triple_table(probs: dict[str, np.ndarray], y: np.ndarray, setting: Setting, config=None) -> dict[str, dict]:
    """Scores of each single modality, each pair and all three (fused with `setting`) on the same triples."""
    return {"+".join(c): scores(y, fuse({m: probs[m] for m in c}, setting, config)) for c in subsets(tuple(probs))}


# --- the choice, on validation data only --------------------------------------------------------------------------


def grid() -> list[Setting]:
    """Every setting of the grid, the default (equal weights, no discounts) first."""
    ws = itertools.product(*(WEIGHT_GRID[m] for m in MODALITIES))
    ds = list(itertools.product(*(DISCOUNT_GRID[m] for m in MODALITIES)))
    out = [Setting(w, d) for w in ws for d in ds]
    out.sort(key=lambda s: s != NEUTRAL_SETTING)
    return out


def choose(val_triples: dict[str, np.ndarray], val_y: np.ndarray, pair_speech: np.ndarray, pair_text: np.ndarray,
           pair_y: np.ndarray, settings: list[Setting] | None = None, config=None) -> tuple[Setting, list[dict]]:
    """Pick the setting with the best macro-F1 on the validation triples among those whose fused speech+text
    pairs lose at most MAX_PAIR_DROP accuracy against speech alone; returns (setting, table of every setting).

    Takes validation arrays only; ties go to the setting listed first (the default, then the grid's order).
    """
    settings = settings or grid()
    speech_acc = scores(pair_y, pair_speech)["accuracy"]
    table = []
    for s in settings:
        pair = scores(pair_y, fuse({"speech": pair_speech, "text": pair_text}, s, config))
        tri = scores(val_y, fuse(val_triples, s, config))
        table.append({**s.as_config(), "triples": tri, "pairs": pair,
                      "pairs_ok": pair["accuracy"] >= speech_acc - MAX_PAIR_DROP - 1e-9})
    allowed = [i for i, row in enumerate(table) if row["pairs_ok"]]
    if not allowed:
        raise ValueError("no setting keeps fused pairs as accurate as speech alone on validation")
    best = max(allowed, key=lambda i: (table[i]["triples"]["macro_f1"], -i))
    return settings[best], table


# --- per-modality probabilities, through the device's model classes, cached outside the repository --------------


def _cached(name: str, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
    path = cache_dir() / f"fusion_{name}_{key[:16]}.npy"
    if path.exists():
        return np.load(path)
    started = time.perf_counter()
    out = np.asarray(compute(), np.float64)
    np.save(path, out)
    logger.info("%s: %d rows in %.0f s (cached in %s)", name, len(out), time.perf_counter() - started, path)
    return out


def face_data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"validation"|"test": (calibrated probabilities, labels)} of the committed int8 face model, as fusion
    receives them: the model's softmax with its mirror gate, calibrated by its manifest temperature."""
    from device.fusion import calibrate
    from device.models.face_emotion import FaceEmotionModel

    model = FaceEmotionModel.load()
    x, y = load_fer2013("train")
    _, va = stratified_split(y, FER_VAL_FRACTION, FER_VAL_SEED)
    xte, yte = load_fer2013("test")
    out = {}
    for split, xs, ys in (("validation", x[va], y[va]), ("test", xte, yte)):
        raw = _cached(f"face_{split}", model.entry.sha256,
                      lambda xs=xs: np.concatenate([model.predict_batch(list(xs[i:i + 256]))
                                                    for i in range(0, len(xs), 256)]))
        out[split] = (calibrate(raw, model.temperature), ys)
    return out


def speech_data(clips: list[ravdess.Clip]) -> tuple[np.ndarray, str]:
    """(n, 7) calibrated probabilities of the committed int8 speech model on each clip's voiced part, and a note
    on how the outputs for actors 1-18 (where fusion is chosen) were made.

    Where the model's manifest entry names out-of-fold outputs (a head whose fold models each left some
    training actors out), those replace the model's own outputs on the training actors' clips."""
    from converter.export_speech import voiced_part
    from device.models.speech_emotion import SpeechEmotionModel

    model = SpeechEmotionModel.load()
    out = _cached("speech_ravdess", model.entry.sha256,
                  lambda: np.stack([model.predict(voiced_part(ravdess.read_wave(c.path))) for c in clips]))
    oof_file = model.entry.meta.get("out_of_fold")
    if not oof_file:
        return out, "the speech model was trained on actors 1-18, so its validation outputs are over-confident"
    oof = json.loads((model.entry.path.parent / oof_file).read_text())["probabilities"]
    for i, c in enumerate(clips):
        if c.actor in ravdess.TRAIN_ACTORS:
            out[i] = oof[c.path.name]
    return out, ("the speech model's outputs on actors 1-18 are out-of-fold: each comes from the fold model that "
                 "did not train on that actor")


def text_model():
    from device.models.text_emotion import TextEmotionModel

    return TextEmotionModel.load()


def text_probs(model, name: str, texts: list[str]) -> np.ndarray:
    """(n, 7) calibrated probabilities of the text model, 64 sentences a call."""
    import hashlib

    key = hashlib.sha256((model.entry.sha256 + "\n".join(texts)).encode()).hexdigest()
    return _cached(f"text_{name}", key, lambda: np.concatenate(
        [model.predict_batch(texts[i:i + 64]) for i in range(0, len(texts), 64)]))


def transcripts_path() -> Path:
    """The transcript cache (outside the repository; RAVDESS words only, kept for re-runs)."""
    return cache_dir() / "fusion_ravdess_transcripts.json"


def transcribe_ravdess(clips: list[ravdess.Clip], path: Path | None = None) -> dict[str, str]:
    """Whisper tiny.en's transcript of each clip, keyed by file name; cached and resumed from `path`."""
    path = path or transcripts_path()
    done: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    todo = [c for c in clips if c.path.name not in done]
    if not todo:
        return done
    from faster_whisper import WhisperModel

    logging.getLogger("faster_whisper").setLevel(logging.WARNING)
    # The device's decoding (device/speech_to_text/whisper.py): int8, one thread, greedy, no VAD, no timestamps.
    model = WhisperModel(str(WHISPER_DIR), device="cpu", compute_type="int8", cpu_threads=1, num_workers=1,
                         local_files_only=True)
    t0 = time.perf_counter()
    for i, clip in enumerate(todo, 1):
        segments, _ = model.transcribe(ravdess.read_wave(clip.path), language="en", beam_size=1, temperature=0.0,
                                       vad_filter=False, without_timestamps=True, condition_on_previous_text=False)
        done[clip.path.name] = " ".join(s.text.strip() for s in segments)
        if i % 10 == 0 or i == len(todo):
            path.write_text(json.dumps(done, indent=0, sort_keys=True))
            logger.info("transcribed %d/%d clips (%.2f s each)", i, len(todo), (time.perf_counter() - t0) / i)
    return done


# --- the evaluation ------------------------------------------------------------------------------------------------


def _neutral_share(probs: np.ndarray) -> float:
    return round(float((probs.argmax(axis=1) == NEUTRAL).mean()), 4)


def _machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    return {"cpu": cpu, "date": time.strftime("%Y-%m-%d", time.gmtime()), "commit": commit,
            "command": "python -m converter evaluate-fusion"}


def _transcribed(clips: list[ravdess.Clip], complete: bool) -> tuple[list[ravdess.Clip], dict[str, str]]:
    """The clips to pair and their transcripts: every clip, or (complete=False) every test-actor clip and the
    training-actor clips already in the transcript cache."""
    if complete:
        return clips, transcribe_ravdess(clips)
    path = transcripts_path()
    cached = json.loads(path.read_text()) if path.exists() else {}
    keep = [c for c in clips if c.actor in ravdess.TEST_ACTORS or c.path.name in cached]
    return keep, transcribe_ravdess(keep)


def evaluate(write: bool = True, complete: bool = True) -> dict:
    """Choose the fusion setting on validation, score the test sets once, and write the card and manifest.

    With complete=False the actors 1-18 pairs use only the clips already transcribed (their count is reported).
    """
    every = ravdess.clips()
    clips, words = _transcribed(every, complete)
    paired = {c.path.name for c in clips}
    speech_every, speech_note = speech_data(every)
    every_y = np.array([c.label for c in every])
    every_test = np.array([c.actor in ravdess.TEST_ACTORS for c in every])
    speech = speech_every[[c.path.name in paired for c in every]]  # the clips with transcripts
    actors = np.array([c.actor for c in clips])
    ravdess_y = np.array([c.label for c in clips])
    test_clips = np.isin(actors, list(ravdess.TEST_ACTORS))
    val_clips = np.isin(actors, list(ravdess.TRAIN_ACTORS))
    faces = face_data()
    model = text_model()
    spoken = text_probs(model, "ravdess_transcripts", [words[c.path.name] for c in clips])
    go = {}
    for split, name in (("validation", "dev"), ("test", "test")):
        data = goemotions.load(name)
        rows = np.flatnonzero(data.single)  # single-label rows: one right answer each
        go[split] = (text_probs(model, f"goemotions_{name}", [data.texts[i] for i in rows]), data.labels()[rows])

    cfg = FusionConfig()
    # The choice: validation arrays only.
    val_probs = {"face": faces["validation"][0], "speech": speech_every[~every_test], "text": go["validation"][0]}
    val_labels = {"face": faces["validation"][1], "speech": every_y[~every_test], "text": go["validation"][1]}
    vt, vy = triples(val_probs, val_labels, SEEDS["validation"])
    chosen, table = choose(vt, vy, speech[val_clips], spoken[val_clips], ravdess_y[val_clips], config=cfg)
    logger.info("chosen on validation: %s", chosen.as_config())

    # The test sets, once, with the chosen setting (and the equal-weight default beside it for reference).
    test_probs = {"face": faces["test"][0], "speech": speech_every[every_test], "text": go["test"][0]}
    test_labels = {"face": faces["test"][1], "speech": every_y[every_test], "text": go["test"][1]}
    tt, ty = triples(test_probs, test_labels, SEEDS["test"])

    def pairs(mask: np.ndarray, setting: Setting) -> dict:
        y = ravdess_y[mask]
        return {"n": int(mask.sum()), "speech": scores(y, speech[mask]), "text": scores(y, spoken[mask]),
                "fused": scores(y, fuse({"speech": speech[mask], "text": spoken[mask]}, setting, cfg))}

    chosen_row = next(r for r in table if r["weights"] == chosen.as_config()["weights"]
                      and r["neutral_discount"] == chosen.as_config()["neutral_discount"])
    report = {
        "machine": _machine(),
        "chosen": {**chosen.as_config(), "temperatures": None},
        "chosen_on": {
            "triples": f"{PER_LABEL} per label (seed {SEEDS['validation']}) from FER2013 validation "
                       f"({FER_VAL_FRACTION:.0%} of train/, seed {FER_VAL_SEED}), RAVDESS actors 1-18 and GoEmotions "
                       "dev single-label rows; best macro-F1",
            "constraint": "fused speech+text accuracy on RAVDESS actors 1-18 not below speech alone"
                          + ("" if complete else f" (the {int(val_clips.sum())} clips of actors 1-18 transcribed)"),
            "caveat": speech_note,
            "grid": {"weights": WEIGHT_GRID, "neutral_discount": DISCOUNT_GRID, "settings": len(table)},
            "validation": {"triples": chosen_row["triples"], "pairs": chosen_row["pairs"],
                           "triples_equal_weights": table[0]["triples"], "pairs_equal_weights": table[0]["pairs"]},
        },
        "fusion_config": {k: v for k, v in cfg.model_dump().items()
                          if k in ("confidence_weighting", "confidence_measure", "confidence_floor",
                                   "evidence_weighting")},
        "pairs": {"test_actors": pairs(test_clips, chosen), "actors_1_18": pairs(val_clips, chosen),
                  "test_actors_equal_weights": pairs(test_clips, NEUTRAL_SETTING)},
        "text_neutral_share": {"test_actors": _neutral_share(spoken[test_clips]),
                               "actors_1_18": _neutral_share(spoken[val_clips])},
        "triples": {"n": len(ty), "per_label": PER_LABEL, "seed": SEEDS["test"],
                    "pools": {m: len(test_labels[m]) for m in MODALITIES},
                    "chosen": triple_table(tt, ty, chosen, cfg),
                    "equal_weights": triple_table(tt, ty, NEUTRAL_SETTING, cfg)},
    }
    t = report["triples"]["chosen"]
    best_single = max(t[m]["accuracy"] for m in MODALITIES)
    p = report["pairs"]["test_actors"]
    report["targets"] = {
        "pairs_fused_within_1_point_of_speech": p["fused"]["accuracy"] >= p["speech"]["accuracy"] - PAIR_TARGET_DROP,
        "triples_fused_at_least_best_single_plus_5_points": t["face+speech+text"]["accuracy"] >= best_single + 0.05,
    }
    print(json.dumps(report, indent=1))
    if write:
        (MODELS / "cards").mkdir(exist_ok=True)
        (MODELS / "cards" / "fusion_metrics.json").write_text(json.dumps(report, indent=2) + "\n")
        write_manifest_section(manifest_section(report), MODELS)
    return report


def manifest_section(report: dict) -> dict:
    """The manifest's `fusion` section: what the device reads (device.fusion.with_manifest_settings)."""
    return {
        "weights": report["chosen"]["weights"],
        "neutral_discount": report["chosen"]["neutral_discount"],
        "temperatures": None,
        "temperatures_note": "not tuned: each model's own calibration temperature stands (the speech model's "
                             "validation outputs come from its training actors and would mis-set one)",
        "chosen_on": report["chosen_on"]["triples"] + "; " + report["chosen_on"]["constraint"],
        "metrics": "cards/fusion_metrics.json",
        "command": "python -m converter evaluate-fusion",
    }


def write_manifest_section(section: dict, folder: Path | None = None) -> Path:
    """Set the manifest's top-level `fusion` key, keeping everything else (locked read-modify-write)."""
    from device.models.manifest_tools import update_manifest

    def put(manifest: dict) -> None:
        manifest["fusion"] = section

    path = update_manifest(put, folder)
    logger.info("manifest %s: wrote the fusion section", path)
    return path
