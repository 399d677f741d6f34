"""Acting on the audit: new datasets derived from an audited one. The original is never modified.

- `group_duplicates(root, name, new_name)`: a copy whose `group` column merges every near-duplicate
  cluster with the groups of its members, so the group-aware validation split keeps copies of one lesion
  on one side.
- `without_test_duplicates(root, name, new_name)`: a copy without the training patches that are
  near-duplicates of a test patch (the test split is kept whole).

Both need the dataset's stored audit for its current manifest (results.run_audit) and build the new
dataset with the importers' staging folder and one rename (data/store.py). Image files kept inside the
dataset folder are hard-linked into the copy (copied where links are impossible), so a copy costs no image
space and the original's files are untouched; images the dataset refers to by absolute path stay where
they are. dataset.json's source records where the copy came from and what was changed.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .. import workspace
from ..data import store
from ..errors import UserError
from . import results


def _fresh_findings(root: Path, name: str) -> dict:
    found = workspace.read_json(results.dataset_file(root, name))
    if not found:
        raise UserError(f"dataset {name!r} has not been audited yet: run python -m ddsm_core audit --dataset {name}")
    if found.get("fingerprint") != json.loads(json.dumps(results.dataset_fingerprint(root, name))):
        raise UserError(f"the audit of dataset {name!r} is out of date (the dataset changed): audit it again")
    return found


def merged_groups(manifest: pd.DataFrame, pairs: list[dict]) -> pd.Series:
    """The `group` column with every duplicate pair's two groups joined (transitively).

    A merged group is named after its alphabetically first member group, so untouched groups keep their names.
    """
    groups = manifest["group"].astype(str)
    codes, names = pd.factorize(groups, sort=True)
    row_of = pd.Series(np.arange(len(manifest)), index=manifest["filename"].astype(str))
    a = codes[row_of.reindex([p["a"] for p in pairs]).to_numpy(dtype=np.int64)] if pairs else np.zeros(0, int)
    b = codes[row_of.reindex([p["b"] for p in pairs]).to_numpy(dtype=np.int64)] if pairs else np.zeros(0, int)
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(len(names), len(names)))
    _, component = connected_components(graph, directed=False)
    first = pd.Series(np.arange(len(names))).groupby(component).transform("min").to_numpy()  # names are sorted
    return pd.Series(np.asarray(names)[first[codes]], index=manifest.index, name="group")


def test_duplicate_rows(manifest: pd.DataFrame, pairs: list[dict]) -> pd.Series:
    """True for training rows that are near-duplicates of a test patch."""
    leaked = {p["a"] if p["split_a"] == "train" else p["b"] for p in pairs if {p["split_a"], p["split_b"]} == {"train", "test"}}
    return (manifest["split"] == "train") & manifest["filename"].astype(str).isin(leaked)


def group_duplicates(root: Path, name: str, new_name: str, replace: bool = False) -> store.Dataset:
    """A copy of the dataset whose groups merge the near-duplicate clusters (see the module docstring)."""
    found = _fresh_findings(root, name)
    dataset = store.load(root, name)
    manifest = dataset.manifest.copy()
    merged = merged_groups(manifest, found["duplicates"])
    changed = int((merged != manifest["group"].astype(str)).sum())
    manifest["group"] = merged
    change = {"action": "group-duplicates", "rows_regrouped": changed,
              "groups_before": int(dataset.manifest["group"].nunique()), "groups_after": int(merged.nunique())}
    return _derive(root, dataset, new_name, manifest, change, found, replace)


def without_test_duplicates(root: Path, name: str, new_name: str, replace: bool = False) -> store.Dataset:
    """A copy of the dataset without the training patches that duplicate test patches."""
    found = _fresh_findings(root, name)
    dataset = store.load(root, name)
    leaked = test_duplicate_rows(dataset.manifest, found["duplicates"])
    if (dataset.manifest["split"] == "train").sum() == leaked.sum():
        raise UserError(f"every training patch of {name!r} duplicates a test patch: nothing would be left to train on")
    removed = dataset.manifest.loc[leaked, "filename"].astype(str).tolist()
    change = {"action": "remove-test-duplicates", "removed_train_patches": len(removed), "removed": removed}
    return _derive(root, dataset, new_name, dataset.manifest[~leaked].copy(), change, found, replace)


def _derive(root: Path, dataset: store.Dataset, new_name: str, manifest: pd.DataFrame, change: dict,
            found: dict, replace: bool) -> store.Dataset:
    if new_name == dataset.name:
        raise UserError(f"choose a new name: the audited dataset {dataset.name!r} is never modified")
    store.check_new_name(root, new_name, replace)
    info = dataset.info
    source = {"derived_from": {"dataset": dataset.name, "manifest_sha256": found["fingerprint"]["manifest_sha256"],
                               "audit_settings": found["fingerprint"]["settings"]} | change,
              "original_source": info.get("source")}
    skipped = (info.get("import_report") or {}).get("skipped") or []
    with store.staging(root, new_name) as staging:
        _link_images(dataset.folder, staging, manifest["path"])
        return store.save(root, new_name, info.get("format"), source, manifest.reset_index(drop=True), skipped,
                          staging, replace)


def _link_images(source: Path, target: Path, paths: pd.Series) -> None:
    """Hard-link (else copy) the dataset-relative image files into the new dataset's folder."""
    for relative in paths:
        if Path(relative).is_absolute():
            continue
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source / relative, destination)
        except OSError:
            shutil.copy2(source / relative, destination)
