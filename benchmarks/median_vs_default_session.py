"""Is qbench's absolute latency the one a user deploying the model sees?

Alternates, in separate processes, (a) ``qbench bench --recipe fp32`` on the demo, reading the
row's ``median_ms`` (the plan timed in its own worker process with the runtime's default
threading, qbench's engine), and (b) a plain ``onnxruntime.InferenceSession`` with default
options timing the same batch-1 input; prints each pair and the ratio of the medians (target:
within 5 %).

    python benchmarks/median_vs_default_session.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile

import numpy as np

from qbench.machine import current_machine
from qbench.store import Leaderboard, default_url
from qbench.zoo import DEMO

PLAIN = """
import sys, time
import numpy as np, onnxruntime as ort
feeds = {k: v[:1] for k, v in np.load(sys.argv[2]).items() if k != "labels"}
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
start = time.perf_counter()
while time.perf_counter() - start < 0.3:
    session.run(None, feeds)
samples = []
while len(samples) < 50 or sum(samples) < 1.0:
    t0 = time.perf_counter_ns(); session.run(None, feeds); samples.append((time.perf_counter_ns() - t0) / 1e9)
print(float(np.median(samples)) * 1e3)
"""


def qbench_median_ms(results: str) -> float:
    subprocess.run(
        ["qbench", "bench", "--recipe", "fp32", "--quick", "-q", "--results-dir", results],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    board = Leaderboard(default_url(__import__("pathlib").Path(results)))
    try:
        return float(board.frame().median_ms.iloc[-1])
    finally:
        board.close()


def plain_ms() -> float:
    files = DEMO.files()
    out = subprocess.run(
        [sys.executable, "-c", PLAIN, str(files.model), str(files.evaluation)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(out.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {current_machine().describe()}")
    ours, plain = [], []
    with tempfile.TemporaryDirectory(prefix="qbench-median-") as results:
        for i in range(args.rounds):
            ours.append(qbench_median_ms(results))
            plain.append(plain_ms())
            print(f"round {i + 1}: qbench bench {ours[-1]:.3f} ms, plain default session {plain[-1]:.3f} ms")
    ratios = np.array(ours) / np.array(plain)
    print(
        f"median of rounds: qbench bench {np.median(ours):.3f} ms, plain {np.median(plain):.3f} ms, "
        f"median of the rounds' ratios {np.median(ratios):.3f}"
    )


if __name__ == "__main__":
    main()
