"""The docs: the site builds with warnings as errors, the Python API example runs, the README
stays a front door."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_docs_site_builds_with_warnings_as_errors(tmp_path):
    mkdocs = shutil.which("mkdocs", path=os.path.dirname(sys.executable)) or shutil.which("mkdocs")
    if mkdocs is None:
        pytest.skip("mkdocs is not installed: pip install -e '.[test]'")
    proc = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "python-api" / "index.html").is_file()


def test_the_python_api_example_tunes_the_demo_and_returns_a_typed_winner(tmp_path, monkeypatch):
    from qbench.search import TuneResult
    from qbench.store import ResultRow

    page = (ROOT / "docs" / "python-api.md").read_text()
    example = re.search(r"## Example.*?```python\n(.*?)```", page, re.S).group(1)
    monkeypatch.chdir(tmp_path)  # results/ lands here
    namespace: dict = {}
    exec(compile(example, "docs/python-api.md", "exec"), namespace)  # noqa: S102 - our own docs
    result = namespace["result"]
    assert isinstance(result, TuneResult) and isinstance(result.baseline, ResultRow)
    assert result.winner is None or isinstance(result.winner, ResultRow)
    assert result.winner is not None, result.notes  # int8 beats fp32 on the demo on every CPU tried
    assert result.winner.accuracy_drop <= 0.02 and (tmp_path / "results" / "leaderboard.db").is_file()
    assert result.winner.run_spec["subject"]["data"].startswith(str(tmp_path / "results" / "inputs"))


def test_the_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    quick = re.search(r"## Quick start\n\n```bash\n(.*?)```", readme, re.S).group(1).strip().splitlines()
    assert len(quick) == 2 and quick[1] in (ROOT / ".ci" / "run").read_text()
    sections = re.findall(r"^## (.*)$", readme, re.M)
    assert sections[0] == "Quick start"  # right after the first paragraph
