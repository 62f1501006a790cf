"""Grow a trained face network into a wider or deeper architecture without changing what it computes.

A warm start for a bigger network (Net2Net, Chen et al. 2016): every layer the two architectures
share keeps its trained weights; new output channels get fresh random weights whose outgoing weights
are zero; a new convolution starts as the identity, its batch norm undoing its own normalisation. The
grown network's inference outputs equal the trained one's, and training then uses the new capacity.
"""

from __future__ import annotations

import logging

import numpy as np

from converter.face_net import ARCHITECTURES

logger = logging.getLogger(__name__)


def check_growable(src_arch: str, dst_arch: str) -> None:
    """Raise ValueError unless every stage of dst is at least as wide and deep as src's."""
    src, dst = ARCHITECTURES[src_arch], ARCHITECTURES[dst_arch]
    if len(src) != len(dst) or any(dw < sw or dc < sc for (sw, sc), (dw, dc) in zip(src, dst, strict=True)):
        raise ValueError(f"cannot grow {src_arch} {src} into {dst_arch} {dst}: stages must keep their number "
                         "and may only get wider or deeper")


def _embed(trained: np.ndarray, fresh: np.ndarray, zero_new_inputs: bool) -> np.ndarray:
    """Return `fresh` with `trained` copied into its leading corner (new input slices zeroed)."""
    out = fresh.copy()
    if zero_new_inputs and out.ndim >= 2:
        out[..., trained.shape[-2]:, :] = 0.0  # new inputs contribute nothing
    out[tuple(slice(0, n) for n in trained.shape)] = trained
    return out


def grow(src_net, dst_net, x_sample: np.ndarray) -> None:
    """Set dst_net's weights from src_net's (see the module docstring). x_sample: float faces (n, 48, 48, 1)."""
    import keras

    src_layers = {layer.name: layer for layer in src_net.layers}
    for layer in dst_net.layers:
        if not layer.weights:
            continue
        if layer.name in src_layers:
            trained = src_layers[layer.name].get_weights()
            fresh = layer.get_weights()
            layer.set_weights([_embed(t, f, zero_new_inputs=t.ndim >= 2) for t, f in zip(trained, fresh, strict=True)])
        elif isinstance(layer, keras.layers.Conv2D):
            kernel = np.zeros(layer.kernel.shape, np.float32)
            channels = kernel.shape[-1]
            kernel[1, 1, np.arange(channels), np.arange(channels)] = 1.0
            layer.set_weights([kernel])
        elif isinstance(layer, keras.layers.BatchNormalization):
            inputs = keras.Model(dst_net.input, layer.input)(x_sample, training=False).numpy()
            mean = inputs.mean(axis=(0, 1, 2))
            var = inputs.var(axis=(0, 1, 2))
            layer.set_weights([np.sqrt(var + layer.epsilon), mean, mean, var])
        else:
            raise ValueError(f"do not know how to start new layer {layer.name} ({type(layer).__name__})")
    logger.info("grew %s into %s", src_net.name, dst_net.name)
