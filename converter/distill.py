"""Knowledge distillation for the face model: a mirror-averaged teacher's logits as soft targets.

Averaging a face's logits with its mirror image's gained about one validation point for the committed
model, but it doubles the cost per face, so it cannot ship. Distillation moves part of that gain into a
single-view student: the teacher's mirror-averaged logits on the clean training faces are computed once
(offline, with any exported model) and the student is trained on a mix of the labels and those targets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from device.contract.labels import NUM_LABELS


def mirror_averaged_logits(model, faces: np.ndarray, batch: int = 512) -> np.ndarray:
    """Return (n, 7) logits of `model` (a FaceEmotionModel) averaged over each face and its mirror."""
    from converter.face_eval import batched_logits

    return (batched_logits(model, faces, batch) + batched_logits(model, faces[:, :, ::-1], batch)) / 2


def write_teacher(model_path: Path, out: Path) -> Path:
    """Write the teacher's mirror-averaged logits for the training and validation faces (face_splits order)."""
    from converter.train_face import face_splits
    from device.models.face_emotion import FaceEmotionModel

    (xtr, ytr), (xva, yva) = face_splits()
    model = FaceEmotionModel.load(path=model_path, threads=2, mirror_below=0.0)
    train, val = mirror_averaged_logits(model, xtr), mirror_averaged_logits(model, xva)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, train=train, val=val, teacher=str(model_path),
             train_accuracy=float((train.argmax(1) == ytr).mean()), val_accuracy=float((val.argmax(1) == yva).mean()))
    return out


def load_teacher(path: Path, n_train: int, n_val: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (train logits, val logits) from a teacher file, checked against the split sizes."""
    with np.load(path) as data:
        train, val = data["train"], data["val"]
    if train.shape != (n_train, NUM_LABELS) or val.shape != (n_val, NUM_LABELS):
        raise ValueError(f"{path}: teacher logits {train.shape}/{val.shape} do not match the splits "
                         f"({n_train}/{n_val} faces); write it again with `python -m converter teacher-face`")
    return train, val


def distillation_loss(alpha: float, temperature: float, label_smoothing: float):
    """Return a Keras loss on y_true = [one-hot labels (7), teacher logits (7)] and student logits.

    (1 - alpha) * cross-entropy with the labels + alpha * T^2 * KL(teacher_T || student_T).
    """
    import keras
    from keras import ops

    ce = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing, reduction=None)

    def loss(y_true, y_pred):
        labels, teacher = y_true[:, :NUM_LABELS], y_true[:, NUM_LABELS:]
        t = ops.softmax(teacher / temperature, axis=-1)
        log_s = ops.log_softmax(y_pred / temperature, axis=-1)
        kl = ops.sum(t * (ops.log(ops.maximum(t, 1e-8)) - log_s), axis=-1)
        return (1.0 - alpha) * ce(labels, y_pred) + alpha * temperature**2 * kl

    return loss


def label_accuracy(y_true, y_pred):
    """Accuracy against the one-hot labels in the first 7 columns of y_true."""
    from keras import ops

    hit = ops.argmax(y_true[:, :NUM_LABELS], axis=-1) == ops.argmax(y_pred, axis=-1)
    return ops.mean(ops.cast(hit, "float32"))


label_accuracy.__name__ = "accuracy"  # logged as accuracy / val_accuracy, like Keras' own metric


def random_erasing(probability: float, area: tuple[float, float] = (0.02, 0.2), seed: int = 11):
    """Return a tf.data map function that blanks one random rectangle per face (with noise) at `probability`."""
    import tensorflow as tf

    gen = tf.random.Generator.from_seed(seed)

    def erase(x, y, w):
        n, h, width = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
        hf, wf = tf.cast(h, tf.float32), tf.cast(width, tf.float32)
        frac = gen.uniform([n], area[0], area[1])
        log_ratio = gen.uniform([n], np.log(0.3), np.log(3.3))
        eh = tf.minimum(tf.sqrt(frac * hf * wf * tf.exp(log_ratio)), hf)
        ew = tf.minimum(tf.sqrt(frac * hf * wf / tf.exp(log_ratio)), wf)
        top = gen.uniform([n]) * (hf - eh)
        left = gen.uniform([n]) * (wf - ew)
        rows = tf.cast(tf.range(h), tf.float32)[None, :, None]
        cols = tf.cast(tf.range(width), tf.float32)[None, None, :]
        inside = ((rows >= top[:, None, None]) & (rows < (top + eh)[:, None, None])
                  & (cols >= left[:, None, None]) & (cols < (left + ew)[:, None, None]))
        apply = gen.uniform([n]) < probability
        mask = (inside & apply[:, None, None])[..., None]
        noise = gen.uniform(tf.shape(x))
        return tf.where(mask, noise, x), y, w

    return erase
