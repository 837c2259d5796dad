"""One registry of named encoder presets, as timm's model registry: it holds the presets and imports none of them.

The built-in presets are in :mod:`slidestream.models.presets`, which :mod:`slidestream.models` imports; a user
registers more with :func:`register_encoder`.

A preset carries everything needed to build an encoder and feed it: the timm architecture and its creation
kwargs, where the weights live, the input size, the normalisation, how tokens are pooled into one embedding,
the recommended compute dtype and pixel size, and the licence. Preprocessing is derived from the preset, never
retyped per model (see :mod:`slidestream.models.encoder`).

Any plain timm architecture name (``"resnet50"``, ``"vit_small_patch16_224.augreg_in21k"`` ...) also works: it
gets an ad-hoc preset built from timm's own pretrained config.
"""

from __future__ import annotations

import difflib
import functools
import re
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

from ..errors import ConfigError

#: How token/feature-map outputs become one vector per tile.
POOLINGS = ("cls", "cls+mean", "mean", "avg", "head", "attn-pool", "none")
DTYPES = ("bfloat16", "float16", "float32")
BACKENDS = ("timm", "transformers", "handcrafted")
HUB_REPO_TYPES = ("model", "dataset")


@dataclass(frozen=True)
class BackendTraits:
    """What a backend's encoders need and accept; code asks these instead of comparing backend names.

    Attributes
    ----------
    has_architecture : bool
        Built from a timm architecture (``timm_name`` required; random init and local state dicts possible).
    has_weights : bool
        Has learned weights (hub, file or random); False for weight-free encoders.
    raw_input : bool
        The backbone takes the uint8 ``(B, H, W, 3)`` tiles as they are: no resize, normalisation, autocast or
        channels-last layout.
    """

    has_architecture: bool
    has_weights: bool
    raw_input: bool


BACKEND_TRAITS: Mapping[str, BackendTraits] = {
    "timm": BackendTraits(has_architecture=True, has_weights=True, raw_input=False),
    "transformers": BackendTraits(has_architecture=True, has_weights=True, raw_input=False),
    "handcrafted": BackendTraits(has_architecture=False, has_weights=False, raw_input=True),
}

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EncoderPreset:
    """Everything slidestream needs to build, feed and describe one tile encoder.

    Parameters
    ----------
    name : str
        Registry name (lower case, e.g. ``"uni2-h"``).
    timm_name : str or None
        Architecture for ``timm.create_model`` (optionally ``arch.tag``); None only for the handcrafted encoder.
    hub_id : str or None
        Where the published weights live, e.g. ``"hf-hub:MahmoodLab/UNI2-h"``; None when there are none.
    kwargs : Mapping[str, Any]
        Creation kwargs for ``timm.create_model`` that turn ``timm_name`` into the published architecture.
        Layer classes are given as dotted strings (``"timm.layers.SwiGLUPacked"``) so that presets stay
        printable and importing them does not import timm.
    input_size : int
        Square input side in pixels; tiles of another size are resized to it.
    mean, std : tuple of 3 float
        Per-channel normalisation of RGB values scaled to [0, 1].
    embed_dim : int
        Length of the pooled embedding (after ``pooling``).
    pooling : str
        ``"cls"`` (class token), ``"cls+mean"`` (class token concatenated with the mean of the patch tokens,
        register tokens skipped; Virchow, Midnight), ``"mean"`` (mean of patch tokens), ``"avg"`` (global average
        of a CNN feature map), ``"head"`` (timm's own pooling head, ``num_classes=0``; ad-hoc presets) or
        ``"attn-pool"`` (an attention-pooling head on all tokens, the module named by ``head``; CONCH) or
        ``"none"`` (the backbone already returns ``(B, D)``; handcrafted).
    dtype : str
        Recommended compute dtype on GPU: ``"bfloat16"``, ``"float16"`` or ``"float32"``.
    license : str
        Licence of the weights (SPDX id where one exists).
    gated : bool
        Whether the hub repository requires accepting terms and logging in.
    mpp : float
        Recommended pixel size of the input tiles in µm/px (0.5 = 20x equivalent).
    description : str
        One line for listings; notes on how the preset differs from the model card go here.
    backend : str
        Where hub weights are loaded through: ``"timm"``, ``"transformers"`` (weights published only in Hugging
        Face transformers format; ``timm_name`` is then the equivalent timm architecture, used for random init
        and for local timm-format state dicts) or ``"handcrafted"``.
    drop_modules : tuple of str
        Top-level submodules replaced by identities after creation (``resnet50-trunc`` drops ``layer4``).
    trust_remote_code : bool
        The transformers checkpoint ships its own modelling code (must be allowed explicitly).
    head : str or None
        Dotted name of a module class that wraps the timm trunk into the published model, called as
        ``cls(trunk)`` (``"slidestream.models.conch.ConchV15Tower"``); its state-dict keys are those of the
        published checkpoint and its ``forward`` returns the pooled ``(B, embed_dim)`` embedding.
    hub_file : str or None
        File inside the hub repository to download instead of letting timm pick ``model.safetensors`` /
        ``pytorch_model.bin`` (``"pytorch_model_vision.bin"``, ``"GPFM.pth"``); it is then loaded like a local
        file (prefix stripping, the architecture's key converter, strict shape checks). Presets with a ``head``
        always name one.
    hub_repo_type : str
        ``"model"`` or ``"dataset"``: the kind of hub repository ``hub_file`` lives in.
    key_prefix : str
        Only checkpoint keys under this prefix belong to the encoder (``"visual."`` in CONCH's full
        vision-language checkpoint); the prefix is removed. Files without such keys are used as they are.
    """

    name: str
    timm_name: str | None
    hub_id: str | None
    kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False)
    input_size: int = 224
    mean: tuple[float, float, float] = _IMAGENET_MEAN
    std: tuple[float, float, float] = _IMAGENET_STD
    embed_dim: int = 0
    pooling: str = "cls"
    dtype: str = "bfloat16"
    license: str = "unknown"
    gated: bool = False
    mpp: float = 0.5
    description: str = ""
    backend: str = "timm"
    drop_modules: tuple[str, ...] = ()
    trust_remote_code: bool = False
    head: str | None = None
    hub_file: str | None = None
    hub_repo_type: str = "model"
    key_prefix: str = ""

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.strip():
            raise ConfigError(f"encoder preset name {self.name!r} is empty or padded; give a plain name")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"preset {self.name!r}: pooling {self.pooling!r} is not one of {POOLINGS}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"preset {self.name!r}: dtype {self.dtype!r} is not one of {DTYPES}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"preset {self.name!r}: backend {self.backend!r} is not one of {BACKENDS}")
        if self.traits.has_architecture and not self.timm_name:
            raise ConfigError(f"preset {self.name!r}: timm_name is required for backend {self.backend!r}")
        if (self.pooling == "attn-pool") != (self.head is not None):
            raise ConfigError(f"preset {self.name!r}: pooling 'attn-pool' and a head module go together "
                              "(the head does the pooling); set both or neither")
        if self.head is not None and (self.backend != "timm" or "." not in self.head):
            raise ConfigError(f"preset {self.name!r}: head must be a dotted class name on a timm trunk, "
                              f"got {self.head!r} with backend {self.backend!r}")
        if self.hub_repo_type not in HUB_REPO_TYPES:
            raise ConfigError(f"preset {self.name!r}: hub_repo_type {self.hub_repo_type!r} is not one of "
                              f"{HUB_REPO_TYPES}")
        if self.hub_file is not None and (self.hub_id is None or self.backend != "timm"):
            raise ConfigError(f"preset {self.name!r}: hub_file needs a hub_id and backend 'timm'")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"preset {self.name!r}: mean/std need 3 values each, std > 0")
        if self.input_size <= 0 or self.embed_dim <= 0 or self.mpp <= 0:
            raise ConfigError(f"preset {self.name!r}: input_size, embed_dim and mpp must be positive")
        # normalise to tuples so that presets compare and print the same however they were written
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "kwargs", dict(self.kwargs))
        object.__setattr__(self, "drop_modules", tuple(self.drop_modules))

    @property
    def traits(self) -> BackendTraits:
        """What this preset's backend needs and accepts."""
        return BACKEND_TRAITS[self.backend]

    @property
    def hub_repo(self) -> str | None:
        """The hub repository id without the ``hf-hub:`` prefix (``"MahmoodLab/UNI2-h"``), or None."""
        if self.hub_id is None:
            return None
        return self.hub_id.split(":", 1)[1] if self.hub_id.startswith("hf-hub:") else self.hub_id

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description (layer classes stay dotted strings)."""
        d = asdict(self)
        d["kwargs"] = {k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v))
                       for k, v in self.kwargs.items()}
        d["mean"], d["std"], d["drop_modules"] = list(self.mean), list(self.std), list(self.drop_modules)
        return d


_REGISTRY: dict[str, EncoderPreset] = {}
_LOCK = threading.Lock()


def _key(name: str) -> str:
    # "UNI2_h", "uni2-h" and "Uni2-H" name the same preset; timm names are matched separately, verbatim
    return name.strip().lower().replace("_", "-")


def register_encoder(preset: EncoderPreset | Callable[[], EncoderPreset], *, overwrite: bool = False):
    """Add a preset to the registry.

    Parameters
    ----------
    preset : EncoderPreset or callable returning one
        The preset; a zero-argument function returning one also works, so this can decorate a builder.
    overwrite : bool
        Replace an existing preset of the same name instead of raising.

    Returns
    -------
    EncoderPreset or callable
        What was passed in, so the function can be used as a decorator.

    Raises
    ------
    ConfigError
        A preset of that name exists and ``overwrite`` is False, or ``preset`` is not a preset.
    """
    obj = preset() if callable(preset) and not isinstance(preset, EncoderPreset) else preset
    if not isinstance(obj, EncoderPreset):
        raise ConfigError(f"register_encoder needs an EncoderPreset, got {type(obj).__name__}")
    key = _key(obj.name)
    with _LOCK:
        if key in _REGISTRY and not overwrite and _REGISTRY[key] != obj:
            raise ConfigError(f"an encoder preset named {obj.name!r} is already registered; "
                              "pick another name or pass overwrite=True")
        _REGISTRY[key] = obj
    return preset


def list_encoders() -> list[str]:
    """Names of the registered presets, sorted (plain timm names are accepted too but not listed)."""
    return sorted(p.name for p in _REGISTRY.values())


def list_encoders_table() -> list[dict[str, Any]]:
    """One row per registered preset, for ``slidestream encoders [--json]``.

    Returns
    -------
    list of dict
        Keys ``name, hub_id, hub_file, embed_dim, input_size, mean, std, pooling, dtype, license, gated, mpp,
        backend, description``; values are JSON-serialisable.
    """
    rows = []
    for name in list_encoders():
        p = _REGISTRY[_key(name)]
        rows.append({
            "name": p.name, "hub_id": p.hub_id, "hub_file": p.hub_file, "embed_dim": p.embed_dim,
            "input_size": p.input_size,
            "mean": list(p.mean), "std": list(p.std), "pooling": p.pooling, "dtype": p.dtype,
            "license": p.license, "gated": p.gated, "mpp": p.mpp, "backend": p.backend,
            "description": p.description,
        })
    return rows


def get_preset(name: str) -> EncoderPreset:
    """Look up a registered preset, or derive one for a plain timm architecture name.

    Parameters
    ----------
    name : str
        A registered name (case and ``_``/``-`` insensitive) or any name ``timm.create_model`` accepts
        without a hub prefix (``"resnet50"``, ``"vit_small_patch16_224.augreg_in21k"``).

    Returns
    -------
    EncoderPreset

    Raises
    ------
    ConfigError
        The name is neither registered nor a timm architecture; the message lists close matches.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"encoder name must be a non-empty string, got {name!r}")
    preset = _REGISTRY.get(_key(name))
    if preset is not None:
        return preset
    import timm  # deferred: only ad-hoc names need timm's model list

    arch = name.strip().split(".", 1)[0]
    if timm.is_model(arch):
        return _adhoc_preset(name.strip())
    candidates = list_encoders() + timm.list_models()
    close = difflib.get_close_matches(name.strip(), candidates, n=5, cutoff=0.6)
    if not close:  # difflib misses long timm names sharing a prefix; fall back to substring hits
        needle = re.sub(r"[^a-z0-9]", "", name.lower())
        close = [c for c in candidates if needle and needle in re.sub(r"[^a-z0-9]", "", c.lower())][:5]
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    raise ConfigError(f"unknown encoder {name!r}: {hint}"
                      "run `slidestream encoders` for the presets, or give any timm architecture name")


@functools.lru_cache(maxsize=64)
def _adhoc_preset(name: str) -> EncoderPreset:
    """Derive a preset for a plain timm name from timm's pretrained config, without weights or memory."""
    import torch
    import timm
    from timm.data import resolve_model_data_config

    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=0)
    data_cfg = resolve_model_data_config(model)
    size = data_cfg["input_size"][-1]
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    # the pooled output can differ from num_features (models with a pre-logits head); a meta forward is exact
    try:
        with torch.no_grad():
            dim = int(model(torch.empty(1, 3, size, size, device="meta")).shape[-1])
    except Exception:  # some ops lack meta kernels; num_features is right for almost every model
        dim = int(model.num_features)
    hub = cfg.get("hf_hub_id")
    tag = cfg.get("tag")
    return EncoderPreset(
        name=name, timm_name=name if "." in name or not tag else f"{name}.{tag}",
        hub_id=f"hf-hub:{hub}" if hub else None, kwargs={},
        input_size=int(size), mean=tuple(data_cfg["mean"]), std=tuple(data_cfg["std"]),
        embed_dim=dim, pooling="head", dtype="float32", license=str(cfg.get("license", "unknown")),
        gated=False, mpp=0.5,
        description=f"timm {cfg.get('architecture', name)} ({tag or 'no pretrained tag'}); "
                    "not a pathology model, mpp 0.5 is only a default",
    )
