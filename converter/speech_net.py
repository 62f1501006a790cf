"""The compact speech-emotion CNN: 2 s of normalised log-mel (200 frames x 64 bands) -> 7 logits."""

from __future__ import annotations

FRAMES = 200
BANDS = 64
WIDTHS = (16, 32, 64, 96)  # one 3x3 convolution per stage, 2x2 max-pool between stages


def build_speech_net(num_classes: int = 7, dropout: float = 0.3, widths: tuple[int, ...] = WIDTHS):
    """Return the inference network: (200, 64, 1) float features in, logits out."""
    import keras
    from keras import layers

    inputs = keras.Input((FRAMES, BANDS, 1), name="log_mel")
    x = inputs
    for i, width in enumerate(widths):
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"c{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
        if i < len(widths) - 1:
            x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="drop")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="speech_emotion")


def multiply_adds(widths: tuple[int, ...] = WIDTHS) -> int:
    """Multiply-adds per 2 s window, counted from the stages."""
    macs, h, w, c = 0, FRAMES, BANDS, 1
    for i, width in enumerate(widths):
        macs += h * w * 9 * c * width
        c = width
        if i < len(widths) - 1:
            h, w = h // 2, w // 2
    return macs + c * 7
