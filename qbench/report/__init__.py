"""Reports of the leaderboard: one view model (``view``) laid out as Markdown and tidy CSV
(``markdown``), one HTML page (``html``) and the terminal; ``tables`` holds the comparability
key and the display tables, ``regressions`` the night-over-night comparison; ``files`` writes
them all. The renderers import the view, never the other way round."""

from qbench.report.files import write_report
from qbench.report.view import Report, build_report

__all__ = ["Report", "build_report", "write_report"]
