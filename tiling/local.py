"""How many local workers a tiling run has, and whether they can be forked processes.

Kept apart from the tiler (which imports Zarr and Dask) because the tissue stage asks it too
(:func:`slidestream.tiling.overview.start_tissue_mask`).
"""

from __future__ import annotations

import os
import sys


def local_workers(workers: int | None) -> int:
    """How many local workers ``workers`` means (None: one per CPU core)."""
    return max(1, workers or os.cpu_count() or 1)


def local_processes_available() -> bool:
    """Whether local workers can be forked processes (Linux): they start in milliseconds with everything imported."""
    import multiprocessing

    # a daemonic process (a dask.distributed worker by default) may not have children
    return (sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()
            and not multiprocessing.current_process().daemon)
