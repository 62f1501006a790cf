"""Train the facial-emotion CNN on FER2013 with per-epoch checkpoints that resume."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np

from converter.datasets import cache_dir, load_fer2013, stratified_split
from converter.face_net import DEFAULT_ARCHITECTURE, build_augmenter, build_face_net, training_precision
from device.contract.labels import NUM_LABELS

logger = logging.getLogger(__name__)

VAL_FRACTION = 0.1
# The defaults of `python -m converter train-face`: step 1 of the recipe in docs/training.md, a cosine cycle of
# the architecture that ships (models_tflite/cards/face_emotion.md) from scratch. The distillation terms are
# those of the recipe's last step (train-face --teacher).
RECIPE = {
    "arch": "v2",
    "epochs": 60,
    "lr": 0.04,
    "batch_size": 128,
    "kd_alpha": 0.7,
    "kd_temperature": 3.0,
}


def class_weights(labels: np.ndarray, power: float) -> dict[int, float]:
    """Return inverse-frequency weights raised to `power`, normalised to mean 1 over samples."""
    counts = np.bincount(labels, minlength=NUM_LABELS).astype(np.float64)
    raw = np.divide(counts.max(), counts, out=np.zeros_like(counts), where=counts > 0) ** power
    raw /= (raw * counts).sum() / counts.sum()
    return {i: float(w) for i, w in enumerate(raw)}


def face_splits(seed: int = 13):
    """Return ((x_train, y_train), (x_val, y_val)) carved from FER2013 train, stratified."""
    x, y = load_fer2013("train")
    tr, va = stratified_split(y, VAL_FRACTION, seed)
    return (x[tr], y[tr]), (x[va], y[va])


def _to_float(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32) / 255.0)[..., None]


def train(
    work_dir: Path,
    epochs: int = RECIPE["epochs"],
    batch_size: int = RECIPE["batch_size"],
    lr: float = RECIPE["lr"],
    weight_decay: float = 5e-4,
    label_smoothing: float = 0.1,
    imbalance_power: float = 0.3,
    threads: int = 2,
    arch: str = RECIPE["arch"],
    init_from: Path | None = None,
    init_arch: str | None = None,
    teacher: Path | None = None,
    kd_alpha: float = RECIPE["kd_alpha"],
    kd_temperature: float = RECIPE["kd_temperature"],
    erase: float = 0.0,
) -> Path:
    """Train (resuming from work_dir if interrupted) and return the best weights file."""
    import tensorflow as tf

    init_arch = init_arch or arch

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    import keras

    policy = training_precision()
    keras.mixed_precision.set_global_policy(policy)
    logger.info("training precision %s", policy)
    keras.utils.set_random_seed(1234)

    work_dir.mkdir(parents=True, exist_ok=True)
    (xtr, ytr), (xva, yva) = face_splits()
    logger.info("train %d, val %d", len(ytr), len(yva))
    weights = class_weights(ytr, imbalance_power)
    logger.info("class weights %s", weights)

    (work_dir / "train_config.json").write_text(
        json.dumps(
            {
                "arch": arch,
                "epochs": epochs,
                "batch_size": batch_size,
                "lr": lr,
                "weight_decay": weight_decay,
                "label_smoothing": label_smoothing,
                "imbalance_power": imbalance_power,
                "class_weights": weights,
                "val_fraction": VAL_FRACTION,
                "init_from": str(init_from) if init_from else None,
                "init_arch": init_arch if init_from else None,
                "teacher": str(teacher) if teacher else None,
                "kd_alpha": kd_alpha if teacher else None,
                "kd_temperature": kd_temperature if teacher else None,
                "random_erasing": erase,
                "precision": policy,
            },
            indent=2,
        )
    )
    steps = math.ceil(len(ytr) / batch_size)
    warmup = 2 * steps
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=lr / 10,
        decay_steps=epochs * steps - warmup,
        warmup_target=lr,
        warmup_steps=warmup,
        alpha=0.002,
    )
    optimizer = keras.optimizers.SGD(
        learning_rate=schedule, momentum=0.9, nesterov=True, weight_decay=weight_decay
    )
    net, model = build_training_model(arch)
    if init_from is not None:  # a warm restart: a new cosine cycle from an earlier run's weights
        _warm_start(net, model, arch, init_from, init_arch, xtr)
        logger.info("starting from %s (%s)", init_from, init_arch)
    if teacher is not None:  # distillation: targets are [one-hot labels, teacher logits]
        from converter.distill import distillation_loss, label_accuracy, load_teacher

        teacher_train, teacher_val = load_teacher(teacher, len(ytr), len(yva))
        loss, metric = distillation_loss(kd_alpha, kd_temperature, label_smoothing), label_accuracy
    else:
        loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing)
        metric = "accuracy"
    model.compile(optimizer=optimizer, loss=loss, metrics=[metric])

    def dataset(x, y, training):
        target = np.eye(NUM_LABELS, dtype=np.float32)[y]
        if teacher is not None:
            target = np.concatenate([target, teacher_train if training else teacher_val], axis=1)
        sw = np.asarray([weights[int(c)] for c in y], dtype=np.float32)
        ds = tf.data.Dataset.from_tensor_slices((_to_float(x), target, sw) if training else (_to_float(x), target))
        if training:
            ds = ds.shuffle(len(y), seed=5, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size)
        if training and erase > 0:
            from converter.distill import random_erasing

            ds = ds.map(random_erasing(erase))
        return ds.prefetch(2)

    best = work_dir / "best.weights.h5"
    callbacks = [
        keras.callbacks.BackupAndRestore(str(work_dir / "backup")),
        keras.callbacks.ModelCheckpoint(
            str(work_dir / "best_wrapper.weights.h5"),
            monitor="val_accuracy",
            mode="max",
            save_best_only=True,
            save_weights_only=True,
        ),
        keras.callbacks.CSVLogger(str(work_dir / "history.csv"), append=True),
        EpochSnapshots(work_dir / "snapshots", keep=12),
    ]
    model.fit(
        dataset(xtr, ytr, True),
        validation_data=dataset(xva, yva, False),
        epochs=epochs,
        callbacks=callbacks,
        verbose=2,
    )
    load_best_net(work_dir).save_weights(str(best))
    return best


def _warm_start(net, model, arch: str, init_from: Path, init_arch: str, xtr: np.ndarray) -> None:
    """Load init_from into the model, growing it first when it was trained with a smaller architecture."""
    if init_arch == arch:
        model.load_weights(str(init_from))
        return
    from converter.grow import check_growable, grow

    check_growable(init_arch, arch)
    src_net, src_wrapper = build_training_model(init_arch)
    src_wrapper.load_weights(str(init_from))
    sample = np.random.default_rng(3).choice(len(xtr), 2048, replace=False)
    grow(src_net, net, _to_float(xtr[sample]))


def EpochSnapshots(folder: Path, keep: int):
    """Return a callback that saves the weights after every epoch (the last `keep`), for weight averaging."""
    import keras

    class _Snapshots(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            folder.mkdir(parents=True, exist_ok=True)
            self.model.save_weights(str(folder / f"epoch_{epoch + 1}.weights.h5"))
            for old in sorted(folder.glob("epoch_*.weights.h5"), key=lambda p: int(p.name.split("_")[1].split(".")[0]))[
                :-keep
            ]:
                old.unlink()

    return _Snapshots()


def build_training_model(arch: str = DEFAULT_ARCHITECTURE):
    """Return (net, wrapper): the exported network and the same network behind augmentation."""
    import keras

    net = build_face_net(NUM_LABELS, arch=arch)
    inputs = keras.Input((48, 48, 1))
    return net, keras.Model(inputs, net(build_augmenter()(inputs)), name="train_wrapper")


def load_best_net(work_dir: Path):
    """Return the network with the best-validation weights saved so far in work_dir."""
    net, wrapper = build_training_model(architecture_of(work_dir))
    wrapper.load_weights(str(work_dir / "best_wrapper.weights.h5"))
    return net


def architecture_of(work_dir: Path) -> str:
    """Return the architecture a work dir was trained with (runs before "arch" was recorded are v1)."""
    config = work_dir / "train_config.json"
    if not config.exists():
        raise FileNotFoundError(f"{config} missing: train first with `python -m converter train-face`")
    return json.loads(config.read_text()).get("arch", "v1")


def default_work_dir() -> Path:
    """Return where checkpoints live: outside the repository, never committed."""
    return Path(os.environ.get("AULA_TRAIN_DIR", cache_dir() / "train_face"))
