"""Stochastic weight averaging over the last epochs' snapshots, with batch-norm statistics recomputed."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def snapshot_epochs(snap_dir: Path) -> dict[int, Path]:
    """Return {epoch: weights file} of the snapshots saved during training."""
    out = {}
    for path in snap_dir.glob("epoch_*.weights.h5"):
        m = re.fullmatch(r"epoch_(\d+)\.weights\.h5", path.name)
        if m:
            out[int(m.group(1))] = path
    return dict(sorted(out.items()))


def _recompute_batch_norm(net, x_train: np.ndarray, batch_size: int = 256, max_images: int = 8192) -> None:
    """Set every BN layer's moving mean and variance to the average of batch statistics over training faces.

    A random 8,192 faces estimate the statistics well and take a third of the time of the whole set.
    """
    from keras import layers

    if len(x_train) > max_images:
        x_train = x_train[np.random.default_rng(0).choice(len(x_train), max_images, replace=False)]
    bns = [layer for layer in net.layers if isinstance(layer, layers.BatchNormalization)]
    for bn in bns:
        bn.moving_mean.assign(np.zeros(bn.moving_mean.shape, np.float32))
        bn.moving_variance.assign(np.ones(bn.moving_variance.shape, np.float32))
    saved = [bn.momentum for bn in bns]
    x = (x_train.astype(np.float32) / 255.0)[..., None]
    for i, start in enumerate(range(0, len(x), batch_size), start=1):
        for bn in bns:
            bn.momentum = (i - 1) / i  # cumulative mean of the batch statistics
        net(x[start:start + batch_size], training=True)
    for bn, m in zip(bns, saved, strict=True):
        bn.momentum = m


def mean_weights(net, files: list[Path], load) -> list[np.ndarray]:
    """The element-wise mean of `net`'s weights after `load(file)` of each of `files` (a uniform weight average;
    `load` is the load_weights of `net` or of a model that wraps it)."""
    total = None
    for path in files:
        load(str(path))
        weights = net.get_weights()
        total = weights if total is None else [t + w for t, w in zip(total, weights, strict=True)]
    return [t / len(files) for t in total]


def averaged_net(snapshots: list[Path], x_train: np.ndarray, arch: str):
    """Return the face network with the mean of the snapshots' weights and recomputed BN statistics."""
    from converter.train_face import build_training_model

    net, wrapper = build_training_model(arch)
    net.set_weights(mean_weights(net, snapshots, wrapper.load_weights))
    _recompute_batch_norm(net, x_train)
    logger.info("averaged %d snapshots: %s", len(snapshots), ", ".join(p.name for p in snapshots))
    return net


def soup_net(net, other: Path, x_train: np.ndarray, arch: str, share: float = 0.5):
    """Return a new network whose weights are (1 - share) * net's + share * other's (a wrapper weights file),
    with recomputed BN statistics: a "model soup" of a fine-tuned network and the one it started from."""
    from converter.train_face import build_training_model

    soup, wrapper = build_training_model(arch)
    wrapper.load_weights(str(other))
    soup.set_weights([(1 - share) * a + share * b for a, b in zip(net.get_weights(), soup.get_weights(), strict=True)])
    _recompute_batch_norm(soup, x_train)
    return soup


def save_average(work_dir: Path, last: int, out: Path) -> Path:
    """Write the average of a run's last `last` snapshots, in the snapshots' own format, to `out`.

    The file can start a new cycle: `train-face --init-from OUT` (with `--init-arch` to grow it).
    """
    import keras

    from converter.train_face import architecture_of, build_training_model, face_splits

    keras.mixed_precision.set_global_policy("float32")
    snaps = list(snapshot_epochs(work_dir / "snapshots").values())[-last:]
    if len(snaps) < 2:
        raise FileNotFoundError(f"fewer than 2 epoch snapshots in {work_dir / 'snapshots'}: nothing to average")
    arch = architecture_of(work_dir)
    (x_train, _), _ = face_splits()
    net, wrapper = build_training_model(arch)
    net.set_weights(averaged_net(snaps, x_train, arch).get_weights())
    out.parent.mkdir(parents=True, exist_ok=True)
    wrapper.save_weights(str(out))
    logger.info("wrote the average of %d %s snapshots to %s", len(snaps), arch, out)
    return out
