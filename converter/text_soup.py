"""A uniform "model soup" of fine-tuned text models: their weights averaged into one model of the same size.

Runs fine-tuned from the same MiniLM weights (other seeds, a second stage, an auxiliary head) land close enough
in weight space for their average to work as one model, often a little better than any of them, at no cost on
the device. `python -m converter soup-text RUN_OR_WEIGHTS... --work-dir OUT` averages them, scores the soup on
the dev split's single-label rows, and writes OUT as a training run (`epoch1.weights.h5`, `history.json`) that
`python -m converter export-text --work-dir OUT` exports as it would any run. The test split is not read.

Besides the plain dev macro-F1 it reports a *cross-calibrated* one: export-text fits per-class logit offsets on
dev (`export_text.bagged_offsets`), which flatters dev; here offsets are fitted the same way on one random half
of dev and scored on the other, both ways, over three halvings, so that soups and single runs compare as export
would calibrate them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from converter import goemotions
from converter.metrics import accuracy_and_macro_f1
from converter.pretrained import MINILM, model_folder

logger = logging.getLogger(__name__)


def weight_file(item: Path) -> Path:
    """A weights file, or a training run's folder (its best epoch, from history.json)."""
    item = Path(item)
    if item.is_dir():
        history = json.loads((item / "history.json").read_text())
        return item / f"epoch{history['best']['epoch']}.weights.h5"
    return item


def encoder_of_weights(file: Path) -> str:
    """The encoder a weights file was trained with, from its run's history.json (MiniLM when there is none)."""
    from converter.train_text import encoder_of

    history = Path(file).parent / "history.json"
    return encoder_of(json.loads(history.read_text()).get("recipe") or {} if history.exists() else {})


def cross_calibrated_f1(y: np.ndarray, logits: np.ndarray, halvings: int = 3,
                        bags: int | None = None) -> tuple[float, float]:
    """Mean and standard deviation of macro-F1 with offsets fitted on one half of the rows, scored on the other.

    The offsets are fitted as export-text fits them (`bagged_offsets`); `bags` overrides its number of resamples.
    """
    from converter.export_text import BAGS, bagged_offsets

    scores = []
    for seed in range(halvings):
        half = np.random.default_rng(seed).random(len(y)) < 0.5
        for fit_rows, eval_rows in ((half, ~half), (~half, half)):
            offsets = bagged_offsets(y[fit_rows], logits[fit_rows], bags or BAGS)
            scores.append(accuracy_and_macro_f1(y[eval_rows], (logits[eval_rows] + offsets).argmax(1))[1])
    return float(np.mean(scores)), float(np.std(scores))


def soup(items: list[Path], work_dir: Path) -> dict:
    """Average the weights of `items`, score the soup on dev, and save it as a run in `work_dir`."""
    import keras

    from converter.swa import mean_weights
    from converter.text_net import build_text_model
    from converter.train_text import predict_logits
    from device.models.text_tokens import load_tokenizer

    files = [weight_file(i) for i in items]
    for file in files:
        if (encoder := encoder_of_weights(file)) != "minilm":
            raise ValueError(f"{file}: a run of {encoder}; soup-text averages MiniLM runs only")
    keras.mixed_precision.set_global_policy("float32")
    net = build_text_model()
    net.set_weights(mean_weights(net, files, net.load_weights))
    dev = goemotions.load("dev")
    logits = predict_logits(net, load_tokenizer(model_folder(MINILM) / "tokenizer.json"), dev.texts)[dev.single]
    y = dev.labels()[dev.single]
    acc, f1 = accuracy_and_macro_f1(y, logits.argmax(1))
    cal, cal_sd = cross_calibrated_f1(y, logits)
    record = {"epoch": 1, "dev_accuracy": acc, "dev_macro_f1": f1, "dev_cross_calibrated_macro_f1": cal,
              "dev_cross_calibrated_sd": cal_sd}
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    net.save_weights(work_dir / "epoch1.weights.h5")
    history = {"epoch": 1, "history": [record], "best": record, "precision": "float32",
               "recipe": {"soup": [str(f) for f in files]}}
    (work_dir / "history.json").write_text(json.dumps(history, indent=2))
    logger.info("soup of %d: dev accuracy %.4f macro-F1 %.4f, cross-calibrated %.4f (sd %.4f)", len(files), acc, f1,
                cal, cal_sd)
    return record
