"""Fault injection: checkpoint configs checked at the door.

A checkpoint trained through the real command line (``trained`` fixture) is copied, one key of its
``config.json`` (or its weights) is planted with a bad value, and ``slidestream predict`` is run with it. Each
plant must end in exit status 1 with one line naming the config file and the key, before anything is written:
every file of the batch (stores, checkpoint, output folder) keeps its bytes and its modification time. Before the
checks, a negative temperature silently inverted every diagnosis (P 0.009 became 0.991, exit 0), a zero, NaN or
1e-300 one wrote NaN probabilities, and an ``ensemble_size`` of a million built a million heads.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from slidestream.errors import CheckpointError
from slidestream.mil import load_checkpoint

from .conftest import cli, flat, snapshot

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def batch(trained, tmp_path):
    """A private copy of the trained batch: ``(root, manifest, stores, model)`` (predict reads no slide)."""
    shutil.copy(trained.manifest, tmp_path / "manifest.csv")
    shutil.copytree(trained.stores, tmp_path / "stores")
    shutil.copytree(trained.model, tmp_path / "model")
    return tmp_path, tmp_path / "manifest.csv", tmp_path / "stores", tmp_path / "model"


def _plant(model: Path, edit) -> Path:
    cfg = model / "config.json"
    doc = json.loads(cfg.read_text())
    edit(doc)
    # allow_nan: NaN and Infinity are planted as the JSON literals a hand edit or another writer could produce
    cfg.write_text(json.dumps(doc, allow_nan=True))
    return cfg


def _predict(root: Path, manifest: Path, stores: Path, model: Path):
    return cli("predict", manifest, "--stores", stores, "--model", model, "--out", root / "pred")


def test_the_unplanted_checkpoint_predicts(batch):
    root, manifest, stores, model = batch
    r = _predict(root, manifest, stores, model)
    assert r.exit_code == 0, r.output
    assert (root / "pred" / "predictions.csv").is_file()


def _set(path: str, value):
    def edit(doc):
        *parents, last = path.split(".")
        node = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if value is _DELETE:
            del node[last]
        else:
            node[int(last) if isinstance(node, list) else last] = value
    return edit


_DELETE = object()

PLANTS = {
    # key named in the message: (path of the planted value, value)
    "temperature -1": ("temperature", "temperature", -1.0),
    "temperature 0": ("temperature", "temperature", 0.0),
    "temperature NaN": ("temperature", "temperature", float("nan")),
    "temperature Infinity": ("temperature", "temperature", float("inf")),
    "temperature 1e-300": ("temperature", "temperature", 1e-300),
    "temperature as text": ("temperature", "temperature", "1.5"),
    "temperature null": ("temperature", "temperature", None),
    "ensemble_size 10^6": ("ensemble_size", "ensemble_size", 10**6),
    "ensemble_size 1 of 2": ("ensemble_size", "ensemble_size", 1),
    "ensemble_size 2.0": ("ensemble_size", "ensemble_size", 2.0),
    "in_dim missing": ("in_dim", "in_dim", _DELETE),
    "in_dim as text": ("in_dim", "in_dim", "96"),
    "in_dim true": ("in_dim", "in_dim", True),
    "in_dim 10^12": ("in_dim", "in_dim", 10**12),
    "in_dim differs from the weights": ("in_dim 97", "in_dim", 97),
    "n_classes 10^9": ("n_classes", "n_classes", 10**9),
    "n_classes 1": ("n_classes", "n_classes", 1),
    "head unknown": ("head", "head", "gigamil"),
    "head a number": ("head", "head", 7),
    "head_kwargs a list": ("head_kwargs", "head_kwargs", [1, 2]),
    "hidden_dim 10^12": ("head_kwargs.hidden_dim", "head_kwargs.hidden_dim", 10**12),
    "dropout 5": ("head_kwargs", "head_kwargs.dropout", 5.0),
    "unknown head kwarg": ("head_kwargs", "head_kwargs.bogus", 1),
    "head kwarg NaN": ("head_kwargs.attn_dim", "head_kwargs.attn_dim", float("nan")),
    "format_version text": ("format_version", "format_version", "1"),
    "weights outside": ("weights", "weights", "../model.safetensors"),
    "weights_sha256 a number": ("weights_sha256", "weights_sha256", 12),
    "train_config unknown field": ("train_config", "train_config.bogus", 1),
    "train_config a list": ("train_config", "train_config", []),
    "meta a list": ("meta", "meta", []),
    "encoder missing": ("meta.encoder", "meta.encoder", _DELETE),
    "encoder a number": ("meta.encoder", "meta.encoder", 3),
    "feature norm std 0": ("meta.feature_norms[0].std", "meta.feature_norms.0.std.5", 0.0),
    "feature norm mean null": ("meta.feature_norms[1].mean", "meta.feature_norms.1.mean.0", None),
    "feature norm NaN": ("meta.feature_norms[0].mean", "meta.feature_norms.0.mean.3", float("nan")),
    "feature norm too short": ("meta.feature_norms[1].std", "meta.feature_norms.1.std", [1.0] * 95),
    "one feature norm for two members": ("meta.feature_norms", "meta.feature_norms", [{"mean": [0.0] * 96,
                                                                                       "std": [1.0] * 96}]),
    "tiling mpp -0.5": ("meta.tiling.mpp", "meta.tiling.mpp", -0.5),
    "tiling tile_size text": ("meta.tiling.tile_size", "meta.tiling.tile_size", "224"),
}


@pytest.mark.parametrize("case", list(PLANTS))
def test_a_planted_config_is_refused_naming_the_file_and_the_key(batch, case):
    root, manifest, stores, model = batch
    key, path, value = PLANTS[case]
    cfg = _plant(model, _set(path, value))
    before = snapshot(root)
    t0 = time.perf_counter()
    r = _predict(root, manifest, stores, model)
    seconds = time.perf_counter() - t0
    out = flat(r)
    assert r.exit_code == 1, out
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output
    assert str(cfg) in out or str(model / "model.safetensors") in out, out
    assert key in out, out
    assert snapshot(root) == before  # nothing written, nothing changed: not even the output folder was made
    assert not (root / "pred").exists()
    assert seconds < 30  # an ensemble_size of a million is refused from the header, not by building heads


def test_the_bad_temperatures_that_inverted_or_nan_ed_probabilities_are_refused_by_load_checkpoint(trained, tmp_path):
    """The library refuses them too (not only the command line), with the key in the message."""
    for value in (-1.0, 0.0, float("nan"), 1e-300, 1e9):
        model = tmp_path / f"m{value}"
        shutil.copytree(trained.model, model)
        _plant(model, _set("temperature", value))
        with pytest.raises(CheckpointError, match=r"config\.json: temperature"):
            load_checkpoint(model)
    model, _, _ = load_checkpoint(trained.model)
    assert 1e-2 <= model.temperature <= 1e2


def _rewrite_weights(model: Path, change) -> None:
    """Change the weights and make config.json's hash agree, so only the change itself is left to find."""
    weights = model / "model.safetensors"
    state = load_file(weights)
    change(state)
    save_file(state, weights)
    _plant(model, _set("weights_sha256", hashlib.sha256(weights.read_bytes()).hexdigest()))


@pytest.mark.parametrize("case", ["nan", "int", "extra member"])
def test_planted_weights_are_refused(batch, case):
    root, manifest, stores, model = batch

    def change(state):
        name = sorted(state)[0]
        if case == "nan":
            state[name] = state[name].clone()
            state[name].view(-1)[0] = float("nan")
        elif case == "int":
            state[name] = state[name].to(torch.int32)
        else:
            for k in [k for k in state if k.startswith("members.1.")]:
                state[k.replace("members.1.", "members.2.", 1)] = state[k].clone()

    _rewrite_weights(model, change)
    before = snapshot(root)
    r = _predict(root, manifest, stores, model)
    out = flat(r)
    assert r.exit_code == 1, out
    assert "Traceback" not in r.output
    expected = {"nan": "NaN or infinite", "int": "not floating point", "extra member": "ensemble_size"}[case]
    assert expected in out, out
    assert snapshot(root) == before
