"""The checks a checkpoint's ``config.json`` passes before anything is built from it.

A checkpoint may come from anywhere (a colleague, a download, a hand edit), and its config decides what the
model computes: a negative temperature turns P(tumour) 0.009 into 0.991, a zero or tiny one makes every
probability NaN, an ``ensemble_size`` of a million builds a million heads. So every key is checked for its type,
its range and its finiteness, and every size is checked against the tensors of ``model.safetensors`` (read from
its header, before a head is built): the number of ensemble members, ``in_dim``, ``n_classes`` and the head's
keyword arguments, which go through the head's own constructor on PyTorch's ``meta`` device (no memory) and must
give exactly the parameter names and shapes stored. Feature normalisers and tiling parameters in ``meta`` are
checked too. Every refusal is a :class:`~slidestream.errors.CheckpointError` naming the file and the key.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError

__all__ = ["MAX_CLASSES", "TEMPERATURE_RANGE", "CheckpointSpec", "check_meta", "check_temperature", "check_weights",
           "config_spec", "safetensors_header"]

#: Temperatures a checkpoint may carry. Calibration fits within (0.05, 20); outside this range a temperature is a
#: mistake (0 or a tiny value makes probabilities NaN, a negative one inverts them).
TEMPERATURE_RANGE = (1e-2, 1e2)
#: More slide classes than any diagnostic task has; a larger ``n_classes`` is a damaged or hostile config.
MAX_CLASSES = 1000
_REDO = "re-save the checkpoint, or retrain it"
_MEMBER = re.compile(r"^members\.(\d+)\.")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _refuse(where: Path, key: str, problem: str) -> CheckpointError:
    return CheckpointError(f"{where}: {key}: {problem}; {_REDO}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_temperature(value: Any, what: str = "temperature") -> float:
    """``value`` as a float when it is a finite number within :data:`TEMPERATURE_RANGE`.

    Raises
    ------
    ConfigError
        Naming ``what`` and the range.
    """
    lo, hi = TEMPERATURE_RANGE
    if not _is_number(value) or not lo <= float(value) <= hi:
        raise ConfigError(f"{what} must be a finite number in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class CheckpointSpec:
    """What a checked ``config.json`` says to build."""

    head: str
    head_kwargs: dict[str, Any]
    in_dim: int
    n_classes: int
    temperature: float
    ensemble_size: int
    weights: str
    weights_sha256: str | None


def config_spec(doc: Any, cfg_path: Path, format_name: str, format_version: int) -> CheckpointSpec:
    """Check the keys of a parsed ``config.json`` (types, ranges, finiteness); sizes are checked against the
    weights later by :func:`check_weights`.

    Raises
    ------
    CheckpointError
        Naming ``cfg_path`` and the key.
    """
    if not isinstance(doc, dict) or doc.get("format") != format_name:
        raise CheckpointError(f"{cfg_path}: not a slidestream MIL checkpoint config (no \"format\": "
                              f"\"{format_name}\")")
    version = doc.get("format_version", 1)
    if not _is_int(version) or version < 1:
        raise _refuse(cfg_path, "format_version", f"must be a positive integer, got {version!r}")
    if version > format_version:
        raise CheckpointError(f"{cfg_path}: written by a newer slidestream (format {version}); upgrade slidestream")
    for key in ("head", "in_dim", "n_classes"):
        if key not in doc:
            raise _refuse(cfg_path, key, "missing")
    head = doc["head"]
    if not isinstance(head, str) or not head.strip():
        raise _refuse(cfg_path, "head", f"must be the name of a MIL head, got {head!r}")
    kwargs = doc.get("head_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise _refuse(cfg_path, "head_kwargs", f"must be an object of keyword arguments, got {kwargs!r}")
    for k, v in kwargs.items():
        if not (v is None or isinstance(v, (bool, str)) or _is_number(v)):
            raise _refuse(cfg_path, f"head_kwargs.{k}", f"must be a finite number, a string, true/false or null, "
                                                        f"got {v!r}")
    in_dim, n_classes = doc["in_dim"], doc["n_classes"]
    if not _is_int(in_dim) or in_dim < 1:
        raise _refuse(cfg_path, "in_dim", f"must be a positive integer (the feature dimension), got {in_dim!r}")
    if not _is_int(n_classes) or not 2 <= n_classes <= MAX_CLASSES:
        raise _refuse(cfg_path, "n_classes", f"must be an integer in [2, {MAX_CLASSES}], got {n_classes!r}")
    size = doc.get("ensemble_size", 1)
    if not _is_int(size) or size < 1:
        raise _refuse(cfg_path, "ensemble_size", f"must be a positive integer, got {size!r}")
    try:
        temperature = check_temperature(doc.get("temperature", 1.0), "the softmax temperature")
    except ConfigError as exc:
        raise _refuse(cfg_path, "temperature", str(exc)) from None
    weights = doc.get("weights", "model.safetensors")
    if not isinstance(weights, str) or Path(weights).name != weights or not weights.endswith(".safetensors"):
        raise _refuse(cfg_path, "weights", f"must name a .safetensors file in the same folder, got {weights!r}")
    digest = doc.get("weights_sha256")
    if digest is not None and not (isinstance(digest, str) and _HEX64.match(digest)):
        raise _refuse(cfg_path, "weights_sha256", f"must be 64 lower-case hex digits, got {digest!r}")
    for key in ("train_config", "meta"):
        if doc.get(key) is not None and not isinstance(doc[key], dict):
            raise _refuse(cfg_path, key, f"must be an object, got {type(doc[key]).__name__}")
    return CheckpointSpec(head=head, head_kwargs=dict(kwargs), in_dim=in_dim, n_classes=n_classes,
                          temperature=temperature, ensemble_size=size, weights=weights, weights_sha256=digest)


def safetensors_header(data: bytes, path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor name → (dtype, shape) from a safetensors file's header, reading no tensor.

    Raises
    ------
    CheckpointError
        A header that is not what safetensors writes.
    """
    n = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8:8 + n])
        out = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            shape = tuple(int(s) for s in entry["shape"])
            if any(s < 0 for s in shape):
                raise ValueError(f"negative size in {name}")
            out[str(name)] = (str(entry["dtype"]), shape)
        return out
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"{path}: damaged safetensors header ({exc}); {_REDO}") from exc


def _members(names: list[str]) -> int | None:
    """Members of an ensemble's weights (``members.<i>.``, numbered from 0 without gaps), None for one head."""
    found = {_MEMBER.match(n) for n in names}
    if None in found:
        return None if found == {None} else -1
    indices = sorted({int(m.group(1)) for m in found})
    return len(indices) if indices == list(range(len(indices))) else -1


def check_weights(spec: CheckpointSpec, tensors: dict[str, tuple[str, tuple[int, ...]]], cfg_path: Path,
                  weights_path: Path) -> bool:
    """Check the config's sizes against the stored tensors; returns whether the weights are an ensemble's.

    The head is built on the ``meta`` device (no memory) with the config's name, ``in_dim``, ``n_classes`` and
    ``head_kwargs`` through its own constructor, and its parameter names and shapes must be exactly those stored
    (per member for an ensemble).

    Raises
    ------
    CheckpointError
        Naming the key that disagrees with the weights.
    """
    from .heads import get_head

    members = _members(list(tensors))
    if members == -1:
        raise CheckpointError(f"{weights_path}: mixes ensemble members (members.<i>.) with other tensors or skips "
                              f"member numbers; {_REDO}")
    stored = 1 if members is None else members
    if spec.ensemble_size != stored:
        raise _refuse(cfg_path, "ensemble_size", f"says {spec.ensemble_size} but {weights_path.name} holds "
                                                 f"{stored} member(s)")
    elements = sum(math.prod(shape) for _, shape in tensors.values())
    for key, value in [("in_dim", spec.in_dim), ("n_classes", spec.n_classes),
                       *((f"head_kwargs.{k}", v) for k, v in spec.head_kwargs.items() if _is_int(v))]:
        if value > max(elements, 1):
            raise _refuse(cfg_path, key, f"{value} is larger than all {elements} numbers stored in "
                                         f"{weights_path.name} together")
    try:
        with torch.device("meta"):
            head = get_head(spec.head, spec.in_dim, spec.n_classes, **spec.head_kwargs)
    except ConfigError as exc:
        key = "head" if "unknown MIL head" in str(exc) else "head_kwargs"
        raise _refuse(cfg_path, key, str(exc)) from None
    except (TypeError, ValueError, RuntimeError) as exc:
        raise _refuse(cfg_path, "head_kwargs", f"the {spec.head} head refuses them ({exc})") from None
    prefixes = [""] if members is None else [f"members.{i}." for i in range(stored)]
    expected = {p + k: tuple(v.shape) for p in prefixes for k, v in head.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if expected[k] != tensors[k][1])
    if missing or extra or wrong:
        parts = ([f"missing {', '.join(missing[:3])}"] if missing else []) + (
            [f"unexpected {', '.join(extra[:3])}"] if extra else []) + (
            [f"{k} is {list(tensors[k][1])} in the file but {list(expected[k])} for the config" for k in wrong[:3]])
        raise CheckpointError(
            f"{weights_path}: the weights do not fit the head {cfg_path.name} describes ({spec.head}, in_dim "
            f"{spec.in_dim}, n_classes {spec.n_classes}, head_kwargs {spec.head_kwargs}): {'; '.join(parts)}; a "
            "checkpoint written before the head changed must be retrained")
    floats = {p + k for p in prefixes for k, v in head.state_dict().items() if v.is_floating_point()}
    non_float = sorted(k for k in floats if not tensors[k][0].startswith(("F", "BF")))
    if non_float:
        raise CheckpointError(f"{weights_path}: {non_float[0]} holds {tensors[non_float[0]][0]} numbers, not "
                              f"floating point; {_REDO}")
    return members is not None


def check_finite(state: dict[str, torch.Tensor], weights_path: Path) -> None:
    """Refuse weights holding NaN or infinite values (every probability would be NaN)."""
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{weights_path}: tensor {name} holds NaN or infinite values; {_REDO}")


def _vector(value: Any, n: int, cfg_path: Path, key: str, *, positive: bool = False) -> None:
    if not isinstance(value, list) or len(value) != n:
        got = f"{len(value)} values" if isinstance(value, list) else repr(type(value).__name__)
        raise _refuse(cfg_path, key, f"must be a list of {n} numbers (in_dim), got {got}")
    if not all(_is_number(v) for v in value):
        raise _refuse(cfg_path, key, "holds a value that is not a finite number (null, NaN or text)")
    if positive and not all(v > 0 for v in value):
        raise _refuse(cfg_path, key, "holds a standard deviation <= 0")


def _norm(d: Any, n: int, cfg_path: Path, key: str) -> None:
    if not isinstance(d, dict) or "mean" not in d or "std" not in d:
        raise _refuse(cfg_path, key, "must be an object with 'mean' and 'std' lists")
    _vector(d["mean"], n, cfg_path, f"{key}.mean")
    _vector(d["std"], n, cfg_path, f"{key}.std", positive=True)


def check_meta(meta: Any, cfg_path: Path, in_dim: int, n_members: int) -> dict[str, Any]:
    """Check what prediction reads from ``meta``: ``encoder``, ``tiling``, ``feature_norms`` (one per member) or
    the single ``feature_norm`` of older checkpoints; returns ``meta`` as a dict (``{}`` for none).

    Raises
    ------
    CheckpointError
        Naming ``cfg_path`` and the key (``meta.feature_norms[1].std`` …).
    """
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise _refuse(cfg_path, "meta", f"must be an object, got {type(meta).__name__}")
    if "encoder" in meta and not (isinstance(meta["encoder"], str) and meta["encoder"].strip()):
        raise _refuse(cfg_path, "meta.encoder", f"must be an encoder name, got {meta['encoder']!r}")
    tiling = meta.get("tiling")
    if tiling is not None:
        if not isinstance(tiling, dict):
            raise _refuse(cfg_path, "meta.tiling", f"must be an object, got {type(tiling).__name__}")
        mpp, size = tiling.get("mpp"), tiling.get("tile_size")
        if "mpp" in tiling and not (_is_number(mpp) and mpp > 0):
            raise _refuse(cfg_path, "meta.tiling.mpp", f"must be a positive number of µm/px, got {mpp!r}")
        if "tile_size" in tiling and not (_is_int(size) and 1 <= size <= 65536):
            raise _refuse(cfg_path, "meta.tiling.tile_size", f"must be an integer in [1, 65536], got {size!r}")
        overlap = tiling.get("overlap", 0)
        if not (_is_int(overlap) and 0 <= overlap < (size if _is_int(size) else 65536)):
            raise _refuse(cfg_path, "meta.tiling.overlap", f"must be an integer in [0, tile_size), got {overlap!r}")
        frac = tiling.get("min_tissue", 0.5)
        if not (_is_number(frac) and 0 <= frac <= 1):
            raise _refuse(cfg_path, "meta.tiling.min_tissue", f"must be a number in [0, 1], got {frac!r}")
    if "feature_norms" in meta:
        norms = meta["feature_norms"]
        if not isinstance(norms, list) or len(norms) != n_members:
            got = len(norms) if isinstance(norms, list) else type(norms).__name__
            raise _refuse(cfg_path, "meta.feature_norms", f"must list one normaliser per ensemble member "
                                                          f"({n_members}), got {got}")
        for i, d in enumerate(norms):
            _norm(d, in_dim, cfg_path, f"meta.feature_norms[{i}]")
    if "feature_norm" in meta:
        _norm(meta["feature_norm"], in_dim, cfg_path, "meta.feature_norm")
    return meta
