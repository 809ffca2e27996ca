"""The leaderboard: one SQL store (SQLite file by default, any SQLAlchemy URL such as PostgreSQL).

Rows are only ever inserted, each in its own transaction, so a failed or interrupted run never
touches what is already recorded. The schema carries a version; opening an older database
applies the migrations in order, and a newer one is refused rather than misread.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import os
import pathlib
import re
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from qbench.errors import QbenchError, first_line
from qbench.machine import isa_summary
from qbench.objectives import MEDIAN, Objective
from qbench.statistics import UNSTEADY_BAND, LatencyStats, Speedup, aa_band

log = logging.getLogger(__name__)
SCHEMA_VERSION = 10
SCHEMA_LOCK_KEY = 0x71BE7C  # PostgreSQL advisory lock held while creating or migrating the schema

_meta = sa.MetaData()

schema_info = sa.Table(
    "qbench_schema",
    _meta,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(256), nullable=False),
)

machines = sa.Table(
    "machines",
    _meta,
    sa.Column("machine_hash", sa.String(32), primary_key=True),
    sa.Column("fingerprint", sa.Text, nullable=False),
    sa.Column("first_seen", sa.DateTime, nullable=False),
)

results = sa.Table(
    "results",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(40), nullable=False, index=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # bench | tune
    sa.Column("status", sa.String(16), nullable=False),  # ok | failed
    sa.Column("error", sa.Text),
    sa.Column("machine_hash", sa.String(32), sa.ForeignKey("machines.machine_hash"), nullable=False, index=True),
    sa.Column("qbench_version", sa.String(32), nullable=False),
    sa.Column("code_version", sa.String(48)),  # version + hash of the sources that measured it (v2)
    sa.Column("job", sa.String(200), index=True),  # "suite:job/backend" for suite runs (v2)
    sa.Column("job_hash", sa.String(32)),  # hash of that job's full configuration (v2)
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("model_hash", sa.String(32), nullable=False, index=True),
    sa.Column("data_hash", sa.String(32)),
    sa.Column("metric", sa.String(100)),
    sa.Column("plan_name", sa.String(200), nullable=False),
    sa.Column("plan_hash", sa.String(32), nullable=False),
    sa.Column("plan", sa.Text, nullable=False),
    sa.Column("backend", sa.String(64), nullable=False),
    sa.Column("backend_version", sa.String(64)),
    sa.Column("backend_settings", sa.Text),
    sa.Column("threads", sa.Integer),
    sa.Column("batch_size", sa.Integer),
    sa.Column("protocol", sa.Text),
    sa.Column("n_samples", sa.Integer),
    sa.Column("median_ms", sa.Float),
    sa.Column("ci_low_ms", sa.Float),
    sa.Column("ci_high_ms", sa.Float),
    sa.Column("p90_ms", sa.Float),
    sa.Column("p99_ms", sa.Float),
    sa.Column("mean_ms", sa.Float),
    sa.Column("std_ms", sa.Float),
    sa.Column("cv", sa.Float),
    sa.Column("noisy", sa.Boolean),
    sa.Column("samples_ns", sa.LargeBinary),  # little-endian int64, in measured order
    sa.Column("accuracy", sa.Float),
    sa.Column("accuracy_drop", sa.Float),
    sa.Column("speedup", sa.Float),
    sa.Column("speedup_ci_low", sa.Float),
    sa.Column("speedup_ci_high", sa.Float),
    sa.Column("build_s", sa.Float),
    sa.Column("load_s", sa.Float),
    sa.Column("first_inference_ms", sa.Float),
    sa.Column("rss_delta_mb", sa.Float),  # resident memory this plan's load + first inference added
    sa.Column("peak_rss_mb", sa.Float),  # the process's peak RSS right after that (cumulative)
    sa.Column("artifact_bytes", sa.BigInteger),
    sa.Column("realized", sa.Text),  # JSON: layer -> precision that actually ran
    sa.Column("profile", sa.Text),  # JSON: per-op profile (qbench.profile), when asked for (v3)
    # Median of a short pass of the plan alone in the process, written by qbench before every plan
    # was timed in a worker process of its own (v4). The statistics above are now that figure;
    # new rows leave this empty, old rows keep it.
    sa.Column("solo_median_ms", sa.Float),
    # What one timed call ran: "batch", "prefill:<tokens>" or "decode:<cached tokens>" (v5).
    sa.Column("workload", sa.String(32)),
    # The artifact's content key in the build cache, so the next night can load it again (v6).
    sa.Column("artifact_key", sa.String(32)),
    # Median of the reference workload (the demo's fp32 on ONNX Runtime, fixed threads) timed
    # interleaved with this plan: median_ms / reference_ms cancels drift of the whole machine (v6).
    sa.Column("reference_ms", sa.Float),
    # JSON: this plan against the previous run of its suite job, measured in this process
    # (qbench.previous_run): method, previous row id, before/after medians, ratio with CI, p (v6).
    sa.Column("comparison", sa.Text),
    # JSON: the run's settings (``qbench.runspec.RunSpec``), enough to run it again, and the hash of
    # those settings with the contents of the files they name; equal for a CLI run, a suite job and
    # an API call with the same settings (v7).
    sa.Column("run_spec", sa.Text),
    sa.Column("config_hash", sa.String(32)),
    # What the row's figures answer (``qbench.scenario``): latency (speedup of medians),
    # latency:p90 / latency:p99 (a tune on a tail), throughput:BATCH, server:QPS[:BOUND_MS] (v8).
    sa.Column("scenario", sa.String(64)),
    # JSON: a language model's fidelity to fp32 (``qbench.fidelity.intervals``): KL, agreement
    # drop and perplexity change, each [value, low, high] with a 95 % interval over windows (v9).
    sa.Column("fidelity", sa.Text),
    # The row's identity across leaderboards (v10): random for a new row, a hash of what made it for
    # a row older than v10, so a row exported from one leaderboard and imported into another
    # (``qbench.fleet``) is the same row in both and is never imported twice.
    sa.Column("row_uid", sa.String(32)),
    sa.Index("ix_results_row_uid", "row_uid", unique=True),
)


def _add_job_columns(conn: Connection) -> None:
    # The first commit's v1 files lack peak_rss_mb: the column came later without a version bump.
    if "peak_rss_mb" not in {c["name"] for c in sa.inspect(conn).get_columns("results")}:
        conn.execute(sa.text("ALTER TABLE results ADD COLUMN peak_rss_mb FLOAT"))
    for column in ("code_version VARCHAR(48)", "job VARCHAR(200)", "job_hash VARCHAR(32)"):
        conn.execute(sa.text(f"ALTER TABLE results ADD COLUMN {column}"))
    conn.execute(sa.text("CREATE INDEX ix_results_job ON results (job)"))


def _add_profile_column(conn: Connection) -> None:
    conn.execute(sa.text("ALTER TABLE results ADD COLUMN profile TEXT"))


def _add_solo_column(conn: Connection) -> None:
    conn.execute(sa.text("ALTER TABLE results ADD COLUMN solo_median_ms FLOAT"))


def _add_workload_column(conn: Connection) -> None:
    conn.execute(sa.text("ALTER TABLE results ADD COLUMN workload VARCHAR(32)"))
    conn.execute(sa.text("UPDATE results SET workload = 'batch'"))


def _add_comparison_columns(conn: Connection) -> None:
    for column in ("artifact_key VARCHAR(32)", "reference_ms FLOAT", "comparison TEXT"):
        conn.execute(sa.text(f"ALTER TABLE results ADD COLUMN {column}"))


def _add_run_spec_columns(conn: Connection) -> None:
    for column in ("run_spec TEXT", "config_hash VARCHAR(32)"):
        conn.execute(sa.text(f"ALTER TABLE results ADD COLUMN {column}"))


def _add_scenario_column(conn: Connection) -> None:
    conn.execute(sa.text("ALTER TABLE results ADD COLUMN scenario VARCHAR(64)"))
    conn.execute(sa.text("UPDATE results SET scenario = 'latency'"))


def _add_fidelity_column(conn: Connection) -> None:
    conn.execute(sa.text("ALTER TABLE results ADD COLUMN fidelity TEXT"))


ROW_UID_KEYS = ("machine_hash", "run_id", "kind", "backend", "plan_hash", "workload", "scenario", "status")


def row_uid_of(values: Mapping[str, Any]) -> str:
    """The identity of a row written before v10: a hash of the run, plan and moment that made it,
    so two copies of one old leaderboard give each row the same identity."""
    created = values.get("created_at")
    created = created.isoformat() if isinstance(created, dt.datetime) else str(created)
    payload = json.dumps([*(str(values.get(k)) for k in ROW_UID_KEYS), created])
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _add_row_uid_column(conn: Connection) -> None:
    conn.execute(sa.text("ALTER TABLE results ADD COLUMN row_uid VARCHAR(32)"))
    for row in conn.execute(sa.select(results.c.id, results.c.created_at, *(results.c[k] for k in ROW_UID_KEYS))).all():
        uid = row_uid_of(row._mapping)
        conn.execute(results.update().where(results.c.id == row.id).values(row_uid=uid))
    conn.execute(sa.text("CREATE UNIQUE INDEX ix_results_row_uid ON results (row_uid)"))


# Migrations from version N to N+1, applied in order inside one transaction each.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    1: _add_job_columns,
    2: _add_profile_column,
    3: _add_solo_column,
    4: _add_workload_column,
    5: _add_comparison_columns,
    6: _add_run_spec_columns,
    7: _add_scenario_column,
    8: _add_fidelity_column,
    9: _add_row_uid_column,
}

RESULT_COLUMNS = tuple(c.name for c in results.columns if c.name != "id")
JSON_COLUMNS = ("plan", "backend_settings", "protocol", "realized", "profile", "comparison", "run_spec", "fidelity")


def default_url(results_dir: pathlib.Path) -> str:
    return f"sqlite:///{(results_dir / 'leaderboard.db').resolve()}"


def open_leaderboard(results_dir: pathlib.Path, url: str | None = None, writes: bool = True) -> Leaderboard:
    """The leaderboard at ``url`` (default: the results dir's SQLite file), keeping rows it cannot
    take in the results dir's fallback file; checked writable first when the caller ``writes``."""
    board = Leaderboard(url or default_url(results_dir), fallback=results_dir / "unrecorded-rows.jsonl")
    if writes:
        board.check_writable()
    return board


def samples_to_bytes(samples_ns: np.ndarray) -> bytes:
    return np.asarray(samples_ns, dtype="<i8").tobytes()


def samples_from_bytes(blob: bytes | None) -> np.ndarray:
    return np.frombuffer(blob or b"", dtype="<i8")


@dataclass
class ResultRow:
    """One leaderboard row: a measured (model, data, metric, plan, backend, machine, protocol),
    or a failed attempt at one (``status`` "failed" with the ``error``). Built by whoever
    measured it, inserted by ``Leaderboard.insert``; its fields are the ``results`` columns."""

    run_id: str
    kind: str  # bench | tune
    status: str  # ok | failed
    machine_hash: str
    qbench_version: str
    model_name: str
    model_hash: str
    plan_name: str
    plan_hash: str
    plan: str
    backend: str
    error: str | None = None
    code_version: str | None = None
    job: str | None = None
    job_hash: str | None = None
    data_hash: str | None = None
    metric: str | None = None
    backend_version: str | None = None
    backend_settings: dict[str, Any] | None = None
    threads: int | None = None
    batch_size: int | None = None
    protocol: dict[str, Any] | None = None
    n_samples: int | None = None
    median_ms: float | None = None
    ci_low_ms: float | None = None
    ci_high_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    cv: float | None = None
    noisy: bool | None = None
    samples_ns: bytes | None = None
    accuracy: float | None = None
    accuracy_drop: float | None = None
    speedup: float | None = None
    speedup_ci_low: float | None = None
    speedup_ci_high: float | None = None
    build_s: float | None = None
    load_s: float | None = None
    first_inference_ms: float | None = None
    rss_delta_mb: float | None = None
    peak_rss_mb: float | None = None
    artifact_bytes: int | None = None
    realized: dict[str, str] | None = None
    profile: str | None = None
    solo_median_ms: float | None = None
    workload: str | None = None
    artifact_key: str | None = None
    reference_ms: float | None = None
    comparison: dict[str, Any] | None = None
    run_spec: dict[str, Any] | None = None
    config_hash: str | None = None
    scenario: str | None = None
    fidelity: dict[str, list[float]] | None = None
    row_uid: str | None = None
    created_at: dt.datetime | None = None
    id: int | None = field(default=None, compare=False)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ResultRow:
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown result columns: {sorted(unknown)}")
        return cls(**values)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def with_samples(self, samples_ns: np.ndarray, noisy_cv: float) -> ResultRow:
        """The latency statistics of raw samples (nanoseconds, in measured order), and the samples."""
        stats = LatencyStats.from_samples(samples_ns, noisy_cv)
        values = {f.name: getattr(stats, f.name) for f in fields(stats) if f.name != "n"}
        return replace(self, n_samples=stats.n, samples_ns=samples_to_bytes(samples_ns), **values)

    def with_speedup(
        self,
        baseline_ns: np.ndarray,
        samples_ns: np.ndarray,
        accuracy_drop: float,
        block: int = 1,
        aa: dict[str, float] | None = None,
        objective: Objective = MEDIAN,
    ) -> ResultRow:
        """The speedup against fp32 samples interleaved with this plan's (``block`` samples per
        block round) on the ``objective``'s figure, and the accuracy drop (``with_ratio``)."""
        return self.with_ratio(objective.ratio(baseline_ns, samples_ns, block), accuracy_drop, aa)

    def with_ratio(self, ratio: Speedup, accuracy_drop: float, aa: dict[str, float] | None = None) -> ResultRow:
        """A paired ratio against fp32 and the accuracy drop. With the run's A/A check
        (``statistics.aa_check``), the interval widens by its band (two workers of one artifact
        differed that much), and the row is ``noisy`` (unsteady) when the band exceeds ``UNSTEADY_BAND``."""
        band = aa_band(aa)
        return replace(
            self,
            speedup=ratio.ratio,
            speedup_ci_low=ratio.ci_low / (1.0 + band),
            speedup_ci_high=ratio.ci_high * (1.0 + band),
            accuracy_drop=accuracy_drop,
            noisy=band > UNSTEADY_BAND if aa else self.noisy,
        )


class _NeedsWrite(Exception):
    """The schema must be created or migrated: retry holding the write lock."""


def _engine(url: str) -> Engine:
    """An engine whose SQLite transactions are real ones. pysqlite begins a transaction only
    before a data change, so CREATE TABLE and ALTER TABLE ran outside any (a failed migration
    half-applied; 4 processes opening a new file at once failed 35 of 60 times). Here every
    transaction starts with BEGIN, and with BEGIN IMMEDIATE, which takes the write lock before
    the first read, when opened with the execution option ``qbench_write_lock`` (SQLAlchemy's
    documented recipe for pysqlite)."""
    if not url.startswith("sqlite"):
        return sa.create_engine(url, future=True)
    engine = sa.create_engine(url, future=True, connect_args={"timeout": 60})

    @sa.event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("qbench_write_lock") else "BEGIN")

    return engine


class Leaderboard:
    """A connection to the store. Opening it checks reachability and the schema version."""

    def __init__(self, url: str, fallback: pathlib.Path | None = None) -> None:
        """``fallback``: where rows go, as JSON lines, when the database stops taking them mid-run
        (deleted, read-only, disk full, server gone); the default is a file in the temp folder."""
        self.url = url
        self.fallback = fallback or pathlib.Path(tempfile.gettempdir()) / "qbench-unrecorded-rows.jsonl"
        self.unrecorded = 0
        self.kept_in: dict[pathlib.Path, int] = {}  # fallback file -> rows written there
        self._sqlite_file = pathlib.Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
        try:
            if self._sqlite_file is not None:
                self._sqlite_file.parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = _engine(url)
            try:
                with self.engine.begin() as conn:  # a plain read when the schema is current
                    self._prepare(conn, write=False)
            except _NeedsWrite:  # create or migrate, holding the write lock from the first read
                with self.write_transaction() as conn:
                    self._prepare(conn, write=True)
            self._identity = self._file_identity()
        except sa.exc.ArgumentError as exc:
            raise QbenchError(
                f"leaderboard URL {safe_url(url)} is not a database URL ({without_password(first_line(exc), url)}); "
                "use sqlite:///path.db or postgresql://…"
            ) from None  # the chained exception would print the URL with its password
        except ModuleNotFoundError as exc:
            raise QbenchError(
                f"leaderboard URL {safe_url(url)} needs the Python driver {exc.name!r}; "
                "install it (for PostgreSQL: pip install 'qbench[postgres]')"
            ) from exc
        except sa.exc.DBAPIError as exc:
            reason = first_line(exc.orig if exc.orig is not None else exc)
            raise QbenchError(f"cannot open leaderboard database {safe_url(url)}: {reason}") from exc
        except OSError as exc:
            raise QbenchError(f"cannot create the leaderboard database {safe_url(url)}: {exc}") from exc

    def _prepare(self, conn: Connection, write: bool) -> None:
        """Check the schema; create or migrate it when ``write`` (else raise ``_NeedsWrite``). It
        all happens in the caller's one transaction, so a failure leaves the file as it was."""
        if write and conn.dialect.name == "postgresql":
            # Machines of a farm may open a fresh database at once: one creates or migrates the
            # schema while the others wait (the lock ends with this transaction).
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
        inspector = sa.inspect(conn)
        if not inspector.has_table(schema_info.name):
            if inspector.has_table(results.name):
                raise QbenchError(
                    f"{safe_url(self.url)} has a results table but no qbench schema version: "
                    "it is not a qbench leaderboard"
                )
            if not write:
                raise _NeedsWrite
            _meta.create_all(conn)
            conn.execute(schema_info.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
            return
        stored = conn.execute(sa.select(schema_info.c.value).where(schema_info.c.key == "schema_version")).scalar()
        try:
            version = int(stored)
        except (TypeError, ValueError):
            raise QbenchError(
                f"leaderboard {safe_url(self.url)} is damaged: its schema version is {str(stored)[:40]!r}, not a "
                "number; restore it from a backup or point --db / --results-dir at a new one"
            ) from None
        if version > SCHEMA_VERSION:
            raise QbenchError(
                f"leaderboard {safe_url(self.url)} has schema v{version}, newer than this qbench understands "
                f"(v{SCHEMA_VERSION}); upgrade qbench"
            )
        if version < 1:
            raise QbenchError(f"leaderboard {safe_url(self.url)} is damaged: schema version {version} does not exist")
        if version < SCHEMA_VERSION and not write:
            raise _NeedsWrite
        while version < SCHEMA_VERSION:
            MIGRATIONS[version](conn)
            version += 1
            conn.execute(schema_info.update().where(schema_info.c.key == "schema_version").values(value=str(version)))
        for table in (machines, results):
            have = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
            missing = [c.name for c in table.columns if c.name not in have]
            if missing:
                raise QbenchError(
                    f"leaderboard {safe_url(self.url)} is damaged: table {table.name} lacks column(s) "
                    f"{', '.join(missing)}; restore it from a backup or point --db / --results-dir at a new one"
                )

    def _file_identity(self) -> tuple[int, int] | None:
        """The SQLite file's (device, inode): a file deleted or replaced mid-run no longer
        matches, and rows written through the open connection would vanish with it."""
        if self._sqlite_file is None:
            return None
        try:
            info = self._sqlite_file.stat()
        except OSError:
            return None
        return info.st_dev, info.st_ino

    def check_writable(self) -> None:
        """Refuse, before anything is measured, a SQLite leaderboard this process cannot write."""
        if self._sqlite_file is None:
            return
        for path in (self._sqlite_file, self._sqlite_file.parent):  # SQLite writes a journal beside the file
            if not os.access(path, os.W_OK):
                raise QbenchError(
                    f"leaderboard {self._sqlite_file} is read-only ({path} is not writable); "
                    "make it writable or pass another --results-dir / --db"
                )

    @property
    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(sa.select(schema_info.c.value).where(schema_info.c.key == "schema_version")).scalar_one()
            )

    def write_transaction(self):
        """A transaction that holds SQLite's write lock from its start, so concurrent writers wait
        their turn (up to the connect timeout) instead of failing on a lock upgrade."""
        return self.engine.execution_options(qbench_write_lock=True).begin()

    def record_machine(self, fingerprint: Mapping[str, Any]) -> None:
        self._machine = dict(fingerprint)  # kept with any row that has to go to the fallback file
        try:
            with self.write_transaction() as conn:
                exists = conn.execute(
                    sa.select(machines.c.machine_hash).where(machines.c.machine_hash == fingerprint["hash"])
                ).first()
                if not exists:
                    conn.execute(
                        machines.insert().values(
                            machine_hash=fingerprint["hash"],
                            fingerprint=json.dumps(fingerprint, sort_keys=True),
                            first_seen=_now(),
                        )
                    )
        except sa.exc.IntegrityError:
            pass  # another process of the farm recorded the same machine first
        except sa.exc.DBAPIError as exc:
            log.warning("cannot record the machine in %s: %s", safe_url(self.url), first_line(exc.orig or exc))

    def insert(self, row: ResultRow | Mapping[str, Any]) -> int:
        """Insert one result row in its own transaction and return its id (also set on the row)."""
        if not isinstance(row, ResultRow):
            row = ResultRow.from_mapping(row)
        values = {k: v for k, v in asdict(row).items() if k != "id" and v is not None}
        values.setdefault("created_at", _now())
        values.setdefault("row_uid", uuid.uuid4().hex)
        for column in JSON_COLUMNS:
            if column in values and not isinstance(values[column], str):
                values[column] = json.dumps(values[column], sort_keys=True)
        try:
            if self._file_identity() != self._identity:
                raise OSError(f"the leaderboard file {self._sqlite_file} was deleted or replaced during the run")
            with self.write_transaction() as conn:
                row.id = int(conn.execute(results.insert().values(**values)).inserted_primary_key[0])
        except (sa.exc.StatementError, OSError) as exc:  # a lost database, or a value it refuses: keep the row
            self._keep(values, first_line(getattr(exc, "orig", None) or exc))
            row.id = -1
        return row.id

    def record_selection(self, ranked: Sequence[ResultRow], winner: ResultRow | None) -> None:
        """The tuner's decision on rows it recorded: each row's place in its paired ranking
        (``selection_rank``, 1 = best) and ``selected`` on the winner, kept in the rows' settings
        so tables and the report rank a tune's rows as the tuner did."""
        try:
            with self.write_transaction() as conn:
                for place, row in enumerate(ranked, start=1):
                    if row.id is None or row.id < 0:
                        continue
                    settings = row.backend_settings if isinstance(row.backend_settings, dict) else {}
                    if isinstance(row.backend_settings, str):
                        settings = json.loads(row.backend_settings)
                    mark = {**settings, "selection_rank": place, "selected": winner is not None and row is winner}
                    conn.execute(
                        results.update()
                        .where(results.c.id == row.id)
                        .values(backend_settings=json.dumps(mark, sort_keys=True))
                    )
        except sa.exc.DBAPIError as exc:  # the rows stand; only the ranking mark is missing
            log.warning("cannot record the tuner's ranking in %s: %s", safe_url(self.url), first_line(exc.orig or exc))

    def _keep(self, values: dict[str, Any], reason: str) -> None:
        """A row the database refused goes to the fallback file, so no measurement is lost."""
        record = {k: (base64.b64encode(v).decode() if isinstance(v, bytes) else v) for k, v in values.items()}
        record["machine_fingerprint"] = getattr(self, "_machine", None)
        line = json.dumps(record, default=str, sort_keys=True) + "\n"
        try:
            _append(self.fallback, line)
        except OSError:  # the results folder is gone, read-only or on a full disk
            self.fallback = pathlib.Path(tempfile.gettempdir()) / f"qbench-unrecorded-rows-{os.getpid()}.jsonl"
            _append(self.fallback, line)
        self.kept_in[self.fallback] = self.kept_in.get(self.fallback, 0) + 1
        if not self.unrecorded:
            log.error(
                "cannot write to leaderboard %s (%s); keeping rows in %s", safe_url(self.url), reason, self.fallback
            )
        self.unrecorded += 1
        self.unrecorded_reason = reason

    def frame(self, samples: bool = False, job_prefix: str | None = None) -> pd.DataFrame:
        """Result rows (newest last) with the machine's CPU model, as a DataFrame; only the rows of
        suite jobs whose name starts with ``job_prefix`` when given. The raw samples
        (``samples_ns``, bytes) are loaded only when asked for: tables never need them."""
        columns = [c for c in results.columns if samples or c.name != "samples_ns"]
        where = [] if job_prefix is None else [results.c.job.startswith(job_prefix, autoescape=True)]
        query = (
            sa.select(*columns, machines.c.fingerprint)
            .join(machines, machines.c.machine_hash == results.c.machine_hash)
            .where(*where)
            .order_by(results.c.id)
        )
        with self.engine.connect() as conn:
            frame = pd.DataFrame(conn.execute(query).mappings().all())
        if frame.empty:
            return pd.DataFrame(columns=[c.name for c in columns] + ["cpu_model", "isa"])
        fingerprints = frame.pop("fingerprint").map(json.loads)
        frame["cpu_model"] = fingerprints.map(lambda f: f.get("cpu_model", ""))
        frame["isa"] = fingerprints.map(lambda f: isa_summary(f.get("isa")))
        return frame

    def export_records(self, machine_hash: str | None = None) -> tuple[list[dict], list[dict]]:
        """Every row (only ``machine_hash``'s when given) as column mappings without the local
        ``id``, with the fingerprints of their machines (``machine_hash``, ``fingerprint``,
        ``first_seen``): what ``qbench.fleet`` writes."""
        where = [] if machine_hash is None else [results.c.machine_hash == machine_hash]
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(sa.select(results).where(*where).order_by(results.c.id)).mappings()]
            hashes = sorted({r["machine_hash"] for r in rows})
            found = conn.execute(sa.select(machines).where(machines.c.machine_hash.in_(hashes))).mappings()
            fingerprints = [dict(m) for m in found]
        for row in rows:
            del row["id"]
        return rows, fingerprints

    def add_records(self, fingerprints: Sequence[tuple[dict, dt.datetime]], rows: Sequence[dict]) -> int:
        """Insert the machines and rows (column mappings with a ``row_uid``) this leaderboard
        lacks, all in one transaction; returns how many rows were new."""
        with self.write_transaction() as conn:
            known = set(conn.execute(sa.select(machines.c.machine_hash)).scalars())
            for fingerprint, first_seen in fingerprints:
                if fingerprint["hash"] not in known:
                    conn.execute(
                        machines.insert().values(
                            machine_hash=fingerprint["hash"],
                            fingerprint=json.dumps(fingerprint, sort_keys=True),
                            first_seen=first_seen,
                        )
                    )
            have = set(conn.execute(sa.select(results.c.row_uid).where(results.c.row_uid.is_not(None))).scalars())
            new = [row for row in rows if row["row_uid"] not in have]
            for row in new:
                conn.execute(results.insert().values(**row))
        return len(new)

    def previous_run(self, job: str, machine_hash: str) -> pd.DataFrame:
        """The measured rows (with raw samples) of the newest run of suite job ``job`` on the
        machine: what tonight's worker compares its plans with. Empty if there is none."""
        ok = (results.c.job == job) & (results.c.machine_hash == machine_hash) & (results.c.status == "ok")
        newest = sa.select(results.c.run_id).where(ok).order_by(results.c.id.desc()).limit(1)
        query = sa.select(results).where(ok, results.c.run_id == newest.scalar_subquery()).order_by(results.c.id)
        with self.engine.connect() as conn:
            return pd.DataFrame(conn.execute(query).mappings().all())

    def count(self, **equal: Any) -> int:
        """How many rows have each given column equal to the given value (all rows by default)."""
        query = sa.select(sa.func.count()).select_from(results)
        query = query.where(*(results.c[name] == value for name, value in equal.items()))
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def machine(self, machine_hash: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            text = conn.execute(
                sa.select(machines.c.fingerprint).where(machines.c.machine_hash == machine_hash)
            ).scalar_one()
        return json.loads(text)

    def close(self) -> None:
        self.engine.dispose()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _append(path: pathlib.Path, line: str) -> None:
    """Append a whole line or nothing: on failure the file is cut back to its old size (and
    removed if this call created it), so no half line or empty file is left behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    existed = path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        try:
            rest = memoryview(line.encode())
            while rest:
                rest = rest[os.write(fd, rest) :]
        except OSError:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass
            if not existed:
                path.unlink(missing_ok=True)
            raise
    finally:
        os.close(fd)


def without_password(text: str, url: str) -> str:
    """``text`` (an error message) with ``url``'s password replaced by ***, wherever it appears."""
    try:
        password = sa.engine.make_url(url).password
    except sa.exc.ArgumentError:
        return text
    if not password:
        return text
    from urllib.parse import quote

    for form in {str(password), quote(str(password), safe="")}:
        text = text.replace(form, "***")
    return text


def safe_url(url: str) -> str:
    """The URL with any password hidden, for messages."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:  # not parsable: still hide whatever sits between "user:" and "@"
        return repr(re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url))
