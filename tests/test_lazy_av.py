"""PyAV stays out of memory on the device's speech paths, and still decodes a file when asked to."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "device" / "samples" / "classroom_sample.wav"

PROBE = """
import json, sys
from device.models.whisper_encoder import WhisperEncoder
from device.speech_to_text.whisper import WhisperTranscriber
WhisperEncoder("models_tflite/whisper-tiny.en", layers=(2, 3))  # the default speech head's front end
WhisperTranscriber()
loaded = sorted(m for m in sys.modules if m.startswith("av."))
placeholder = type(sys.modules["av"]).__name__
import faster_whisper
samples = faster_whisper.decode_audio(sys.argv[1])
print(json.dumps({"loaded": loaded, "placeholder": placeholder, "decoded": len(samples),
                  "after": sum(m.startswith("av.") for m in sys.modules)}))
"""


def test_the_speech_paths_load_without_pyav_and_a_file_still_decodes():
    out = subprocess.run([sys.executable, "-c", PROBE, str(SAMPLE)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["loaded"] == [] and result["placeholder"] == "_Deferred"
    assert result["decoded"] > 16000 and result["after"] > 10  # the real PyAV, imported on first use


def test_defer_av_leaves_an_imported_av_alone(monkeypatch):
    from device import lazy_av

    sentinel = object()
    monkeypatch.setitem(sys.modules, "av", sentinel)
    lazy_av.defer_av()
    assert sys.modules["av"] is sentinel
