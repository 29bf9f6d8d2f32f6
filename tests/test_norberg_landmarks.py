"""Landmark files: parsing, every-problem-at-once validation, swap detection, and `xray-audit norberg`."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from audit.cli import main
from audit.images import write_png
from audit.norberg.geometry import norberg_angle
from audit.norberg.landmarks import (
    LandmarkError,
    angles_frame,
    image_sizes_from_cases,
    read_landmarks,
    validate_landmarks,
)

# One hand-made case: heads 100 px apart, left (patient's) on the image's right; rims straight up
# from each centre (90°) and 45° lateral of straight up (135°).
CASE = {
    "left_head_center": (200.0, 120.0),
    "right_head_center": (100.0, 120.0),
    "left_rim": (200.0, 94.0),
    "right_rim": (100.0 - 20.0, 100.0),
}
CASE_ANGLES = {"left": 90.0, "right": 135.0}


def _outline(cx: float, cy: float, r: float, side: str, n: int = 5) -> dict[str, tuple[float, float]]:
    return {
        f"{side}_head_{i}": (cx + r * math.cos(2 * math.pi * i / n), cy + r * math.sin(2 * math.pi * i / n))
        for i in range(1, n + 1)
    }


def _write_csv(path, rows, header="case_id,landmark,x,y"):
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def _rows(case_id, points):
    return [(case_id, name, repr(x), repr(y)) for name, (x, y) in points.items()]


def test_csv_round_trip_keeps_text_ids_and_computes_angles(tmp_path):
    outline_case = {k: v for k, v in CASE.items() if k != "left_head_center"}
    outline_case.update(_outline(200.0, 120.0, 18.0, "left"))
    path = _write_csv(tmp_path / "lm.csv", _rows("007", CASE) + _rows("010", outline_case))
    landmarks = read_landmarks(path)
    assert sorted(landmarks) == ["007", "010"]
    assert landmarks["007"] == CASE
    frame = angles_frame(landmarks)
    assert list(frame.columns) == ["case_id", "side", "angle_deg"]
    assert frame[["case_id", "side"]].values.tolist() == [
        ["007", "left"],
        ["007", "right"],
        ["010", "left"],
        ["010", "right"],
    ]
    for side in ("left", "right"):
        # independent of case_angles: the definition applied to the given points
        other = "right" if side == "left" else "left"
        expected = norberg_angle(
            CASE[f"{side}_head_center"], CASE[f"{other}_head_center"], CASE[f"{side}_rim"]
        )
        assert expected == pytest.approx(CASE_ANGLES[side], abs=1e-12)
        got = frame[frame.side == side].angle_deg.tolist()
        assert got == pytest.approx([CASE_ANGLES[side]] * 2, abs=1e-9)


def test_json_list_of_objects(tmp_path):
    records = [{"case_id": "007", "landmark": k, "x": x, "y": y} for k, (x, y) in CASE.items()]
    path = tmp_path / "lm.json"
    path.write_text(json.dumps(records))
    assert read_landmarks(path) == {"007": CASE}
    path.write_text(json.dumps({"case_id": "007"}))
    with pytest.raises(LandmarkError, match="list of objects"):
        read_landmarks(path)
    bad = records[:3] + [{"case_id": "007", "landmark": "right_rim", "x": "abc"}, 5]
    path.write_text(json.dumps(bad))
    _, problems = validate_landmarks(path)
    text = [str(p) for p in problems]
    assert any("row 4, column 'x'" in t and "not a number" in t for t in text)
    assert any("row 4, column 'y'" in t and "empty coordinate" in t for t in text)
    assert any(t.startswith("row 5:") and "must be an object" in t for t in text)
    assert all("line" not in t.split(":")[0] for t in text)  # JSON has items, not CSV lines


def test_every_problem_is_reported_at_once_with_row_line_and_column(tmp_path):
    rows = [
        ("a", "left_head_center", "200", "120"),
        ("a", "left_rim", "abc", "94"),  # row 2: non-numeric
        ("a", "right_head_center", "100", "nan"),  # row 3: NaN
        ("a", "right_rim", "80", "100"),
        ("a", "left_rimm", "1", "2"),  # row 5: unknown name
        ("a", "left_head_center", "201", "121"),  # row 6: duplicate
        ("", "left_rim", "1", "2"),  # row 7: empty id
        ("b", "left_head_1", "190", "120"),  # case b: left has 2 outline points, no centre, no rim
        ("b", "left_head_2", "200", "110"),
        ("b", "right_head_center", "100", "120"),
        ("b", "right_rim", "100", "95"),
        ("c", "right_head_1", "90", "120"),  # case c: collinear outline points
        ("c", "right_head_2", "100", "120"),
        ("c", "right_head_3", "110", "120"),
        ("c", "left_head_center", "200", "120"),
        ("c", "left_rim", "200", "95"),
        ("c", "right_rim", "100", "95"),
    ]
    path = _write_csv(tmp_path / "lm.csv", rows)
    with pytest.raises(LandmarkError) as info:
        read_landmarks(path)
    text = str(info.value)
    assert str(path) in text
    expected = [
        "row 2 (line 3), column 'x': coordinate is not a number",
        "row 3 (line 4), column 'y': coordinate is NaN",
        "row 5 (line 6), column 'landmark': unknown landmark name (did you mean 'left_rim'?)",
        (
            "row 6 (line 7), column 'landmark': duplicate left_head_center for case 'a' "
            "(first given in row 1, line 2)"
        ),
        "row 7 (line 8), column 'case_id': empty case_id",
        "case 'b': the left hip has no left_head_center and 2 outline point(s)",
        "case 'b': the left hip has no left_rim",
        (
            "row 12 (line 13), column 'landmark': case 'c', right hip: circle fit: "
            "the 3 points lie on a straight line"
        ),
    ]
    for fragment in expected:
        assert fragment in text, fragment
    assert len(info.value.problems) == len(expected)
    # Rows with a bad value are not also reported as missing landmarks.
    assert "the left hip has no left_rim" not in text.replace("case 'b': the left hip has no left_rim", "")


def test_missing_and_unknown_columns(tmp_path):
    path = _write_csv(tmp_path / "lm.csv", [("a", "left_rim", "1")], header="case_id,landmark,x")
    with pytest.raises(LandmarkError, match=r"missing column\(s\) y; the columns are case_id, landmark, x"):
        read_landmarks(path)
    path = _write_csv(tmp_path / "lm.csv", _rows("a", CASE), header="case_id,landmark,x,y")
    plain = read_landmarks(path)
    # Other columns (an annotation tool's, one reader's part of a reader-study export) are ignored...
    frame = pd.read_csv(path, dtype=str).assign(reader="r1", annotator="dr x")
    frame.to_csv(path, index=False)
    assert read_landmarks(path) == plain
    # ...but rows they would tell apart are duplicates, with what to do about it.
    pd.concat([frame, frame.assign(reader="r2")]).to_csv(path, index=False)
    with pytest.raises(
        LandmarkError, match=r"(?s)duplicate .*reader column\(s\) are not read here.*--reader-landmarks"
    ) as err:
        read_landmarks(path)
    assert str(err.value).count("are not read here") == 1  # said once for the file, not on every row
    pd.concat([frame, frame.assign(annotator="dr y")]).drop(columns="reader").to_csv(path, index=False)
    with pytest.raises(
        LandmarkError, match=r"(?s)duplicate .*the file's other column\(s\) annotator are not read"
    ):
        read_landmarks(path)
    with pytest.raises(LandmarkError, match="unknown landmark file format"):
        read_landmarks(tmp_path / "lm.txt")
    with pytest.raises(FileNotFoundError, match="not found"):
        read_landmarks(tmp_path / "nothing.csv")
    _write_csv(tmp_path / "empty.csv", [])
    with pytest.raises(LandmarkError, match="no landmark rows"):
        read_landmarks(tmp_path / "empty.csv")


def test_points_outside_the_image_and_cases_without_an_image(tmp_path):
    points = dict(CASE, left_rim=(256.0, 94.0), right_rim=(80.0, -0.6))
    path = _write_csv(tmp_path / "lm.csv", _rows("a", points) + _rows("zz", CASE))
    sizes = {"a": (200, 256)}  # (H, W)
    _, problems = validate_landmarks(path, sizes)
    text = "\n".join(map(str, problems))
    assert "row 3 (line 4), column 'x': left_rim of case 'a' is outside its 256×200 px image" in text
    assert "x must lie in [-0.5, 255.5]" in text
    assert "row 4 (line 5), column 'y': right_rim of case 'a' is outside" in text
    assert "case 'zz' is not in the case manifest" in text
    inside = dict(CASE, left_rim=(255.5, 94.0), right_rim=(80.0, -0.5))
    _write_csv(path, _rows("a", inside))
    assert validate_landmarks(path, sizes)[1] == []


def test_left_right_swaps_are_detected_from_geometry(tmp_path):
    swap = {"left": "right", "right": "left"}
    all_swapped = {f"{swap[k.split('_', 1)[0]]}_{k.split('_', 1)[1]}": v for k, v in CASE.items()}
    rims_swapped = dict(CASE, left_rim=CASE["right_rim"], right_rim=CASE["left_rim"])
    path = _write_csv(tmp_path / "lm.csv", _rows("whole", all_swapped) + _rows("rims", rims_swapped))
    _, problems = validate_landmarks(path)
    text = "\n".join(map(str, problems))
    assert "case 'whole': probable left/right swap: the left femoral-head centre (x=100.0) has a" in text
    assert "swap the left_/right_ prefixes" in text and "--patient-left image-left" in text
    assert "case 'rims': probable left/right swap: left_rim is nearer the right femoral-head centre" in text
    assert "case 'rims': probable left/right swap: right_rim is nearer the left" in text
    assert len(problems) == 3
    # Mirrored display: the fully swapped case is then consistent, the correct one is not.
    path = _write_csv(tmp_path / "lm.csv", _rows("whole", all_swapped))
    assert validate_landmarks(path, patient_left="image-left")[1] == []
    path = _write_csv(tmp_path / "lm.csv", _rows("ok", CASE))
    (flagged,) = validate_landmarks(path, patient_left="image-left")[1]
    assert "has a larger x than the right one" in str(flagged)
    assert "--patient-left image-right" in str(flagged)
    with pytest.raises(ValueError, match="patient_left"):
        validate_landmarks(path, patient_left="right")


def _cohort(tmp_path, sizes):
    rows = ["case_id,image"]
    (tmp_path / "img").mkdir()
    for cid, (h, w) in sizes.items():
        write_png(tmp_path / "img" / f"{cid}.png", np.zeros((h, w), np.float32))
        rows.append(f"{cid},img/{cid}.png")
    (tmp_path / "cases.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "cases.csv"


def test_image_sizes_from_case_manifest(tmp_path):
    cases = _cohort(tmp_path, {"007": (150, 250), "8": (300, 260)})
    assert image_sizes_from_cases(cases) == {"007": (150, 250), "8": (300, 260)}


def test_cli_angles(tmp_path, capsys):
    cases = _cohort(tmp_path, {"007": (256, 256)})
    path = _write_csv(tmp_path / "lm.csv", _rows("007", CASE))
    out = tmp_path / "out" / "angles.csv"
    assert main(["-q", "norberg", "angles", str(path), "--out", str(out), "--cases", str(cases)]) == 0
    written = pd.read_csv(out, dtype={"case_id": str})
    assert list(written.columns) == ["case_id", "side", "angle_deg"]
    assert written.case_id.tolist() == ["007", "007"] and written.side.tolist() == ["left", "right"]
    assert written.angle_deg.tolist() == pytest.approx([90.0, 135.0], abs=1e-9)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".tmp-")]

    bad_rows = _rows("007", dict(CASE, left_rim=(400.0, 94.0))) + [("007", "x", "1", "2")]
    bad = _write_csv(tmp_path / "bad.csv", bad_rows)
    capsys.readouterr()
    argv = ["-q", "norberg", "angles", str(bad), "--out", str(tmp_path / "b.csv"), "--cases", str(cases)]
    assert main(argv) == 1
    printed = capsys.readouterr().out
    assert f"{bad}: 2 problem(s)" in printed
    assert "outside its 256×256 px image" in printed and "unknown landmark name" in printed
    assert not (tmp_path / "b.csv").exists()


def test_cli_phantom(tmp_path, capsys):
    out = tmp_path / "phantom"
    argv = ["-q", "norberg", "phantom", "--out", str(out), "--n", "2", "--seed", "3", "--size", "64"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == str(out.resolve())
    truth = pd.read_csv(out / "angles.csv", dtype={"case_id": str})
    angles = tmp_path / "angles.csv"
    argv = ["-q", "norberg", "angles", str(out / "landmarks.csv"), "--out", str(angles)]
    assert main([*argv, "--cases", str(out / "cases.csv")]) == 0
    got = pd.read_csv(angles, dtype={"case_id": str})
    assert got[["case_id", "side"]].equals(truth[["case_id", "side"]])
    assert np.abs(got.angle_deg - truth.angle_deg).max() < 1e-9
    assert main(["-q", "norberg", "phantom", "--out", str(out), "--n", "1"]) == 1
    assert main(["-q", "norberg", "phantom", "--out", str(tmp_path / "p2"), "--n", "0"]) == 2
