"""Audio: WAV replay, resampling, ring buffer, capture thread, PyAudio microphone (fake), voice gate."""

from __future__ import annotations

import itertools
import logging
import shutil
import subprocess
import sys
import time
import wave
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from device.audio import (
    AUDIO_SOURCE_TYPES,
    SAMPLE_RATE,
    AudioCaptureThread,
    AudioChunk,
    AudioRingBuffer,
    AudioSource,
    PyAudioMic,
    PyAudioMicConfig,
    StreamResampler,
    VoiceGate,
    VoiceGateConfig,
    WavFile,
    WavFileConfig,
    build_audio_source,
    list_input_devices,
    to_mono,
)
from device.audio.voice_gate import frame_levels
from device.errors import BackendUnavailable, ConfigError, SourceError
from tests.fake_pyaudio import FakeDevice, make_fake_pyaudio
from tests.system_deps import missing_system_dep, require_system_dep

LOUDNESS = VoiceGateConfig(detector="loudness")  # these tests check the loudness gate itself
SR = SAMPLE_RATE


# --- helpers ----------------------------------------------------------------------------------------------------


def tone(seconds: float, hz: float = 440.0, dbfs: float = -20.0, rate: int = SR) -> np.ndarray:
    """A sine at an RMS level of dbfs."""
    amp = 32768 * 10 ** (dbfs / 20) * np.sqrt(2)
    t = np.arange(round(seconds * rate)) / rate
    return np.round(amp * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def noise(seconds: float, dbfs: float, seed: int = 0, rate: int = SR) -> np.ndarray:
    """White noise at an RMS level of dbfs (deterministic)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(round(seconds * rate)) * 32768 * 10 ** (dbfs / 20)
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def write_wav(path: Path, samples: np.ndarray, rate: int = SR, channels: int = 1, width: int = 2) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


def chunks_of(samples: np.ndarray, ms: int = 30, t0: float = 100.0) -> list[AudioChunk]:
    n = SR * ms // 1000
    return [AudioChunk(samples[i : i + n], t0 + i / SR) for i in range(0, len(samples), n)]


def dominant_hz(samples: np.ndarray, rate: int = SR) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


def read_all(source: AudioSource, limit: int = 10_000) -> list[AudioChunk]:
    out = []
    with source:
        for _ in range(limit):
            chunk = source.read()
            if chunk is None:
                break
            out.append(chunk)
    return out


@pytest.fixture
def one_second_wav(tmp_path: Path) -> Path:
    return write_wav(tmp_path / "one.wav", tone(1.0))


# --- registry and config ----------------------------------------------------------------------------------------


def test_registry_and_config_choose_the_backend(one_second_wav):
    assert {"wav", "pyaudio"} <= set(AUDIO_SOURCE_TYPES)
    assert isinstance(build_audio_source({"type": "wav", "path": str(one_second_wav)}), WavFile)
    mic = build_audio_source({"type": "pyaudio", "device": "USB"}, pyaudio_module=make_fake_pyaudio())
    assert isinstance(mic, PyAudioMic)
    with pytest.raises(ConfigError):
        build_audio_source({"type": "alsa"})
    with pytest.raises(ConfigError):
        build_audio_source({"type": "wav", "path": "x.wav", "volume": 3})
    with pytest.raises(ValidationError):
        PyAudioMicConfig(device="")


def test_a_backend_config_must_name_its_own_type():
    class BadConfig(BaseModel):
        model_config = ConfigDict(extra="forbid")
        type: Literal["other"] = Field("other", description="Backend selector.")

    with pytest.raises(TypeError, match="needs a field type"):

        class BadSource(AudioSource):
            type_key = "bad"
            Config = BadConfig


def test_audio_chunk_must_be_mono_int16():
    with pytest.raises(ValueError):
        AudioChunk(np.zeros(10, np.float32), 0.0)
    with pytest.raises(ValueError):
        AudioChunk(np.zeros((10, 2), np.int16), 0.0)
    chunk = AudioChunk(np.zeros(1600, np.int16), 5.0)
    assert chunk.duration == pytest.approx(0.1) and chunk.t_end == pytest.approx(5.1)


# --- WAV replay -------------------------------------------------------------------------------------------------


def test_wav_fast_replay_is_quick_complete_and_on_the_media_clock(one_second_wav):
    src = WavFile(WavFileConfig(path=one_second_wav, realtime=False, chunk_ms=30))
    t0 = time.monotonic()
    chunks = read_all(src)
    assert time.monotonic() - t0 < 0.5
    samples = np.concatenate([c.samples for c in chunks])
    assert np.array_equal(samples, tone(1.0))
    assert len(chunks[0].samples) == 480 and not src.paced
    for a, b in itertools.pairwise(chunks):
        assert b.t_capture == pytest.approx(a.t_end)


def test_wav_realtime_replay_takes_as_long_as_the_file(one_second_wav):
    src = WavFile(WavFileConfig(path=one_second_wav, realtime=True, chunk_ms=50))
    t0 = time.monotonic()
    chunks = read_all(src)
    elapsed = time.monotonic() - t0
    assert 0.95 <= elapsed < 1.4
    assert sum(len(c.samples) for c in chunks) == SR
    # Each chunk is released once its last sample is due, and stamped with its first sample's time.
    assert chunks[-1].t_end == pytest.approx(t0 + 1.0, abs=0.1)


def test_wav_loop_starts_again_from_the_beginning(tmp_path):
    clip = tone(0.25, hz=300)
    src = WavFile(WavFileConfig(path=write_wav(tmp_path / "c.wav", clip), realtime=False, loop=True, chunk_ms=20))
    with src:
        got = np.concatenate([src.read().samples for _ in range(40)])  # 0.8 s > three loops
    assert np.array_equal(got, np.tile(clip, 4)[: len(got)])


@pytest.mark.parametrize("rate", [44100, 48000, 22050, 8000])
def test_wav_at_other_rates_is_resampled_to_16k(tmp_path, rate):
    path = write_wav(tmp_path / f"r{rate}.wav", tone(1.0, hz=440, rate=rate), rate=rate)
    chunks = read_all(WavFile(WavFileConfig(path=path, realtime=False)))
    samples = np.concatenate([c.samples for c in chunks])
    assert len(samples) == SR
    assert dominant_hz(samples) == pytest.approx(440, abs=2)
    assert np.sqrt(np.mean(samples[1000:-1000].astype(float) ** 2)) == pytest.approx(
        np.sqrt(np.mean(tone(1.0).astype(float) ** 2)), rel=0.02
    )


@pytest.mark.parametrize(
    ("kwargs", "config", "message"),
    [
        ({"channels": 2}, {}, "2 channels"),
        ({"width": 1}, {}, "8-bit"),
        ({"rate": 44100}, {"resample": False}, "44100 Hz"),
    ],
)
def test_wav_in_the_wrong_format_is_rejected_with_the_fix(tmp_path, kwargs, config, message):
    samples = tone(0.1)
    if kwargs.get("width") == 1:
        samples = (samples // 256 + 128).astype(np.uint8)
    if kwargs.get("channels") == 2:
        samples = np.repeat(samples, 2)
    path = write_wav(tmp_path / "bad.wav", samples, **kwargs)
    with pytest.raises(SourceError, match=message) as info:
        WavFile(WavFileConfig(path=path, **config)).open()
    assert "sox" in str(info.value)


def test_wav_missing_or_not_a_wav(tmp_path):
    with pytest.raises(SourceError, match="not found"):
        WavFile(WavFileConfig(path=tmp_path / "none.wav")).open()
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not RIFF audio at all")
    with pytest.raises(SourceError, match="16-bit PCM"):
        WavFile(WavFileConfig(path=junk)).open()
    with pytest.raises(SourceError, match="not open"):
        WavFile(WavFileConfig(path=junk)).read()


# --- resampling -------------------------------------------------------------------------------------------------


def test_streaming_resampler_is_chunk_size_independent_and_band_limited():
    x = tone(1.0, hz=1000, rate=48000)
    whole = StreamResampler(48000)
    ref = np.concatenate([whole.process(x), whole.flush()])
    pieces = StreamResampler(48000)
    out = [pieces.process(x[i : i + 1337]) for i in range(0, len(x), 1337)]
    assert np.array_equal(np.concatenate([*out, pieces.flush()]), ref)
    # 12 kHz cannot exist at 16 kHz; it must be filtered out, not folded down to 4 kHz.
    alias = StreamResampler(48000)
    y = np.concatenate([alias.process(tone(1.0, hz=12000, rate=48000)), alias.flush()])
    assert np.abs(y[100:-100]).max() < 50  # edges hold the switch-on transient, which is broadband
    assert np.array_equal(to_mono(np.array([100, 300, -2, -4], np.int16), 2), np.array([200, -3], np.int16))


# --- ring buffer ------------------------------------------------------------------------------------------------


def test_ring_buffer_drops_the_oldest_unread_audio_and_counts_it():
    buf = AudioRingBuffer(seconds=1.0)
    x = np.arange(24000, dtype=np.int64).astype(np.int16)  # 1.5 s of distinct values
    for chunk in chunks_of(x, ms=100, t0=10.0):
        buf.write(chunk)
    assert buf.dropped == 8000 and buf.dropped_s == pytest.approx(0.5) and buf.written == 24000
    got = buf.read()
    assert np.array_equal(got.samples, x[8000:]) and got.t_capture == pytest.approx(10.5)
    assert buf.read(timeout=0.01) is None
    buf.write(AudioChunk(x[:1600], 11.5))
    assert buf.dropped == 8000  # audio already read is not counted again when overwritten


def test_ring_buffer_latest_reads_the_newest_seconds_without_consuming():
    buf = AudioRingBuffer(seconds=2.0)
    assert buf.latest(1.0) is None
    x = tone(1.5)
    for chunk in chunks_of(x, t0=3.0):
        buf.write(chunk)
    last = buf.latest(0.5)
    assert np.array_equal(last.samples, x[-8000:]) and last.t_capture == pytest.approx(4.0)
    assert len(buf.latest(10.0).samples) == len(x)
    assert buf.unread == len(x)
    assert len(buf.read(max_samples=1000).samples) == 1000 and buf.unread == len(x) - 1000


def test_ring_buffer_read_does_not_span_a_gap_in_time():
    buf = AudioRingBuffer(seconds=5.0)
    buf.write(AudioChunk(tone(0.1), 1.0))
    buf.write(AudioChunk(tone(0.1), 1.1))  # contiguous
    buf.write(AudioChunk(tone(0.1), 3.0))  # 1.8 s later: a gap
    first, second = buf.read(), buf.read()
    assert first.t_capture == pytest.approx(1.0) and len(first.samples) == 3200
    assert second.t_capture == pytest.approx(3.0) and len(second.samples) == 1600


def test_ring_buffer_wakes_readers_on_close():
    buf = AudioRingBuffer(seconds=1.0)
    buf.write(AudioChunk(tone(0.1), 0.0))
    buf.close()
    assert buf.read(timeout=5) is not None
    t0 = time.monotonic()
    assert buf.read(timeout=5) is None and time.monotonic() - t0 < 0.5


def test_a_chunk_longer_than_the_buffer_keeps_its_newest_part():
    buf = AudioRingBuffer(seconds=0.5)
    x = np.arange(16000, dtype=np.int64).astype(np.int16)
    buf.write(AudioChunk(x, 0.0))
    got = buf.read()
    assert np.array_equal(got.samples, x[8000:]) and got.t_capture == pytest.approx(0.5)
    assert buf.dropped == 8000


# --- capture thread ---------------------------------------------------------------------------------------------


def test_capture_thread_fills_the_buffer_and_ends(one_second_wav):
    cap = AudioCaptureThread(WavFile(WavFileConfig(path=one_second_wav, realtime=False)), AudioRingBuffer(2.0))
    with cap:
        deadline = time.monotonic() + 5
        while cap.alive and time.monotonic() < deadline:
            time.sleep(0.01)
    assert cap.ended and cap.error is None and not cap.alive
    assert cap.buffer.written == SR and cap.buffer.dropped == 0 and cap.buffer.closed


def test_capture_thread_never_waits_for_a_slow_consumer(one_second_wav):
    cap = AudioCaptureThread(WavFile(WavFileConfig(path=one_second_wav, realtime=False, loop=True)), AudioRingBuffer(1))
    cap.start()
    time.sleep(0.2)  # nobody reads
    assert cap.stop()
    assert cap.buffer.written > 2 * SR and cap.buffer.dropped > SR


def test_capture_thread_stops_within_a_second(one_second_wav):
    cap = AudioCaptureThread(WavFile(WavFileConfig(path=one_second_wav, realtime=True, loop=True, chunk_ms=500)))
    cap.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    assert cap.stop(timeout=1.0)
    assert time.monotonic() - t0 < 1.0 and not cap.alive and not cap.ended and cap.error is None


def test_capture_thread_keeps_the_error(tmp_path):
    cap = AudioCaptureThread(WavFile(WavFileConfig(path=tmp_path / "gone.wav"))).start()
    cap._thread.join(2)
    assert isinstance(cap.error, SourceError) and not cap.alive and cap.buffer.closed


# --- PyAudio microphone (fake module) ---------------------------------------------------------------------------


def test_mic_is_chosen_by_name_and_resampled_to_16k_mono():
    fake = make_fake_pyaudio(tone_hz=500, realtime=True)
    mic = PyAudioMic(PyAudioMicConfig(device="usb pnp"), pyaudio_module=fake)
    t_open = time.monotonic()
    chunks = read_all_n(mic, 15)
    assert mic.device_name == "USB PnP Sound Device: Audio (hw:1,0)"
    assert fake.log.opened[0] == {"rate": 44100, "channels": 1, "device": 1, "frames": 1323}
    samples = np.concatenate([c.samples for c in chunks])
    assert samples.dtype == np.int16 and dominant_hz(samples[500:]) == pytest.approx(500, abs=5)
    assert len(samples) == pytest.approx(15 * 0.03 * SR, abs=80)
    # Chunks are dated on a steady sample clock that matches time.monotonic.
    assert all(b.t_capture == pytest.approx(a.t_end, abs=0.005) for a, b in itertools.pairwise(chunks))
    assert chunks[0].t_capture == pytest.approx(t_open, abs=0.05) and mic.overruns == 0
    assert fake.log.streams[0].closed and fake.log.terminated == 1


def read_all_n(source: AudioSource, n: int) -> list[AudioChunk]:
    with source:
        return [source.read() for _ in range(n)]


def test_mic_prefers_16k_and_downmixes_a_stereo_only_device():
    fake = make_fake_pyaudio(tone_hz=250)
    mic = PyAudioMic(PyAudioMicConfig(device="ReSpeaker"), pyaudio_module=fake)
    chunks = read_all_n(mic, 10)
    assert fake.log.opened[0]["rate"] == 16000 and fake.log.opened[0]["channels"] == 2
    assert mic.channels == 2 and len(chunks[0].samples) == 480  # no resampling lag at 16 kHz
    assert dominant_hz(np.concatenate([c.samples for c in chunks])) == pytest.approx(250, abs=5)


def test_mic_takes_the_device_default_rate_when_nothing_usual_fits():
    fake = make_fake_pyaudio(devices=[FakeDevice("Studio (hw:3,0)", 2, 96000.0, (96000,), (2,))], tone_hz=1000)
    mic = PyAudioMic(PyAudioMicConfig(device="studio"), pyaudio_module=fake)
    samples = np.concatenate([c.samples for c in read_all_n(mic, 20)])
    assert mic.device_rate == 96000 and mic.channels == 2
    assert dominant_hz(samples[500:]) == pytest.approx(1000, abs=5)


def test_mic_default_device_and_configured_rate():
    fake = make_fake_pyaudio()
    mic = PyAudioMic(PyAudioMicConfig(rate=48000), pyaudio_module=fake)
    read_all_n(mic, 3)
    assert mic.device_name == "sysdefault" and fake.log.opened[0]["rate"] == 48000


def test_mic_with_no_matching_device_lists_the_input_devices():
    mic = PyAudioMic(PyAudioMicConfig(device="Blue Yeti"), pyaudio_module=make_fake_pyaudio())
    with pytest.raises(SourceError) as info:
        mic.open()
    message = str(info.value)
    assert "Blue Yeti" in message
    for name in ("USB PnP Sound Device: Audio (hw:1,0)", "ReSpeaker 2-Mics: - (hw:2,0)", "sysdefault"):
        assert name in message
    assert "bcm2835 Headphones" not in message  # output-only devices are not listed


def test_mic_errors_name_the_fix():
    none = make_fake_pyaudio(devices=[], default_input=None)
    with pytest.raises(SourceError, match="none"):
        PyAudioMic(PyAudioMicConfig(), pyaudio_module=none).open()
    odd = make_fake_pyaudio(devices=[FakeDevice("Odd (hw:3,0)", 1, 48000.0, (11025,), (1,))])
    with pytest.raises(SourceError, match="accepts none of the rates"):
        PyAudioMic(PyAudioMicConfig(device="odd"), pyaudio_module=odd).open()
    busy = make_fake_pyaudio(busy=True)
    with pytest.raises(SourceError, match="holding it"):
        PyAudioMic(PyAudioMicConfig(device="USB"), pyaudio_module=busy).open()
    assert busy.log.terminated == 1  # PortAudio is released on a failed open


def test_mic_read_failures_become_a_source_error():
    fake = make_fake_pyaudio(fail_reads_after=2)
    mic = PyAudioMic(PyAudioMicConfig(device="USB"), pyaudio_module=fake)
    with mic:
        mic.read()
        mic.read()
        with pytest.raises(SourceError, match="stopped delivering"):
            mic.read()


def test_missing_pyaudio_is_backend_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyaudio", None)  # makes `import pyaudio` raise ImportError
    assert not PyAudioMic.available()
    with pytest.raises(BackendUnavailable, match="portaudio19-dev"):
        PyAudioMic(PyAudioMicConfig()).open()
    with pytest.raises(BackendUnavailable):
        list_input_devices()


def test_list_input_devices_with_the_fake():
    names = list_input_devices(make_fake_pyaudio())
    assert "USB PnP Sound Device: Audio (hw:1,0)" in names and "bcm2835 Headphones: - (hw:0,0)" not in names


def test_mic_warns_when_a_sound_server_device_is_used_without_one(monkeypatch, caplog):
    monkeypatch.delenv("PULSE_SERVER", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    with caplog.at_level(logging.WARNING, logger="device.audio.pyaudio_mic"):
        read_all_n(PyAudioMic(PyAudioMicConfig(device="default"), pyaudio_module=make_fake_pyaudio()), 1)
    assert "PULSE_SERVER" in caplog.text


def test_mic_in_a_capture_thread_stops_within_a_second():
    fake = make_fake_pyaudio(realtime=True)
    cap = AudioCaptureThread(PyAudioMic(PyAudioMicConfig(device="USB", chunk_ms=100), pyaudio_module=fake)).start()
    time.sleep(0.35)
    t0 = time.monotonic()
    assert cap.stop(timeout=1.0) and time.monotonic() - t0 < 1.0
    assert 0.15 * SR < cap.buffer.written < 0.6 * SR
    assert cap.error is None and fake.log.streams[0].closed


def test_real_pyaudio_imports_if_installed():
    try:
        import pyaudio
    except ImportError:
        missing_system_dep("PyAudio not installed (apt portaudio19-dev, pip pyaudio)")
    assert PyAudioMic.available() and hasattr(pyaudio, "paInt16")


# --- voice gate -------------------------------------------------------------------------------------------------


def burst_signal() -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Quiet room noise with two tone bursts; returns the signal and the bursts' (start, end) in seconds."""
    x = noise(4.0, -70.0)
    bursts = [(1.0, 1.6), (2.5, 3.2)]
    for start, end in bursts:
        i, j = round(start * SR), round(end * SR)
        x[i:j] = tone((j - i) / SR, hz=300, dbfs=-20) + x[i:j]
    return x, bursts


def test_frame_levels_in_dbfs():
    levels = frame_levels(np.concatenate([tone(0.03, dbfs=-20), np.zeros(480, np.int16)]), 480)
    assert levels[0] == pytest.approx(-20, abs=0.1) and levels[1] == -120.0


def test_gate_finds_tone_bursts_with_pre_roll_and_hangover():
    cfg = VoiceGateConfig(detector="loudness", pre_roll_s=0.3, hangover_s=0.3, frame_ms=30)
    x, bursts = burst_signal()
    t0 = 100.0
    segs = list(VoiceGate(cfg).segments_from(chunks_of(x, ms=20, t0=t0)))
    assert len(segs) == 2
    frame = 0.03
    for seg, (start, end) in zip(segs, bursts, strict=True):
        assert seg.t_start == pytest.approx(t0 + start - 0.3, abs=frame + 1e-9)
        assert seg.t_end == pytest.approx(t0 + end + 0.3, abs=frame + 1e-9)
        assert seg.t_end - seg.t_start == pytest.approx(seg.duration)
        assert seg.voiced_s == pytest.approx(end - start, abs=frame)
        # The pre-roll is really there: the segment opens quietly and the tone starts about 0.3 s in.
        onset = np.argmax(np.abs(seg.samples) > 1000) / SR
        assert onset == pytest.approx(t0 + start - seg.t_start, abs=1e-3) and onset >= 0.27
        # The samples are the stream's own, at the right offset.
        i = round((seg.t_start - t0) * SR)
        assert np.array_equal(seg.samples, x[i : i + len(seg.samples)])


def test_gate_result_does_not_depend_on_chunk_size():
    x, _ = burst_signal()
    results = []
    for ms in (10, 30, 64, 500, 4000):
        segs = list(VoiceGate(LOUDNESS).segments_from(chunks_of(x, ms=ms)))
        results.append([(round(s.t_start, 6), round(s.t_end, 6), len(s.samples)) for s in segs])
    assert all(r == results[0] for r in results)


def test_gate_drops_clicks_shorter_than_min_speech():
    x = noise(2.0, -70.0)
    x[SR : SR + 800] += tone(0.05, dbfs=-10)
    gate = VoiceGate(VoiceGateConfig(detector="loudness", min_speech_s=0.25))
    assert list(gate.segments_from(chunks_of(x))) == [] and gate.discarded == 1


def test_gate_hears_speech_over_steady_noise_and_learns_the_floor():
    x = noise(5.0, -40.0)
    x[2 * SR : 3 * SR] = x[2 * SR : 3 * SR] + tone(1.0, dbfs=-15)
    gate = VoiceGate(LOUDNESS)
    segs = list(gate.segments_from(chunks_of(x)))
    assert len(segs) == 1 and segs[0].voiced_s == pytest.approx(1.0, abs=0.06)
    assert gate.noise_floor_dbfs == pytest.approx(-40, abs=3)


def test_gate_adapts_when_a_fan_starts():
    # A steady noise 35 dB above a quiet room first opens the gate, then becomes the floor and closes it.
    x = np.concatenate([noise(1.0, -75.0), noise(7.0, -40.0, seed=1)])
    gate = VoiceGate(VoiceGateConfig(detector="loudness", noise_window_s=2.0, max_segment_s=10.0))
    segs = list(gate.segments_from(chunks_of(x, t0=0.0)))
    assert len(segs) == 1 and segs[0].t_end < 1.0 + 2.0 + 0.5
    assert not gate.in_speech


def test_gate_splits_long_speech_at_max_segment():
    x = np.concatenate([noise(1.0, -70.0), tone(4.0, dbfs=-20), noise(1.0, -70.0, seed=2)])
    segs = list(VoiceGate(VoiceGateConfig(detector="loudness", max_segment_s=1.5)).segments_from(chunks_of(x, t0=0.0)))
    assert len(segs) == 3
    assert all(s.duration <= 1.5 + 1e-9 for s in segs)
    for a, b in itertools.pairwise(segs):
        assert b.t_start == pytest.approx(a.t_end)  # contiguous: nothing lost at the split


def test_a_gap_in_the_audio_closes_the_segment():
    gate = VoiceGate(VoiceGateConfig(detector="loudness", hangover_s=0.3))
    out = []
    for chunk in chunks_of(np.concatenate([noise(1.0, -70.0), tone(0.5, dbfs=-20)]), t0=0.0):
        out += gate.process(chunk)
    assert out == [] and gate.in_speech
    out += gate.process(AudioChunk(noise(0.1, -70.0), 10.0))  # 8.5 s later
    assert len(out) == 1 and out[0].t_end <= 1.5 + 1e-9 and not gate.in_speech


def test_gate_config_is_strict():
    with pytest.raises(ValidationError):
        VoiceGateConfig(detector="loudness", threshold=-30)
    with pytest.raises(ValidationError):
        VoiceGateConfig(detector="loudness", max_segment_s=0.2, pre_roll_s=0.3)


# --- real speech ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def espeak_wav(tmp_path_factory) -> Path:
    exe = require_system_dep(shutil.which("espeak-ng"), "espeak-ng is not installed (apt-get install espeak-ng)")
    path = tmp_path_factory.mktemp("speech") / "hello.wav"
    subprocess.run([exe, "-w", str(path), "hello class"], check=True, capture_output=True, timeout=30)
    return path


def test_gate_on_real_speech_from_espeak(espeak_wav, tmp_path):
    # espeak-ng writes 22050 Hz: the WAV source resamples it, as it would a teacher's recording.
    with wave.open(str(espeak_wav)) as w:
        assert w.getframerate() != SR
    speech = np.concatenate([c.samples for c in read_all(WavFile(WavFileConfig(path=espeak_wav, realtime=False)))])
    if shutil.which("sox"):
        ref = tmp_path / "sox16k.wav"
        subprocess.run(["sox", str(espeak_wav), "-r", "16000", str(ref)], check=True, timeout=30)
        with wave.open(str(ref)) as w:
            sox = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(float)
        n = min(len(sox), len(speech))
        assert abs(len(sox) - len(speech)) <= 2
        assert np.corrcoef(sox[:n], speech[:n].astype(float))[0, 1] > 0.99
    room = np.concatenate([noise(1.0, -65.0), speech + noise(len(speech) / SR, -65.0, seed=3), noise(1.0, -65.0, 4)])
    active = np.flatnonzero(np.abs(speech) > 300)
    onset, offset = 1.0 + active[0] / SR, 1.0 + active[-1] / SR
    segs = list(VoiceGate(LOUDNESS).segments_from(chunks_of(room, t0=0.0)))
    assert 1 <= len(segs) <= 2  # "hello" and "class" may or may not be bridged by the hangover
    assert segs[0].t_start <= onset - 0.2 and segs[-1].t_end >= offset
    assert sum(s.voiced_s for s in segs) > 0.5 * (offset - onset)
