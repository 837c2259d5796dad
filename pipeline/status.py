"""What a folder of stores holds and what the last runs recorded (``slidestream status``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import StoreError
from ..store import SlideStore
from .inputs import store_paths

__all__ = ["folder_status"]


def folder_status(out_dir: str | os.PathLike) -> dict:
    """What a folder of stores holds and what the last runs recorded, for ``slidestream status``.

    Returns ``{"stores": [store summaries], "runs": {stage: {"finished", "counts", "failed": [...]}}}``.
    """
    out_dir = Path(out_dir)
    stores = []
    for path in store_paths(out_dir):
        try:
            stores.append(SlideStore.open(path).summary())
        except StoreError as exc:
            stores.append({"slide_id": path.name.removesuffix(".zarr"), "path": str(path), "error": str(exc)})
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
    return {"stores": stores, "runs": runs}
