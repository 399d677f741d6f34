"""Verdicts on patches: storage semantics, validation, concurrent writers, export/import, and their effect."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import time as clock
from contextlib import closing

import pandas as pd
import pytest

from ddsm_core import verdicts
from ddsm_core.errors import UserError
from ddsm_core.tasks import get_task
from support import snapshot as files_snapshot

DATASET = "synth"
T0 = "2024-05-01T10:00:00Z"


def when(minute: int) -> str:
    return f"2024-05-01T10:{minute:02d}:00Z"


def stored(minute: int) -> str:
    """The stored form of when(minute)."""
    return f"2024-05-01T10:{minute:02d}:00.000000+00:00"


@pytest.fixture
def manifest() -> pd.DataFrame:
    """Six patches as store.py writes them (the columns verdicts use, plus a few others)."""
    return pd.DataFrame({
        "path": [f"images/{name}" for name in ("a.png", "b.png", "c.png", "d.png", "e.png", "f.png")],
        "filename": ["a.png", "b.png", "c.png", "d.png", "e.png", "f.png"],
        "label": [0, 1, 2, 3, 4, 2],
        "split": ["train", "train", "train", "train", "test", "test"],
        "group": ["P_1", "P_1", "P_2", "P_3", "P_4", "P_5"],
        "width": 64, "height": 64, "channels": 1, "noisy": False,
    })


def table(rows: list[dict]) -> pd.DataFrame:
    """A current-verdicts frame built by hand."""
    frame = pd.DataFrame(rows, columns=list(verdicts.COLUMNS)).fillna({"note": "", "reviewer": "r", "time": T0})
    frame["new_label"] = frame["new_label"].astype("Int64")
    return frame


def db_state(root) -> tuple[int, list[tuple]]:
    with closing(sqlite3.connect(verdicts.database_path(root))) as conn:
        return conn.execute("PRAGMA user_version").fetchone()[0], conn.execute("SELECT * FROM verdicts").fetchall()


# ----------------------------------------------------------------------------
# add, current, history
# ----------------------------------------------------------------------------

def test_latest_verdict_is_current_and_history_is_kept(tmp_path):
    verdicts.add(tmp_path, DATASET, "a.png", "relabel", new_label=3, note="spiculated", reviewer="ann",
                 time=when(1))
    verdicts.add(tmp_path, DATASET, "a.png", "agree", reviewer="bob", time=when(3))
    verdicts.add(tmp_path, DATASET, "b.png", "exclude", reviewer="ann", time=when(2))
    verdicts.add(tmp_path, "other", "a.png", "unsure", reviewer="ann", time=when(4))

    now = verdicts.current(tmp_path, DATASET)
    assert list(now.columns) == list(verdicts.COLUMNS)
    assert now[["filename", "verdict", "reviewer", "time"]].values.tolist() == [
        ["a.png", "agree", "bob", stored(3)], ["b.png", "exclude", "ann", stored(2)]]
    assert now["new_label"].isna().all()

    past = verdicts.history(tmp_path, DATASET)
    assert past[["filename", "verdict", "time"]].values.tolist() == [
        ["a.png", "relabel", stored(1)], ["b.png", "exclude", stored(2)], ["a.png", "agree", stored(3)]]
    one = verdicts.history(tmp_path, DATASET, "a.png")
    assert one["verdict"].tolist() == ["relabel", "agree"]
    assert one["new_label"].tolist()[0] == 3 and one["note"].tolist()[0] == "spiculated"
    assert verdicts.current(tmp_path, "other")["verdict"].tolist() == ["unsure"]


def test_latest_is_by_time_then_by_write(tmp_path):
    # an imported older verdict does not override a newer one; same time: the later write wins
    verdicts.add(tmp_path, DATASET, "a.png", "exclude", reviewer="ann", time=when(5))
    verdicts.add(tmp_path, DATASET, "a.png", "agree", reviewer="ann", time=when(1))
    assert verdicts.current(tmp_path, DATASET)["verdict"].tolist() == ["exclude"]
    verdicts.add(tmp_path, DATASET, "a.png", "unsure", reviewer="bob", time=when(5))
    assert verdicts.current(tmp_path, DATASET)["verdict"].tolist() == ["unsure"]


def test_add_returns_the_stored_row_in_utc(tmp_path):
    row = verdicts.add(tmp_path, DATASET, "c.png", "Relabel", new_label="2", reviewer="  ann ",
                       time="2024-05-01T12:00:00+02:00")
    assert row == {"id": 1, "dataset": DATASET, "filename": "c.png", "verdict": "relabel", "new_label": 2,
                   "note": "", "reviewer": "ann", "time": stored(0)}
    before = pd.Timestamp.now(tz="UTC")
    default = verdicts.add(tmp_path, DATASET, "c.png", "agree", reviewer="ann")
    assert 0 <= (pd.Timestamp(default["time"]) - before).total_seconds() < 5


def test_nothing_stored_reads_empty_without_creating_a_database(tmp_path):
    assert verdicts.current(tmp_path, DATASET).empty
    assert list(verdicts.history(tmp_path, DATASET).columns) == list(verdicts.COLUMNS)
    assert not verdicts.database_path(tmp_path).exists()


def test_database_is_wal_with_a_schema_version(tmp_path):
    verdicts.add(tmp_path, DATASET, "a.png", "agree", reviewer="ann")
    assert verdicts.database_path(tmp_path) == tmp_path / "review.sqlite"
    with closing(sqlite3.connect(verdicts.database_path(tmp_path))) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == verdicts.SCHEMA_VERSION


def test_newer_schema_refused(tmp_path):
    verdicts.add(tmp_path, DATASET, "a.png", "agree", reviewer="ann")
    with closing(sqlite3.connect(verdicts.database_path(tmp_path))) as conn:
        conn.execute(f"PRAGMA user_version = {verdicts.SCHEMA_VERSION + 1}")
    with pytest.raises(UserError, match="newer than this ddsm_core reads"):
        verdicts.current(tmp_path, DATASET)


@pytest.mark.parametrize("kwargs, message", [
    ({"verdict": "maybe"}, "unknown verdict 'maybe' (use agree, relabel, exclude or unsure)"),
    ({"verdict": "relabel"}, "relabel needs new_label, the correct source label 0-4"),
    ({"verdict": "relabel", "new_label": 5}, "new_label '5' is not a source label 0-4"),
    ({"verdict": "relabel", "new_label": -1}, "new_label '-1' is not a source label 0-4"),
    ({"verdict": "relabel", "new_label": 2.5}, "new_label '2.5' is not a source label 0-4"),
    ({"verdict": "relabel", "new_label": "two"}, "new_label 'two' is not a source label 0-4"),
    ({"verdict": "agree", "new_label": 2}, "new_label '2' given with verdict 'agree': only relabel takes a label"),
    ({"verdict": "exclude", "new_label": 0}, "new_label '0' given with verdict 'exclude': only relabel takes a label"),
    ({"verdict": "agree", "reviewer": " "}, "reviewer is empty: name who gave the verdict"),
    ({"verdict": "agree", "time": "yesterday"},
     "time 'yesterday' is not an ISO 8601 date and time (e.g. 2024-05-01T14:30:00Z)"),
    ({"verdict": "agree", "filename": ""}, "empty filename"),
])
def test_add_refuses_bad_verdicts(tmp_path, kwargs, message):
    arguments = {"filename": "a.png", "reviewer": "ann"} | kwargs
    with pytest.raises(UserError) as refused:
        verdicts.add(tmp_path, DATASET, **arguments)
    assert refused.value.problems == [message]
    assert not verdicts.database_path(tmp_path).exists()


def test_add_names_every_problem_and_checks_the_dataset_name(tmp_path):
    with pytest.raises(UserError) as refused:
        verdicts.add(tmp_path, DATASET, "a.png", "relabel", reviewer="", time="soon")
    assert len(refused.value.problems) == 3
    with pytest.raises(UserError, match="dataset name '../x' is not valid"):
        verdicts.add(tmp_path, "../x", "a.png", "agree", reviewer="ann")


def test_require_patches_names_unknown_filenames(manifest):
    verdicts.require_patches(manifest, ["a.png", "f.png"])
    with pytest.raises(UserError) as refused:
        verdicts.require_patches(manifest, ["a.png", "zz.png", "P_9.png", "zz.png"], dataset="dataset 'synth'")
    assert refused.value.problems == ["zz.png: no patch with this filename in dataset 'synth'",
                                      "P_9.png: no patch with this filename in dataset 'synth'"]


# ----------------------------------------------------------------------------
# Many writers at once
# ----------------------------------------------------------------------------

WRITERS, EACH = 8, 50


# one writer process: waits for the start signal (a file), so all writes really overlap, then adds EACH verdicts
WRITER = """
import os, sys, time
from ddsm_core import verdicts
root, dataset, writer, each, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
open(f"{go}.ready{writer}", "w").close()
while not os.path.exists(go):
    time.sleep(0.005)
for index in range(each):
    verdicts.add(root, dataset, f"w{writer}_{index:02d}.png", "relabel" if index % 2 else "agree",
                 new_label=index % 5 if index % 2 else None, reviewer=f"writer{writer}")
"""


@pytest.mark.slow
def test_many_processes_writing_at_once_lose_nothing(tmp_path, measurement):
    # fresh interpreters (not forks of this one), each with its own connections; plain subprocesses, because
    # multiprocessing's spawn re-runs the parent's __main__, which AppTest tests leave pointing at a page
    go = tmp_path / "go"
    processes = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), DATASET, str(writer), str(EACH),
                                   str(go)], stderr=subprocess.PIPE, text=True) for writer in range(WRITERS)]
    deadline = clock.monotonic() + 120
    while len(list(tmp_path.glob("go.ready*"))) < WRITERS and clock.monotonic() < deadline:
        clock.sleep(0.01)  # every writer imported and waiting
    started = clock.perf_counter()
    go.touch()
    outcomes = [(process.wait(timeout=180), process.stderr.read()) for process in processes]
    elapsed = clock.perf_counter() - started
    assert [code for code, _ in outcomes] == [0] * WRITERS, [error for _, error in outcomes]

    rows = verdicts.history(tmp_path, DATASET)
    expected = {f"w{writer}_{index:02d}.png" for writer in range(WRITERS) for index in range(EACH)}
    assert len(rows) == WRITERS * EACH
    assert set(rows["filename"]) == expected
    assert rows["reviewer"].value_counts().to_dict() == {f"writer{writer}": EACH for writer in range(WRITERS)}
    relabels = rows[rows["verdict"] == "relabel"]
    assert len(relabels) == WRITERS * EACH // 2
    assert (relabels["new_label"] == relabels["filename"].str[-6:-4].astype(int) % 5).all()
    measurement(f"verdicts: {WRITERS} processes x {EACH} adds at once: {elapsed:.1f} s, none lost")


def test_a_lock_held_too_long_is_a_user_error(tmp_path, monkeypatch):
    verdicts.add(tmp_path, DATASET, "a.png", "agree", reviewer="ann")
    monkeypatch.setattr(verdicts, "BUSY_SECONDS", 0.05)
    monkeypatch.setattr(verdicts, "LOCK_RETRIES", 1)
    with closing(sqlite3.connect(verdicts.database_path(tmp_path), isolation_level=None)) as holder:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(UserError, match="stayed locked by another process: try again"):
            verdicts.add(tmp_path, DATASET, "b.png", "agree", reviewer="ann")
        assert verdicts.current(tmp_path, DATASET)["filename"].tolist() == ["a.png"], "readers are not blocked"
        holder.execute("ROLLBACK")
    verdicts.add(tmp_path, DATASET, "b.png", "agree", reviewer="ann")
    assert verdicts.current(tmp_path, DATASET)["filename"].tolist() == ["a.png", "b.png"]


# ----------------------------------------------------------------------------
# Export and import
# ----------------------------------------------------------------------------

def _review(root) -> None:
    verdicts.add(root, DATASET, "a.png", "relabel", new_label=1, note='says "benign", see prior', reviewer="ann",
                 time=when(1))
    verdicts.add(root, DATASET, "a.png", "relabel", new_label=3, note="second look,\ncalcs", reviewer="bob",
                 time=when(2))
    verdicts.add(root, DATASET, "b.png", "exclude", note="burned-in label", reviewer="ann", time=when(3))
    verdicts.add(root, DATASET, "e.png", "agree", reviewer="ann", time=when(4))
    verdicts.add(root, DATASET, "c.png", "unsure", note="12", reviewer="ann", time=when(5))


def test_export_columns_and_values(tmp_path, manifest):
    _review(tmp_path)
    out = verdicts.export(tmp_path, DATASET, manifest, tmp_path / "out" / "verdicts.parquet")
    frame = pd.read_parquet(out)
    assert list(frame.columns) == list(verdicts.EXPORT_COLUMNS)
    assert frame[["filename", "split", "label", "verdict"]].values.tolist() == [
        ["a.png", "train", 0, "relabel"], ["b.png", "train", 1, "exclude"],
        ["c.png", "train", 2, "unsure"], ["e.png", "test", 4, "agree"]]
    assert frame["new_label"].tolist()[0] == 3
    everything = pd.read_csv(verdicts.export(tmp_path, DATASET, manifest, tmp_path / "all.csv", history=True))
    assert everything["new_label"].tolist()[:2] == [1, 3] and len(everything) == 5
    with pytest.raises(UserError, match=r"use a \.csv or \.parquet file name"):
        verdicts.export(tmp_path, DATASET, manifest, tmp_path / "verdicts.xlsx")
    assert not (tmp_path / "verdicts.xlsx").exists()


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_export_import_round_trip(tmp_path, manifest, suffix):
    source, target = tmp_path / "source", tmp_path / "target"
    _review(source)
    current_file = verdicts.export(source, DATASET, manifest, tmp_path / f"current.{suffix}")
    history_file = verdicts.export(source, DATASET, manifest, tmp_path / f"history.{suffix}", history=True)

    assert verdicts.import_file(target, DATASET, manifest, history_file) == 5
    pd.testing.assert_frame_equal(verdicts.current(target, DATASET), verdicts.current(source, DATASET))
    pd.testing.assert_frame_equal(verdicts.history(target, DATASET), verdicts.history(source, DATASET))

    # the same file again, or the current export (a subset of the history), adds nothing
    assert verdicts.import_file(target, DATASET, manifest, history_file) == 0
    assert verdicts.import_file(target, DATASET, manifest, current_file) == 0
    assert len(verdicts.history(target, DATASET)) == 5


def test_import_hand_written_csv(tmp_path, manifest):
    # no split/label columns, a blank line, an empty time (now) and an empty label where none is needed
    path = tmp_path / "mine.csv"
    path.write_text("filename,verdict,new_label,note,reviewer,time\n"
                    "d.png,relabel,4.0,,carol,2024-05-01 10:07\n\n"
                    "f.png,exclude,,,carol,\n", encoding="utf-8")
    assert verdicts.import_file(tmp_path, DATASET, manifest, path) == 2
    now = verdicts.current(tmp_path, DATASET)
    assert now[["filename", "verdict"]].values.tolist() == [["d.png", "relabel"], ["f.png", "exclude"]]
    assert now["new_label"].tolist()[0] == 4 and now["time"].tolist()[0] == stored(7)
    # a second import of a file with an empty time is new again (its time is a new "now")
    assert verdicts.import_file(tmp_path, DATASET, manifest, path) == 1


HEADER = "filename,split,label,verdict,new_label,note,reviewer,time\n"
GOOD = f"a.png,train,0,agree,,,ann,{T0}\n"
BAD_ROWS = {
    "unknown verdict": (f"b.png,train,1,maybe,,,ann,{T0}\n",
                        "b.png: unknown verdict 'maybe' (use agree, relabel, exclude or unsure)"),
    "unknown filename": (f"P_00012.png,train,1,agree,,,ann,{T0}\n", "P_00012.png: not a patch of dataset 'synth'"),
    "relabel without label": (f"b.png,train,1,relabel,,,ann,{T0}\n",
                              "b.png: relabel needs new_label, the correct source label 0-4"),
    "label out of range": (f"b.png,train,1,relabel,7,,ann,{T0}\n", "b.png: new_label '7' is not a source label 0-4"),
    "fractional label": (f"b.png,train,1,relabel,2.5,,ann,{T0}\n",
                         "b.png: new_label '2.5' is not a source label 0-4"),
    "label on agree": (f"b.png,train,1,agree,2,,ann,{T0}\n",
                       "b.png: new_label '2' given with verdict 'agree': only relabel takes a label"),
    "empty reviewer": (f"b.png,train,1,agree,,, ,{T0}\n", "b.png: reviewer is empty: name who gave the verdict"),
    "bad time": ("b.png,train,1,agree,,,ann,01/05/2024\n",
                 "b.png: time '01/05/2024' is not an ISO 8601 date and time (e.g. 2024-05-01T14:30:00Z)"),
    "too many values": (f"b.png,train,1,agree,,,ann,{T0},extra\n", "b.png: has 9 values, the header has 8"),
}


@pytest.fixture
def reviewed(tmp_path):
    """A workspace with verdicts stored, and a way to tell that nothing about it changed."""
    root = tmp_path / "workspace"
    _review(root)
    return root, files_snapshot(root), db_state(root)


@pytest.mark.parametrize("kind", list(BAD_ROWS))
def test_bad_import_row_named_and_nothing_written(tmp_path, manifest, reviewed, kind):
    root, files_before, db_before = reviewed
    row, reason = BAD_ROWS[kind]
    # a multi-line note before the bad row: line numbers are those a person sees in the file
    path = tmp_path / "verdicts.csv"
    path.write_text(HEADER + GOOD + 'c.png,train,2,unsure,,"two\nlines",ann,\n' + GOOD + row, encoding="utf-8")
    with pytest.raises(UserError) as refused:
        verdicts.import_file(root, DATASET, manifest, path)
    assert refused.value.problems == [f"verdicts.csv line 6: {reason}",
                                      "1 bad row(s) in verdicts.csv: nothing was imported"]
    assert files_snapshot(root) == files_before
    assert db_state(root) == db_before


def test_every_bad_row_named_at_once(tmp_path, manifest, reviewed):
    root, files_before, _ = reviewed
    path = tmp_path / "verdicts.csv"
    path.write_text(HEADER + "".join(row for row, _ in BAD_ROWS.values()) + GOOD, encoding="utf-8")
    with pytest.raises(UserError) as refused:
        verdicts.import_file(root, DATASET, manifest, path)
    problems = refused.value.problems
    assert problems[:-1] == [f"verdicts.csv line {line}: {reason}"
                             for line, (_, reason) in enumerate(BAD_ROWS.values(), start=2)]
    assert problems[-1] == f"{len(BAD_ROWS)} bad row(s) in verdicts.csv: nothing was imported"
    assert files_snapshot(root) == files_before


def test_bad_parquet_rows_named_by_row(tmp_path, manifest, reviewed):
    root, files_before, _ = reviewed
    path = tmp_path / "verdicts.parquet"
    pd.DataFrame({"filename": ["a.png", "b.png", "x.png"], "verdict": ["agree", "relabel", "agree"],
                  "new_label": [None, 3.5, None], "note": [None, "", ""], "reviewer": ["ann", "ann", None],
                  "time": [T0, T0, T0]}).to_parquet(path)
    with pytest.raises(UserError) as refused:
        verdicts.import_file(root, DATASET, manifest, path)
    assert refused.value.problems == [
        "verdicts.parquet row 2: b.png: new_label '3.5' is not a source label 0-4",
        "verdicts.parquet row 3: x.png: reviewer is empty: name who gave the verdict",
        "verdicts.parquet row 3: x.png: not a patch of dataset 'synth'",
        "2 bad row(s) in verdicts.parquet: nothing was imported"]
    assert files_snapshot(root) == files_before


@pytest.mark.parametrize("name, content, message", [
    ("verdicts.csv", b"", "the file is empty"),
    ("verdicts.csv", HEADER.encode(), "no verdicts in the file, only a header"),
    ("verdicts.csv", (HEADER + "caf\xe9.png,train,0,agree,,,ann,\n").encode("latin-1"),
     "not UTF-8 text: save the CSV as UTF-8"),
    ("verdicts.csv", b"filename,verdict,reviewer\na.png,agree,ann\n",
     "missing column(s) new_label, note, time (expected filename, split, label, verdict, new_label, note, "
     "reviewer, time; split and label are optional)"),
    ("verdicts.parquet", b"not parquet at all", "not a readable parquet file"),
    ("verdicts.json", b"[]", "use a .csv or .parquet file name"),
])
def test_unreadable_import_files_refused(tmp_path, manifest, reviewed, name, content, message):
    root, files_before, _ = reviewed
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError) as refused:
        verdicts.import_file(root, DATASET, manifest, path)
    [problem] = refused.value.problems
    assert problem.startswith(f"{path}: {message}")
    assert files_snapshot(root) == files_before


def test_missing_import_file_refused(tmp_path, manifest):
    with pytest.raises(UserError, match="file not found"):
        verdicts.import_file(tmp_path, DATASET, manifest, tmp_path / "absent.csv")


# ----------------------------------------------------------------------------
# apply, snapshot, reviewed_labels
# ----------------------------------------------------------------------------

def test_apply_changes_only_the_training_split(manifest):
    current = table([
        {"filename": "a.png", "verdict": "relabel", "new_label": 3},
        {"filename": "b.png", "verdict": "exclude"},
        {"filename": "c.png", "verdict": "agree"},
        {"filename": "d.png", "verdict": "unsure"},
        {"filename": "e.png", "verdict": "relabel", "new_label": 0},  # test split
        {"filename": "f.png", "verdict": "exclude"},  # test split
        {"filename": "gone.png", "verdict": "exclude"},  # not in the manifest
    ])
    rows, summary = verdicts.apply(manifest, current)
    assert summary == {"relabeled": 1, "excluded": 1, "applied": 2}
    assert rows["filename"].tolist() == ["a.png", "c.png", "d.png", "e.png", "f.png"]
    assert rows["label"].tolist() == [3, 2, 3, 4, 2]
    assert rows["label_original"].tolist() == [0, 2, 3, 4, 2]
    assert rows["label"].dtype == manifest["label"].dtype
    assert manifest["label"].tolist() == [0, 1, 2, 3, 4, 2], "the manifest itself is untouched"

    everywhere, summary = verdicts.apply(manifest, current, splits=("train", "test"))
    assert summary == {"relabeled": 2, "excluded": 2, "applied": 4}
    assert everywhere[["filename", "label"]].values.tolist() == [["a.png", 3], ["c.png", 2], ["d.png", 3],
                                                                 ["e.png", 0]]


def test_apply_without_verdicts_is_the_manifest(manifest):
    rows, summary = verdicts.apply(manifest, table([]))
    assert summary == {"relabeled": 0, "excluded": 0, "applied": 0}
    pd.testing.assert_frame_equal(rows.drop(columns="label_original"), manifest)


def test_snapshot_follows_only_what_changes_training():
    base = table([{"filename": "b.png", "verdict": "exclude"},
                  {"filename": "a.png", "verdict": "relabel", "new_label": 3}])
    first = verdicts.snapshot(base)
    assert first["count"] == 2 and len(first["sha256"]) == 64

    with_agree = table([*base.to_dict("records"), {"filename": "c.png", "verdict": "agree"},
                        {"filename": "d.png", "verdict": "unsure"}])
    assert verdicts.snapshot(with_agree) == first
    reordered = base.iloc[::-1].assign(note="new note", reviewer="bob", time=when(9))
    assert verdicts.snapshot(reordered) == first

    relabeled = base.copy()
    relabeled.loc[relabeled["filename"] == "a.png", "new_label"] = 4
    assert verdicts.snapshot(relabeled)["count"] == 2
    assert verdicts.snapshot(relabeled)["sha256"] != first["sha256"]
    assert verdicts.snapshot(table([]))["count"] == 0


def test_snapshot_of_stored_verdicts(tmp_path):
    verdicts.add(tmp_path, DATASET, "a.png", "relabel", new_label=3, reviewer="ann")
    before = verdicts.snapshot(verdicts.current(tmp_path, DATASET))
    verdicts.add(tmp_path, DATASET, "b.png", "agree", reviewer="ann")
    assert verdicts.snapshot(verdicts.current(tmp_path, DATASET)) == before
    verdicts.add(tmp_path, DATASET, "a.png", "relabel", new_label=1, reviewer="bob")
    assert verdicts.snapshot(verdicts.current(tmp_path, DATASET)) != before


def test_reviewed_labels_for_a_task():
    # task 5: benign mass (2) -> output 0, malignant mass (4) -> output 1
    predictions = pd.DataFrame({"filename": ["p1", "p2", "p3", "p4", "p5", "p6"],
                                "y_true": [0, 1, 0, 1, 0, 1], "y_pred": [0, 0, 1, 1, 0, 1]})
    current = table([
        {"filename": "p1", "verdict": "relabel", "new_label": 4},  # benign -> malignant: y_true 1
        {"filename": "p2", "verdict": "relabel", "new_label": 1},  # calcification: outside task 5, dropped
        {"filename": "p3", "verdict": "exclude"},                  # dropped
        {"filename": "p4", "verdict": "agree"},
        {"filename": "p5", "verdict": "relabel", "new_label": 2},  # same class again: y_true stays 0
    ])
    rows, summary = verdicts.reviewed_labels(predictions, current, get_task(5).label_to_output())
    assert summary == {"relabeled": 2, "excluded": 1, "outside_task": 1}
    assert rows[["filename", "y_true", "y_true_original", "y_pred"]].values.tolist() == [
        ["p1", 1, 0, 0], ["p4", 1, 1, 1], ["p5", 0, 0, 0], ["p6", 1, 1, 1]]
    assert rows["y_true"].dtype == predictions["y_true"].dtype
    assert predictions["y_true"].tolist() == [0, 1, 0, 1, 0, 1], "the predictions themselves are untouched"
