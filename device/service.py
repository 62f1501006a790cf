"""The unattended device: workers, the window clock, fusion, MQTT publishing, health and systemd.

One explicit state machine: starting -> running <-> degraded -> stopping. A worker that fails is
restarted with backoff and reported (`degraded` with the reason) until it recovers.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from enum import Enum
from pathlib import Path

from device.analysis_rate import AnalysisRate
from device.config import DeviceConfig, load_config
from device.contract import DeviceState, EmotionEvent, Modality, short_reason
from device.fusion import LateFusion, WindowInputs, with_manifest_settings
from device.sd_notify import SystemdNotifier
from device.system_metrics import host_metrics
from device.window_buckets import WindowBuckets
from device.workers import AudioWorker, StageWorker, VisionWorker

logger = logging.getLogger(__name__)

# Analyses still running when a window ends are given this long to land in it (live sources).
CLOSE_GRACE_S = 0.3
TICK_S = 0.1


class ServiceState(str, Enum):
    """Lifecycle of the device service."""

    STARTING = "starting"
    RUNNING = "running"
    DEGRADED = "degraded"
    STOPPING = "stopping"


class DeviceService:
    """Runs the whole device until stopped; construct, then call run(stop_event)."""

    def __init__(self, config: DeviceConfig, config_path: Path | None = None, overrides: dict | None = None,
                 publisher_factory=None, strict_models: bool = False):
        self.config = config
        self.strict_models = strict_models  # at a terminal a broken model is an error; unattended, a degraded path
        self.config_path = config_path
        self.overrides = overrides or {}
        self.state = ServiceState.STARTING
        self.state_reason: str | None = None
        self.paused = threading.Event()
        # Who set the privacy pause: the config file (only the config lifts it) or a command over MQTT.
        self.pause_source: str | None = None
        if config.privacy.paused:
            self.paused.set()
            self.pause_source = "config"
        self.notifier = SystemdNotifier()
        self.t_start = time.monotonic()
        self.wall_offset = time.time() - time.monotonic()
        self.windows_emitted = 0
        self._publisher_factory = publisher_factory
        self._lock = threading.RLock()
        self._reload_requested: DeviceConfig | None = None
        self._stage = None
        self._speech_model = None
        self._text_path = None
        self._text_fault: str | None = None  # why a configured text path could not be built
        self._model_faults: dict[str, str] = {}  # path -> why its models could not be loaded (it stays off)
        self.workers: list[StageWorker] = []
        self.publisher = None
        self.buckets: WindowBuckets | None = None
        self.fusion: LateFusion | None = None
        self.model_versions: dict[str, str] = {}
        self.final_health: dict | None = None

    # ---- set-up ------------------------------------------------------------------------------------------------

    def _load_models(self) -> None:
        """Load each path's models; a path whose model is missing or corrupt stays off and is reported.

        A broken model file is no reason to stop the device: the other paths go on, the retained status says
        `degraded` with the file's name, and a `reload` command loads it again once it has been replaced.
        """
        from device.errors import BackendUnavailable, ModelError
        from device.vision import VisionStage

        self._model_faults = {}
        self.model_versions = {}
        v = self.config.vision
        temps = {}
        self._stage = None
        if v.enabled:
            try:
                self._stage = VisionStage.from_config(v)
            except (ModelError, BackendUnavailable) as exc:
                if self.strict_models:
                    raise
                self._model_faults["vision"] = f"face models: {exc}"
                logger.error("face path off: %s", exc)
        if self._stage is not None:
            self.model_versions["face_emotion"] = str(self._stage.classifier.version)  # from the entry it loaded
            self.model_versions["face_detector"] = "blazeface-" + (
                "full" if v.detector == "full" else "short")
            # The loaded model's own temperature: it follows the mirror gate in force (config may turn it off).
            temps[Modality.FACE] = self._stage.classifier.temperature
        # The words path first: a speech-emotion head on the encoder's output then uses its CTranslate2 Whisper
        # model (device/models/whisper_encoder.py) rather than a second copy in memory. The default head takes the
        # encoder's layers, and keeps only their blocks, in numpy (device/models/whisper_layers.py, 16 MiB of float16).
        self._load_text_path()
        self._speech_model = None
        s = self.config.speech
        if s.enabled and s.emotion_model and self.config.microphone is not None:
            from device.models.speech_emotion import SpeechEmotionModel

            try:
                self._speech_model = SpeechEmotionModel.load(s.emotion_model, runtime=s.runtime)
            except (ModelError, BackendUnavailable) as exc:
                if self.strict_models:
                    raise
                self._model_faults["audio"] = f"speech-emotion model: {exc}"
                logger.error("speech emotion off (voice activity and words go on): %s", exc)
            else:
                self.model_versions["speech_emotion"] = str(self._speech_model.version)
                temps[Modality.SPEECH] = self._speech_model.temperature
        # The models apply their own calibration temperature already; fusion must not apply it a second time.
        if self._text_path is not None:
            temps[Modality.TEXT] = 1.0
        # Weights and neutral discounts the config leaves unset come from the manifest (chosen on validation data).
        self.fusion = LateFusion(with_manifest_settings(self.config.fusion), temps)

    def _speech_head_shares_whisper(self) -> bool:
        """Whether the configured speech model runs Whisper's encoder through CTranslate2 (a head on its output,
        no `front_end.layers`), and so calls the recogniser's model from the audio thread."""
        from device.errors import ModelError
        from device.model_store import model_entry

        s = self.config.speech
        if not (s.enabled and s.emotion_model):
            return False
        try:
            front = model_entry(s.emotion_model).meta.get("front_end") or {}
        except ModelError:  # the speech model's own load reports it
            return False
        return bool(front.get("encoder")) and not front.get("layers")

    def _load_text_path(self) -> None:
        """The recogniser and text model, or None with the reason reported once (the other paths run on)."""
        from device.errors import AulaError

        if self._text_path is not None:
            self._text_path.stop()
        self._text_path, self._text_fault = None, None
        t, s = self.config.text, self.config.speech
        if not (t.enabled and s.enabled and self.config.microphone is not None):
            return
        from device.models.text_emotion import TextEmotionModel
        from device.speech_to_text import open_transcriber
        from device.text_path import TextPath

        opened = open_transcriber(t.recogniser, shared=self._speech_head_shares_whisper())
        transcriber = opened.transcriber
        if transcriber is None:
            self._text_fault = "no speech recogniser could be loaded (" + "; ".join(
                f"{name}: {why}" for name, why in opened.skipped.items()) + ")"
            logger.error("text path off: %s", self._text_fault)
            return
        try:
            model = TextEmotionModel.load(t.emotion_model, runtime=t.runtime)
        except (AulaError, OSError, ValueError) as exc:
            self._text_fault = f"text-emotion model: {exc}"
            logger.error("text path off: %s", self._text_fault)
            return
        self._text_path = TextPath(transcriber, model, None, max_waiting=t.max_waiting)
        self.model_versions["text_emotion"] = str(model.version)
        self.model_versions["transcriber"] = transcriber.name

    def _make_workers(self) -> list[StageWorker]:
        cfg = self.config
        workers: list[StageWorker] = []
        if cfg.vision.enabled and cfg.camera is not None and self._stage is not None:
            v = cfg.vision
            workers.append(VisionWorker(self.buckets, self.paused, cfg.camera, self._stage,
                                        AnalysisRate(v.analysis_fps, v.min_analysis_fps, v.max_duty)))
        if cfg.speech.enabled and cfg.microphone is not None:
            if self._text_path is not None:
                self._text_path.buckets = self.buckets
            workers.append(AudioWorker(self.buckets, self.paused, cfg.microphone, cfg.voice_gate, self._speech_model,
                                       text_path=self._text_path))
        return workers

    def _paced(self) -> bool:
        """False when every source is a replay at full speed: windows then follow the media clock."""
        return any(
            getattr(src, "realtime", True) or getattr(src, "type", "") not in ("video", "wav")
            for src in (self.config.camera if self.config.vision.enabled else None,
                        self.config.microphone if self.config.speech.enabled else None)
            if src is not None
        )

    def _mqtt_config(self):
        return self.config.mqtt_config()

    # ---- state -------------------------------------------------------------------------------------------------

    def _set_state(self, state: ServiceState, reason: str | None = None) -> None:
        if (state, reason) == (self.state, self.state_reason):
            return
        logger.info("state %s -> %s%s", self.state.value, state.value, f" ({reason})" if reason else "")
        self.state, self.state_reason = state, reason
        self.notifier.status(f"{state.value}{': ' + reason if reason else ''}")
        if self.publisher is not None and state in (ServiceState.RUNNING, ServiceState.DEGRADED):
            self.publisher.publish_status(DeviceState.DEGRADED if state is ServiceState.DEGRADED
                                          else DeviceState.ONLINE, reason)

    def _supervise(self) -> bool:
        """Restart dead workers, update running/degraded; return whether every stage is alive and beating."""
        healthy = True
        faults = []
        now = time.monotonic()
        for w in self.workers:
            if not w.alive and not w.ended and not w.stop_event.is_set():
                logger.error("%s stage died; restarting it", w.name)
                w.restarts += 1
                w.start()
                faults.append(f"{w.name}: restarted")
                healthy = False
            if w.fault:
                faults.append(f"{w.name}: {w.fault}")
            if w.alive and now - w.heartbeat > 10:
                faults.append(f"{w.name}: stalled {now - w.heartbeat:.0f} s")
                healthy = False
        # A full or read-only disk, or a locked or corrupt queue: analysis goes on and events are published directly.
        storage = getattr(self.publisher, "fault", None)
        if storage:
            faults.append(storage)
        faults.extend(self._model_faults.values())
        if self._text_fault:
            faults.append(f"text: {self._text_fault}")
        if faults:
            self._set_state(ServiceState.DEGRADED, "; ".join(faults)[:400])
        else:
            self._set_state(ServiceState.RUNNING)
        return healthy

    def health(self) -> dict:
        """The health message body (the publisher adds its own queue figures)."""
        uptime = time.monotonic() - self.t_start
        data = {
            "state": self.state.value,
            "reason": short_reason(self.state_reason) if self.state_reason else None,
            "paused": self.paused.is_set(),
            "uptime_s": round(uptime, 1),
            "windows_emitted": self.windows_emitted,
            "late_results": self.buckets.late if self.buckets else 0,
            "models": dict(self.model_versions),
            "host": host_metrics(),
        }
        for w in self.workers:
            stage = w.health()
            stage.update(alive=w.alive, fault=short_reason(w.fault) if w.fault else None, restarts=w.restarts)
            if isinstance(w, VisionWorker):
                stage["frames_analysed_per_s"] = round(w.frames_analysed / max(uptime, 1e-6), 2)
            data[w.name] = stage
        return data

    # ---- commands ----------------------------------------------------------------------------------------------

    def on_command(self, command) -> None:
        """Apply pause, resume and reload (ping is answered by the publisher)."""
        name = command.command.value
        if name == "pause":
            self.paused.set()
            self.pause_source = self.pause_source or "command"
            for w in self.workers:
                w.interrupt()  # close camera and mic now, not at the next frame
            if self._text_path is not None:
                self._text_path.discard_waiting()  # speech heard before the pause is not transcribed after it
        elif name == "resume":
            if self.pause_source == "config":
                # Set on site, in the device's own config: a message over the network must not lift it.
                raise PermissionError("the privacy pause is set in this device's config (privacy.paused); "
                                      "only a change there and a reload or restart lifts it")
            self.paused.clear()
            self.pause_source = None
        elif name == "reload":
            if self.config_path is None:
                raise ValueError("this device runs on built-in defaults; there is no config file to reload")
            new = load_config(self.config_path, self.overrides)  # a ConfigError is the ack's reason
            with self._lock:
                self._reload_requested = new

    def _apply_reload(self) -> None:
        with self._lock:
            new, self._reload_requested = self._reload_requested, None
        if new is None:
            return
        if new.mqtt != self.config.mqtt or (new.site, new.room, new.device_id) != (
                self.config.site, self.config.room, self.config.device_id):
            logger.warning("reload: MQTT and identity changes take effect after a restart")
            new = new.model_copy(update={"mqtt": self.config.mqtt, "site": self.config.site,
                                         "room": self.config.room, "device_id": self.config.device_id})
        logger.info("reload: restarting stages with the new config")
        self._stop_workers()
        self.config = new
        if new.privacy.paused:
            self.paused.set()
            self.pause_source = "config"
        elif self.pause_source == "config":  # the config that set the pause no longer does
            self.paused.clear()
            self.pause_source = None
        self._sync_pause()
        self._load_models()
        self.workers = self._make_workers()
        for w in self.workers:
            w.start()

    def _sync_pause(self) -> None:
        """Tell the publisher the pause state, so that the retained status carries it."""
        connection = getattr(self.publisher, "connection", None)
        if connection is not None and connection.paused != self.paused.is_set():
            connection.set_paused(self.paused.is_set())

    # ---- the window clock --------------------------------------------------------------------------------------

    def _clock(self, paced: bool) -> float:
        if paced:
            return time.monotonic() - CLOSE_GRACE_S
        active = [w for w in self.workers if not w.ended]
        if not active:
            return math.inf
        return min(w.progress if w.progress is not None else self.buckets.t0 for w in active)

    def _emit(self, k: int) -> None:
        contents = self.buckets.close(k)
        paused = self.paused.is_set()
        if paused:
            self.fusion.reset()  # after a pause, smoothing starts afresh instead of blending old mood in
            inputs = WindowInputs(contents.start, contents.end, faces=0, speech_segments=0, text_utterances=0)
        else:
            inputs = WindowInputs(contents.start, contents.end, face=contents.face_probs, faces=contents.faces_max,
                                  speech=contents.speech_probs, speech_segments=contents.speech_segments,
                                  text=contents.text_probs)
        fused = self.fusion.update(inputs)
        body = fused.to_dict()
        cfg = self.config
        event = EmotionEvent(
            device_id=cfg.device_id, site=cfg.site, room=cfg.room, seq=0,
            window_start_ms=int((contents.start + self.wall_offset) * 1000),
            window_end_ms=int((contents.end + self.wall_offset) * 1000),
            models=dict(self.model_versions), paused=paused, **body,
        )
        self.publisher.publish_event(event)
        self.windows_emitted += 1

    # ---- run ---------------------------------------------------------------------------------------------------

    def _stop_workers(self, budget_s: float = 3.0) -> None:
        for w in self.workers:
            w.stop_event.set()
            w.interrupt()
        deadline = time.monotonic() + budget_s
        for w in self.workers:
            w.stop(timeout=max(0.05, deadline - time.monotonic()))

    def run(self, stop: threading.Event) -> int:
        """Run until `stop` is set (or every finite replay has ended); return an exit code."""
        from device.mqtt.publisher import EventPublisher

        self.notifier.status("starting")
        self._load_models()
        factory = self._publisher_factory or EventPublisher
        self.publisher = factory(self._mqtt_config(), health_provider=self.health)
        self.publisher.on_command(self.on_command)
        self._sync_pause()  # a pause from the config shows in the first status
        self.publisher.start()
        self.buckets = WindowBuckets(time.monotonic(), self.config.fusion.window_s)
        self.workers = self._make_workers()
        for w in self.workers:
            w.start()
        paced = self._paced()
        self._set_state(ServiceState.RUNNING)
        self.notifier.ready(f"running, {len(self.workers)} stages")
        watchdog_every = self.notifier.watchdog_interval()
        last_ping = 0.0
        k = 0
        try:
            while not stop.is_set():
                self._apply_reload()
                healthy = self._supervise()
                now = time.monotonic()
                if watchdog_every and healthy and now - last_ping >= watchdog_every:
                    self.notifier.watchdog()  # only while every stage is alive and beating
                    last_ping = now
                clock = self._clock(paced)
                if clock == math.inf:  # every finite replay ended: close what they filled, then stop
                    last = max((w.progress for w in self.workers if w.progress is not None), default=None)
                    if last is not None:
                        while k <= self.buckets.index(last):
                            self._emit(k)
                            k += 1
                    break
                closed = False
                while clock >= self.buckets.bounds(k)[1]:
                    self._emit(k)
                    k += 1
                    closed = True
                if not closed:
                    stop.wait(TICK_S if paced else 0.005)
        finally:
            self.state = ServiceState.STOPPING
            self.notifier.stopping()
            self._stop_workers()
            self.publisher.stop(clean=True)
            self.final_health = self.health()
            self.final_health["publisher"] = self.publisher.stats().to_dict()
            logger.info("final figures: %s", json.dumps(self.final_health))
        return 0
