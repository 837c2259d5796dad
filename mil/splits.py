"""Stratified k-fold splits with a pinned seed, written to and read from CSV or JSON.

The fold assignment is computed here (not by scikit-learn) so the same labels and seed give the same folds
across library versions: within each class the samples are shuffled by a seeded NumPy ``Generator`` and dealt
round-robin to the folds, each class starting where the previous one stopped so fold sizes differ by at most one.
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

__all__ = ["Splits", "stratified_kfold", "read_splits"]

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
    """

    fold: np.ndarray
    labels: np.ndarray
    ids: tuple[str, ...]
    k: int
    seed: int | None = None

    def __post_init__(self) -> None:
        n = len(self.fold)
        if len(self.labels) != n or len(self.ids) != n:
            raise ConfigError(f"splits: {n} folds, {len(self.labels)} labels and {len(self.ids)} ids must match")
        if n and (self.fold.min() < 0 or self.fold.max() >= self.k):
            raise ConfigError(f"splits: fold indices must lie in [0, {self.k})")

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
                {"id": i, "label": int(y), "fold": int(f)} for i, y, f in zip(self.ids, self.labels, self.fold)
            ],
        }
        return atomic_write(path, json.dumps(doc, indent=1) + "\n")

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write columns ``id,label,fold`` atomically; return the path. ``k`` and ``seed`` go in JSON only."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["id", "label", "fold"])
        for i, y, f in zip(self.ids, self.labels, self.fold):
            writer.writerow([i, int(y), int(f)])
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
                     ids: Sequence[str] | None = None) -> Splits:
    """Assign samples to ``k`` folds with the class proportions of the whole set.

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

    Returns
    -------
    Splits

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
    fold = np.empty(n, dtype=np.int64)
    start = 0
    for c in classes:
        members = np.flatnonzero(y == c)
        members = members[rng.permutation(len(members))]
        fold[members] = (start + np.arange(len(members))) % k
        start = (start + len(members)) % k
    return Splits(fold, y, _ids(ids, n), int(k), int(seed))


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
    return Splits(fold, _int_labels(labels), tuple(ids), k, None if seed is None else int(seed))


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
