"""On-device self-check for a technician: models, camera, the vision step, microphone, broker and clock; exits
non-zero on failure."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.errors import AulaError

SAMPLE_FACE = Path(__file__).resolve().parent / "samples" / "selftest_face.jpg"
SAMPLE_SPEECH = Path(__file__).resolve().parent / "samples" / "classroom_sample.wav"


@dataclass
class Check:
    """One row of the pass/fail table."""

    name: str
    ok: bool
    detail: str


def _run(name: str, fn: Callable[[], str], results: list[Check]) -> bool:
    try:
        results.append(Check(name, True, fn()))
    except (AulaError, OSError, RuntimeError, ValueError, AssertionError, ImportError) as exc:
        results.append(Check(name, False, f"{type(exc).__name__}: {exc}"))
    return results[-1].ok


def _cpu_temperature() -> str:
    zone = Path("/sys/class/thermal/thermal_zone0/temp")
    try:
        return f"{int(zone.read_text()) / 1000:.1f} C"
    except (OSError, ValueError):
        return "n/a"


def _camera_config(mode: str, config_path: Path | None):
    from device.config import load_config
    from device.sources import OpenCVCameraConfig, PiCamera, PiCameraConfig

    if mode == "config":
        return load_config(config_path).camera
    if mode == "picamera2" or (mode == "auto" and PiCamera.available()):
        return PiCameraConfig()
    return OpenCVCameraConfig(device=0)


def run_selftest(config_path: Path | None = None, frames: int = 30, camera: str = "auto",
                 out: Callable[[str], None] = print, broker_check: bool = True, tls_dir: Path | None = None) -> int:
    """Run every check, print the table, and return 0 only if all passed."""
    from device.model_store import _read_manifest, model_entry, models_dir
    from device.runtime import InferenceBackend

    results: list[Check] = []
    state: dict = {}

    def runtimes() -> str:
        have = [k for k, c in InferenceBackend.registry.items() if c.available()]
        assert "litert" in have, "ai-edge-litert (or tflite_runtime) is not installed"
        return ", ".join(have)

    def models() -> str:
        names = sorted(_read_manifest(models_dir())["models"])
        for name in names:
            model_entry(name).verify()
        return f"{len(names)} files match manifest sha256"

    def load() -> str:
        from device.config import load_config
        from device.vision import VisionStage

        t = time.perf_counter()
        state["stage"] = VisionStage.from_config(load_config(config_path).vision)  # defaults without a file
        emo = state["stage"].classifier
        return (f"detector + emotion model loaded in {(time.perf_counter() - t) * 1000:.0f} ms "
                f"({emo.version}, mirror gate < {emo.mirror_below:g})")

    def known_image() -> str:
        import cv2

        image = cv2.imread(str(SAMPLE_FACE))
        assert image is not None, f"cannot read {SAMPLE_FACE}"
        analysis = state["stage"].analyse(image)
        assert analysis.n_faces == 1, f"expected 1 face in {SAMPLE_FACE.name}, found {analysis.n_faces}"
        assert np.allclose(analysis.probs.sum(axis=1), 1.0, atol=1e-3), "probabilities do not sum to 1"
        return f"1 face, detect {analysis.detect_ms:.1f} ms, classify {analysis.classify_ms:.1f} ms"

    def grab() -> str:
        from device.sources import CaptureThread, build_source

        cfg = _camera_config(camera, config_path)
        capture = CaptureThread(build_source(cfg)).start()
        got = []
        t = time.monotonic()
        try:
            while len(got) < frames and time.monotonic() - t < 10:
                frame = capture.slot.get(timeout=1.0)
                if frame is not None:
                    got.append(frame)
                elif capture.error is not None:
                    raise capture.error
                elif capture.ended:
                    break
        finally:
            capture.stop()
        assert got, f"no frame from {cfg.type} camera within 10 s"
        fps = (len(got) - 1) / max(got[-1].t_capture - got[0].t_capture, 1e-6) if len(got) > 1 else 0.0
        state["frames"] = got
        h, w = got[0].image.shape[:2]
        return f"{cfg.type}: {len(got)} frames {w}x{h}, {fps:.1f} fps delivered"

    def vision_on_camera() -> str:
        stage = state["stage"]
        times, faces = [], []
        for frame in state["frames"][:10]:
            t = time.perf_counter()
            faces.append(stage.analyse(frame.image).n_faces)
            times.append((time.perf_counter() - t) * 1000)
        return f"{np.median(times):.1f} ms per frame (median), faces per frame {min(faces)}-{max(faces)}"

    def words() -> str:
        import wave

        from device.config import load_config
        from device.models.text_emotion import TextEmotionModel
        from device.speech_to_text import open_transcriber

        text = load_config(config_path).text
        if not text.enabled:
            return "off (text.enabled is false)"
        opened = open_transcriber(text.recogniser)
        assert opened.transcriber is not None, "no recogniser loads: " + "; ".join(
            f"{k}: {v}" for k, v in opened.skipped.items())
        with wave.open(str(SAMPLE_SPEECH)) as w:  # 16 kHz mono 16-bit, as the recogniser takes it
            samples = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0
        heard = opened.transcriber.transcribe(samples)
        # The words themselves are never printed: a count shows the recogniser hears speech.
        assert len(heard.text.split()) >= 3, f"{opened.transcriber.name} heard almost nothing in {SAMPLE_SPEECH.name}"
        model = TextEmotionModel.load(text.emotion_model, runtime=text.runtime)
        t = time.perf_counter()
        p = model.predict("Thank you, that was a really good answer.")
        ms = (time.perf_counter() - t) * 1000
        assert abs(float(p.sum()) - 1.0) < 1e-3, "text-emotion probabilities do not sum to 1"
        return (f"{opened.transcriber.name}: {len(heard.text.split())} words in {heard.audio_s:.0f} s of the sample "
                f"at {heard.real_time_factor:.2f}x real time; text model {model.version} {ms:.1f} ms")

    def voices() -> str:
        import wave

        from device.config import load_config
        from device.contract.labels import LABELS
        from device.models.speech_emotion import SpeechEmotionModel

        speech = load_config(config_path).speech
        if not speech.enabled or not speech.emotion_model:
            return "off (speech.emotion_model is null)"
        model = SpeechEmotionModel.load(speech.emotion_model, runtime=speech.runtime)
        with wave.open(str(SAMPLE_SPEECH)) as w:
            samples = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0
        t = time.perf_counter()
        probs, _ = model.window_probs(samples)
        ms = (time.perf_counter() - t) * 1000 / len(probs)
        assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-3), "speech-emotion probabilities do not sum to 1"
        return (f"{model.version}: {len(probs)} windows of the sample, {ms:.0f} ms each, mostly "
                f"{LABELS[int(probs.mean(0).argmax())]}")

    def microphone() -> str:
        from device.config import load_config
        from device.selftest_checks import microphone_level

        cfg = load_config(config_path)
        return microphone_level(cfg.microphone if cfg.speech.enabled else None)

    def broker() -> str:
        from device.common.credentials import resolve_password
        from device.config import load_config
        from device.selftest_checks import broker_reachable

        mqtt = load_config(config_path).mqtt_config()
        if tls_dir is not None and mqtt.address.tls:
            # The unit's key is a systemd credential (/run/credentials/...), which exists only inside the unit:
            # take the installed files (ca.crt, device.crt, device.key) from the folder make flash put them in.
            files = {"ca_file": tls_dir / "ca.crt", "cert_file": tls_dir / "device.crt",
                     "key_file": tls_dir / "device.key"}
            mqtt = mqtt.model_copy(update={"tls": mqtt.tls.model_copy(update=files)})
        return broker_reachable(mqtt, resolve_password(mqtt))

    def clock() -> str:
        from device.selftest_checks import clock_synchronised

        return clock_synchronised()

    ok_rt = _run("inference runtime", runtimes, results)
    ok_models = _run("model files", models, results)
    if ok_rt and ok_models and _run("load models", load, results):
        _run("vision on known image", known_image, results)
    if _run("camera", grab, results) and "stage" in state:
        _run("vision on camera frames", vision_on_camera, results)
    if ok_models:
        _run("speech emotion", voices, results)
        _run("speech recogniser and text model", words, results)
    _run("microphone", microphone, results)
    if broker_check:
        _run("broker", broker, results)
    _run("clock", clock, results)
    results.append(Check("platform", True, f"{platform.machine()} {platform.python_version()}, "
                                           f"CPU temp {_cpu_temperature()}"))
    width = max(len(c.name) for c in results)
    out(f"{'check'.ljust(width)}  result  detail")
    for c in results:
        out(f"{c.name.ljust(width)}  {'PASS' if c.ok else 'FAIL'}    {c.detail}")
    failed = [c for c in results if not c.ok]
    out(f"{len(results) - len(failed)} of {len(results)} checks passed" + (": NOT READY" if failed else ": ready"))
    return 1 if failed else 0
