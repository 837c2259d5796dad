"""`slidestream bench --heads/--encoders/--seeds`: one table for many heads on the same slides, resumed per
(encoder, head, seed) after a crash, identical when run again with the same seeds."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from slidestream.cli.main import main
from slidestream.errors import ConfigError
from slidestream.pipeline import leaderboard as lb
from slidestream.pipeline.bench import BenchConfig

ARGS = ["--weights", "none", "--folds", "2", "--epochs", "6", "--exclude", "test_114", "--encoders", "handcrafted",
        "--jobs", "1"]
METRICS = [c for c in lb.CSV_COLUMNS if c != "train_seconds"]


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _predictions(out):
    found = {}
    for p in sorted((out / "runs").rglob("result.json")):
        res = json.loads(p.read_text())
        found[p.parent.relative_to(out).as_posix()] = [(r["slide_id"], r["calibrated_probability"])
                                                       for r in res["predictions"]]
    return found


def test_leaderboard_resumes_after_a_crash_and_repeats_exactly(camelyon_folder, tmp_path, monkeypatch,
                                                                headless_browser):
    out = tmp_path / "a"
    cmd = ["bench", str(camelyon_folder), "--out", str(out), "--heads", "abmil,mean_pool", *ARGS]
    real_train = lb.train_from_stores
    calls = []

    def crash_on_second(*args, **kwargs):
        calls.append(args[3])
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a Ctrl-C or a kill in the middle of the second head
        return real_train(*args, **kwargs)

    monkeypatch.setattr(lb, "train_from_stores", crash_on_second)
    r = CliRunner().invoke(main, cmd)
    assert r.exit_code == 1 and "Aborted" in r.output and len(calls) == 2  # click's answer to Ctrl-C
    first = out / "runs" / "handcrafted" / "abmil" / "seed-0"
    # the heads are trained first, then evaluated: the first head's training is kept, nothing is evaluated yet
    assert (first / "train.json").is_file() and not list((out / "runs").rglob("result.json"))
    stamp = (first / "train.json").stat().st_mtime_ns, (first / "model" / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(lb, "train_from_stores", real_train)

    r = CliRunner().invoke(main, cmd)
    assert r.exit_code == 0, r.output
    assert "1 run(s) trained, 2 evaluated, 0 reused" in r.output
    assert ((first / "train.json").stat().st_mtime_ns,
            (first / "model" / "model.safetensors").stat().st_mtime_ns) == stamp, "the finished head was retrained"
    record = json.loads((out / "bench.json").read_text())
    assert record["trained"] == ["handcrafted/mean_pool/seed-0"]
    # once finished, a rerun recomputes nothing
    results = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("result.json")}
    r = CliRunner().invoke(main, cmd)
    assert r.exit_code == 0 and "0 run(s) trained, 0 evaluated, 2 reused" in r.output, r.output
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("result.json")} == results

    rows = _csv(out / "leaderboard.csv")
    assert sorted(r["head"] for r in rows) == ["abmil", "mean_pool"] and [r["rank"] for r in rows] == ["1", "2"]
    assert list(rows[0]) == lb.CSV_COLUMNS
    for row in rows:
        assert 0 <= float(row["auc_ci_low"]) <= float(row["auc"]) <= float(row["auc_ci_high"]) <= 1
        assert row["n_macro"] == "1" and row["n_micro"] == "1" and row["n_itc"] == "1"
        assert float(row["train_seconds"]) > 0 and row["froc"] != ""
    abmil = next(r for r in rows if r["head"] == "abmil")
    assert abmil["delta_auc_vs_baseline"] != "" and next(r for r in rows if r["head"] == "mean_pool")[
        "delta_auc_vs_baseline"] == ""
    # the record's table is the CSV's, and the per-class AUCs are AUCs of those slides against the normal ones
    by_head = {r["head"]: r for r in record["leaderboard"]}
    assert by_head["abmil"]["auc"] == pytest.approx(float(abmil["auc"]), rel=1e-5)
    res = json.loads((first / "result.json").read_text())
    preds = {p["slide_id"]: p for p in res["predictions"]}
    normal = [p["calibrated_probability"] for p in preds.values() if p["label"] == 0]
    macro = preds["test_001"]["calibrated_probability"]
    assert by_head["abmil"]["auc_macro"] == pytest.approx(np.mean([(macro > q) + 0.5 * (macro == q) for q in normal]))
    assert record["excluded"]["slides"] == ["test_114"] and any("test_005" in w for w in record["warnings"])
    assert record["summary"] and record["summary"] in (out / "report.md").read_text()
    heat = json.loads((out / "heatmaps" / "heatmaps.json").read_text())
    assert sorted(heat["slides"]) == ["test_001", "test_002", "test_003", "test_004", "test_005", "test_006"]
    assert all((out / p).is_file() for paths in heat["slides"].values() for p in paths.values())

    # the page: loads offline with no console message, every image decodes, a row per head
    dom, console = headless_browser(out / "report.html", check_js=(
        "var bad=[].filter.call(document.images,function(i){return !(i.complete&&i.naturalWidth>0);});"
        "var p=document.createElement('pre');p.id='check';p.textContent='images '+document.images.length+"
        "' broken '+bad.length+' rows '+document.querySelectorAll('#leaderboard tbody tr').length;"
        "document.body.appendChild(p);"))
    assert console == []
    assert '<pre id="check">images 6 broken 0 rows 2</pre>' in dom

    # the same command into a fresh folder, the heads trained in two worker processes: the same table, to the last
    # digit (training times aside); the tiles and features are copied over (tiling and embedding are deterministic
    # and tested as such elsewhere)
    again = tmp_path / "b"
    shutil.copytree(out / "stores", again / "stores")
    r = CliRunner().invoke(main, ["bench", str(camelyon_folder), "--out", str(again), "--heads", "abmil,mean_pool",
                                  *ARGS, "--jobs", "2"])
    assert "on 2 worker(s)" in r.output or r.exit_code != 0
    assert r.exit_code == 0, r.output
    assert [[row[c] for c in METRICS] for row in _csv(again / "leaderboard.csv")] == [
        [row[c] for c in METRICS] for row in rows]
    assert _predictions(again) == _predictions(out)

    # another seed: the first seed's runs are reused, the table gives means and spreads over both
    r = CliRunner().invoke(main, cmd + ["--seeds", "0,1"])
    assert r.exit_code == 0, r.output
    record = json.loads((out / "bench.json").read_text())
    assert sorted(record["trained"]) == sorted(record["computed"]) == ["handcrafted/abmil/seed-1",
                                                                       "handcrafted/mean_pool/seed-1"]
    two = {r["head"]: r for r in record["leaderboard"]}
    assert two["abmil"]["seeds"] == 2
    aucs = [json.loads((out / "runs/handcrafted/abmil" / f"seed-{s}" / "result.json").read_text())["metrics"]["auc"]
            for s in (0, 1)]
    assert two["abmil"]["auc"] == pytest.approx(np.mean(aucs))
    assert two["abmil"]["auc_sd"] == pytest.approx(np.std(aucs, ddof=1))


def test_config_is_checked_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="unknown MIL head 'attention'"):
        lb.LeaderboardConfig(heads=("abmil", "attention")).validate()
    with pytest.raises(ConfigError, match="named twice"):
        lb.LeaderboardConfig(heads=("abmil", "ABMIL")).validate()
    with pytest.raises(ConfigError):
        lb.LeaderboardConfig(encoders=("no-such-encoder-xyz",)).validate()
    r = CliRunner().invoke(main, ["bench", str(tmp_path), "--out", str(tmp_path / "o"), "--seeds", "0,x"])
    assert r.exit_code != 0 and "seeds are whole numbers" in r.output
    with pytest.raises(ConfigError, match="--classes is for a single bench run"):
        lb.LeaderboardConfig(bench=BenchConfig(weights="none", classes=("a", "b", "c"))).validate()
    assert lb.LeaderboardConfig(bench=BenchConfig(weights="none")).heads == lb.DEFAULT_HEADS


def test_transmil_is_trained_first_and_the_protocol_and_precision_reach_the_config(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from slidestream.pipeline import bench as bench_module

    plan = [SimpleNamespace(head=h, encoder=e) for e in ("a", "b") for h in lb.DEFAULT_HEADS]
    order = [(p.encoder, p.head) for p in lb._longest_first(plan)]
    assert order[:2] == [("a", "transmil"), ("b", "transmil")]  # the two long trainings start at once
    assert order[2:6] == [("a", "clam_sb"), ("a", "clam_mb"), ("b", "clam_sb"), ("b", "clam_mb")]
    assert sorted(order) == sorted((p.encoder, p.head) for p in plan)

    seen = {}

    class Stop(Exception):
        pass

    def capture(name):
        def fake(source, out, config, **kwargs):
            seen[name] = config
            raise Stop
        return fake

    monkeypatch.setattr(lb, "run_leaderboard", capture("board"))
    monkeypatch.setattr(bench_module, "run_benchmark", capture("single"))
    src = tmp_path / "src"
    src.mkdir()
    common = ["bench", str(src), "--out", str(tmp_path / "o"), "--weights", "none"]
    for args in (["--heads", "all", "--precision", "bfloat16"], [], ["--heads", "abmil", "--folds", "4",
                                                                      "--epochs", "7"]):
        r = CliRunner().invoke(main, common + args)
        assert isinstance(r.exception, Stop), r.output
        if args:
            cfg = seen.pop("board").bench
            assert (cfg.folds, cfg.epochs) == ((lb.LEADERBOARD_FOLDS, lb.LEADERBOARD_EPOCHS) if len(args) == 4
                                               else (4, 7))
            assert cfg.precision == ("bfloat16" if "--precision" in args else "auto")
        else:
            cfg = seen.pop("single")
            assert (cfg.folds, cfg.epochs, cfg.precision) == (5, 30, "auto")
    assert lb.LeaderboardConfig().bench.folds == lb.LEADERBOARD_FOLDS
    assert "precision" not in BenchConfig().to_dict()  # "auto" leaves earlier fingerprints as they were
    assert BenchConfig(precision="bfloat16").to_dict()["precision"] == "bfloat16"
    with pytest.raises(ConfigError, match="precision"):
        BenchConfig(precision="float16")
    bad = CliRunner().invoke(main, common + ["--precision", "half"])
    assert bad.exit_code == 2 and "half" in bad.output


def test_a_users_files_in_the_output_folder_are_refused_before_any_work(camelyon_folder, tmp_path):
    out = tmp_path / "o"
    (out / "ground_truth").mkdir(parents=True)
    mine = {out / "report.html": b"my notes", out / "leaderboard.csv": b"head,auc\nmine,1\n"}
    for path, data in mine.items():
        path.write_bytes(data)
    cmd = ["bench", str(camelyon_folder), "--out", str(out), "--heads", "abmil,mean_pool", *ARGS]
    r = CliRunner().invoke(main, cmd)
    text = " ".join(r.output.split())
    assert r.exit_code == 1 and "--overwrite" in text and str(out / "report.html") in text, r.output
    assert all(path.read_bytes() == data for path, data in mine.items())
    assert not (out / "stores").exists()  # refused at the door: nothing tiled
    # a file of the user's in the ground-truth folder is not deleted as a stale copy either
    (out / "report.html").unlink()
    (out / "leaderboard.csv").unlink()
    stray = out / "ground_truth" / "test_999.xml"
    stray.write_bytes(b"<ASAP_Annotations/>")
    r = CliRunner().invoke(main, cmd)
    assert r.exit_code == 1 and str(stray) in " ".join(r.output.split()), r.output
    assert stray.read_bytes() == b"<ASAP_Annotations/>"


@pytest.mark.slow
def test_leaderboard_killed_resumes_without_recomputing_finished_pairs(camelyon_folder, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "slidestream.cli.main", "bench", str(camelyon_folder), "--out", str(out),
           "--heads", "mean_pool,max_pool,abmil", "--no-heatmaps", *ARGS]
    first = out / "runs" / "handcrafted" / "mean_pool" / "seed-0" / "result.json"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)  # waiting for the first pair's result to appear, not ordering anything
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert first.exists()
    stamp = first.stat().st_mtime_ns
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    record = json.loads((out / "bench.json").read_text())
    assert "handcrafted/mean_pool/seed-0" in record["reused"] and first.stat().st_mtime_ns == stamp
    assert record["trained"] == [] and len(record["leaderboard"]) == 3  # all three were trained before the kill
