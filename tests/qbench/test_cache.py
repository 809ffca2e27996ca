import pytest

from qbench.cache import atomic_cached


def test_builds_once_then_hits(tmp_path):
    calls = []

    def produce(tmp):
        calls.append(tmp)
        assert tmp.suffix == ".onnx" and tmp.parent == tmp_path / "sub"  # same folder, same suffix
        tmp.write_text("entry")

    path = tmp_path / "sub" / "model.onnx"
    assert atomic_cached(path, produce) is False
    assert atomic_cached(path, produce) is True
    assert path.read_text() == "entry" and len(calls) == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]  # no temporaries left


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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.xml"]


def test_a_folder_entry(tmp_path):
    def produce(tmp):
        tmp.mkdir()
        (tmp / "model.onnx").write_text("m")

    target = tmp_path / "zoo" / "minilm-r1"
    assert atomic_cached(target, produce) is False
    assert (target / "model.onnx").read_text() == "m"
    assert atomic_cached(target, produce) is True
