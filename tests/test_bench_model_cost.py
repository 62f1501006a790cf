"""bench/model_cost.py: multiply-adds counted from TFLite graphs, the matmul probe and the CPU flag check."""

from __future__ import annotations

import math

from bench.model_cost import float_matmul_rate, int8_dot_product, multiply_adds
from converter.face_net import architecture_size
from device.model_store import MODELS_DIR


def test_multiply_adds_counted_from_the_graph_match_the_architecture():
    _, macs = architecture_size("v2")
    assert multiply_adds(MODELS_DIR / "face_emotion_int8.tflite") == macs
    assert multiply_adds(MODELS_DIR / "face_emotion_float.tflite") == macs


def test_multiply_adds_count_depthwise_convolutions():
    # BlazeFace is built from depthwise-separable blocks; its count must include them, and be far below ours.
    macs = multiply_adds(MODELS_DIR / "face_detection_short_range.tflite")
    assert 10e6 < macs < 100e6


def test_the_matmul_probe_returns_a_plausible_rate():
    rate = float_matmul_rate(n=256, repeats=3)
    assert math.isfinite(rate) and 1e8 < rate < 1e13


def test_int8_dot_product_flags_are_read_from_cpuinfo():
    assert int8_dot_product("flags\t\t: fpu sse avx2 fma\n") == []
    assert int8_dot_product("flags\t\t: avx2 avx512f avx512_vnni\n") == ["avx512_vnni"]
    assert int8_dot_product("Features\t: fp asimd asimddp crc32\n") == ["asimddp"]
    assert isinstance(int8_dot_product(), list)
