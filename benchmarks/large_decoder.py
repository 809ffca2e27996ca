"""A decoder over protobuf's 2 GiB limit, end to end: bench and a short tune, with peak memory.

Writes a Llama-shaped decoder with random weights (default 12 blocks of width 2048, SmolLM2's
vocabulary, so its tokenizer and evaluation windows serve: 2.7 GiB of fp32 weights in
``model.onnx.data`` beside a 33 KB graph), then runs, each in its own process,

    qbench bench DIR --recipe fp32,int4-weight,int8-weight --workload decode:128
    qbench tune DIR --trials 5 --max-drop kl:BUDGET --workload decode:128

and prints each command's output, wall time and peak resident memory (the largest of the process
and every worker it ran: ``wait4``'s ``ru_maxrss``). Random weights make the fidelity numbers meaningless as quality
(the model predicts nothing); what this shows is that every cache, builder, hash and runtime takes
the side file, and what the sizes cost. Needs the zoo's SmolLM2 (``qbench zoo install``).

    python benchmarks/large_decoder.py [--folder DIR] [--layers 12] [--trials 5] [--budget 0.05]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx

from qbench.zoo import ZOO, smollm

WIDTH, FFN, HEADS, KV_HEADS = 2048, 5632, 32, 4
EVAL_WINDOWS, CALIB_WINDOWS, TOKENS = 8, 4, 64  # a few short windows: a prefill of 2.7 GiB is slow on 2 cores


def random_weights(config: smollm.LlamaConfig, seed: int) -> dict[str, np.ndarray]:
    """Hugging Face Llama names, ``[out, in]`` linears of std 0.02 (the usual init), unit norms."""
    rng = np.random.default_rng(seed)

    def normal(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)

    kv = config.kv_heads * config.head_dim
    ones = np.ones(config.hidden, np.float32)
    weights = {"model.embed_tokens.weight": normal(config.vocab, config.hidden), "model.norm.weight": ones}
    for i in range(config.layers):
        p = f"model.layers.{i}"
        weights |= {
            f"{p}.input_layernorm.weight": ones,
            f"{p}.post_attention_layernorm.weight": ones,
            f"{p}.self_attn.q_proj.weight": normal(config.hidden, config.hidden),
            f"{p}.self_attn.k_proj.weight": normal(kv, config.hidden),
            f"{p}.self_attn.v_proj.weight": normal(kv, config.hidden),
            f"{p}.self_attn.o_proj.weight": normal(config.hidden, config.hidden),
            f"{p}.mlp.gate_proj.weight": normal(config.ffn, config.hidden),
            f"{p}.mlp.up_proj.weight": normal(config.ffn, config.hidden),
            f"{p}.mlp.down_proj.weight": normal(config.hidden, config.ffn),
        }
    return weights


def write_decoder(folder: pathlib.Path, layers: int, seed: int) -> None:
    """The fused (GroupQueryAttention) decoder with its weights in a side file, SmolLM2's
    tokenizer, and calibration/evaluation windows of its prose."""
    zoo = ZOO["smollm2-135m"]
    if zoo.missing():
        sys.exit(f"needs the zoo's SmolLM2 for its tokenizer and text: {zoo.missing()}")
    source = zoo.files().model.parent
    config = smollm.LlamaConfig(layers, WIDTH, FFN, HEADS, KV_HEADS, 10000.0, 1e-5, 49152)
    proto = smollm.build_fused_graph(config, random_weights(config, seed), max_positions=4096)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(folder / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    shutil.copy(source / "tokenizer.json", folder / "tokenizer.json")
    windows = np.load(source / "eval.npz")
    for name, rows in (("eval.npz", slice(0, EVAL_WINDOWS)), ("calib.npz", slice(-CALIB_WINDOWS, None))):
        np.savez(folder / name, input_ids=windows["input_ids"][rows, :TOKENS], labels=windows["labels"][rows, :TOKENS])


def run(command: list[str]) -> tuple[float, float]:
    """Run ``command``, its output passed through; wall seconds and the peak resident GiB of the
    process and the workers it ran (``wait4`` reports the largest of them)."""
    start = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        sys.exit(f"{' '.join(command)} failed ({process.returncode})")
    return time.perf_counter() - start, usage.ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=pathlib.Path, help="where the decoder is (written if missing)")
    parser.add_argument("--layers", type=int, default=12, help="decoder blocks (12: 2.7 GiB)")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--budget", type=float, default=0.05, help="the tune's KL budget")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory(prefix="qbench-large-")
    folder = args.folder or pathlib.Path(scratch.name) / "decoder"
    if not (folder / "model.onnx").is_file():
        start = time.perf_counter()
        # In a process of its own: Linux carries a process's peak resident memory across fork
        # and exec, so every command started from a process that held the weights would report
        # at least their size (a bench read 10.6 GiB instead of 6.5 that way).
        writer = multiprocessing.get_context("spawn").Process(
            target=write_decoder, args=(folder, args.layers, args.seed)
        )
        writer.start()
        writer.join()
        if writer.exitcode:
            raise SystemExit(f"writing the decoder failed (exit code {writer.exitcode})")
        print(f"wrote {folder} in {time.perf_counter() - start:.0f} s")
    weights = sum(f.stat().st_size for f in folder.glob("model.onnx*"))
    print(f"decoder: {args.layers} blocks, {weights / 2**30:.2f} GiB on disk ({folder})")
    results = pathlib.Path(scratch.name) / "results"
    common = ["--data", str(folder / "eval.npz"), "--calib-data", str(folder / "calib.npz")]
    common += ["--workload", "decode:128", "--results-dir", str(results)]
    qbench = [sys.executable, "-m", "qbench.cli"]
    bench = [*qbench, "bench", str(folder), "--recipe", "fp32,int4-weight,int8-weight", *common]
    tune = [*qbench, "tune", str(folder), "--trials", str(args.trials), "--max-drop", f"kl:{args.budget}"]
    tune += ["--seed", str(args.seed), *common]
    for name, command in (("bench", bench), ("tune", tune)):
        print(f"\n$ {' '.join(command[2:])}", flush=True)
        seconds, peak = run(command)
        print(f"{name}: {seconds:.0f} s wall, peak resident memory {peak:.1f} GiB", flush=True)
    scratch.cleanup()


if __name__ == "__main__":
    main()
