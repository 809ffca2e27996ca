"""Small models with the shapes that break naive Q/DQ placement, written with ``onnx.helper``.

``mobilenet-blocks``: inverted residual blocks (1x1 expand, depthwise 3x3, 1x1 project) with
ReLU6 as ``Clip(0, 6)``, residual Adds, global average pooling and a Gemm classifier.
``yolo-blocks``: a CSP-style neck (SiLU as ``Sigmoid`` * ``Mul``, ``Split``, ``Concat``,
nearest ``Resize`` upsampling) ending in a 1x1 detection head.

Weights are random (He-scaled, biases small) and the images are smooth random fields, so the
metrics are fidelity against fp32 (top-1 agreement, cosine), not task accuracy. Fixed seeds
make every export identical.
"""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IMAGE = 96


class _GraphWriter:
    """Accumulates nodes and initializers; each helper returns its output tensor name."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(
        self, op: str, inputs: list[str], name: str, outputs: int = 1, out: str | None = None, **attrs
    ) -> list[str]:
        outs = [out] if out else [f"{name}_out{i}" if outputs > 1 else f"{name}_out" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs

    def conv(
        self, x: str, cin: int, cout: int, name: str, kernel: int = 1, stride: int = 1, groups: int = 1, out=None
    ) -> str:
        fan_in = cin // groups * kernel * kernel
        w = self.rng.standard_normal((cout, cin // groups, kernel, kernel)) * np.sqrt(2.0 / fan_in)
        b = self.rng.standard_normal(cout) * 0.05
        pad = kernel // 2
        return self.node(
            "Conv",
            [x, self.const(f"{name}.weight", w.astype(np.float32)), self.const(f"{name}.bias", b.astype(np.float32))],
            name,
            kernel_shape=[kernel, kernel],
            strides=[stride, stride],
            pads=[pad] * 4,
            out=out,
            group=groups,
        )[0]

    def relu6(self, x: str, name: str) -> str:
        lo, hi = self.const(f"{name}.min", np.float32(0.0)), self.const(f"{name}.max", np.float32(6.0))
        return self.node("Clip", [x, lo, hi], name)[0]

    def silu(self, x: str, name: str) -> str:
        gate = self.node("Sigmoid", [x], f"{name}/Sigmoid")[0]
        return self.node("Mul", [x, gate], f"{name}/Mul")[0]

    def model(self, name: str, inputs: list, outputs: list) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="qbench")
        proto.ir_version = 8
        onnx.checker.check_model(proto, full_check=True)
        return proto


def mobilenet_blocks(seed: int = 0, classes: int = 10) -> onnx.ModelProto:
    g = _GraphWriter(seed)
    x = g.relu6(g.conv("image", 3, 16, "stem/Conv", kernel=3, stride=2), "stem/Clip")
    channels = 16
    # (expansion, out channels, stride): strides halve 48 -> 24 -> 12 -> 6; equal shapes get a residual Add.
    for i, (expand, cout, stride) in enumerate(
        [(4, 24, 2), (4, 24, 1), (4, 32, 2), (4, 32, 1), (4, 48, 2), (4, 48, 1)]
    ):
        hidden = channels * expand
        block = f"block{i}"
        h = g.relu6(g.conv(x, channels, hidden, f"{block}/expand/Conv"), f"{block}/expand/Clip")
        h = g.relu6(
            g.conv(h, hidden, hidden, f"{block}/dw/Conv", kernel=3, stride=stride, groups=hidden), f"{block}/dw/Clip"
        )
        h = g.conv(h, hidden, cout, f"{block}/project/Conv")
        x = g.node("Add", [x, h], f"{block}/Add")[0] if stride == 1 and cout == channels else h
        channels = cout
    x = g.relu6(g.conv(x, channels, 128, "head/Conv"), "head/Clip")
    pooled = g.node("GlobalAveragePool", [x], "pool/GlobalAveragePool")[0]
    flat = g.node("Flatten", [pooled], "pool/Flatten", axis=1)[0]
    w = (g.rng.standard_normal((classes, 128)) * np.sqrt(1.0 / 128)).astype(np.float32)
    bias = g.const("fc.bias", np.zeros(classes, np.float32))
    g.node("Gemm", [flat, g.const("fc.weight", w), bias], "fc/Gemm", out="logits", transB=1)
    return g.model(
        "mobilenet_blocks",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, IMAGE, IMAGE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
    )


def yolo_blocks(seed: int = 1) -> onnx.ModelProto:
    g = _GraphWriter(seed)

    def conv_silu(x: str, cin: int, cout: int, name: str, kernel: int = 1, stride: int = 1) -> str:
        return g.silu(g.conv(x, cin, cout, f"{name}/Conv", kernel, stride), name)

    def csp(x: str, channels: int, name: str) -> str:
        """Split in two halves, a bottleneck with a residual on one, Concat, fuse with a 1x1."""
        h = conv_silu(x, channels, channels, f"{name}/cv1")
        half = channels // 2
        split = g.const(f"{name}.split", np.array([half, half], np.int64))
        a, b = g.node("Split", [h, split], f"{name}/Split", outputs=2, axis=1)
        m = conv_silu(b, half, half, f"{name}/m/cv1", kernel=3)
        m = conv_silu(m, half, half, f"{name}/m/cv2", kernel=3)
        m = g.node("Add", [b, m], f"{name}/m/Add")[0]
        cat = g.node("Concat", [a, b, m], f"{name}/Concat", axis=1)[0]
        return conv_silu(cat, channels + half, channels, f"{name}/cv2")

    x = conv_silu("image", 3, 16, "stem", kernel=3, stride=2)  # 48
    p3 = csp(conv_silu(x, 16, 32, "down1", kernel=3, stride=2), 32, "c3")  # 24
    p4 = csp(conv_silu(p3, 32, 64, "down2", kernel=3, stride=2), 64, "c4")  # 12
    lateral = conv_silu(p4, 64, 32, "lateral")
    scales = g.const("up.scales", np.array([1, 1, 2, 2], np.float32))
    up = g.node("Resize", [lateral, "", scales], "up/Resize", mode="nearest")[0]  # 24
    merged = g.node("Concat", [up, p3], "neck/Concat", axis=1)[0]
    n3 = csp(conv_silu(merged, 64, 48, "neck/cv"), 48, "n3")
    g.conv(n3, 48, 16, "head/Conv", out="boxes")
    return g.model(
        "yolo_blocks",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, IMAGE, IMAGE])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["batch", 16, IMAGE // 4, IMAGE // 4])],
    )


def smooth_images(count: int, seed: int) -> np.ndarray:
    """Images with structure at several scales (low-frequency noise plus edges), in [-1, 1]."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 3, IMAGE, IMAGE), np.float32)
    for size in (3, 6, 12, 24):
        coarse = rng.standard_normal((count, 3, size, size)).astype(np.float32)
        images += np.kron(coarse, np.ones((IMAGE // size, IMAGE // size), np.float32)) / size**0.5
    return np.tanh(images)


def _export(target: pathlib.Path, proto: onnx.ModelProto, seed: int) -> None:
    onnx.save_model(proto, str(target / "model.onnx"))
    np.savez(target / "calib.npz", image=smooth_images(64, seed))
    np.savez(target / "eval.npz", image=smooth_images(192, seed + 1000))


def export_mobilenet(target: pathlib.Path) -> None:
    _export(target, mobilenet_blocks(), seed=10)


def export_yolo(target: pathlib.Path) -> None:
    _export(target, yolo_blocks(), seed=20)
