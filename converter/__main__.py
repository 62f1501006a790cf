"""Command line for training, quantising and evaluating Aula's models (TensorFlow lives here only)."""

from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> int:
    """Run one converter command."""
    parser = argparse.ArgumentParser(prog="python -m converter")
    sub = parser.add_subparsers(dest="command", required=True)
    rd = sub.add_parser("register-detector", help="write the BlazeFace detectors' manifest entries "
                                                  "(converter/register_detector.py)")
    rd.add_argument("--folder", type=Path, help="model folder (default: models_tflite/)")

    tf_ = sub.add_parser("train-face", help="train, quantise, evaluate and export the face model")
    tf_.add_argument("--work-dir", type=Path, help="checkpoint folder (default: ~/.cache/aula/train_face)")
    tf_.add_argument("--epochs", type=int, default=45)
    tf_.add_argument("--batch-size", type=int, default=128)
    tf_.add_argument("--threads", type=int, default=2)
    tf_.add_argument("--arch", default="v1", help="network architecture (converter/face_net.py: v1, v2)")
    tf_.add_argument("--lr", type=float, default=0.04, help="peak learning rate of the cosine schedule")
    tf_.add_argument("--init-from", type=Path,
                     help="start from these weights (an epoch snapshot of an earlier run): a warm restart")
    tf_.add_argument("--init-arch", help="architecture of --init-from's weights when smaller than --arch: the "
                                         "trained network is grown into the new one (converter/grow.py)")
    tf_.add_argument("--teacher", type=Path, help="distil from these teacher logits (written by teacher-face)")
    tf_.add_argument("--kd-alpha", type=float, default=0.5, help="weight of the distillation term (0..1)")
    tf_.add_argument("--kd-temperature", type=float, default=3.0, help="softmax temperature of the distillation term")
    tf_.add_argument("--erase", type=float, default=0.0,
                     help="probability of random erasing (one rectangle of 2-20%% of the face, filled with noise)")
    tf_.add_argument("--no-export", action="store_true", help="train only")

    ex = sub.add_parser("export-face", help="quantise, evaluate and export trained face weights")
    ex.add_argument("--work-dir", type=Path)
    ex.add_argument("--swa-last", type=_counts, default=(8,),
                    help="also try the average of the last N epoch snapshots (several: 4,8,12); kept only if better on "
                         "validation")
    ex.add_argument("--soup-with", type=Path,
                    help="weights the run started from (its --init-from): also try the chosen weights' half-and-half "
                         "average with them, kept only if better on validation")
    ex.add_argument("--notes", help="a sentence about this run for the model card (how it was trained)")

    ev = sub.add_parser("evaluate-face", help="evaluate the committed face models again, fit their mirror gates "
                                              "on validation, and rewrite their manifest entries and card")
    ev.add_argument("--work-dir", type=Path, help="the training run the weights came from (its history goes on "
                                                  "the card)")

    av = sub.add_parser("average-face", help="write the average of a run's last epoch snapshots (to start a "
                                             "new cycle from)")
    av.add_argument("--work-dir", type=Path)
    av.add_argument("--last", type=int, default=8)
    av.add_argument("--out", type=Path, required=True)

    im = sub.add_parser("import-onnx", help="rebuild trainable weights from an exported face ONNX model (to start "
                                            "a new cycle from the committed model)")
    im.add_argument("--onnx", type=Path, default=Path("models_tflite/face_emotion.onnx"))
    im.add_argument("--out", type=Path, required=True)

    te = sub.add_parser("teacher-face", help="write a model's mirror-averaged logits on the training and validation "
                                             "faces, for distillation (train-face --teacher)")
    te.add_argument("--model", type=Path, default=Path("models_tflite/face_emotion.onnx"))
    te.add_argument("--out", type=Path, required=True)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.command == "register-detector":
        from converter.register_detector import register

        register(args.folder)
        return 0

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

    export_face(work_dir, swa_last=getattr(args, "swa_last", (8,)),
                notes=getattr(args, "notes", None), soup_with=getattr(args, "soup_with", None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
