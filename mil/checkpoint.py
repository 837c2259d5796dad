"""MIL checkpoints: ``model.safetensors`` + ``config.json`` in one directory, never a pickle.

Layout of a checkpoint directory::

    model.safetensors   weights; a single head's ``state_dict``, or ``members.<i>.<name>`` for an ensemble
    config.json         {"format": "slidestream.mil", "format_version": 1, "head", "head_kwargs", "in_dim",
                         "n_classes", "classes", "temperature", "ensemble_size", "weights", "weights_sha256",
                         "train_config", "meta"}

``classes`` lists the label of each output in order: ``[0, 1, …]`` for class indices or the class names
(``["LUAD", "LUSC", "MESO"]``), so prediction can name its columns; the loaded model carries it as
``model.classes``. A checkpoint written before classes were stored loads with ``[0, …, K-1]``.

Both files are written to a temporary name and moved into place with ``os.replace``; the weights first and the
config last, so a directory with a ``config.json`` always has the weights the config names (their SHA-256 is
checked on load).

Pickle-based files (``.pt``, ``.pth``, ``.bin``, ``.ckpt``, ``.pkl``) are refused with :class:`CheckpointError`
before a byte of them is interpreted: unpickling runs arbitrary code.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_write
from .heads import MILEnsemble, MILHead, get_head

if TYPE_CHECKING:
    from .train import TrainConfig

__all__ = ["save_checkpoint", "load_checkpoint", "checkpoint_classes", "WEIGHTS_NAME", "CONFIG_NAME"]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "slidestream.mil"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle"})
_CONVERT_HINT = (
    "load it yourself only if you trust its origin, then re-save the head with "
    "slidestream.mil.checkpoint.save_checkpoint (safetensors + config.json)"
)


def _checkpoint_dir(path: str | os.PathLike) -> Path:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path}: pickle-based checkpoints are not supported ({_CONVERT_HINT})")
    if suffix in (".safetensors", ".json"):
        return path.parent
    return path


def save_checkpoint(path: str | os.PathLike, model: MILHead | MILEnsemble | list[MILHead],
                    config: TrainConfig | dict[str, Any] | None = None, meta: dict[str, Any] | None = None,
                    *, temperature: float | None = None, classes: Sequence[int | str] | None = None) -> Path:
    """Save a head, or an ensemble of heads, as ``model.safetensors`` + ``config.json``.

    Parameters
    ----------
    path : str or os.PathLike
        Checkpoint directory (created), or a ``model.safetensors`` / ``config.json`` path inside it.
    model : MILHead, MILEnsemble or list of MILHead
        What to save; a list becomes an ensemble (e.g. the fold models of a cross-validation).
    config : TrainConfig or dict, optional
        Training configuration, stored under ``"train_config"``.
    meta : dict, optional
        Any JSON-serialisable provenance (encoder name, tiling ``mpp`` / ``tile_size``, software version,
        metrics ...). NumPy scalars become Python numbers and NaN/inf become ``null`` so the file is strict JSON.
    temperature : float, optional
        Softmax temperature for calibrated probabilities; defaults to ``model.temperature``.
    classes : sequence of int or str, optional
        The label of each of the ``K`` outputs, in order; defaults to ``model.classes`` when set, else
        ``[0, …, K-1]``.

    Returns
    -------
    pathlib.Path
        The checkpoint directory.

    Raises
    ------
    ConfigError
        ``meta``/``config`` not JSON-serialisable, a model not built by :func:`get_head`, or ``classes`` that are
        not ``K`` distinct names or the indices ``0 … K-1``.
    """
    directory = _checkpoint_dir(path)
    if isinstance(model, (list, tuple)):
        model = MILEnsemble(list(model))
    if not isinstance(model, (MILHead, MILEnsemble)) or not model.head_name:
        raise ConfigError("save_checkpoint needs a head built by slidestream.mil.get_head (or an ensemble of them)")
    temperature = float(getattr(model, "temperature", 1.0) if temperature is None else temperature)
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    train_config = config.to_dict() if hasattr(config, "to_dict") else config
    classes = _check_classes(classes if classes is not None else getattr(model, "classes", None), model.n_classes,
                             "classes")

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights = st_save(state, metadata={"format": "pt", "slidestream_head": model.head_name})
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "head": model.head_name,
        "head_kwargs": model.head_kwargs,
        "in_dim": model.in_dim,
        "n_classes": model.n_classes,
        "classes": classes,
        "temperature": temperature,
        "ensemble_size": len(model.members) if isinstance(model, MILEnsemble) else 1,
        "weights": WEIGHTS_NAME,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "train_config": train_config,
        "meta": dict(meta or {}),
    }
    try:
        text = json.dumps(_strict_json(doc), indent=1, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"checkpoint config/meta must be JSON-serialisable (finite numbers, str, lists, dicts): {exc}"
        ) from exc
    atomic_write(directory / WEIGHTS_NAME, weights, fsync=True)
    atomic_write(directory / CONFIG_NAME, text + "\n", fsync=True)
    return directory


def load_checkpoint(path: str | os.PathLike, *, device: str | torch.device = "cpu"
                    ) -> tuple[MILHead | MILEnsemble, TrainConfig | None, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    path : str or os.PathLike
        Checkpoint directory, or its ``model.safetensors`` / ``config.json``.
    device : str or torch.device, default "cpu"

    Returns
    -------
    model : MILHead or MILEnsemble
        In eval mode on ``device``, with ``temperature`` set from the checkpoint.
    config : TrainConfig or None
        The training configuration, when one was saved.
    meta : dict
        The provenance dictionary saved with it.

    Raises
    ------
    CheckpointError
        Pickle-based or otherwise non-safetensors weights, a missing or damaged file, weights that do not
        match the config (hash, names or shapes).
    """
    directory = _checkpoint_dir(path)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    cfg_path = directory / CONFIG_NAME
    if not cfg_path.is_file():
        pickles = sorted(p.name for p in directory.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        extra = f"; found pickle-based {', '.join(pickles)}, which is refused ({_CONVERT_HINT})" if pickles else ""
        raise CheckpointError(f"{directory}: no {CONFIG_NAME}, not a slidestream MIL checkpoint{extra}")
    try:
        doc = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{cfg_path}: unreadable checkpoint config ({exc}); re-save the checkpoint") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_path}: not a slidestream MIL checkpoint config")
    if doc.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{cfg_path}: written by a newer slidestream (format {doc['format_version']}); upgrade")

    weights_name = str(doc.get("weights", WEIGHTS_NAME))
    weights_path = directory / weights_name
    if Path(weights_name).name != weights_name or not weights_name.endswith(".safetensors"):
        raise CheckpointError(f"{cfg_path}: weights must be a .safetensors file in the same directory")
    try:
        data = weights_path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{weights_path}: cannot read weights ({exc.strerror}); re-save the checkpoint") from exc
    _refuse_non_safetensors(weights_path, data)
    if doc.get("weights_sha256") and hashlib.sha256(data).hexdigest() != doc["weights_sha256"]:
        raise CheckpointError(
            f"{weights_path}: weights do not match {CONFIG_NAME} (hash differs); re-save the checkpoint"
        )
    try:
        state = st_load(data)
    except (SafetensorError, ValueError) as exc:
        raise CheckpointError(f"{weights_path}: damaged safetensors file ({exc}); re-save the checkpoint") from exc

    try:
        heads = [
            get_head(doc["head"], int(doc["in_dim"]), int(doc["n_classes"]), **dict(doc.get("head_kwargs") or {}))
            for _ in range(int(doc.get("ensemble_size", 1)))
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{cfg_path}: cannot rebuild the head ({exc}); a checkpoint written before the head "
                              "changed (the DSMIL, TransMIL and CLAM heads were brought to their reference code) "
                              "must be retrained") from exc
    model: MILHead | MILEnsemble = heads[0] if len(heads) == 1 else MILEnsemble(heads)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights_path}: weights do not fit head {doc['head']!r} (retrain a checkpoint "
                              f"written before the head changed): {exc}") from exc
    model.temperature = float(doc.get("temperature", 1.0))
    try:
        model.classes = _check_classes(doc.get("classes"), model.n_classes, f"{cfg_path}: classes")
    except ConfigError as exc:
        raise CheckpointError(f"{exc}; re-save the checkpoint") from exc
    model.to(device).eval()

    config = None
    if isinstance(doc.get("train_config"), dict):
        from .train import TrainConfig  # train imports this module's siblings; import here avoids a cycle

        try:
            config = TrainConfig.from_dict(doc["train_config"])
        except ConfigError as exc:
            raise CheckpointError(f"{cfg_path}: invalid train_config ({exc})") from exc
    return model, config, dict(doc.get("meta") or {})


def checkpoint_classes(path: str | os.PathLike) -> list[int | str]:
    """The class of each output of a checkpoint, in order, read from its ``config.json`` alone (no weights).

    Raises
    ------
    CheckpointError
        No readable slidestream ``config.json``, or invalid ``classes`` in it.
    """
    cfg_path = _checkpoint_dir(path) / CONFIG_NAME
    try:
        doc = json.loads(cfg_path.read_text(encoding="utf-8"))
        n_classes = int(doc["n_classes"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{cfg_path}: not a readable slidestream checkpoint config ({exc})") from exc
    try:
        return _check_classes(doc.get("classes"), n_classes, f"{cfg_path}: classes")
    except ConfigError as exc:
        raise CheckpointError(f"{exc}; re-save the checkpoint") from exc


def _check_classes(classes: Sequence[int | str] | None, n_classes: int, what: str) -> list[int | str]:
    """``classes`` as a list of ``n_classes`` distinct names or the indices ``0 … K-1`` (None: the indices)."""
    if classes is None:
        return list(range(n_classes))
    out = list(classes)
    names = all(isinstance(c, str) and c for c in out)
    indices = all(isinstance(c, int) and not isinstance(c, bool) for c in out) and out == list(range(n_classes))
    if len(out) != n_classes or len(set(out)) != len(out) or not (names or indices):
        raise ConfigError(f"{what} must be {n_classes} distinct class names or the indices 0 … {n_classes - 1} in "
                          f"order, got {out!r}")
    return out


def _strict_json(obj: Any) -> Any:
    """Copy with tuples as lists, NumPy scalars as Python ones and non-finite floats as None."""
    if isinstance(obj, dict):
        return {k: _strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict_json(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # NumPy / torch scalar
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _refuse_non_safetensors(path: Path, data: bytes) -> None:
    """Raise unless ``data`` starts like a safetensors file (8-byte header length, then a JSON object)."""
    if data[:1] == b"\x80" or data[:2] == b"PK":
        raise CheckpointError(f"{path}: this is a pickle / torch.save file, which is refused ({_CONVERT_HINT})")
    if len(data) < 10:
        raise CheckpointError(f"{path}: truncated weights file; re-save the checkpoint")
    header_len = int.from_bytes(data[:8], "little")
    if not 2 <= header_len <= len(data) - 8 or data[8:9] != b"{":
        raise CheckpointError(f"{path}: not a safetensors file; re-save the checkpoint")
