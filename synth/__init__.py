"""Synthetic H&E slides and labelled data sets, written offline with ground truth (as ``skimage.data``).

:func:`write_synthetic_slide` writes one pyramidal Aperio SVS (or generic tiled TIFF) that OpenSlide and tiffslide
read, with tumour outlines as ASAP XML and QuPath GeoJSON; :func:`write_synthetic_dataset` writes a labelled set
(``labels.csv``) for the demo; :func:`write_camelyon16` writes a benchmark set in the CAMELYON16 layout that is hard
in the ways CAMELYON16 is (micro-metastases and isolated tumour cells, tumour look-alikes, two scanners,
artefacts). Used by the demo, the tests and the benchmarks.
"""

from .camelyon16 import Camelyon16Preset, write_camelyon16
from .dataset import write_synthetic_dataset
from .scene import SynthConfig, render_synthetic_region
from .slide import SynthSlide, write_synthetic_slide

__all__ = ["Camelyon16Preset", "SynthConfig", "SynthSlide", "render_synthetic_region", "write_camelyon16",
           "write_synthetic_dataset", "write_synthetic_slide"]
