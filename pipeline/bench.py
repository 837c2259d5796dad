"""CAMELYON16-style benchmark runs: slide AUC with a bootstrap CI and the official lesion FROC, in one call.

tile (→ stain) → embed → cross-validated MIL on the training slides → predict the test slides → slide AUC, accuracy,
lesion detections → FROC → ROC/FROC plots, a JSON record and a Markdown report that pins what is needed to
reproduce the run (software versions, encoder and weights, tiling, seeds, splits). Every stage resumes: stores,
features and the checkpoint are reused when they already match.

Inputs: a folder holding ``manifest.csv`` or ``labels.csv`` (columns ``slide``, ``label``, optional ``split``,
``annotation``), a CAMELYON16 folder (``training/normal``, ``training/tumor``, ``testing/images`` with
``testing/reference.csv``, lesion XMLs loose or in ``lesion_annotations.zip``, official evaluation masks; the real
data's quirks are in :mod:`slidestream.pipeline.camelyon`), or a manifest CSV. Without a ``test`` split, the last
40 % of each class is held out. Several heads and encoders on the same slides: :mod:`slidestream.pipeline.leaderboard`.

Labels may be class names, ordered by ``BenchConfig.classes`` (``--classes``) or sorted. With more than two
classes the report gives the macro and per-class one-vs-rest AUC, balanced accuracy and a confusion matrix
(:mod:`slidestream.pipeline.class_metrics`); the lesion FROC and detections, defined for binary tumour-vs-normal
tasks, are skipped and the report says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..annotations import point_features, write_geojson
from ..errors import ConfigError
from ..evaluation import binary_metrics, multiclass_metrics, plot_froc
from ..evaluation.plots import FROC_KEYS
from ..evaluation.detections import detections_from_tiles, write_detections_csv
from ..evaluation.froc import L0_MPP
from ..evaluation.froc_files import evaluate_froc_dirs
from ..fileio import (OutputGuard, adopt_legacy, atomic_write, file_sha256, output_folder, protect_inputs,
                      strict_json, write_json)
from ..mil import TrainConfig
from ..mil.checkpoint import checkpoint_classes, checkpoint_files, is_checkpoint, load_checkpoint
from ..mil.inference import PRECISIONS
from ..store import SlideStore
from ..tiling.grid import TilingParams
from .camelyon import FrocTruth, camelyon_inputs, exclude_inputs, is_camelyon_folder, prepare_froc_truth
from .class_metrics import evaluate_predictions, multiclass_report_lines
from .classes import ClassSet
from .embed import embed_batch
from .inputs import SlideInput, collect_inputs, store_paths
from .predict import describe_rows, predict_stores, write_predictions_csv
from .reporting import QuietReporter, Reporter
from .tile import tile_batch
from .train import train_from_stores



@dataclass
class BenchConfig:
    """Everything that decides a benchmark's numbers (recorded in its report)."""

    encoder: str = "handcrafted"
    weights: str = "none"
    head: str = "abmil"
    balance: str = "loss"
    folds: int = 5
    epochs: int = 30
    lr: float = 2e-4
    seed: int = 0
    test_fraction: float = 0.4
    stain: str | None = None
    device: str = "cpu"
    scheduler: str | None = None
    min_detection_score: float = 0.5
    nms_radius_um: float = 200.0
    tiling: TilingParams = field(default_factory=TilingParams)
    #: Level-0 µm/px the lesion FROC is evaluated at. The official CAMELYON16 evaluation uses 0.243 for every
    #: slide, whatever its scanner (0.243 or 0.226): it sets the 75 µm lesion growth and the 275 µm ITC size
    #: in pixels, so published FROCs are only comparable at this value.
    froc_mpp: float = L0_MPP
    #: Slides left out by name (slide id or file name without extension), e.g. ``("test_114",)``, the CAMELYON16
    #: test slide with a known labelling problem; leaving out test slides re-evaluates without retraining.
    exclude: tuple[str, ...] = ()
    #: Class order (names), as ``--classes``; None: sorted names, or the integer labels as they are.
    classes: tuple[str, ...] | None = None
    #: Compute precision of the encoder and the MIL training: "auto" (reduced precision on CUDA only), "float32",
    #: or "bfloat16" on every device (on CPUs with AMX-BF16 about 2.5 times faster for a ResNet-50 trunk and for
    #: TransMIL's Nyström attention).
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    def to_dict(self) -> dict:
        d = {**asdict(self), "tiling": self.tiling.to_dict()}
        if d["precision"] == "auto":
            del d["precision"]  # the behaviour before the option: earlier runs keep their fingerprints
        return d


@dataclass
class BenchResult:
    out_dir: Path
    auc: dict
    metrics: dict
    froc: dict | None
    report: Path
    record: Path
    checkpoint: Path
    predictions_csv: Path
    seconds: float
    classes: ClassSet | None = None
    froc_skipped: str | None = None  # why no lesion FROC was computed (more than two classes)


# ---------------------------------------------------------------------------------------------------- inputs
def assign_holdout(inputs: list[SlideInput], test_fraction: float) -> list[SlideInput]:
    """Give slides without a split one: the last ``test_fraction`` of each class (in name order) is "test".

    Patients stay whole: the unit drawn is a patient (a slide without one is its own), classed by its highest
    slide label and named by its first slide id, so all its labelled slides land on one side. Given splits that
    put one patient's slides on both sides are refused.
    """
    if any(it.split for it in inputs):
        for it in inputs:
            it.split = (it.split or "train").lower()
        sides: dict[str, set[str]] = {}
        for it in inputs:
            if it.patient:
                sides.setdefault(it.patient, set()).add("test" if it.split == "test" else "train")
        mixed = sorted(p for p, s in sides.items() if len(s) > 1)
        if mixed:
            raise ConfigError(f"patient {mixed[0]!r} has slides in both the train and the test split: a patient's "
                              "slides must share one split (fix the manifest's split column)")
        return inputs
    patients: dict[str, list[SlideInput]] = {}
    for it in inputs:
        if it.label is not None:
            patients.setdefault(it.patient or f"\0{it.slide_id}", []).append(it)
    for label in sorted({it.label for it in inputs if it.label is not None}):
        group = sorted((p for p in patients.values() if max(it.label for it in p) == label),
                       key=lambda p: min(it.slide_id for it in p))
        n_test = int(round(len(group) * test_fraction))
        for i, slides in enumerate(group):
            for it in slides:
                it.split = "test" if i >= len(group) - n_test else "train"
    return inputs


def split_benchmark(inputs: list[SlideInput], test_fraction: float,
                    what: str = "a benchmark") -> tuple[list[SlideInput], list[SlideInput], list[SlideInput]]:
    """``(inputs, train, test)``: the inputs with the holdout assigned (:func:`assign_holdout`), the labelled
    training slides and the test slides; refuses a set without either (``what`` names the run in the message)."""
    inputs = assign_holdout(inputs, test_fraction)
    train = [it for it in inputs if it.split != "test" and it.label is not None]
    test = [it for it in inputs if it.split == "test"]
    if not train or not test:
        raise ConfigError(f"{what} needs labelled training slides and test slides (have {len(train)} train, "
                          f"{len(test)} test)")
    return inputs, train, test


def benchmark_inputs(source: str | os.PathLike) -> list[SlideInput]:
    """Slides of a benchmark from a folder (manifest/labels CSV or CAMELYON16 layout) or a manifest CSV."""
    source = Path(source)
    if source.is_file():
        return collect_inputs([source])
    for name in ("manifest.csv", "labels.csv"):
        if (source / name).is_file():
            return collect_inputs([source / name])
    if is_camelyon_folder(source):
        return camelyon_inputs(source)
    raise ConfigError(f"{source}: no manifest.csv/labels.csv and no CAMELYON16 layout (training/, testing/)")


# ---------------------------------------------------------------------------------------------------- stages
def _lesion_confidence(store: SlideStore, model_name: str, probability: float) -> np.ndarray:
    # Tile-level tumour confidence for detections: where the model looked (attention, normalised per slide),
    # scaled by how sure it is that the slide holds tumour at all, so normal slides yield weak detections.
    return store.read_scores(model_name)[:, 1] * probability


def write_detections(stores: list[Path], rows: list[dict], model_name: str, out_dir: Path, config: BenchConfig,
                     guard: OutputGuard | None = None) -> dict[str, Path]:
    """Official ``confidence,X,Y`` CSVs (and QuPath point files) of lesion detections for every test slide;
    ``guard`` (default: no ``overwrite``) refuses to replace files slidestream did not write."""
    guard = guard or OutputGuard()
    probs = {r["slide_id"]: r["calibrated_probability"] for r in rows}
    out_dir = output_folder(out_dir)
    written = {}
    for path in stores:
        store = SlideStore.open(path)
        sid = store.slide_id
        if sid not in probs:
            continue
        conf = _lesion_confidence(store, model_name, probs[sid])
        # FROC sweeps every threshold, so the CSV keeps all local maxima (above a floor that drops the zeros);
        # the QuPath points keep only the confident ones.
        pts, c = detections_from_tiles(store.coords, store.tiling["extent0"], conf, min_score=1e-3,
                                       nms_radius_um=config.nms_radius_um, mpp=store.slide["mpp"])
        guard.check_all([out_dir / f"{sid}.csv", out_dir / f"{sid}.points.geojson"])
        with guard.writing(out_dir / f"{sid}.csv") as target:
            written[sid] = write_detections_csv(target, pts, c)
        bx, by, bw, bh = store.slide["bounds"]
        keep = c >= config.min_detection_score
        with guard.writing(out_dir / f"{sid}.points.geojson") as target:
            write_geojson(target, point_features(pts[keep], c[keep], offset=(bx, by), slide_size=(bw, bh)))
    return written


def lesion_froc(test_stores: list[Path], rows: list[dict], model_name: str, det_dir: Path, gt_dir: Path,
                truth: FrocTruth, config: BenchConfig, guard: OutputGuard | None = None) -> dict:
    """The official lesion FROC of the test slides that ``truth`` can evaluate (detection CSVs written into
    ``det_dir``; those of slides no longer evaluated removed when slidestream wrote them, else refused through
    ``guard``), against the ground truth in ``gt_dir``."""
    guard = guard or OutputGuard()
    keep = set(truth.evaluable)
    stale = [p for p in det_dir.glob("*.csv") if p.stem not in keep] if det_dir.is_dir() else []
    guard.check_all(stale)  # a CSV of the user's among the detections is not deleted
    write_detections(test_stores, [r for r in rows if r["slide_id"] in keep], model_name, det_dir, config, guard)
    for p in stale:
        p.unlink()
    sizes = {}
    for path in test_stores:
        store = SlideStore.open(path)
        sizes[store.slide_id] = tuple(store.slide["dimensions"])
    result = evaluate_froc_dirs(det_dir, gt_dir, mpp=config.froc_mpp, slide_sizes=sizes)
    result["truth"] = truth.to_dict()
    return result


def _versions() -> dict:
    import importlib.metadata as md

    out = {"slidestream": __version__, "python": platform.python_version()}
    for pkg in ("torch", "timm", "zarr", "dask", "openslide-python", "openslide-bin", "tiffslide", "numpy",
                "scikit-learn"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def _is_bench_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a ``bench.json`` slidestream wrote (by its content)."""
    try:
        doc = json.loads((folder / "bench.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and isinstance(doc.get("software"), dict) and "slidestream" in doc["software"]


# ---------------------------------------------------------------------------------------------------- the run
def run_benchmark(source: str | os.PathLike | list[SlideInput], out_dir: str | os.PathLike,
                  config: BenchConfig | None = None, *, reporter: Reporter | None = None,
                  max_pixels: int | None = None, overwrite: bool = False) -> BenchResult:
    """Run a whole CAMELYON16-style benchmark into ``out_dir`` (resumable at every stage); ``max_pixels`` is the
    pixel budget slides are opened with (:func:`slidestream.wsi.open_slide`; it does not change the numbers).

    Files in ``out_dir`` that slidestream did not write (or that were changed since) are not replaced unless
    ``overwrite``; those of the report are checked before any work. The benchmark's own checkpoint
    (``out_dir/model``) is retrained in place when its inputs changed."""
    t0 = time.perf_counter()
    config = config or BenchConfig()
    if not (isinstance(config.froc_mpp, (int, float)) and np.isfinite(config.froc_mpp) and config.froc_mpp > 0):
        raise ConfigError(f"froc_mpp must be a positive number of µm/px (official CAMELYON16: {L0_MPP}), "
                          f"got {config.froc_mpp!r}")
    reporter = reporter or QuietReporter()
    out_dir = output_folder(out_dir, create=False)
    # a benchmark folder of a version without ledgers: its outputs are adopted, so it resumes as before
    guard = OutputGuard(overwrite, adopt=adopt_legacy(out_dir, _is_bench_folder))
    inputs = source if isinstance(source, list) else benchmark_inputs(source)
    protect_inputs(p for it in inputs for p in (it.path, it.annotation))
    inputs, excluded, unknown = exclude_inputs(inputs, config.exclude)
    if unknown:
        reporter.log(f"[yellow]warning:[/yellow] --exclude {', '.join(unknown)}: no such slide")
    guard.check_all(out_dir / n for n in ("predictions.csv", "roc.png", "froc.png", "bench.json", "report.md"))
    guard.check_all(checkpoint_files(out_dir / "model"), recognise=is_checkpoint)
    output_folder(out_dir)
    inputs, train, test = split_benchmark(inputs, config.test_fraction, "a benchmark")

    stores_dir = out_dir / "stores"
    tile_batch(inputs, stores_dir, config.tiling, stain=config.stain, scheduler=config.scheduler, reporter=reporter,
               max_pixels=max_pixels)
    embed_batch(store_paths(stores_dir, [it.slide_id for it in inputs if (stores_dir / f"{it.slide_id}.zarr").exists()]),
                config.encoder, weights=config.weights, device=config.device, scheduler=config.scheduler,
                reporter=reporter, precision=config.precision, replace_changed=True)

    checkpoint = out_dir / "model"
    train_cfg = TrainConfig(head=config.head, epochs=config.epochs, lr=config.lr, seed=config.seed,
                            device=config.device, patience=None, balance=config.balance, precision=config.precision)
    # the FROC pixel size and left-out slides only change the evaluation: another value must not retrain; runs from
    # before --classes (classes None) keep their fingerprint
    trained_on = {k: v for k, v in config.to_dict().items()
                  if k not in ("froc_mpp", "exclude") and not (k == "classes" and v is None)}
    fingerprint = hashlib.sha256(json.dumps({"config": trained_on,
                                             "train": sorted(it.slide_id for it in train)},
                                            sort_keys=True).encode()).hexdigest()[:16]
    done = False
    if (checkpoint / "config.json").is_file():
        _, _, meta = load_checkpoint(checkpoint)
        done = meta.get("bench_fingerprint") == fingerprint
    if done:
        reporter.log(f"checkpoint {checkpoint} is up to date: training skipped")
    else:
        train_from_stores(train, stores_dir, config.encoder, checkpoint, train_cfg, folds=config.folds,
                          meta={"bench_fingerprint": fingerprint}, reporter=reporter, classes=config.classes,
                          overwrite=overwrite, replace_own=True)

    test_stores = [p for p in store_paths(stores_dir, [it.slide_id for it in test]) if p.exists()]
    model_name = "bench"
    rows, _ = predict_stores(test_stores, checkpoint, model_name=model_name, reporter=reporter)
    describe_rows(rows, test)
    with guard.writing(out_dir / "predictions.csv") as target:
        predictions_csv = write_predictions_csv(target, rows)
    classes = ClassSet(tuple(checkpoint_classes(checkpoint)))
    if not classes.binary:
        guard.check(out_dir / "confusion.png")
    ev = evaluate_predictions(rows, test, classes, out_dir, seed=config.seed, n_bootstrap=1000, reliability=False,
                              title=f"{config.encoder} + {config.head}: test slides")
    if ev is not None:
        guard.record(*ev.plots.values())
    # test slides without labels (a CAMELYON16 copy without reference.csv) leave the slide metrics undefined
    metrics = ev.metrics if ev is not None else (
        binary_metrics([], [], n_bootstrap=0) if classes.binary
        else multiclass_metrics(np.zeros(0, np.int64), np.zeros((0, classes.n)), class_names=list(classes.names)))
    if classes.binary:
        auc = {k: metrics[k] for k in ("auc", "auc_ci_low", "auc_ci_high", "auc_defined")}
    else:
        auc = {"auc": metrics["macro_auc_ovr"], "auc_ci_low": metrics["macro_auc_ci_low"],
               "auc_ci_high": metrics["macro_auc_ci_high"], "auc_defined": metrics["auc_defined"]}

    froc = froc_skipped = None
    if classes.binary:
        truth = prepare_froc_truth(test, out_dir / "ground_truth", guard=guard,
                                   expect_truth=not isinstance(source, list) and is_camelyon_folder(source))
    else:
        truth = FrocTruth()
        froc_skipped = (f"the lesion FROC is defined for binary tumour-vs-normal tasks; this one has {classes.n} "
                        f"classes ({', '.join(classes.names)})")
        reporter.log(f"lesion FROC and detections skipped: {froc_skipped}")
    for warning in truth.warnings:
        reporter.log(f"[yellow]warning:[/yellow] {warning}")
    if truth.defined:
        froc = lesion_froc(test_stores, rows, model_name, out_dir / "detections", out_dir / "ground_truth", truth,
                           config, guard)
        with guard.writing(out_dir / "froc.png") as target:
            plot_froc(froc, target)

    seconds = time.perf_counter() - t0
    weights_file = checkpoint / "model.safetensors"
    with guard.writing(out_dir / "bench.json") as target:
        record = write_json(target, strict_json({
            "software": _versions(),
            "config": config.to_dict(),
            "checkpoint": {"path": str(checkpoint), "sha256": file_sha256(weights_file)},
            "encoder_weights": json.loads((checkpoint / "config.json").read_text()).get("meta", {}).get(
                "feature_attrs", {}).get("weights"),
            "splits": {"train": [it.slide_id for it in train], "test": [it.slide_id for it in test]},
            "metrics": metrics,
            "froc": None if froc is None else {k: froc[k] for k in ("sensitivity", "froc", "defined", "mpp")},
            "froc_truth": truth.to_dict(),
            "excluded": {"slides": excluded, "not_found": unknown},
            "warnings": truth.warnings,
            **({"froc_skipped": froc_skipped} if froc_skipped else {}),
            "classes": classes.to_json(),
            "predictions": rows,
            "seconds": seconds,
        }))
    with guard.writing(out_dir / "report.md"):
        report = _write_report(out_dir, config, metrics, froc, rows, seconds, record, classes, froc_skipped)
    return BenchResult(out_dir=out_dir, auc=auc, metrics=metrics, froc=froc, report=report, record=record,
                       checkpoint=checkpoint, predictions_csv=predictions_csv, seconds=seconds, classes=classes,
                       froc_skipped=froc_skipped)


def _write_report(out_dir: Path, config: BenchConfig, metrics: dict, froc: dict | None, rows: list[dict],
                  seconds: float, record: Path, classes: ClassSet, froc_skipped: str | None) -> Path:
    rec = json.loads(record.read_text())
    f = lambda v: "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3f}"  # noqa: E731
    lines = ["# slidestream benchmark report", ""]
    if classes.binary:
        lines.append(
            f"- **slide AUC {f(metrics['auc'])}** (95 % bootstrap CI {f(metrics['auc_ci_low'])}–"
            f"{f(metrics['auc_ci_high'])}), accuracy {f(metrics.get('accuracy'))}, balanced accuracy "
            f"{f(metrics.get('balanced_accuracy'))}, {metrics['n']} test slides ({metrics['n_pos']} "
            + ("tumour)" if classes.is_index else f"{classes.positive})"))
        tables = ["| slide | label | P(tumour) | calibrated | spread |" if classes.is_index else
                  f"| slide | label | P({classes.positive}) | calibrated | spread |", "|---|---|---|---|---|"]
        for r in rows:
            tables.append(f"| {r['slide_id']} | {r.get('label', '')} | {r['probability']:.3f} | "
                          f"{r['calibrated_probability']:.3f} | {r['uncertainty']:.3f} |")
    else:
        head, tables = multiclass_report_lines(metrics, rows, classes)
        lines += head
    if froc_skipped:
        lines.append(f"- lesion FROC: not computed ({froc_skipped})")
    if froc is not None:
        sens = ", ".join(f"{k} FP: {f(froc['sensitivity'][k])}" for k in FROC_KEYS)
        lines.append(f"- **lesion FROC {f(froc['froc'])}** ({sens}; evaluated at {froc['mpp']:g} µm/px)")
    lines += [
        f"- encoder `{config.encoder}` (weights: {rec.get('encoder_weights')}), head `{config.head}`, "
        f"{config.folds}-fold CV, {config.epochs} epochs, lr {config.lr}, seed {config.seed}",
        f"- tiling: {config.tiling.tile_size} px at {config.tiling.mpp} µm/px, min tissue {config.tiling.min_tissue},"
        f" stain {config.stain or 'none'}",
        f"- checkpoint sha256 {rec['checkpoint']['sha256'][:16]}…; software: "
        + ", ".join(f"{k} {v}" for k, v in rec["software"].items() if v),
        f"- time {seconds:.0f} s; plots: `roc.png`" + (", `froc.png`" if froc is not None else "")
        + ("" if classes.binary else ", `confusion.png`")
        + "; record: `bench.json`; predictions: `predictions.csv`",
    ]
    if rec.get("excluded", {}).get("slides"):
        lines.append(f"- left out by --exclude: {', '.join(rec['excluded']['slides'])}")
    lines += [f"- **warning**: {w}" for w in rec.get("warnings", [])]
    lines += [
        "",
        *tables,
    ]
    return atomic_write(out_dir / "report.md", "\n".join(lines) + "\n")
