"""The leaderboard's table: one row per (encoder, head) over its seeds, the paired comparisons with a baseline head,
and the table as CSV and Markdown with a one-line reading.

Every row is judged on the same test slides with the same bootstrap resamples (:mod:`slidestream.evaluation.compare`),
so the interval of a difference between two rows is paired.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from ..evaluation.compare import auc_over_seeds, paired_auc_difference
from ..fileio import atomic_open, atomic_write
from .camelyon import LESION_TYPES, lesion_type

__all__ = ["CSV_COLUMNS", "leaderboard_table", "summary_line", "write_csv", "write_markdown"]


def _head_key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


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


def leaderboard_table(pairs: list[dict], *, baseline: str | None = "mean_pool", n_bootstrap: int = 1000,
                      bootstrap_seed: int = 0) -> tuple[list[dict], dict]:
    """One row per (encoder, head) over its seeds, and the paired comparisons with the baseline.

    Parameters
    ----------
    pairs : list of dict
        Every (encoder, head, seed) result (``predictions``, ``metrics``, ``froc``, ``train_seconds``), all on the
        same test slides.
    baseline : str or None
        Head the others are compared with (in each encoder); None or absent: no comparison.
    n_bootstrap, bootstrap_seed : int
        Resamples of every interval, and their seed (the same resamples for every row).

    Returns
    -------
    rows : list of dict
        Ranked by AUC (ties by encoder and head); keys as :data:`CSV_COLUMNS` plus the ``*_sd`` spreads.
    comparisons : dict
        ``"<encoder>/<head>"`` → ``{"all" | "macro" | "micro" | "itc": paired_auc_difference(...)}``.
    """
    groups: dict[tuple[str, str], list[dict]] = {}
    for res in pairs:
        groups.setdefault((res["encoder"], res["head"]), []).append(res)
    first = pairs[0]["predictions"]
    labelled = [r for r in first if r.get("label") is not None]
    ids = [r["slide_id"] for r in labelled]
    y = np.array([r["label"] for r in labelled], dtype=np.int64)
    types = np.array([lesion_type(r.get("lesion_type")) for r in labelled])
    subsets = {"all": np.ones(len(ids), bool), **{t: (y == 0) | (types == t) for t in LESION_TYPES}}
    nb, boot = n_bootstrap, bootstrap_seed
    rows, comparisons = [], {}
    baseline = _head_key(baseline) if baseline else None
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


def write_csv(path: Path, rows: list[dict]) -> Path:
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


def write_markdown(path: Path, rows: list[dict], summary: str, record: dict) -> Path:
    cfg = record["config"]
    b = cfg["bench"]
    lines = ["# slidestream leaderboard", "", f"**{summary}**", "",
             f"- {len(record['splits']['train'])} training slides, {len(record['splits']['test'])} test slides; "
             f"encoders {', '.join(cfg['encoders'])} (weights: {b['weights']}), seeds {cfg['seeds']}, "
             f"{b['folds']}-fold CV, {b['epochs']} epochs, lr {b['lr']}, balance {b['balance']}, precision "
             f"{b.get('precision', 'auto')}",
             f"- tiling: {b['tiling']['tile_size']} px at {b['tiling']['mpp']} µm/px; FROC at {b['froc_mpp']:g} µm/px",
             f"- time {record['seconds']:.0f} s; table: `leaderboard.csv`; record: `bench.json`; "
             "page: `report.html`; per run: `runs/<encoder>/<head>/seed-<seed>/`"]
    settings = sorted({f"{r['head']} " + ", ".join(f"{k}={v}" for k, v in r["head_kwargs"].items())
                       for r in record.get("runs", []) if r.get("head_kwargs")})
    if settings:
        lines.append(f"- head settings: {'; '.join(settings)}")
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
