"""OpenVINO decode, stateful, beside openvino-genai's LLMPipeline on the same IR.

qbench's OpenVINO backend builds SmolLM2-135M's IR for each plan (fp32, int4-weight); that IR is
then timed three ways, each in a fresh process per round, the rounds interleaved:

- ``state``: qbench's runner as a bench worker runs it: the cache as internal state (OpenVINO's
  ``MakeStateful``), one decode step on N cached tokens per timed call, the cache put back
  between calls (``Runner.rewind``, untimed);
- ``inputs``: the same IR through its cache inputs and outputs (``kv_cache="inputs"``), the cache
  copied in and out every call, as qbench ran OpenVINO decoders before;
- ``genai``: openvino-genai's ``LLMPipeline`` on that IR made into what it loads (stateful, with
  the ``attention_mask`` and ``beam_idx`` inputs optimum-intel's export adds, the tokenizer
  converted by openvino-tokenizers) generating ``--tokens`` tokens greedily after an N-token
  prompt; its time per output token (TPOT: the decode steps, sampling included, prompt excluded).

Per context N the table gives each way's median ms per token over rounds and each ratio to
``state`` as the median of per-round ratios with a 95 % bootstrap interval. openvino-genai is not
a qbench dependency: give the Python of a venv holding ``openvino-genai``, ``openvino-tokenizers``
(both at this OpenVINO's version) and ``transformers`` (for the tokenizer conversion only).

    python benchmarks/openvino_genai_decode.py --genai-python /path/venv/bin/python [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

from qbench.zoo import ZOO

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from llm_anchors import WORK, paired_ratio, write_hf_folder  # noqa: E402

WAYS = ("state", "inputs", "genai")

# Runs in the genai venv: qbench's IR -> the folder LLMPipeline loads.
_GENAI_FOLDER = """
import json, pathlib, shutil, sys
import openvino as ov
from openvino import opset13 as ops
from openvino._offline_transformations import apply_make_stateful_transformation
from openvino_tokenizers import convert_tokenizer
from transformers import AutoTokenizer

job = json.loads(sys.stdin.read())
ir, hf, out = (pathlib.Path(job[k]) for k in ("ir", "hf", "out"))
out.mkdir(parents=True, exist_ok=True)
model = ov.Core().read_model(str(ir))
caches = [p for p in model.get_parameters() if p.output(0).get_any_name().startswith("past.")]
beam = ops.parameter([-1], ov.Type.i32, name="beam_idx")
beam.output(0).set_names({"beam_idx"})
mask = ops.parameter([-1, -1], ov.Type.i64, name="attention_mask")
mask.output(0).set_names({"attention_mask"})
for cache in caches:  # each cache gathered by beam_idx on the batch axis, as optimum-intel exports
    readers = list(cache.output(0).get_target_inputs())
    gathered = ops.gather(cache, beam, ops.constant(0))
    for reader in readers:
        reader.replace_source_output(gathered.output(0))
model.add_parameters([mask, beam])
names = [c.output(0).get_any_name() for c in caches]
apply_make_stateful_transformation(model, {n: "present." + n.removeprefix("past.") for n in names})
model.outputs[0].get_tensor().set_names({"logits"})
ov.save_model(model, str(out / "openvino_model.xml"), compress_to_fp16=False)
tokenizer, detokenizer = convert_tokenizer(AutoTokenizer.from_pretrained(str(hf)), with_detokenizer=True)
ov.save_model(tokenizer, str(out / "openvino_tokenizer.xml"))
ov.save_model(detokenizer, str(out / "openvino_detokenizer.xml"))
for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
    shutil.copy(hf / name, out / name)
config = json.loads((hf / "config.json").read_text())
ids = {k: config[k] for k in ("bos_token_id", "eos_token_id") if k in config}
(out / "generation_config.json").write_text(json.dumps(ids))
print(json.dumps({"folder": str(out)}))
"""

# Runs in the genai venv: TPOT after each context, median of --repeats generations after a warm-up.
_GENAI_TIMING = """
import json, sys
import numpy as np
import openvino as ov
import openvino_genai as genai

job = json.loads(sys.stdin.read())
pipe = genai.LLMPipeline(job["folder"], "CPU", ATTENTION_BACKEND="SDPA", INFERENCE_NUM_THREADS=job["threads"])
config = genai.GenerationConfig()
config.max_new_tokens = config.min_new_tokens = job["tokens"]
result = {}
for context in job["contexts"]:
    prompt = ov.Tensor(np.array([job["prompt"][:context]], np.int64))
    tpot = []
    for _ in range(job["repeats"] + 1):
        out = pipe.generate(prompt, config)
        tpot.append(out.perf_metrics.get_tpot().mean)
    result[str(context)] = float(np.median(tpot[1:]))
print(json.dumps(result))
"""


def build_irs(workdir: pathlib.Path) -> dict[str, pathlib.Path]:
    """qbench's OpenVINO IR of each plan, on the zoo model's standard-op graph."""
    from qbench.backends import get_backend
    from qbench.machine import current_machine
    from qbench.model import OnnxModel
    from qbench.plan import recipe_plan

    backend = get_backend("openvino")
    model = OnnxModel.load(ZOO["smollm2-135m"].files().model)
    layers = [(x.name, x.op_type, x.constant_weight) for x in model.layers]
    irs = {}
    for precision in ("fp32", "int4-weight"):
        plan = backend.resolve_plan(recipe_plan(precision, layers), current_machine())
        irs[precision] = backend.build(model, plan, None, workdir).path
    return irs


def time_qbench(ir: pathlib.Path, way: str, contexts: list[int], threads: int, calls: int) -> dict[str, float]:
    """Median ms per decode step in a fresh process, as a bench worker times it."""
    script = f"""
import json, pathlib, time
import numpy as np
from qbench.backends import Artifact, get_backend
from qbench.data import load_npz
from qbench.model import OnnxModel
from qbench.workload import Workload
from qbench.zoo import ZOO

files = ZOO["smollm2-135m"].files()
model = OnnxModel.load(files.model)
data = load_npz(files.evaluation, model)
backend = get_backend("openvino")
runner = backend.load(Artifact(pathlib.Path({str(ir)!r}), "-", 0.0, True), {threads}, shared_process=False,
                      kv_cache={way!r})
result = {{}}
for context in {contexts!r}:
    feeds = Workload.parse(f"decode:{{context}}").feeds(model, data, 1)
    times = []
    for _ in range({calls} + 5):
        runner.rewind()
        start = time.perf_counter_ns()
        runner.run(feeds)
        times.append(time.perf_counter_ns() - start)
    result[str(context)] = float(np.median(times[5:])) / 1e6
print(json.dumps(result))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise RuntimeError(f"qbench {way} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_genai(python: str, script: str, job: dict) -> dict:
    done = subprocess.run([python, "-c", script], input=json.dumps(job), capture_output=True, text=True, timeout=3600)
    if done.returncode:
        raise RuntimeError(f"{python} failed: {done.stderr.strip().splitlines()[-3:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--genai-python", required=True, help="a Python with openvino-genai and openvino-tokenizers")
    parser.add_argument("--contexts", default="128,1024", help="cached tokens before each decode step")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=32, help="tokens openvino-genai generates per prompt")
    parser.add_argument("--calls", type=int, default=64, help="timed decode steps per qbench process")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    contexts = [int(c) for c in args.contexts.split(",")]
    hf = WORK / "hf"
    if not (hf / "config.json").is_file():
        write_hf_folder(hf)
    prompt = np.resize(np.load(ZOO["smollm2-135m"].files().evaluation)["input_ids"].reshape(-1), max(contexts))
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="qbench-ov-genai-"))
    times: dict[tuple[str, str, int], list[float]] = {}
    for precision, ir in build_irs(workdir).items():
        job = {"ir": str(ir), "hf": str(hf), "out": str(workdir / f"genai-{precision}")}
        folder = run_genai(args.genai_python, _GENAI_FOLDER, job)["folder"]
        for round_ in range(args.rounds):
            for way in WAYS[round_ % 3 :] + WAYS[: round_ % 3]:  # each way first in turn
                if way == "genai":
                    job = {"folder": folder, "threads": args.threads, "tokens": args.tokens}
                    job |= {"contexts": contexts, "prompt": prompt.tolist(), "repeats": 3}
                    found = run_genai(args.genai_python, _GENAI_TIMING, job)
                else:
                    found = time_qbench(ir, way, contexts, args.threads, args.calls)
                for context in contexts:
                    times.setdefault((precision, way, context), []).append(found[str(context)])
            print(f"{precision} round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    print(f"\n{args.threads} threads, {args.rounds} rounds; ms per token (median over rounds); ratio to state")
    print("| plan | context | state ms | inputs ms | genai ms | inputs / state | genai / state |")
    print("|---|---:|---:|---:|---:|---|---|")
    for precision in ("fp32", "int4-weight"):
        for context in contexts:
            ms = {way: times[(precision, way, context)] for way in WAYS}
            cells = [f"{np.median(ms[way]):.2f}" for way in WAYS]
            ratios = []
            for way in ("inputs", "genai"):
                mid, low, high = paired_ratio(ms[way], ms["state"])
                ratios.append(f"{mid:.2f}× ({low:.2f}–{high:.2f})")
            print(f"| {precision} | {context} | {' | '.join(cells)} | {' | '.join(ratios)} |")


if __name__ == "__main__":
    main()
