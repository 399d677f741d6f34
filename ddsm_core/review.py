"""Everything the review dashboard asks of the workspace, answered without Streamlit or TensorFlow.

The pages only select and draw; the questions live here as plain functions and
one results object per (run, split), in the spirit of FiftyOne's evaluation
results:

    results = RunResults.load(root, run_id, "test")   # None when not evaluated
    results.class_names, results.confusion(normalized=True)
    results.cell(true, pred)             rows behind one confusion cell, most confident first
    results.extremes(pred, k)            the k most and least confident predictions of a class
    results.filter(true=, pred=, outcome=, confidence=)
    page(rows, page, per_page)           one page of rows and the page count
    results.probabilities(row)           {class name: probability}
    missing_files(rows)                  which image files are gone
    window_level(image, window, level)   contrast for display (uint8)

plus the run picker (run_table, default_run, runs_signature), training curves
(history, best_epoch), job progress text, the evaluate and retrain launchers and
the dataset overview. Nothing here imports TensorFlow: module level imports
stay numpy/pandas, and launching work starts a separate process.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import jobs, processes, runs, workspace
from .data import store
from .data.images import read_gray
from .errors import UserError
from .evaluation import probability_columns
from .tasks import SHORT_NAMES, SOURCE_LABELS, TASKS, Task, get_task

OUTCOMES = ("all", "correct", "wrong")


# ---------------------------------------------------------------- runs and the picker

def runs_signature(root: Path) -> tuple:
    """Changes whenever a run is added or its status/metrics change: a cache key for run lists."""
    base = workspace.runs_dir(root)
    if not base.exists():
        return ()
    signature = []
    for run_id in sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = (runs.config_file(root, run_id), runs.status_file(root, run_id),
                 runs.metrics_file(root, run_id, "test"), runs.history_file(root, run_id))
        signature.append((run_id, *map(_mtime, files)))
    return tuple(signature)


def _mtime(path: Path) -> int:
    """A file's mtime in ns, 0 when absent: a cache key that changes whenever the file is rewritten."""
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


RUN_COLUMNS = ["run_id", "dataset", "task", "task_name", "backbone", "state", "epoch", "epochs", "created",
               "error", "test_accuracy", "test_balanced_accuracy", "test_roc_auc", "test_ece", "evaluated"]


def run_table(records: list[dict]) -> pd.DataFrame:
    """Run records (runs.list_runs) as a frame, newest first."""
    frame = pd.DataFrame(records, columns=RUN_COLUMNS)
    if frame.empty:
        return frame
    return frame.sort_values("created", ascending=False, kind="stable").reset_index(drop=True)


def default_run(records: list[dict]) -> str | None:
    """The latest completed run, else the latest run of any state, else None."""
    if not records:
        return None
    ordered = sorted(records, key=lambda r: r.get("created") or "")
    completed = [r for r in ordered if r.get("state") == "completed"]
    return (completed or ordered)[-1]["run_id"]


def picker_options(records: list[dict], dataset: str | None = None, task=None, backbone: str | None = None) -> list:
    """Values the next picker offers, given the choices above it (datasets, then tasks, backbones, runs)."""
    rows = [r for r in records if (dataset is None or r["dataset"] == dataset)
            and (task is None or r["task"] == task) and (backbone is None or r["backbone"] == backbone)]
    if dataset is None:
        return sorted({r["dataset"] for r in rows})
    if task is None:
        return sorted({r["task"] for r in rows})
    if backbone is None:
        return sorted({r["backbone"] for r in rows})
    return [r["run_id"] for r in sorted(rows, key=lambda r: r.get("created") or "", reverse=True)]


def find_record(records: list[dict], run_id: str | None) -> dict | None:
    return next((r for r in records if r["run_id"] == run_id), None)


def run_label(record: dict) -> str:
    created = (record.get("created") or "")[:16].replace("T", " ")
    return f"{record['run_id']} ({record['state']}, {created})"


def task_label(task_id) -> str:
    task = get_task(task_id)
    return f"{task.id}: {task.name}"


STATE_MESSAGES = {
    "queued": ("info", "Run {run_id} is queued: it starts when the running job finishes."),
    "running": ("info", "Run {run_id} is training (epoch {epoch}/{epochs}); views fill in as it goes."),
    "failed": ("error", "Run {run_id} failed: {error}. Fix the cause and Resume it from the sidebar."),
    "cancelled": ("warning", "Run {run_id} was cancelled after epoch {epoch}/{epochs}: Resume it from the sidebar."),
    "interrupted": ("warning", "Run {run_id} stopped unexpectedly (its process died) after epoch {epoch}/{epochs}: "
                               "Resume it from the sidebar."),
}


def state_message(record: dict) -> tuple[str, str] | None:
    """(level, sentence) telling a reviewer what a non-completed run's state means, or None."""
    entry = STATE_MESSAGES.get(record.get("state"))
    if entry is None:
        return None
    level, text = entry
    values = {k: record.get(k) for k in ("run_id", "epoch", "epochs")} | {"error": record.get("error") or "no error recorded"}
    return level, text.format(**values)


# ---------------------------------------------------------------- comparing runs and curves

def compare_metrics(root: Path, run_ids: list[str], split: str = "test") -> pd.DataFrame:
    """Headline metrics side by side: one column per run, one row per metric."""
    columns = {}
    for run_id in run_ids:
        metrics = read_metrics(root, run_id, split) or {}
        config = runs.read_config(root, run_id)
        bootstrap = metrics.get("bootstrap") or {}
        columns[run_id] = {
            "task": task_label(config.get("task")), "backbone": config.get("backbone"),
            "epochs": config.get("epochs"), "image size": config.get("image_size"), "lr": config.get("lr"),
            "patches": metrics.get("n"), "accuracy": metrics.get("accuracy"),
            "balanced accuracy": metrics.get("balanced_accuracy"), "ROC AUC": metrics.get("roc_auc"),
            "PR AUC": metrics.get("pr_auc"), "ECE": metrics.get("ece"),
            "sensitivity": metrics.get("sensitivity"), "specificity": metrics.get("specificity"),
            "accuracy 95% CI": _interval_text(bootstrap.get("accuracy")),
        }
    return pd.DataFrame(columns)


def run_details(root: Path, run_id: str) -> pd.DataFrame:
    """A run's settings as a reviewer reads them (setting, value), decisions explained: the learning rate
    and precision it chose, the feature cache, the verdicts it trained on, early stopping."""
    config, status = runs.read_config(root, run_id), runs.read_status(root, run_id)
    lr = f"{config.get('lr'):g}" + (" (the default for this set-up)" if config.get("lr_default") else "")
    precision = str(config.get("precision"))
    if config.get("precision_requested") == "auto":
        precision += " (auto: chosen for the machine that trained it)"
    reviews = config.get("reviews_snapshot")
    rows = {
        "dataset": config.get("dataset"), "task": task_label(config.get("task")), "backbone": config.get("backbone"),
        "weights": config.get("weights"), "fine-tune": config.get("fine_tune"),
        "inputs": "cached backbone features" if config.get("fine_tune") == "head" and config.get("feature_cache", True)
        else "patches", "epochs": f"{status.get('epoch', 0)} of {config.get('epochs')}"
        + (" (stopped early)" if status.get("stopped_early") else ""),
        "learning rate": lr, "precision": precision, "image size": config.get("image_size"),
        "batch size": config.get("batch_size"), "augmentation": config.get("augment"),
        "reduce-on-plateau patience": config.get("reduce_lr_patience") or "off",
        "early-stopping patience": config.get("early_stop_patience") or "off",
        "verdicts applied": f"{reviews['count']} (as of {reviews['as_of']}, sha256 {reviews['sha256'][:12]})"
        if reviews else "none", "seed": config.get("seed"),
    }
    return pd.DataFrame({"setting": list(rows), "value": [str(value) for value in rows.values()]})


def _interval_text(interval) -> str | None:
    """A bootstrap interval [low, high] as text; None when the metric had no interval."""
    if isinstance(interval, (list, tuple)) and len(interval) == 2 and None not in interval:
        return f"{interval[0]:.3f}-{interval[1]:.3f}"
    return None


def history(root: Path, run_id: str) -> pd.DataFrame:
    """One row per finished epoch (epoch, accuracy, loss, val_accuracy, val_loss, lr, seconds); empty before epoch 1."""
    return runs.read_history(root, run_id)


def histories(root: Path, run_ids: list[str]) -> pd.DataFrame:
    """Histories of several runs stacked, with a run_id column, for overlaid curves."""
    frames = [history(root, r).assign(run_id=r) for r in run_ids]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def curves(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Long frame (epoch, value, subset train|validation, and run_id when stacked) of one metric."""
    ids = [c for c in ("run_id", "epoch") if c in frame]
    subsets = {metric: "train", f"val_{metric}": "validation"}
    present = [c for c in subsets if c in frame]
    if not present:
        return pd.DataFrame(columns=[*ids, "subset", "value"])
    long = frame.melt(id_vars=ids, value_vars=present, var_name="subset", value_name="value")
    long["subset"] = long["subset"].map(subsets)
    return long


def best_epoch(root: Path, run_id: str) -> int | None:
    value = runs.read_status(root, run_id).get("best_epoch")
    return int(value) if value else None


# ---------------------------------------------------------------- one run's predictions on a split

def read_metrics(root: Path, run_id: str, split: str = "test") -> dict | None:
    return workspace.read_json(runs.metrics_file(root, run_id, split))


def available_splits(root: Path, run_id: str) -> list[str]:
    found = runs.predicted_splits(root, run_id)
    return [s for s in runs.SPLITS if s in found] + sorted(found - set(runs.SPLITS))


def predictions_stamp(root: Path, run_id: str, split: str = "test") -> int:
    """mtime of the predictions file (0 when absent): a cache key that changes on re-evaluation."""
    return _mtime(runs.predictions_file(root, run_id, split))


@dataclass
class RunResults:
    """A run's predictions on one split and the stored metrics, answering every question the views ask."""

    run_id: str
    split: str
    task: Task
    predictions: pd.DataFrame
    metrics: dict = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path, run_id: str, split: str = "test") -> RunResults | None:
        path = runs.predictions_file(root, run_id, split)
        if not path.exists():
            return None
        config = runs.read_config(root, run_id)
        frame = pd.read_parquet(path)
        return cls(run_id, split, get_task(config["task"]), frame, read_metrics(root, run_id, split) or {})

    def __post_init__(self):
        frame = self.predictions.reset_index(drop=True)
        names = self.class_names
        frame["true_name"] = [names[i] for i in frame["y_true"]]
        frame["pred_name"] = [names[i] for i in frame["y_pred"]]
        frame["source_name"] = frame["label"].map(SOURCE_LABELS) if "label" in frame else None
        self.predictions = frame

    # -- the classes
    @property
    def class_names(self) -> list[str]:
        return list(self.task.class_names)

    @property
    def probability_columns(self) -> list[str]:
        return probability_columns(self.task)

    def class_index(self, name_or_index) -> int:
        if isinstance(name_or_index, (int, np.integer)):
            if not 0 <= int(name_or_index) < len(self.class_names):
                raise UserError(f"class {name_or_index} is not one of task {self.task.id}'s classes")
            return int(name_or_index)
        try:
            return self.class_names.index(name_or_index)
        except ValueError:
            raise UserError(f"class {name_or_index!r} is not one of {', '.join(self.class_names)}") from None

    def __len__(self) -> int:
        return len(self.predictions)

    # -- the confusion matrix
    def confusion(self, normalized: bool = False) -> pd.DataFrame:
        """k x k frame, rows true class, columns predicted, in the task's class order.

        The stored metrics json is the source when present (so the view shows
        exactly what was saved); otherwise it is counted from the predictions.
        Every class appears, also one with no patches in this split (its row is 0).
        """
        k = len(self.class_names)
        key = "confusion_matrix_normalized" if normalized else "confusion_matrix"
        values = self.metrics.get(key)
        if values is None or np.shape(values) != (k, k):
            counts = np.zeros((k, k), dtype=np.int64)
            np.add.at(counts, (self.predictions["y_true"].to_numpy(), self.predictions["y_pred"].to_numpy()), 1)
            if normalized:
                support = counts.sum(axis=1, keepdims=True)
                values = np.divide(counts, support, out=np.zeros((k, k)), where=support > 0)
            else:
                values = counts
        return pd.DataFrame(values, index=self.class_names, columns=self.class_names)

    def confusion_cells(self) -> pd.DataFrame:
        """One row per cell: true, pred (names), true_index, pred_index, count, fraction (of the true row), text."""
        counts, fractions = self.confusion(False), self.confusion(True)
        rows = []
        for i, true in enumerate(self.class_names):
            for j, pred in enumerate(self.class_names):
                count, share = int(counts.iat[i, j]), float(fractions.iat[i, j])
                rows.append({"true": true, "pred": pred, "true_index": i, "pred_index": j, "count": count,
                             "fraction": share, "text": cell_text(share, count)})
        return pd.DataFrame(rows)

    def confusion_table(self, normalized: bool = True) -> pd.DataFrame:
        """The matrix as display text: 'percent% (count)' or the raw count, rows true, columns 'predicted X'."""
        counts, fractions = self.confusion(False), self.confusion(True)
        if normalized:
            table = pd.DataFrame([[cell_text(fractions.iat[i, j], counts.iat[i, j]) for j in range(len(counts))]
                                  for i in range(len(counts))])
        else:
            table = counts.astype(int).reset_index(drop=True)
            table.columns = range(len(counts))
        table.columns = [f"predicted {name}" for name in self.class_names]
        table.index = [f"true {name}" for name in self.class_names]
        return table

    def cell_from_table(self, row: int, column: str) -> tuple[int, int]:
        """(true, pred) indices of a confusion_table cell picked by row position and column name."""
        return int(row), [f"predicted {name}" for name in self.class_names].index(column)

    def worst_cell(self) -> tuple[str, str]:
        """(true, pred) names of the off-diagonal cell with the most patches (the first class pair if none)."""
        counts = self.confusion(False).to_numpy().astype(float)
        np.fill_diagonal(counts, -1)
        if counts.max() <= 0:
            return self.class_names[0], self.class_names[min(1, len(self.class_names) - 1)]
        i, j = np.unravel_index(int(np.argmax(counts)), counts.shape)
        return self.class_names[i], self.class_names[j]

    def cell(self, true, pred) -> pd.DataFrame:
        """The patches of true class `true` predicted as `pred`, most confident first."""
        t, p = self.class_index(true), self.class_index(pred)
        rows = self.predictions[(self.predictions["y_true"] == t) & (self.predictions["y_pred"] == p)]
        return rows.sort_values("confidence", ascending=False, kind="stable")

    # -- galleries
    def extremes(self, pred, k: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The k highest- and k lowest-confidence patches predicted as `pred` (highest first; lowest first)."""
        p = self.class_index(pred)
        rows = self.predictions[self.predictions["y_pred"] == p]
        ordered = rows.sort_values("confidence", ascending=False, kind="stable")
        return ordered.head(k), ordered.iloc[::-1].head(k)

    def filter(self, true=None, pred=None, outcome: str = "all", confidence: tuple[float, float] = (0.0, 1.0),
               sort: str = "confidence, high first") -> pd.DataFrame:
        """Rows matching every filter. true/pred: a class (name or index), a list of them, or None for any."""
        rows = self.predictions
        for column, wanted in (("y_true", true), ("y_pred", pred)):
            if wanted is None:
                continue
            wanted = wanted if isinstance(wanted, (list, tuple, set)) else [wanted]
            rows = rows[rows[column].isin([self.class_index(w) for w in wanted])]
        if outcome not in OUTCOMES:
            raise UserError(f"outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
        if outcome != "all":
            rows = rows[rows["correct"] == (outcome == "correct")]
        low, high = confidence
        rows = rows[(rows["confidence"] >= low) & (rows["confidence"] <= high)]
        return sort_rows(rows, sort)

    def probabilities(self, row) -> dict[str, float]:
        return {name: float(row[column]) for name, column in zip(self.class_names, self.probability_columns)}

    def caption(self, row) -> str:
        """What a gallery tile says: file, true and predicted class, every class probability."""
        probs = "  ".join(f"{short_name(name)} {p:.2f}" for name, p in self.probabilities(row).items())
        mark = "correct" if row["correct"] else "wrong"
        return f"{row['filename']} | true: {row['true_name']} | predicted: {row['pred_name']} ({mark}) | {probs}"

    # -- certainty and calibration
    def certainty_frame(self) -> pd.DataFrame:
        """One row per patch: predicted class name, outcome (correct|wrong), confidence, filename."""
        frame = self.predictions
        return pd.DataFrame({"predicted": frame["pred_name"], "outcome": np.where(frame["correct"], "correct", "wrong"),
                             "confidence": frame["confidence"], "filename": frame["filename"]})

    def certainty_summary(self) -> pd.DataFrame:
        """The stored certainty quantiles: one row per predicted class and outcome (all, correct, wrong)."""
        rows = [{"predicted": name, "outcome": outcome} | stats
                for name, groups in (self.metrics.get("certainty") or {}).items()
                for outcome, stats in groups.items()]
        return pd.DataFrame(rows, columns=["predicted", "outcome", "count", "min", "q1", "median", "q3", "max"])

    def reliability(self) -> pd.DataFrame:
        """The stored reliability bins (lower, upper, count, confidence, accuracy, centre)."""
        bins = pd.DataFrame(self.metrics.get("reliability") or [],
                            columns=["lower", "upper", "count", "confidence", "accuracy"])
        bins["centre"] = (bins["lower"] + bins["upper"]) / 2
        return bins

    @property
    def ece(self) -> float | None:
        return self.metrics.get("ece")

    @property
    def notes(self) -> list[str]:
        return list(self.metrics.get("notes") or [])


def short_name(name: str) -> str:
    """Short class tag for captions (N, BC, ...) where the class is one source label, else the name."""
    shorts = {SOURCE_LABELS[k]: v for k, v in SHORT_NAMES.items()}
    return shorts.get(name, name)


SORTS = ("confidence, high first", "confidence, low first", "file name")


def sort_rows(rows: pd.DataFrame, sort: str = SORTS[0]) -> pd.DataFrame:
    if sort == "confidence, low first":
        return rows.sort_values("confidence", ascending=True, kind="stable")
    if sort == "file name":
        return rows.sort_values("filename", kind="stable")
    return rows.sort_values("confidence", ascending=False, kind="stable")


def cell_text(fraction: float, count: int) -> str:
    return f"{100 * float(fraction):.1f}% ({int(count)})"


def page(rows: pd.DataFrame, number: int, per_page: int) -> tuple[pd.DataFrame, int]:
    """Rows of page `number` (1-based, clipped to the range) and the page count (at least 1)."""
    per_page = max(1, int(per_page))
    pages = max(1, math.ceil(len(rows) / per_page))
    number = min(max(1, int(number)), pages)
    return rows.iloc[(number - 1) * per_page: number * per_page], pages


# ---------------------------------------------------------------- images

def window_level(image: np.ndarray, window: float = 255.0, level: float = 127.5) -> np.ndarray:
    """Display contrast: map [level - window/2, level + window/2] linearly onto 0-255 (uint8)."""
    window = max(float(window), 1.0)
    low = float(level) - window / 2
    scaled = (np.asarray(image, dtype=np.float32) - low) * (255.0 / window)
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def missing_files(rows: pd.DataFrame, column: str = "path") -> list[str]:
    return [p for p in rows[column] if not Path(p).is_file()]


@dataclass
class Patch:
    path: str
    image: np.ndarray | None
    problem: str | None = None


def load_patch(path, window: float = 255.0, level: float = 127.5) -> Patch:
    """One patch for display, contrast applied; a missing or unreadable file gives a message instead."""
    if not Path(path).is_file():
        return Patch(str(path), None, f"image file missing (moved or deleted?): {path}")
    try:
        return Patch(str(path), window_level(read_gray(path), window, level))
    except ValueError as error:
        return Patch(str(path), None, f"cannot read {path}: {error}")


# ---------------------------------------------------------------- launching work (separate processes)

def start_evaluation(root: Path, run_id: str, split: str = "test") -> int:
    """Run `python -m ddsm_core evaluate` as a detached process; returns its pid."""
    runs.require(root, run_id)
    if evaluation_state(root, run_id)["state"] == "running":
        raise UserError(f"run {run_id} is already being evaluated")
    process = jobs.spawn(["evaluate", "--run", run_id, "--split", split, "--workspace", root],
                         runs.evaluate_log(root, run_id))
    job = {"pid": process.pid, "split": split, "started": runs.now()}
    workspace.write_json(runs.evaluate_job_file(root, run_id), job)
    return process.pid


def evaluation_state(root: Path, run_id: str) -> dict:
    """{'state': none|running|done|failed, 'message': ...} of the dashboard-started evaluation."""
    job = workspace.read_json(runs.evaluate_job_file(root, run_id))
    if not job:
        return {"state": "none", "message": ""}
    if processes.pid_alive(job.get("pid")):
        return {"state": "running", "message": f"evaluating the {job.get('split', 'test')} split since {job['started']}"}
    tail = log_tail(runs.evaluate_log(root, run_id))
    user_error = any(line.startswith("error: ") for line in tail.splitlines())  # the CLI's own error lines
    if runs.predictions_file(root, run_id, job.get("split", "test")).exists() and not user_error:
        return {"state": "done", "message": "evaluated"}
    return {"state": "failed", "message": tail or "the evaluation process stopped"}


def log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def job_progress(status: dict, epochs: int | None) -> dict:
    """What the job panel shows: fraction done (0-1), a one-line text, the ETA text and latest metrics."""
    epoch, step = int(status.get("epoch") or 0), int(status.get("step") or 0)
    steps = int(status.get("steps_per_epoch") or 0)
    epochs = int(epochs or 0)
    state = status.get("state", "queued")
    if state == "completed":
        fraction = 1.0
    elif epochs:
        within = step / steps if steps else 0.0
        fraction = min(1.0, (epoch + within) / epochs)
    else:
        fraction = 0.0
    shown_epoch = min(epoch + 1, epochs) if state == "running" and epochs else epoch
    text = f"{state}: epoch {shown_epoch}/{epochs}" + (f", step {step}/{steps}" if state == "running" and steps else "")
    metrics = {k: v for k, v in (status.get("metrics") or {}).items()
               if isinstance(v, (int, float)) and k not in ("epoch", "lr", "seconds")}
    return {"fraction": fraction, "text": text, "eta": eta_text(status.get("eta_seconds")) if state == "running" else "",
            "metrics": metrics, "state": state, "error": status.get("error")}


def eta_text(seconds) -> str:
    if seconds is None or not isinstance(seconds, (int, float)) or seconds < 0:
        return ""
    seconds = int(round(seconds))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"about {hours} h {minutes} min left" if hours else (f"about {minutes} min {secs} s left" if minutes
                                                              else f"about {secs} s left")


def start_demo(root: Path) -> None:
    from . import demo  # imported when asked for: the views never need the synthetic generator

    demo.start_demo_job(root)


def demo_progress(root: Path) -> dict | None:
    from . import demo

    return demo.demo_progress(root)


# ---------------------------------------------------------------- the dataset

def class_balance(dataset: store.Dataset) -> pd.DataFrame:
    """Patches per source class and split: columns split, label, class, patches."""
    manifest = dataset.manifest
    rows = [{"split": split, "label": label, "class": name,
             "patches": int(((manifest["split"] == split) & (manifest["label"] == label)).sum())}
            for split in store.SPLITS for label, name in SOURCE_LABELS.items()]
    return pd.DataFrame(rows)


def task_balance(dataset: store.Dataset) -> pd.DataFrame:
    """Patches per task, class and split, as each task sees the dataset (task 1 without noisy normals)."""
    rows = []
    for task in TASKS.values():
        selected = task.select(dataset.manifest)
        for index, name in enumerate(task.class_names):
            mine = selected[selected["target"] == index]
            rows.append({"task": task_label(task.id), "class": name,
                         **{split: int((mine["split"] == split).sum()) for split in store.SPLITS}})
    return pd.DataFrame(rows)


def sample_patches(dataset: store.Dataset, per_class: int = 4, split: str | None = None, seed: int = 0) -> pd.DataFrame:
    """A few random patches per source class (with an absolute `abs_path` column)."""
    manifest = dataset.manifest if split is None else dataset.manifest[dataset.manifest["split"] == split]
    picked = [group.sample(min(per_class, len(group)), random_state=seed)
              for _, group in manifest.groupby("label", sort=True)]
    rows = pd.concat(picked) if picked else manifest.head(0)
    return rows.assign(abs_path=dataset.absolute_paths(rows), class_name=rows["label"].map(SOURCE_LABELS))


def noise_filter(dataset: store.Dataset) -> dict:
    """What task 1's noisy-normal filter removes: thresholds, counts per split and the removed rows."""
    manifest = dataset.manifest
    report = (dataset.info.get("import_report") or {}).get("noise_filter") or {}
    removed = manifest[(manifest["label"] == 0) & manifest["noisy"].astype(bool)]
    normals = manifest[manifest["label"] == 0]
    counts = {split: {"normals": int((normals["split"] == split).sum()),
                      "removed": int((removed["split"] == split).sum())} for split in store.SPLITS}
    columns = [c for c in ("filename", "split", "dark_fraction", "saturated_block") if c in removed]
    return {"thresholds": report, "counts": counts,
            "removed": removed[columns].assign(abs_path=dataset.absolute_paths(removed)).reset_index(drop=True)}


def import_report(dataset: store.Dataset) -> dict:
    report = dataset.info.get("import_report") or {}
    skipped = pd.DataFrame(report.get("skipped") or [], columns=["where", "file", "reason"])
    return {"skipped": skipped, "warnings": list(report.get("warnings") or []),
            "source": dataset.info.get("source"), "format": dataset.info.get("format"),
            "created": dataset.info.get("created"), "n_patches": dataset.info.get("n_patches")}
