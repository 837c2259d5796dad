"""The stage runner: one slide at a time here, or one task per slide on a ``dask.distributed`` cluster, with the
same per-slide outcome protocol and run record either way.

A stage's unit of work is a *job*: a function of one item (a slide or a store) returning a dict of details
(``"_status"`` may say ``"skipped"``; ``"_seconds"`` is its own timing). A job that raises fails its slide, never the
batch: the failure is reported with its reason, the other slides go on, and ``run-<stage>.json`` lists every slide
with its status, time and error.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..fileio import OutputGuard
from .cluster import batch_client, run_on_cluster
from .records import SlideOutcome, error_text, write_run_record
from .reporting import Reporter

__all__ = ["run_per_slide", "run_stage"]


def run_per_slide(items: list, stage: str, fn, reporter: Reporter, *, label=lambda it: it.slide_id,
                  path=lambda it: str(it.path)) -> list[SlideOutcome]:
    """Apply ``fn(item, task)`` to every item; exceptions become failed outcomes and the batch goes on."""
    outcomes = []
    with reporter.task(f"{stage}: {len(items)} slide(s)", len(items)) as overall:
        for i, it in enumerate(items):
            t0 = time.perf_counter()
            try:
                details = fn(it) or {}
                status = details.pop("_status", "ok")
                details.pop("_seconds", None)
                outcomes.append(SlideOutcome(label(it), path(it), status, time.perf_counter() - t0, None, details))
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - one bad slide must not end the batch
                msg = error_text(exc)
                reporter.log(f"[red]failed[/red] {label(it)}: {msg}")
                outcomes.append(SlideOutcome(label(it), path(it), "failed", time.perf_counter() - t0, msg))
            overall.update(i + 1)
    return outcomes


def run_stage(items: list, stage: str, job: Callable[[Any], dict | None], *, reporter: Reporter,
              scheduler: str | None = None, cluster_job: Callable[..., dict] | None = None,
              cluster_args: Callable[[Any], tuple] | None = None, record_dir: str | Path | None = None,
              params: dict | None = None, label: Callable[[Any], str] = lambda it: it.slide_id,
              path: Callable[[Any], str] = lambda it: str(it.path), guard: OutputGuard | None = None
              ) -> list[SlideOutcome]:
    """Run a stage over ``items`` here or on a cluster, and write its run record.

    Parameters
    ----------
    items : list
        Slides or stores.
    stage : str
        Name of the stage: progress text, cluster task keys and ``run-<stage>.json``.
    job : callable(item) -> dict
        The unit of work when the stage runs in this process.
    reporter : Reporter
    scheduler : str, optional
        A ``dask.distributed`` address or ``"local"``: each item becomes one task running
        ``cluster_job(*cluster_args(item))`` on a worker (a module-level, picklable function and arguments that
        make sense on the worker's file system); see :func:`slidestream.pipeline.cluster.run_on_cluster`.
    record_dir : path, optional
        Where ``run-<stage>.json`` goes; None writes no record.
    params : dict, optional
        The stage's parameters, for the record (``cluster`` is added on a cluster).
    label, path : callable(item) -> str
        Slide id and path of an item, for its outcome.
    guard : OutputGuard, optional
        What may be replaced by the run record (:func:`~slidestream.pipeline.records.write_run_record`).

    Returns
    -------
    list of SlideOutcome
        One per item, in input order.
    """
    params = dict(params or {})
    if scheduler:
        if cluster_job is None or cluster_args is None:
            raise TypeError(f"stage {stage!r} cannot run on a cluster: no cluster job given")
        with batch_client(scheduler, log=reporter.log) as client, \
                reporter.task(f"{stage}: {len(items)} slide(s) on {client.scheduler.address}", len(items)) as t:
            outcomes, cluster = run_on_cluster(client, items, cluster_job, cluster_args, stage=stage, label=label,
                                               path=path, on_done=lambda d: t.update(d), log=reporter.log)
        params["cluster"] = cluster.to_dict()
    else:
        outcomes = run_per_slide(items, stage, job, reporter, label=label, path=path)
    if record_dir is not None:
        write_run_record(record_dir, stage, outcomes, params, guard=guard)
    return outcomes
