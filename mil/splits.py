"""Stratified k-fold splits with a pinned seed, optionally grouped by patient, written to and read from CSV or JSON.

The fold assignment is computed here (not by scikit-learn) so the same labels and seed give the same folds
across library versions: within each class the samples are shuffled by a seeded NumPy ``Generator`` and dealt
round-robin to the folds, each class starting where the previous one stopped so fold sizes differ by at most one.

With ``groups`` (a patient id per slide) all samples of a group land in one fold, so no patient is in both the
training and the held-out part of a fold. Groups are placed greedily, largest first (ties in a seeded random
order), each into the fold that keeps the per-class fold proportions most even (the criterion of scikit-learn's
``StratifiedGroupKFold``: the mean over classes of the standard deviation across folds of each fold's share of
the class), ties going to the fold with fewer samples. When every group is a single sample this is the ungrouped
assignment above, fold for fold.
"""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..fileio import atomic_write

__all__ = ["Splits", "check_groups_in_one_fold", "group_keys", "read_splits", "stratified_kfold"]

_ID_COLUMNS = ("id", "slide_id", "slide")


@dataclass(frozen=True)
class Splits:
    """Which held-out fold each sample belongs to.

    Attributes
    ----------
    fold : numpy.ndarray
        ``(n,)`` int64, fold index in ``[0, k)`` of each sample.
    labels : numpy.ndarray
        ``(n,)`` int64 class labels, in sample order.
    ids : tuple of str
        ``n`` sample identifiers (slide ids); ``"0", "1", ...`` when none were given.
    k : int
        Number of folds.
    seed : int or None
        Seed the folds were drawn with (None when read from a CSV that does not say).
    groups : tuple of str or None
        ``n`` group (patient) ids when the folds were drawn by group, else None.
    """

    fold: np.ndarray
    labels: np.ndarray
    ids: tuple[str, ...]
    k: int
    seed: int | None = None
    groups: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.fold)
        if len(self.labels) != n or len(self.ids) != n:
            raise ConfigError(f"splits: {n} folds, {len(self.labels)} labels and {len(self.ids)} ids must match")
        if n and (self.fold.min() < 0 or self.fold.max() >= self.k):
            raise ConfigError(f"splits: fold indices must lie in [0, {self.k})")
        if self.groups is not None:
            if len(self.groups) != n:
                raise ConfigError(f"splits: {len(self.groups)} groups for {n} samples")
            check_groups_in_one_fold(self.fold, self.groups)

    def __len__(self) -> int:
        return len(self.fold)

    def indices(self, fold: int) -> tuple[np.ndarray, np.ndarray]:
        """``(train_idx, val_idx)``, sorted int64 arrays, for held-out fold ``fold``."""
        if not 0 <= fold < self.k:
            raise ConfigError(f"fold must be in [0, {self.k}), got {fold}")
        held = self.fold == fold
        return np.flatnonzero(~held), np.flatnonzero(held)

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write ``{"k", "seed", "samples": [{"id", "label", "fold"}, ...]}`` atomically; return the path."""
        doc = {
            "format": "slidestream.splits",
            "version": 1,
            "k": int(self.k),
            "seed": self.seed,
            "samples": [
                {"id": i, "label": int(y), "fold": int(f),
                 **({"group": _public(self.groups[j])} if self.groups else {})}
                for j, (i, y, f) in enumerate(zip(self.ids, self.labels, self.fold))
            ],
        }
        return atomic_write(path, json.dumps(doc, indent=1) + "\n")

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write columns ``id,label,fold`` (and ``group`` for grouped splits) atomically; return the path. ``k`` and
        ``seed`` go in JSON only."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["id", "label", "fold"] + (["group"] if self.groups else []))
        for j, (i, y, f) in enumerate(zip(self.ids, self.labels, self.fold)):
            writer.writerow([i, int(y), int(f)] + ([_public(self.groups[j])] if self.groups else []))
        return atomic_write(path, buf.getvalue())

    def save(self, path: str | os.PathLike) -> Path:
        """Write as JSON or CSV according to the suffix of ``path``."""
        suffix = Path(path).suffix.lower()
        if suffix == ".json":
            return self.to_json(path)
        if suffix == ".csv":
            return self.to_csv(path)
        raise ConfigError(f"{path}: splits are written as .json or .csv")


def stratified_kfold(labels: Sequence[int] | np.ndarray, k: int = 5, seed: int = 0,
                     ids: Sequence[str] | None = None, groups: Sequence[str | None] | None = None) -> Splits:
    """Assign samples to ``k`` folds with the class proportions of the whole set, groups kept whole.

    Parameters
    ----------
    labels : array_like
        ``(n,)`` integer class labels.
    k : int, default 5
        Number of folds, ``2 <= k <= n``.
    seed : int, default 0
        Seed of the shuffle; the same labels and seed always give the same folds.
    ids : sequence of str, optional
        Sample identifiers kept with the folds (written to CSV/JSON).
    groups : sequence of str or None, optional
        Group (patient) of each sample; all samples of a group go to one fold. A None or empty entry is a group
        of its own. Without groups, or when no group has two samples, the folds are the ungrouped ones.

    Returns
    -------
    Splits

    Raises
    ------
    ConfigError
        ``k`` outside ``[2, n]``, or more folds than groups.

    Warns
    -----
    UserWarning
        When a class has fewer than ``k`` samples, so some folds cannot contain it.
    """
    y = _int_labels(labels)
    n = len(y)
    if not 2 <= k <= n:
        raise ConfigError(f"k must be between 2 and the number of samples ({n}), got {k}")
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < k:
        warnings.warn(
            f"class {classes[counts.argmin()]} has only {counts.min()} samples for {k} folds: "
            "some validation folds will miss it (lower k)",
            stacklevel=2,
        )
    rng = np.random.default_rng(seed)
    keys = group_keys(groups, n)
    if keys is not None and len(set(keys)) < n:
        fold = _grouped_folds(y, keys, k, rng)
        return Splits(fold, y, _ids(ids, n), int(k), int(seed), tuple(keys))
    fold = np.empty(n, dtype=np.int64)
    start = 0
    for c in classes:
        members = np.flatnonzero(y == c)
        members = members[rng.permutation(len(members))]
        fold[members] = (start + np.arange(len(members))) % k
        start = (start + len(members)) % k
    return Splits(fold, y, _ids(ids, n), int(k), int(seed), None if keys is None else tuple(keys))


def check_groups_in_one_fold(fold: np.ndarray, groups: Sequence[str]) -> None:
    """Raise :class:`ConfigError` naming the first group whose samples lie in more than one fold."""
    seen: dict[str, int] = {}
    for f, g in zip(np.asarray(fold).tolist(), groups):
        if seen.setdefault(g, f) != f:
            raise ConfigError(f"group (patient) {g!r} has samples in folds {seen[g]} and {f}: a patient's slides must "
                              "share one fold")


def group_keys(groups: Sequence[str | None] | None, n: int) -> list[str] | None:
    """Group of each sample as a string; samples without a group get a key of their own."""
    if groups is None:
        return None
    raw = list(groups)
    if len(raw) != n:
        raise ConfigError(f"got {len(raw)} groups for {n} labels")
    # A NUL can appear in no manifest value, so these keys never collide with a real patient id.
    return [f"\0{i}" if g is None or str(g).strip() == "" else str(g).strip() for i, g in enumerate(raw)]


def _public(key: str) -> str:
    """A group key as written to files: empty for a sample that is its own group."""
    return "" if key.startswith("\0") else key


def _grouped_folds(y: np.ndarray, keys: list[str], k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy stratified assignment of whole groups to ``k`` folds (module docstring)."""
    names, inverse = np.unique(np.asarray(keys, dtype=object), return_inverse=True)
    if k > len(names):
        raise ConfigError(f"{k} folds but only {len(names)} patients (groups): lower the number of folds")
    classes, y_idx = np.unique(y, return_inverse=True)
    counts = np.zeros((len(names), len(classes)))
    np.add.at(counts, (inverse, y_idx), 1.0)
    totals = counts.sum(axis=0)
    order = rng.permutation(len(names))
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]
    per_fold = np.zeros((k, len(classes)))
    group_fold = np.empty(len(names), dtype=np.int64)
    for g in order:
        trial = per_fold + np.eye(k)[:, :, None] * counts[g][None, None, :]  # (k choices, k folds, C)
        cost = (trial / totals).std(axis=1).mean(axis=1)
        size = per_fold.sum(axis=1)
        best = min(range(k), key=lambda f: (round(float(cost[f]), 12), size[f], f))
        per_fold[best] += counts[g]
        group_fold[g] = best
    fold = group_fold[inverse]
    if len(np.unique(fold)) < k:
        raise ConfigError(f"could not give each of the {k} folds a patient: lower the number of folds")
    return fold


def read_splits(path: str | os.PathLike) -> Splits:
    """Read splits written by :meth:`Splits.save` (JSON or CSV).

    A CSV needs a ``fold`` and a ``label`` column and takes the id from ``id``, ``slide_id`` or ``slide``
    (row numbers when none); ``k`` is the largest fold + 1.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read splits ({exc.strerror})") from exc
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(text)
            samples = doc["samples"]
            ids = [str(s["id"]) for s in samples]
            labels = [s["label"] for s in samples]
            fold = np.asarray([int(s["fold"]) for s in samples], dtype=np.int64)
            k, seed = int(doc["k"]), doc.get("seed")
            groups = (group_keys([s["group"] for s in samples], len(samples))
                      if samples and all("group" in s for s in samples) else None)
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: not a slidestream splits JSON ({exc})") from exc
    else:
        rows = list(csv.DictReader(io.StringIO(text)))
        if not rows or "fold" not in rows[0] or "label" not in rows[0]:
            raise ConfigError(f"{path}: a splits CSV needs 'label' and 'fold' columns")
        id_col = next((c for c in _ID_COLUMNS if c in rows[0]), None)
        ids = [r[id_col] for r in rows] if id_col else [str(i) for i in range(len(rows))]
        try:
            labels = [int(r["label"]) for r in rows]
            fold = np.asarray([int(r["fold"]) for r in rows], dtype=np.int64)
        except ValueError as exc:
            raise ConfigError(f"{path}: 'label' and 'fold' must be integers ({exc})") from exc
        k, seed = int(fold.max()) + 1, None
        group_col = next((c for c in ("group", "patient") if c in rows[0]), None)
        groups = group_keys([r[group_col] for r in rows], len(rows)) if group_col else None
    return Splits(fold, _int_labels(labels), tuple(ids), k, None if seed is None else int(seed),
                  None if groups is None else tuple(groups))


def _int_labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) == 0:
        raise ConfigError(f"labels must be a non-empty 1-D sequence, got shape {y.shape}")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise ConfigError("labels must be integer class indices")
    elif y.dtype.kind not in "iub":
        raise ConfigError(f"labels must be integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0:
        raise ConfigError("labels must be non-negative class indices")
    return y


def _ids(ids: Sequence[str] | None, n: int) -> tuple[str, ...]:
    if ids is None:
        return tuple(str(i) for i in range(n))
    out = tuple(str(i) for i in ids)
    if len(out) != n:
        raise ConfigError(f"got {len(out)} ids for {n} labels")
    if len(set(out)) != n:
        raise ConfigError("sample ids must be unique")
    return out
