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

import dataclasses
import hashlib
import json
import math
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..evaluation import binary_metrics, plot_froc, plot_reliability, plot_roc
from ..evaluation.metrics import _calibration_bins, roc_auc
from ..fileio import OutputGuard, adopt_legacy, output_folder, protect_inputs, strict_json, write_json
from ..mil import TrainConfig, list_heads
from ..mil.checkpoint import load_checkpoint
from ..models.encoder import cpu_has_fast_bfloat16
from ..models.registry import get_preset
from ..store import SlideStore
from .bench import BenchConfig, _is_bench_folder, _versions, benchmark_inputs, lesion_froc, split_benchmark
from .camelyon import LESION_TYPES, FrocTruth, exclude_inputs, is_camelyon_folder, lesion_type, prepare_froc_truth
from .embed import embed_batch
from .inputs import SlideInput, store_paths
from .leaderboard_table import CSV_COLUMNS, leaderboard_table, summary_line, write_csv, write_markdown
from .outputs import write_slide_outputs
from .predict import describe_rows, predict_stores
from .reporting import QuietReporter, Reporter
from .tile import tile_batch
from .train import train_from_stores

__all__ = ["CSV_COLUMNS", "DEFAULT_HEADS", "LeaderboardConfig", "LeaderboardResult", "run_leaderboard",
           "summary_line"]

#: The leaderboard's training protocol: fewer folds and epochs than a single ``bench`` run (5 and 30), so that
#: seven heads on two encoders train in minutes on a CPU; every head gets the same protocol.
LEADERBOARD_FOLDS = 3
LEADERBOARD_EPOCHS = 20

#: Every registered head family, baselines last.
DEFAULT_HEADS = ("abmil", "clam_sb", "clam_mb", "transmil", "dsmil", "mean_pool", "max_pool")

#: Bump when what a pair's result.json holds changes: older results are recomputed.
RESULT_VERSION = 1


@dataclass
class LeaderboardConfig:
    """What a leaderboard compares, and everything else that decides its numbers.

    Attributes
    ----------
    bench : BenchConfig
        Shared settings (weights, folds, epochs, lr, balance, precision, tiling, stain, FROC pixel size,
        exclusions …; default folds and epochs :data:`LEADERBOARD_FOLDS` and :data:`LEADERBOARD_EPOCHS`); its
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
    workers : int or None
        Heads trained at the same time, each in its own process with one thread (default: the CPU cores); 1 trains
        in this process. The numbers do not depend on it.
    transmil_attention : {"auto", "nystrom", "exact"}
        Attention of the ``transmil`` head. "nystrom" (default) is the reference's. "auto" uses exact softmax
        attention when every bag, padded to TransMIL's square token grid plus its class token, has no more tokens
        than the Nyström landmarks (256): the landmarks are then the tokens themselves and Nyström only
        approximates this very attention, through an iterative pseudo-inverse that costs about a hundred times more
        on a CPU; the pad tokens the reference's Nyström step attends to are the remaining difference. Larger bags
        use Nyström. The choice is recorded per run (``head_kwargs``).
    """

    bench: BenchConfig = field(default_factory=lambda: BenchConfig(weights="none", folds=LEADERBOARD_FOLDS,
                                                                   epochs=LEADERBOARD_EPOCHS))
    encoders: tuple[str, ...] = ("handcrafted",)
    heads: tuple[str, ...] = DEFAULT_HEADS
    seeds: tuple[int, ...] = (0,)
    baseline: str | None = "mean_pool"
    heatmaps: bool = True
    n_bootstrap: int = 1000
    bootstrap_seed: int = 0
    workers: int | None = None
    transmil_attention: str = "nystrom"

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
        if self.transmil_attention not in ("auto", "nystrom", "exact"):
            raise ConfigError("transmil_attention must be 'auto', 'nystrom' or 'exact', "
                              f"got {self.transmil_attention!r}")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.n_bootstrap < 0:
            raise ConfigError(f"n_bootstrap must be >= 0, got {self.n_bootstrap}")
        if self.bench.classes is not None:
            # every column (FROC, lesion classes, calibration) is that of a tumour-vs-normal task
            raise ConfigError("the leaderboard compares heads on a binary tumour-vs-normal task with 0/1 labels; "
                              "--classes is for a single bench run (leave out --heads/--encoders/--seeds)")

    def to_dict(self) -> dict:
        return {"bench": self.bench.to_dict(), "encoders": list(self.encoders), "heads": list(self.heads),
                "seeds": list(self.seeds), "baseline": self.baseline, "heatmaps": self.heatmaps,
                "n_bootstrap": self.n_bootstrap, "bootstrap_seed": self.bootstrap_seed, "workers": self.workers,
                "transmil_attention": self.transmil_attention}


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
    trained: list[str] = field(default_factory=list)  # "<encoder>/<head>/seed-<s>" trained this run
    computed: list[str] = field(default_factory=list)  # … evaluated this run (trained now or before)
    reused: list[str] = field(default_factory=list)  # … whose finished result an earlier run left


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
    max_tiles: int = 0  # the largest bag, in tiles
    guard: OutputGuard = field(default_factory=OutputGuard)  # files slidestream did not write are not replaced


#: TransMIL's default Nyström landmarks (``hidden_dim // 2``).
_TRANSMIL_LANDMARKS = 256


def _head_kwargs(ctx: _Context, head: str) -> dict:
    """Hyper-parameters a head gets in this leaderboard (only TransMIL's attention is ever set)."""
    if _head_key(head) != "transmil" or ctx.config.transmil_attention == "nystrom":
        return {}
    if ctx.config.transmil_attention == "exact":
        return {"attention": "exact"}
    tokens = math.ceil(math.sqrt(max(ctx.max_tiles, 1))) ** 2 + 1
    return {"attention": "exact"} if tokens <= _TRANSMIL_LANDMARKS else {}


def _pair_config(ctx: _Context, encoder: str, head: str, seed: int) -> BenchConfig:
    return dataclasses.replace(ctx.config.bench, encoder=encoder, head=_head_key(head), seed=int(seed))


def _fingerprints(ctx: _Context, cfg: BenchConfig) -> tuple[str, str]:
    """(training fingerprint, whole-result fingerprint) of one pair."""
    trained_on = {k: v for k, v in cfg.to_dict().items() if k not in ("froc_mpp", "exclude")}
    train_fp = _hash({"config": trained_on, "train": sorted(it.slide_id for it in ctx.train),
                      **({"head_kwargs": kw} if (kw := _head_kwargs(ctx, cfg.head)) else {})})
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


@dataclass
class _Pair:
    """One (encoder, head, seed): where it lives, its fingerprints, and what an earlier run left of it."""

    encoder: str
    head: str
    seed: int
    cfg: BenchConfig
    head_kwargs: dict
    dir: Path
    train_fp: str
    result_fp: str
    result: dict | None = None  # a finished result of this very pair
    trained: dict | None = None  # its training record, when the checkpoint matches

    @property
    def key(self) -> str:
        return f"{_safe(self.encoder)}/{_safe(_head_key(self.head))}/seed-{self.seed}"


def _plan_pair(ctx: _Context, encoder: str, head: str, seed: int) -> _Pair:
    cfg = _pair_config(ctx, encoder, head, seed)
    pair = _Pair(encoder, _head_key(head), int(seed), cfg, _head_kwargs(ctx, head),
                 ctx.out_dir / "runs" / _safe(encoder) / _safe(_head_key(head)) / f"seed-{seed}",
                 *_fingerprints(ctx, cfg))
    result_path = pair.dir / "result.json"
    if result_path.is_file():
        try:
            old = json.loads(result_path.read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("fingerprint") == pair.result_fp:
            pair.result = old
            return pair
    checkpoint, record = pair.dir / "model", pair.dir / "train.json"
    if (checkpoint / "config.json").is_file() and record.is_file():
        _, _, meta = load_checkpoint(checkpoint)
        rec = json.loads(record.read_text())
        if meta.get("bench_fingerprint") == pair.train_fp and rec.get("fingerprint") == pair.train_fp:
            pair.trained = rec
    return pair


def _train_pair(train: list[SlideInput], stores_dir: Path, encoder: str, pair_dir: Path, cfg: BenchConfig,
                head_kwargs: dict, train_fp: str, reporter: Reporter | None = None) -> dict:
    """Cross-validate one head on one encoder's features into ``pair_dir/model``; writes and returns its training
    record. Module-level so that worker processes can run it."""
    train_cfg = TrainConfig(head=cfg.head, head_kwargs=dict(head_kwargs), epochs=cfg.epochs, lr=cfg.lr,
                            seed=cfg.seed, device=cfg.device, patience=None, balance=cfg.balance,
                            precision=cfg.precision)
    summary = train_from_stores(train, stores_dir, encoder, pair_dir / "model", train_cfg, folds=cfg.folds,
                                meta={"bench_fingerprint": train_fp}, reporter=reporter, replace_own=True)
    record = {"fingerprint": train_fp, "head_kwargs": head_kwargs, "seconds": summary.seconds,
              "n_slides": summary.n_slides, "folds": summary.folds, "temperature": summary.temperature,
              "cv_auc": summary.cv_metrics.get("auc"),
              "left_out": [o.slide_id for o in summary.failed]}
    write_json(pair_dir / "train.json", record)
    return record


def _worker_init(parent: int) -> None:
    """Worker processes die with the leaderboard (Linux: ``prctl(PR_SET_PDEATHSIG)``) rather than finish a
    training nobody waits for; elsewhere they stop after their current task."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(0)


#: Relative training cost of a head per bag step on a CPU, for the order in which workers take the pairs.
_HEAD_COST = {"transmil": 50, "clam_sb": 4, "clam_mb": 4, "dsmil": 2, "abmil": 2}


def _longest_first(pairs: list[_Pair]) -> list[_Pair]:
    """The pairs in the order workers should take them: the costliest first (TransMIL's Nyström attention costs
    tens of times more than the other heads), so that no long training starts when the rest are done and the
    others fill the remaining workers; ties keep the plan's order. The numbers do not depend on the order."""
    return sorted(pairs, key=lambda p: -_HEAD_COST.get(p.head, 1))


def _train_all(ctx: _Context, pairs: list[_Pair], workers: int) -> None:
    """Train every pair that needs it, ``workers`` at a time (each training uses one thread; one worker trains
    in this process), the costliest first. A pair's checkpoint and record are kept as soon as it is done."""
    if not pairs:
        return
    pairs = _longest_first(pairs)
    with ctx.reporter.task(f"train {len(pairs)} head(s) on {workers} worker(s)", len(pairs)) as task:
        if workers <= 1:
            for i, pair in enumerate(pairs, start=1):
                pair.trained = _train_pair(ctx.train, ctx.stores_dir, pair.encoder, pair.dir, pair.cfg,
                                           pair.head_kwargs, pair.train_fp, ctx.reporter)
                ctx.reporter.log(f"trained {pair.encoder} + {pair.head} (seed {pair.seed}) in "
                                 f"{pair.trained['seconds']:.0f} s")
                task.update(i)
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # spawn: torch's thread pools do not survive fork
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_worker_init, initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(_train_pair, ctx.train, ctx.stores_dir, p.encoder, p.dir, p.cfg, p.head_kwargs,
                                   p.train_fp): p for p in pairs}
            try:
                for i, fut in enumerate(as_completed(futures), start=1):
                    pair = futures[fut]
                    pair.trained = fut.result()
                    ctx.reporter.log(f"trained {pair.encoder} + {pair.head} (seed {pair.seed}) in "
                                     f"{pair.trained['seconds']:.0f} s")
                    task.update(i)
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise


def _evaluate_pair(ctx: _Context, pair: _Pair) -> dict:
    """Predict the test slides with a trained pair and evaluate it; writes and returns its ``result.json``."""
    encoder, head, seed, cfg, pair_dir, trained = pair.encoder, pair.head, pair.seed, pair.cfg, pair.dir, pair.trained
    model_name = _model_name(encoder, head, seed)
    t0 = time.perf_counter()
    rows, outcomes = predict_stores(ctx.test_stores, pair_dir / "model", model_name=model_name,
                                    reporter=ctx.reporter)
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
                           ctx.truth, cfg, ctx.guard)
    curves = _curves(y, p, froc)
    _pair_plots(pair_dir, y, p, froc, f"{encoder} + {head}", boot)
    result = {
        "fingerprint": pair.result_fp, "train_fingerprint": pair.train_fp, "encoder": encoder, "head": head,
        "seed": seed, "head_kwargs": pair.head_kwargs, "model_name": model_name,
        "dir": pair_dir.relative_to(ctx.out_dir).as_posix(),
        "train_seconds": trained.get("seconds"), "predict_seconds": predict_seconds, "cv_auc": trained.get("cv_auc"),
        "metrics": metrics, "by_lesion_type": by_type,
        "froc": None if froc is None else {k: froc[k] for k in ("sensitivity", "froc", "defined", "mpp", "n_slides",
                                                                "n_lesions", "n_lesions_detected", "n_fp")},
        "curves": curves,
        "failed": [{"slide_id": o.slide_id, "error": o.error} for o in outcomes if o.status == "failed"],
        "predictions": [{k: r.get(k) for k in ("slide_id", "label", "lesion_type", "probability",
                                                "calibrated_probability", "uncertainty", "tiles")} for r in rows],
    }
    write_json(pair_dir / "result.json", result)
    return json.loads((pair_dir / "result.json").read_text())


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
                                            threshold=0.5, guard=ctx.guard)
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
                    max_pixels: int | None = None, overwrite: bool = False) -> LeaderboardResult:
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
    overwrite : bool, default False
        Replace files in ``out_dir`` that slidestream did not write (or that were changed since); without it they
        are named in an :class:`~slidestream.errors.OutputExistsError` (the top-level files before any work).
        The slides and annotations are never written.

    Returns
    -------
    LeaderboardResult
    """
    from .report_html import write_report_html

    t0 = time.perf_counter()
    config = config or LeaderboardConfig()
    config.validate()
    reporter = reporter or QuietReporter()
    out_dir = output_folder(out_dir, create=False)
    # a benchmark folder of a version without ledgers: its outputs are adopted, so it resumes as before
    guard = OutputGuard(overwrite, adopt=adopt_legacy(out_dir, _is_bench_folder))
    bench = config.bench
    inputs = source if isinstance(source, list) else benchmark_inputs(source)
    protect_inputs(p for it in inputs for p in (it.path, it.annotation))
    guard.check_all(out_dir / n for n in ("bench.json", "leaderboard.csv", "report.md", "report.html"))
    output_folder(out_dir)
    inputs, excluded, unknown = exclude_inputs(inputs, bench.exclude)
    warnings = [f"--exclude {name}: no such slide" for name in unknown]
    inputs, train, test = split_benchmark(inputs, bench.test_fraction, "a leaderboard")
    stores_dir = out_dir / "stores"
    timings: dict[str, float] = {}
    t = time.perf_counter()
    tile_batch(inputs, stores_dir, bench.tiling, stain=bench.stain, scheduler=bench.scheduler, reporter=reporter,
               max_pixels=max_pixels)
    timings["tile"] = time.perf_counter() - t
    present = [it.slide_id for it in inputs if (stores_dir / f"{it.slide_id}.zarr").exists()]
    if bench.precision == "auto" and str(bench.device) == "cpu" and cpu_has_fast_bfloat16():
        reporter.log("this CPU has AMX-BF16: --precision bfloat16 runs deep encoders and TransMIL about 2.5 times "
                     "faster (results within about 1 % of float32)")
    for encoder in config.encoders:
        t = time.perf_counter()
        embed_batch(store_paths(stores_dir, present), encoder, weights=bench.weights, device=bench.device,
                    scheduler=bench.scheduler, reporter=reporter, precision=bench.precision, replace_changed=True)
        timings[f"embed {encoder}"] = time.perf_counter() - t
    truth = prepare_froc_truth(test, out_dir / "ground_truth", guard=guard,
                               expect_truth=not isinstance(source, list) and is_camelyon_folder(source))
    warnings += truth.warnings
    for w in warnings:
        reporter.log(f"[yellow]warning:[/yellow] {w}")
    test_stores = [p for p in store_paths(stores_dir, [it.slide_id for it in test]) if p.exists()]
    ctx = _Context(out_dir, stores_dir, train, test, test_stores, truth, config, reporter,
                   max(SlideStore.open(p).n_tiles for p in store_paths(stores_dir, present)), guard)
    plan = [_plan_pair(ctx, e, h, s) for e in config.encoders for h in config.heads for s in config.seeds]
    to_train = [p for p in plan if p.result is None and p.trained is None]
    t = time.perf_counter()
    _train_all(ctx, to_train, min(config.workers or os.cpu_count() or 1, len(to_train)))
    timings["train"] = time.perf_counter() - t
    t = time.perf_counter()
    pairs, computed, reused = [], [], []
    for pair in plan:
        fresh = pair.result is None
        res = _evaluate_pair(ctx, pair) if fresh else pair.result
        (computed if fresh else reused).append(pair.key)
        reporter.log(f"{'done' if fresh else 'reused'} {pair.encoder} + {pair.head} (seed {pair.seed}): "
                     f"AUC {res['metrics']['auc']:.3f}"
                     + (f", FROC {res['froc']['froc']:.3f}" if res.get("froc") else ""))
        pairs.append(res)
    timings["evaluate"] = time.perf_counter() - t
    rows, comparisons = leaderboard_table(pairs, baseline=config.baseline, n_bootstrap=config.n_bootstrap,
                                          bootstrap_seed=config.bootstrap_seed)
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
        "trained": [p.key for p in to_train], "computed": computed, "reused": reused,
        "timings": timings,
        "seconds": seconds,
    })
    with guard.writing(out_dir / "bench.json") as target:
        record = write_json(target, record_data)
    with guard.writing(out_dir / "leaderboard.csv") as target:
        csv_path = write_csv(target, rows)
    with guard.writing(out_dir / "report.md") as target:
        report = write_markdown(target, rows, summary, record_data)
    with guard.writing(out_dir / "report.html") as target:
        html = write_report_html(target, record_data, pairs, heatmaps, test)
    return LeaderboardResult(out_dir=out_dir, rows=rows, pairs=pairs, warnings=warnings, leaderboard_csv=csv_path,
                             record=record, report=report, report_html=html, summary=summary, seconds=seconds,
                             trained=[p.key for p in to_train], computed=computed, reused=reused)
