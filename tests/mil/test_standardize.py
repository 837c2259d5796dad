"""Feature standardisation: streaming fit, and one normaliser per cross-validation fold fitted on its training bags."""

from __future__ import annotations

import numpy as np
import pytest
from slidestream.errors import ConfigError
from slidestream.mil.inference import predict_logits
from slidestream.mil.standardize import fit_feature_norm
from slidestream.mil.train import TrainConfig, cross_validate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_streaming_fit_equals_the_pooled_statistics_even_far_from_zero():
    rng = np.random.default_rng(0)
    bags = [(1e4 + rng.standard_normal((int(rng.integers(1, 50)), 5)) * [1, 2, 3, 0, 1e-3]).astype(np.float32)
            for _ in range(30)]
    pooled = np.concatenate(bags).astype(np.float64)
    norm = fit_feature_norm(bags)
    np.testing.assert_allclose(norm.mean, pooled.mean(0), rtol=1e-7)
    np.testing.assert_allclose(norm.std[:3], pooled.std(0)[:3], rtol=1e-5)
    assert norm.std[3] == 1.0  # constant dimension keeps scale 1
    assert norm.apply(bags[0]).dtype == np.float32
    with pytest.raises(ConfigError):
        fit_feature_norm([])
    with pytest.raises(ConfigError, match="feature sizes"):
        fit_feature_norm([np.zeros((2, 3)), np.zeros((2, 4))])


def test_cross_validation_fits_each_folds_normaliser_on_its_training_bags_only():
    rng = np.random.default_rng(1)
    # every bag sits at its own offset, so a normaliser's mean tells which bags it saw
    bags = [(rng.standard_normal((20, 4)) + 10.0 * i).astype(np.float32) for i in range(12)]
    y = np.array([0, 1] * 6)
    cfg = TrainConfig(head="mean_pool", head_kwargs={"hidden_dim": 4}, epochs=1, device="cpu", patience=None)
    cv = cross_validate(bags, y, cfg, k=3, standardize=True, n_bootstrap=0)
    assert len(cv.feature_norms) == 3
    for fold, norm in enumerate(cv.feature_norms):
        train_idx, val_idx = cv.splits.indices(fold)
        np.testing.assert_allclose(norm.mean, fit_feature_norm([bags[i] for i in train_idx]).mean, rtol=1e-6)
        # the out-of-fold logits are the fold model on its own normaliser's view of the held-out bags
        logits, _ = predict_logits(cv.models[fold], [bags[i] for i in val_idx], feature_norms=[norm])
        np.testing.assert_allclose(cv.oof_logits[val_idx], logits, atol=1e-6)
    assert cross_validate(bags, y, cfg, k=3, n_bootstrap=0).feature_norms is None


def test_cross_validation_keeps_patients_in_one_fold_including_the_inner_split():
    rng = np.random.default_rng(2)
    bags = [rng.standard_normal((10, 4)).astype(np.float32) for _ in range(24)]
    y = np.array([0, 1] * 12)
    groups = [f"p{i // 4}" for i in range(24)]  # 6 patients of 4 slides, 2 of each class
    cfg = TrainConfig(head="mean_pool", head_kwargs={"hidden_dim": 4}, epochs=2, device="cpu", patience=1)
    cv = cross_validate(bags, y, cfg, k=3, groups=groups, inner_val_fraction=0.5, n_bootstrap=0)
    for p in set(groups):
        assert len({int(cv.splits.fold[i]) for i in range(24) if groups[i] == p}) == 1
    assert all("val_loss" in r.history[0] for r in cv.results)
    with pytest.raises(ConfigError, match="patient"):
        cross_validate(bags, y, cfg, splits=cv.splits, groups=[f"q{i % 5}" for i in range(24)])
