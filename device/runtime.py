"""Inference runtimes behind one small interface: LiteRT (default) and ONNX Runtime."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from device.errors import BackendUnavailable, ModelError
from device.mapped_pages import release

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorSpec:
    """Shape, dtype and affine quantisation (scale 0 means not quantised) of one tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float = 0.0
    zero_point: int = 0

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Convert real values to this tensor's dtype (identity cast for float tensors)."""
        if not self.quantized:
            return x.astype(self.dtype, copy=False)
        info = np.iinfo(self.dtype)
        q = np.rint(x / self.scale) + self.zero_point
        return np.clip(q, info.min, info.max).astype(self.dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        """Convert this tensor's values back to float32 reals."""
        if not self.quantized:
            return q.astype(np.float32, copy=False)
        return (q.astype(np.float32) - self.zero_point) * np.float32(self.scale)


class InferenceBackend(ABC):
    """A loaded model: set the inputs, invoke, read the outputs. Built once, reused per frame."""

    type_key: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]
    registry: ClassVar[dict[str, type[InferenceBackend]]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if getattr(cls, "type_key", None):
            InferenceBackend.registry[cls.type_key] = cls

    def __init__(self, path: Path, threads: int = 1):
        self.path = Path(path)
        self.threads = threads

    @classmethod
    @abstractmethod
    def available(cls) -> bool:
        """Return whether this runtime's library imports here."""

    @property
    @abstractmethod
    def inputs(self) -> list[TensorSpec]: ...

    @property
    @abstractmethod
    def outputs(self) -> list[TensorSpec]: ...

    @abstractmethod
    def run(self, *arrays: np.ndarray) -> list[np.ndarray]:
        """Invoke on raw input tensors (already in the input dtype); return raw outputs."""


def _import_interpreter():
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # type: ignore[import-not-found]

        return Interpreter
    except ImportError:
        return None


class LiteRTBackend(InferenceBackend):
    """TFLite models through ai-edge-litert, or tflite_runtime where only that imports."""

    type_key = "litert"
    suffixes = (".tflite",)

    def __init__(self, path: Path, threads: int = 1):
        super().__init__(path, threads)
        interpreter_cls = _import_interpreter()
        if interpreter_cls is None:
            raise BackendUnavailable("neither ai-edge-litert nor tflite_runtime is installed")
        try:
            self._interp = interpreter_cls(model_path=str(self.path), num_threads=threads)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{self.path}: not a loadable TFLite model ({exc})") from exc
        # XNNPACK has packed the weights into its own buffers by now: the file's pages it read can go (12 MiB for
        # the text model); any page still needed is read back from the page cache (device/mapped_pages.py).
        release(self.path)
        self._in = self._interp.get_input_details()
        self._out = self._interp.get_output_details()

    @classmethod
    def available(cls) -> bool:
        return _import_interpreter() is not None

    @staticmethod
    def _spec(d) -> TensorSpec:
        scale, zp = d.get("quantization", (0.0, 0))
        return TensorSpec(d["name"], tuple(int(s) for s in d["shape"]), np.dtype(d["dtype"]), float(scale), int(zp))

    @property
    def inputs(self) -> list[TensorSpec]:
        return [self._spec(d) for d in self._in]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [self._spec(d) for d in self._out]

    def _ensure_shapes(self, arrays: tuple[np.ndarray, ...]) -> None:
        """Resize the inputs to these arrays' shapes (a new batch size, or a new sequence length) when they differ."""
        if all(tuple(d["shape"]) == a.shape for d, a in zip(self._in, arrays, strict=True)):
            return
        for d, a in zip(self._in, arrays, strict=True):
            self._interp.resize_tensor_input(d["index"], list(a.shape))
        self._interp.allocate_tensors()
        self._in = self._interp.get_input_details()
        self._out = self._interp.get_output_details()

    def run(self, *arrays: np.ndarray) -> list[np.ndarray]:
        self._ensure_shapes(arrays)
        for d, a in zip(self._in, arrays, strict=True):
            self._interp.set_tensor(d["index"], a)
        self._interp.invoke()
        return [self._interp.get_tensor(d["index"]) for d in self._out]


class OnnxRuntimeBackend(InferenceBackend):
    """ONNX models through ONNX Runtime; on a Jetson the CUDA or TensorRT providers apply."""

    type_key = "onnxruntime"
    suffixes = (".onnx",)
    preferred_providers = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

    def __init__(self, path: Path, threads: int = 1):
        super().__init__(path, threads)
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable("onnxruntime is not installed") from exc
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        providers = [p for p in self.preferred_providers if p in ort.get_available_providers()]
        try:
            self._sess = ort.InferenceSession(str(self.path), sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise ModelError(f"{self.path}: not a loadable ONNX model ({exc})") from exc

    @classmethod
    def available(cls) -> bool:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return False
        return True

    @staticmethod
    def _spec(node) -> TensorSpec:
        dtype = {"tensor(float)": np.float32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
                 "tensor(int32)": np.int32, "tensor(int64)": np.int64}.get(
            node.type, np.float32
        )
        shape = tuple(s if isinstance(s, int) else -1 for s in node.shape)
        return TensorSpec(node.name, shape, np.dtype(dtype))

    @property
    def inputs(self) -> list[TensorSpec]:
        return [self._spec(n) for n in self._sess.get_inputs()]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [self._spec(n) for n in self._sess.get_outputs()]

    def run(self, *arrays: np.ndarray) -> list[np.ndarray]:
        feeds = {n.name: a for n, a in zip(self._sess.get_inputs(), arrays, strict=True)}
        return list(self._sess.run(None, feeds))


def open_backend(path: Path, runtime: str = "auto", threads: int = 1) -> InferenceBackend:
    """Open `path` with the named runtime, or pick one by file suffix when runtime is 'auto'."""
    path = Path(path)
    if runtime == "auto":
        matches = [c for c in InferenceBackend.registry.values() if path.suffix in c.suffixes]
        if not matches:
            raise ModelError(f"{path}: no runtime handles '{path.suffix}' files")
        cls = matches[0]
    else:
        try:
            cls = InferenceBackend.registry[runtime]
        except KeyError:
            known = ", ".join(sorted(InferenceBackend.registry))
            raise ModelError(f"unknown runtime '{runtime}' (known: {known})") from None
    if not cls.available():
        raise BackendUnavailable(f"runtime '{cls.type_key}' is not installed; install the device extras")
    return cls(path, threads)
