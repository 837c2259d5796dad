"""Synthetic H&E slides and labelled data sets, written offline with ground truth (as ``skimage.data``).

:func:`write_synthetic_slide` writes one pyramidal Aperio SVS that OpenSlide and tiffslide read, with tumour
outlines as ASAP XML and QuPath GeoJSON; :func:`write_synthetic_dataset` writes a labelled CAMELYON16-like set.
Used by the demo, the tests and the benchmarks.
"""

from .dataset import write_synthetic_dataset
from .scene import SynthConfig, render_synthetic_region
from .slide import SynthSlide, write_synthetic_slide

__all__ = ["SynthConfig", "SynthSlide", "render_synthetic_region", "write_synthetic_dataset", "write_synthetic_slide"]
