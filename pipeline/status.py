"""What a folder of stores holds and what the last runs recorded (``slidestream status``), and whether the stores
are intact (``slidestream status --verify``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import StoreError
from ..store import SlideStore, verify_store
from .inputs import store_paths
from .reporting import QuietReporter, Reporter

__all__ = ["folder_status"]


def folder_status(out_dir: str | os.PathLike, *, verify: bool = False, reporter: Reporter | None = None) -> dict:
    """What a folder of stores holds and what the last runs recorded, for ``slidestream status``.

    Parameters
    ----------
    out_dir : path
        A folder of stores (``<slide_id>.zarr``).
    verify : bool
        Also read every chunk file of every array of every store and check it
        (:func:`slidestream.store.verify_store`): each store's summary gets a ``"verify"`` entry, and stores
        whose root metadata is gone are listed too.
    reporter : Reporter, optional
        Progress of the verification, one task per store.

    Returns
    -------
    dict
        ``{"stores": [store summaries], "runs": {stage: {"finished", "counts", "failed": [...]}}}``, and with
        ``verify`` ``"damaged"``: the slide ids of the damaged stores.
    """
    out_dir = Path(out_dir)
    reporter = reporter if (reporter is not None and verify) else QuietReporter()
    paths = store_paths(out_dir)
    if verify:  # a store whose zarr.json is gone is damage to report, not a folder to skip
        paths = sorted(p for p in out_dir.glob("*.zarr") if p.is_dir())
    stores = []
    with reporter.task(f"verify: {len(paths)} store(s)" if verify else "status", len(paths)) as overall:
        for i, path in enumerate(paths):
            slide_id = path.name.removesuffix(".zarr")
            try:
                entry = SlideStore.open(path).summary()
            except StoreError as exc:
                entry = {"slide_id": slide_id, "path": str(path), "error": str(exc)}
            if verify:
                with reporter.task(f"verify {slide_id}", None) as t:
                    check = verify_store(path, progress=lambda d, n: t.update(d, n))
                entry["verify"] = {**check.to_dict(), "hint": check.hint()}
            stores.append(entry)
            overall.update(i + 1)
    runs = {}
    for rec in sorted(out_dir.glob("run-*.json")):
        try:
            data = json.loads(rec.read_text())
        except (OSError, ValueError) as exc:
            runs[rec.stem.removeprefix("run-")] = {"error": f"unreadable run record: {exc}"}
            continue
        runs[data.get("stage", rec.stem)] = {
            "finished": data.get("finished"), "counts": data.get("counts", {}),
            "failed": [{"slide_id": s["slide_id"], "error": s.get("error")} for s in data.get("slides", [])
                       if s.get("status") == "failed"],
        }
    result = {"stores": stores, "runs": runs}
    if verify:
        result["damaged"] = [s["slide_id"] for s in stores if not s["verify"]["ok"]]
    return result
