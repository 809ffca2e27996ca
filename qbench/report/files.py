"""Writing a report: the view (``view``) laid out by each renderer, one file per table."""

from __future__ import annotations

import pathlib

from qbench.report.html import write_html
from qbench.report.markdown import write_markdown, write_regressions
from qbench.report.view import Report


def write_report(report: Report, results_dir: pathlib.Path, html: bool = True) -> list[pathlib.Path]:
    """Every file of ``report`` under ``results_dir``: the tables (and, with ``html``, the page and
    regressions.md); returns the files written."""
    written = write_markdown(report, results_dir)
    if html:
        written += [write_regressions(report, results_dir), write_html(report, results_dir)]
    return written
