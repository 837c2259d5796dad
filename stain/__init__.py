"""Stain normalisation and augmentation for H&E tiles.

Normalisers (Macenko, Reinhard, Vahadane) share one API::

    norm = get_normalizer("macenko")          # built-in H&E target; norm.fit(reference) to use your own
    norm.transform(tiles)                     # per-image: each tile's stain estimated from itself
    norm.fit_source(sample_tiles)             # per-slide: estimate the slide's stain once ...
    norm.transform(tiles)                     # ... then every tile gets the same fixed map (fast)
    record = norm.to_dict()                   # JSON: method, version, config, target, source
    norm = from_dict(record)

``tiles`` are RGB uint8, channels last, ``(N, H, W, 3)`` or ``(H, W, 3)``, numpy or torch (any device); the output
has the input's type, shape and device. :func:`augment_hed` jitters stain amounts for training.
"""

from .augment import augment_hed
from .base import StainEstimationError, StainNormalizer
from .macenko import MacenkoConfig, MacenkoNormalizer
from .matrix import DEFAULT_HE_REFERENCE, render_stains, stain_concentrations
from .params import LabStats, StainMatrixParams
from .registry import available_methods, from_dict, get_normalizer, register_method
from .reinhard import DEFAULT_LAB_REFERENCE, ReinhardConfig, ReinhardNormalizer
from .vahadane import VahadaneConfig, VahadaneNormalizer

__all__ = [
    "DEFAULT_HE_REFERENCE",
    "DEFAULT_LAB_REFERENCE",
    "LabStats",
    "MacenkoConfig",
    "MacenkoNormalizer",
    "ReinhardConfig",
    "ReinhardNormalizer",
    "StainEstimationError",
    "StainMatrixParams",
    "StainNormalizer",
    "VahadaneConfig",
    "VahadaneNormalizer",
    "augment_hed",
    "available_methods",
    "from_dict",
    "get_normalizer",
    "register_method",
    "render_stains",
    "stain_concentrations",
]
