"""Run a batch stage on a ``dask.distributed`` cluster: one task per slide, retried, failures kept per slide.

A batch stage (tiling, embedding) becomes one task per slide, submitted to the cluster as a whole so that slides
run in parallel on the workers. Each task reads its slide and writes its store on the worker that runs it, so the
slides and the output folder must be at the same paths on every worker (a shared file system).

Fault tolerance comes from three places:

- the scheduler re-runs the tasks of a worker that dies (these re-runs are not counted as failures);
- a task that raises is retried ``retries`` times, then its slide is reported as failed and the batch goes on;
- every store is resumable chunk by chunk, so a re-run task (or a re-run of the whole batch after the client was
  killed) redoes only the chunks not marked done.

Which workers were lost during the batch, and how many times each slide's task was started, go into the run
record (``details["attempts"]`` and ``details["worker"]`` per slide, ``cluster`` in the parameters).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from .records import SlideOutcome, error_text

#: ``--scheduler`` value that starts a local cluster (worker processes on 127.0.0.1) instead of local threads.
LOCAL_CLUSTER = "local"


@dataclass
class ClusterRecord:
    """What the cluster did during one batch; ``to_dict()`` goes into the run record."""

    address: str
    dashboard: str | None
    local: bool
    workers_at_start: list[str] = field(default_factory=list)
    workers_seen: set[str] = field(default_factory=set)
    workers_lost: list[str] = field(default_factory=list)
    retried_slides: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"address": self.address, "dashboard": self.dashboard, "local": self.local,
                "workers_at_start": len(self.workers_at_start), "workers_seen": len(self.workers_seen),
                "workers_lost": list(self.workers_lost), "retried_slides": list(self.retried_slides)}


def _check_address(address: str) -> None:
    # A scheme-less address is accepted by distributed but easy to mistype; say what is expected.
    if "://" not in address:
        raise ConfigError(f"--scheduler {address!r}: expected an address like tcp://host:8786, or 'local' for a "
                          "local cluster on 127.0.0.1")


@contextlib.contextmanager
def batch_client(scheduler: str | None, *, n_workers: int | None = None, threads_per_worker: int = 1,
                 log: Callable[[str], None] | None = None, timeout: float | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` for one batch.

    Parameters
    ----------
    scheduler : str or None
        Address of an existing scheduler (``tcp://host:8786``), or ``"local"`` / None for a local cluster of
        worker processes bound to 127.0.0.1 (its dashboard, also on 127.0.0.1, is printed through ``log``).
    n_workers : int, optional
        Worker processes of a local cluster (default: CPU cores).
    threads_per_worker : int
        Threads per local worker process.
    log : callable(str), optional
        Where the dashboard link goes.
    timeout : float, optional
        Seconds to wait for an external scheduler before giving up with :class:`ConfigError` (default: dask's
        ``distributed.comm.timeouts.connect``).

    Yields
    ------
    distributed.Client
    """
    from distributed import Client, LocalCluster

    log = log or (lambda m: None)
    if scheduler and scheduler != LOCAL_CLUSTER:
        _check_address(scheduler)
        try:
            client = Client(scheduler, **({"timeout": timeout} if timeout is not None else {}))
        except OSError as exc:
            raise ConfigError(f"cannot reach the dask scheduler at {scheduler} ({exc}); start one with "
                              "`dask scheduler`, or leave --scheduler out to run locally") from exc
        with client:
            log(f"dask cluster {scheduler}: {len(client.scheduler_info()['workers'])} worker(s); dashboard "
                f"{client.dashboard_link}")
            yield client
        return
    n = n_workers or os.cpu_count() or 1
    # Nothing listens beyond loopback unless a user starts their own scheduler: host and dashboard on 127.0.0.1.
    with LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", silence_logs=40) as cluster, Client(cluster) as client:
        log(f"local dask cluster: {n} worker process(es); dashboard {client.dashboard_link}")
        yield client


def _worker_addresses(client) -> set[str]:
    try:
        return set(client.scheduler_info()["workers"])
    except (OSError, KeyError):
        return set()


def _attempts(client, key: str) -> int:
    """How many times the scheduler started ``key`` on a worker (1 unless a worker died or the task was retried)."""
    try:
        story = client.story(key, on_error="ignore")
    except Exception:  # noqa: BLE001 - the story is bookkeeping; a scheduler without it must not fail the batch
        return 1
    # Story entries are (source, key, ...); the scheduler's are ("scheduler", key, start, finish, ...), and each
    # transition into "processing" is one start on a worker.
    started = sum(1 for e in story if len(e) > 3 and e[0] == "scheduler" and e[1] == key and e[3] == "processing")
    return max(started, 1)


def run_on_cluster(client, items: list, job: Callable[..., dict], args: Callable[[Any], tuple], *, stage: str,
                   label: Callable[[Any], str], path: Callable[[Any], str], retries: int = 2,
                   on_done: Callable[[int], None] | None = None, log: Callable[[str], None] | None = None,
                   ) -> tuple[list[SlideOutcome], ClusterRecord]:
    """Run ``job(*args(item))`` for every item as one cluster task each; one outcome per item, in input order.

    Parameters
    ----------
    client : distributed.Client
    items : list
        Slides or stores.
    job : callable
        A module-level (picklable) function returning a JSON-able dict of details; ``"_status"`` in it sets the
        outcome's status ("ok" by default, or "skipped").
    args : callable(item) -> tuple
        Picklable arguments of ``job`` for one item.
    stage : str
        Stage name, used in task keys (visible on the dashboard).
    label, path : callable(item) -> str
        Slide id and path of an item for its outcome.
    retries : int
        Times a task that raised is run again before its slide counts as failed. Tasks of a worker that died are
        re-run by the scheduler without using these up (up to ``distributed.scheduler.allowed-failures``).
    on_done : callable(int), optional
        Called with the number of items finished so far.

    Returns
    -------
    outcomes : list of SlideOutcome
        ``details["attempts"]`` is how many times the task was started, ``details["worker"]`` where it ended.
    record : ClusterRecord
    """
    from distributed import as_completed

    log = log or (lambda m: None)
    workers = _worker_addresses(client)
    record = ClusterRecord(address=client.scheduler.address, dashboard=client.dashboard_link,
                           local=getattr(client, "cluster", None) is not None,
                           workers_at_start=sorted(workers), workers_seen=set(workers))
    run_id = uuid.uuid4().hex[:8]
    t_submit = time.perf_counter()
    futures = {}
    for i, it in enumerate(items):
        key = f"{stage}-{label(it)}-{run_id}"
        futures[client.submit(job, *args(it), key=key, retries=retries, pure=False)] = i
    outcomes: list[SlideOutcome | None] = [None] * len(items)
    for done, fut in enumerate(as_completed(list(futures)), start=1):
        i = futures[fut]
        it = items[i]
        now = _worker_addresses(client)
        record.workers_seen |= now
        attempts = _attempts(client, fut.key)
        if fut.status == "finished":
            details = dict(fut.result() or {})
            status = details.pop("_status", "ok")
            seconds = float(details.pop("_seconds", time.perf_counter() - t_submit))
            details["attempts"] = attempts
            outcomes[i] = SlideOutcome(label(it), path(it), status, seconds, None, details)
        else:
            exc = fut.exception()
            msg = error_text(exc)
            if type(exc).__name__ == "KilledWorker":
                msg = (f"{msg}: the workers running this slide died repeatedly (out of memory? a crashing reader?); "
                       "see the worker logs, then rerun the batch to resume it")
            log(f"[red]failed[/red] {label(it)}: {msg}")
            outcomes[i] = SlideOutcome(label(it), path(it), "failed", time.perf_counter() - t_submit, msg,
                                       {"attempts": attempts})
        if attempts > 1:
            record.retried_slides.append(label(it))
        if on_done:
            on_done(done)
    record.workers_lost = sorted(record.workers_seen - _worker_addresses(client))
    if record.workers_lost:
        log(f"[yellow]{len(record.workers_lost)} worker(s) lost during the batch[/yellow]: "
            f"{', '.join(record.workers_lost)}; their slides were re-run elsewhere")
    return [o for o in outcomes if o is not None], record


def where_am_i() -> str:
    """The worker address when running inside a dask worker, else host:pid."""
    # A dask worker has imported distributed; a local run need not import it just to find out.
    if "distributed" in sys.modules:
        from distributed import get_worker

        try:
            return get_worker().address
        except ValueError:
            pass
    return f"{socket.gethostname()}:{os.getpid()}"
