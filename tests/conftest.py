"""Shared fixtures: the built-in demo, a small MatMul model, and a scratch results directory."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qbench.data import load_npz
from qbench.model import OnnxModel
from qbench.zoo import DEMO


@pytest.fixture(scope="module")
def zoo_cache(tmp_path_factory):
    """A scratch zoo cache for one test module: its exports are a first use, not a cache from earlier."""
    mp = pytest.MonkeyPatch()
    mp.setenv("QBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def demo_model() -> OnnxModel:
    return OnnxModel.load(DEMO.files().model)


@pytest.fixture(scope="session")
def demo_calibration(demo_model):
    return load_npz(DEMO.files().calibration, demo_model)


@pytest.fixture(scope="session")
def demo_evaluation(demo_model):
    return load_npz(DEMO.files().evaluation, demo_model)


def write_demo_subset(path: pathlib.Path, samples: int) -> pathlib.Path:
    """The first ``samples`` of the demo's 2160 evaluation samples as an .npz at ``path``."""
    np.savez(path, **{name: values[:samples] for name, values in np.load(DEMO.files().evaluation).items()})
    return path


@pytest.fixture(scope="session")
def demo_400(tmp_path_factory) -> list[str]:
    """Data arguments for the demo on 400 evaluation samples, for tests of the pipeline rather
    than of the demo's accuracy: scoring the full set is most of a bench."""
    subset = write_demo_subset(tmp_path_factory.mktemp("demo-400") / "eval.npz", 400)
    return ["--data", str(subset), "--calib-data", str(DEMO.files().calibration)]


def write_mlp_model(
    path: pathlib.Path, hidden: int = 256, tokens: int = 16, seed: int = 0, layers: int = 1
) -> pathlib.Path:
    """A transformer-feed-forward-shaped graph (MatMul+Add+Relu twice, one unnamed node); with
    ``layers`` > 1, that many feed-forward blocks in a row: the same inputs and outputs, ``layers``
    times the work (a slowdown that is one on any machine, idle or busy)."""
    rng = np.random.default_rng(seed)
    nodes, weights = [], []
    for i in range(layers):
        p, x, y = (
            ("ffn" if i == 0 else f"ffn{i}"),
            ("x" if i == 0 else f"y{i - 1}"),
            ("y" if i == layers - 1 else f"y{i}"),
        )
        s = "" if i == 0 else str(i)
        up = (rng.standard_normal((hidden, 4 * hidden)) / np.sqrt(hidden)).astype(np.float32)
        down = (rng.standard_normal((4 * hidden, hidden)) / np.sqrt(4 * hidden)).astype(np.float32)
        weights += [
            numpy_helper.from_array(up, f"w1{s}"),
            numpy_helper.from_array(np.zeros(4 * hidden, np.float32), f"b1{s}"),
            numpy_helper.from_array(down, f"w2{s}"),
        ]
        nodes += [
            helper.make_node("MatMul", [x, f"w1{s}"], [f"h{s}"], name=f"{p}/up"),
            helper.make_node("Add", [f"h{s}", f"b1{s}"], [f"hb{s}"], name=f"{p}/bias"),
            helper.make_node("Relu", [f"hb{s}"], [f"a{s}"]),  # deliberately nameless
            helper.make_node("MatMul", [f"a{s}", f"w2{s}"], [y], name=f"{p}/down"),
        ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", tokens, hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", tokens, hidden])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def write_transformer_model(path: pathlib.Path, hidden: int = 64, tokens: int = 16, seed: int = 0) -> pathlib.Path:
    """One pre-norm transformer block (single-head attention + feed-forward), written with the
    ONNX helper API: LayerNormalization, six weight MatMuls, two activation MatMuls, Softmax."""
    rng = np.random.default_rng(seed)

    def weight(name: str, rows: int, cols: int) -> TensorProto:
        return numpy_helper.from_array((rng.standard_normal((rows, cols)) / np.sqrt(rows)).astype(np.float32), name)

    inits = [weight(n, hidden, hidden) for n in ("wq", "wk", "wv", "wo")]
    inits += [weight("w_up", hidden, 4 * hidden), weight("w_down", 4 * hidden, hidden)]
    inits += [
        numpy_helper.from_array(np.ones(hidden, np.float32), "ln_scale"),
        numpy_helper.from_array(np.zeros(hidden, np.float32), "ln_bias"),
        numpy_helper.from_array(np.array(1 / np.sqrt(hidden), np.float32), "inv_sqrt_d"),
    ]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "ln_scale", "ln_bias"], ["n"], name="ln", axis=-1),
        helper.make_node("MatMul", ["n", "wq"], ["q"], name="attn/q"),
        helper.make_node("MatMul", ["n", "wk"], ["k"], name="attn/k"),
        helper.make_node("MatMul", ["n", "wv"], ["v"], name="attn/v"),
        helper.make_node("Transpose", ["k"], ["kt"], name="attn/kt", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s"], name="attn/scores"),
        helper.make_node("Mul", ["s", "inv_sqrt_d"], ["s2"], name="attn/scale"),
        helper.make_node("Softmax", ["s2"], ["p"], name="attn/softmax", axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["c"], name="attn/context"),
        helper.make_node("MatMul", ["c", "wo"], ["o"], name="attn/out"),
        helper.make_node("Add", ["o", "x"], ["r"], name="attn/residual"),
        helper.make_node("MatMul", ["r", "w_up"], ["u"], name="ffn/up"),
        helper.make_node("Relu", ["u"], ["a"], name="ffn/relu"),
        helper.make_node("MatMul", ["a", "w_down"], ["d"], name="ffn/down"),
        helper.make_node("Add", ["d", "r"], ["y"], name="ffn/residual"),
    ]
    graph = helper.make_graph(
        nodes,
        "transformer_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", tokens, hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", tokens, hidden])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def _model_and_data(
    folder: pathlib.Path, name: str, write, hidden: int, seed: int
) -> tuple[pathlib.Path, pathlib.Path]:
    """``write``'s model and 64 samples of real-valued input ``x`` (16 tokens of ``hidden``)."""
    model_path = write(folder / f"{name}.onnx", hidden=hidden)
    rng = np.random.default_rng(seed)
    np.savez(folder / f"{name}.npz", x=rng.standard_normal((64, 16, hidden)).astype(np.float32))
    return model_path, folder / f"{name}.npz"


@pytest.fixture(scope="session")
def transformer_files(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """The transformer block and 64 samples of data for it."""
    return _model_and_data(tmp_path_factory.mktemp("transformer"), "transformer", write_transformer_model, 64, 2)


@pytest.fixture(scope="session")
def mlp_files(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """The MLP model and 64 samples of data for it."""
    return _model_and_data(tmp_path_factory.mktemp("mlp"), "mlp", write_mlp_model, 256, 1)


def _postgres_bin() -> pathlib.Path | None:
    candidates = sorted(pathlib.Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return candidates[-1].parent if candidates else None


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server in a temporary folder, for the lifetime of the test session."""
    import os
    import pwd
    import shutil
    import socket
    import subprocess
    import tempfile

    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql); .ci/run installs them")
    folder = pathlib.Path(tempfile.mkdtemp(prefix="qbench-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        shutil.chown(folder, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data = folder / "data"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(
        [*run_as, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "qbench"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *run_as,
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(folder / "log"),
            "-w",
            "-o",
            f"-p {port} -k {folder} -c listen_addresses=127.0.0.1",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [*run_as, str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "qbench", "qbench"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://qbench@127.0.0.1:{port}/qbench"
    finally:
        subprocess.run(
            [*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(folder, ignore_errors=True)
