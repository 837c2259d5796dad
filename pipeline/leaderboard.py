"""A leaderboard: several MIL heads and encoders judged on one benchmark's slides, splits and seeds.

tile once → embed once per encoder → for every (encoder, head, seed): cross-validated training on the training
slides, prediction of the test slides, slide metrics and the official lesion FROC → one table
(``leaderboard.csv``, ``bench.json``, ``report.md``, ``report.html``).

Every (encoder, head) is judged on the same test slides with the same bootstrap resamples, so the intervals of
their differences are paired (:mod:`slidestream.evaluation.compare`). The table gives per row: slide AUC with a
bootstrap 95 % CI, the FROC, balanced accuracy, the class-1 and top-label ECEs, the AUC of each largest-lesion
class (macro-, micro-metastasis and ITC-only tumour slides, each against all normal test slides, with CIs), the
difference in AUC to a baseline head (default ``mean_pool``) overall and on micro-metastasis slides with a paired
CI, and the training time. With several seeds, each number is the mean over seeds with its standard deviation
(``*_sd``), and a CI resamples the slides of the seed-averaged AUC.

Resuming: each (encoder, head, seed) keeps its checkpoint and ``result.json`` under
``<out>/runs/<encoder>/<head>/seed-<seed>/`` with a fingerprint of everything that decides its numbers; a rerun
(after a kill, say) loads finished results and trains only what is missing or changed. A change of what is
evaluated only (test slides left out, the FROC pixel size) re-evaluates from the saved checkpoint.

Reproducibility: the same seeds on the same slides and software give the same numbers (training is seeded and
deterministic on CPU, :mod:`slidestream.mil.train`); only the training times differ.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..evaluation import binary_metrics, plot_froc, plot_reliability, plot_roc
from ..evaluation.compare import auc_over_seeds, paired_auc_difference
from ..evaluation.metrics import _calibration_bins, roc_auc
from ..fileio import atomic_open, atomic_write, strict_json, write_json
from ..mil import TrainConfig, list_heads
from ..mil.checkpoint import load_checkpoint
from ..models.registry import get_preset
from ..store import SlideStore
from .bench import BenchConfig, _versions, assign_holdout, benchmark_inputs, lesion_froc
from .camelyon import LESION_TYPES, FrocTruth, exclude_inputs, is_camelyon_folder, lesion_type, prepare_froc_truth
from .embed import embed_batch
from .inputs import SlideInput, store_paths
from .outputs import write_slide_outputs
from .predict import describe_rows, predict_stores
from .reporting import QuietReporter, Reporter
from .tile import tile_batch
from .train import train_from_stores

__all__ = ["DEFAULT_HEADS", "LeaderboardConfig", "LeaderboardResult", "run_leaderboard", "summary_line"]

#: Every registered head family, baselines last.
DEFAULT_HEADS = ("abmil", "clam_sb", "clam_mb", "transmil", "dsmil", "mean_pool", "max_pool")

#: Bump when what a pair's result.json holds changes: older results are recomputed.
RESULT_VERSION = 1

_LABELS = {"macro": "macro-metastasis", "micro": "micro-metastasis", "itc": "ITC-only"}


@dataclass
class LeaderboardConfig:
    """What a leaderboard compares, and everything else that decides its numbers.

    Attributes
    ----------
    bench : BenchConfig
        Shared settings (weights, folds, epochs, lr, balance, tiling, stain, FROC pixel size, exclusions …); its
        ``encoder``, ``head`` and ``seed`` are replaced by each pair's. ``weights`` applies to every encoder:
        ``"none"`` gives the deep encoders random weights.
    encoders, heads : tuple of str
        Encoder presets and MIL heads; every head is trained on every encoder's features.
    seeds : tuple of int
        Training seeds (initialisation, cross-validation folds, bag order); numbers are averaged over them.
    baseline : str or None
        Head every other head is compared with (paired AUC differences); default ``mean_pool``, skipped when it is
        not among ``heads``.
    heatmaps : bool
        Write a GeoJSON and a PNG heatmap of each test slide for the best row (by AUC).
    n_bootstrap : int
        Bootstrap resamples of every interval.
    bootstrap_seed : int
        Seed of the resampling (the same resamples for every row, so differences are paired).
    """

    bench: BenchConfig = field(default_factory=lambda: BenchConfig(weights="none"))
    encoders: tuple[str, ...] = ("handcrafted",)
    heads: tuple[str, ...] = DEFAULT_HEADS
    seeds: tuple[int, ...] = (0,)
    baseline: str | None = "mean_pool"
    heatmaps: bool = True
    n_bootstrap: int = 1000
    bootstrap_seed: int = 0

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad value (unknown head or encoder, repeated names)."""
        known = set(list_heads())
        for what, names in (("heads", [_head_key(h) for h in self.heads]), ("encoders", [e.lower() for e in
                            self.encoders]), ("seeds", [int(s) for s in self.seeds])):
            if not names:
                raise ConfigError(f"a leaderboard needs at least one of {what}")
            if len(set(names)) != len(names):
                raise ConfigError(f"{what} named twice: {', '.join(map(str, names))}")
        for h in self.heads:
            if _head_key(h) not in known:
                raise ConfigError(f"unknown MIL head {h!r}; choose from {', '.join(sorted(known))}")
        for e in self.encoders:
            get_preset(e)
        if self.n_bootstrap < 0:
            raise ConfigError(f"n_bootstrap must be >= 0, got {self.n_bootstrap}")

    def to_dict(self) -> dict:
        return {"bench": self.bench.to_dict(), "encoders": list(self.encoders), "heads": list(self.heads),
                "seeds": list(self.seeds), "baseline": self.baseline, "heatmaps": self.heatmaps,
                "n_bootstrap": self.n_bootstrap, "bootstrap_seed": self.bootstrap_seed}


@dataclass
class LeaderboardResult:
    out_dir: Path
    rows: list[dict]
    pairs: list[dict]
    warnings: list[str]
    leaderboard_csv: Path
    record: Path
    report: Path
    report_html: Path
    summary: str
    seconds: float
    computed: list[str] = field(default_factory=list)  # "<encoder>/<head>/seed-<s>" trained or evaluated this run
    reused: list[str] = field(default_factory=list)  # … loaded from an earlier run


def _head_key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _safe(name: str) -> str:
    """A folder / array name for an encoder or head name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip(".") or "_"


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------- one pair
@dataclass
class _Context:
    out_dir: Path
    stores_dir: Path
    train: list[SlideInput]
    test: list[SlideInput]
    test_stores: list[Path]
    truth: FrocTruth
    config: LeaderboardConfig
    reporter: Reporter


def _pair_config(ctx: _Context, encoder: str, head: str, seed: int) -> BenchConfig:
    return dataclasses.replace(ctx.config.bench, encoder=encoder, head=_head_key(head), seed=int(seed))


def _fingerprints(ctx: _Context, cfg: BenchConfig) -> tuple[str, str]:
    """(training fingerprint, whole-result fingerprint) of one pair."""
    trained_on = {k: v for k, v in cfg.to_dict().items() if k not in ("froc_mpp", "exclude")}
    train_fp = _hash({"config": trained_on, "train": sorted(it.slide_id for it in ctx.train)})
    result_fp = _hash({"train": train_fp, "test": sorted(it.slide_id for it in ctx.test),
                       "labels": {it.slide_id: [it.label, it.meta.get("lesion_type", "")] for it in ctx.test},
                       "froc_mpp": cfg.froc_mpp, "truth": ctx.truth.to_dict(), "nms": cfg.nms_radius_um,
                       "n_bootstrap": ctx.config.n_bootstrap, "bootstrap_seed": ctx.config.bootstrap_seed,
                       "version": RESULT_VERSION})
    return train_fp, result_fp


def _model_name(encoder: str, head: str, seed: int) -> str:
    return f"lb-{_safe(encoder)}-{_safe(_head_key(head))}-s{seed}"


def _subset_auc(rows: list[dict], t: str, n_bootstrap: int, seed: int) -> dict:
    keep = [r for r in rows if r["label"] == 0 or lesion_type(r.get("lesion_type")) == t]
    y = np.array([r["label"] for r in keep], dtype=np.int64)
    p = np.array([r["calibrated_probability"] for r in keep], dtype=np.float64)
    out = roc_auc(y, p, n_bootstrap=n_bootstrap, seed=seed)
    out["n_pos"] = int(y.sum())
    return out


def _run_pair(ctx: _Context, encoder: str, head: str, seed: int) -> tuple[dict, bool]:
    """Train (or reuse) and evaluate one (encoder, head, seed); returns its result and whether it was computed."""
    cfg = _pair_config(ctx, encoder, head, seed)
    pair_dir = ctx.out_dir / "runs" / _safe(encoder) / _safe(_head_key(head)) / f"seed-{seed}"
    train_fp, result_fp = _fingerprints(ctx, cfg)
    result_path = pair_dir / "result.json"
    if result_path.is_file():
        try:
            old = json.loads(result_path.read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("fingerprint") == result_fp:
            return old, False
    checkpoint = pair_dir / "model"
    train_record = pair_dir / "train.json"
    trained = None
    if (checkpoint / "config.json").is_file() and train_record.is_file():
        _, _, meta = load_checkpoint(checkpoint)
        rec = json.loads(train_record.read_text())
        if meta.get("bench_fingerprint") == train_fp and rec.get("fingerprint") == train_fp:
            trained = rec
    if trained is None:
        train_cfg = TrainConfig(head=cfg.head, epochs=cfg.epochs, lr=cfg.lr, seed=cfg.seed, device=cfg.device,
                                patience=None, balance=cfg.balance)
        summary = train_from_stores(ctx.train, ctx.stores_dir, encoder, checkpoint, train_cfg, folds=cfg.folds,
                                    meta={"bench_fingerprint": train_fp}, reporter=ctx.reporter)
        trained = {"fingerprint": train_fp, "seconds": summary.seconds, "n_slides": summary.n_slides,
                   "folds": summary.folds, "temperature": summary.temperature,
                   "cv_auc": summary.cv_metrics.get("auc"), "left_out": [o.slide_id for o in summary.failed]}
        write_json(train_record, trained)
    else:
        ctx.reporter.log(f"{encoder} + {head} (seed {seed}): checkpoint up to date, training skipped")
    model_name = _model_name(encoder, head, seed)
    t0 = time.perf_counter()
    rows, outcomes = predict_stores(ctx.test_stores, checkpoint, model_name=model_name, reporter=ctx.reporter)
    describe_rows(rows, ctx.test)
    rows.sort(key=lambda r: r["slide_id"])
    predict_seconds = time.perf_counter() - t0
    labelled = [r for r in rows if r.get("label") is not None]
    y = np.array([r["label"] for r in labelled], dtype=np.int64)
    p = np.array([r["calibrated_probability"] for r in labelled], dtype=np.float64)
    boot = ctx.config.bootstrap_seed
    metrics = binary_metrics(y, p, n_bootstrap=ctx.config.n_bootstrap, seed=boot)
    by_type = {t: _subset_auc(labelled, t, ctx.config.n_bootstrap, boot) for t in LESION_TYPES}
    froc = None
    if ctx.truth.defined:
        froc = lesion_froc(ctx.test_stores, rows, model_name, pair_dir / "detections", ctx.out_dir / "ground_truth",
                           ctx.truth, cfg)
    curves = _curves(y, p, froc)
    _pair_plots(pair_dir, y, p, froc, f"{encoder} + {head}", boot)
    result = {
        "fingerprint": result_fp, "train_fingerprint": train_fp, "encoder": encoder, "head": _head_key(head),
        "seed": int(seed), "model_name": model_name, "dir": pair_dir.relative_to(ctx.out_dir).as_posix(),
        "train_seconds": trained.get("seconds"), "predict_seconds": predict_seconds, "cv_auc": trained.get("cv_auc"),
        "metrics": metrics, "by_lesion_type": by_type,
        "froc": None if froc is None else {k: froc[k] for k in ("sensitivity", "froc", "defined", "mpp", "n_slides",
                                                                "n_lesions", "n_lesions_detected", "n_fp")},
        "curves": curves,
        "failed": [{"slide_id": o.slide_id, "error": o.error} for o in outcomes if o.status == "failed"],
        "predictions": [{k: r.get(k) for k in ("slide_id", "label", "lesion_type", "probability",
                                                "calibrated_probability", "uncertainty", "tiles")} for r in rows],
    }
    write_json(result_path, result)
    return json.loads(result_path.read_text()), True


def _thin(x: list, y: list, n: int = 400) -> tuple[list, list]:
    if len(x) <= n:
        return list(x), list(y)
    idx = np.unique(np.linspace(0, len(x) - 1, n).round().astype(int))
    return [x[i] for i in idx], [y[i] for i in idx]


def _curves(y: np.ndarray, p: np.ndarray, froc: dict | None) -> dict:
    """ROC points, reliability bins and the FROC curve of one pair, for the report's plots."""
    from sklearn.metrics import roc_curve

    out: dict = {"roc": None, "reliability": None, "froc": None}
    if y.size and 0 < y.sum() < y.size:
        fpr, tpr, _ = roc_curve(y, p)
        out["roc"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
    if y.size:
        count, conf, freq = _calibration_bins(y, p, 10)
        used = count > 0
        out["reliability"] = {"confidence": conf[used].tolist(), "observed": freq[used].tolist(),
                              "count": count[used].astype(int).tolist()}
    if froc is not None and froc.get("fps"):
        fps, sens = _thin(froc["fps"], froc["sensitivities"])
        out["froc"] = {"fps": fps, "sensitivity": sens}
    return out


def _pair_plots(pair_dir: Path, y: np.ndarray, p: np.ndarray, froc: dict | None, title: str, seed: int) -> None:
    plot_roc(y, p, pair_dir / "roc.png", title=title, seed=seed)
    plot_reliability(y, p, pair_dir / "reliability.png", title=title)
    if froc is not None:
        plot_froc(froc, pair_dir / "froc.png")


# ---------------------------------------------------------------------------------------------------- the table
def _mean_sd(values: list) -> tuple[float, float]:
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return math.nan, math.nan
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def _probs(results: list[dict], ids: list[str]) -> np.ndarray:
    """``(S, n)`` calibrated probabilities of the seeds' results for the slides ``ids``."""
    out = []
    for res in results:
        by_id = {r["slide_id"]: r["calibrated_probability"] for r in res["predictions"]}
        out.append([by_id[s] for s in ids])
    return np.asarray(out, dtype=np.float64)


def _table(pairs: list[dict], config: LeaderboardConfig) -> tuple[list[dict], dict]:
    """One row per (encoder, head) over its seeds, and the paired comparisons with the baseline."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for res in pairs:
        groups.setdefault((res["encoder"], res["head"]), []).append(res)
    first = pairs[0]["predictions"]
    labelled = [r for r in first if r.get("label") is not None]
    ids = [r["slide_id"] for r in labelled]
    y = np.array([r["label"] for r in labelled], dtype=np.int64)
    types = np.array([lesion_type(r.get("lesion_type")) for r in labelled])
    subsets = {"all": np.ones(len(ids), bool), **{t: (y == 0) | (types == t) for t in LESION_TYPES}}
    nb, boot = config.n_bootstrap, config.bootstrap_seed
    rows, comparisons = [], {}
    baseline = _head_key(config.baseline) if config.baseline else None
    for (encoder, head), results in groups.items():
        probs = _probs(results, ids)
        overall = auc_over_seeds(y, probs, n_bootstrap=nb, seed=boot)
        row = {"encoder": encoder, "head": head, "seeds": len(results),
               "auc": overall["auc"], "auc_ci_low": overall["auc_ci_low"], "auc_ci_high": overall["auc_ci_high"],
               "auc_sd": overall["auc_sd"]}
        frocs = [r["froc"]["froc"] if r.get("froc") and r["froc"].get("defined") else None for r in results]
        row["froc"], row["froc_sd"] = _mean_sd(frocs)
        for key in ("balanced_accuracy", "ece_class1", "ece_top_label", "brier"):
            row[key], row[f"{key}_sd"] = _mean_sd([r["metrics"].get(key) for r in results])
        for t in LESION_TYPES:
            m = subsets[t]
            sub = auc_over_seeds(y[m], probs[:, m], n_bootstrap=nb, seed=boot)
            row[f"auc_{t}"], row[f"auc_{t}_ci_low"], row[f"auc_{t}_ci_high"] = (
                sub["auc"], sub["auc_ci_low"], sub["auc_ci_high"])
            row[f"n_{t}"] = sub["n_pos"]
        row["train_seconds"], row["train_seconds_sd"] = _mean_sd([r.get("train_seconds") for r in results])
        rows.append(row)
    if baseline is not None and any(h == baseline for _, h in groups):
        for (encoder, head), results in groups.items():
            base = groups.get((encoder, baseline))
            if base is None or head == baseline:
                continue
            pa, pb = _probs(results, ids), _probs(base, ids)
            comparisons[f"{encoder}/{head}"] = {
                name: paired_auc_difference(y[m], pa[:, m], pb[:, m], n_bootstrap=nb, seed=boot)
                for name, m in subsets.items()}
    for row in rows:
        comp = comparisons.get(f"{row['encoder']}/{row['head']}")
        for name in ("all", "micro"):
            d = (comp or {}).get(name, {})
            suffix = "" if name == "all" else f"_{name}"
            row[f"delta_auc{suffix}_vs_baseline"] = d.get("delta", math.nan)
            row[f"delta_auc{suffix}_ci_low"] = d.get("ci_low", math.nan)
            row[f"delta_auc{suffix}_ci_high"] = d.get("ci_high", math.nan)
    rows.sort(key=lambda r: (-r["auc"] if math.isfinite(r["auc"]) else math.inf, r["encoder"], r["head"]))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows, comparisons


CSV_COLUMNS = ["rank", "encoder", "head", "seeds", "auc", "auc_ci_low", "auc_ci_high", "auc_sd", "froc", "froc_sd",
               "balanced_accuracy", "balanced_accuracy_sd", "ece_class1", "ece_class1_sd", "ece_top_label",
               "ece_top_label_sd", "brier",
               *[f"{k}{s}" for t in LESION_TYPES for k in (f"auc_{t}",) for s in ("", "_ci_low", "_ci_high")],
               *[f"n_{t}" for t in LESION_TYPES],
               "delta_auc_vs_baseline", "delta_auc_ci_low", "delta_auc_ci_high",
               "delta_auc_micro_vs_baseline", "delta_auc_micro_ci_low", "delta_auc_micro_ci_high",
               "train_seconds"]


def _write_csv(path: Path, rows: list[dict]) -> Path:
    def cell(v):
        if isinstance(v, float):
            return "" if not math.isfinite(v) else f"{v:.6g}"
        return v

    with atomic_open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        for r in rows:
            w.writerow([cell(r.get(c)) for c in CSV_COLUMNS])
    return path


def _f(v, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def _ci(row: dict, key: str) -> str:
    return f"{_f(row[key])} [{_f(row[f'{key}_ci_low'])}–{_f(row[f'{key}_ci_high'])}]"


def summary_line(rows: list[dict], comparisons: dict, baseline: str | None = "mean_pool") -> str:
    """One line that reads the leaderboard: the best row with its CI, and on micro-metastasis slides the best
    head's gap to the baseline with the paired CI (real when the interval excludes 0)."""
    if not rows:
        return "no result"
    best = rows[0]
    text = f"best: {best['encoder']} + {best['head']}, slide AUC {_ci(best, 'auc')}"
    if math.isfinite(best.get("froc", math.nan)):
        text += f", FROC {_f(best['froc'])}"
    base = _head_key(baseline) if baseline else None
    cands = [r for r in rows if r["encoder"] == best["encoder"] and r["head"] != base
             and f"{r['encoder']}/{r['head']}" in comparisons and math.isfinite(r.get("auc_micro", math.nan))]
    base_row = next((r for r in rows if r["encoder"] == best["encoder"] and r["head"] == base), None)
    if cands and base_row is not None and best["n_micro"]:
        top = max(cands, key=lambda r: r["auc_micro"])
        d = comparisons[f"{top['encoder']}/{top['head']}"]["micro"]
        verdict = ("a real gap" if d["ci_low"] > 0 else "a gap the CI cannot tell from 0" if d["ci_high"] >= 0
                   else f"{base} is better")
        text += (f"; on the {best['n_micro']} micro-metastasis slides {top['head']} reaches AUC {_f(top['auc_micro'])}"
                 f" against {_f(base_row['auc_micro'])} for {base}: Δ {_f(d['delta'])} "
                 f"[{_f(d['ci_low'])}–{_f(d['ci_high'])}], {verdict}")
    return text


def _write_markdown(path: Path, rows: list[dict], summary: str, record: dict) -> Path:
    cfg = record["config"]
    b = cfg["bench"]
    lines = ["# slidestream leaderboard", "", f"**{summary}**", "",
             f"- {len(record['splits']['train'])} training slides, {len(record['splits']['test'])} test slides; "
             f"encoders {', '.join(cfg['encoders'])} (weights: {b['weights']}), seeds {cfg['seeds']}, "
             f"{b['folds']}-fold CV, {b['epochs']} epochs, lr {b['lr']}, balance {b['balance']}",
             f"- tiling: {b['tiling']['tile_size']} px at {b['tiling']['mpp']} µm/px; FROC at {b['froc_mpp']:g} µm/px",
             f"- time {record['seconds']:.0f} s; table: `leaderboard.csv`; record: `bench.json`; "
             "page: `report.html`; per run: `runs/<encoder>/<head>/seed-<seed>/`"]
    if record["excluded"]["slides"]:
        lines.append(f"- left out by --exclude: {', '.join(record['excluded']['slides'])}")
    lines += [f"- **warning**: {w}" for w in record["warnings"]]
    lines += ["", "| # | encoder | head | AUC [95 % CI] | FROC | bal. acc. | ECE (class 1) | ECE (top label) | "
              "AUC macro | AUC micro | AUC ITC | Δ AUC micro vs baseline | train s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        delta = (f"{_f(r['delta_auc_micro_vs_baseline'])} [{_f(r['delta_auc_micro_ci_low'])}–"
                 f"{_f(r['delta_auc_micro_ci_high'])}]")
        lines.append(f"| {r['rank']} | {r['encoder']} | {r['head']} | {_ci(r, 'auc')} | {_f(r['froc'])} | "
                     f"{_f(r['balanced_accuracy'])} | {_f(r['ece_class1'])} | {_f(r['ece_top_label'])} | "
                     f"{_ci(r, 'auc_macro')} | {_ci(r, 'auc_micro')} | {_ci(r, 'auc_itc')} | {delta} | "
                     f"{_f(r['train_seconds'], 1)} |")
    return atomic_write(path, "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------------- heatmaps
def _heatmaps(ctx: _Context, best: dict, pairs: list[dict]) -> dict[str, dict[str, str]]:
    """GeoJSON + PNG heatmap of every test slide from the best row's first seed (paths relative to the output)."""
    res = next(r for r in pairs if r["encoder"] == best["encoder"] and r["head"] == best["head"])
    out_dir = ctx.out_dir / "heatmaps"
    marker = out_dir / "heatmaps.json"
    probs = {r["slide_id"]: r["calibrated_probability"] for r in res["predictions"]}
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("fingerprint") == res["fingerprint"] and all(
                (ctx.out_dir / p).is_file() for paths in done["slides"].values() for p in paths.values()):
            return done["slides"]
    stores = {SlideStore.open(p).slide_id: p for p in ctx.test_stores}
    missing = [p for p in stores.values() if res["model_name"] not in SlideStore.open(p).feature_names("scores")]
    if missing:  # stores rebuilt since the pair ran: its scores are computed again from its checkpoint
        predict_stores(missing, ctx.out_dir / res["dir"] / "model", model_name=res["model_name"],
                       reporter=ctx.reporter)
    slides: dict[str, dict[str, str]] = {}
    with ctx.reporter.task(f"heatmaps of {best['encoder']} + {best['head']}", len(stores)) as t:
        for i, (sid, path) in enumerate(sorted(stores.items()), start=1):
            try:
                paths = write_slide_outputs(path, res["model_name"], out_dir, probability=probs.get(sid),
                                            threshold=0.5)
                slides[sid] = {k: os.path.relpath(v, ctx.out_dir) for k, v in paths.items()}
            except Exception as exc:  # noqa: BLE001 - a slide without a heatmap must not end the leaderboard
                ctx.reporter.log(f"[red]heatmap failed[/red] {sid}: {exc}")
            t.update(i)
    write_json(marker, {"fingerprint": res["fingerprint"], "encoder": best["encoder"], "head": best["head"],
                        "slides": slides})
    return slides


# ---------------------------------------------------------------------------------------------------- the run
def run_leaderboard(source: str | os.PathLike | list[SlideInput], out_dir: str | os.PathLike,
                    config: LeaderboardConfig | None = None, *, reporter: Reporter | None = None,
                    max_pixels: int | None = None) -> LeaderboardResult:
    """Run every (encoder, head, seed) of ``config`` on the benchmark ``source`` into ``out_dir`` (resumable).

    Parameters
    ----------
    source : path or list of SlideInput
        As :func:`slidestream.pipeline.bench.run_benchmark` takes it (CAMELYON16 folder, manifest …).
    out_dir : path
        Output folder: ``stores/``, ``ground_truth/``, ``runs/``, ``heatmaps/``, ``leaderboard.csv``,
        ``bench.json``, ``report.md``, ``report.html``.
    config : LeaderboardConfig, optional
    reporter : Reporter, optional
    max_pixels : int, optional
        Pixel budget slides are opened with.

    Returns
    -------
    LeaderboardResult
    """
    from .report_html import write_report_html

    t0 = time.perf_counter()
    config = config or LeaderboardConfig()
    config.validate()
    reporter = reporter or QuietReporter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bench = config.bench
    inputs = source if isinstance(source, list) else benchmark_inputs(source)
    inputs, excluded, unknown = exclude_inputs(inputs, bench.exclude)
    warnings = [f"--exclude {name}: no such slide" for name in unknown]
    inputs = assign_holdout(inputs, bench.test_fraction)
    train = [it for it in inputs if it.split != "test" and it.label is not None]
    test = [it for it in inputs if it.split == "test"]
    if not train or not test:
        raise ConfigError(f"a leaderboard needs labelled training slides and test slides (have {len(train)} "
                          f"train, {len(test)} test)")
    stores_dir = out_dir / "stores"
    timings: dict[str, float] = {}
    t = time.perf_counter()
    tile_batch(inputs, stores_dir, bench.tiling, stain=bench.stain, scheduler=bench.scheduler, reporter=reporter,
               max_pixels=max_pixels)
    timings["tile"] = time.perf_counter() - t
    present = [it.slide_id for it in inputs if (stores_dir / f"{it.slide_id}.zarr").exists()]
    for encoder in config.encoders:
        t = time.perf_counter()
        embed_batch(store_paths(stores_dir, present), encoder, weights=bench.weights, device=bench.device,
                    scheduler=bench.scheduler, reporter=reporter)
        timings[f"embed {encoder}"] = time.perf_counter() - t
    truth = prepare_froc_truth(test, out_dir / "ground_truth",
                               expect_truth=not isinstance(source, list) and is_camelyon_folder(source))
    warnings += truth.warnings
    for w in warnings:
        reporter.log(f"[yellow]warning:[/yellow] {w}")
    test_stores = [p for p in store_paths(stores_dir, [it.slide_id for it in test]) if p.exists()]
    ctx = _Context(out_dir, stores_dir, train, test, test_stores, truth, config, reporter)
    pairs, computed, reused = [], [], []
    t = time.perf_counter()
    for encoder in config.encoders:
        for head in config.heads:
            for seed in config.seeds:
                key = f"{_safe(encoder)}/{_safe(_head_key(head))}/seed-{seed}"
                res, fresh = _run_pair(ctx, encoder, head, seed)
                (computed if fresh else reused).append(key)
                reporter.log(f"{'done' if fresh else 'reused'} {encoder} + {head} (seed {seed}): "
                             f"AUC {_f(res['metrics']['auc'])}"
                             + (f", FROC {_f(res['froc']['froc'])}" if res.get("froc") else ""))
                pairs.append(res)
    timings["heads"] = time.perf_counter() - t
    rows, comparisons = _table(pairs, config)
    summary = summary_line(rows, comparisons, config.baseline)
    heatmaps = _heatmaps(ctx, rows[0], pairs) if config.heatmaps and rows else {}
    seconds = time.perf_counter() - t0
    record_data = strict_json({
        "software": _versions(),
        "config": config.to_dict(),
        "splits": {"train": [it.slide_id for it in train], "test": [it.slide_id for it in test]},
        "excluded": {"slides": excluded, "not_found": unknown},
        "froc_truth": truth.to_dict(),
        "warnings": warnings,
        "leaderboard": rows,
        "comparisons": {"baseline": config.baseline, "pairs": comparisons},
        "summary": summary,
        "runs": [{k: v for k, v in r.items() if k not in ("curves", "predictions")} for r in pairs],
        "computed": computed, "reused": reused,
        "timings": timings,
        "seconds": seconds,
    })
    record = write_json(out_dir / "bench.json", record_data)
    csv_path = _write_csv(out_dir / "leaderboard.csv", rows)
    report = _write_markdown(out_dir / "report.md", rows, summary, record_data)
    html = write_report_html(out_dir / "report.html", record_data, pairs, heatmaps, test)
    return LeaderboardResult(out_dir=out_dir, rows=rows, pairs=pairs, warnings=warnings, leaderboard_csv=csv_path,
                             record=record, report=report, report_html=html, summary=summary, seconds=seconds,
                             computed=computed, reused=reused)
