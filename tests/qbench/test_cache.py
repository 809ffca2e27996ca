import os
import time

import pytest

from qbench.cache import artifact_cache_limit, atomic_cached, trim_least_recently_used
from qbench.errors import QbenchError


def test_builds_once_then_hits(tmp_path):
    calls = []

    def produce(tmp):
        calls.append(tmp)
        # the entry's own name (side files named after it stay right), in a private folder beside it
        assert tmp.name == "model.onnx" and tmp.parent.parent == tmp_path / "sub"
        tmp.write_text("entry")

    path = tmp_path / "sub" / "model.onnx"
    assert atomic_cached(path, produce) is False
    assert atomic_cached(path, produce) is True
    assert path.read_text() == "entry" and len(calls) == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx", "model.onnx.sha256"]  # no temporaries


def test_a_failed_build_leaves_no_entry_and_no_temporary(tmp_path):
    def produce(tmp):
        tmp.write_text("half")
        tmp.with_suffix(".bin").write_text("half")
        raise RuntimeError("quantizer crashed")

    path = tmp_path / "model.xml"
    with pytest.raises(RuntimeError, match="quantizer crashed"):
        atomic_cached(path, produce, companions=(".bin",))
    assert list(tmp_path.iterdir()) == []


def test_companions_move_in_with_the_entry(tmp_path):
    def produce(tmp):
        tmp.write_text("<xml/>")
        tmp.with_suffix(".bin").write_bytes(b"weights")

    path = tmp_path / "model.xml"
    atomic_cached(path, produce, companions=(".bin",))
    assert path.with_suffix(".bin").read_bytes() == b"weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.xml", "model.xml.sha256"]


def test_a_folder_entry(tmp_path):
    def produce(tmp):
        tmp.mkdir()
        (tmp / "model.onnx").write_text("m")

    target = tmp_path / "zoo" / "minilm-r1"
    assert atomic_cached(target, produce) is False
    assert (target / "model.onnx").read_text() == "m"
    assert atomic_cached(target, produce) is True


def _entry(folder, name, size, age):
    """An artifact with a companion and a report, last used ``age`` seconds ago."""
    files = [folder / f"{name}.xml", folder / f"{name}.bin", folder / f"{name}.realized-default.json"]
    for file in files:
        file.write_bytes(b"x" * (size // 3))
        os.utime(file, (time.time() - age, time.time() - age))
    return files


def test_trim_removes_whole_entries_least_recently_used_first(tmp_path):
    oldest = _entry(tmp_path, "m-" + "a" * 20, 300, age=300)
    middle = _entry(tmp_path, "m-" + "b" * 20, 300, age=200)
    newest = _entry(tmp_path, "m-" + "c" * 20, 300, age=100)
    removed = trim_least_recently_used(tmp_path, max_bytes=700, keep=newest[0])
    assert removed == ["m-" + "a" * 20]
    assert not any(f.exists() for f in oldest) and all(f.exists() for f in middle + newest)


def test_trim_never_removes_the_entry_just_built(tmp_path):
    just_built = _entry(tmp_path, "m-" + "a" * 20, 300, age=500)  # old mtime: a cache hit not yet touched
    other = _entry(tmp_path, "m-" + "b" * 20, 300, age=100)
    assert trim_least_recently_used(tmp_path, max_bytes=10, keep=just_built[0]) == ["m-" + "b" * 20]
    assert all(f.exists() for f in just_built) and not any(f.exists() for f in other)


def test_trim_leaves_foreign_files_and_temporaries(tmp_path):
    (tmp_path / "notes.txt").write_text("x" * 1000)
    (tmp_path / (".m-" + "a" * 20 + ".123.tmp.onnx")).write_text("x" * 1000)  # another process's build
    assert trim_least_recently_used(tmp_path, max_bytes=0, keep=tmp_path / "none") == []
    assert len(list(tmp_path.iterdir())) == 2


@pytest.mark.parametrize("raw", ["0", "-1", "ten", "nan"])
def test_a_bad_cache_limit_is_a_one_line_error(monkeypatch, raw):
    monkeypatch.setenv("QBENCH_ARTIFACT_CACHE_GB", raw)
    with pytest.raises(QbenchError, match="QBENCH_ARTIFACT_CACHE_GB"):
        artifact_cache_limit()


def test_the_cache_limit_reads_gb(monkeypatch):
    monkeypatch.setenv("QBENCH_ARTIFACT_CACHE_GB", "0.5")
    assert artifact_cache_limit() == 2**29


def test_an_entry_is_built_under_its_own_name_and_takes_the_companions_it_wrote(tmp_path):
    """Side files named after the entry (an ONNX model's weights, ``model.onnx.data``, named inside
    the graph) stay right when it moves in; a companion an entry does not have is not required."""

    def produce(tmp):
        assert tmp.name == "big.onnx"
        tmp.write_text("graph naming big.onnx.data")
        tmp.with_name("big.onnx.data").write_bytes(b"weights")

    big, small = tmp_path / "big.onnx", tmp_path / "small.onnx"
    assert atomic_cached(big, produce, companions=(".onnx.data",)) is False
    assert atomic_cached(small, lambda tmp: tmp.write_text("graph"), companions=(".onnx.data",)) is False
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "big.onnx",
        "big.onnx.data",
        "big.onnx.sha256",
        "small.onnx",
        "small.onnx.sha256",
    ]
    assert atomic_cached(big, produce, companions=(".onnx.data",)) is True
    (tmp_path / "big.onnx.data").write_bytes(b"damaged")
    assert atomic_cached(big, produce, companions=(".onnx.data",)) is False  # the side file is hashed too
    assert (tmp_path / "big.onnx.data").read_bytes() == b"weights"


def test_trim_leaves_a_build_under_way_alone(tmp_path):
    building = tmp_path / ".m-aaaaaaaaaaaaaaaaaaaa.onnx.123.tmp"
    building.mkdir()
    (building / ("m-" + "a" * 20 + ".onnx")).write_bytes(b"x" * 1000)
    _entry(tmp_path, "m-" + "b" * 20, 300, age=100)
    assert trim_least_recently_used(tmp_path, max_bytes=10, keep=tmp_path / "none.onnx") == ["m-" + "b" * 20]
    assert any(building.iterdir())
