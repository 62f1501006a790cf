"""Keras network -> SavedModel -> TFLite (float, or full-integer int8 with a calibration set) and ONNX."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np


def saved_model(net, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    net.export(str(out), format="tf_saved_model", verbose=False)


def convert(saved: Path, calibration: Iterable[np.ndarray] | None) -> bytes:
    """Float TFLite, or full-integer int8 (int8 input and output) calibrated on `calibration` inputs."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    if calibration is not None:
        samples = list(calibration)

        def representative():
            for x in samples:
                yield [x[None]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


def onnx_export(saved: Path, out: Path) -> None:
    """The SavedModel as ONNX (opset 17). tf2onnx writes the SavedModel's (temporary) path into the graph's
    doc string; a fixed one takes its place, so that the same model gives the same file (and sha256)."""
    import onnx

    cmd = [sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(saved), "--output", str(out),
           "--opset", "17"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    model = onnx.load(str(out))
    model.graph.doc_string = "converted from a TensorFlow SavedModel by tf2onnx"
    onnx.save(model, str(out))


def convert_dynamic_range(saved: Path) -> bytes:
    """TFLite with int8 weights and float activations (dynamic-range quantisation): no calibration set, and
    the accuracy of a transformer, whose LayerNorm and softmax lose too much at 8-bit activations, is kept."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()
