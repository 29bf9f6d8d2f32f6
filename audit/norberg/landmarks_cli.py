"""``xray-audit landmarks``: train the heatmap keypoint detector, and predict landmarks with it.

Parsers only at import time; torch is imported when a command runs, so ``xray-audit --help`` stays
fast.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("audit")

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from audit.norberg.cli import add_patient_left
    from audit.norberg.geometry import PATIENT_LEFT_ON

    marks = subparsers.add_parser(
        "landmarks", help="Norberg landmark detector: train on annotated images, predict on any images"
    )
    lsub = marks.add_subparsers(dest="landmarks_command", required=True, metavar="SUBCOMMAND")
    train = lsub.add_parser(
        "train",
        help="train the heatmap keypoint model on annotated images; reports held-out px and degrees",
        description="Train on the cases of CASES.csv that have landmarks in LANDMARKS.csv, hold out a "
        "share of them (chosen by case_id hash), and write MODEL_DIR/model.ts (TorchScript) and "
        "MODEL_DIR/model.json (landmarks, input contract, training config, data and model sha256, "
        "held-out errors).",
    )
    train.add_argument("--cases", type=Path, required=True, metavar="CASES.csv", help="case manifest")
    train.add_argument(
        "--landmarks", type=Path, required=True, metavar="LANDMARKS.csv", help="annotations (CSV or JSON)"
    )
    train.add_argument("--out", type=Path, required=True, metavar="MODEL_DIR")
    train.add_argument("--epochs", type=int, metavar="N", help="passes over the training cases")
    train.add_argument("--size", type=int, metavar="PX", help="network input side, px (multiple of 32)")
    train.add_argument("--seed", type=int, default=0, metavar="S", help="default 0")
    train.add_argument(
        "--device",
        default="cpu",
        metavar="auto|cpu|cuda",
        help="default cpu, where the same seed gives bit-identical weights; cuda is faster, not bit-exact",
    )
    train.add_argument(
        "--val-fraction", type=float, metavar="F", help="share of annotated cases held out (default 0.2)"
    )
    add_patient_left(train, PATIENT_LEFT_ON[0])
    predict = lsub.add_parser(
        "predict",
        help="landmarks for every image of a case manifest, in the annotation format",
        description="Run the keypoint model of MODEL_DIR (trained here, or your own TorchScript file "
        "described by a model.json) on every image of CASES.csv and write case_id,landmark,x,y in "
        "image pixels, which `xray-audit norberg angles` reads.",
    )
    predict.add_argument("model_dir", type=Path, metavar="MODEL_DIR")
    predict.add_argument("--cases", type=Path, required=True, metavar="CASES.csv")
    predict.add_argument("--out", type=Path, required=True, metavar="LANDMARKS.csv")
    predict.add_argument("--device", default="auto", metavar="auto|cpu|cuda", help="default auto")
    predict.add_argument("--batch-size", type=int, default=16, metavar="N", help="default 16")


def run(args: argparse.Namespace, progress: bool = True) -> int:
    from audit.cases import ManifestError
    from audit.evaluators.base import ContractError, WeightsHashError
    from audit.images import ImageReadError
    from audit.norberg.detector import DetectorError
    from audit.norberg.landmarks import LandmarkError

    try:
        if args.landmarks_command == "train":
            return _train(args, progress)
        return _predict(args, progress)
    except (
        DetectorError,
        LandmarkError,
        ManifestError,
        WeightsHashError,
        ContractError,
        ImageReadError,
        FileNotFoundError,
    ) as exc:
        log.error("error: %s", exc)
        return EXIT_PROBLEMS


def _usage_error(exc: ValueError) -> int:
    log.error("error: %s", exc)
    return EXIT_USAGE


def _train(args: argparse.Namespace, progress: bool) -> int:
    from audit.evaluators.base import resolve_device
    from audit.norberg.train import TrainConfig, train_detector

    overrides = {
        key: value
        for key, value in (("epochs", args.epochs), ("size", args.size), ("val_fraction", args.val_fraction))
        if value is not None
    }
    try:
        resolve_device(args.device)
        config = TrainConfig(seed=args.seed, device=args.device, **overrides)
    except ValueError as exc:
        return _usage_error(exc)
    result = train_detector(
        args.cases, args.landmarks, args.out, config, patient_left=args.patient_left, progress=progress
    )
    print(f"model: {result.model_dir / 'model.ts'} (sha256 {result.spec.sha256})")
    print(f"trained in {result.seconds:.1f} s, {result.parameters} parameters")
    held = result.held_out
    if held is None:
        print("held-out error: none (--val-fraction 0)")
    else:
        px, deg = held["px"], held["angle_mae_deg"]
        print(f"held-out error over {held['n_cases']} case(s):")
        print(
            "  landmarks, mean px: "
            + ", ".join(f"{name} {v['mean']:.2f}" for name, v in px.items() if name != "mean")
            + f"; all {px['mean']:.2f}"
        )
        print(
            f"  Norberg angle MAE, deg: left {deg['left']:.2f}, right {deg['right']:.2f}, "
            f"pooled {deg['pooled']:.2f}"
        )
    if result.spec.record.get("data", {}).get("phantom"):
        print("phantom data: trained and held out on pelvis phantom drawings; not evidence about real hips")
    print(result.model_dir / "model.json")
    return EXIT_OK


def _predict(args: argparse.Namespace, progress: bool) -> int:
    from audit import images
    from audit.cases import load_manifest
    from audit.evaluators.base import resolve_device
    from audit.norberg.detector import DetectorError, KeypointDetector, predict_landmarks, write_landmarks_csv

    if args.batch_size < 1:
        return _usage_error(ValueError(f"--batch-size must be >= 1, got {args.batch_size}"))
    try:
        resolve_device(args.device)
    except ValueError as exc:
        return _usage_error(exc)
    detector = KeypointDetector.load(args.model_dir, device=args.device)
    manifest = load_manifest(args.cases, check_pixels=False)
    pixels, problems = {}, []
    for case in manifest:
        try:
            pixels[case.case_id] = images.read_image(case.image).pixels
        except (images.ImageReadError, OSError) as exc:
            problems.append(f"row {case.row}, case {case.case_id!r}: {exc}")
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise DetectorError(f"{args.cases}: {len(problems)} image(s) could not be read:\n{listed}")
    landmarks = predict_landmarks(detector, pixels, batch_size=args.batch_size, progress=progress)
    out = write_landmarks_csv(landmarks, args.out)
    log.info("%d case(s), %d landmark(s) each -> %s", len(landmarks), len(detector.landmarks), out)
    print(out)
    return EXIT_OK
