"""device/mapped_pages.py: a model file's pages that the runtime has copied leave the process's memory, and the
model's outputs do not change."""

import os
import sys

import numpy as np
import pytest

from device import mapped_pages, runtime
from device.model_store import model_entry

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/smaps and madvise")


def resident_mib(path) -> float:
    """Resident MiB of this process's mappings of `path`."""
    target, total, inside = os.path.realpath(path), 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):
                inside = len(fields) >= 6 and fields[5] == target
            elif inside and fields[0] == "Rss:":
                total += int(fields[1])
    return total / 1024


@linux
def test_the_text_models_packed_pages_are_dropped_and_its_outputs_do_not_change(monkeypatch):
    from device.models.text_emotion import TextEmotionModel

    texts = ["I am so happy for you", "that is disgusting", "Kids are talking by the door", "why did you go?"]
    path = model_entry("text_emotion_int8").path
    monkeypatch.setattr(runtime, "release", lambda p: 0)
    kept = TextEmotionModel.load()
    kept_mib, expected = resident_mib(path), kept.predict_batch(texts)
    monkeypatch.undo()
    del kept  # its mapping goes with it
    released = TextEmotionModel.load()
    assert resident_mib(path) < kept_mib - 8  # the matrices' 10.6 MB of int8 weights, read once to be packed
    for _ in range(3):  # read again, a page comes back from the page cache with the same bytes
        assert np.array_equal(released.predict_batch(texts), expected)
    assert resident_mib(path) < kept_mib - 8


def test_only_read_only_mappings_of_the_file_are_advised(tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(b"x")
    maps = tmp_path / "maps"
    maps.write_text(
        f"7f0000000000-7f0000002000 r--s 00000000 08:01 12 {model}\n"
        f"7f0000002000-7f0000003000 rw-p 00000000 08:01 12 {model}\n"
        f"7f0000003000-7f0000004000 r--p 00000000 08:01 13 {tmp_path / 'other.tflite'}\n"
        "7f0000004000-7f0000005000 rw-p 00000000 00:00 0 \n"
    )
    assert mapped_pages.read_only_mappings(model, maps) == [(0x7F0000000000, 0x7F0000002000)]
    assert mapped_pages.read_only_mappings(model, tmp_path / "absent") == []


def test_without_madvise_nothing_is_released(monkeypatch, tmp_path):
    monkeypatch.setattr(mapped_pages, "_madvise", lambda: None)
    assert mapped_pages.release(tmp_path / "m.tflite") == 0
