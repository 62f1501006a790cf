"""What a model asks of the CPU and what one core of this CPU can give, for reading latencies against both.

- `multiply_adds` counts a TFLite graph's multiply-adds per invocation from its own operators and shapes.
- `float_matmul_rate` measures one core's float32 matrix-multiply rate (numpy's BLAS on one thread).
- `int8_dot_product` names the CPU's int8 dot-product instructions (x86 VNNI, Arm `sdot`), if any: without
  them an int8 engine multiplies no faster than float, and int8 models gain little speed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from device.system_metrics import cpu_flags

# Instruction-set flags in /proc/cpuinfo that give int8 dot products, by architecture.
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")

_MATMUL_PROBE = """
import time, numpy as np
n = {n}
a = np.random.default_rng(0).random((n, n), dtype=np.float32)
b = np.random.default_rng(1).random((n, n), dtype=np.float32)
a @ b
best = float("inf")
for _ in range({repeats}):
    t = time.perf_counter()
    a @ b
    best = min(best, time.perf_counter() - t)
print(n ** 3 / best)
"""


def multiply_adds(path: str | Path) -> int:
    """Return the multiply-adds of one invocation of a TFLite model, counted per operator.

    Convolutions, depthwise convolutions, fully connected layers and batch matmuls are counted; pooling,
    activations and element-wise ops are left out (they are a small share of a CNN's cost)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    shapes = {t["index"]: tuple(int(d) for d in t["shape"]) for t in interpreter.get_tensor_details()}
    total = 0
    for op in interpreter._get_ops_details():  # the only way LiteRT exposes the graph's operators
        name, inputs, outputs = op["op_name"], list(op["inputs"]), list(op["outputs"])
        out = shapes[outputs[0]]
        if name == "CONV_2D":
            _, kh, kw, cin = shapes[inputs[1]]  # filter (out_channels, kh, kw, in_channels)
            total += int(np.prod(out)) * kh * kw * cin
        elif name == "DEPTHWISE_CONV_2D":
            _, kh, kw, _ = shapes[inputs[1]]  # filter (1, kh, kw, channels)
            total += int(np.prod(out)) * kh * kw
        elif name == "FULLY_CONNECTED":
            total += int(np.prod(out)) * shapes[inputs[1]][-1]  # weights (units, in_features)
        elif name == "BATCH_MATMUL":
            total += int(np.prod(out)) * shapes[inputs[0]][-1]
    return total


def float_matmul_rate(n: int = 1024, repeats: int = 10) -> float:
    """Return one core's float32 matrix-multiply rate in multiply-adds per second (the best of `repeats`).

    It runs in a child process so that numpy's BLAS starts with one thread whatever this process has
    imported already."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _MATMUL_PROBE.format(n=n, repeats=repeats)], env=env,
                         capture_output=True, text=True, check=True, timeout=120)
    return float(out.stdout.strip())


def int8_dot_product(cpuinfo: str | None = None) -> list[str]:
    """Return the int8 dot-product flags this CPU lists in /proc/cpuinfo (empty where it has none)."""
    flags = cpu_flags(cpuinfo)
    return [flag for flag in INT8_DOT_FLAGS if flag in flags]
