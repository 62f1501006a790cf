"""BlazeFace detector: real photographs, classroom composites, tiling, crops and model-file errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.errors import ModelError
from device.model_store import models_dir, sha256_of
from device.models.face_crops import crop_faces, square_box
from device.models.face_detector import VARIANT_MODELS, FaceDetector, ssd_anchors, tile_origins, weighted_nms
from device.models.manifest_tools import read_manifest, update_manifest_entry
from tests.classroom import FIXTURES, make_classroom_frame, match, recall

# Face boxes (x, y, w, h) measured by hand on the fixtures: brows/forehead to chin, cheek to cheek.
HAND_BOXES = {"astronaut.jpg": (180, 80, 95, 100), "grace_hopper.jpg": (170, 140, 195, 205)}
NON_FACES = ["coffee.jpg", "rocket.jpg", "brick.jpg", "chelsea.jpg"]


def _iou(a, b) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / (a[2] * a[3] + b[2] * b[3] - ix * iy)


def _image(name: str) -> np.ndarray:
    img = cv2.imread(str(FIXTURES / name), cv2.IMREAD_COLOR)
    assert img is not None, name
    return img


@pytest.fixture(scope="module")
def short() -> FaceDetector:
    return FaceDetector.load("short")


@pytest.fixture(scope="module")
def full() -> FaceDetector:
    return FaceDetector.load("full")


def test_anchors_match_mediapipe_counts():
    short_cfg = read_manifest()["models"][VARIANT_MODELS["short"]]["anchors"]
    full_cfg = read_manifest()["models"][VARIANT_MODELS["full"]]["anchors"]
    a, b = ssd_anchors(short_cfg), ssd_anchors(full_cfg)
    assert a.shape == (896, 4) and b.shape == (2304, 4)
    # Stride 8 first: 16x16 cells x 2 anchors, the first cell centred at (0.5/16, 0.5/16).
    np.testing.assert_allclose(a[0], [1 / 32, 1 / 32, 1, 1])
    np.testing.assert_allclose(a[1], a[0])
    # Then the three stride-16 layers share an 8x8 map with 6 anchors a cell.
    np.testing.assert_allclose(a[512], [1 / 16, 1 / 16, 1, 1])
    np.testing.assert_allclose(a[512 + 6], [3 / 16, 1 / 16, 1, 1])
    np.testing.assert_allclose(b[-1], [95 / 96, 95 / 96, 1, 1])


def test_weighted_nms_merges_overlaps_by_score():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.3, 0.8], np.float32)
    out, sc = weighted_nms(boxes, scores, 0.3)
    assert len(out) == 2
    np.testing.assert_allclose(out[0], [0.25, 0.25, 10.25, 10.25], atol=1e-5)
    np.testing.assert_allclose(sc, [0.9, 0.8])


@pytest.mark.parametrize("name", sorted(HAND_BOXES))
def test_one_face_on_portraits(short, full, name):
    img = _image(name)
    for det in (short, full):
        faces = det.detect(img)
        assert len(faces) == 1, (det.name, faces)
        x, y, w, h, score = faces[0]
        assert score > 0.8
        assert _iou((x, y, w, h), HAND_BOXES[name]) > 0.6, (det.name, faces[0])


@pytest.mark.parametrize("name", NON_FACES)
def test_no_face_on_non_faces(short, name):
    assert short.detect(_image(name)) == []


def test_classroom_recall(short):
    assert short.describe(1280, 720) == "15 tiles of 320 px"
    for seed in (0, 1):
        frame, gt = make_classroom_frame(20, seed=seed)
        faces = short.detect(frame)
        assert recall(faces, gt, min_size=40) >= 0.9
        assert len(faces) <= len(gt) + 1  # no duplicates from overlapping tiles


def test_tiling_on_off():
    frame, gt = make_classroom_frame(12, sizes=(40, 70), seed=3)
    untiled = FaceDetector.load("short", tile=None)
    tiled = FaceDetector.load("short", tile=320, overlap=80, full_frame=True)
    assert untiled.describe(1280, 720) == "0 tiles of 0 px + full frame"
    assert tiled.describe(1280, 720) == "15 tiles of 320 px + full frame"
    # Letterboxed whole, 40-70 px faces shrink to 4-7 model px: far below what BlazeFace finds.
    assert recall(untiled.detect(frame), gt) < 0.3
    assert recall(tiled.detect(frame), gt) >= 0.9
    # Webcam-sized frames are not tiled by default: one run of the model.
    assert FaceDetector.load("short").describe(640, 480) == "0 tiles of 0 px + full frame"


def test_smaller_tiles_find_smaller_classroom_faces():
    # The trade-off that vision.tile documents: 224 px tiles (32 at 1280x720) against the default 320 px.
    small = FaceDetector.load("short", tile=224)
    default = FaceDetector.load("short")
    assert small.describe(1280, 720) == "32 tiles of 224 px"
    found = {"small": 0, "default": 0}
    total = 0
    for seed in (100, 101):
        frame, gt = make_classroom_frame(20, sizes=(25, 40), seed=seed)
        faces = small.detect(frame)
        assert len(faces) <= len(gt) + 1  # no duplicates from the extra tile edges
        found["small"] += sum(match(faces, gt))
        found["default"] += sum(match(default.detect(frame), gt))
        total += len(gt)
    assert found["small"] / total >= 0.9
    assert found["default"] / total < 0.7


def test_config_tile_and_min_face_px_reach_the_stage():
    from pydantic import ValidationError

    from device.config import DeviceConfig
    from device.vision import VisionStage

    stage = VisionStage.from_config(DeviceConfig(vision={"tile": 224, "min_face_px": 30}).vision)
    assert stage.detector.describe(1280, 720) == "32 tiles of 224 px"
    assert stage.min_face_px == 30
    assert VisionStage.from_config(DeviceConfig().vision).detector.describe(1280, 720) == "15 tiles of 320 px"
    never = VisionStage.from_config(DeviceConfig(vision={"tile": 0}).vision)
    assert never.detector.describe(1280, 720) == "0 tiles of 0 px + full frame"
    for bad in (-1, "big"):
        with pytest.raises(ValidationError, match="tile"):
            DeviceConfig(vision={"tile": bad})


def test_tiles_cover_with_overlap():
    assert tile_origins(1280, 320, 80) == [0, 240, 480, 720, 960]
    assert tile_origins(720, 320, 80) == [0, 200, 400]
    assert tile_origins(200, 320, 80) == [0]


def test_webcam_frame(short):
    frame, gt = make_classroom_frame(4, sizes=(90, 120), seed=1, size=(640, 480), head_margin=0.4)
    assert all(match(short.detect(frame), gt))


def test_crops_shape_and_padding():
    img = _image("astronaut.jpg")
    crops = crop_faces(img, [(178, 81, 94, 94, 0.9), (-30, -30, 60, 60), (2000, 2000, 10, 10)])
    assert [c.shape for c in crops] == [(48, 48)] * 3 and all(c.dtype == np.uint8 for c in crops)
    # Replicated border: the off-frame corner repeats the frame's corner pixel, never black.
    corner = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[0, 0]
    assert abs(int(crops[1][0, 0]) - int(corner)) <= 2
    black = crop_faces(img, [(-30, -30, 60, 60)], border="constant")[0]
    assert black[0, 0] == 0
    assert crops[2].max() == 0  # wholly outside: a blank crop keeps the list aligned with the boxes
    x0, y0, side = square_box((100, 100, 50, 40), margin=0.1, shift_up=0.0)
    assert side == 60 and (x0, y0) == (95, 90)


@pytest.fixture()
def model_copy(tmp_path: Path) -> Path:
    """A copy of the model folder (manifest + short-range model) that a test may damage."""
    name = VARIANT_MODELS["short"]
    meta = read_manifest()["models"][name]
    shutil.copy(models_dir() / meta["file"], tmp_path / meta["file"])
    (tmp_path / "manifest.json").write_text(json.dumps({"schema": 1, "models": {name: meta}}))
    return tmp_path


def test_missing_model_file(model_copy):
    (model_copy / "face_detection_short_range.tflite").unlink()
    with pytest.raises(ModelError, match=r"face_detection_short_range\.tflite.*missing"):
        FaceDetector.load("short", folder=model_copy)


def test_sha256_mismatch(model_copy):
    path = model_copy / "face_detection_short_range.tflite"
    path.write_bytes(path.read_bytes()[: 100_000])
    with pytest.raises(ModelError, match=r"face_detection_short_range\.tflite.*sha256"):
        FaceDetector.load("short", folder=model_copy)


def test_corrupt_model_file(model_copy):
    path = model_copy / "face_detection_short_range.tflite"
    data = bytearray(path.read_bytes())
    data[:64] = bytes(64)  # garble the flatbuffer header
    path.write_bytes(bytes(data))
    # Point the manifest copy at the garbled file, so loading gets past the sha256 check.
    meta = read_manifest(model_copy)["models"]["face_detection_short_range"]
    update_manifest_entry("face_detection_short_range", {**meta, "sha256": sha256_of(path)}, model_copy)
    with pytest.raises(ModelError, match=r"face_detection_short_range\.tflite.*not a loadable"):
        FaceDetector.load("short", folder=model_copy)


def test_update_manifest_keeps_other_entries(tmp_path):
    update_manifest_entry("face_emotion_demo", {"file": "a.tflite", "sha256": "0" * 64}, tmp_path)
    update_manifest_entry("face_detection_demo", {"file": "b.tflite", "sha256": "1" * 64}, tmp_path)
    text = (tmp_path / "manifest.json").read_text()
    manifest = json.loads(text)
    assert manifest["schema"] == 1
    assert sorted(manifest["models"]) == ["face_detection_demo", "face_emotion_demo"]
    assert text == json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temp or lock files left
