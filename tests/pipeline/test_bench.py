"""`slidestream bench`: AUC + FROC + report on a synthetic CAMELYON-like set, and resuming without redoing work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from slidestream.evaluation.froc import L0_MPP
from slidestream.evaluation.froc_files import evaluate_froc_dirs
from slidestream.errors import ConfigError
from slidestream.pipeline.bench import BenchConfig, assign_holdout, benchmark_inputs, run_benchmark
from slidestream.cli.main import main
from slidestream.synth import SynthConfig, write_synthetic_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-data")
    cfg = SynthConfig(width=3072, height=3072, mpp=0.5, tumor_diameter_um=(400.0, 900.0))
    write_synthetic_dataset(root, 5, 5, config=cfg, seed=1)
    return root


ARGS = ["--encoder", "handcrafted", "--weights", "none", "--folds", "2", "--epochs", "15"]


def test_bench_reports_auc_froc_and_resumes(dataset, tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["bench", str(dataset), "--out", str(out), *ARGS])
    assert r.exit_code == 0, r.output
    assert "slide AUC" in r.output and "lesion FROC" in r.output
    record = json.loads((out / "bench.json").read_text())
    assert record["metrics"]["auc"] >= 0.75
    assert set(record["froc"]["sensitivity"]) == {"0.25", "0.5", "1", "2", "4", "8"}
    # the official evaluation grows lesions and sizes ITCs at 0.243 µm/px for every slide, even these 0.5 µm/px ones
    assert record["froc"]["mpp"] == L0_MPP
    sizes = {sid: (3072, 3072) for sid in record["splits"]["test"]}
    official = evaluate_froc_dirs(out / "detections", out / "ground_truth", mpp=L0_MPP, slide_sizes=sizes)
    assert record["froc"]["froc"] == pytest.approx(official["froc"])
    assert record["splits"]["test"] and not set(record["splits"]["test"]) & set(record["splits"]["train"])
    assert record["software"]["slidestream"] and record["checkpoint"]["sha256"]
    for name in ("report.md", "roc.png", "froc.png", "predictions.csv"):
        assert (out / name).stat().st_size > 0
    assert len(list((out / "detections").glob("*.csv"))) == len(record["splits"]["test"])
    ckpt = out / "model" / "model.safetensors"
    mtime = ckpt.stat().st_mtime_ns
    again = CliRunner().invoke(main, ["bench", str(dataset), "--out", str(out), *ARGS])
    assert again.exit_code == 0, again.output
    tiles = json.loads((out / "stores" / "run-tile.json").read_text())
    embeds = json.loads((out / "stores" / "run-embed.json").read_text())
    assert tiles["counts"] == {"ok": 0, "skipped": 10, "failed": 0}
    assert embeds["counts"] == {"ok": 0, "skipped": 10, "failed": 0}
    assert ckpt.stat().st_mtime_ns == mtime, "training ran again"
    assert json.loads((out / "bench.json").read_text())["metrics"]["auc"] == record["metrics"]["auc"]
    # another FROC pixel size re-evaluates without retraining, and is recorded
    other = CliRunner().invoke(main, ["bench", str(dataset), "--out", str(out), *ARGS, "--froc-mpp", "0.5"])
    assert other.exit_code == 0, other.output
    assert ckpt.stat().st_mtime_ns == mtime, "training ran again for another FROC pixel size"
    again_record = json.loads((out / "bench.json").read_text())
    assert again_record["froc"]["mpp"] == 0.5 and "0.5 µm/px" in (out / "report.md").read_text()
    at_half = evaluate_froc_dirs(out / "detections", out / "ground_truth", mpp=0.5, slide_sizes=sizes)
    assert again_record["froc"]["froc"] == pytest.approx(at_half["froc"])
    bad = CliRunner().invoke(main, ["bench", str(dataset), "--out", str(out), *ARGS, "--froc-mpp", "-1"])
    assert bad.exit_code == 2 and "Invalid value for '--froc-mpp'" in bad.output  # refused at the door
    with pytest.raises(ConfigError, match="froc_mpp must be a positive"):  # and by the library
        run_benchmark(dataset, out, BenchConfig(froc_mpp=-1.0))
    st = CliRunner().invoke(main, ["status", str(out / "stores"), "--json"])
    assert st.exit_code == 0, st.output
    status = json.loads(st.output)
    assert len(status["stores"]) == 10 and all(s["features"] == ["handcrafted"] for s in status["stores"])
    assert status["runs"]["tile"]["counts"]["skipped"] == 10


@pytest.mark.slow
def test_bench_killed_at_random_points_finishes_on_rerun(dataset, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "slidestream.cli.main", "bench", str(dataset), "--out", str(out), *ARGS]
    for delay in (4.0, 12.0):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    r = CliRunner().invoke(main, ["bench", str(dataset), "--out", str(out), *ARGS])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "bench.json").read_text())["metrics"]["auc"] >= 0.75


def test_holdout_split_is_per_class_and_stable(dataset):
    inputs = assign_holdout(benchmark_inputs(dataset), 0.4)
    test = sorted(it.slide_id for it in inputs if it.split == "test")
    assert test == ["normal_004", "normal_005", "tumor_004", "tumor_005"]
    assert all(it.annotation is not None for it in inputs if it.label == 1)


def test_holdout_keeps_each_patients_slides_on_one_side(tmp_path):
    from slidestream.errors import ConfigError
    from slidestream.pipeline.inputs import SlideInput

    def inputs(patients, splits=None):
        return [SlideInput(tmp_path / f"s{i}.svs", f"s{i}", label=int(i >= 6), patient=p,
                           split=None if splits is None else splits[i]) for i, p in enumerate(patients)]

    # without patients: the last 40 % of each class in name order
    plain = assign_holdout(inputs([None] * 10), 0.4)
    assert [it.slide_id for it in plain if it.split == "test"] == ["s4", "s5", "s8", "s9"]
    # s3, s4 and s5 are one patient (drawn as one unit), s8 and s9 another
    grouped = assign_holdout(inputs([None, None, None, "A", "A", "A", None, None, "B", "B"]), 0.4)
    side = {it.slide_id: it.split for it in grouped}
    assert side["s3"] == side["s4"] == side["s5"] and side["s8"] == side["s9"]
    assert {side["s3"], side["s8"]} == {"test"}
    # a patient with a tumour slide counts as tumour: it moves with the tumour patients
    mixed = assign_holdout(inputs([None, None, None, None, None, "C", "C", None, None, None]), 0.5)
    assert len({it.split for it in mixed if it.patient == "C"}) == 1
    # given splits that cut a patient in two are refused
    with pytest.raises(ConfigError, match="'A'"):
        assign_holdout(inputs(["A", "A"] + [None] * 8, ["test"] + ["train"] * 9), 0.4)
