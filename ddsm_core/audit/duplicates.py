"""Near-duplicate patches: close in the descriptor space, confirmed by the perceptual hashes.

Pure functions on the arrays of audit.patches (no I/O).

Search. Comparing every patch's hash with all eight orientations of every other patch is 8 N^2 pairs of
256-bit hashes (4e10 for the public release), and a near-duplicate may differ in a fifth of the bits: too far
for multi-index hashing or a BK-tree to prune. The descriptor (audit.patches.descriptor) is identical for
all eight orientations and for a brightness or contrast change, so candidates are the pairs within
SEARCH_RADIUS of each other in that space (`candidates`: one matrix product per block of rows, exact, about
N^2 / 2 dot products of DESCRIPTOR_DIM numbers; k-d trees do worse at this dimension). Each candidate is
confirmed on the pHash bits (`hash_distance`: the smallest Hamming distance over the eight orientations, as
a share of HASH_BITS) and kept at or under `max_distance`.

Distance scale, measured on 600 synthetic 299 px patches (a copy after a random flip or rotation and a
brightness/contrast change of up to 10 % / 15 levels; then shifted by up to s px):
    descriptor distance, s = 0 / 3 / 6:   max 0.04 / 0.13 / 0.23      (unrelated nearest neighbour: 0.12 and up)
    pHash distance,      s = 0 / 3 / 6:   max 0.08 / 0.16 / 0.27      (unrelated pairs: 0.29 and up)
so the defaults find copies shifted by up to about 1 % of the side for sure and most up to 2 %. Patches that
are mostly film background are held to a tighter limit (find_pairs): look-alike film edges otherwise pass.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .patches import HASH_BITS

SEARCH_RADIUS = 0.2  # Euclidean distance between (unit) descriptors of a candidate pair
MAX_PER_PATCH = 32  # at most this many candidates per patch, the closest (bounds crowds of look-alike patches)
MAX_DISTANCE = 0.2  # the largest pHash distance (share of bits) called a near-duplicate
FILM_FLOOR = 0.5  # the limit for mostly-film pairs never drops below this share of MAX_DISTANCE
_BLOCK = 1024  # rows per matrix product (1024 x N float32: 290 MB for the public release)


def candidates(descriptors: np.ndarray, radius: float = SEARCH_RADIUS, usable: np.ndarray | None = None,
               max_per_patch: int = MAX_PER_PATCH) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs (i, j), i < j: usable rows whose unit descriptors are within `radius` of each other.

    A row with no descriptor (a flat patch: all zeros) counts as one more look-alike of every other flat patch.
    Each row keeps its `max_per_patch` closest partners among the rows after it.
    """
    rows = np.flatnonzero(np.ones(len(descriptors), bool) if usable is None else usable)
    vectors = np.asarray(descriptors, dtype=np.float32)[rows]
    flat = np.linalg.norm(vectors, axis=1) < 0.5
    vectors[flat] = 1.0 / np.sqrt(vectors.shape[1])  # flat patches: one shared unit vector
    least = 1.0 - radius * radius / 2  # |u - v|^2 = 2 - 2 u.v for unit vectors
    found_i, found_j = [], []
    for start in range(0, len(rows), _BLOCK):
        similarity = vectors[start:start + _BLOCK] @ vectors[start:].T
        r, c = np.nonzero(similarity >= least)
        keep = c > r  # partners after the row itself (both count from `start`)
        r, c = r[keep], c[keep]
        if len(r) and max_per_patch:
            order = np.lexsort((-similarity[r, c], r))
            r, c = r[order], c[order]
            first = np.searchsorted(r, r)  # index of each row's first partner
            keep = np.arange(len(r)) - first < max_per_patch
            r, c = r[keep], c[keep]
        found_i.append(rows[start + r])
        found_j.append(rows[start + c])
    if not found_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(found_i).astype(np.int64), np.concatenate(found_j).astype(np.int64)


def hash_distance(hashes: np.ndarray, i: np.ndarray, j: np.ndarray, chunk: int = 200_000) -> np.ndarray:
    """Share of differing pHash bits between patch i and patch j in its closest orientation.

    hashes: (n, 8, HASH_BYTES) uint8, orientation 0 the patch as stored. Both directions are compared
    (i as stored against j's eight orientations and the reverse) and the smaller kept, so the result is
    symmetric in i and j.
    """
    words = np.ascontiguousarray(hashes).view(np.uint64)  # (n, 8, HASH_BYTES / 8)
    result = np.empty(len(i), dtype=np.float64)
    for start in range(0, len(i), chunk):
        a, b = i[start:start + chunk], j[start:start + chunk]
        forward = np.bitwise_count(words[a, :1] ^ words[b]).sum(axis=2).min(axis=1)
        backward = np.bitwise_count(words[b, :1] ^ words[a]).sum(axis=2).min(axis=1)
        result[start:start + chunk] = np.minimum(forward, backward) / HASH_BITS
    return result


def find_pairs(hashes: np.ndarray, descriptors: np.ndarray, max_distance: float = MAX_DISTANCE,
               usable: np.ndarray | None = None, dark_fraction: np.ndarray | None = None,
               radius: float = SEARCH_RADIUS) -> pd.DataFrame:
    """Near-duplicate pairs: columns i, j (row numbers, i < j) and distance (0-1), closest first.

    Film background carries no texture, so two patches that are mostly film look alike to any hash: with
    `dark_fraction` (the manifest's, per row) a pair's limit is max_distance times the tissue share of the
    darker of the two, but at least FILM_FLOOR times max_distance (a copy of a film patch still differs by
    only a few bits; look-alike film edges by more).
    """
    i, j = candidates(descriptors, radius, usable)
    distance = hash_distance(hashes, i, j) if len(i) else np.zeros(0)
    limit = np.full(len(i), float(max_distance))
    if dark_fraction is not None and len(i):
        dark = np.clip(np.asarray(dark_fraction, dtype=np.float64), 0.0, 1.0)
        limit *= np.maximum(FILM_FLOOR, 1.0 - np.maximum(dark[i], dark[j]))
    keep = distance <= limit
    pairs = pd.DataFrame({"i": i[keep], "j": j[keep], "distance": distance[keep]})
    return pairs.sort_values(["distance", "i", "j"], kind="stable").reset_index(drop=True)


def clusters(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Cluster number per row (connected components of the pairs, i.e. union-find); -1 for a row in no pair.

    Clusters are numbered 0, 1, ... by their smallest row.
    """
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    in_pair = np.zeros(n, dtype=bool)
    in_pair[i] = in_pair[j] = True
    result = np.full(n, -1, dtype=np.int64)
    ids = pd.unique(component[in_pair])  # in order of the smallest row of each component
    result[in_pair] = pd.Series(np.arange(len(ids)), index=ids)[component[in_pair]].to_numpy()
    return result


def pair_table(pairs: pd.DataFrame, manifest: pd.DataFrame, cluster: np.ndarray) -> pd.DataFrame:
    """The report's pairs: a, b (filenames), split_a, split_b, distance, cluster, cross_split, row_a, row_b.

    Cross-split pairs come first, then by distance; in a cross-split pair a is the training patch.
    """
    split = manifest["split"].to_numpy()
    filename = manifest["filename"].to_numpy()
    a, b = pairs["i"].to_numpy(), pairs["j"].to_numpy()
    swap = (split[a] != "train") & (split[b] == "train")
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    table = pd.DataFrame({
        "a": filename[a], "b": filename[b], "split_a": split[a], "split_b": split[b],
        "distance": pairs["distance"].to_numpy(), "cluster": cluster[a], "row_a": a, "row_b": b,
    })
    table["cross_split"] = table["split_a"] != table["split_b"]
    return table.sort_values(["cross_split", "distance", "row_a", "row_b"], ascending=[False, True, True, True],
                             kind="stable").reset_index(drop=True)


def cluster_table(manifest: pd.DataFrame, cluster: np.ndarray) -> pd.DataFrame:
    """One row per cluster: cluster, size, n_train, n_test, filenames; cross-split clusters first, then larger."""
    members = pd.DataFrame({"cluster": cluster, "filename": manifest["filename"].to_numpy(),
                            "split": manifest["split"].to_numpy()})
    members = members[members["cluster"] >= 0]
    if members.empty:
        return pd.DataFrame(columns=["cluster", "size", "n_train", "n_test", "filenames"])
    grouped = members.groupby("cluster", sort=True)
    table = pd.DataFrame({
        "size": grouped.size(),
        "n_train": grouped["split"].agg(lambda s: int((s == "train").sum())),
        "n_test": grouped["split"].agg(lambda s: int((s == "test").sum())),
        "filenames": grouped["filename"].agg(list),
    }).reset_index()
    cross = (table["n_train"] > 0) & (table["n_test"] > 0)
    return table.assign(cross=cross).sort_values(["cross", "size", "cluster"], ascending=[False, False, True],
                                                 kind="stable").drop(columns="cross").reset_index(drop=True)
