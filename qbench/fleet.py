"""Leaderboard rows carried between machines that share no database: export to a file, import elsewhere.

The file is JSON Lines, gzip-compressed when its name ends in ``.gz``: a header line, one line
per machine fingerprint, one line per result row (raw samples base64). Rows keep their identity
(``row_uid``), so importing a file twice, or two files that overlap, adds each row once. A file
is read and checked whole before anything is written, and its rows go in in one transaction:
a damaged or foreign file changes nothing.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
import pathlib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import sqlalchemy as sa

from qbench import __version__
from qbench.errors import QbenchError
from qbench.store import JSON_COLUMNS, SCHEMA_VERSION, Leaderboard, results

EXPORT_FORMAT = 1
#: Row columns an exported row must carry: the leaderboard's non-null ones and its identity.
REQUIRED = tuple(c.name for c in results.columns if not c.nullable and c.name != "id") + ("row_uid",)
BINARY = tuple(c.name for c in results.columns if isinstance(c.type, sa.LargeBinary))
DATETIMES = tuple(c.name for c in results.columns if isinstance(c.type, sa.DateTime))
NUMBERS = tuple(c.name for c in results.columns if isinstance(c.type, sa.Integer | sa.Float) and c.name != "id")


@dataclass(frozen=True)
class ImportSummary:
    added: int
    present: int  # rows the leaderboard had already (same row_uid)
    machines: int  # machine fingerprints the file named

    def __str__(self) -> str:
        return f"imported {self.added} row(s), {self.present} already present, from {self.machines} machine(s)"


def export_rows(board: Leaderboard, path: pathlib.Path, machine_hash: str | None = None) -> int:
    """Write the leaderboard's rows (only ``machine_hash``'s when given) to ``path``; returns how many."""
    rows, fingerprints = board.export_records(machine_hash)
    if machine_hash is not None and not rows:
        raise QbenchError(
            f"the leaderboard has no rows of machine {machine_hash!r}; "
            "`qbench leaderboard --csv` lists each row's machine_hash"
        )
    header = {
        "qbench_export": EXPORT_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "qbench_version": __version__,
        "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machines": len(fingerprints),
        "rows": len(rows),
    }
    lines = [header]
    for machine in fingerprints:
        lines.append({"machine": json.loads(machine["fingerprint"]), "first_seen": machine["first_seen"].isoformat()})
    lines += [{"row": _encoded(r)} for r in rows]
    text = "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")  # a reader never sees half a file
    partial.write_bytes(gzip.compress(text, mtime=0) if path.suffix == ".gz" else text)
    partial.replace(path)
    return len(rows)


def _encoded(row: dict) -> dict:
    values = {k: v for k, v in row.items() if v is not None}
    for column in BINARY:
        if column in values:
            values[column] = base64.b64encode(values[column]).decode()
    for column in DATETIMES:
        if column in values:
            values[column] = values[column].isoformat()
    for column in JSON_COLUMNS:  # stored as text; exported as JSON values
        if isinstance(values.get(column), str):
            values[column] = json.loads(values[column])
    return values


def import_rows(board: Leaderboard, path: pathlib.Path) -> ImportSummary:
    """Add the rows of an exported file that the leaderboard lacks; a QbenchError names what is
    wrong with a file that is not a whole qbench export, before anything is written."""
    fingerprints, rows = read_export(path)
    added = board.add_records(fingerprints, rows)  # one transaction: all of the file or nothing
    return ImportSummary(added, len(rows) - added, len(fingerprints))


def read_export(path: pathlib.Path) -> tuple[list[tuple[dict, dt.datetime]], list[dict]]:
    """The machines and rows of an exported file, checked; rows ready to insert."""
    lines = _lines(path)
    header = _json(next(lines, None), path, 1)
    if not isinstance(header, dict) or header.get("qbench_export") != EXPORT_FORMAT:
        raise QbenchError(
            f'{path} is not a qbench export: its first line lacks "qbench_export": {EXPORT_FORMAT}; '
            "make one with `qbench leaderboard --export FILE`"
        )
    version = header.get("schema_version")
    if not isinstance(version, int) or not 10 <= version <= SCHEMA_VERSION:
        raise QbenchError(
            f"{path} holds rows of leaderboard schema v{version}; this qbench reads v10 to v{SCHEMA_VERSION} "
            "(upgrade the qbench that imports it, or export again with this one)"
        )
    fingerprints, rows = [], []
    for number, text in enumerate(lines, start=2):
        record = _json(text, path, number)
        if isinstance(record, dict) and isinstance(record.get("machine"), dict):
            fingerprints.append(_machine(record, path, number))
        elif isinstance(record, dict) and isinstance(record.get("row"), dict):
            rows.append(_row(record["row"], path, number))
        else:
            raise QbenchError(f'{path} line {number}: expected a "machine" or a "row" object; the file is damaged')
    if len(rows) != header.get("rows") or len(fingerprints) != header.get("machines"):
        raise QbenchError(
            f"{path} is cut short or damaged: its header promises {header.get('rows')} rows and "
            f"{header.get('machines')} machines, the file holds {len(rows)} and {len(fingerprints)}"
        )
    named = {f["hash"] for f, _ in fingerprints}
    orphan = next((r for r in rows if r["machine_hash"] not in named), None)
    if orphan is not None:
        raise QbenchError(
            f"{path}: row {orphan['row_uid']} names machine {orphan['machine_hash']}, which the file lacks"
        )
    return fingerprints, rows


def _lines(path: pathlib.Path) -> Iterator[str]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise QbenchError(f"cannot read export {path}: {exc.strerror or exc}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise QbenchError(f"{path} is a damaged gzip file ({exc}); export it again") from None
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise QbenchError(f"{path} is not a qbench export (not UTF-8 text)") from None
    return iter(line for line in text.splitlines() if line.strip())


def _json(text: str | None, path: pathlib.Path, number: int):
    if text is None:
        raise QbenchError(f"{path} is empty: not a qbench export")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise QbenchError(f"{path} line {number} is not JSON: the file is damaged or not a qbench export") from None


def _machine(record: dict, path: pathlib.Path, number: int) -> tuple[dict, dt.datetime]:
    fingerprint = record["machine"]
    if not isinstance(fingerprint.get("hash"), str) or not 0 < len(fingerprint["hash"]) <= 32:
        raise QbenchError(f'{path} line {number}: a machine without a valid "hash"; the file is damaged')
    return fingerprint, _datetime(record.get("first_seen"), path, number)


def _datetime(value, path: pathlib.Path, number: int) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise QbenchError(f"{path} line {number}: {value!r} is not an ISO date and time; the file is damaged") from None


def _row(values: dict, path: pathlib.Path, number: int) -> dict:
    where = f"{path} line {number}"
    unknown = sorted(set(values) - {c.name for c in results.columns} | ({"id"} & set(values)))
    if unknown:
        raise QbenchError(f"{where}: unknown column {unknown[0]!r}; was it exported by a newer qbench?")
    values = {
        k: json.dumps(v, sort_keys=True) if k in JSON_COLUMNS and not isinstance(v, str) else v
        for k, v in values.items()
    }
    missing = [c for c in REQUIRED if not isinstance(values.get(c), str) and c not in DATETIMES]
    if missing or "created_at" not in values:
        raise QbenchError(f"{where}: the row lacks {(missing or ['created_at'])[0]!r}; the file is damaged")
    return _typed(dict(values), path, number)


def _typed(row: dict, path: pathlib.Path, number: int) -> dict:
    """``row`` with its dates and bytes decoded, and its numbers checked."""
    where = f"{path} line {number}"
    for column in DATETIMES:
        if column in row:
            row[column] = _datetime(row[column], path, number)
    for column in BINARY:
        if column in row:
            try:
                row[column] = base64.b64decode(row[column], validate=True)
            except (TypeError, ValueError):
                raise QbenchError(f"{where}: {column} is not base64; the file is damaged") from None
    for column in NUMBERS:
        value = row.get(column)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise QbenchError(f"{where}: {column} is {value!r}, not a number; the file is damaged")
    return row
