"""The six classification tasks (a contract): which rows each keeps and how labels map to outputs.

Source labels follow the DDSM patch encoding:
0 normal, 1 benign calcification, 2 benign mass, 3 malignant calcification, 4 malignant mass.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .errors import UserError

SOURCE_LABELS = {
    0: "normal",
    1: "benign calcification",
    2: "benign mass",
    3: "malignant calcification",
    4: "malignant mass",
}
SHORT_NAMES = {0: "N", 1: "BC", 2: "BM", 3: "MC", 4: "MM"}
CALCIFICATIONS = (1, 3)  # benign, malignant
MASSES = (2, 4)  # benign, malignant


@dataclass(frozen=True)
class Task:
    id: int
    name: str
    # one entry per model output, in output order: (class name, source labels it covers)
    classes: tuple[tuple[str, tuple[int, ...]], ...]
    drop_noisy_normals: bool = False

    @property
    def class_names(self) -> list[str]:
        return [name for name, _ in self.classes]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def source_labels(self) -> list[int]:
        return sorted(label for _, labels in self.classes for label in labels)

    def label_to_output(self) -> dict[int, int]:
        return {label: out for out, (_, labels) in enumerate(self.classes) for label in labels}

    def select(self, manifest: pd.DataFrame, noisy: pd.Series | None = None) -> pd.DataFrame:
        """Rows this task keeps, with a `target` column (model output index).

        `noisy` flags noisy patches (task 1 drops the noisy normals); by default
        the manifest's own `noisy` column is used.
        """
        keep = manifest["label"].isin(self.source_labels)
        if self.drop_noisy_normals:
            flags = manifest["noisy"] if noisy is None else noisy
            keep &= ~((manifest["label"] == 0) & flags.astype(bool))
        rows = manifest[keep].copy()
        rows["target"] = rows["label"].map(self.label_to_output()).astype("int64")
        return rows

    def missing_classes(self, manifest: pd.DataFrame, split: str) -> list[str]:
        """Class names with no rows in a split: a task cannot train or be judged without them."""
        rows = self.select(manifest)
        present = set(rows.loc[rows["split"] == split, "target"])
        return [name for out, name in enumerate(self.class_names) if out not in present]


def _single(*labels: int) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return tuple((SOURCE_LABELS[label], (label,)) for label in labels)


TASKS: dict[int, Task] = {
    0: Task(0, "all five classes (baseline)", _single(*SOURCE_LABELS)),
    1: Task(1, "cleaned normal class", _single(*SOURCE_LABELS), drop_noisy_normals=True),
    2: Task(2, "abnormality type", _single(1, 2, 3, 4)),
    3: Task(3, "normal vs abnormal", (("normal", (0,)), ("abnormal", (1, 2, 3, 4)))),
    4: Task(4, "calcification: benign vs malignant", _single(*CALCIFICATIONS)),
    5: Task(5, "mass: benign vs malignant", _single(*MASSES)),
}


def get_task(task_id) -> Task:
    try:
        return TASKS[int(task_id)]
    except (KeyError, ValueError, TypeError):
        raise UserError(f"unknown task {task_id!r}: choose one of {', '.join(map(str, TASKS))}") from None

