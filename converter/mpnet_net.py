"""all-mpnet-base-v2 as a Keras model with the same 7-way head as the device's text model: a teacher, never shipped.

MPNet (Song et al. 2020) is BERT-shaped, 12 post-norm layers 768 wide, with two differences that matter here:
positions are numbered from 2 (id 1 is padding) and there is no token-type vector, and every layer's attention
scores get a bias learned per head for the bucketed distance between two tokens (T5's relative positions,
32 buckets, one table shared by all layers). The weight names follow the published safetensors file
(`load_mpnet`). At 110 M parameters it is five times MiniLM's size, too large for the device's 25 MB; the
converter fine-tunes it to teach the MiniLM student (`train-text --encoder mpnet`, `teach-text`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np
from keras import layers, ops

from converter.text_net import (
    N_LABELS,
    AttentionBias,
    EncoderConfig,
    EncoderLayer,
    MaskedMean,
    PositionEmbedding,
    load_encoder_layers,
    set_published,
)

PAD_POSITION = 1  # MPNet's padding id; the first token's position is PAD_POSITION + 1


@dataclass(frozen=True)
class MPNetConfig(EncoderConfig):
    vocab_size: int = 30527
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    intermediate: int = 3072
    max_positions: int = 514
    layer_norm_eps: float = 1e-5
    buckets: int = 32
    max_distance: int = 128


def relative_buckets(length: int, buckets: int = 32, max_distance: int = 128) -> np.ndarray:
    """[length, length] bucket of each (query i, key j) pair, as MPNet's bidirectional T5 bucketing gives it:
    half the buckets for each sign of i - j, exact up to a quarter of the buckets, logarithmic beyond, capped."""
    i, j = np.arange(length)[:, None], np.arange(length)[None, :]
    n = i - j  # MPNet's n = -(j - i)
    half = buckets // 2
    out = (n < 0).astype(np.int64) * half
    n = np.abs(n)
    exact = half // 2
    with np.errstate(divide="ignore"):
        large = exact + (np.log(np.maximum(n, 1) / exact) / math.log(max_distance / exact)
                         * (half - exact)).astype(np.int64)
    return out + np.where(n < exact, n, np.minimum(large, half - 1))


class MPNetPositions(PositionEmbedding):
    """Adds the position embedding: the k-th kept token has position k + 1 (padding keeps position 1); no
    token-type vector."""

    def build(self, input_shape):
        self.positions = self.add_weight(shape=(self.max_positions, self.hidden), name="positions")

    def call(self, x, mask):
        m = ops.cast(mask, "int32")
        ids = ops.cumsum(m, axis=1) * m + PAD_POSITION
        return x + ops.cast(ops.take(self.positions, ids, axis=0), x.dtype)


class RelativeBias(layers.Layer):
    """The attention bias [B, heads, T, T]: the padding mask's plus the learned bias of each pair's bucket."""

    def __init__(self, config: MPNetConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.table = relative_buckets(config.max_positions, config.buckets, config.max_distance).astype(np.int32)

    def build(self, input_shape):
        self.bias = self.add_weight(shape=(self.config.buckets, self.config.heads), name="relative_attention_bias")

    def call(self, padding):
        length = ops.shape(padding)[-1]
        buckets = ops.convert_to_tensor(self.table)[:length, :length]
        per_pair = ops.transpose(ops.take(self.bias, buckets, axis=0), (2, 0, 1))  # [heads, T, T]
        return padding + ops.cast(per_pair[None], padding.dtype)


def build_mpnet_model(config: MPNetConfig = MPNetConfig(), dropout: float = 0.1) -> keras.Model:
    """(input_ids, attention_mask) -> logits [B, 7], mean-pooled as all-mpnet-base-v2 was trained."""
    ids = keras.Input(shape=(None,), dtype="int32", name="input_ids")
    mask = keras.Input(shape=(None,), dtype="int32", name="attention_mask")
    words = layers.Embedding(config.vocab_size, config.hidden, name="word_embeddings")(ids)
    x = MPNetPositions(config.max_positions, config.hidden, name="position_embeddings")(words, mask)
    x = layers.LayerNormalization(epsilon=config.layer_norm_eps, name="embeddings_norm")(x)
    x = layers.Dropout(dropout)(x)
    additive = RelativeBias(config, name="relative_bias")(AttentionBias(name="attention_bias")(mask))
    for i in range(config.layers):
        x = EncoderLayer(config, dropout, name=f"layer_{i}")(x, additive)
    pooled = MaskedMean(name="mean_pool")(x, mask)
    logits = layers.Dense(N_LABELS, name="classifier", dtype="float32")(layers.Dropout(dropout)(pooled))
    return keras.Model([ids, mask], logits, name="text_emotion_mpnet")


# Where each EncoderLayer part's weights are, under encoder.layer.N., in MPNet's published naming.
MPNET_LAYER_NAMES = {"query": "attention.attn.q", "key": "attention.attn.k", "value": "attention.attn.v",
                     "attn_out": "attention.attn.o", "attn_norm": "attention.LayerNorm",
                     "inter": "intermediate.dense", "out": "output.dense", "out_norm": "output.LayerNorm"}


def load_mpnet(model, weights: dict[str, np.ndarray], config: MPNetConfig = MPNetConfig()) -> None:
    """Copy the published weights (embeddings.*, encoder.layer.N.*, encoder.relative_attention_bias) in; the
    classifier keeps its fresh initialisation."""
    model.get_layer("word_embeddings").set_weights([weights["embeddings.word_embeddings.weight"]])
    model.get_layer("position_embeddings").set_weights([weights["embeddings.position_embeddings.weight"]])
    set_published(model.get_layer("embeddings_norm"), weights, "embeddings.LayerNorm")
    model.get_layer("relative_bias").set_weights([weights["encoder.relative_attention_bias.weight"]])
    load_encoder_layers(model, weights, config.layers, MPNET_LAYER_NAMES)
