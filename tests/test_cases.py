import json

import numpy as np
import pandas as pd
import pytest

from audit.cases import ManifestError, load_manifest, validate
from audit.cli import main
from audit.images import write_png


def test_valid_manifest_loads_with_absolute_paths_and_extra_columns(cohort):
    m = load_manifest(cohort)
    assert len(m) == 6
    case = m.cases()[0]
    assert case.case_id == "case-000" and case.image.is_absolute() and case.image.exists()
    assert case.fields["site"] == "site0"  # extra columns are kept
    assert case.labels() == ("No Finding",)
    assert case.path("anatomy_mask").exists()


def test_every_problem_is_reported_in_one_pass(cohort):
    root = cohort.parent
    frame = pd.read_csv(cohort, dtype=str, keep_default_na=False)
    frame.loc[1, "case_id"] = "case-000"  # duplicate id
    frame.loc[2, "image"] = "img/missing.png"  # missing file
    (root / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    frame.loc[3, "image"] = "img/broken.png"  # unreadable
    write_png(root / "mask" / "small.png", np.zeros((10, 10), bool))
    frame.loc[4, "anatomy_mask"] = "mask/small.png"  # size mismatch
    frame.loc[5, "labels"] = "Nodule;;Effusion"  # malformed
    frame.loc[0, "labels"] = ""  # empty
    frame.to_csv(cohort, index=False)

    _, problems = validate(cohort)
    text = "\n".join(map(str, problems))
    assert len(problems) == 6, text
    assert "row 2 (line 3), column 'case_id': duplicate case_id (first seen in row 1)" in text
    assert "row 3 (line 4), column 'image': file not found" in text and "missing.png" in text
    assert "row 4 (line 5), column 'image': unreadable" in text and "broken.png" in text
    assert "row 5 (line 6), column 'anatomy_mask': mask is 10×10 px but its image is 192×192 px" in text
    assert "row 6 (line 7), column 'labels': malformed labels" in text and "'Nodule;;Effusion'" in text
    assert "row 1 (line 2), column 'labels': empty labels" in text
    with pytest.raises(ManifestError) as err:
        load_manifest(cohort)
    assert len(err.value.problems) == 6

    # The header-only check finds the same size mismatch without decoding pixels.
    _, fast = validate(cohort, check_pixels=False)
    assert any("10×10" in str(p) for p in fast)


def test_missing_required_columns_and_formats(tmp_path, cohort):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"id": ["a"], "image": ["x.png"]}).to_csv(bad, index=False)
    _, problems = validate(bad)
    assert "missing required column(s) case_id" in str(problems[0])

    frame = pd.read_csv(cohort, dtype=str)
    pq_path = cohort.with_suffix(".parquet")
    frame.to_parquet(pq_path)
    jl = cohort.with_suffix(".jsonl")
    jl.write_text("\n".join(json.dumps(r) for r in frame.to_dict(orient="records")))
    for path in (pq_path, jl):
        assert [c.case_id for c in load_manifest(path)] == list(frame["case_id"])

    with pytest.raises(ManifestError, match="unknown manifest format"):
        validate(tmp_path / "cases.xlsx")


def test_ids_keep_leading_zeros_and_na(tmp_path, cohort):
    frame = pd.read_csv(cohort, dtype=str)
    frame.loc[0, "case_id"] = "007"
    frame.loc[1, "case_id"] = "NA"
    frame.to_csv(cohort, index=False)
    ids = [c.case_id for c in load_manifest(cohort)]
    assert ids[:2] == ["007", "NA"]


def test_cli_validate_exit_codes(cohort, capsys):
    assert main(["-q", "cases", "validate", str(cohort)]) == 0
    assert "OK, 6 case(s)" in capsys.readouterr().out
    frame = pd.read_csv(cohort, dtype=str)
    frame.loc[2, "image"] = "img/nope.png"
    frame.to_csv(cohort, index=False)
    assert main(["-q", "cases", "validate", str(cohort)]) == 1
    out = capsys.readouterr().out
    assert "1 problem(s)" in out and "row 3 (line 4), column 'image': file not found" in out
