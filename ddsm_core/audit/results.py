"""The audit of one dataset (and optionally one run on it): computed once, stored with the dataset, reused
until its inputs change; and the background job the dashboard starts.

The audit folder, a contract other tools rely on (these functions are the only place its names are spelled):

    datasets/<name>/audit/
        status.json             the audit job: state, stage, fraction, message, pid, error (job_state)
        audit.log               the job's output
        .lock                   held by the process auditing the dataset
        patches.npz             per patch (manifest order): hashes, descriptors, features (audit.patches),
                                with the manifest's sha256
        dataset.json            the dataset's findings: near-duplicate pairs and clusters, label issues of the
                                training patches, the shortcut probe; with their fingerprint
        label_quality.parquet   every training patch's label quality, most likely wrong first
        run-<run_id>.json       a run's findings: label issues of its test patches, its AUC beside the probe,
                                property-probability correlations, metrics per slice; with their fingerprint

A fingerprint holds the manifest's sha256 and the audit's settings (and, for a run, its checkpoint's and
predictions' sha256): a stored part is reused while it matches and recomputed when it does not.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from .. import jobs, processes, runs, slices, workspace
from ..data import store
from ..errors import UserError
from ..review import log_tail
from ..tasks import SOURCE_LABELS, TASKS, get_task
from . import duplicates, labels, patches, shortcut

VERSION = 1  # bump when a change of the computation makes stored results wrong
SETTINGS = {"hash": f"phash-{patches.HASH_BITS}-dihedral", "search_radius": duplicates.SEARCH_RADIUS,
            "max_per_patch": duplicates.MAX_PER_PATCH, "max_distance": duplicates.MAX_DISTANCE,
            "film_limit": f"max_distance x max({duplicates.FILM_FLOOR}, tissue share)", "label_folds": labels.FOLDS,
            "label_model": "standardised logistic regression on image features",
            "probe_folds": shortcut.FOLDS, "probe_boot": shortcut.N_BOOT}
STAGES = (("patches", 0.75), ("duplicates", 0.05), ("label issues", 0.12), ("shortcut", 0.05), ("run", 0.03))


# ---------------------------------------------------------------- the audit folder's layout

def audit_dir(root: Path, name: str) -> Path:
    return workspace.dataset_dir(root, name) / "audit"


def status_file(root: Path, name: str) -> Path:
    return audit_dir(root, name) / "status.json"


def log_file(root: Path, name: str) -> Path:
    return audit_dir(root, name) / "audit.log"


def lock_file(root: Path, name: str) -> Path:
    return audit_dir(root, name) / ".lock"


def patches_file(root: Path, name: str) -> Path:
    return audit_dir(root, name) / "patches.npz"


def dataset_file(root: Path, name: str) -> Path:
    return audit_dir(root, name) / "dataset.json"


def label_quality_file(root: Path, name: str) -> Path:
    return audit_dir(root, name) / "label_quality.parquet"


def run_file(root: Path, name: str, run_id: str) -> Path:
    return audit_dir(root, name) / f"run-{run_id}.json"


# ---------------------------------------------------------------- fingerprints

def dataset_fingerprint(root: Path, name: str) -> dict:
    return {"version": VERSION, "manifest_sha256": workspace.file_sha256(store.manifest_file(root, name)), "settings": SETTINGS}


def run_fingerprint(root: Path, name: str, run_id: str) -> dict:
    """The inputs of a run's findings; refused when the run is not on this dataset or has no test predictions."""
    config = runs.read_config(root, run_id)
    if config.get("dataset") != name:
        raise UserError(f"run {run_id} was trained on dataset {config.get('dataset')!r}, not {name!r}")
    predictions = runs.predictions_file(root, run_id, "test")
    if not predictions.exists():
        raise UserError(f"run {run_id} has no test predictions yet: evaluate it first "
                        f"(python -m ddsm_core evaluate --run {run_id})")
    metrics = workspace.read_json(runs.metrics_file(root, run_id, "test"), default={}) or {}
    return {"version": VERSION, "manifest_sha256": workspace.file_sha256(store.manifest_file(root, name)), "run_id": run_id,
            "checkpoint_sha256": metrics.get("checkpoint_sha256"), "predictions_sha256": workspace.file_sha256(predictions)}


# ---------------------------------------------------------------- progress and the job

class Progress:
    """Writes status.json as the audit goes: stage, overall fraction (STAGES weights), a message."""

    def __init__(self, root: Path, name: str, log=print):
        self.path, self.log, self.last = status_file(root, name), log, 0.0
        self.weights = dict(STAGES)
        self.before = {stage: sum(w for s, w in STAGES[:i]) for i, (stage, _) in enumerate(STAGES)}

    def write(self, **fields) -> None:
        status = workspace.read_json(self.path, default={}) or {}
        workspace.write_json(self.path, status | fields | {"updated": runs.now()})

    def stage(self, stage: str, done: float = 0.0, total: float = 1.0, message: str = "", force: bool = True) -> None:
        now = time.monotonic()
        if not force and now - self.last < 0.5:
            return
        self.last = now
        fraction = self.before[stage] + self.weights[stage] * (done / total if total else 1.0)
        self.write(state="running", stage=stage, fraction=round(min(fraction, 1.0), 4),
                   message=message or f"{stage}: {int(done)}/{int(total)}")


def start(root: Path, name: str, run_id: str | None = None, force: bool = False) -> int:
    """Run `python -m ddsm_core audit` for the dataset as a detached process; returns its pid."""
    store.load(root, name)
    if run_id:
        run_fingerprint(root, name, run_id)
    if job_state(root, name)["state"] == "running":
        raise UserError(f"dataset {name} is already being audited")
    audit_dir(root, name).mkdir(parents=True, exist_ok=True)
    args = ["audit", "--dataset", name, "--workspace", root] + (["--run", run_id] if run_id else [])
    process = jobs.spawn(args + (["--force"] if force else []), log_file(root, name))
    workspace.write_json(status_file(root, name), {"state": "running", "stage": "starting", "fraction": 0.0,
                                                   "message": "starting", "pid": process.pid, "run": run_id,
                                                   "started": runs.now(), "updated": runs.now()})
    return process.pid


def job_state(root: Path, name: str) -> dict:
    """{'state': none|running|completed|failed, 'fraction', 'message', 'run'} of the latest audit job."""
    status = workspace.read_json(status_file(root, name))
    if not status:
        return {"state": "none", "fraction": 0.0, "message": "", "run": None}
    state = status.get("state", "none")
    if state == "running" and not processes.pid_alive(status.get("pid")) and not _locked(root, name):
        state, status = "failed", status | {"message": status.get("error") or log_tail(log_file(root, name))
                                            or "the audit process stopped"}
    return {"state": state, "fraction": float(status.get("fraction") or 0.0),
            "message": status.get("error") or status.get("message") or "", "run": status.get("run")}


@contextmanager
def _lock(root: Path, name: str):
    path = lock_file(root, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"dataset {name} is already being audited by another process") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _locked(root: Path, name: str) -> bool:
    path = lock_file(root, name)
    if not path.exists():
        return False
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


# ---------------------------------------------------------------- the audit

def run_audit(root: Path, name: str, run_id: str | None = None, force: bool = False, workers: int | None = None,
              log=print) -> dict:
    """Audit a dataset (and a run on it), reusing every stored part whose fingerprint still matches.

    Returns the combined findings (see `combine`). Writes status.json as it goes; a failure is recorded
    there with its reason and raised.
    """
    root = Path(root)
    dataset = store.load(root, name)
    progress = Progress(root, name, log)
    with _lock(root, name):
        progress.write(state="running", stage="starting", fraction=0.0, message="starting", pid=os.getpid(),
                       run=run_id, error=None, started=runs.now())
        try:
            fingerprint = dataset_fingerprint(root, name)
            found = None if force else _stored(dataset_file(root, name), fingerprint)
            if found is None:
                measured = _measured(root, dataset, fingerprint["manifest_sha256"], force, workers, progress, log)
                found = dataset_findings(dataset, measured, progress, log)
                found["fingerprint"] = fingerprint
                _write_dataset_findings(root, name, found)
                found = workspace.read_json(dataset_file(root, name))  # plain JSON types, as when reused
            else:
                log(f"audit of {name}: dataset findings reused (manifest unchanged)")
            run_found = None
            if run_id:
                run_print = run_fingerprint(root, name, run_id)
                run_found = None if force else _stored(run_file(root, name, run_id), run_print)
                if run_found is None:
                    progress.stage("run", 0, 1, f"findings of run {run_id}")
                    measured = _measured(root, dataset, fingerprint["manifest_sha256"], False, workers, progress, log)
                    run_found = run_findings(root, dataset, run_id, measured) | {"fingerprint": run_print}
                    workspace.write_json(run_file(root, name, run_id), run_found)
                    run_found = workspace.read_json(run_file(root, name, run_id))
                else:
                    log(f"audit of {name}: findings of run {run_id} reused (run unchanged)")
        except BaseException as error:
            progress.write(state="failed", error=_reason(error), finished=runs.now())
            raise
        result = combine(name, found, run_found)
        progress.write(state="completed", stage="done", fraction=1.0, finished=runs.now(),
                       message=summary_line(result))
    return result


def _reason(error: BaseException) -> str:
    if isinstance(error, UserError):
        return "; ".join(error.problems)
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _stored(path: Path, fingerprint: dict) -> dict | None:
    stored = workspace.read_json(path)
    return stored if stored and stored.get("fingerprint") == json.loads(json.dumps(fingerprint)) else None


def _measured(root, dataset, manifest_sha, force, workers, progress, log) -> patches.Measured:
    """The per-patch pass, from patches.npz when it belongs to this manifest."""
    path = patches_file(root, dataset.name)
    filenames = np.asarray(dataset.manifest["filename"].astype(str).tolist(), dtype=str)  # not object: no pickle
    if path.exists() and not force:
        with np.load(path, allow_pickle=False) as stored:
            if str(stored["manifest_sha256"]) == manifest_sha and int(stored["version"]) == VERSION \
                    and np.array_equal(stored["filenames"], filenames):
                problems = list(zip(stored["problem_rows"].tolist(), stored["problem_reasons"].tolist()))
                return patches.Measured(stored["hashes"], stored["descriptors"], stored["features"], problems)
    paths = dataset.absolute_paths()
    log(f"audit of {dataset.name}: measuring {len(paths)} patches")
    started = time.perf_counter()
    measured = patches.measure_files(paths, workers, lambda done, total: progress.stage(
        "patches", done, total, f"hashing patches: {done}/{total}", force=done == total))
    seconds = time.perf_counter() - started
    log(f"audit of {dataset.name}: {len(paths)} patches measured in {seconds:.1f} s "
        f"({len(paths) / max(seconds, 1e-9):.0f} patches/s)")
    rows, reasons = zip(*measured.problems) if measured.problems else ((), ())
    arrays = {"hashes": measured.hashes, "descriptors": measured.descriptors, "features": measured.features,
              "filenames": filenames, "manifest_sha256": np.array(manifest_sha), "version": np.array(VERSION),
              "problem_rows": np.array(rows, dtype=np.int64), "problem_reasons": np.array(reasons, dtype=str)}
    workspace.atomic_write(path, lambda tmp: _save_npz(tmp, arrays))
    return measured


def _save_npz(path, arrays: dict) -> None:
    with open(path, "wb") as handle:  # a handle, so numpy does not append .npz to the temp name
        np.savez(handle, **arrays)


def _usable(n: int, measured: patches.Measured) -> np.ndarray:
    usable = np.ones(n, dtype=bool)
    usable[[row for row, _ in measured.problems]] = False
    return usable


def properties_frame(manifest: pd.DataFrame, measured: patches.Measured) -> pd.DataFrame:
    """The shortcut probe's properties per manifest row (shortcut.PROPERTIES)."""
    frame = pd.DataFrame({name: measured.features[:, patches.FEATURE_NAMES.index(name)]
                          for name in patches.PROPERTIES}, index=manifest.index)
    frame.insert(0, "saturated_block", manifest["saturated_block"].astype(float))
    frame.insert(0, "dark_fraction", manifest["dark_fraction"].astype(float))
    return frame[list(shortcut.PROPERTIES)]


def dataset_findings(dataset: store.Dataset, measured: patches.Measured, progress: Progress, log=print) -> dict:
    """Near-duplicates, label issues of the training patches and the shortcut probe (JSON-ready)."""
    manifest = dataset.manifest.reset_index(drop=True)
    usable = _usable(len(manifest), measured)
    timings = {}

    progress.stage("duplicates", 0, 1, "searching near-duplicates")
    started = time.perf_counter()
    pairs = duplicates.find_pairs(measured.hashes, measured.descriptors, usable=usable,
                                  dark_fraction=manifest["dark_fraction"].to_numpy(dtype=np.float64))
    cluster = duplicates.clusters(len(manifest), pairs["i"].to_numpy(), pairs["j"].to_numpy())
    table = duplicates.pair_table(pairs, manifest, cluster)
    timings["duplicates_seconds"] = round(time.perf_counter() - started, 2)
    log(f"audit of {dataset.name}: {len(table)} near-duplicate pair(s), {int(table['cross_split'].sum())} across "
        f"splits, in {timings['duplicates_seconds']} s")

    progress.stage("label issues", 0, 1, "cross-validating the label-error model")
    started = time.perf_counter()
    ranking = train_label_ranking(manifest, measured, usable)
    timings["label_issues_seconds"] = round(time.perf_counter() - started, 2)

    progress.stage("shortcut", 0, 1, "probing image properties")
    started = time.perf_counter()
    props = properties_frame(manifest, measured)
    probe = {}
    for task in TASKS.values():
        rows = task.select(manifest)
        rows = rows[usable[rows.index]]
        probe[str(task.id)] = shortcut.probe(props.loc[rows.index].to_numpy(), rows["target"].to_numpy(),
                                             task.class_names)
    timings["shortcut_seconds"] = round(time.perf_counter() - started, 2)

    clusters_table = duplicates.cluster_table(manifest, cluster)
    return {
        "dataset": dataset.name,
        "n_patches": int(len(manifest)),
        "unreadable": [{"filename": manifest["filename"].iloc[row], "reason": reason} for row, reason in measured.problems],
        "duplicates": table.drop(columns=["row_a", "row_b", "cross_split"]).to_dict("records"),
        "clusters": clusters_table.to_dict("records"),
        "label_issues": _issue_records(ranking[ranking["issue"]], "cross-validation"),
        "label_ranking": ranking,  # written to label_quality.parquet, not to the JSON
        "shortcut": probe,
        "timings": timings,
    }


def train_label_ranking(manifest: pd.DataFrame, measured: patches.Measured, usable: np.ndarray) -> pd.DataFrame:
    """Every usable training patch ranked by label quality (labels.rank), most likely wrong first, with filename,
    split, label, suggested_label and class names."""
    train = np.flatnonzero((manifest["split"] == "train").to_numpy() & usable)
    features = np.column_stack([measured.features[train], manifest[["dark_fraction", "saturated_block"]]
                                .to_numpy(dtype=np.float32)[train]])
    probs, classes = labels.out_of_fold_probabilities(features, manifest["label"].to_numpy()[train],
                                                      n_jobs=min(labels.FOLDS, patches.default_workers()))
    codes = np.searchsorted(classes, manifest["label"].to_numpy()[train])
    ranked = labels.rank(codes, probs)
    frame = pd.DataFrame({"filename": manifest["filename"].to_numpy()[train], "split": "train",
                          "label": classes[ranked["given"]], "suggested_label": classes[ranked["suggested"]],
                          "score": ranked["score"], "issue": ranked["issue"], "rank": ranked["rank"]})
    frame["given"] = frame["label"].map(SOURCE_LABELS)
    frame["suggested"] = frame["suggested_label"].map(SOURCE_LABELS)
    return frame.sort_values("rank").reset_index(drop=True)


def _issue_records(frame: pd.DataFrame, source: str) -> list[dict]:
    return [{"filename": row.filename, "split": row.split, "given": row.given, "suggested": row.suggested,
             "score": float(row.score), "source": source} for row in frame.itertuples()]


def _write_dataset_findings(root: Path, name: str, found: dict) -> None:
    ranking = found.pop("label_ranking")
    workspace.write_parquet(label_quality_file(root, name), ranking)
    workspace.write_json(dataset_file(root, name), found)


def run_findings(root: Path, dataset: store.Dataset, run_id: str, measured: patches.Measured) -> dict:
    """A run's test label issues, its AUC beside the probe, property-probability correlations and slices."""
    config = runs.read_config(root, run_id)
    task = get_task(config["task"])
    predictions = pd.read_parquet(runs.predictions_file(root, run_id, "test"))
    gone = ~predictions["filename"].isin(dataset.manifest["filename"])
    if gone.any():
        raise UserError(f"run {run_id}'s test predictions name {int(gone.sum())} patch(es) dataset {dataset.name!r} "
                        f"no longer has (e.g. {predictions.loc[gone, 'filename'].iloc[0]}): evaluate the run again")
    columns = [c for c in predictions.columns if str(c).startswith("p_")]
    probs = predictions[columns].to_numpy(dtype=np.float64)
    ranked = labels.rank(predictions["y_true"].to_numpy(), probs)
    names = np.asarray(task.class_names)
    issues = pd.DataFrame({"filename": predictions["filename"], "split": "test", "given": names[ranked["given"]],
                           "suggested": names[ranked["suggested"]], "score": ranked["score"],
                           "issue": ranked["issue"]}).sort_values("score", kind="stable")
    manifest = dataset.manifest.reset_index(drop=True)
    row_of = pd.Series(np.arange(len(manifest)), index=manifest["filename"])
    rows = row_of.reindex(predictions["filename"]).to_numpy()
    props = properties_frame(manifest, measured).iloc[rows].reset_index(drop=True)
    metrics = workspace.read_json(runs.metrics_file(root, run_id, "test"), default={}) or {}
    return {
        "run_id": run_id, "task": task.id,
        "label_issues": _issue_records(issues[issues["issue"]], f"run {run_id}"),
        "model_auc": metrics.get("roc_auc"), "model_ci": (metrics.get("bootstrap") or {}).get("roc_auc"),
        "correlations": shortcut.correlations(props, predictions[columns]),
        # stored by the evaluation; computed here only for one stored before slices were part of it
        "slices": metrics["slices"] if "slices" in metrics else slices.compute(predictions, manifest, task.class_names),
    }


def combine(name: str, found: dict, run_found: dict | None) -> dict:
    """The audit as `audit --json` prints it: duplicates, label_issues (most likely first: training patches by
    the cross-validated model, then the run's test patches), shortcut ({task id: {auc, ci, ...}}, the run's
    AUC beside its task), and clusters, correlations, slices, summary, fingerprints."""
    shortcut_table = {task: dict(entry) for task, entry in found["shortcut"].items()}
    issues = list(found["label_issues"])
    result = {"dataset": name, "run": None, "duplicates": found["duplicates"], "clusters": found["clusters"],
              "label_issues": issues, "shortcut": shortcut_table, "correlations": None, "slices": None,
              "unreadable": found.get("unreadable", []), "timings": found.get("timings", {}),
              "fingerprint": {"dataset": found["fingerprint"]}}
    if run_found:
        task = str(run_found["task"])
        shortcut_table[task] |= {"model_auc": run_found["model_auc"], "model_ci": run_found["model_ci"],
                                 "run": run_found["run_id"]}
        result |= {"run": run_found["run_id"], "correlations": run_found["correlations"],
                   "slices": run_found["slices"], "label_issues": issues + run_found["label_issues"]}
        result["fingerprint"]["run"] = run_found["fingerprint"]
    result["summary"] = {
        "pairs": len(result["duplicates"]),
        "cross_split_pairs": sum(1 for d in result["duplicates"] if d["split_a"] != d["split_b"]),
        "clusters": len(result["clusters"]),
        "label_issues_train": len(found["label_issues"]),
        "label_issues_test": len(run_found["label_issues"]) if run_found else None,
        "high_shortcut_tasks": [task for task, entry in shortcut_table.items()
                                if entry.get("auc") is not None and entry["auc"] > shortcut.WARN_AUC],
    }
    return result


def summary_line(result: dict) -> str:
    summary = result["summary"]
    text = (f"{summary['pairs']} near-duplicate pair(s) ({summary['cross_split_pairs']} across splits) in "
            f"{summary['clusters']} cluster(s); {summary['label_issues_train']} likely label error(s) among training "
            "patches")
    if summary["label_issues_test"] is not None:
        text += f", {summary['label_issues_test']} suspect test patch(es) by run {result['run']}"
    if summary["high_shortcut_tasks"]:
        text += f"; image properties alone reach AUC > {shortcut.WARN_AUC} on task(s) " \
                + ", ".join(summary["high_shortcut_tasks"])
    return text


def load(root: Path, name: str, run_id: str | None = None) -> dict | None:
    """The stored audit of a dataset (and run), None when there is none; 'stale' says whether the dataset (or
    the run) changed since. Never computes anything."""
    found = workspace.read_json(dataset_file(root, name))
    if not found:
        return None
    run_found = workspace.read_json(run_file(root, name, run_id)) if run_id else None
    result = combine(name, found, run_found)
    stale = found.get("fingerprint") != json.loads(json.dumps(dataset_fingerprint(root, name)))
    if run_found and not stale:
        try:
            stale = run_found.get("fingerprint") != json.loads(json.dumps(run_fingerprint(root, name, run_id)))
        except UserError:
            stale = True
    return result | {"stale": stale}


def label_ranking(root: Path, name: str) -> pd.DataFrame | None:
    """Every training patch's label quality, most likely wrong first (None before the first audit)."""
    path = label_quality_file(root, name)
    return pd.read_parquet(path) if path.exists() else None
