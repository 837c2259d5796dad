"""Three named classes end to end through the commands, on synthetic slides: bench → train → predict → heatmap.

The classes differ as subtypes do, by what their tumour looks like: no tumour ("Normal"), dense tumour nuclei
("Solid") and sparse ones ("Sparse"). Metrics are re-derived here from predictions.csv with scikit-learn.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from slidestream.annotations.validate import check_qupath_geojson
from slidestream.cli.main import main
from slidestream.synth import SynthConfig
from slidestream.synth.slide import write_synthetic_slide

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KINDS = {"Normal": dict(tumor=False), "Solid": dict(tumor=True, tumor_nuclei_per_mm2=12000.0),
         "Sparse": dict(tumor=True, tumor_nuclei_per_mm2=5000.0)}
FAST = ["--encoder", "handcrafted", "--folds", "2", "--epochs", "15"]


@pytest.fixture(scope="module")
def subtypes(tmp_path_factory):
    """15 slides (5 per class, the last 2 of each held out as 'test') and their manifest."""
    root = tmp_path_factory.mktemp("subtypes")
    base = SynthConfig(width=2048, height=2048, mpp=0.5, tumor_diameter_um=(400.0, 800.0), n_tumors=2)
    rows = ["slide,label,split,site"]
    for c, (name, kw) in enumerate(KINDS.items()):
        for i in range(5):
            stem = f"{name.lower()}_{i}"
            write_synthetic_slide(root / f"{stem}.svs", replace(base, seed=1000 * c + i, **kw),
                                  annotation_dir=root / "annotations")
            rows.append(f"{stem}.svs,{name},{'test' if i >= 3 else 'train'},{'AB'[i % 2]}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def rederived(predictions, labels: dict[str, str], classes: list[str]) -> dict:
    rows = list(csv.DictReader(open(predictions)))
    y = np.array([classes.index(labels[r["slide_id"]]) for r in rows])
    p = np.array([[float(r[f"calibrated_prob_{c}"]) for c in classes] for r in rows])
    return {"macro": np.mean([roc_auc_score((y == k).astype(int), p[:, k]) for k in range(len(classes))]),
            "balanced_accuracy": balanced_accuracy_score(y, p.argmax(1)), "rows": rows, "y": y, "p": p}


def test_three_subtypes_from_bench_to_heatmaps(subtypes, tmp_path, cmu_slide):
    manifest = subtypes / "manifest.csv"
    labels = {r["slide"].removesuffix(".svs"): r["label"] for r in csv.DictReader(open(manifest))}
    bench = tmp_path / "bench"
    r = CliRunner().invoke(main, ["bench", str(manifest), "--out", str(bench), "--weights", "none",
                                  "--head", "clam_mb", *FAST])
    assert r.exit_code == 0, r.output
    assert "held-out macro one-vs-rest AUC" in r.output and "lesion FROC not computed" in r.output
    record = json.loads((bench / "bench.json").read_text())
    assert record["classes"] == ["Normal", "Solid", "Sparse"] and record["froc"] is None
    assert "binary tumour-vs-normal" in record["froc_skipped"]
    test_ids = record["splits"]["test"]
    assert sorted(test_ids) == sorted(s for s in labels if s.endswith(("_3", "_4")))
    again = rederived(bench / "predictions.csv", labels, record["classes"])
    assert record["metrics"]["macro_auc_ovr"] == pytest.approx(again["macro"], abs=1e-9)
    assert record["metrics"]["balanced_accuracy"] == pytest.approx(again["balanced_accuracy"], abs=1e-9)
    assert record["metrics"]["macro_auc_ovr"] >= 0.75
    for name in ("roc.png", "confusion.png"):
        assert (bench / name).read_bytes()[:4] == b"\x89PNG"
    assert not (bench / "detections").exists() and not (bench / "froc.png").exists()
    report = (bench / "report.md").read_text()
    assert "macro one-vs-rest AUC" in report and "lesion FROC: not computed" in report and "| Sparse |" in report

    # train again from the benchmark's stores, another head and an explicit class order
    ckpt = tmp_path / "dsmil"
    r = CliRunner().invoke(main, ["train", str(manifest), "--stores", str(bench / "stores"), "--out", str(ckpt),
                                  "--head", "dsmil", "--classes", "Normal,Sparse,Solid", "--lr", "1e-3", *FAST])
    assert r.exit_code == 0, r.output
    assert "3 classes (Normal, Sparse, Solid): out-of-fold macro AUC" in r.output
    assert json.loads((ckpt / "config.json").read_text())["classes"] == ["Normal", "Sparse", "Solid"]

    pred = tmp_path / "pred"
    r = CliRunner().invoke(main, ["predict", str(manifest), "--stores", str(bench / "stores"), "--model", str(ckpt),
                                  "--out", str(pred), "--by", "site"])
    assert r.exit_code == 0, r.output
    assert "macro AUC" in r.output and "per-class AUC: Normal" in r.output
    metrics = json.loads((pred / "metrics.json").read_text())
    again = rederived(pred / "predictions.csv", labels, ["Normal", "Sparse", "Solid"])
    assert metrics["overall"]["macro_auc_ovr"] == pytest.approx(again["macro"], abs=1e-9)
    assert metrics["overall"]["n"] == 15 and set(metrics["groups"]) == {"A", "B"}
    assert [r_["prediction"] for r_ in again["rows"]] == [("Normal", "Sparse", "Solid")[k]
                                                           for k in again["p"].argmax(1)]
    assert sorted(p.name for p in pred.iterdir()) == ["confusion.png", "metrics.json", "predictions.csv",
                                                      "reliability.png", "roc.png"]

    # heatmaps of the scores predict wrote: one measurement per class DSMIL has a stream for
    maps = tmp_path / "maps"
    stores = [str(bench / "stores" / f"{s}.zarr") for s in test_ids]
    r = CliRunner().invoke(main, ["heatmap", *stores, "--model", ckpt.name, "--out", str(maps), "--threshold", "0.5"])
    assert r.exit_code == 0, r.output
    for sid in test_ids:
        doc = json.loads((maps / f"{sid}.geojson").read_text())
        assert check_qupath_geojson(doc) == []
        tiles = [f for f in doc["features"] if f["properties"]["objectType"] == "tile"]
        names = set().union(*(f["properties"].get("measurements", {}) for f in tiles))
        assert names == {"attention", "attention_normalized", "attention_Sparse", "attention_Solid"}
        regions = {f["properties"]["classification"]["name"] for f in doc["features"]
                   if f["properties"].get("name") == "High attention"}
        row = next(x for x in again["rows"] if x["slide_id"] == sid)
        assert regions <= {row["prediction"]} and regions  # the predicted class's own regions
        assert (maps / f"{sid}.heatmap.png").read_bytes()[:4] == b"\x89PNG"

    # the whole inference path on the real slide names its columns and measurements the same way
    run = tmp_path / "run"
    r = CliRunner().invoke(main, ["run", str(cmu_slide), "--model", str(ckpt), "--out", str(run), "--weights", "none"])
    assert r.exit_code == 0, r.output
    (row,) = list(csv.DictReader(open(run / "predictions.csv")))
    assert row["prediction"] in KINDS and float(row["confidence"]) == pytest.approx(
        max(float(row[f"calibrated_prob_{c}"]) for c in KINDS))
    doc = json.loads((run / "CMU-1-Small-Region.geojson").read_text())
    assert check_qupath_geojson(doc) == []
    assert {"attention_Sparse", "attention_Solid"} <= set(doc["features"][0]["properties"]["measurements"])


def test_help_explains_the_class_options():
    texts = {cmd: " ".join(CliRunner().invoke(main, [cmd, "--help"]).output.split())
             for cmd in ("train", "bench", "predict", "heatmap", "run")}
    for cmd in ("train", "bench"):
        assert "--classes A,B,…" in texts[cmd] and "the second is the positive one" in texts[cmd]
    assert "prob_<class>" in texts["predict"] and "confusion.png" in texts["predict"]
    assert "attention_<class>" in texts["heatmap"] and "probability_<class>" in texts["heatmap"]
    assert "per-class columns" in texts["run"]
