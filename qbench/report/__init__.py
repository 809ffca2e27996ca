"""Reports of the leaderboard: one view model (``view``) laid out as Markdown and tidy CSV
(``markdown``), one HTML page (``html``) and the terminal; ``tables`` holds the comparability
key and the display tables, ``regressions`` the night-over-night comparison."""

from qbench.report.view import Report, build_report, write_report

__all__ = ["Report", "build_report", "write_report"]
