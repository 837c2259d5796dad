"""Safetensors checkpoints: round trips, ensembles, atomic writes, and refusing pickles."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from slidestream.errors import CheckpointError, ConfigError
from slidestream.mil.checkpoint import checkpoint_classes, load_checkpoint, save_checkpoint
from slidestream.mil.heads import MILEnsemble, get_head, list_heads
from slidestream.mil.train import TrainConfig, predict, predict_ensemble

D = 24
KW = {
    "abmil": dict(hidden_dim=16, attn_dim=8),
    "clam_sb": dict(hidden_dim=16, attn_dim=8, k_sample=4),
    "clam_mb": dict(hidden_dim=16, attn_dim=8),
    "transmil": dict(hidden_dim=16, n_heads=2),
    "dsmil": dict(query_dim=8, passing_v=True),
    "mean_pool": dict(hidden_dim=16),
    "max_pool": dict(hidden_dim=0),
}


def bags(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((int(rng.integers(5, 60)), D)).astype(np.float32) for _ in range(n)]


def head(name="abmil", seed=0):
    torch.manual_seed(seed)
    return get_head(name, D, 2, **KW[name]).eval()


class _CreatesFile:
    """Pickle payload: unpickling it calls open(path, "w"), i.e. creates a file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("name", sorted(KW))
def test_round_trip_gives_identical_predictions(tmp_path, name):
    assert set(KW) == set(list_heads())
    model = head(name)
    cfg = TrainConfig(head=name, head_kwargs=KW[name], epochs=3, seed=5)
    meta = {"encoder": "uni", "mpp": 0.5, "tile_size": 224, "software": "slidestream 0.1.0"}
    out = save_checkpoint(tmp_path / "ckpt", model, cfg, meta, temperature=1.7)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    loaded, cfg2, meta2 = load_checkpoint(out)
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.head_kwargs == model.head_kwargs and loaded.temperature == 1.7
    assert cfg2 == cfg and meta2 == meta
    b = bags()
    p1, s1 = predict(model, b, temperature=1.7)
    p2, s2 = predict(loaded, b)  # temperature comes from the checkpoint
    np.testing.assert_allclose(p1, p2, atol=1e-6)
    for x, y in zip(s1, s2):
        np.testing.assert_allclose(x, y, atol=1e-6)


def test_config_json_is_readable(tmp_path):
    save_checkpoint(tmp_path, head(), None, {"encoder": "resnet50_trunc"})
    doc = json.loads((tmp_path / "config.json").read_text())
    assert doc["head"] == "abmil" and doc["in_dim"] == D and doc["n_classes"] == 2
    assert doc["head_kwargs"] == KW["abmil"] and doc["temperature"] == 1.0 and doc["ensemble_size"] == 1
    assert doc["meta"] == {"encoder": "resnet50_trunc"} and doc["train_config"] is None
    _, cfg, _ = load_checkpoint(tmp_path / "model.safetensors")  # a file inside the directory works too
    assert cfg is None


def test_balance_is_recorded_and_older_configs_without_it_load(tmp_path):
    save_checkpoint(tmp_path / "a", head(), TrainConfig(balance="sampler"))
    doc = json.loads((tmp_path / "a" / "config.json").read_text())
    assert doc["train_config"]["balance"] == "sampler"
    del doc["train_config"]["balance"]  # as written before the option existed
    (tmp_path / "a" / "config.json").write_text(json.dumps(doc))
    _, cfg, _ = load_checkpoint(tmp_path / "a")
    assert cfg.balance == "loss"


def test_ensemble_round_trip(tmp_path):
    members = [head("clam_sb", seed=s) for s in range(3)]
    save_checkpoint(tmp_path / "ens", members, meta={"folds": 3})
    loaded, _, meta = load_checkpoint(tmp_path / "ens")
    assert isinstance(loaded, MILEnsemble) and len(loaded.members) == 3 and meta == {"folds": 3}
    b = bags(seed=1)
    m1, sd1, sc1 = predict_ensemble(members, b)
    m2, sd2, sc2 = predict_ensemble(loaded, b)
    np.testing.assert_allclose(m1, m2, atol=1e-6)
    np.testing.assert_allclose(sd1, sd2, atol=1e-6)
    assert np.all(sd1 > 0)  # differently initialised members disagree
    np.testing.assert_allclose(sc1[0], sc2[0], atol=1e-6)


def test_malicious_pickle_is_refused_and_never_executed(tmp_path):
    payload = pickle.dumps(_CreatesFile(tmp_path / "proof.txt"))
    # The payload is real: unpickling it does create its file.
    pickle.loads(payload)
    assert (tmp_path / "proof.txt").exists()

    marker = tmp_path / "pwned.txt"
    payload = pickle.dumps(_CreatesFile(marker))
    evil = tmp_path / "evil"
    evil.mkdir()
    for name in ("model.pt", "weights.pth", "pytorch_model.bin", "model.ckpt"):
        (evil / name).write_bytes(payload)
        with pytest.raises(CheckpointError, match="pickle"):
            load_checkpoint(evil / name)
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(evil)  # a directory of pickles, no config.json

    # A valid config.json whose weights file is a pickle in disguise.
    disguised = tmp_path / "disguised"
    save_checkpoint(disguised, head())
    (disguised / "model.safetensors").write_bytes(payload)
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(disguised)
    # A config.json pointing at a pickle.
    doc = json.loads((disguised / "config.json").read_text())
    doc["weights"] = "model.pt"
    (disguised / "model.pt").write_bytes(payload)
    (disguised / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError):
        load_checkpoint(disguised)
    # torch.save files (zip archives holding a pickle) are refused as well.
    torch.save({"w": torch.zeros(2)}, disguised / "model.safetensors")
    doc["weights"] = "model.safetensors"
    (disguised / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(disguised)
    with pytest.raises(CheckpointError):
        save_checkpoint(tmp_path / "out.pt", head())
    assert not marker.exists()


def test_damaged_or_mismatched_checkpoints_are_refused(tmp_path):
    save_checkpoint(tmp_path / "a", head())
    weights = tmp_path / "a" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="hash"):
        load_checkpoint(tmp_path / "a")

    save_checkpoint(tmp_path / "b", head())
    doc = json.loads((tmp_path / "b" / "config.json").read_text())
    doc["head_kwargs"]["hidden_dim"] = 32
    (tmp_path / "b" / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(tmp_path / "b")

    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "c")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "missing")


def test_meta_must_be_json(tmp_path):
    with pytest.raises(ConfigError):
        save_checkpoint(tmp_path, head(), meta={"bad": object()})
    assert not (tmp_path / "config.json").exists()
    # Metrics dicts carry NaN for undefined values and NumPy scalars: stored as strict JSON.
    save_checkpoint(tmp_path, head(), meta={"auc": float("nan"), "n": np.int64(3), "mpp": np.float32(0.5),
                                            "folds": (1, 2)})
    json.loads((tmp_path / "config.json").read_text(), parse_constant=pytest.fail)  # no NaN literals
    _, _, meta = load_checkpoint(tmp_path)
    assert meta == {"auc": None, "n": 3, "mpp": 0.5, "folds": [1, 2]}


def test_resaving_replaces_in_place(tmp_path):
    save_checkpoint(tmp_path, head(seed=0))
    save_checkpoint(tmp_path, head(seed=1), temperature=2.0)
    loaded, _, _ = load_checkpoint(tmp_path)
    ref = head(seed=1)
    for (k, v), (k2, v2) in zip(loaded.state_dict().items(), ref.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert loaded.temperature == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_class_names_are_saved_in_order_and_loaded_with_the_model(tmp_path):
    torch.manual_seed(0)
    members = [get_head("clam_mb", D, 3, **KW["clam_mb"]) for _ in range(2)]
    out = save_checkpoint(tmp_path / "named", members, classes=["LUSC", "LUAD", "MESO"])
    assert json.loads((out / "config.json").read_text())["classes"] == ["LUSC", "LUAD", "MESO"]
    loaded, _, _ = load_checkpoint(out)
    assert loaded.classes == ["LUSC", "LUAD", "MESO"] and checkpoint_classes(out) == ["LUSC", "LUAD", "MESO"]
    # re-saving the loaded model keeps them; indices are the default
    again = save_checkpoint(tmp_path / "again", loaded)
    assert checkpoint_classes(again) == ["LUSC", "LUAD", "MESO"]
    plain = save_checkpoint(tmp_path / "plain", head())
    assert checkpoint_classes(plain) == [0, 1] and load_checkpoint(plain)[0].classes == [0, 1]


@pytest.mark.parametrize("classes", [["A", "B"], ["A", "A", "B"], [1, 0, 2], ["A", 1, "B"], ["A", "", "B"]])
def test_classes_that_do_not_fit_the_head_are_refused(tmp_path, classes):
    model = get_head("abmil", D, 3, **KW["abmil"])
    with pytest.raises(ConfigError, match="distinct class names"):
        save_checkpoint(tmp_path / "bad", model, classes=classes)


def test_checkpoints_from_before_classes_load_with_indices_and_damaged_classes_are_refused(tmp_path):
    out = save_checkpoint(tmp_path / "old", head(), classes=["Normal", "Tumor"])
    doc = json.loads((out / "config.json").read_text())
    del doc["classes"]
    (out / "config.json").write_text(json.dumps(doc))
    assert load_checkpoint(out)[0].classes == [0, 1] and checkpoint_classes(out) == [0, 1]
    doc["classes"] = ["Tumor"]
    (out / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="classes"):
        load_checkpoint(out)
    with pytest.raises(CheckpointError, match="classes"):
        checkpoint_classes(out)
