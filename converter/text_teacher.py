"""A teacher for the text model: several fine-tuned runs' predictions on the training rows, averaged.

An ensemble of runs scores better on dev than any one of them, but the device has room for one model (25 MB).
`python -m converter teach-text RUN_OR_WEIGHTS... --out FILE` runs each model over GoEmotions train and saves
the mean of their log-probabilities; `train-text --teacher FILE --distill W` then trains one model on
(1 - W) x the labels' loss plus W x the cross-entropy against the teacher's softened probabilities
(Hinton et al. 2015, "Distilling the knowledge in a neural network"). The dev and test splits are not read.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from converter import goemotions

logger = logging.getLogger(__name__)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def teach(items: list[Path], out: Path, threads: int = 2) -> dict:
    """Save the mean log-probabilities of `items` on the training rows to `out` (.npz). An item is a run or a
    weights file, or an exported `.tflite` model (the committed one, say) with its metrics file beside it in
    `cards/`: its dev offsets are taken off its logits, so that it teaches the run's own probabilities."""
    from converter.text_soup import weight_file

    train = goemotions.load("train")
    total = np.zeros((len(train.texts), len(train.targets[0])), np.float64)
    sources = [str(Path(i) if Path(i).suffix == ".tflite" else weight_file(i)) for i in items]
    for source, times in Counter(sources).items():  # an item listed n times weighs n: its logits are made once
        logits = exported_logits(Path(source), train.texts, threads) if source.endswith(".tflite") \
            else run_logits(Path(source), train.texts, threads)
        total += times * log_softmax(logits)
        logger.info("teacher: %s done", source)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, log_probs=(total / len(items)).astype(np.float32), sources=json.dumps(sources))
    return {"rows": len(train.texts), "sources": sources, "out": str(out)}


def run_logits(item: Path, texts: list[str], threads: int = 2) -> np.ndarray:
    """A training run's (its best epoch) or a weights file's logits, built with the encoder its run recorded."""
    import keras
    import tensorflow as tf

    from converter.text_soup import encoder_of_weights, weight_file
    from converter.train_text import build_encoder, predict_logits

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already started in this process: keep its threads
        pass
    keras.mixed_precision.set_global_policy("float32")
    file = weight_file(item)
    net, tokenizer = build_encoder(encoder_of_weights(file))
    net.load_weights(file)
    return predict_logits(net, tokenizer, texts)


def exported_logits(model: Path, texts: list[str], threads: int = 2, batch: int = 64) -> np.ndarray:
    """An exported text model's logits without the dev offsets export-text added to its bias (read from
    `cards/text_emotion_metrics.json` beside the model)."""
    from device.models.text_emotion import TextEmotionModel

    metrics = Path(model).parent / "cards" / "text_emotion_metrics.json"
    try:
        offsets = np.asarray(json.loads(metrics.read_text())["dev"]["offsets"], np.float32)
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{model}: its dev offsets are not readable from {metrics} ({exc})") from exc
    from converter.train_text import logits_by_length

    net = TextEmotionModel.load(path=model, threads=threads)
    return logits_by_length(net.logits_batch, net.tokenizer, texts, batch) - offsets


def load_teacher(path: Path, rows: int) -> np.ndarray:
    """The teacher's log-probabilities, [rows, 7]; ValueError when the file holds another number of rows."""
    log_probs = np.load(path)["log_probs"]
    if log_probs.shape[0] != rows:
        raise ValueError(f"{path}: a teacher for {log_probs.shape[0]} rows, the training split has {rows}")
    return log_probs
