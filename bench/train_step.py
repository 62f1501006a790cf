"""Training-speed benchmark for the face network: the fused batch norm against Keras' own, in one run.

Times SGD training steps (the precision `converter.face_net.training_precision` picks for this CPU: bf16 mixed
precision on AVX-512, float32 elsewhere; 2 threads, batch 128, no augmentation) of each
architecture with `converter.face_net`'s fused batch norm and with `keras.layers.BatchNormalization`,
and prints ms per image, the ratio, and the implied seconds per FER2013 epoch (25,837 training faces).
Needs the converter extra (TensorFlow). Writes artifacts/bench_train_step.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TRAIN_FACES = 25_837
BATCH = 128


def _ms_per_image(net, steps: int = 8) -> float:
    import keras

    rng = np.random.default_rng(0)
    x = rng.random((BATCH, 48, 48, 1), dtype=np.float32)
    y = np.eye(7, dtype=np.float32)[rng.integers(0, 7, BATCH)]
    net.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    net.train_on_batch(x, y)
    net.train_on_batch(x, y)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        net.train_on_batch(x, y)
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1000 / BATCH


def main() -> int:
    import tensorflow as tf

    from bench.machine import banner, describe

    print(banner(describe()))
    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(2)
    import keras

    import converter.face_net as face_net

    policy = face_net.training_precision()
    keras.mixed_precision.set_global_policy(policy)
    print(f"precision {policy}")
    fused = face_net.fused_batch_norm_layer
    results = {}
    print(f"{'arch':<6}{'keras BN ms/img':>17}{'fused BN ms/img':>17}{'speed-up':>10}{'s/epoch (fused)':>17}")
    for arch in sorted(face_net.ARCHITECTURES):
        face_net.fused_batch_norm_layer = lambda **kw: keras.layers.BatchNormalization(**kw)
        keras_ms = _ms_per_image(face_net.build_face_net(arch=arch))
        face_net.fused_batch_norm_layer = fused
        fused_ms = _ms_per_image(face_net.build_face_net(arch=arch))
        results[arch] = {"keras_bn_ms_per_image": keras_ms, "fused_bn_ms_per_image": fused_ms,
                         "speedup": keras_ms / fused_ms, "epoch_s_fused": fused_ms * TRAIN_FACES / 1000}
        print(f"{arch:<6}{keras_ms:>17.2f}{fused_ms:>17.2f}{keras_ms / fused_ms:>9.2f}x"
              f"{fused_ms * TRAIN_FACES / 1000:>17.0f}")
    out = ROOT / "artifacts" / "bench_train_step.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"precision": policy, **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
