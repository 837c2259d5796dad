"""Bags: the features and tile coordinates of one slide, read from its store for training and prediction."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import StoreError
from ..store import SlideStore
from .inputs import SlideInput
from .records import SlideOutcome
from .reporting import Reporter
from .runner import run_per_slide

__all__ = ["Bag", "labelled_bags", "load_bag"]


@dataclass
class Bag:
    """Features and tile coordinates of one slide."""

    slide_id: str
    store: Path
    features: np.ndarray  # (N, D) float32
    coords: np.ndarray  # (N, 2) int64
    extent0: float
    label: int | None = None
    meta: dict = field(default_factory=dict)


def load_bag(store_path: Path, encoder_name: str, label: int | None = None) -> Bag:
    """The bag of one store: its ``features/<encoder_name>``, coords and tile extent."""
    store = SlideStore.open(store_path)
    return Bag(slide_id=store.slide_id, store=Path(store_path), features=store.read_features(encoder_name),
               coords=store.coords, extent0=float(store.tiling["extent0"]), label=label)


def labelled_bags(inputs: list[SlideInput], stores_dir: Path, encoder_name: str, reporter: Reporter,
                  ) -> tuple[list[Bag], list[SlideOutcome]]:
    """Bags of every input whose store holds complete ``features/<encoder_name>`` of at least one tile; the others
    fail (reported, left out)."""
    bags: list[Bag] = []

    def one(it: SlideInput) -> dict:
        bag = load_bag(stores_dir / f"{it.slide_id}.zarr", encoder_name, it.label)
        if not len(bag.features):
            # a head cannot pool zero tiles: the slide is left out here, named, instead of failing the training
            raise StoreError(f"{bag.store}: no tissue tiles (tiling kept none), so the slide is left out; look at "
                             "its QC image (qc/<slide_id>.jpg), then re-tile it with other tissue settings "
                             "(--tissue-threshold, --min-tissue, --tissue-overrides) if it does hold tissue")
        bag.meta = dict(it.meta, split=it.split or "")
        bags.append(bag)
        return {"tiles": len(bag.features)}

    outcomes = run_per_slide(inputs, "load features", one, reporter)
    return bags, outcomes
