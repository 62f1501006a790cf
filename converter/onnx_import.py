"""Rebuild trainable Keras weights from an exported face ONNX model, so that a new cycle can start from it.

Checkpoints are never committed, so a fresh machine has only the exported models. The float ONNX export
holds every weight, with each batch norm folded into its convolution (kernel * gamma / std, and a bias).
This module unfolds them: each convolution keeps the folded kernel, and its batch norm gets the
statistics that the kernel's outputs have on real training faces, with gamma and beta chosen so that the
layer computes exactly what the folded model computes, in inference mode and (up to batch noise) in
training mode too. The result is written in the training wrapper's format (`train-face --init-from`).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np

from converter.face_net import ARCHITECTURES

logger = logging.getLogger(__name__)

_CONV = re.compile(r"/(s\d+c\d+)_\d+/convolution_(weights|bias)_fused_bn$")


def folded_weights(onnx_path: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray]:
    """Return ({conv name: (HWIO kernel, bias)}, dense kernel, dense bias) from an exported face ONNX file."""
    import onnx
    from onnx import numpy_helper

    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path} not found: export a face model first (python -m converter export-face)")
    graph = onnx.load(str(onnx_path)).graph
    init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    convs: dict[str, dict[str, np.ndarray]] = {}
    dense_kernel = dense_bias = None
    for node in graph.node:
        if node.op_type == "Conv":
            for name in node.input[1:]:
                m = _CONV.search(name)
                if m is None:
                    raise ValueError(f"{onnx_path}: unexpected convolution input {name!r}; not an Aula face export")
                convs.setdefault(m.group(1), {})[m.group(2)] = init[name]
        elif node.op_type == "MatMul":
            dense_kernel = next(init[n] for n in node.input if n in init)
        elif node.op_type == "Add" and dense_kernel is not None:
            dense_bias = next(init[n] for n in node.input if n in init)
    if dense_kernel is None or dense_bias is None:
        raise ValueError(f"{onnx_path}: no logits layer (MatMul + Add) found; not an Aula face export")
    out = {}
    for name, parts in convs.items():
        out[name] = (np.transpose(parts["weights"], (2, 3, 1, 0)).astype(np.float32), parts["bias"].astype(np.float32))
    return out, dense_kernel.astype(np.float32), dense_bias.astype(np.float32)


def architecture_of_weights(convs: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """Return the named architecture whose stages match the convolutions' widths and counts."""
    stages: dict[int, list[int]] = {}
    for name, (kernel, _) in convs.items():
        stage = int(re.fullmatch(r"s(\d+)c\d+", name).group(1))
        stages.setdefault(stage, []).append(kernel.shape[-1])
    found = tuple((widths[0], len(widths)) for _, widths in sorted(stages.items()))
    for arch, spec in ARCHITECTURES.items():
        if spec == found:
            return arch
    raise ValueError(f"no architecture in converter/face_net.py has the stages {found}")


def import_onnx(onnx_path: Path, x_train: np.ndarray, max_images: int = 4096):
    """Return (net, wrapper, arch): the Keras training model holding the ONNX model's function.

    Batch-norm statistics are measured layer by layer on up to `max_images` training faces.
    """
    from keras import layers

    from converter.train_face import build_training_model

    convs, dense_kernel, dense_bias = folded_weights(onnx_path)
    arch = architecture_of_weights(convs)
    net, wrapper = build_training_model(arch)
    if len(x_train) > max_images:
        x_train = x_train[np.random.default_rng(0).choice(len(x_train), max_images, replace=False)]
    x = (x_train.astype(np.float32) / 255.0)[..., None]
    for layer in net.layers:
        if isinstance(layer, layers.Conv2D):
            layer.kernel.assign(convs[layer.name][0])
    # Identity batch norms first, so that every layer's input can be computed from the folded model.
    bns = [layer for layer in net.layers if isinstance(layer, layers.BatchNormalization)]
    for bn in bns:
        conv = bn.name.replace("bn", "c")
        bias = convs[conv][1]
        bn.gamma.assign(np.ones_like(bias))
        bn.beta.assign(bias)
        bn.moving_mean.assign(np.zeros_like(bias))
        bn.moving_variance.assign(np.full_like(bias, 1.0 - bn.epsilon))
    net.get_layer("logits").kernel.assign(dense_kernel)
    net.get_layer("logits").bias.assign(dense_bias)
    import keras

    # The re-parameterisation below keeps each layer's function, so every convolution's output can be measured
    # in one pass over the faces, before any batch norm is changed.
    conv_names = [bn.name.replace("bn", "c") for bn in bns]
    probe = keras.Model(net.input, [net.get_layer(name).output for name in conv_names])
    sums = [0.0] * len(bns)
    squares = [0.0] * len(bns)
    for i in range(0, len(x), 256):
        for j, out in enumerate(probe(x[i:i + 256], training=False)):
            out = np.asarray(out, dtype=np.float64)
            sums[j] = sums[j] + out.sum(axis=(0, 1, 2))
            squares[j] = squares[j] + (out**2).sum(axis=(0, 1, 2))
    per_image = [net.get_layer(name).output.shape[1] * net.get_layer(name).output.shape[2] for name in conv_names]
    for bn, name, total, total_sq, pixels in zip(bns, conv_names, sums, squares, per_image, strict=True):
        count = len(x) * pixels
        mean = total / count
        var = np.maximum(total_sq / count - mean**2, 0.0)
        bn.moving_mean.assign(mean.astype(np.float32))
        bn.moving_variance.assign(var.astype(np.float32))
        bn.gamma.assign(np.sqrt(var + bn.epsilon).astype(np.float32))
        bn.beta.assign((mean + convs[name][1]).astype(np.float32))
    logger.info("imported %s (%s) from %s", arch, f"{len(convs)} convolutions", onnx_path)
    return net, wrapper, arch


def write_init_weights(onnx_path: Path, out: Path) -> tuple[Path, str]:
    """Write onnx_path's weights in the training wrapper's format to `out`; return (out, architecture)."""
    import keras

    from converter.train_face import face_splits

    keras.mixed_precision.set_global_policy("float32")
    (x_train, _), _ = face_splits()
    _, wrapper, arch = import_onnx(onnx_path, x_train)
    out.parent.mkdir(parents=True, exist_ok=True)
    wrapper.save_weights(str(out))
    provenance(out).write_text(json.dumps({"imported_from": str(onnx_path), "arch": arch}, indent=2))
    return out, arch


def provenance(weights: Path) -> Path:
    """Return the JSON file beside imported weights that says which exported model they came from."""
    return weights.with_name(weights.name.removesuffix(".weights.h5") + ".import.json")


def imported_from(weights: Path) -> str | None:
    """Return the exported model that `weights` were imported from, or None for trained weights."""
    path = provenance(weights)
    return json.loads(path.read_text())["imported_from"] if path.is_file() else None
