"""Stratified k-fold splits and their CSV/JSON files."""

from __future__ import annotations

import numpy as np
import pytest
from slidestream.errors import ConfigError
from slidestream.mil.splits import read_splits, stratified_kfold


def labels(n_pos=23, n_neg=41, seed=0):
    y = np.array([1] * n_pos + [0] * n_neg)
    return np.random.default_rng(seed).permutation(y)


def test_folds_partition_the_samples_and_keep_class_proportions():
    y = labels()
    s = stratified_kfold(y, k=5, seed=7)
    seen = []
    for fold in range(5):
        train, val = s.indices(fold)
        assert np.intersect1d(train, val).size == 0
        assert np.union1d(train, val).size == len(y)
        seen.append(val)
        for c in (0, 1):
            expected = np.sum(y == c) / 5
            assert abs(np.sum(y[val] == c) - expected) < 1
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(len(y)))
    sizes = np.bincount(s.fold)
    assert sizes.max() - sizes.min() <= 1


def test_same_seed_same_folds_other_seed_other_folds():
    y = labels()
    a, b, c = stratified_kfold(y, 5, seed=3), stratified_kfold(y, 5, seed=3), stratified_kfold(y, 5, seed=4)
    assert np.array_equal(a.fold, b.fold)
    assert not np.array_equal(a.fold, c.fold)


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_round_trip_through_files(tmp_path, suffix):
    y = labels()
    ids = [f"slide_{i:03d}" for i in range(len(y))]
    s = stratified_kfold(y, k=4, seed=11, ids=ids)
    path = s.save(tmp_path / f"splits{suffix}")
    r = read_splits(path)
    assert np.array_equal(r.fold, s.fold) and np.array_equal(r.labels, s.labels)
    assert r.ids == tuple(ids) and r.k == 4
    assert r.seed == (11 if suffix == ".json" else None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"splits{suffix}"]  # no temp files left


def test_csv_with_slide_column_from_a_manifest(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_text("slide,label,fold,site\na.svs,1,0,x\nb.svs,0,1,y\nc.svs,1,1,x\nd.svs,0,0,y\n")
    s = read_splits(path)
    assert s.ids == ("a.svs", "b.svs", "c.svs", "d.svs") and s.k == 2
    assert np.array_equal(s.indices(1)[1], [1, 2])


def test_errors_and_warnings(tmp_path):
    with pytest.raises(ConfigError):
        stratified_kfold([0, 1, 0], k=5)
    with pytest.raises(ConfigError):
        stratified_kfold([0.5, 1, 0], k=2)
    with pytest.raises(ConfigError, match="unique"):
        stratified_kfold([0, 1, 0, 1], k=2, ids=["a", "a", "b", "c"])
    with pytest.warns(UserWarning, match="only 2"):
        stratified_kfold([1, 1] + [0] * 10, k=5)
    bad = tmp_path / "bad.csv"
    bad.write_text("id,label\na,1\n")
    with pytest.raises(ConfigError, match="fold"):
        read_splits(bad)
    s = stratified_kfold(labels(), 3)
    with pytest.raises(ConfigError):
        s.indices(3)
    with pytest.raises(ConfigError):
        s.save(tmp_path / "x.txt")


def test_groups_keep_every_patient_in_one_fold_and_stay_stratified():
    rng = np.random.default_rng(5)
    sizes = rng.integers(1, 4, size=30)  # 30 patients with 1-3 slides each
    groups = [f"p{i}" for i, s in enumerate(sizes) for _ in range(s)]
    y = np.array([int(g[1:]) % 3 == 0 for g in groups], dtype=np.int64)  # a third of the patients have tumour
    s = stratified_kfold(y, k=5, seed=2, groups=groups)
    for p in set(groups):
        assert len({int(s.fold[i]) for i, g in enumerate(groups) if g == p}) == 1
    for c in (0, 1):
        per_fold = np.bincount(s.fold[y == c], minlength=5)
        assert per_fold.max() - per_fold.min() <= 3, per_fold
    assert s.groups == tuple(groups)
    again = stratified_kfold(y, k=5, seed=2, groups=groups)
    assert np.array_equal(s.fold, again.fold)


def test_without_shared_patients_the_folds_are_the_ungrouped_ones():
    y = labels()
    plain = stratified_kfold(y, 5, seed=4)
    for groups in ([None] * len(y), [""] * len(y), [f"p{i}" for i in range(len(y))]):
        assert np.array_equal(stratified_kfold(y, 5, seed=4, groups=groups).fold, plain.fold)


def test_grouped_splits_round_trip_and_refuse_split_patients(tmp_path):
    y = np.array([0, 0, 1, 1, 0, 1, 0, 1])
    groups = ["a", "a", "b", "b", None, "c", "d", "e"]
    s = stratified_kfold(y, 2, seed=0, groups=groups)
    for suffix in (".json", ".csv"):
        back = read_splits(s.save(tmp_path / f"s{suffix}"))
        assert np.array_equal(back.fold, s.fold)
        assert [g for g in back.groups if not g.startswith("\0")] == ["a", "a", "b", "b", "c", "d", "e"]
    assert "\0" not in (tmp_path / "s.csv").read_text()
    with pytest.raises(ConfigError, match="patients"):
        stratified_kfold(y, 3, groups=["a"] * 4 + ["b"] * 4)
    bad = tmp_path / "bad.csv"
    bad.write_text("id,label,fold,patient\nx,0,0,p\ny,1,1,p\nz,0,1,q\n")
    with pytest.raises(ConfigError, match="'p'"):
        read_splits(bad)
