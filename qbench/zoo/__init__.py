"""Built-in models that work offline. ``digits-cnn`` is the demo every command defaults to."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

_HERE = pathlib.Path(__file__).parent


@dataclass(frozen=True)
class ZooModel:
    name: str
    model: pathlib.Path
    calibration: pathlib.Path
    evaluation: pathlib.Path
    metric: str
    description: str


DEMO = ZooModel(
    name="digits-cnn",
    model=_HERE / "digits" / "digits_cnn.onnx",
    calibration=_HERE / "digits" / "calib.npz",
    evaluation=_HERE / "digits" / "eval.npz",
    metric="top1",
    description="ResNet-shaped CNN trained on scikit-learn's 8x8 digits (upsampled to 96x96 in-graph)",
)

ZOO = {DEMO.name: DEMO}
