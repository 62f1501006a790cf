"""The compact facial-emotion CNN (VGG-style, 48x48 grayscale), in named architectures."""

from __future__ import annotations

import functools

INPUT_SIZE = 48
# (width, convolutions) per stage; a 2x2 max-pool sits between stages.
ARCHITECTURES = {
    "v1": ((32, 2), (64, 2), (128, 2), (256, 2)),  # 1.2M parameters, 117M multiply-adds per face
    "v2": ((32, 2), (64, 2), (128, 3), (320, 2)),  # 1.7M parameters, 153M multiply-adds per face
}
DEFAULT_ARCHITECTURE = "v2"  # the architecture that ships


def architecture_size(arch: str) -> tuple[int, int]:
    """Return (parameters, multiply-adds per face) of an architecture, counted from its stages."""
    params = macs = 0
    side, channels = INPUT_SIZE, 1
    for stage, (width, convs) in enumerate(ARCHITECTURES[arch]):
        for _ in range(convs):
            params += 9 * channels * width + 4 * width  # kernel (no bias) + batch norm
            macs += side * side * 9 * channels * width
            channels = width
        if stage < len(ARCHITECTURES[arch]) - 1:
            side //= 2
    params += channels * 7 + 7
    return params, macs + channels * 7


def training_precision(cpuinfo: str | None = None) -> str:
    """Return the Keras dtype policy for training on this CPU: bf16 where oneDNN has bf16 kernels, else float32.

    oneDNN runs bf16 on AVX-512 (natively with avx512_bf16/AMX, emulated on avx512bw), where it was
    1.25-1.37x faster than float32. On an AVX2-only CPU it falls back to reference kernels: a v2 training
    step measured 148 ms per image against 18 ms in float32 on a 2-core AMD EPYC without AVX-512.
    """
    from device.system_metrics import cpu_flags

    return "mixed_bfloat16" if cpu_flags(cpuinfo) & {"avx512bw", "avx512_bf16", "amx_bf16"} else "float32"


def build_face_net(num_classes: int = 7, dropout: float = 0.4, arch: str = DEFAULT_ARCHITECTURE):
    """Return the inference network: float input in [0, 1], shape (48, 48, 1), logits out."""
    import keras
    from keras import layers

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown face architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    stages = ARCHITECTURES[arch]
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 1), name="face")
    x = inputs
    for stage, (width, convs) in enumerate(stages):
        for conv in range(convs):
            x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"s{stage}c{conv}")(x)
            x = fused_batch_norm_layer(name=f"s{stage}bn{conv}")(x)
            x = layers.ReLU(name=f"s{stage}relu{conv}")(x)
        if stage < len(stages) - 1:
            x = layers.MaxPooling2D(2, name=f"s{stage}pool")(x)
            x = layers.Dropout(0.1 * (stage + 1) / 2, name=f"s{stage}drop")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="head_drop")(x)
    logits = layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name="aula_face_emotion")


def fused_batch_norm_layer(**kwargs):
    """Return a BatchNormalization layer that runs TensorFlow's fused kernel.

    Keras 3 composes batch norm from separate moments and arithmetic ops, and their bf16 backward pass
    took most of a training step on this CPU. The fused kernel (oneDNN) makes a step about 2x faster
    (`bench/train_step.py`). Same weights, same saved names, same maths (the moving variance uses the
    unbiased batch variance, as in Keras 2).
    """
    return _fused_batch_norm_class()(**kwargs)


@functools.cache
def _fused_batch_norm_class():
    import tensorflow as tf
    from keras import layers

    class BatchNormalization(layers.BatchNormalization):  # the class name keeps the saved weight paths
        def call(self, inputs, training=None, mask=None):
            gamma = tf.cast(self.gamma, tf.float32)
            beta = tf.cast(self.beta, tf.float32)
            if training:
                y, mean, var = tf.compat.v1.nn.fused_batch_norm(inputs, gamma, beta, epsilon=self.epsilon)
                keep = self.momentum
                self.moving_mean.assign(self.moving_mean * keep + mean * (1.0 - keep))
                self.moving_variance.assign(self.moving_variance * keep + var * (1.0 - keep))
                return y
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, mean=self.moving_mean, variance=self.moving_variance,
                epsilon=self.epsilon, is_training=False,
            )
            return y

    return BatchNormalization


def build_augmenter(seed: int = 7):
    """Return the training-only augmentation stack (geometry and photometry)."""
    import keras
    from keras import layers

    return keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed),
            layers.RandomRotation(0.04, fill_mode="reflect", seed=seed + 1),
            layers.RandomZoom((-0.15, 0.1), fill_mode="reflect", seed=seed + 2),
            layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed + 3),
            layers.RandomContrast(0.3, seed=seed + 4),
            layers.RandomBrightness(0.15, value_range=(0.0, 1.0), seed=seed + 5),
        ],
        name="augment",
    )
