"""Runtime backends and the model store: clear errors for bad files, quantisation arithmetic."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from device.errors import ModelError
from device.model_store import model_entry, models_dir, sha256_of
from device.runtime import InferenceBackend, TensorSpec, open_backend


def test_registry_has_litert_and_onnxruntime():
    assert {"litert", "onnxruntime"} <= set(InferenceBackend.registry)


def test_int8_quantisation_round_trip():
    spec = TensorSpec("x", (1, 4), np.dtype(np.int8), scale=1 / 255, zero_point=-128)
    x = np.array([0.0, 128 / 255, 1.0, 2.0], np.float32)
    q = spec.quantize(x)
    assert q.dtype == np.int8 and q.tolist() == [-128, 0, 127, 127]  # 2.0 saturates
    assert np.allclose(spec.dequantize(q)[:3], x[:3], atol=1 / 255)


def test_unknown_runtime_and_suffix_are_named(tmp_path):
    f = tmp_path / "m.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelError, match=r"no runtime handles '\.bin'"):
        open_backend(f)
    with pytest.raises(ModelError, match="unknown runtime 'tpu'"):
        open_backend(f, runtime="tpu")


@pytest.mark.parametrize("suffix", [".tflite", ".onnx"])
def test_garbage_model_file_raises_model_error_naming_the_file(tmp_path, suffix):
    f = tmp_path / f"garbage{suffix}"
    f.write_bytes(b"this is not a model" * 10)
    with pytest.raises(ModelError) as err:
        open_backend(f)
    assert str(f) in str(err.value)


def _copy_models(tmp_path):
    dst = tmp_path / "models"
    shutil.copytree(models_dir(), dst)
    return dst


def test_corrupt_committed_model_is_caught_by_sha256(tmp_path):
    folder = _copy_models(tmp_path)
    entry = model_entry("face_emotion_int8", folder)
    data = bytearray(entry.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    entry.path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="corrupt or replaced") as err:
        entry.open()
    assert "face_emotion_int8.tflite" in str(err.value) and "git checkout" in str(err.value)


def test_missing_model_file_names_file_and_fix(tmp_path):
    folder = _copy_models(tmp_path)
    entry = model_entry("face_emotion_int8", folder)
    entry.path.unlink()
    with pytest.raises(ModelError, match="is missing") as err:
        entry.open()
    assert str(entry.path) in str(err.value)


def test_unknown_model_and_broken_manifest(tmp_path):
    folder = _copy_models(tmp_path)
    with pytest.raises(ModelError, match="no model 'nope'"):
        model_entry("nope", folder)
    (folder / "manifest.json").write_text("{not json")
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    with pytest.raises(ModelError, match="not valid JSON"):
        model_entry("face_emotion_int8", other)


def test_manifest_sha256_sums_match_committed_files():
    manifest = json.loads((models_dir() / "manifest.json").read_text())
    for name, meta in manifest["models"].items():
        assert sha256_of(models_dir() / meta["file"]) == meta["sha256"], name


def test_device_code_never_imports_tensorflow():
    code = (
        "import sys; import device.models, device.vision, device.runtime, device.service, device.__main__;"
        "from device.models import FaceDetector, FaceEmotionModel;"
        "FaceEmotionModel.load(); FaceDetector.load();"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')]; print(bad);"
        "sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
