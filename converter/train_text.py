"""Fine-tune all-MiniLM-L6-v2 on GoEmotions (Ekman grouping) for the 7 labels.

Every weight is trained (a frozen encoder with a linear head reaches only about 0.43 macro-F1). Rows are
bucketed by length so a batch pads little; the run saves a checkpoint (weights, optimiser state, position in
the schedule) every `checkpoint_every` steps and resumes from it when started again. After each epoch the model
is scored on the dev split's single-label rows; the epoch with the best dev macro-F1 is kept. The test split
is read only by export-text.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from converter import goemotions
from converter.datasets import cache_dir
from converter.metrics import accuracy_and_macro_f1
from converter.pretrained import MINILM, MPNET, model_folder
from device.contract.labels import LABELS
from device.models.text_tokens import encode, load_tokenizer

logger = logging.getLogger(__name__)

RECIPE = {"epochs": 1, "lr": 5e-5, "batch_size": 32, "warmup": 0.06, "weight_decay": 0.01,
          "class_weight_power": 0.5, "dropout": 0.1, "seed": 0, "checkpoint_every": 200, "fine_aux": 0.0,
          "emoevent": False, "teacher": None, "distill": 0.0, "distill_temperature": 2.0}
# fine_aux > 0: a second head, on the same pooled sentence vector, learns GoEmotions' 28 original labels, and its
# cross-entropy (times fine_aux) is added to the loss. Only the 7-way model is saved and exported.
# emoevent: EmoEvent's English training tweets that carry one of the six emotions (converter/emoevent.py) are added
# to the training rows. Dev and test stay GoEmotions'.
# teacher, distill: a teach-text file (converter/text_teacher.py) and the weight W of its term: the loss is
# (1 - W) x the labels' cross-entropy + W x T^2 x the cross-entropy against softmax(teacher / T), T the
# distill_temperature, both weighted by the row's class weight. Rows the teacher has not seen use their labels.
# encoder (absent = "minilm"): "mpnet" fine-tunes all-mpnet-base-v2 instead (converter/mpnet_net.py), a teacher
# about 110 MB in int8 against the device's 25 MB; export-text refuses such a run.
ENCODERS = {"minilm": MINILM, "mpnet": MPNET}


def encoder_of(recipe: dict) -> str:
    name = recipe.get("encoder", "minilm")
    if name not in ENCODERS:
        raise ValueError(f"unknown text encoder {name!r}; one of {sorted(ENCODERS)}")
    return name


def build_encoder(name: str, dropout: float = 0.1, pretrained: bool = False):
    """(the Keras model, its tokenizer) for an encoder name; `pretrained` loads the published weights."""
    from converter.text_net import build_text_model, load_minilm, read_safetensors

    source = model_folder(ENCODERS[name])
    if name == "mpnet":
        from converter.mpnet_net import build_mpnet_model, load_mpnet

        model, load = build_mpnet_model(dropout=dropout), load_mpnet
    else:
        model, load = build_text_model(dropout=dropout), load_minilm
    if pretrained:
        load(model, read_safetensors(source / "model.safetensors"))
    return model, load_tokenizer(source / "tokenizer.json")


def default_work_dir() -> Path:
    return cache_dir() / "train_text"


def class_weights(targets: np.ndarray, power: float) -> np.ndarray:
    """(max count / count) ** power per class, scaled to a mean of 1 over the training rows."""
    counts = targets.sum(axis=0)
    w = (counts.max() / np.maximum(counts, 1.0)) ** power
    return (w / (targets @ w).mean()).astype(np.float32)


def batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Row indices in batches of similar length (sorted with a little noise), in shuffled order."""
    order = np.argsort(lengths + rng.uniform(0, 3, len(lengths)), kind="stable")
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(chunks)
    return chunks


def token_lengths(tokenizer, texts: list[str]) -> np.ndarray:
    return np.array([len(e.ids) for e in tokenizer.encode_batch(texts)])


def logits_by_length(logits_of, tokenizer, texts: list[str], batch_size: int = 128) -> np.ndarray:
    """`logits_of(batch of texts)` for all `texts`, in batches of similar token length (less padding)."""
    order = np.argsort(token_lengths(tokenizer, texts), kind="stable")
    out = np.zeros((len(texts), len(LABELS)), np.float32)
    for i in range(0, len(order), batch_size):
        rows = order[i : i + batch_size]
        out[rows] = logits_of([texts[r] for r in rows])
    return out


def predict_logits(model, tokenizer, texts: list[str], batch_size: int = 128) -> np.ndarray:
    """A Keras text model's logits for `texts`, batched by length."""
    return logits_by_length(lambda batch: np.asarray(model(list(encode(tokenizer, batch)), training=False),
                                                     np.float32), tokenizer, texts, batch_size)


def _save(path: Path, model, optimizer, state: dict) -> None:
    tmp = path.with_suffix(".tmp.npz")
    arrays = {f"w{i}": np.asarray(w) for i, w in enumerate(model.get_weights())}
    arrays.update({f"o{i}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)})
    np.savez(tmp, state=json.dumps(state), **arrays)
    os.replace(tmp, path)


def _restore(path: Path, model, optimizer) -> dict:
    data = np.load(path)
    model.set_weights([data[f"w{i}"] for i in range(len(model.get_weights()))])
    for i, v in enumerate(optimizer.variables):
        v.assign(data[f"o{i}"])
    return json.loads(str(data["state"]))


def train(work_dir: Path | None = None, recipe: dict = RECIPE, threads: int = 2, limit: int | None = None,
          bf16: bool = True, init_from: Path | None = None) -> dict:
    """Run (or resume) the recipe in `work_dir`; return the history. `limit` trains on the first rows only.

    `init_from` starts from an earlier run's weights (an `epochN.weights.h5`) instead of the published MiniLM: a
    second stage with a fresh warm-up and decay. The earlier run's history is carried into this one's.
    """
    if recipe.get("distill") and not recipe.get("teacher"):
        raise ValueError("distill > 0 needs a teacher file (train-text --teacher FILE, made by teach-text)")
    import keras
    import tensorflow as tf

    work_dir = Path(work_dir or default_work_dir())
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already started in this process (a second run, a test): keep its threads
        logger.info("TensorFlow's thread pools are already set; --threads %d is not applied", threads)
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if bf16 else "float32")
    keras.utils.set_random_seed(recipe["seed"])

    model, tokenizer = build_encoder(encoder_of(recipe), recipe["dropout"], pretrained=not init_from)
    train_split, dev = goemotions.load("train"), goemotions.load("dev")
    texts, targets = train_split.texts, train_split.targets
    if limit:
        texts, targets = texts[:limit], targets[:limit]
        dev = goemotions.Split(dev.texts[:limit], dev.targets[:limit], dev.single[:limit])
    fine_aux = float(recipe.get("fine_aux", 0.0))
    fine = goemotions.load_fine("train")[: len(texts)] if fine_aux else np.zeros((len(texts), 1), np.float32)
    distill, temperature = float(recipe.get("distill", 0.0)), float(recipe.get("distill_temperature", 2.0))
    soft = targets
    if distill:
        from converter.text_teacher import load_teacher
        from device.models.face_emotion import softmax

        taught = load_teacher(Path(recipe["teacher"]), len(train_split.texts))[: len(texts)]
        soft = softmax(taught, temperature).astype(np.float32)
    if recipe.get("emoevent"):
        from converter import emoevent

        extra = emoevent.load("train")
        extra_texts, extra_targets = extra.texts[: limit or None], extra.targets[: limit or None]
        texts, targets = texts + extra_texts, np.concatenate([targets, extra_targets])
        soft = np.concatenate([soft, extra_targets])
        fine = np.concatenate([fine, np.zeros((len(extra_texts), fine.shape[1]), np.float32)])
    lengths = token_lengths(tokenizer, texts)
    weights = class_weights(targets, recipe["class_weight_power"])

    net = model  # what the optimiser trains and the checkpoint holds: with fine_aux, the model and its 2nd head
    if fine_aux:
        pooled = keras.layers.Dropout(recipe["dropout"])(model.get_layer("mean_pool").output)
        aux = keras.layers.Dense(fine.shape[1], name="fine_classifier", dtype="float32")(pooled)
        net = keras.Model(model.inputs, [model.output, aux], name="text_emotion_with_fine_head")
    earlier = None
    if init_from:
        model.load_weights(init_from)
        earlier_history = Path(init_from).parent / "history.json"
        earlier = {"weights": str(init_from),
                   "run": json.loads(earlier_history.read_text()) if earlier_history.exists() else None}
    steps_per_epoch = int(np.ceil(len(texts) / recipe["batch_size"]))
    total = steps_per_epoch * recipe["epochs"]
    warmup = max(1, int(total * recipe["warmup"]))
    decay = keras.optimizers.schedules.PolynomialDecay(recipe["lr"], max(1, total - warmup), 0.0)
    schedule = _Warmup(recipe["lr"], warmup, decay)
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=recipe["weight_decay"], clipnorm=1.0)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    optimizer.build(net.trainable_variables)

    signature = [tf.TensorSpec([None, None], tf.int32)] * 2 + [tf.TensorSpec([None, 7], tf.float32),
                                                              tf.TensorSpec([None, fine.shape[1]], tf.float32),
                                                              tf.TensorSpec([None, 7], tf.float32)]

    @tf.function(input_signature=signature, reduce_retracing=True)
    def step(ids, mask, y, y_fine, y_soft):
        with tf.GradientTape() as tape:
            out = net([ids, mask], training=True)
            logits = tf.cast(out[0] if fine_aux else out, tf.float32)
            row_weight = tf.linalg.matvec(y, weights)
            per_row = tf.nn.softmax_cross_entropy_with_logits(y, logits)
            if distill:
                taught = tf.nn.softmax_cross_entropy_with_logits(y_soft, logits / temperature) * temperature ** 2
                per_row = (1.0 - distill) * per_row + distill * taught
            loss = tf.reduce_mean(per_row * row_weight)
            if fine_aux:
                loss += fine_aux * tf.reduce_mean(
                    tf.nn.softmax_cross_entropy_with_logits(y_fine, tf.cast(out[1], tf.float32)))
        grads = tape.gradient(loss, net.trainable_variables)
        optimizer.apply_gradients(zip(grads, net.trainable_variables, strict=True))
        return loss

    checkpoint = work_dir / "checkpoint.npz"
    state = {"epoch": 0, "batch": 0, "history": [], "best": None, "recipe": recipe, "rows": len(texts),
             "precision": "bfloat16" if bf16 else "float32", "init_from": earlier}
    if checkpoint.exists():
        state = _restore(checkpoint, net, optimizer)
        logger.info("resuming at epoch %d, batch %d", state["epoch"] + 1, state["batch"])
        if state["recipe"] != recipe:  # e.g. resumed with fewer --epochs: the schedule follows the new recipe
            logger.warning("resuming with a changed recipe: %s (was %s)", recipe, state["recipe"])
            state.setdefault("recipe_changes", []).append(
                {"epoch": state["epoch"], "batch": state["batch"], "before": state["recipe"]})
            state["recipe"] = recipe
        state.setdefault("precision", "bfloat16" if bf16 else "float32")

    while state["epoch"] < recipe["epochs"]:
        rng = np.random.default_rng(recipe["seed"] + state["epoch"])
        plan = batches(lengths, recipe["batch_size"], rng)
        started, losses = time.time(), []
        for b in range(state["batch"], len(plan)):
            rows = plan[b]
            ids, mask = encode(tokenizer, [texts[r] for r in rows])
            losses.append(float(step(ids, mask, targets[rows], fine[rows], soft[rows])))
            if (b + 1) % 50 == 0:
                logger.info("epoch %d batch %d/%d loss %.4f (%.1f ms/row)", state["epoch"] + 1, b + 1, len(plan),
                            np.mean(losses[-50:]), (time.time() - started) / len(losses) / len(rows) * 1000)
            if (b + 1) % recipe["checkpoint_every"] == 0:
                state["batch"] = b + 1
                _save(checkpoint, net, optimizer, state)
        logits = predict_logits(model, tokenizer, dev.texts)
        acc, f1 = accuracy_and_macro_f1(dev.labels()[dev.single], logits[dev.single].argmax(1))
        record = {"epoch": state["epoch"] + 1, "train_loss": float(np.mean(losses)) if losses else None,
                  "dev_accuracy": acc, "dev_macro_f1": f1, "seconds": round(time.time() - started, 1)}
        logger.info("epoch %d: dev accuracy %.4f macro-F1 %.4f", record["epoch"], acc, f1)
        state["history"].append(record)
        model.save_weights(work_dir / f"epoch{record['epoch']}.weights.h5")
        if state["best"] is None or f1 > state["best"]["dev_macro_f1"]:
            state["best"] = record
        state["epoch"] += 1
        state["batch"] = 0
        _save(checkpoint, net, optimizer, state)
    (work_dir / "history.json").write_text(json.dumps(state, indent=2))
    return state


def _warmup_class():
    import keras

    class Warmup(keras.optimizers.schedules.LearningRateSchedule):
        """Linear warm-up to `peak` over `steps`, then `after` (counted from the end of the warm-up)."""

        def __init__(self, peak, steps, after):
            self.peak, self.steps, self.after = peak, steps, after

        def __call__(self, step):
            step = keras.ops.cast(step, "float32")
            return keras.ops.where(step < self.steps, self.peak * (step + 1) / self.steps,
                                   self.after(step - self.steps))

        def get_config(self):
            return {"peak": self.peak, "steps": self.steps}

    return Warmup


def _Warmup(peak, steps, after):  # the schedule class is built lazily: importing this module needs no TensorFlow
    return _warmup_class()(peak, steps, after)
