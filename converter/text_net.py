"""all-MiniLM-L6-v2 as a Keras model with a 7-way emotion head, loaded from its safetensors weights.

The encoder is BERT's (Devlin et al. 2019): word + position embeddings, six post-norm layers of 12-head
self-attention and a GELU feed-forward block. The head mean-pools the tokens the attention mask keeps, as the
sentence-transformers model was trained to, then a dense layer gives the logits. Written here rather than taken
from `transformers` because that library no longer has TensorFlow models and the converter's exporter is
TensorFlow's; the weight names map one to one (`load_minilm`), and a test checks the pooled output against the
sentence embedding the tokenizer's package publishes for the same text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

N_LABELS = 7
# The additive mask for padding. Small enough to stay exact in bfloat16 and int8 graphs, large enough that
# exp(-1e4) is 0.
MASK_NEGATIVE = -1e4


@dataclass(frozen=True)
class EncoderConfig:
    vocab_size: int = 30522
    hidden: int = 384
    layers: int = 6
    heads: int = 12
    intermediate: int = 1536
    max_positions: int = 512
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_json(cls, path: Path) -> EncoderConfig:
        raw = json.loads(Path(path).read_text())
        return cls(vocab_size=raw["vocab_size"], hidden=raw["hidden_size"], layers=raw["num_hidden_layers"],
                   heads=raw["num_attention_heads"], intermediate=raw["intermediate_size"],
                   max_positions=raw["max_position_embeddings"], layer_norm_eps=raw["layer_norm_eps"])


class PositionEmbedding(layers.Layer):
    """Adds a learned embedding per position, plus BERT's token-type-0 vector (the only type used)."""

    def __init__(self, max_positions: int, hidden: int, **kwargs):
        super().__init__(**kwargs)
        self.max_positions, self.hidden = max_positions, hidden

    def build(self, input_shape):
        self.positions = self.add_weight(shape=(self.max_positions, self.hidden), name="positions")
        self.token_type = self.add_weight(shape=(self.hidden,), name="token_type")

    def call(self, x):
        length = ops.shape(x)[1]
        return x + ops.cast(self.positions[None, :length, :] + self.token_type, x.dtype)


class EncoderLayer(layers.Layer):
    """One post-norm BERT layer: self-attention, add & norm, GELU feed-forward, add & norm."""

    def __init__(self, config: EncoderConfig, dropout: float, **kwargs):
        super().__init__(**kwargs)
        self.config, self.head_dim = config, config.hidden // config.heads
        h = config.hidden
        self.query = layers.Dense(h, name="query")
        self.key = layers.Dense(h, name="key")
        self.value = layers.Dense(h, name="value")
        self.attn_out = layers.Dense(h, name="attention_output")
        self.attn_norm = layers.LayerNormalization(epsilon=config.layer_norm_eps, name="attention_norm")
        self.inter = layers.Dense(config.intermediate, name="intermediate")
        self.out = layers.Dense(h, name="output")
        self.out_norm = layers.LayerNormalization(epsilon=config.layer_norm_eps, name="output_norm")
        self.drop = layers.Dropout(dropout)

    def _heads(self, t):
        b, n = ops.shape(t)[0], ops.shape(t)[1]
        return ops.transpose(ops.reshape(t, (b, n, self.config.heads, self.head_dim)), (0, 2, 1, 3))

    def call(self, x, additive, training=None):
        b, n = ops.shape(x)[0], ops.shape(x)[1]
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) * (1.0 / float(np.sqrt(self.head_dim)))
        weights = self.drop(ops.softmax(scores + ops.cast(additive, scores.dtype), axis=-1), training=training)
        context = ops.reshape(ops.transpose(ops.matmul(weights, v), (0, 2, 1, 3)), (b, n, self.config.hidden))
        x = self.attn_norm(x + self.drop(self.attn_out(context), training=training))
        # Exact GELU written with erf: Keras' own lowers to Erfc, which ONNX does not have, so the ONNX export
        # would not load; erf is an ONNX operator and gives the same numbers.
        h = self.inter(x)
        hidden = 0.5 * h * (1.0 + ops.erf(h * (1.0 / float(np.sqrt(2.0)))))
        return self.out_norm(x + self.drop(self.out(hidden), training=training))


class AttentionBias(layers.Layer):
    """The attention mask [B, T] (1 = token, 0 = padding) as an additive bias [B, 1, 1, T]."""

    def call(self, mask):
        keep = ops.expand_dims(ops.expand_dims(ops.cast(mask, self.compute_dtype), 1), 1)
        return (1.0 - keep) * MASK_NEGATIVE


class MaskedMean(layers.Layer):
    """Mean of the token vectors the attention mask keeps."""

    def call(self, x, mask):
        m = ops.expand_dims(ops.cast(mask, x.dtype), -1)
        return ops.sum(x * m, axis=1) / ops.maximum(ops.sum(m, axis=1), 1.0)


def build_text_model(config: EncoderConfig = EncoderConfig(), dropout: float = 0.1) -> keras.Model:
    """Keras model: (input_ids int32 [B, T], attention_mask int32 [B, T]) -> logits float32 [B, 7].

    T is left open, so one model serves every padded length (training buckets by length, the device
    resizes its interpreter's input to the sentence).
    """
    ids = keras.Input(shape=(None,), dtype="int32", name="input_ids")
    mask = keras.Input(shape=(None,), dtype="int32", name="attention_mask")

    words = layers.Embedding(config.vocab_size, config.hidden, name="word_embeddings")(ids)
    x = PositionEmbedding(config.max_positions, config.hidden, name="position_embeddings")(words)
    x = layers.LayerNormalization(epsilon=config.layer_norm_eps, name="embeddings_norm")(x)
    x = layers.Dropout(dropout)(x)

    additive = AttentionBias(name="attention_bias")(mask)
    for i in range(config.layers):
        x = EncoderLayer(config, dropout, name=f"layer_{i}")(x, additive)

    pooled = MaskedMean(name="mean_pool")(x, mask)
    logits = layers.Dense(N_LABELS, name="classifier", dtype="float32")(layers.Dropout(dropout)(pooled))
    return keras.Model([ids, mask], logits, name="text_emotion")


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file as numpy arrays (with the `safetensors` library)."""
    from safetensors.numpy import load_file

    return load_file(str(path))


# Where each EncoderLayer part's weights are, under encoder.layer.N., in BERT's published naming.
BERT_LAYER_NAMES = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
                    "attn_out": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
                    "inter": "intermediate.dense", "out": "output.dense", "out_norm": "output.LayerNorm"}


def set_published(layer, weights: dict[str, np.ndarray], prefix: str) -> None:
    """A Dense or LayerNormalization layer from `prefix`.weight and .bias; PyTorch's Linear stores [out, in],
    Keras' Dense [in, out]."""
    w = weights[f"{prefix}.weight"]
    layer.set_weights([w.T if w.ndim == 2 else w, weights[f"{prefix}.bias"]])


def load_encoder_layers(model, weights: dict[str, np.ndarray], count: int, names: dict[str, str]) -> None:
    """Every `layer_N` of `model` from encoder.layer.N.*, with `names` mapping its parts to the published names."""
    for i in range(count):
        layer = model.get_layer(f"layer_{i}")
        for part, name in names.items():
            set_published(getattr(layer, part), weights, f"encoder.layer.{i}.{name}")


def load_minilm(model, weights: dict[str, np.ndarray], config: EncoderConfig = EncoderConfig()) -> None:
    """Copy BERT-named weights (embeddings.*, encoder.layer.N.*) into `build_text_model`'s layers.

    The classifier keeps its fresh initialisation.
    """
    model.get_layer("word_embeddings").set_weights([weights["embeddings.word_embeddings.weight"]])
    model.get_layer("position_embeddings").set_weights(
        [weights["embeddings.position_embeddings.weight"], weights["embeddings.token_type_embeddings.weight"][0]])
    set_published(model.get_layer("embeddings_norm"), weights, "embeddings.LayerNorm")
    load_encoder_layers(model, weights, config.layers, BERT_LAYER_NAMES)
