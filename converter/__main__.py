"""Command line for training, quantising and evaluating Aula's models (TensorFlow lives here only)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _counts(value: str) -> tuple[int, ...]:
    """argparse type for `--swa-last 8` or `--swa-last 4,8,12`."""
    try:
        counts = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: give a number of epochs, or several joined by commas") from None
    if not counts or min(counts) < 0:
        raise argparse.ArgumentTypeError(f"{value!r}: epoch counts must be >= 0")
    return counts


# What export-face tries by default: the best checkpoint and the averages of the last 4, 8 and 12 epochs,
# kept by validation accuracy (the shipped model's cycles used 4,8,12 and 4,6,8).
SWA_LAST = (4, 8, 12)


def build_parser() -> argparse.ArgumentParser:
    """Return the command line; `train-face` with its defaults starts the documented recipe (docs/training.md)."""
    from converter.face_net import ARCHITECTURES
    from converter.train_face import RECIPE

    parser = argparse.ArgumentParser(prog="python -m converter")
    sub = parser.add_subparsers(dest="command", required=True)
    rd = sub.add_parser("register-detector", help="write the BlazeFace detectors' manifest entries "
                                                  "(converter/register_detector.py)")
    rd.add_argument("--folder", type=Path, help="model folder (default: models_tflite/)")
    rw = sub.add_parser("register-whisper", help="copy Whisper tiny.en (CTranslate2) into the model folder and write "
                                                 "its manifest entry (converter/register_whisper.py)")
    rw.add_argument("--folder", type=Path, help="model folder (default: models_tflite/)")

    tf_ = sub.add_parser("train-face", help="train the face model, then export it (docs/training.md)",
                         description="Train the face-emotion network on FER2013 (resuming if interrupted), then "
                                     "run export-face. With no options: the shipped architecture from scratch, "
                                     "step 1 of docs/training.md.")
    tf_.add_argument("--work-dir", type=Path, help="checkpoint folder (default: ~/.cache/aula/train_face)")
    tf_.add_argument("--arch", default=RECIPE["arch"], choices=sorted(ARCHITECTURES),
                     help="network architecture, converter/face_net.py (default: %(default)s, the shipped one)")
    tf_.add_argument("--epochs", type=int, default=RECIPE["epochs"], help="length of the cosine cycle "
                                                                          "(default: %(default)s)")
    tf_.add_argument("--lr", type=float, default=RECIPE["lr"],
                     help="peak learning rate of the cosine schedule (default: %(default)s)")
    tf_.add_argument("--batch-size", type=int, default=RECIPE["batch_size"],
                     help="faces per step (default: %(default)s)")
    tf_.add_argument("--threads", type=int, default=2, help="TensorFlow threads (default: %(default)s)")
    tf_.add_argument("--init-from", type=Path,
                     help="start from these weights (an epoch snapshot of an earlier run, or import-onnx's output): "
                          "a warm restart")
    tf_.add_argument("--teacher", type=Path, help="distil from these teacher logits (written by teacher-face)")
    tf_.add_argument("--kd-alpha", type=float, default=RECIPE["kd_alpha"],
                     help="weight of the distillation term, 0..1 (default: %(default)s)")
    tf_.add_argument("--kd-temperature", type=float, default=RECIPE["kd_temperature"],
                     help="softmax temperature of the distillation term (default: %(default)s)")
    tf_.add_argument("--init-arch", help="experiment, not in the recipe: architecture of --init-from's weights when "
                                         "smaller than --arch; they are grown into it (converter/grow.py)")
    tf_.add_argument("--erase", type=float, default=0.0,
                     help="experiment, not in the recipe: probability of random erasing (one rectangle of 2-20%% "
                          "of the face, filled with noise; default: %(default)s)")
    tf_.add_argument("--no-export", action="store_true", help="train only")

    ex = sub.add_parser("export-face", help="quantise, evaluate and export trained face weights")
    ex.add_argument("--work-dir", type=Path, help="the training run (default: ~/.cache/aula/train_face)")
    ex.add_argument("--swa-last", type=_counts, default=SWA_LAST,
                    help="also try the average of the last N epoch snapshots (several: 4,8,12); kept only if better on "
                         "validation (default: 4,8,12)")
    ex.add_argument("--soup-with", type=Path,
                    help="weights the run started from (its --init-from): also try the chosen weights' half-and-half "
                         "average with them, kept only if better on validation")
    ex.add_argument("--notes", help="a sentence about this run for the model card (how it was trained)")

    ev = sub.add_parser("evaluate-face", help="evaluate the committed face models again, fit their mirror gates "
                                              "on validation, and rewrite their manifest entries and card")
    ev.add_argument("--work-dir", type=Path, help="the training run the weights came from (its history goes on "
                                                  "the card)")

    im = sub.add_parser("import-onnx", help="rebuild trainable weights from an exported face ONNX model (to start "
                                            "a new cycle from it)")
    im.add_argument("--onnx", type=Path, default=Path("models_tflite/face_emotion.onnx"))
    im.add_argument("--out", type=Path, required=True)

    te = sub.add_parser("teacher-face", help="write a model's mirror-averaged logits on the training and validation "
                                             "faces, for distillation (train-face --teacher)")
    te.add_argument("--model", type=Path, default=Path("models_tflite/face_emotion.onnx"))
    te.add_argument("--out", type=Path, required=True)

    av = sub.add_parser("average-face", help="experiment, not in the recipe: write the average of a run's last "
                                             "epoch snapshots (to start a new cycle from)")
    av.add_argument("--work-dir", type=Path)
    av.add_argument("--last", type=int, default=8)
    av.add_argument("--out", type=Path, required=True)

    ts = sub.add_parser("train-speech", help="train a speech-emotion model on RAVDESS actors 1-18: the head on "
                                              "Whisper's encoder (--route whisper, the default model; it chooses "
                                              "its recipe by 5-fold actor-grouped cross-validation) or the log-mel "
                                              "CNN (--route cnn; --cv: its cross-validation instead)")
    ts.add_argument("--route", choices=("whisper", "cnn"), default="whisper")
    ts.add_argument("--cv", action="store_true", help="cross-validate over actors 1-18 instead of the final run")
    ts.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    ts.add_argument("--threads", type=int, default=1)
    es = sub.add_parser("export-speech", help="quantise, evaluate and register the trained speech model")
    es.add_argument("--route", choices=("whisper", "cnn"), default="whisper")
    es.add_argument("--model", type=Path, help="trained Keras file (default: the final run's in the cache)")
    ev = sub.add_parser("evaluate-speech", help="evaluate the committed speech models on RAVDESS test actors 19-24")
    ev.add_argument("--route", choices=("whisper", "cnn", "both"), default="both")

    tt = sub.add_parser("train-text", help="fine-tune all-MiniLM-L6-v2 on GoEmotions (Ekman) for the 7 labels, "
                                           "resuming if interrupted, then run export-text")
    tt.add_argument("--work-dir", type=Path, help="checkpoint folder (default: ~/.cache/aula/train_text)")
    tt.add_argument("--epochs", type=int, help="default: the recipe's (converter/train_text.py)")
    tt.add_argument("--threads", type=int, default=2)
    tt.add_argument("--limit", type=int, help="train on the first N rows only (a smoke run)")
    tt.add_argument("--float32", action="store_true", help="train in float32 instead of bfloat16")
    tt.add_argument("--no-export", action="store_true", help="train only")
    tt.add_argument("--init-from", type=Path, help="start from an earlier run's epochN.weights.h5 (a second stage)")
    tt.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's)")
    tt.add_argument("--seed", type=int, help="shuffling and dropout seed (default: the recipe's)")
    tt.add_argument("--fine-aux", type=float, help="weight of an auxiliary head on the 28 original labels "
                                                   "(default: the recipe's)")
    tt.add_argument("--emoevent", action="store_true", default=None,
                    help="add EmoEvent's English training tweets with one of the six emotions (CC BY-NC-SA)")
    tt.add_argument("--teacher", help="a teach-text file: distil from its ensemble (with --distill)")
    tt.add_argument("--distill", type=float, help="weight of the teacher's term in the loss, 0-1 (default: 0)")
    tt.add_argument("--encoder", choices=("minilm", "mpnet"),
                    help="mpnet: fine-tune all-mpnet-base-v2, a teacher too large for the device (default: minilm)")
    th = sub.add_parser("teach-text", help="average fine-tuned text runs' log-probabilities on GoEmotions train "
                                           "into a teacher file for train-text --teacher (converter/text_teacher.py)")
    th.add_argument("items", type=Path, nargs="+", help="training run folders (their best epoch), .weights.h5 files, "
                                                        "or exported .tflite models (models_tflite/text_emotion_int8"
                                                        ".tflite: its dev offsets are taken off)")
    th.add_argument("--out", type=Path, required=True, help="the teacher file (.npz)")
    et = sub.add_parser("export-text", help="quantise, evaluate and register the fine-tuned text model")
    et.add_argument("--work-dir", type=Path, help="the training run (default: ~/.cache/aula/train_text)")
    sub.add_parser("evaluate-text", help="evaluate the committed text models on the GoEmotions test split")
    st = sub.add_parser("soup-text", help="average the weights of fine-tuned text runs into one model and score it "
                                          "on dev (converter/text_soup.py); export it with export-text --work-dir")
    st.add_argument("items", type=Path, nargs="+", help="training run folders (their best epoch) or .weights.h5 files")
    st.add_argument("--work-dir", type=Path, required=True, help="where the soup is saved as a run")
    fu = sub.add_parser("evaluate-fusion", help="choose the fusion weights on validation splits, score RAVDESS pairs "
                                                "and label-paired test triples once, and write them to the manifest "
                                                "and card (converter/evaluate_fusion.py)")
    fu.add_argument("--cached-transcripts", action="store_true",
                    help="pair actors 1-18 only where a transcript is cached already (test actors: all, always)")
    return parser


def _text(args) -> int:
    from converter import train_text

    work_dir = getattr(args, "work_dir", None) or train_text.default_work_dir()
    if args.command == "teach-text":
        from converter.text_teacher import teach

        print(json.dumps(teach(args.items, args.out)))
        return 0
    if args.command == "soup-text":
        from converter.text_soup import soup

        print(json.dumps(soup(args.items, args.work_dir)))
        return 0
    if args.command == "train-text":
        changes = {k: getattr(args, k) for k in ("epochs", "lr", "seed", "fine_aux", "emoevent", "teacher", "distill",
                                                 "encoder")
                   if getattr(args, k) is not None}
        recipe = dict(train_text.RECIPE, **changes)
        train_text.train(work_dir, recipe, threads=args.threads, limit=args.limit, bf16=not args.float32,
                         init_from=args.init_from)
        if args.no_export:
            return 0
    from converter import export_text

    if args.command == "evaluate-text":
        export_text.evaluate_committed()
    else:
        export_text.export_text(work_dir)
    return 0


def _speech(args) -> int:
    from converter.datasets import cache_dir

    if args.command != "evaluate-speech" and args.route == "whisper":
        from converter import export_speech_head, train_speech_head, whisper_features

        head = args.model if args.command == "export-speech" and args.model else export_speech_head.default_head_path()
        if args.command == "train-speech":
            variants = ["clean", *train_speech_head.AUGMENTED, *train_speech_head.REVERBERANT, train_speech_head.ROOM]
            whisper_features.extract(variants)
            whisper_features.extract_layers(variants)
            whisper_features.extract_voice(variants)
            train_speech_head.main(["--out", str(head)])
        export_speech_head.export(head)
        return 0
    final = cache_dir() / "speech_cnn_final.json"
    if args.command == "train-speech":
        from converter.train_speech import main as train_main

        extra = ["--epochs", str(args.epochs)] if args.epochs else []
        mode = ["--cv", "--out", str(cache_dir() / "speech_cv.json")] if args.cv else ["--final", "--out", str(final)]
        return train_main([*mode, *extra, "--threads", str(args.threads)])
    if args.command == "export-speech":
        from converter.export_speech import export_speech

        export_speech(args.model or final.with_suffix(".keras"), final)
        return 0
    if args.route in ("whisper", "both"):
        from converter.export_speech_head import evaluate_committed as evaluate_head

        evaluate_head()
    if args.route in ("cnn", "both"):
        from converter.export_speech import evaluate_committed

        evaluate_committed()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one converter command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.command == "register-detector":
        from converter.register_detector import register

        register(args.folder)
        return 0
    if args.command == "register-whisper":
        from converter.register_whisper import register as register_whisper

        register_whisper(args.folder)
        return 0
    if args.command.endswith("-speech"):
        return _speech(args)
    if args.command == "evaluate-fusion":
        from converter.evaluate_fusion import evaluate as evaluate_fusion

        evaluate_fusion(complete=not args.cached_transcripts)
        return 0
    if args.command.endswith("-text"):
        return _text(args)

    from converter.train_face import default_work_dir

    work_dir = getattr(args, "work_dir", None) or default_work_dir()
    if args.command == "import-onnx":
        from converter.onnx_import import write_init_weights

        out, arch = write_init_weights(args.onnx, args.out)
        logging.getLogger("converter").info("wrote %s weights to %s (train-face --arch %s --init-from %s)",
                                            arch, out, arch, out)
        return 0
    if args.command == "teacher-face":
        from converter.distill import write_teacher

        write_teacher(args.model, args.out)
        return 0
    if args.command == "evaluate-face":
        from converter.export_face import evaluate_committed

        evaluate_committed(getattr(args, "work_dir", None))
        return 0
    if args.command == "average-face":
        from converter.swa import save_average

        save_average(work_dir, args.last, args.out)
        return 0
    if args.command == "train-face":
        from converter.train_face import train

        train(work_dir, epochs=args.epochs, batch_size=args.batch_size, threads=args.threads, arch=args.arch,
              lr=args.lr, init_from=args.init_from, init_arch=args.init_arch, teacher=args.teacher,
              kd_alpha=args.kd_alpha, kd_temperature=args.kd_temperature, erase=args.erase)
        if args.no_export:
            return 0
    from converter.export_face import export_face

    export_face(work_dir, swa_last=getattr(args, "swa_last", SWA_LAST),
                notes=getattr(args, "notes", None), soup_with=getattr(args, "soup_with", None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
