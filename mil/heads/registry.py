"""The registry of MIL heads, as timm's model registry: names to classes, filled by the head modules.

This module imports none of the heads: each head module files its class with :func:`register_head` when
:mod:`slidestream.mil.heads` imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...errors import ConfigError

if TYPE_CHECKING:
    from .base import MILHead

__all__ = ["get_head", "list_heads", "register_head"]

_REGISTRY: dict[str, type[MILHead]] = {}


def _canonical(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register_head(name: str) -> Callable[[type[MILHead]], type[MILHead]]:
    """Class decorator that files a head under ``name`` (lower case, ``-`` and ``_`` equivalent)."""

    def deco(cls: type[MILHead]) -> type[MILHead]:
        key = _canonical(name)
        if key in _REGISTRY:
            raise ConfigError(f"a MIL head named {key!r} is already registered")
        cls.head_name = key
        _REGISTRY[key] = cls
        return cls

    return deco


def list_heads() -> list[str]:
    """Names accepted by :func:`get_head`, sorted."""
    return sorted(_REGISTRY)


def get_head(name: str, in_dim: int, n_classes: int = 2, **kwargs: Any) -> MILHead:
    """Build a head by registry name.

    Parameters
    ----------
    name : str
        One of :func:`list_heads` (``"abmil"``, ``"clam_sb"``, ``"clam_mb"``, ``"transmil"``, ``"dsmil"``,
        ``"mean_pool"``, ``"max_pool"``); ``-`` may replace ``_``.
    in_dim : int
        Feature dimension ``D`` of the bags.
    n_classes : int, default 2
        Number of slide classes ``K``.
    **kwargs
        Head hyper-parameters (see each class). ``None`` values are dropped so the head default applies.

    Returns
    -------
    MILHead
        A freshly initialised head; ``head.head_name`` and ``head.head_kwargs`` record how to rebuild it.

    Raises
    ------
    ConfigError
        Unknown name, or a keyword the head does not take.
    """
    key = _canonical(name)
    if key not in _REGISTRY:
        raise ConfigError(f"unknown MIL head {name!r}; choose one of {', '.join(list_heads())}")
    kw = {k: v for k, v in kwargs.items() if v is not None}
    try:
        head = _REGISTRY[key](in_dim, n_classes, **kw)
    except TypeError as exc:
        raise ConfigError(f"bad arguments for MIL head {key!r}: {exc}") from exc
    head.head_kwargs = dict(kw)
    return head
