"""Training and prediction from stores: per-fold feature normalisers, patients kept in one fold, member-wise
prediction, checkpoints of the former single-normaliser layout, and named classes (binary and three-class).

The stores here hold features only (written directly, no slide is tiled), so these tests are quick.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from slidestream.cli.main import main
from slidestream.errors import ConfigError
from slidestream.mil import TrainConfig, load_checkpoint
from slidestream.mil.checkpoint import checkpoint_classes
from slidestream.mil.splits import stratified_kfold
from slidestream.mil.standardize import FeatureNorm, fit_feature_norm
from slidestream.pipeline.inputs import collect_inputs
from slidestream.pipeline.predict import predict_batch, predict_stores
from slidestream.pipeline.train import train_from_stores
from slidestream.store import SlideStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DIM = 8


def feature_store(path: Path, features: np.ndarray) -> None:
    n = len(features)
    coords = np.stack([np.arange(n) * 224, np.zeros(n)], axis=1)
    store = SlideStore.create(
        path, coords=coords, tissue=np.ones(n), tile_size=None,
        slide={"mpp": 0.5, "dimensions": [224 * n, 224], "bounds": [0, 0, 224 * n, 224]},
        tiling={"mpp": 0.5, "tile_size": 224, "overlap": 0, "min_tissue": 0.5, "extent0": 224},
    )
    arr = store.create_feature_array("enc", DIM, dtype="float32", attrs={"weights": "none"})
    arr[...] = features
    done = store.group["done/features/enc"]
    done[...] = np.ones(done.shape, np.uint8)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """12 slides of 8 patients (4 with two slides); tumour slides have shifted instances; features sit far from 0
    with a different offset per slide, so a normaliser's mean shows which slides it was fitted on."""
    root = tmp_path_factory.mktemp("cohort")
    rng = np.random.default_rng(0)
    rows = ["slide,label,patient"]
    for i in range(12):
        label = int(i >= 6)
        x = rng.standard_normal((int(rng.integers(15, 40)), DIM)) + 50.0 + 3.0 * i
        if label:
            x[: len(x) // 3, :2] += 4.0
        feature_store(root / "stores" / f"s{i:02d}.zarr", x.astype(np.float32))
        (root / f"s{i:02d}.svs").touch()
        patient = f"p{i // 2}" if i % 6 < 4 else ""  # p0, p1 and p3, p4 have two slides each
        rows.append(f"s{i:02d}.svs,{label},{patient}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def trained(cohort, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("ckpt") / "model"
    cfg = TrainConfig(head="mean_pool", head_kwargs={"hidden_dim": 8}, epochs=5, lr=5e-3, device="cpu", patience=None)
    summary = train_from_stores(collect_inputs([cohort / "manifest.csv"]), cohort / "stores", "enc", ckpt, cfg,
                                folds=3)
    return summary


def features_of(cohort, slide_id):
    return SlideStore.open(cohort / "stores" / f"{slide_id}.zarr").read_features("enc")


def test_each_fold_has_a_normaliser_fitted_on_its_training_slides_only(cohort, trained):
    model, _, meta = load_checkpoint(trained.checkpoint)
    slides, folds = meta["train_slides"], np.asarray(meta["cv_fold"])
    norms = [FeatureNorm.from_dict(d) for d in meta["feature_norms"]]
    assert len(norms) == len(model.members) == 3 and "feature_norm" not in meta
    for i, norm in enumerate(norms):
        own = fit_feature_norm([features_of(cohort, s) for s, f in zip(slides, folds) if f != i])
        np.testing.assert_allclose(norm.mean, own.mean, rtol=1e-6)
        np.testing.assert_allclose(norm.std, own.std, rtol=1e-5)
        everything = fit_feature_norm([features_of(cohort, s) for s in slides])
        assert np.abs(norm.mean - everything.mean).max() > 0.5  # the held-out slides' offsets are not in it


def test_slides_of_one_patient_share_a_fold(trained):
    _, _, meta = load_checkpoint(trained.checkpoint)
    fold_of = dict(zip(meta["train_slides"], meta["cv_fold"]))
    patient_of = dict(zip(meta["train_slides"], meta["patients"]))
    for p in ("p0", "p1", "p3", "p4"):
        assert len({fold_of[s] for s, q in patient_of.items() if q == p}) == 1, p
    assert sorted(s for s, q in patient_of.items() if q is None) == ["s04", "s05", "s10", "s11"]


def test_prediction_applies_each_members_own_normaliser(cohort, trained, tmp_path):
    model, _, meta = load_checkpoint(trained.checkpoint)
    norms = [FeatureNorm.from_dict(d) for d in meta["feature_norms"]]
    stores = sorted((cohort / "stores").glob("*.zarr"))
    rows, outcomes = predict_stores(stores, trained.checkpoint, model_name="t")
    assert all(o.status == "ok" for o in outcomes)
    by_id = {r["slide_id"]: r for r in rows}
    for path in stores:
        x = features_of(cohort, path.name.removesuffix(".zarr"))
        with torch.no_grad():
            member = [torch.softmax(m(torch.from_numpy(n.apply(x))).logits.double(), 0)[1].item()
                      for m, n in zip(model.members, norms)]
        row = by_id[path.name.removesuffix(".zarr")]
        assert row["probability"] == pytest.approx(np.mean(member), abs=1e-6)
        assert row["uncertainty"] == pytest.approx(np.std(member), abs=1e-6)
        odds = np.log(np.mean(member)) - np.log(1 - np.mean(member))
        expected = 1 / (1 + np.exp(-odds / model.temperature))  # tempered after averaging
        assert row["calibrated_probability"] == pytest.approx(expected, abs=1e-6)


def test_checkpoints_with_one_global_normaliser_still_predict(cohort, trained, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    doc = json.loads((trained.checkpoint / "config.json").read_text())
    glob = fit_feature_norm([features_of(cohort, s) for s in doc["meta"]["train_slides"]])
    del doc["meta"]["feature_norms"]
    doc["meta"]["feature_norm"] = glob.to_dict()
    (old / "config.json").write_text(json.dumps(doc))
    (old / "model.safetensors").write_bytes((trained.checkpoint / "model.safetensors").read_bytes())
    model, _, _ = load_checkpoint(old)
    stores = sorted((cohort / "stores").glob("*.zarr"))[:3]
    rows, outcomes = predict_stores(stores, old, model_name="old")
    assert all(o.status == "ok" for o in outcomes) and len(rows) == 3
    for row, path in zip(sorted(rows, key=lambda r: r["slide_id"]), stores):
        x = torch.from_numpy(glob.apply(features_of(cohort, path.name.removesuffix(".zarr"))))
        with torch.no_grad():
            member = [torch.softmax(m(x).logits.double(), 0)[1].item() for m in model.members]
        assert row["probability"] == pytest.approx(np.mean(member), abs=1e-6)


def test_train_command_records_the_balance_choice(cohort, tmp_path):
    out = tmp_path / "ckpt"
    r = CliRunner().invoke(main, ["train", str(cohort / "manifest.csv"), "--stores", str(cohort / "stores"),
                                  "--encoder", "enc", "--out", str(out), "--head", "mean_pool", "--folds", "2",
                                  "--epochs", "2", "--balance", "sampler", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "config.json").read_text())["train_config"]["balance"] == "sampler"
    bad = CliRunner().invoke(main, ["train", str(cohort / "manifest.csv"), "--stores", str(cohort / "stores"),
                                    "--encoder", "enc", "--out", str(out), "--balance", "oversample"])
    assert bad.exit_code != 0 and "balance" in bad.output
    helps = [CliRunner().invoke(main, [cmd, "--help"]).output for cmd in ("train", "bench")]
    for h in helps:
        text = " ".join(h.split())
        assert "--balance [loss|sampler|none]" in text and "(CLAM's weighted sampling)" in text
        assert "[default: loss]" in text


def test_folds_never_outnumber_the_minority_class_patients():
    # 3 tumour slides of 2 patients: at most 2 folds keep each patient whole
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    s = stratified_kfold(y, 2, groups=[None, None, None, None, "a", "a", "b"])
    assert s.fold[4] == s.fold[5] != s.fold[6]


# ------------------------------------------------------------------------------------------ named classes


def test_normal_tumor_names_give_exactly_the_numbers_of_0_1_labels(cohort, tmp_path):
    rows = (cohort / "manifest.csv").read_text().splitlines()
    named = [rows[0]] + [r.replace(",1,", ",Tumor,").replace(",0,", ",Normal,") for r in rows[1:]]
    (cohort / "named.csv").write_text("\n".join(named) + "\n")
    cfg = TrainConfig(head="mean_pool", head_kwargs={"hidden_dim": 8}, epochs=3, lr=5e-3, device="cpu", patience=None)
    results = {}
    for name in ("manifest", "named"):
        inputs = collect_inputs([cohort / f"{name}.csv"])
        summary = train_from_stores(inputs, cohort / "stores", "enc", tmp_path / f"ckpt-{name}", cfg, folds=3)
        results[name] = predict_batch(inputs, cohort / "stores", summary.checkpoint, tmp_path / f"pred-{name}")
    assert checkpoint_classes(tmp_path / "ckpt-named") == ["Normal", "Tumor"]
    assert checkpoint_classes(tmp_path / "ckpt-manifest") == [0, 1]
    plain, named_res = results["manifest"], results["named"]
    for a, b in zip(plain.rows, named_res.rows):
        assert a["probability"] == b["probability"] and a["calibrated_probability"] == b["calibrated_probability"]
        assert b["label"] == ("Tumor" if a["label"] == 1 else "Normal")
        assert b["prediction"] == ("Tumor" if a["prediction"] == 1 else "Normal")
        assert [k for k in a] == [k for k in b]  # the same columns, binary names kept
    assert plain.metrics == named_res.metrics
    assert sorted(p.name for p in (tmp_path / "pred-named").iterdir()) == [
        "metrics.json", "predictions.csv", "reliability.png", "roc.png"]


@pytest.fixture(scope="module")
def three_class(tmp_path_factory):
    """18 slides of three classes whose tiles are shifted along feature 0, 1 or 2; the last 6 are held out."""
    root = tmp_path_factory.mktemp("three")
    rng = np.random.default_rng(1)
    names = ["LUAD", "LUSC", "MESO"]
    rows = ["slide,label,split"]
    for i in range(18):
        c = i % 3
        x = rng.standard_normal((int(rng.integers(15, 30)), DIM)) + 20.0
        x[: len(x) // 2, c] += 2.5
        feature_store(root / "stores" / f"m{i:02d}.zarr", x.astype(np.float32))
        (root / f"m{i:02d}.svs").touch()
        rows.append(f"m{i:02d}.svs,{names[c]},{'test' if i >= 12 else 'train'}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    cfg = TrainConfig(head="clam_mb", head_kwargs={"hidden_dim": 8, "attn_dim": 4, "k_sample": 2}, epochs=15,
                      lr=5e-3, device="cpu", patience=None)
    inputs = collect_inputs([root / "manifest.csv"])
    summary = train_from_stores(inputs, root / "stores", "enc", root / "ckpt", cfg, folds=2,
                                classes="MESO,LUAD,LUSC")
    return root, inputs, summary


def test_three_classes_train_in_the_given_order_and_predict_named_columns(three_class, tmp_path):
    root, inputs, summary = three_class
    assert summary.classes.classes == ("MESO", "LUAD", "LUSC")
    assert checkpoint_classes(summary.checkpoint) == ["MESO", "LUAD", "LUSC"]
    assert "macro_auc_ovr" in summary.cv_metrics and set(summary.cv_metrics["per_class"]) == {"MESO", "LUAD", "LUSC"}
    res = predict_batch(inputs, root / "stores", summary.checkpoint, tmp_path, stratify="split")
    table = list(csv.DictReader(open(res.predictions_csv)))
    assert list(table[0])[:9] == ["slide_id", "prediction", "confidence", "prob_MESO", "prob_LUAD", "prob_LUSC",
                                  "calibrated_prob_MESO", "calibrated_prob_LUAD", "calibrated_prob_LUSC"]
    assert "probability" not in table[0] and "calibrated_probability" not in table[0]
    probs = np.array([[float(r[f"calibrated_prob_{c}"]) for c in ("MESO", "LUAD", "LUSC")] for r in table])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
    assert [r["prediction"] for r in table] == [("MESO", "LUAD", "LUSC")[k] for k in probs.argmax(1)]
    y = np.array([("MESO", "LUAD", "LUSC").index(r["label"]) for r in table])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    ovr = [roc_auc_score((y == k).astype(int), probs[:, k]) for k in range(3)]
    assert metrics["overall"]["macro_auc_ovr"] == pytest.approx(np.mean(ovr), abs=1e-9)
    assert metrics["overall"]["macro_auc_ovr"] >= 0.9
    assert set(metrics["groups"]) == {"train", "test"} and metrics["groups"]["test"]["n"] == 6
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    store = SlideStore.open(root / "stores" / "m00.zarr")
    attrs = dict(store.group["scores/ckpt"].attrs)
    assert attrs["columns"] == ["attention", "attention_normalized", "attention_MESO", "attention_LUAD",
                                "attention_LUSC"]
    scores = store.read_scores("ckpt")
    predicted = attrs["prediction"]
    # the drawn attention is the predicted class's branch; every branch sums to 1 over the tiles
    np.testing.assert_allclose(scores[:, 0], scores[:, attrs["columns"].index(f"attention_{predicted}")])
    np.testing.assert_allclose(scores[:, 2:].sum(0), 1.0, atol=1e-5)


def test_labels_the_model_does_not_know_are_refused_naming_the_row(three_class, tmp_path):
    root, _, summary = three_class
    (root / "other.csv").write_text("slide,label\nm00.svs,LUSC\nm01.svs,SCLC\n")
    with pytest.raises(ConfigError, match=r"other\.csv, line 3: label 'SCLC' is not one of the classes"):
        predict_batch(collect_inputs([root / "other.csv"]), root / "stores", summary.checkpoint, tmp_path)
    (root / "ints.csv").write_text("slide,label\nm00.svs,1\n")
    with pytest.raises(ConfigError, match="integer index"):
        predict_batch(collect_inputs([root / "ints.csv"]), root / "stores", summary.checkpoint, tmp_path)
    cfg = TrainConfig(head="mean_pool", epochs=1, device="cpu", patience=None)
    (root / "two.csv").write_text("slide,label\nm00.svs,LUAD\nm01.svs,LUSC\nm03.svs,LUAD\nm04.svs,LUSC\n")
    with pytest.raises(ConfigError, match="class 'MESO' has no labelled training slide"):
        train_from_stores(collect_inputs([root / "two.csv"]), root / "stores", "enc", tmp_path / "c", cfg,
                          classes="LUAD,LUSC,MESO")
    with pytest.raises(ConfigError, match="line 2: label 'LUAD' is not one of --classes LUSC,MESO"):
        train_from_stores(collect_inputs([root / "two.csv"]), root / "stores", "enc", tmp_path / "c", cfg,
                          classes="LUSC,MESO")
