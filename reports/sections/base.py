"""What a section of report.html is (:class:`Section`) and what every section is given
(:class:`PageContext`, computed once per page by :func:`reports.html.render_html_report`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from audit import rundir
from reports.run import EvaluationInfo, MetricColumn, ModelRow, RunFiles, TableContext

if TYPE_CHECKING:  # the statistics modules pull in scipy.stats: the page imports them when it renders
    import pandas as pd

    from reports.privacy import PrivacyFiles, Withheld
    from reports.reader_stats import ReaderStatistics
    from reports.statistics import PairedTests


@dataclasses.dataclass(frozen=True)
class ReaderInputs:
    """A reader study's export and what the page computed from it."""

    ratings: pd.DataFrame  # reader_study.admin.export_frame
    stats: ReaderStatistics
    points: pd.DataFrame  # reports.reader_stats.validity_points: metric values beside reader scores
    validity: pd.DataFrame  # reports.reader_stats.correlate_points of those points
    source: str  # where the ratings came from ("" when not said)


@dataclasses.dataclass(frozen=True)
class PageContext:
    """Everything the sections read, computed once before any of them renders."""

    run: RunFiles  # the run directory as read
    # ``run`` with the reader scores added to its summary: the results tables and provenance's N
    results_run: RunFiles
    models: tuple[ModelRow, ...]  # in the report's order (reports.run.order_models)
    evaluation: EvaluationInfo
    metrics: tuple[MetricColumn, ...]  # every metric column of the run
    table_metrics: tuple[MetricColumn, ...]  # what summary.csv aggregated, then the reader scores
    plot_metrics: tuple[MetricColumn, ...]  # the metrics with per-case values
    per_sample_metrics: frozenset[str]  # names of the metrics in per_sample.parquet
    tests: PairedTests
    # The seed and resamples the tests were drawn with; the run's settings for a frame given by a
    # caller, which does not say.
    seed: int
    resamples: int
    statistics: Mapping[str, str]  # how the page's own statistics were drawn (shown in provenance)
    reader: ReaderInputs | None  # None without a reader study
    grid_cases: int  # cases in the image grid
    privacy: PrivacyFiles | None  # the privacy audit's files, None without them
    # Samples no section may show: training images while [privacy].show_training_images is not true.
    withheld: Withheld

    @property
    def settings(self) -> rundir.RunSettings:
        return self.run.settings

    @property
    def confidence(self) -> float:
        return self.settings.confidence

    @property
    def tables(self) -> TableContext:
        """What the results tables read (reader scores included)."""
        return TableContext(self.results_run, self.models, self.evaluation, self.confidence)

    @property
    def n_failures(self) -> int:
        """Rows of failures.csv, else run.json's count (the file may be missing)."""
        if self.run.failures is not None:
            return len(self.run.failures)
        return int(self.run.info.get("n_failures") or 0)


@dataclasses.dataclass(frozen=True)
class Section:
    """One ``<section>`` of the page and its link in the header's nav (both only when it rendered)."""

    anchor: str  # the section's id, the nav link's target
    title: str  # the nav link's text
    heading: str  # the section's <h2>
    render: Callable[[PageContext], str]  # the body after the heading; "" when it does not apply
    # The nav text when it depends on the run (e.g. the number of failures); else ``title``.
    nav_title: Callable[[PageContext], str] | None = None

    def link_text(self, ctx: PageContext) -> str:
        return self.title if self.nav_title is None else self.nav_title(ctx)
