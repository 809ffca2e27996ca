"""Writing a report: the view (``view``) laid out by each renderer, one file per table."""

from __future__ import annotations

import pathlib

from qbench.report.html import fleet_chart, write_html
from qbench.report.markdown import fleet_chart_name, write_markdown, write_regressions
from qbench.report.view import Report


def write_report(report: Report, results_dir: pathlib.Path, html: bool = True) -> list[pathlib.Path]:
    """Every file of ``report`` under ``results_dir``: the tables (and, with ``html``, the page,
    the across-machines charts and regressions.md); returns the files written."""
    written = write_markdown(report, results_dir, charts=html)
    for number, section in enumerate(report.fleet if html else [], start=1):  # across-machines.md shows them
        chart = results_dir / fleet_chart_name(number)
        chart.write_text(fleet_chart(section), encoding="utf-8")
        written.append(chart)
    if html:
        written += [write_regressions(report, results_dir), write_html(report, results_dir)]
    return written
