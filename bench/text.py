"""Text-emotion benchmark: the device's int8 model (and its float twin, where export-text wrote it) against the
TF-IDF word + character n-gram baseline, in the same run, on GoEmotions test's single-label rows.

Prints accuracy, macro-F1 and milliseconds per sentence (one sentence per call, one thread, as the device calls
it) for each, and the ratio of the model's time to the baseline's. Writes artifacts/bench_text.json. The target
(issue: macro-F1 >= 0.66, int8 within 1 point of float, <= 25 MB) decides the exit status.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import banner, describe, write_artifact  # noqa: E402
from converter import goemotions  # noqa: E402
from converter.export_text import FILES, _load, evaluate, folder_of, tfidf_baseline  # noqa: E402

TARGET_MACRO_F1 = 0.66
TARGET_INT8_GAP_POINTS = 1.0
TARGET_MB = 25.0


def main() -> int:
    info = describe()
    print(banner(info))
    test = goemotions.load("test")
    rows = int(test.single.sum())
    results = {}
    for name in ("text_emotion_int8", "text_emotion_float"):
        path = folder_of(name) / FILES[name]
        if not path.is_file():
            print(f"{name}: not present ({path}); python -m converter export-text writes it")
            continue
        r = evaluate(_load(name), test)
        results[name] = {"accuracy": round(r["accuracy"], 4), "macro_f1": round(r["macro_f1"], 4),
                         "ms_per_sentence": r["ms_per_sentence"], "mb": round(path.stat().st_size / 1e6, 1)}
    base = tfidf_baseline(goemotions.load("train"), test)
    print(f"\n== text emotion, GoEmotions test ({rows} single-label rows), one sentence per call, one thread ==")
    print(f"{'model':<22}{'accuracy':>10}{'macro-F1':>10}{'ms/sentence':>13}{'x baseline':>12}{'MB':>7}")
    for name, r in results.items():
        print(f"{name:<22}{r['accuracy']:>10.4f}{r['macro_f1']:>10.4f}{r['ms_per_sentence']:>13.2f}"
              f"{r['ms_per_sentence'] / base['ms_per_sentence']:>12.2f}{r['mb']:>7.1f}")
    print(f"{'TF-IDF + logistic reg.':<22}{base['accuracy']:>10.4f}{base['macro_f1']:>10.4f}"
          f"{base['ms_per_sentence']:>13.2f}{1.0:>12.2f}{'-':>7}")
    i8, fl = results.get("text_emotion_int8"), results.get("text_emotion_float")
    gap = None if not (i8 and fl) else round(100 * (i8["macro_f1"] - fl["macro_f1"]), 2)
    ok = bool(i8) and i8["macro_f1"] >= TARGET_MACRO_F1 and i8["mb"] <= TARGET_MB and (
        gap is None or abs(gap) <= TARGET_INT8_GAP_POINTS)
    if i8:
        print(f"int8 macro-F1 {i8['macro_f1']:.4f} (target >= {TARGET_MACRO_F1}); int8 minus float "
              f"{'n/a' if gap is None else f'{gap:+.2f}'} points (target within {TARGET_INT8_GAP_POINTS}); "
              f"{i8['mb']:.1f} MB (target <= {TARGET_MB})")
    print(f"{'PASS' if ok else 'MISS'}  text-emotion targets")
    write_artifact("bench_text.json", {"machine": info, "rows": rows, "models": results, "tfidf_baseline": base,
                                       "int8_minus_float_macro_f1_points": gap})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
