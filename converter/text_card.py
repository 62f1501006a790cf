"""The text-emotion model card (models_tflite/cards/text_emotion.md), written from export-text's report."""

from __future__ import annotations

import platform
from collections import Counter
from pathlib import Path

from device.contract.labels import LABELS


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _number(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _files(paths, otherwise: str) -> str:
    """Weight files as `run/file`, comma-separated; one listed n times (a teacher's weighting) says so."""
    counts = Counter(f"`{Path(f).parent.name}/{Path(f).name}`" for f in paths or ())
    return ", ".join(name + ("" if n == 1 else f" (counted {n} times)") for name, n in counts.items()) or otherwise


def _history_note(training: dict) -> str:
    """What the run was made from, where it was not MiniLM and the recipe alone: a soup, a second stage, a teacher,
    extra rows."""
    recipe, notes = training.get("recipe") or {}, []
    if recipe.get("soup"):
        notes.append(f"The weights are the uniform average (a soup, `converter/text_soup.py`) of {len(recipe['soup'])} "
                     f"runs fine-tuned from the same MiniLM: {_files(recipe['soup'], '')}.")
    if (training.get("init_from") or {}).get("weights"):
        notes.append(f"A second stage: the run started from `{training['init_from']['weights']}`, with a fresh "
                     "warm-up and decay.")
    if recipe.get("distill"):
        notes.append(f"Distilled (`converter/text_teacher.py`): the loss is {1 - recipe['distill']:.2f} x the labels' "
                     f"cross-entropy plus {recipe['distill']:.2f} x T^2 x the cross-entropy against the teacher's "
                     f"probabilities at T = {recipe.get('distill_temperature', 2.0)}. The teacher "
                     f"(`{Path(recipe['teacher']).name}`, `python -m converter teach-text`) is the mean "
                     "log-probability on the training rows of "
                     f"{_files(training.get('teacher_sources'), 'earlier runs')}.")
    if recipe.get("emoevent"):
        notes.append("EmoEvent's English training tweets with one of the six emotions (2,799 rows, "
                     "`converter/emoevent.py`) are added to the training rows.")
    return "".join(f"\n- {n}" for n in notes)


def write_text_card(report: dict, path: Path) -> None:
    m = report["models"]
    i8, base = m["text_emotion_int8"], report["tfidf_baseline"]
    rows = "\n".join(
        f"| {name} | {report['bytes'][name] / 1e6:.1f} MB | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | "
        f"{r['ms_per_sentence']:.2f} |" for name, r in m.items())
    per_class = "\n".join(
        f"| {c} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |"
        for c, v in report["per_class_int8"].items())
    epochs = "\n".join(f"| {h['epoch']} | {_number(h.get('train_loss'), '.4f')} | {h['dev_accuracy']:.4f} | "
                       f"{h['dev_macro_f1']:.4f} | {_number(h.get('seconds'), '.0f')} |"
                       for h in report["training"]["history"])
    confusion = "\n".join(f"| {LABELS[i]} | " + " | ".join(str(v) for v in row) + " |"
                          for i, row in enumerate(report["confusion_int8"]))
    precision = report["training"].get("precision") or "bfloat16"
    changes = "".join(
        f"\n- This run was resumed at epoch {c['epoch'] + 1}, batch {c['batch']} with the recipe above; before that it "
        f"followed {c['before']} (the learning-rate schedule is set by the number of epochs)."
        for c in report["training"].get("recipe_changes") or ())
    recipe = report["training"].get("recipe") or {}
    fine_aux = recipe.get("fine_aux") or 0
    fine = ("" if not fine_aux else
            f"\n- A second head on the same pooled vector learns the 28 original GoEmotions labels (27 emotions and "
            f"neutral, `original/`, the same rows), its cross-entropy added to the loss times {fine_aux}; it tells "
            "apart what the grouping merges (annoyance and anger, say). Only the 7-way head is exported.")
    fine += _history_note(report["training"])
    licence = ("weights Apache-2.0 (all-MiniLM-L6-v2 and GoEmotions are both Apache-2.0)" if not recipe.get("emoevent")
               else "all-MiniLM-L6-v2 and GoEmotions are Apache-2.0, but EmoEvent is CC BY-NC-SA 4.0 (assumed, "
                    "DATASETS.md): these weights are for research and teaching only")
    text = f"""# Text-emotion model card: `{report['version']}`

all-MiniLM-L6-v2 (6 layers, 384 wide, 22.7 M parameters) with a mean-pooled 7-way head, every weight fine-tuned
on GoEmotions' Ekman grouping for Aula's labels ({', '.join(LABELS)}). It runs on the device as TFLite
(dynamic-range int8 by default) behind the `tokenizers` library's WordPiece tokenizer
(`models_tflite/text_tokenizer.json`); no torch or TensorFlow on the device.

## Figures (GoEmotions test, {report['test_rows']} single-label rows; {_cpu()}, one thread)

| model | size | accuracy | macro-F1 | ms per sentence |
|---|---|---|---|---|
{rows}
| TF-IDF word + char n-grams, logistic regression (same run) | - | {base['accuracy']:.4f} | \
{base['macro_f1']:.4f} | {base['ms_per_sentence']:.2f} |

- int8 minus float macro-F1: {report['int8_minus_float_macro_f1_points']:+.2f} points; the two agree on
  {100 * report['int8_float_agreement']:.1f}% of the rows.
- Words that carry no emotion: RAVDESS's two sentences ("Kids are talking by the door", "Dogs are sitting by the
  door") come out neutral {i8['neutral_sentences_neutral']} of 2 times (int8). The check on their transcripts,
  clip by clip, is in docs/fusion.md when the fusion measurement has run.
- Reproduce: `python -m converter evaluate-text` (the committed int8 model, and the float twin and ONNX export
  where export-text wrote them). Training: `python -m converter train-text` then `export-text` for one run; the
  runs, the teacher and the student behind this model, and how dev chose it: `docs/training.md`.
- Only the int8 model is committed (`models_tflite/`). The float twin and the ONNX export (about 90 MB each) are
  written by export-text to `artifacts/text_emotion/`, with a manifest of their own, and are not kept in git.

## Training
- Data: GoEmotions train (43,410 Reddit comments, Apache-2.0). A row with several labels (3,855 rows) has its
  target shared equally among them; the loss weights class c by (largest class count / count of c) ^ 0.5.{fine}
- Recipe: {report['training']['recipe']}; AdamW with linear warm-up and decay, {precision} on the CPU, rows
  bucketed by length. The epoch with the best dev macro-F1 is kept (epoch {report['epoch']}).{changes}
- Calibration on dev only (the test split chose nothing): per-class logit offsets
  {report['dev']['offsets']}, the mean over {report['dev'].get('bags', 1)} bootstrap resamples of dev of the offsets
  that maximise macro-F1 (`export_text.bagged_offsets`), folded into the classifier's bias, and a softmax temperature
  {report['dev']['temperature']} that minimises dev NLL. Dev after both: accuracy {report['dev']['accuracy']:.4f},
  macro-F1 {report['dev']['macro_f1']:.4f}.

| epoch | train loss | dev accuracy | dev macro-F1 | seconds |
|---|---|---|---|---|
{epochs}

## Per class (int8, test)
| label | precision | recall | F1 | support |
|---|---|---|---|---|
{per_class}

Confusion (rows true, columns predicted, order {', '.join(LABELS)}):

| | {' | '.join(LABELS)} |
|---|{'---|' * len(LABELS)}
{confusion}

## Limits
- Reddit comments are not classroom speech: transcripts are shorter, spoken, and mostly the teacher's. The words'
  mood is shown as its own line and says whose words they mostly are.
- English only. Labels are single annotators' readings of short texts; GoEmotions' raters often disagree.
- Licence: {licence}.
"""
    path.write_text(text)
