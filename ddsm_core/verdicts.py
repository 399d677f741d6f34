"""Radiologists' verdicts on patches: stored in the workspace, exported, imported, applied.

Storage: <workspace>/review.sqlite (stdlib sqlite3, WAL), one append-only table.
A verdict names a patch by (dataset, manifest `filename`) and says one of
VERDICTS; `relabel` carries the correct source label 0-4, the others none.
Times are UTC ISO 8601, stored in one fixed-width form so text order is time
order. The current verdict of a patch is its latest by time (ties: the later
write); every earlier one stays in the history.

Writes take the write lock up front (BEGIN IMMEDIATE) and wait for it up to
BUSY_SECONDS, so many browsers and CLI processes writing at once lose nothing.
Nothing here imports streamlit or tensorflow.

Public API:
    database_path(root)                                   where the verdicts live
    add(root, dataset, filename, verdict, new_label=None, note="", reviewer="", time=None) -> dict
    require_patches(manifest, filenames, dataset=...)     UserError naming unknown filenames
    current(root, dataset) / history(root, dataset, filename=None) -> DataFrame
    export(root, dataset, manifest, out_path, history=False)
    import_file(root, dataset, manifest, path) -> int     rows added (identical ones skipped)
    apply(manifest, current_verdicts, splits=("train",)) -> (manifest copy, summary)
    snapshot(current_verdicts) -> {count, sha256}
    reviewed_labels(frame, current_verdicts, label_to_output) -> (frame copy, summary)
"""
from __future__ import annotations

import csv
import hashlib
import json
import sqlite3
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from time import sleep

import pandas as pd

from . import workspace
from .data import checks, store
from .errors import UserError

VERDICTS = ("agree", "relabel", "exclude", "unsure")
# the verdicts that change what a model trains on (and so the snapshot)
CHANGING = ("relabel", "exclude")
COLUMNS = ("filename", "verdict", "new_label", "note", "reviewer", "time")
EXPORT_COLUMNS = ("filename", "split", "label", "verdict", "new_label", "note", "reviewer", "time")
SCHEMA_VERSION = 1
# how long one write waits for another process's lock, and how often a "locked" error is retried
BUSY_SECONDS = 30.0
LOCK_RETRIES = 5

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS verdicts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        dataset TEXT NOT NULL,
        filename TEXT NOT NULL,
        verdict TEXT NOT NULL CHECK (verdict IN ('agree', 'relabel', 'exclude', 'unsure')),
        new_label INTEGER CHECK (CASE WHEN verdict = 'relabel' THEN coalesce(new_label BETWEEN 0 AND 4, 0)
                                      ELSE new_label IS NULL END),
        note TEXT NOT NULL DEFAULT '',
        reviewer TEXT NOT NULL CHECK (reviewer <> ''),
        time TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS verdicts_by_patch ON verdicts (dataset, filename, time, id)",
)
_SELECT = "SELECT filename, verdict, new_label, note, reviewer, time FROM verdicts"


def database_path(root) -> Path:
    return Path(root) / "review.sqlite"


# ----------------------------------------------------------------------------
# The database
# ----------------------------------------------------------------------------

def _open(root) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, schema up to date."""
    path = database_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=BUSY_SECONDS, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        _migrate(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to SCHEMA_VERSION; later versions add steps here, keyed by user_version."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise UserError(f"{path} has review schema {version}, newer than this ddsm_core reads "
                        f"({SCHEMA_VERSION}): upgrade ddsm_core")
    if version == SCHEMA_VERSION:
        return
    with _transaction(conn):
        # another process may have migrated while we waited for the lock
        if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


@contextmanager
def _transaction(conn: sqlite3.Connection):
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error: all of a write or none of it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _with_db(root, work, write: bool):
    """work(conn), in one write transaction when `write`; retried while another process holds a lock.

    The busy timeout covers almost every wait; the retry covers the few places
    SQLite reports "locked" without waiting (e.g. switching a new file to WAL).
    """
    for attempt in range(LOCK_RETRIES + 1):
        try:
            with closing(_open(root)) as conn:
                if not write:
                    return work(conn)
                with _transaction(conn):
                    return work(conn)
        except sqlite3.OperationalError as error:
            if getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:  # rolled back: nothing half-written
                raise UserError(f"{database_path(root)}: the disk is full ({error}): nothing was recorded, "
                                "the verdicts already stored are unchanged") from None
            if "locked" not in str(error) and "busy" not in str(error):
                raise
            sleep(0.1 * (attempt + 1))
    raise UserError(f"{database_path(root)} stayed locked by another process: try again")


def _rows(root, where: str, params: tuple) -> list[tuple]:
    """Rows of COLUMNS matching `where`; no rows (and no file created) when nothing was stored yet."""
    if not database_path(root).exists():
        return []
    return _with_db(root, lambda conn: conn.execute(f"{_SELECT} WHERE {where}", params).fetchall(),
                    write=False)


def _frame(rows: list) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["new_label"] = frame["new_label"].astype("Int64")
    return frame


# ----------------------------------------------------------------------------
# Checking one verdict
# ----------------------------------------------------------------------------

def _missing(value) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return value is None or bool(pd.isna(value))


def _text(value) -> str:
    return "" if _missing(value) else str(value)


def _label(verdict: str, value) -> tuple[int | None, str | None]:
    """The new label a verdict carries, or why it cannot be stored."""
    if verdict != "relabel":
        if _missing(value):
            return None, None
        return None, f"new_label {str(value)!r} given with verdict {verdict!r}: only relabel takes a label"
    if _missing(value):
        return None, "relabel needs new_label, the correct source label 0-4"
    label, reason = checks.parse_label(value)
    return label, reason and f"new_label {str(value)!r} is not a source label 0-4"


def _utc_time(value) -> tuple[str | None, str | None]:
    """Stored form of a time (now when missing); ISO 8601, a time without offset counts as UTC."""
    if _missing(value):
        moment = datetime.now(UTC)
    elif isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value).strip())
        except ValueError:
            return None, f"time {str(value)!r} is not an ISO 8601 date and time (e.g. 2024-05-01T14:30:00Z)"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds"), None


def _clean(filename, verdict, new_label, note, reviewer, time) -> tuple[dict, list[str]]:
    """The verdict as it would be stored, and every reason it cannot be (empty when fine)."""
    problems = []
    filename = _text(filename)
    if not filename.strip():
        problems.append("empty filename")
    verdict = _text(verdict).strip().lower()
    label = None
    if verdict not in VERDICTS:
        problems.append(f"unknown verdict {verdict!r} (use agree, relabel, exclude or unsure)")
    else:
        label, problem = _label(verdict, new_label)
        problems += [problem] if problem else []
    reviewer = _text(reviewer).strip()
    if not reviewer:
        problems.append("reviewer is empty: name who gave the verdict")
    time, problem = _utc_time(time)
    problems += [problem] if problem else []
    record = {"filename": filename, "verdict": verdict, "new_label": label, "note": _text(note),
              "reviewer": reviewer, "time": time}
    return record, problems


def _insert(conn: sqlite3.Connection, dataset: str, record: dict) -> int:
    cursor = conn.execute(
        "INSERT INTO verdicts (dataset, filename, verdict, new_label, note, reviewer, time) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)", (dataset, *(record[column] for column in COLUMNS)))
    return cursor.lastrowid


# ----------------------------------------------------------------------------
# Recording and reading
# ----------------------------------------------------------------------------

def add(root, dataset: str, filename: str, verdict: str, new_label=None, note: str = "",
        reviewer: str = "", time=None) -> dict:
    """Record one verdict and return it as stored: {id, dataset, filename, verdict, new_label, note,
    reviewer, time}.

    Checks the verdict itself (known verdict; relabel with a source label 0-4 and
    no label otherwise; a reviewer; an ISO 8601 time, default now) but not that
    the patch exists: callers that have the manifest use require_patches().
    """
    store.check_name(dataset)
    record, problems = _clean(filename, verdict, new_label, note, reviewer, time)
    if problems:
        raise UserError(problems)
    row_id = _with_db(root, lambda conn: _insert(conn, dataset, record), write=True)
    return {"id": row_id, "dataset": dataset, **record}


def require_patches(manifest: pd.DataFrame, filenames, dataset: str = "the dataset") -> None:
    """Raise UserError naming every filename that is not a patch of the manifest."""
    known = set(manifest["filename"])
    unknown = [name for name in dict.fromkeys(filenames) if name not in known]
    if unknown:
        raise UserError([f"{name}: no patch with this filename in {dataset}" for name in unknown])


def current(root, dataset: str, as_of: str | None = None) -> pd.DataFrame:
    """One row per reviewed patch, its latest verdict, sorted by filename (columns: COLUMNS).

    as_of (ISO 8601): the verdicts as they stood then, so a run that recorded the time it read them
    trains on the same ones when it is resumed or rerun later.
    """
    moment = _utc_time(as_of)[0] if as_of else "9999"
    rows = _rows(root, "id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY filename "
                       "ORDER BY time DESC, id DESC) AS rank FROM verdicts WHERE dataset = ? AND time <= ?) "
                       "WHERE rank = 1) ORDER BY filename", (dataset, moment))
    return _frame(rows)


def history(root, dataset: str, filename: str | None = None) -> pd.DataFrame:
    """Every verdict of the dataset (or of one patch), oldest first (columns: COLUMNS)."""
    return _history(root, dataset, filename)


def _history(root, dataset: str, filename: str | None) -> pd.DataFrame:
    # export() has a parameter named history, hence this second name
    if filename is None:
        return _frame(_rows(root, "dataset = ? ORDER BY time, id", (dataset,)))
    return _frame(_rows(root, "dataset = ? AND filename = ? ORDER BY time, id", (dataset, filename)))


# ----------------------------------------------------------------------------
# Export and import
# ----------------------------------------------------------------------------

def _file_format(path: Path) -> str:
    kind = path.suffix.lower().lstrip(".")
    if kind not in ("csv", "parquet"):
        raise UserError(f"{path}: use a .csv or .parquet file name for verdicts")
    return kind


def export(root, dataset: str, manifest: pd.DataFrame, out_path, history: bool = False) -> Path:
    """Write the current verdicts (all of them with `history`) with the patch's split and label.

    Columns: EXPORT_COLUMNS; .csv or .parquet by the suffix; written atomically.
    A verdict on a patch no longer in the manifest is kept, with empty split and label.
    """
    out_path = Path(out_path)
    kind = _file_format(out_path)
    verdicts = _history(root, dataset, None) if history else current(root, dataset)
    patches = manifest[["filename", "split", "label"]]
    frame = verdicts.merge(patches, on="filename", how="left")[list(EXPORT_COLUMNS)]
    frame["label"] = frame["label"].astype("Int64")
    (workspace.write_csv if kind == "csv" else workspace.write_parquet)(out_path, frame)
    return out_path


def _csv_rows(path: Path) -> tuple[list[str], list[tuple[str, dict, list[str]]]]:
    """Header and (where, values, problems) per row; `where` is the line a person sees (header: line 1)."""
    rows = []
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise UserError(f"{path}: the file is empty")
        start = reader.line_num + 1
        for fields in reader:
            if fields:  # blank lines carry nothing
                shape = [] if len(fields) == len(header) else [
                    f"has {len(fields)} values, the header has {len(header)}"]
                rows.append((f"{path.name} line {start}", dict(zip(header, fields, strict=False)), shape))
            start = reader.line_num + 1
    return header, rows


def _parquet_rows(path: Path) -> tuple[list[str], list[tuple[str, dict, list[str]]]]:
    frame = pd.read_parquet(path)
    records = frame.to_dict("records")
    return list(frame.columns), [(f"{path.name} row {i + 1}", record, []) for i, record in enumerate(records)]


def _read(path: Path) -> list[tuple[str, dict, list[str]]]:
    """The rows of a verdicts file, refused as a whole when it cannot be read or lacks a column."""
    kind = _file_format(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        header, rows = (_csv_rows if kind == "csv" else _parquet_rows)(path)
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text: save the CSV as UTF-8") from None
    except (csv.Error, OSError, ValueError) as error:
        raise UserError(f"{path}: not a readable {kind} file ({str(error).splitlines()[0]})") from None
    missing = [column for column in COLUMNS if column not in header]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)} "
                        f"(expected {', '.join(EXPORT_COLUMNS)}; split and label are optional)")
    if not rows:
        raise UserError(f"{path}: no verdicts in the file, only a header")
    return rows


def import_file(root, dataset: str, manifest: pd.DataFrame, path) -> int:
    """Add the verdicts of a .csv or .parquet file (an export's columns); return how many were new.

    Every row is checked first: on any problem, UserError names each bad row
    (`verdicts.csv line 7: P_00012.png: unknown verdict ...`) and nothing is
    written. Otherwise all rows go in one transaction, skipping rows identical
    to one already stored, so importing the same export twice adds nothing.
    An empty time means now; split and label columns are informational.
    """
    path = Path(path)
    known = set(manifest["filename"])
    records, problems, bad = [], [], 0
    for where, values, reasons in _read(path):
        record, more = _clean(*(values.get(column) for column in COLUMNS))
        reasons += more
        if record["filename"].strip() and record["filename"] not in known:
            reasons.append(f"not a patch of dataset {dataset!r}")
        prefix = f"{where}: {record['filename']}" if record["filename"].strip() else where
        problems += [f"{prefix}: {reason}" for reason in reasons]
        bad += bool(reasons)
        records.append(record)
    if problems:
        raise UserError(problems + [f"{bad} bad row(s) in {path.name}: nothing was imported"])
    return _with_db(root, lambda conn: _insert_new(conn, dataset, records), write=True)


def _insert_new(conn: sqlite3.Connection, dataset: str, records: list[dict]) -> int:
    stored = {tuple(row) for row in conn.execute(f"{_SELECT} WHERE dataset = ?", (dataset,))}
    added = 0
    for record in records:
        key = tuple(record[column] for column in COLUMNS)
        if key not in stored:
            _insert(conn, dataset, record)
            stored.add(key)
            added += 1
    return added


# ----------------------------------------------------------------------------
# What verdicts change
# ----------------------------------------------------------------------------

def _lookup(filenames: pd.Series, current_verdicts: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Each patch's current verdict and new label (NaN where it has none), aligned with filenames."""
    by_patch = current_verdicts.set_index("filename")
    return filenames.map(by_patch["verdict"]), filenames.map(by_patch["new_label"])


def apply(manifest: pd.DataFrame, current_verdicts: pd.DataFrame,
          splits=("train",)) -> tuple[pd.DataFrame, dict]:
    """The training view of a dataset: in `splits`, relabeled patches take their new label and excluded
    patches are dropped; agree and unsure change nothing, and other splits are left as they are.

    Returns a copy (index kept, `label_original` added for every row) and
    {"relabeled": n, "excluded": n, "applied": n}.
    """
    rows = manifest.copy()
    rows["label_original"] = rows["label"]
    verdict, new_label = _lookup(rows["filename"], current_verdicts)
    in_splits = rows["split"].isin([splits] if isinstance(splits, str) else list(splits))
    relabel = in_splits & (verdict == "relabel")
    exclude = in_splits & (verdict == "exclude")
    rows.loc[relabel, "label"] = new_label[relabel].astype(rows["label"].dtype)
    summary = {"relabeled": int(relabel.sum()), "excluded": int(exclude.sum())}
    return rows[~exclude], summary | {"applied": summary["relabeled"] + summary["excluded"]}


def snapshot(current_verdicts: pd.DataFrame) -> dict:
    """{"count", "sha256"} of the verdicts that change training (relabel, exclude), for a run's config.

    The hash covers filename, verdict and new label, sorted by filename: notes,
    reviewers, times and agree/unsure verdicts do not change it.
    """
    changing = current_verdicts[current_verdicts["verdict"].isin(CHANGING)].sort_values("filename")
    columns = changing[["filename", "verdict", "new_label"]].itertuples(index=False)
    entries = [[filename, verdict, None if pd.isna(label) else int(label)] for filename, verdict, label in columns]
    digest = hashlib.sha256(json.dumps(entries, separators=(",", ":")).encode("utf-8")).hexdigest()
    return {"count": len(entries), "sha256": digest}


def reviewed_labels(frame: pd.DataFrame, current_verdicts: pd.DataFrame,
                    label_to_output: dict[int, int]) -> tuple[pd.DataFrame, dict]:
    """Predictions judged on the reviewed labels: relabeled patches take the task output of their new
    label (dropped when the task has no output for it), excluded patches are dropped.

    `frame` needs `filename` and `y_true` (task output index). Returns a copy
    with `y_true_original` added and {"relabeled": n, "excluded": n, "outside_task": n}.
    """
    rows = frame.copy()
    rows["y_true_original"] = rows["y_true"]
    verdict, new_label = _lookup(rows["filename"], current_verdicts)
    new_output = new_label.map(label_to_output)
    outside = (verdict == "relabel") & new_output.isna()
    relabel = (verdict == "relabel") & ~outside
    exclude = verdict == "exclude"
    rows.loc[relabel, "y_true"] = new_output[relabel].astype(rows["y_true"].dtype)
    summary = {"relabeled": int(relabel.sum()), "excluded": int(exclude.sum()), "outside_task": int(outside.sum())}
    return rows[~(exclude | outside)], summary
