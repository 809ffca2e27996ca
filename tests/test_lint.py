import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(pathlib.Path(sys.executable).parent)) or shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (it comes with the `test` extra)")
    return path


def test_ruff_is_clean():
    proc = subprocess.run([_tool("ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


#: No function of the packages above this cyclomatic complexity (radon's count, which adds boolean
#: operators and comprehensions to the branches): beyond it a function does several things.
MAX_COMPLEXITY = 20


def test_no_function_is_too_complex():
    from radon.complexity import cc_visit

    too_complex = []
    for folder in ("qbench", "search"):  # backends/_qdq.py's graph surgery is 22: the next to split
        for path in sorted((ROOT / folder).rglob("*.py")):
            for block in cc_visit(path.read_text(encoding="utf-8")):
                if block.complexity > MAX_COMPLEXITY:
                    too_complex.append(f"{path.relative_to(ROOT)}:{block.lineno} {block.name} ({block.complexity})")
    assert not too_complex, f"split these (complexity above {MAX_COMPLEXITY}): {too_complex}"


def _installed_layout(target: pathlib.Path) -> pathlib.Path:
    """The package as a wheel lays it out (backends/ and search/ inside qbench/): import-linter
    reads packages from the file system and cannot follow an editable install's mapping."""
    ignore = shutil.ignore_patterns("__pycache__", "*.onnx", "*.npz")
    shutil.copytree(ROOT / "qbench", target / "qbench", ignore=ignore)
    for folder in ("backends", "search"):
        shutil.copytree(ROOT / folder, target / "qbench" / folder, ignore=ignore)
    return target


def test_the_layering_contract_holds(tmp_path):
    staged = _installed_layout(tmp_path)
    proc = subprocess.run(
        [_tool("lint-imports"), "--config", str(ROOT / "pyproject.toml")],
        cwd=staged,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_only_qbench_is_a_top_level_name(tmp_path):
    def imports(module: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", f"import {module}"], cwd=tmp_path, capture_output=True, text=True)

    for module in ("qbench.backends", "qbench.search"):
        assert imports(module).returncode == 0, imports(module).stderr
    for module in ("backends", "search"):
        assert "No module named" in imports(module).stderr


def test_every_package_folder_is_in_the_wheel():
    """The package list in pyproject.toml is explicit (for the qbench.backends / qbench.search
    mapping), so a new subpackage must be added there: an editable install hides the omission
    and `pip install .` then fails with ModuleNotFoundError (qbench.report once did)."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"qbench": "qbench", **setuptools["package-dir"]}
    found = set()
    for name, folder in folders.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *parts)))
    assert found <= set(setuptools["packages"]), sorted(found - set(setuptools["packages"]))
