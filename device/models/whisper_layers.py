"""Whisper tiny.en's encoder in numpy, for the frames of every one of its blocks, not only the last.

CTranslate2 (device/models/whisper_encoder.py) returns the encoder's output only. The speech-emotion head
hears tone better in the middle of the encoder than at its end: the last blocks were trained towards words
(models_tflite/cards/speech_emotion_whisper.md has the cross-validation by layer). This module runs the same
encoder from the same file, the CTranslate2 `model.bin` the words path loads, reading only its encoder
weights (float16 on disk and in memory, about 17 MiB for the four blocks; each matrix is widened to float32 as it
is used, so the frames are what float32 weights give, bit for bit): two convolutions, sinusoidal positions, pre-norm
transformer blocks, and the final layer norm.

Layers are numbered 1 to 4 by block; layer 4 is the encoder's output after its final layer norm, what
CTranslate2 returns (tests/test_whisper_layers.py checks it against CTranslate2's float32 encoder). Only the
blocks up to the highest layer asked for are computed.
"""

from __future__ import annotations

import mmap
import os
import struct
from functools import cache
from pathlib import Path

import numpy as np

from device.errors import ModelError

DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16)  # CTranslate2's DataType ids, in order
BFLOAT16 = 5
PREFIX = "encoder/"


def read_encoder_weights(path: str | Path) -> dict[str, np.ndarray]:
    """The encoder's variables of a CTranslate2 Whisper `model.bin` (binary version 6), as stored (float16 for
    the weights of the bundled model; bfloat16 widened to float32)."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            if os.fstat(file.fileno()).st_size == 0:
                raise ModelError(f"{path}: not a readable CTranslate2 model file: it is empty")
            # mapped, not read: only the encoder's pages (a fifth of the file) are ever loaded
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _encoder_variables(data, path)
    except OSError as exc:
        raise ModelError(f"cannot read the Whisper model {path}: {exc}") from exc


def _encoder_variables(data: mmap.mmap, path: Path) -> dict[str, np.ndarray]:
    offset = 0

    def take(fmt: str):
        nonlocal offset
        value = struct.unpack_from(fmt, data, offset)
        offset += struct.calcsize(fmt)
        return value[0]

    def text() -> str:
        nonlocal offset
        n = take("<H")
        value = data[offset : offset + n - 1].decode("utf-8")
        offset += n
        return value

    weights: dict[str, np.ndarray] = {}
    try:
        version = take("<I")
        if version != 6:
            raise ModelError(f"{path}: CTranslate2 model format {version}, expected 6")
        spec = text()
        if spec != "WhisperSpec":
            raise ModelError(f"{path}: a {spec}, not a Whisper model")
        _revision, count = take("<I"), take("<I")
        for _ in range(count):
            name = text()
            shape = tuple(take("<I") for _ in range(take("<B")))
            dtype_id, size = take("<B"), take("<I")
            if name.startswith(PREFIX):
                raw = data[offset : offset + size]  # bytes copied out of the map
                if len(raw) != size:
                    raise ValueError(f"{name} is cut short")
                if dtype_id == BFLOAT16:
                    value = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
                else:
                    value = np.frombuffer(raw, DTYPES[dtype_id])
                weights[name[len(PREFIX):]] = value.reshape(shape)
            offset += size
    except (struct.error, IndexError, ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not a readable CTranslate2 model file: {exc}") from exc
    return weights


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to 1.5e-7 (Abramowitz and Stegun 7.1.26): numpy has none, and the device does not import scipy."""
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    y = 1.0 - t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))) \
        * np.exp(-x * x)
    return np.sign(x) * y


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x * np.float32(1 / np.sqrt(2)))).astype(np.float32)


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _conv3(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride: int) -> np.ndarray:
    """(T, C_in) -> (T', C_out): a width-3 convolution, padding 1, as Whisper's stem."""
    padded = np.pad(x, ((1, 1), (0, 0)))
    n = (len(x) - 1) // stride + 1
    cols = np.stack([padded[k : k + stride * (n - 1) + 1 : stride] for k in range(3)], axis=2)
    return cols.reshape(n, -1) @ weight.reshape(len(weight), -1).T + bias


@cache
def _float16_table() -> np.ndarray:
    """The float32 value of each of the 65,536 float16 bit patterns (256 KiB)."""
    return np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)


def _widen(v: np.ndarray) -> np.ndarray:
    """float16 -> float32, exactly, by table look-up: several times faster than numpy's astype for these."""
    return np.take(_float16_table(), v.view(np.uint16))


class WhisperLayers:
    """The encoder of a CTranslate2 Whisper folder; `frames` gives each asked-for layer's frames of a log-mel.

    `up_to` (a layer): only the blocks up to that layer are kept in memory (7 MB each for tiny.en).
    """

    def __init__(self, folder: str | Path, up_to: int | None = None):
        stored = read_encoder_weights(Path(folder) / "model.bin")
        self.blocks = sum(1 for k in stored if k.endswith("self_attention/layer_norm/gamma"))
        self.up_to = self.blocks if up_to is None else up_to
        if not 1 <= self.up_to <= self.blocks:
            raise ModelError(f"{folder}: the encoder has layers 1..{self.blocks}, asked for up to {up_to}")
        unused = tuple(f"layer_{i}/" for i in range(self.up_to, self.blocks)) + (
            ("layer_norm/",) if self.up_to < self.blocks else ())
        # (in, out) matrices transposed once here rather than on every call. The weight matrices stay float16, as
        # stored (half the resident memory: 16 MiB less for the four blocks of tiny.en); `_matrix` widens one at a
        # time as it is used (exact, so the frames are bit-identical to float32 weights'), by table look-up: about
        # 8 ms more per 2 s window (numpy's astype took 13-20 ms). Biases, norms and positions are float32.
        w = {}
        for k in list(stored):
            v = stored.pop(k)
            if not k.startswith(unused):
                matrix = k.endswith("weight") and v.ndim >= 2
                dtype = np.float16 if matrix and v.dtype == np.float16 else np.float32
                w[k] = np.array(v.T if matrix and v.ndim == 2 else v, dtype=dtype, order="C")
        try:
            self.heads = int(w.pop("num_heads"))
            self.n_mels = w["conv1/weight"].shape[1]
            self.width = w["conv1/weight"].shape[0]
            self._w = w
            self._positions = w["position_encodings/encodings"]
        except KeyError as exc:
            raise ModelError(f"{folder}: the Whisper encoder lacks {exc}") from exc

    def frames(self, mel: np.ndarray, layers: tuple[int, ...]) -> list[np.ndarray]:
        """(n_mels, T) log-mel (T even) -> for each of `layers` (1..blocks), its (T/2, width) float32 frames."""
        if not layers or min(layers) < 1 or max(layers) > self.up_to:
            raise ValueError(f"layers must be within 1..{self.up_to}, got {layers}")
        w = self._w
        x = gelu(_conv3(np.asarray(mel, np.float32).T, self._matrix("conv1/weight"), w["conv1/bias"], 1))
        x = gelu(_conv3(x, self._matrix("conv2/weight"), w["conv2/bias"], 2))
        if len(x) > len(self._positions):
            raise ValueError(f"at most {2 * len(self._positions)} log-mel frames, got {mel.shape[1]}")
        x = x + self._positions[: len(x)]
        out = {}
        for i in range(max(layers)):
            x = self._block(x, f"layer_{i}/")
            out[i + 1] = x
        if max(layers) == self.blocks:  # the encoder's output is the last block's after the final layer norm
            out[self.blocks] = layer_norm(x, w["layer_norm/gamma"], w["layer_norm/beta"])
        return [out[k].astype(np.float32) for k in layers]

    def _matrix(self, name: str) -> np.ndarray:
        """A weight matrix in float32, widened from its stored float16 for this one use."""
        v = self._w[name]
        return _widen(v) if v.dtype == np.float16 else v

    def _block(self, x: np.ndarray, p: str) -> np.ndarray:
        w, m, n, h = self._w, self._matrix, len(x), self.heads
        d = self.width // h
        y = layer_norm(x, w[p + "self_attention/layer_norm/gamma"], w[p + "self_attention/layer_norm/beta"])
        qkv = y @ m(p + "self_attention/linear_0/weight") + w[p + "self_attention/linear_0/bias"]
        q, k, v = (a.reshape(n, h, d).transpose(1, 0, 2) for a in np.split(qkv, 3, axis=1))
        scores = (q * np.float32(d ** -0.5)) @ k.transpose(0, 2, 1)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        attended = (scores @ v).transpose(1, 0, 2).reshape(n, self.width)
        x = x + attended @ m(p + "self_attention/linear_1/weight") + w[p + "self_attention/linear_1/bias"]
        y = layer_norm(x, w[p + "ffn/layer_norm/gamma"], w[p + "ffn/layer_norm/beta"])
        y = gelu(y @ m(p + "ffn/linear_0/weight") + w[p + "ffn/linear_0/bias"])
        return x + y @ m(p + "ffn/linear_1/weight") + w[p + "ffn/linear_1/bias"]
