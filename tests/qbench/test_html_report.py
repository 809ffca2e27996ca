"""The HTML report: self-contained, with its charts and sections, and it renders in headless
Chromium without errors (Debian's `chromium` package; .ci/run installs it)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from qbench.cli import main
from qbench.store import Leaderboard, default_url


@pytest.fixture(scope="module")
def report(tmp_path_factory, demo_400):
    """Two quick benches of the demo (two runs: a history) on two backends where OpenVINO is here."""
    results = tmp_path_factory.mktemp("report")
    quick = ["bench", *demo_400, "--quick", "-q", "--results-dir", str(results), "--min-seconds", "0.2"]
    assert main(quick) == 0
    assert main([*quick, "--recipe", "fp32,int8"]) == 0  # a second run: the history chart
    backends = ["openvino"] if _has_openvino() else []
    for backend in backends:
        assert main([*quick, "--backend", backend]) == 0
    assert main(["report", "-q", "--results-dir", str(results)]) == 0
    return results / "report.html", bool(backends)


def test_openvino_rows_sit_beside_onnx_runtime_rows(report):
    """The default recipes (fp32, int8 and the runtime's own native-int8) on both CPU backends."""
    path, two_backends = report
    if not two_backends:
        pytest.skip("OpenVINO is not installed: pip install -e '.[test]'")
    board = Leaderboard(default_url(path.parent))
    rows = board.frame()
    board.close()
    assert set(zip(rows.backend, rows.plan_name, strict=True)) == {
        (b, p) for b in ("onnxruntime", "openvino") for p in ("fp32", "int8", "native-int8")
    }
    assert rows.model_hash.nunique() == 1 and rows.machine_hash.nunique() == 1 and set(rows.status) == {"ok"}
    ov_int8 = rows[(rows.backend == "openvino") & (rows.plan_name == "int8")].iloc[0]
    assert set(json.loads(ov_int8.realized).values()) == {"int8"}
    table = next(path.parent.glob("*/digits-cnn-*.md")).read_text()
    across = table.split("## across backends")[1].split("\n## ")[0]
    assert across.count("| openvino") == 3 and across.count("| onnxruntime") == 3


def _has_openvino() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def test_report_is_self_contained_with_every_section(report):
    path, two_backends = report
    page = path.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "the page must not load anything"
    assert page.count("<svg") == 2  # the Pareto chart and the history of the demo
    assert "speedup vs accuracy drop" in page and "latency over runs" in page
    assert "Regressions" in page and "digits-cnn" in page
    assert ("Backends side by side" in page) == two_backends


def test_report_renders_in_headless_chromium(report, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium not installed (apt-get install chromium; .ci/run installs it)")
    path, _ = report
    shot = tmp_path / "report.png"
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,1800"]
        + ["--enable-logging=stderr", "--v=0", f"--screenshot={shot}", path.as_uri()],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # Chromium logs page errors as CONSOLE lines; dbus complaints of a container are not the page's.
    page_errors = [line for line in result.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert page_errors == []
    assert shot.stat().st_size > 20_000  # a blank page is a few kB; charts and tables are more
