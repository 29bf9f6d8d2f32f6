"""audit.metrics.catalogue is the one description of every metric: the config, the registry, the report
and the dashboard read it, and it agrees with the kernels that compute the numbers."""

from __future__ import annotations

import subprocess
import sys

import pytest

from audit.metrics import catalogue
from audit.metrics.functional import clinical as fc
from audit.metrics.functional import norberg as fn


def test_names_labels_and_tables_are_unique_and_known():
    names = [m.name for m in catalogue.CATALOGUE]
    assert len(names) == len(set(names)) == len(catalogue.METRICS)
    labels = [m.label for m in catalogue.CATALOGUE]
    assert len(labels) == len(set(labels)), "two metrics would share a column heading"
    tables = {t.id for t in catalogue.TABLES}
    for m in catalogue.CATALOGUE:
        assert m.table in tables, m.name
        assert m.description.strip(), m.name
        assert ":" not in m.name, m.name  # ":" separates a per-class or per-side suffix
        assert m.aggregation in ("per_sample_mean", "per_sample_median", "distribution"), m.name
    # Report order groups each table's metrics together, tables in TABLES order.
    order = [t.id for t in catalogue.TABLES]
    seen = [m.table for m in catalogue.CATALOGUE]
    assert sorted(seen, key=order.index) == seen


def test_per_class_and_per_side_names_share_their_metric_and_sort_after_it():
    assert catalogue.spec("pathology_auc:Nodule") is catalogue.METRICS["pathology_auc"]
    assert catalogue.spec("norberg_r:left") is catalogue.METRICS["norberg_r"]
    with pytest.raises(KeyError, match="unknown metric 'nope'"):
        catalogue.spec("nope")
    names = ["zz_custom", "pathology_auc:Nodule", "mse", "pathology_auc", "ms_ssim", "pathology_auc:Effusion"]
    assert sorted(names, key=catalogue.order_key) == [
        "ms_ssim",
        "mse",
        "pathology_auc",
        "pathology_auc:Effusion",
        "pathology_auc:Nodule",
        "zz_custom",
    ]


def test_kernels_and_catalogue_agree():
    assert catalogue.names(family="norberg") == fn.METRIC_ORDER
    dice = {fc.dice_metric_name(s, against_mask=a) for s in (*fc.ANATOMY_STRUCTURES, "mean") for a in (0, 1)}
    assert set(catalogue.names(family="clinical", evaluator="segmenter")) == dice
    from audit.evaluation import FEATURE_ENTRIES

    assert set(catalogue.entries("distribution")) == set(FEATURE_ENTRIES)


def test_config_entries_and_hints_come_from_the_catalogue(tmp_path):
    from audit.config import CLINICAL_ENTRIES, DISTRIBUTION_ENTRIES, PIXEL_METRICS, ConfigError, load_config

    assert PIXEL_METRICS == catalogue.names(family="pixel")
    assert CLINICAL_ENTRIES == ("pathology_auc", "pathology_f1", "dice")
    assert DISTRIBUTION_ENTRIES == ("fid", "fxd", "kid", "prdc", "fd_raddino", "kid_raddino", "prdc_raddino")
    (tmp_path / "cases.csv").write_text("case_id,reference_path\n")
    config = tmp_path / "study.toml"
    config.write_text(
        '[study]\nname = "t"\ncases = "cases.csv"\noutput = "run"\n'
        '[metrics]\ndistribution = ["fid", "recall"]\n'
        '[[models]]\nname = "real"\nkind = "real"\n'
    )
    with pytest.raises(ConfigError) as err:
        load_config(config)
    text = str(err.value)
    assert "'recall'" in text and 'list "prdc" in [metrics].distribution' in text
    assert "precision, recall, density, coverage" in text and str(config) in text


def test_registry_report_and_dashboard_read_the_catalogue():
    from audit.registry import metric_info
    from dashboards.data import metric_family
    from reports.run import METRIC_LABELS, RESULT_TABLES, MetricColumn, default_unit

    for m in catalogue.CATALOGUE:
        info = metric_info(f"{m.name}:x", pixel_range=255)
        assert (info.family, info.higher_is_better, info.aggregation) == (
            m.family,
            m.higher_is_better,
            m.aggregation,
        )
        assert info.unit == m.unit_at(255) == default_unit(m.name, 255)
        assert METRIC_LABELS[m.name] == MetricColumn(m.name, m.higher_is_better, "").label == m.label
        assert metric_family(m.name) == next(t.heading for t in catalogue.TABLES if t.id == m.table)
    assert [n for _, _, names in RESULT_TABLES for n in names] == [m.name for m in catalogue.CATALOGUE]
    assert metric_family("reader_quality") == "Other"
    assert metric_info("mse", 255).unit == "intensity² (range 255)"


def test_catalogue_imports_no_torch():
    code = "import sys, audit.metrics.catalogue; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_near_miss_of_an_entry_names_the_entry(tmp_path):
    from audit.config import ConfigError, parse_config

    raw = {
        "study": {"name": "t", "cases": "c.csv", "output": "o"},
        "models": [{"name": "real", "kind": "real"}],
        "metrics": {"clinical": ["dice_lung"]},
    }
    with pytest.raises(
        ConfigError, match=r"'dice_lung'.*list \"dice\" in \[metrics\]\.clinical.*dice_mask_\*"
    ):
        parse_config(raw)
