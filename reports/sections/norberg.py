"""The "Norberg angles" section: :func:`reports.norberg.render_norberg` of the run's Norberg files
(from ``[norberg]`` or ``xray-audit norberg evaluate``); absent without them."""

from __future__ import annotations

from reports.norberg import render_norberg
from reports.run import model_colours
from reports.sections.base import PageContext, Section
from reports.sections.common import figure_div


def render(ctx: PageContext) -> str:
    return render_norberg(ctx.run.run_dir, figure_div, model_colours(ctx.models), ctx.run.cases)


SECTION = Section("norberg", "Norberg angles", "Norberg angles", render)
