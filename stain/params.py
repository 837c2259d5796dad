"""Fitted stain parameters: small immutable records that round-trip through JSON.

Two kinds exist: :class:`StainMatrixParams` (Macenko, Vahadane) and :class:`LabStats` (Reinhard). Both are used
for a *target* (the appearance to reach) and for a *source* (a slide's own stain, estimated once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import numpy as np

from ..errors import ConfigError

# Two stain vectors closer than this cannot be told apart: pinv would amplify noise by more than 1/sin(2°) ~ 29.
MIN_STAIN_ANGLE_DEG = 2.0
# A 99th-percentile concentration below this means the stain is essentially absent; scaling it up to a
# typical target (~1-2) would amplify noise a hundredfold. Above the maximum, no 8-bit pixel can be explained.
MIN_MAX_CONC = 0.01
MAX_MAX_CONC = 100.0
# A channel spread below this (L*a*b* units; one grey level moves L by ~0.4) means a single colour: rescaling it
# would blow quantisation noise up into false contrast.
MIN_LAB_STD = 0.05


def _floats(value: Any, shape: tuple[int, ...], name: str, kind: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{kind}: {name} must be numbers of shape {shape}, got {value!r}") from exc
    if arr.shape != shape:
        raise ConfigError(f"{kind}: {name} must have shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"{kind}: {name} must be finite, got {arr.tolist()}")
    arr = arr.copy()
    arr.flags.writeable = False
    return arr


def _require_keys(data: Mapping[str, Any], keys: tuple[str, ...], kind: str) -> None:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{kind}: expected a mapping (as written by to_dict()), got {type(data).__name__}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise ConfigError(f"{kind}: missing {missing}; pass the dictionary written by to_dict()")


def stain_angle_deg(stain_matrix: np.ndarray) -> float:
    """Angle in degrees between the two columns of a ``(3, 2)`` stain matrix."""
    u, v = stain_matrix[:, 0], stain_matrix[:, 1]
    cos = float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))
    return math.degrees(math.acos(min(1.0, max(-1.0, cos))))


@dataclass(frozen=True, eq=False)
class StainMatrixParams:
    """Stain vectors and concentration scale of one H&E appearance.

    Parameters
    ----------
    stain_matrix : array_like, shape (3, 2), float
        Optical-density vectors as columns, hematoxylin first then eosin; rows are R, G, B. Stored normalised to
        unit length; the two must be at least ``MIN_STAIN_ANGLE_DEG`` (2°) apart.
    max_conc : array_like, shape (2,), float
        Robust maximum (by default the 99th percentile) of each stain's concentration over tissue pixels, in OD
        units, within ``[MIN_MAX_CONC, MAX_MAX_CONC]`` = ``[0.01, 100]``.

    Raises
    ------
    ConfigError
        Wrong shape, non-finite values, or values outside the ranges above (a degenerate stain description,
        which would make the normalising map blow up).
    """

    stain_matrix: np.ndarray
    max_conc: np.ndarray

    kind: ClassVar[str] = "stain_matrix"

    def __post_init__(self) -> None:
        m = _floats(self.stain_matrix, (3, 2), "stain_matrix", type(self).__name__)
        c = _floats(self.max_conc, (2,), "max_conc", type(self).__name__)
        if not np.all((c >= MIN_MAX_CONC) & (c <= MAX_MAX_CONC)):
            raise ConfigError(
                f"StainMatrixParams: max_conc must be positive, in [{MIN_MAX_CONC}, {MAX_MAX_CONC}], got {c.tolist()}"
            )
        norms = np.linalg.norm(m, axis=0)
        if np.any(norms <= 1e-12):
            raise ConfigError("StainMatrixParams: stain_matrix has an all-zero column; re-fit from tissue pixels")
        if not np.allclose(norms, 1.0, rtol=0.0, atol=1e-12):  # already unit: keep the bits, so records round-trip
            m = m / norms
        angle = stain_angle_deg(m)
        if angle < MIN_STAIN_ANGLE_DEG:
            raise ConfigError(
                f"StainMatrixParams: the stain vectors are {angle:.3f}° apart, less than {MIN_STAIN_ANGLE_DEG}°: "
                "two stains this similar cannot be separated; re-fit from tiles showing both nuclei and stroma"
            )
        m.flags.writeable = False
        object.__setattr__(self, "stain_matrix", m)
        object.__setattr__(self, "max_conc", c)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: ``{"kind", "stain_matrix": [[r_h, r_e], [g_h, g_e], [b_h, b_e]], "max_conc"}``."""
        return {"kind": self.kind, "stain_matrix": self.stain_matrix.tolist(), "max_conc": self.max_conc.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "StainMatrixParams":
        """Inverse of :meth:`to_dict`; raises :class:`~slidestream.errors.ConfigError` on a malformed record."""
        _require_keys(data, ("stain_matrix", "max_conc"), cls.__name__)
        return cls(data["stain_matrix"], data["max_conc"])

    def __repr__(self) -> str:
        m = np.round(self.stain_matrix, 4).tolist()
        return f"StainMatrixParams(stain_matrix={m}, max_conc={np.round(self.max_conc, 4).tolist()})"


@dataclass(frozen=True, eq=False)
class LabStats:
    """Per-channel mean and standard deviation of tissue pixels in CIE L*a*b* (Reinhard's statistics).

    Parameters
    ----------
    mean : array_like, shape (3,), float
        Mean ``L``, ``a``, ``b`` (``L`` in ``[0, 100]``, scikit-image conventions).
    std : array_like, shape (3,), float
        Population standard deviation of each channel; at least ``MIN_LAB_STD`` (0.05).
    """

    mean: np.ndarray
    std: np.ndarray

    kind: ClassVar[str] = "lab_stats"

    def __post_init__(self) -> None:
        mean = _floats(self.mean, (3,), "mean", type(self).__name__)
        std = _floats(self.std, (3,), "std", type(self).__name__)
        if np.any(std < MIN_LAB_STD):
            raise ConfigError(f"LabStats: std must be at least {MIN_LAB_STD}, got {std.tolist()}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: ``{"kind", "mean": [L, a, b], "std": [L, a, b]}``."""
        return {"kind": self.kind, "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LabStats":
        """Inverse of :meth:`to_dict`; raises :class:`~slidestream.errors.ConfigError` on a malformed record."""
        _require_keys(data, ("mean", "std"), cls.__name__)
        return cls(data["mean"], data["std"])

    def __repr__(self) -> str:
        return f"LabStats(mean={np.round(self.mean, 3).tolist()}, std={np.round(self.std, 3).tolist()})"


