"""The registry of stain normalisation methods, as timm's model registry: names to classes, filled by the method
modules with :func:`register_method` (which :mod:`slidestream.stain` imports); it imports none of them."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from ..errors import ConfigError
from .base import Params, StainNormalizer

_METHODS: dict[str, type[StainNormalizer]] = {}


def register_method(cls: type[StainNormalizer]) -> type[StainNormalizer]:
    """Class decorator filing a normaliser under its ``method`` name (lower case)."""
    key = cls.method.strip().lower()
    if key in _METHODS and _METHODS[key] is not cls:
        raise ConfigError(f"a stain normalisation method named {key!r} is already registered")
    _METHODS[key] = cls
    return cls


def available_methods() -> list[str]:
    """Names accepted by :func:`get_normalizer`, sorted."""
    return sorted(_METHODS)


def _normalizer_class(method: str) -> type[StainNormalizer]:
    key = str(method).strip().lower()
    if key not in _METHODS:
        raise ConfigError(f"unknown stain normalisation {method!r}; choose one of {available_methods()}")
    return _METHODS[key]


def get_normalizer(method: str, *, target: Params | None = None, **config: Any) -> StainNormalizer:
    """Make a stain normaliser.

    Parameters
    ----------
    method : {"macenko", "reinhard", "vahadane"}
        Case-insensitive.
    target : StainMatrixParams or LabStats, optional
        Appearance to reach; the method's built-in H&E reference when None (call ``fit(reference)`` to use an
        image instead).
    **config
        Settings of the method's config dataclass (``MacenkoConfig``, ``ReinhardConfig``, ``VahadaneConfig``),
        e.g. ``io=240, beta=0.15``.

    Returns
    -------
    StainNormalizer
        In per-image mode until ``fit_source`` is called.

    Raises
    ------
    ConfigError
        Unknown method or setting, or an invalid value.

    Examples
    --------
    >>> norm = get_normalizer("macenko")
    >>> source = norm.fit_source(sample_tiles)          # doctest: +SKIP
    >>> out = norm.transform(batch)                     # doctest: +SKIP
    """
    cls = _normalizer_class(method)
    names = {f.name for f in dataclasses.fields(cls.config_type)}
    unknown = sorted(set(config) - names)
    if unknown:
        raise ConfigError(f"{cls.method}: unknown setting(s) {unknown}; valid: {sorted(names)}")
    return cls(cls.config_type(**config), target=target)


def from_dict(data: Mapping[str, Any]) -> StainNormalizer:
    """Rebuild a normaliser (method, settings, target and any fixed source) from ``StainNormalizer.to_dict()``.

    Raises
    ------
    ConfigError
        Not such a record, an unknown method, or a record written by a newer version.
    """
    if not isinstance(data, Mapping) or "method" not in data:
        raise ConfigError("not a stain normaliser record: expected the dictionary written by to_dict()")
    return _normalizer_class(data["method"]).from_dict(data)
