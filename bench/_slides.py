"""Synthetic benchmark slides, written once and cached (shared by the bench scripts)."""

from __future__ import annotations

import time
from pathlib import Path

from slidestream.synth import SynthConfig, write_synthetic_slide


def synthetic_slide(cache: Path, width: int, height: int) -> Path:
    """A 40x (0.25 µm/px) synthetic SVS with tumour, JPEG q70, at ``cache/synth-<w>x<h>.svs`` (written if absent)."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"synth-{width}x{height}.svs"
    if not path.is_file():
        print(f"writing {path} (once) ...", flush=True)
        t0 = time.perf_counter()
        write_synthetic_slide(path, SynthConfig(width=width, height=height, mpp=0.25, tumor=True, jpeg_quality=70),
                              annotation_dir=cache / "annotations")
        print(f"  {time.perf_counter() - t0:.0f} s, {path.stat().st_size / 2**20:.0f} MiB", flush=True)
    return path
