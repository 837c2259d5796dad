"""Training, cross-validation and prediction on CAMELYON-like synthetic bags.

Normal bags hold N(0, 1) features of 50-300 instances; tumour bags have 5-30 % of their instances shifted by
+3 along 4 of the 64 dimensions. Every head must separate them with 5-fold CV (pooled out-of-fold AUC >= 0.95),
and the attention heads must put more attention on the shifted instances.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from slidestream.errors import ConfigError
from slidestream.mil.heads import MILHead, list_heads
from slidestream.evaluation.metrics import roc_auc
from slidestream.mil.splits import stratified_kfold
from slidestream.mil.train import (
    TrainConfig,
    cross_validate,
    predict,
    predict_ensemble,
    predict_logits,
    train_head,
)

DIM = 64
SHIFT = 3.0
SHIFT_DIMS = 4

# Small widths keep CPU training quick; lr/epochs per head are what these heads need on this data.
HEAD_SETTINGS = {
    "abmil": (dict(hidden_dim=64, attn_dim=32), 2e-3, 5),
    "clam_sb": (dict(hidden_dim=64, attn_dim=32), 2e-3, 5),
    "clam_mb": (dict(hidden_dim=64, attn_dim=32), 2e-3, 5),
    "dsmil": (dict(query_dim=32), 1e-2, 5),
    "transmil": (dict(hidden_dim=64, n_heads=4), 3e-3, 3),
    "mean_pool": (dict(hidden_dim=64), 5e-3, 5),
    "max_pool": (dict(hidden_dim=64), 5e-3, 8),
}



pytestmark = pytest.mark.usefixtures("one_torch_thread")

def make_bags(n_bags: int = 40, seed: int = 0, min_n: int = 50, max_n: int = 300):
    """CAMELYON-like bags: returns (bags list of (N, DIM) float32, labels (n,), tumour masks list of (N,) bool)."""
    rng = np.random.default_rng(seed)
    bags, labels, masks = [], [], []
    for i in range(n_bags):
        y = i % 2
        n = int(rng.integers(min_n, max_n + 1))
        x = rng.standard_normal((n, DIM)).astype(np.float32)
        mask = np.zeros(n, bool)
        if y:
            k = max(1, round(rng.uniform(0.05, 0.30) * n))
            mask[rng.choice(n, k, replace=False)] = True
            x[mask, :SHIFT_DIMS] += SHIFT
        bags.append(x)
        labels.append(y)
        masks.append(mask)
    return bags, np.asarray(labels), masks


def config_for(head: str, **overrides) -> TrainConfig:
    kw, lr, epochs = HEAD_SETTINGS[head]
    base = dict(head=head, head_kwargs=kw, lr=lr, epochs=epochs, device="cpu", patience=None, seed=0)
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def camelyon():
    return make_bags()


@pytest.fixture(scope="module")
def cv_results(camelyon):
    """Cross-validate each head once per module; tests share the results."""
    cache = {}

    def get(head):
        if head not in cache:
            bags, y, _ = camelyon
            t0 = time.perf_counter()
            cache[head] = cross_validate(bags, y, config_for(head), k=5, n_bootstrap=200)
            print(f"\n{head}: 5-fold CV in {time.perf_counter() - t0:.2f} s, OOF AUC {cache[head].metrics['auc']:.3f}")
        return cache[head]

    return get


def test_settings_cover_every_head():
    assert set(HEAD_SETTINGS) == set(list_heads())


@pytest.mark.parametrize("head", sorted(HEAD_SETTINGS))
def test_every_head_separates_tumour_bags_in_cross_validation(cv_results, camelyon, head):
    cv = cv_results(head)
    _, y, _ = camelyon
    assert cv.metrics["auc"] >= 0.95, cv.fold_metrics
    assert roc_auc(y, cv.oof_probs, n_bootstrap=0)["auc"] == pytest.approx(cv.metrics["auc"])
    assert np.isfinite(cv.oof_logits).all() and cv.oof_logits.shape == (len(y), 2)
    assert len(cv.models) == 5 and [m["fold"] for m in cv.fold_metrics] == list(range(5))
    assert all(len(r.history) == config_for(head).epochs for r in cv.results)


@pytest.mark.parametrize("head", ["abmil", "clam_sb", "clam_mb"])
def test_attention_is_higher_on_tumour_instances(cv_results, camelyon, head):
    cv = cv_results(head)
    bags, y, masks = camelyon
    hits = total = 0
    for fold, model in enumerate(cv.models):
        _, val = cv.splits.indices(fold)
        pos = [i for i in val if y[i] == 1]
        _, scores = predict_logits(model, [bags[i] for i in pos])
        for i, s in zip(pos, scores):
            total += 1
            hits += s[masks[i]].mean() > s[~masks[i]].mean()
    assert total == int(y.sum())
    assert hits / total >= 0.9


def test_same_seed_same_splits_and_predictions(cv_results, camelyon):
    bags, y, _ = camelyon
    first = cv_results("abmil")
    again = cross_validate(bags, y, config_for("abmil"), k=5, n_bootstrap=0)
    assert np.array_equal(first.splits.fold, again.splits.fold)
    np.testing.assert_allclose(first.oof_probs, again.oof_probs, atol=1e-6, rtol=0)
    for a, b in zip(first.models, again.models):
        for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
            torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=name)
    other = cross_validate(bags, y, config_for("abmil", seed=1), k=5, n_bootstrap=0)
    assert not np.array_equal(other.splits.fold, first.splits.fold)
    assert np.abs(other.oof_probs - first.oof_probs).max() > 1e-3


@pytest.mark.parametrize("head", ["transmil", "dsmil", "clam_mb"])
def test_training_is_deterministic_for_complex_heads(camelyon, head):
    bags, y, _ = camelyon
    cfg = config_for(head, epochs=1)
    a = train_head(bags[:12], y[:12], cfg)
    b = train_head(bags[:12], y[:12], cfg)
    pa, sa = predict(a.model, bags[12:16])
    pb, sb = predict(b.model, bags[12:16])
    np.testing.assert_allclose(pa, pb, atol=1e-6, rtol=0)
    np.testing.assert_allclose(sa[0], sb[0], atol=1e-6, rtol=0)


def test_training_leaves_caller_rng_and_threads_alone(camelyon):
    bags, y, _ = camelyon
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    state = torch.get_rng_state()
    train_head(bags[:6], y[:6], config_for("mean_pool", epochs=1, num_threads=1))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == det


def test_early_stopping_restores_the_best_epoch(camelyon):
    bags, y, _ = camelyon
    # Validation labels are inverted: the better the model learns, the worse its validation loss.
    cfg = config_for("abmil", epochs=12, lr=5e-3, patience=2)
    res = train_head(bags[:30], y[:30], cfg, bags[30:], 1 - y[30:])
    assert len(res.history) == res.best_epoch + 2 < 12
    assert all("val_loss" in r and "val_auc" in r for r in res.history)
    logits, _ = predict_logits(res.model, bags[30:])
    loss = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(1 - y[30:]))
    assert float(loss) == pytest.approx(res.history[res.best_epoch - 1]["val_loss"], abs=1e-5)


def test_monitor_val_auc_and_progress_callback(camelyon):
    bags, y, _ = camelyon
    seen = []
    cfg = config_for("mean_pool", epochs=3, patience=5, monitor="val_auc")
    res = train_head(bags[:30], y[:30], cfg, bags[30:], y[30:], progress=lambda e, n, r: seen.append((e, n, r)))
    assert [s[0] for s in seen] == [1, 2, 3] and all(s[1] == 3 for s in seen)
    assert seen[-1][2] is res.history[-1]
    assert 1 <= res.best_epoch <= 3


def test_large_bags_are_subsampled_for_training_only():
    rng = np.random.default_rng(1)
    bags = [rng.standard_normal((3000, DIM)).astype(np.float32) for _ in range(4)]
    y = np.array([0, 1, 0, 1])
    seen = []

    def record(module, args):
        if isinstance(module, MILHead) and module.training:
            seen.append(args[0].shape[0])

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        res = train_head(bags, y, config_for("abmil", epochs=2, max_instances=100))
    finally:
        handle.remove()
    assert seen == [100] * 8
    _, scores = predict(res.model, bags)
    assert [len(s) for s in scores] == [3000] * 4


def test_lazy_float16_bag_sequence(camelyon):
    bags, y, _ = camelyon

    class Lazy:
        """Reads one bag at a time, as a store-backed sequence would."""

        def __init__(self):
            self.reads = 0

        def __len__(self):
            return 10

        def __getitem__(self, i):
            self.reads += 1
            return bags[i].astype(np.float16)

    lazy = Lazy()
    res = train_head(lazy, y[:10], config_for("mean_pool", epochs=2))
    assert lazy.reads == 1 + 2 * 10  # one look at the first bag for D, then one read per step
    probs, _ = predict(res.model, lazy)
    assert probs.shape == (10,) and np.all((probs >= 0) & (probs <= 1))


def test_predict_temperature_and_ensemble(cv_results, camelyon):
    bags, _, _ = camelyon
    cv = cv_results("abmil")
    model = cv.models[0]
    logits, _ = predict_logits(model, bags[:8])
    p2, _ = predict(model, bags[:8], temperature=2.0)
    np.testing.assert_allclose(p2, torch.softmax(torch.from_numpy(logits).double() / 2.0, 1)[:, 1].numpy(), atol=1e-6)
    mean, std, scores = predict_ensemble(cv.models, bags[:8])
    single = np.stack([predict(m, bags[:8])[0] for m in cv.models])
    np.testing.assert_allclose(mean, single.mean(0), atol=1e-6)
    np.testing.assert_allclose(std, single.std(0), atol=1e-6)
    assert [len(s) for s in scores] == [len(b) for b in bags[:8]]
    ens_p, _ = predict(cv.ensemble(), bags[:8])
    np.testing.assert_allclose(ens_p, mean, atol=1e-6)


def test_cross_validate_with_given_splits_and_inner_validation(camelyon):
    bags, y, _ = camelyon
    splits = stratified_kfold(y, 4, seed=9)
    cv = cross_validate(bags, y, config_for("mean_pool", epochs=3, patience=2), splits=splits,
                        inner_val_fraction=0.25, n_bootstrap=0)
    assert cv.splits is splits and len(cv.models) == 4
    assert all("val_loss" in r.history[0] for r in cv.results)
    with pytest.raises(ConfigError):
        cross_validate(bags[:-1], y[:-1], config_for("mean_pool"), splits=splits)


def test_three_class_training():
    rng = np.random.default_rng(2)
    bags, y = [], []
    for i in range(24):
        c = i % 3
        x = rng.standard_normal((int(rng.integers(30, 80)), DIM)).astype(np.float32)
        if c:
            x[: len(x) // 4, 4 * c : 4 * c + 4] += SHIFT  # class 1 and 2 differ in which dims shift
        bags.append(x)
        y.append(c)
    y = np.asarray(y)
    res = train_head(bags, y, config_for("abmil", epochs=8))
    logits, _ = predict_logits(res.model, bags)
    assert logits.shape == (24, 3)
    assert np.mean(logits.argmax(1) == y) > 0.8


def test_config_validation_and_round_trip():
    cfg = TrainConfig(head="clam-sb", class_weight=[1.0, 2.0], max_instances=None)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    for bad in (dict(head="nope"), dict(epochs=0), dict(lr=0), dict(monitor="acc"), dict(class_weight="x"),
                dict(patience=0), dict(max_instances=0), dict(n_classes=1)):
        with pytest.raises(ConfigError):
            TrainConfig(**bad)
    with pytest.raises(ConfigError, match="unknown"):
        TrainConfig.from_dict({"head": "abmil", "bogus": 1})
    with pytest.raises(ConfigError, match="one label per bag"):
        train_head([np.zeros((3, 4), np.float32)], [0, 1], TrainConfig(device="cpu"))
    with pytest.raises(ConfigError, match="feature sizes"):
        train_head([np.zeros((3, 4), np.float32), np.zeros((3, 5), np.float32)], [0, 1],
                   TrainConfig(device="cpu", epochs=1))
    with pytest.raises(ConfigError, match="class_weight"):
        train_head([np.zeros((3, 4), np.float32)] * 2, [0, 1], TrainConfig(device="cpu", class_weight=[1.0]))


def test_bfloat16_precision_trains_under_cpu_autocast_close_to_float32(camelyon):
    """precision="bfloat16" really autocasts on a CPU (the weights differ from float32 training, and TransMIL's
    Nyström attention then runs in bfloat16), learns as well, and is recorded only when asked for."""
    bags, y, _ = camelyon
    seen = []
    from slidestream.mil.heads import transmil as transmil_module

    original = transmil_module.nystrom_attention

    def spy(q, k, v, *args, **kwargs):
        out = original(q, k, v, *args, **kwargs)
        seen.append(out.dtype)
        return out

    results = {}
    for precision in ("float32", "bfloat16"):
        cfg = config_for("transmil", precision=precision)
        transmil_module.nystrom_attention = spy
        try:
            results[precision] = train_head(bags[:30], y[:30], cfg)
        finally:
            transmil_module.nystrom_attention = original
        assert cfg.to_dict()["precision"] == precision
        assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert torch.float32 in seen and torch.bfloat16 in seen
    a, b = (results[p].model.state_dict() for p in ("float32", "bfloat16"))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert all(v.dtype == torch.float32 for v in b.values())  # autocast leaves the weights in float32
    pa, _ = predict(results["float32"].model, bags[30:])
    pb, _ = predict(results["bfloat16"].model, bags[30:])
    assert roc_auc(y[30:], pa)["auc"] > 0.9 and roc_auc(y[30:], pb)["auc"] > 0.9
    assert np.abs(pa - pb).max() < 0.2
    assert "precision" not in TrainConfig().to_dict()  # "auto" keeps the checkpoint config as it was
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="float16")


def imbalanced_bags(n_neg: int, n_pos: int, seed: int, neg_size: int | None = None, pos_size: int | None = None):
    """Weak-signal bags: 30 % of a tumour bag's instances shifted by +1 along 2 of 16 dimensions."""
    rng = np.random.default_rng(seed)
    bags, labels = [], []
    for i in range(n_neg + n_pos):
        y = int(i >= n_neg)
        size = (pos_size if y else neg_size) or int(rng.integers(20, 60))
        x = rng.standard_normal((size, 16)).astype(np.float32)
        if y:
            x[rng.random(size) < 0.3, :2] += 1.0
        bags.append(x)
        labels.append(y)
    return bags, np.asarray(labels)


def test_class_balance_changes_the_model_and_raises_minority_recall():
    train_bags, train_y = imbalanced_bags(40, 5, seed=0)
    test_bags, test_y = imbalanced_bags(50, 50, seed=1)
    models, recall = {}, {}
    for balance in ("none", "loss", "sampler"):
        cfg = TrainConfig(head="mean_pool", head_kwargs=dict(hidden_dim=16), lr=5e-3, epochs=10, device="cpu",
                          patience=None, balance=balance)
        models[balance] = train_head(train_bags, train_y, cfg).model
        p, _ = predict(models[balance], test_bags)
        recall[balance] = float(np.mean(p[test_y == 1] >= 0.5))
    for a, b in (("none", "loss"), ("none", "sampler"), ("loss", "sampler")):
        diff = max(float((x - y).abs().max()) for x, y in zip(models[a].state_dict().values(),
                                                               models[b].state_dict().values()))
        assert diff > 1e-3, (a, b)
    # Unbalanced, 5 tumour bags against 40 normal ones: the model calls almost nothing tumour.
    assert recall["none"] <= 0.2, recall
    assert recall["loss"] >= recall["none"] + 0.4 and recall["sampler"] >= recall["none"] + 0.4, recall


def test_loss_balance_weights_are_normalised_and_class_weights_matter_only_when_balancing():
    bags, y = imbalanced_bags(10, 3, seed=2)

    def weights(**kw):
        cfg = TrainConfig(head="mean_pool", head_kwargs=dict(hidden_dim=8), lr=5e-3, epochs=2, device="cpu",
                          patience=None, **kw)
        return torch.cat([p.flatten() for p in train_head(bags, y, cfg).model.state_dict().values()])

    none = weights(balance="none")
    # weights are normalised to mean 1 over the training bags: equal class weights of any size change nothing
    assert torch.equal(weights(balance="loss", class_weight=None), none)
    assert torch.equal(weights(balance="loss", class_weight=[3.0, 3.0]), none)
    # without balancing the class weights are not used; with it, they are
    assert torch.equal(weights(balance="none", class_weight=[1.0, 50.0]), none)
    heavy = weights(balance="loss", class_weight=[1.0, 50.0])
    assert not torch.allclose(heavy, none) and not torch.allclose(heavy, weights(balance="loss"))
    with pytest.raises(ConfigError, match="weight 0"):
        train_head(bags, y, TrainConfig(device="cpu", balance="loss", class_weight=[0.0, 0.0]))
    with pytest.raises(ConfigError, match="balance"):
        TrainConfig(balance="oversample")


def test_sampler_draws_classes_equally_often():
    # normal bags have 5 instances, tumour bags 7, so the forward hook sees which class each step drew
    bags, y = imbalanced_bags(24, 4, seed=3, neg_size=5, pos_size=7)
    seen = []

    def record(module, args):
        if isinstance(module, MILHead) and module.training:
            seen.append(args[0].shape[0])

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        train_head(bags, y, config_for("mean_pool", epochs=20, balance="sampler"))
        sampled = seen.copy()
        seen.clear()
        train_head(bags, y, config_for("mean_pool", epochs=2, balance="loss"))
    finally:
        handle.remove()
    assert len(sampled) == 20 * len(y)  # n draws an epoch, with replacement
    assert 0.4 < np.mean(np.asarray(sampled) == 7) < 0.6
    assert sorted(seen) == sorted(np.where(y == 1, 7, 5).tolist() * 2)  # loss balance: every bag once an epoch
