"""``xray-audit norberg``: angles from landmark files, and the pelvis phantom cohort.

Parsers only at import time; the work is imported when a command runs, so ``xray-audit --help``
stays fast.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("audit")

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2
STANDARD_DISPLAY = "image-right, the standard radiographic display"


def add_patient_left(
    parser: argparse.ArgumentParser, default: str | None = None, default_text: str = ""
) -> None:
    """``--patient-left image-right|image-left``: where the images show the patient's left hip. With
    no ``default`` the command resolves it (``default_text`` says how)."""
    from audit.norberg.geometry import PATIENT_LEFT_ON

    parser.add_argument(
        "--patient-left",
        choices=PATIENT_LEFT_ON,
        default=default,
        help=f"where the images show the patient's left hip (default: {default_text or STANDARD_DISPLAY})",
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from audit.norberg.geometry import PATIENT_LEFT_ON

    norberg = subparsers.add_parser("norberg", help="Norberg angles of canine hips; the pelvis phantom")
    nsub = norberg.add_subparsers(dest="norberg_command", required=True, metavar="SUBCOMMAND")
    angles = nsub.add_parser(
        "angles",
        help="Norberg angle per case and side from a landmark file (CSV or JSON)",
        description="Validate the landmark file (reporting every problem at once) and write "
        "case_id, side, angle_deg, one row per case and side.",
    )
    angles.add_argument("landmarks", type=Path, metavar="LANDMARKS")
    angles.add_argument("--out", type=Path, required=True, metavar="FILE.csv")
    angles.add_argument(
        "--cases",
        type=Path,
        metavar="CASES.csv",
        help="case manifest whose images give each case's size, to catch points outside the image",
    )
    add_patient_left(angles, PATIENT_LEFT_ON[0])
    phantom = nsub.add_parser(
        "phantom",
        help="write a pelvis phantom cohort (not real anatomy) with exact landmarks and angles",
    )
    phantom.add_argument("--out", type=Path, required=True, metavar="DIR")
    phantom.add_argument("--n", type=int, required=True, metavar="N", help="number of cases")
    phantom.add_argument("--seed", type=int, default=0, metavar="S", help="default 0")
    phantom.add_argument("--size", type=int, default=256, metavar="PX", help="image side (default 256)")
    evaluate = nsub.add_parser(
        "evaluate",
        help="Norberg-angle agreement of every model of a finished run (detector or readers vs annotations)",
        description="Measure every sample of RUN_DIR (the real row included) with a landmark detector "
        "and/or take the landmarks experts placed in the reader study, compare with the annotated "
        "angles of the same case and side, and write norberg_angles.parquet and norberg_summary.csv "
        "into RUN_DIR. Rows of a source not measured now (e.g. the detector rows of `xray-audit run` "
        "with [norberg] in the config) are kept.",
    )
    evaluate.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    evaluate.add_argument(
        "--annotations",
        type=Path,
        required=True,
        metavar="LANDMARKS",
        help="expert landmarks of the real images",
    )
    evaluate.add_argument(
        "--detector",
        type=Path,
        metavar="MODEL_DIR",
        help="from `xray-audit landmarks train` (or a model.json pinning a user TorchScript file by sha256)",
    )
    evaluate.add_argument(
        "--reader-landmarks",
        type=Path,
        metavar="landmarks.csv",
        help="the reader study's landmark export (`xray-audit reader-study export STUDY_DIR`): expert angles of the "
        "blinded real and generated images",
    )
    add_patient_left(
        evaluate, default_text=f"the run config's [norberg] patient_left, else {STANDARD_DISPLAY}"
    )
    evaluate.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    evaluate.add_argument("--batch-size", type=int, default=16, metavar="B")


def run(args: argparse.Namespace, progress: bool = False) -> int:
    if args.norberg_command == "evaluate":
        from audit.norberg.evaluation import evaluate_norberg

        if args.detector is None and args.reader_landmarks is None:
            log.error("error: give --detector MODEL_DIR, --reader-landmarks landmarks.csv, or both")
            return EXIT_USAGE
        try:
            result = evaluate_norberg(
                args.run_dir,
                args.annotations,
                args.detector,
                reader_landmarks=args.reader_landmarks,
                patient_left=args.patient_left,
                device=args.device,
                batch_size=args.batch_size,
                progress=progress,
            )
        except ValueError as exc:
            # Bad landmark files, foreign studies, changed samples: each is named in the message.
            log.error("error: %s", exc)
            return EXIT_PROBLEMS
        print(result.angles_path)
        print(result.summary_path)
        return EXIT_OK
    if args.norberg_command == "angles":
        return _angles(args.landmarks, args.out, args.cases, args.patient_left)
    return _phantom(args.out, args.n, args.seed, args.size)


def _angles(path: Path, out: Path, cases: Path | None, patient_left: str) -> int:
    from audit.atomic import atomic_open
    from audit.norberg.landmarks import angles_frame, image_sizes_from_cases, validate_landmarks

    sizes = image_sizes_from_cases(cases) if cases is not None else None
    landmarks, problems = validate_landmarks(path, sizes, patient_left=patient_left)
    if problems:
        print(f"{path}: {len(problems)} problem(s)")
        for problem in problems:
            print(f"  - {problem}")
        return EXIT_PROBLEMS
    frame = angles_frame(landmarks)
    with atomic_open(out) as fh:
        # pandas writes floats with repr: shortest text that reads back to the same double.
        frame.to_csv(fh, index=False)
    log.info("%s: %d case(s), %d angle(s) -> %s", path, len(landmarks), len(frame), out)
    print(out)
    return EXIT_OK


def _phantom(out: Path, n: int, seed: int, size: int) -> int:
    from audit.norberg.phantom import write_phantom_cohort

    if n < 1 or size < 64:
        log.error("error: --n must be >= 1 and --size >= 64 px, got --n %d --size %d", n, size)
        return EXIT_USAGE
    try:
        path = write_phantom_cohort(out, n, seed, size)
    except FileExistsError as exc:
        log.error("error: %s", exc)
        return EXIT_PROBLEMS
    log.info("pelvis phantom cohort (not real anatomy): %d case(s)", n)
    print(path)
    return EXIT_OK
