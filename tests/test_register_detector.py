"""The BlazeFace manifest entries: written at build time by the converter, read back by the device's detector."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from converter.__main__ import main as converter_main
from converter.register_detector import ANCHORS, SOURCE_FILES, manifest_meta
from device.model_store import models_dir
from device.models.face_detector import VARIANT_MODELS, FaceDetector, ssd_anchors
from device.models.manifest_tools import read_manifest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("variant", sorted(VARIANT_MODELS))
def test_committed_entries_are_what_the_converter_writes(variant):
    assert manifest_meta(variant) == read_manifest()["models"][VARIANT_MODELS[variant]]
    assert len(ssd_anchors(ANCHORS[variant])) == ANCHORS[variant]["num_anchors"]


def test_register_detector_command_writes_entries_the_detector_loads(tmp_path):
    for name in SOURCE_FILES.values():
        shutil.copy(models_dir() / name, tmp_path / name)
    assert converter_main(["register-detector", "--folder", str(tmp_path)]) == 0
    written = read_manifest(tmp_path)["models"]
    assert written == {VARIANT_MODELS[v]: manifest_meta(v) for v in VARIANT_MODELS}
    for variant in VARIANT_MODELS:
        detector = FaceDetector.load(variant, runtime="auto", folder=tmp_path)
        assert detector.size == ANCHORS[variant]["input_size_width"]


def test_the_device_never_imports_the_converter():
    for path in sorted((ROOT / "device").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            assert not any(n == "converter" or n.startswith("converter.") for n in names), path
