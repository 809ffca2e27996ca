"""Write the demo with N no-op pairs (Abs -> Identity; a ReLU output is never negative) after its
first ReLU: a real slowdown that ONNX Runtime keeps, for checking that a nightly suite flags it.
ONNX Runtime removed Identity -> Cast -> Cast round trips (float -> double or float16 -> float)
down to a flat 4-5 % whatever N, and x * 1 + 0 entirely; each Abs pair costs ~1.2 % of the
demo's fp32 latency on the EPYC, so 11 pairs made it 13-15 % slower.

    python benchmarks/inject_noop_chain.py 11 slow.onnx   # then swap it in for a suite job's model
"""

import sys

import onnx
from onnx import helper

from qbench.zoo import DEMO

steps, out = int(sys.argv[1]), sys.argv[2]
model = onnx.load(str(DEMO.files().model))
graph = model.graph
nodes = list(graph.node)
at = next(i for i, n in enumerate(nodes) if n.output[0] == "/Relu_output_0")
tensor = "/Relu_output_0"
chain = []
for k in range(steps):
    chain += [
        helper.make_node("Abs", [tensor], [f"noop{k}_abs"], name=f"noop{k}_abs"),
        helper.make_node("Identity", [f"noop{k}_abs"], [f"noop{k}_add"], name=f"noop{k}_id"),
    ]
    tensor = f"noop{k}_add"
for n in nodes[at + 1 :]:
    for j, name in enumerate(n.input):
        if name == "/Relu_output_0":
            n.input[j] = tensor
del graph.node[:]
graph.node.extend(nodes[: at + 1] + chain + nodes[at + 1 :])
onnx.checker.check_model(model)
onnx.save(model, out)
