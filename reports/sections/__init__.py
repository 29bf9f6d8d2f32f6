"""The sections of report.html, one module each (``SECTION``: anchor, nav title, heading and
``render(ctx)``), assembled in order by :mod:`reports.html`; :mod:`reports.sections.base` holds the
page context they all read, :mod:`reports.sections.common` the pieces they share."""
