"""What every stain normaliser shares: input checks, fit / fit_source / transform, and serialisation.

A normaliser holds

* ``config`` -- a frozen dataclass of the method's settings,
* ``target`` -- the appearance to reach (a built-in H&E reference until :meth:`StainNormalizer.fit` is called),
* ``source`` -- optionally, a slide's own stain estimated once by :meth:`StainNormalizer.fit_source`. With a
  source set, :meth:`StainNormalizer.transform` is a fixed per-pixel map; without one, each image's stain is
  estimated from the image itself ("per-patch" mode, as torchstain does).

Images are RGB ``uint8`` with channels last: ``(H, W, 3)`` or a batch ``(N, H, W, 3)``, as numpy arrays or torch
tensors (any device). Output has the input's type, shape, dtype and device. Estimation runs in numpy float64 on
the CPU for every input, so a numpy array and the same pixels as a tensor get the same parameters; the per-pixel
transform runs in numpy for arrays and in torch, on the tensor's device, for tensors.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Mapping, Sequence, Union

import numpy as np
import torch

from ..errors import ConfigError, SlidestreamError
from .params import LabStats, StainMatrixParams

Params = Union[StainMatrixParams, LabStats]
ImageBatch = Union[np.ndarray, torch.Tensor]


class StainEstimationError(SlidestreamError, ValueError):
    """The stain of an image or set of tiles could not be estimated (too little tissue, or a degenerate colour set).

    Raised by ``fit`` and ``fit_source``. ``transform`` in per-image mode never raises it: an image whose stain
    cannot be estimated is returned unchanged.
    """


def _package_version() -> str:
    from .. import __version__

    return __version__


def as_batch(images: Any, *, what: str = "images") -> tuple[ImageBatch, bool]:
    """Check an image or batch and view it as a C-contiguous ``(N, H, W, 3)`` uint8 array or tensor.

    Parameters
    ----------
    images : np.ndarray, torch.Tensor or array_like, shape (H, W, 3) or (N, H, W, 3), uint8
    what : str
        Name used in error messages.

    Returns
    -------
    batch : np.ndarray or torch.Tensor, shape (N, H, W, 3), uint8
    single : bool
        True when the input was one ``(H, W, 3)`` image (the caller squeezes the result back).

    Raises
    ------
    ConfigError
        On a wrong dtype, number of dimensions or channel count; the message says how to convert.
    """
    if isinstance(images, torch.Tensor):
        dtype_ok = images.dtype == torch.uint8
        arr: ImageBatch = images
    else:
        arr = np.asarray(images)
        dtype_ok = arr.dtype == np.uint8
    shape = tuple(arr.shape)
    if arr.ndim not in (3, 4) or shape[-1] != 3:
        hint = ""
        if arr.ndim in (3, 4) and shape[-1] == 4:
            hint = "; drop the alpha channel with [..., :3]"
        elif arr.ndim in (3, 4) and shape[-3] == 3:
            hint = "; channels-first input must be made channels-last, e.g. x.permute(0, 2, 3, 1)"
        raise ConfigError(f"{what} must be RGB with channels last, (H, W, 3) or (N, H, W, 3); got shape {shape}{hint}")
    if not dtype_ok:
        raise ConfigError(
            f"{what} must be uint8 in [0, 255], got {arr.dtype}; convert with "
            "(x * 255).round().clip(0, 255) to uint8 if your pixels are floats in [0, 1]"
        )
    single = arr.ndim == 3
    if single:
        arr = arr[None]
    if isinstance(arr, torch.Tensor):
        arr = arr.contiguous()
    else:
        arr = np.ascontiguousarray(arr)
    return arr, single


def to_host(batch: ImageBatch) -> np.ndarray:
    """A numpy view (CPU tensors) or host copy (other devices) of uint8 pixels, for stain estimation."""
    if isinstance(batch, torch.Tensor):
        return batch.detach().cpu().numpy()
    return batch


def collect_pixels(images: Any, *, what: str = "reference") -> np.ndarray:
    """All pixels of an image, a batch, or a sequence of images of any sizes, as one ``(n, 3)`` uint8 array.

    Tensors are copied to the host (estimation runs on the CPU, see :mod:`slidestream.stain._color`).
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise ConfigError(f"{what} is an empty sequence; pass at least one (H, W, 3) uint8 image")
        return np.concatenate([collect_pixels(item, what=what) for item in images])
    batch, _ = as_batch(images, what=what)
    return to_host(batch).reshape(-1, 3)


@dataclasses.dataclass(frozen=True)
class BaseConfig:
    """Settings every method shares.

    Parameters
    ----------
    io : float
        Transmitted light intensity, in grey levels (Macenko's ``Io``): the brightness of empty glass.
    beta : float
        Optical-density threshold separating stain from glass; with ``io=240``, 0.15 means a channel value of at
        most 205. Macenko's stain vectors use *dense* pixels (all three channels reach it); everything else
        (maximum concentrations, Vahadane's factorisation, Reinhard's statistics) uses *stained* pixels (any
        channel reaches it), so white background never counts and faint eosin does.
    min_tissue_pixels : int
        Fewer such pixels than this and no stain is estimated: ``fit``/``fit_source`` raise
        :class:`StainEstimationError`, per-image ``transform`` returns that image unchanged.
    max_pixels : int
        Pixels used for one estimate; more are thinned by an even stride (deterministic), so fitting a few
        hundred tiles costs the same as fitting ~20.
    """

    io: float = 240.0
    beta: float = 0.15
    min_tissue_pixels: int = 64
    max_pixels: int = 1_000_000

    def __post_init__(self) -> None:
        if not 1.0 < float(self.io) <= 1024.0:
            raise ConfigError(f"io must be in (1, 1024] grey levels, got {self.io}; 240 is the usual value")
        if not 0.0 <= float(self.beta) < 5.0:
            raise ConfigError(f"beta must be an optical density in [0, 5), got {self.beta}; 0.15 is the usual value")
        if int(self.min_tissue_pixels) < 2:
            raise ConfigError(f"min_tissue_pixels must be at least 2, got {self.min_tissue_pixels}")
        if int(self.max_pixels) < int(self.min_tissue_pixels):
            raise ConfigError(f"max_pixels ({self.max_pixels}) must be >= min_tissue_pixels ({self.min_tissue_pixels})")


def thin(pixels: np.ndarray, max_pixels: int) -> np.ndarray:
    """At most ``max_pixels`` rows of ``pixels``, taken at an even stride so every tile of a batch contributes."""
    n = pixels.shape[0]
    if n <= max_pixels:
        return pixels
    return pixels[np.linspace(0, n - 1, max_pixels).astype(np.intp)]


class StainNormalizer(ABC):
    """Base class; use :func:`slidestream.stain.get_normalizer` to make one.

    Parameters
    ----------
    config : dataclass, optional
        The method's settings (``MacenkoConfig``, ``ReinhardConfig``, ``VahadaneConfig``); defaults when None.
    target : StainMatrixParams or LabStats, optional
        Appearance to reach; the method's built-in H&E reference when None.
    source : StainMatrixParams or LabStats, optional
        Fixed source stain (see :meth:`fit_source`); None means per-image estimation.
    """

    method: ClassVar[str]
    version: ClassVar[int] = 1
    config_type: ClassVar[type]
    params_type: ClassVar[type]

    def __init__(self, config: Any = None, *, target: Params | None = None, source: Params | None = None):
        if config is None:
            config = self.config_type()
        if not isinstance(config, self.config_type):
            raise ConfigError(
                f"{self.method}: config must be a {self.config_type.__name__}, got {type(config).__name__}"
            )
        self.config = config
        self.target = self._check_params(self.default_target() if target is None else target, "target")
        self.source = None if source is None else self._check_params(source, "source")

    # -- what a method provides -------------------------------------------------------------------------------
    @abstractmethod
    def default_target(self) -> Params:
        """The built-in reference appearance."""

    @abstractmethod
    def _estimate(self, pixels: np.ndarray) -> Params:
        """Parameters from ``(n, 3)`` uint8 pixels (background included); raise StainEstimationError if impossible."""

    @abstractmethod
    def _apply(self, batch: ImageBatch, sources: Sequence[Params | None]) -> ImageBatch:
        """Normalise ``(N, H, W, 3)`` uint8 images, image ``i`` from ``sources[i]`` (None: leave it unchanged)."""

    # -- public API ---------------------------------------------------------------------------------------------
    def estimate(self, images: Any) -> Params:
        """Estimate stain parameters from pixels without changing the normaliser.

        Parameters
        ----------
        images : array or tensor, (H, W, 3) or (N, H, W, 3) uint8, or a sequence of (H, W, 3) images
            All pixels are pooled; background is ignored (see ``config.beta``).

        Returns
        -------
        StainMatrixParams or LabStats

        Raises
        ------
        StainEstimationError
            Too few tissue pixels, or colours too uniform to separate two stains.
        """
        return self._estimate(collect_pixels(images))

    def fit(self, reference: Any) -> Params:
        """Make ``reference`` the target appearance; returns (and stores in ``self.target``) its parameters.

        Parameters
        ----------
        reference : array or tensor, (H, W, 3) or (N, H, W, 3) uint8, or a sequence of (H, W, 3) images
            A well-stained image or a set of tiles; background pixels are ignored.
        """
        self.target = self.estimate(reference)
        return self.target

    def fit_source(self, tiles: Any) -> Params:
        """Estimate a slide's own stain once, from a sample of its tissue tiles.

        The result is stored in ``self.source`` and returned; from then on :meth:`transform` applies the same
        fixed per-pixel map to every tile (a log, one 3x3 matrix and an exp per pixel for Macenko/Vahadane),
        which is fast and keeps neighbouring tiles consistent. Set ``self.source = None`` to go back to
        per-image estimation.

        Parameters
        ----------
        tiles : array or tensor, (N, H, W, 3) or (H, W, 3) uint8, or a sequence of (H, W, 3) images
            A few dozen to a few hundred tissue tiles spread over the slide is plenty.
        """
        self.source = self.estimate(tiles)
        return self.source

    def transform(self, images: Any, *, source: Params | None = None) -> ImageBatch:
        """Normalise images to the target appearance.

        Parameters
        ----------
        images : np.ndarray or torch.Tensor, shape (N, H, W, 3) or (H, W, 3), uint8
            Channels last. Tensors may live on any device; the work happens there.
        source : StainMatrixParams or LabStats, optional
            Fixed source stain; defaults to ``self.source``. When both are None each image's stain is estimated
            from the image itself, and an image with too little tissue (or degenerate colours) is returned
            unchanged.

        Returns
        -------
        np.ndarray or torch.Tensor
            Same type, shape, dtype (uint8) and device as ``images``.
        """
        batch, single = as_batch(images)
        src = self.source if source is None else self._check_params(source, "source")
        n = batch.shape[0]
        if n == 0 or batch.shape[1] == 0 or batch.shape[2] == 0:
            out = batch.clone() if isinstance(batch, torch.Tensor) else batch.copy()
        elif src is not None:
            out = self._apply(batch, [src] * n)
        else:
            host = to_host(batch)
            out = self._apply(batch, [self._try_estimate(host[i]) for i in range(n)])
        return out[0] if single else out

    __call__ = transform

    def to_dict(self) -> dict[str, Any]:
        """Everything needed to reproduce this normaliser, JSON-serialisable.

        Returns
        -------
        dict
            ``{"method", "version", "software", "config", "target", "source"}``; ``source`` is None in per-image
            mode. :func:`slidestream.stain.from_dict` reads it back.
        """
        return {
            "method": self.method,
            "version": self.version,
            "software": f"slidestream {_package_version()}",
            "config": dataclasses.asdict(self.config),
            "target": self.target.to_dict(),
            "source": None if self.source is None else self.source.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "StainNormalizer":
        """Rebuild a normaliser of this class from :meth:`to_dict` output."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"expected a mapping written by to_dict(), got {type(data).__name__}")
        if data.get("method") != cls.method:
            raise ConfigError(f"record is for method {data.get('method')!r}, not {cls.method!r}")
        version = data.get("version")
        if not isinstance(version, int) or version > cls.version:
            raise ConfigError(
                f"{cls.method} record has version {version!r}; this slidestream reads up to {cls.version}: upgrade it"
            )
        try:
            config = cls.config_type(**dict(data.get("config") or {}))
        except TypeError as exc:
            raise ConfigError(f"{cls.method}: unknown setting in record config: {exc}") from exc
        target = cls.params_type.from_dict(data["target"]) if data.get("target") is not None else None
        source = cls.params_type.from_dict(data["source"]) if data.get("source") is not None else None
        return cls(config, target=target, source=source)

    def __repr__(self) -> str:
        mode = "per-image" if self.source is None else "fixed source"
        return f"{type(self).__name__}({self.config}, target={self.target!r}, {mode})"

    # -- helpers ------------------------------------------------------------------------------------------------
    def _check_params(self, params: Any, name: str) -> Params:
        if not isinstance(params, self.params_type):
            raise ConfigError(
                f"{self.method}: {name} must be {self.params_type.__name__}, got {type(params).__name__}; "
                f"use the result of fit()/fit_source() of a {self.method} normaliser"
            )
        return params

    def _try_estimate(self, image: np.ndarray) -> Params | None:
        try:
            return self._estimate(image.reshape(-1, 3))
        except StainEstimationError:
            return None
