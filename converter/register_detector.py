"""Build time: write the manifest entries of the two BlazeFace detectors (MediaPipe's short/full-range TFLite).

The .tflite files are MediaPipe's, copied unchanged from the mediapipe==0.10.21 wheel into models_tflite/
(with LICENSE-mediapipe.txt). Their entries carry MediaPipe's graph options, which the device's
`device.models.face_detector` reads back to build its anchors and decode the outputs; the device never imports
this module.

    python -m converter register-detector [--folder models_tflite]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from device.model_store import models_dir
from device.models.face_detector import VARIANT_MODELS
from device.models.manifest_tools import file_meta, update_manifest_entry

# MediaPipe's graph options for the two models (mediapipe/modules/face_detection/face_detection.pbtxt,
# face_detection_short_range.pbtxt and face_detection_full_range.pbtxt at v0.10.21).
ANCHORS = {
    "short": {
        "num_layers": 4,
        "min_scale": 0.1484375,
        "max_scale": 0.75,
        "input_size_height": 128,
        "input_size_width": 128,
        "anchor_offset_x": 0.5,
        "anchor_offset_y": 0.5,
        "strides": [8, 16, 16, 16],
        "aspect_ratios": [1.0],
        "fixed_anchor_size": True,
        "interpolated_scale_aspect_ratio": 1.0,
        "reduce_boxes_in_lowest_layer": False,
        "num_anchors": 896,
    },
    "full": {
        "num_layers": 1,
        "min_scale": 0.1484375,
        "max_scale": 0.75,
        "input_size_height": 192,
        "input_size_width": 192,
        "anchor_offset_x": 0.5,
        "anchor_offset_y": 0.5,
        "strides": [4],
        "aspect_ratios": [1.0],
        "fixed_anchor_size": True,
        "interpolated_scale_aspect_ratio": 0.0,
        "reduce_boxes_in_lowest_layer": False,
        "num_anchors": 2304,
    },
}


def _decoder(input_size: int) -> dict[str, Any]:
    """MediaPipe's TensorsToDetectionsCalculator options for a BlazeFace model of this input size."""
    return {
        "num_coords": 16,
        "box_coord_offset": 0,
        "keypoint_coord_offset": 4,
        "num_keypoints": 6,
        "reverse_output_order": True,
        "scale": float(input_size),
        "sigmoid_score": True,
        "score_clipping_thresh": 100.0,
        "min_score_thresh": 0.5,
        "nms": {
            "algorithm": "WEIGHTED",
            "overlap_type": "INTERSECTION_OVER_UNION",
            "min_suppression_threshold": 0.3,
        },
    }


DECODER = {"short": _decoder(128), "full": _decoder(192)}
SOURCE_FILES = {
    "short": "face_detection_short_range.tflite",
    "full": "face_detection_full_range_sparse.tflite",
}


def manifest_meta(variant: str, folder: Path | None = None) -> dict[str, Any]:
    """Return the manifest entry for a detector variant whose .tflite file lies in the model folder."""
    size = ANCHORS[variant]["input_size_width"]
    n_anchors = ANCHORS[variant]["num_anchors"]
    path = Path(folder or models_dir()) / SOURCE_FILES[variant]
    meta = file_meta(path)
    meta.update(
        {
            "task": "face_detection",
            "input": {
                "shape": [1, size, size, 3],
                "dtype": "float32",
                "colour": "RGB",
                "resize": "letterbox: keep aspect ratio, pad bottom/right with black",
                "normalisation": [-1.0, 1.0],
            },
            "outputs": {"regressors": [1, n_anchors, 16], "classificators": [1, n_anchors, 1]},
            "anchors": ANCHORS[variant],
            "decoder": DECODER[variant],
            "source": f"mediapipe==0.10.21 wheel, mediapipe/modules/face_detection/{SOURCE_FILES[variant]}",
            "licence": "Apache-2.0",
            "licence_file": "LICENSE-mediapipe.txt",
        }
    )
    return meta


def register(folder: Path | None = None) -> None:
    """Write both detector entries into the manifest."""
    for variant, name in VARIANT_MODELS.items():
        update_manifest_entry(name, manifest_meta(variant, folder), folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converter.register_detector", description=__doc__.split("\n")[0])
    parser.add_argument("--folder", type=Path, help="model folder (default: the device's, models_tflite/)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    register(args.folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
