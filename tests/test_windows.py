"""Window pooling: class-level distributions, counts, and the minimum group size."""

import numpy as np
import pytest

from device.labels import LABELS
from device.vision import FaceAnalysis
from device.windows import FaceWindowPooler


def _analysis(t, n, label=3):
    probs = np.zeros((n, 7), np.float32)
    probs[:, label] = 1.0
    return FaceAnalysis(t_capture=t, boxes=[(0, 0, 40, 40, 0.9)] * n, probs=probs, detect_ms=2.0, classify_ms=1.0)


def test_windows_close_on_time_and_pool_all_faces():
    pooler = FaceWindowPooler(window_s=2.0, min_faces=3)
    closed = []
    for i in range(10):
        closed += pooler.add(_analysis(i * 0.5, 4, label=3 if i < 4 else 5))
    assert len(closed) == 2
    first, second = closed
    assert first.frames == 4 and first.faces_max == 4 and first.faces_total == 16
    assert first.distribution["happy"] == pytest.approx(1.0)
    assert second.distribution["sad"] == pytest.approx(1.0)
    assert list(first.to_dict()["face_distribution"]) == list(LABELS)
    assert first.to_dict()["dominant"] == "happy"


def test_distribution_withheld_below_minimum_group_size_but_count_kept():
    pooler = FaceWindowPooler(window_s=1.0, min_faces=3)
    pooler.add(_analysis(0.0, 2))
    (w,) = pooler.add(_analysis(1.0, 2))
    assert w.distribution is None and w.faces_max == 2
    assert w.to_dict()["dominant"] is None


def test_empty_windows_are_emitted_for_gaps_and_flush_closes_partial():
    pooler = FaceWindowPooler(window_s=1.0, min_faces=1)
    pooler.add(_analysis(0.0, 1))
    closed = pooler.add(_analysis(3.5, 1))
    assert [w.frames for w in closed] == [1, 0, 0]
    tail = pooler.flush(4.0)
    assert tail.frames == 1 and tail.end == 4.0
