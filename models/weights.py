"""Getting a backbone with the right weights: from the hub, from a local file, or random (loudly).

- ``"hub"``: through timm (``pretrained=True`` with the preset's hub id as a ``pretrained_cfg_overlay``),
  through ``transformers.AutoModel`` for presets published only in that format, or, for presets that name a
  ``hub_file`` (CONCH, GPFM, CTransPath ...), by downloading that file and loading it as a local one. Hub
  failures (gated repository, not logged in, offline) become :class:`~slidestream.errors.CheckpointError`
  saying what to do.
- a path: ``.safetensors`` (via safetensors) or ``.bin/.pth/.pt/.ckpt`` (``torch.load(weights_only=True)``: a
  pickle holding anything but tensors and plain containers is refused, never executed); a directory holding
  ``model.safetensors`` or ``pytorch_model.bin`` also works. Common wrapper prefixes (``module.``, ``model.``,
  ``backbone.`` ...) are stripped, transformers ViT/DINOv2 layouts are converted (:mod:`.convert`), and the
  architecture's own checkpoint filter runs (timm's, or the preset head's module's); missing or mis-shaped keys
  are an error, unexpected keys a warning. :func:`check_weights` runs the same checks on the meta device.
- ``"none"``: random initialisation, flagged by ``random_init=True`` and a :class:`RandomWeightsWarning`.

Nothing here touches the network unless ``"hub"`` is asked for.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from .convert import hf_vit_prefix, hf_vit_to_timm
from .handcrafted import HandcraftedEncoder
from .registry import EncoderPreset, get_preset

__all__ = [
    "RandomWeightsWarning", "LoadReport", "build_backbone", "check_weights", "download_hub_file",
    "load_state_dict_file", "load_local_weights", "strip_prefixes", "file_sha256", "hub_error", "hub_overlay",
    "resolve_kwargs",
]

#: Wrapper prefixes added by DataParallel, Lightning, DINO/iBOT teachers and similar training code.
COMMON_PREFIXES = ("module.", "model.", "backbone.", "encoder.", "trunk.", "teacher.", "student.")
TORCH_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt")
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "teacher", "module", "net", "weights")
_LAYER_KEYS = ("mlp_layer", "act_layer", "norm_layer", "block_fn", "embed_layer")


class RandomWeightsWarning(UserWarning):
    """An encoder was built with random weights: its features carry no pretrained knowledge."""


@dataclass
class LoadReport:
    """What a local weight file contributed to a model.

    Attributes
    ----------
    path : str
        The file read.
    sha256 : str
        Hex digest of the file, for provenance.
    stripped_prefix : str
        Prefix removed from the keys ("" when none).
    unexpected : list of str
        Checkpoint keys the model has no use for (ignored).
    """

    path: str
    sha256: str
    stripped_prefix: str = ""
    unexpected: list[str] = field(default_factory=list)

    @property
    def source(self) -> str:
        return f"file:{self.path}#sha256={self.sha256}"


def resolve_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Turn dotted layer names in preset kwargs (``"timm.layers.SwiGLUPacked"``) into the classes."""
    out = dict(kwargs)
    for key in _LAYER_KEYS:
        value = out.get(key)
        if isinstance(value, str) and "." in value:
            module, _, attr = value.rpartition(".")
            try:
                out[key] = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as exc:
                raise ConfigError(f"preset kwarg {key}={value!r} names no importable class ({exc})") from exc
    return out


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """SHA-256 hex digest of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _resolve_weight_path(path: Path) -> Path:
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: directory holds neither model.safetensors nor pytorch_model.bin; "
                              "pass the weight file itself")
    if not path.is_file():
        raise CheckpointError(f"{path}: weight file not found; check the path (or use weights='hub'/'none')")
    return path


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the tensor mapping inside what torch.load returned (a bare state dict or a training checkpoint)."""
    for _ in range(3):  # checkpoints nest at most a couple of levels ({"model": {"state_dict": ...}})
        if not isinstance(obj, Mapping):
            break
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) / 2:
            return tensors
        inner = next((obj[k] for k in _NESTED_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    raise CheckpointError(f"{path}: no state dict (name -> tensor mapping) found in the checkpoint; "
                          f"expected a state dict or one under one of {_NESTED_KEYS}")


def load_state_dict_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """Read a weight file safely into a CPU state dict.

    Parameters
    ----------
    path : str or os.PathLike
        ``.safetensors``, ``.bin``, ``.pth``, ``.pt`` or ``.ckpt`` file, or a directory holding
        ``model.safetensors`` / ``pytorch_model.bin``.

    Returns
    -------
    state_dict : dict of str to torch.Tensor
        Tensors on the CPU.
    sha256 : str
        Hex digest of the file.

    Raises
    ------
    CheckpointError
        Missing file, unknown format, unreadable file, or a pickle that holds anything other than tensors and
        plain containers (refused without running any of its code).
    """
    p = _resolve_weight_path(Path(path).expanduser())
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(p), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(
                f"{p}: not a readable safetensors file ({exc}); re-download or re-export it") from exc
    elif suffix in TORCH_SUFFIXES:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(
                f"{p}: refused to load: the pickle holds Python objects other than tensors, and unpickling them "
                "could run arbitrary code. If you trust its source, re-save only the weights "
                "(torch.save(model.state_dict(), ...)) or convert it to .safetensors") from exc
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            raise CheckpointError(
                f"{p}: not a readable PyTorch checkpoint ({exc}); re-download or re-export it") from exc
        state = _unwrap(obj, p)
    else:
        raise CheckpointError(f"{p}: unknown weight format {suffix!r}; use .safetensors, "
                              f"{', '.join(TORCH_SUFFIXES)}")
    if not state:
        raise CheckpointError(f"{p}: the checkpoint holds no tensors")
    return state, file_sha256(p)


def strip_prefixes(state: Mapping[str, torch.Tensor], model_keys: set[str],
                   prefixes: tuple[str, ...] = COMMON_PREFIXES) -> tuple[dict[str, torch.Tensor], str]:
    """Remove wrapper prefixes when doing so makes more keys match the model.

    A prefix is stripped when at least half of the keys carry it and the stripped keys match the model's
    better than before (or as well, when every key carries it); keys without it are kept unchanged (they
    end up as unexpected keys when the model has no use for them, e.g. a DINO head next to
    ``backbone.*``). Repeats for stacked prefixes (``module.backbone.``).

    Returns
    -------
    state : dict
        The re-keyed state dict.
    stripped : str
        The concatenated prefixes removed ("" for none).
    """
    out = dict(state)
    stripped = ""
    changed = True
    while changed:
        changed = False
        matches = len(model_keys & out.keys())
        for prefix in prefixes:
            carrying = [k for k in out if k.startswith(prefix)]
            if len(carrying) * 2 < len(out):
                continue
            candidate = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in out.items()}
            gained = len(model_keys & candidate.keys()) - matches
            # a prefix on every key is peeled even without an immediate gain: it may hide another one
            if gained > 0 or (gained == 0 and len(carrying) == len(out)):
                out, stripped, changed = candidate, stripped + prefix, True
                break
    return out, stripped


def _filter_for(model: nn.Module):
    # timm architectures ship a checkpoint_filter_fn that converts other layouts of the same weights (original
    # DINOv2 / open_clip keys, position embeddings for another grid); reuse it when the model's module has one
    module = importlib.import_module(type(model).__module__)
    return getattr(module, "checkpoint_filter_fn", None)


def load_local_weights(model: nn.Module, path: str | os.PathLike, *,
                       ignore_prefixes: tuple[str, ...] = (), key_prefix: str = "",
                       dry_run: bool = False) -> LoadReport:
    """Load a local weight file into ``model`` in place.

    Parameters
    ----------
    model : torch.nn.Module
        The architecture, already built (random init).
    path : str or os.PathLike
        See :func:`load_state_dict_file`.
    ignore_prefixes : tuple of str
        Checkpoint keys under these prefixes are dropped silently (parts the preset removes, such as
        ``layer4.`` and ``fc.`` for ``resnet50-trunc``).
    key_prefix : str
        When some keys start with it, only those are kept, without it (a preset's ``key_prefix``).
    dry_run : bool
        Read the file and check every key and shape, but copy nothing (``model`` may live on the meta device).

    Returns
    -------
    LoadReport

    Raises
    ------
    CheckpointError
        The file cannot be read safely, or model weights are missing from it or have other shapes.
    """
    state, sha = load_state_dict_file(path)
    model_state = model.state_dict()
    stripped = ""
    if key_prefix and any(k.startswith(key_prefix) for k in state):
        state = {k[len(key_prefix):]: v for k, v in state.items() if k.startswith(key_prefix)}
        stripped = key_prefix
    hf_prefix = hf_vit_prefix(state)
    if hf_prefix is not None and hasattr(model, "pos_embed"):
        # transformers ViT/DINOv2 layout (Phikon, Hibou, Midnight ...): rename to timm's
        state = hf_vit_to_timm(state, model)
        stripped += hf_prefix
    state, more = strip_prefixes(state, set(model_state))
    stripped += more
    filter_fn = _filter_for(model)
    if filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except Exception:  # a filter written for another layout; the plain keys are compared below anyway
            pass
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    missing = sorted(set(model_state) - state.keys())
    unexpected = sorted(state.keys() - set(model_state))
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(model_state[k].shape)}"
                  for k in sorted(state.keys() & model_state.keys()) if state[k].shape != model_state[k].shape]
    if missing or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} model weights missing from the file (e.g. {', '.join(missing[:6])})")
        if mismatched:
            parts.append(f"{len(mismatched)} with other shapes (e.g. {'; '.join(mismatched[:4])})")
        if unexpected:
            parts.append(f"{len(unexpected)} file keys unused (e.g. {', '.join(unexpected[:6])})")
        raise CheckpointError(f"{path}: does not fit the {type(model).__name__} architecture: " + "; ".join(parts)
                              + ". Check that the file belongs to this encoder preset (timm key layout)")
    if not dry_run:
        model.load_state_dict({k: state[k] for k in model_state}, strict=True)
    if unexpected:
        warnings.warn(f"{path}: ignored {len(unexpected)} checkpoint keys the encoder does not use "
                      f"(e.g. {', '.join(unexpected[:6])})", stacklevel=3)
    return LoadReport(path=str(Path(path).expanduser().resolve()), sha256=sha, stripped_prefix=stripped,
                      unexpected=unexpected)


def hub_error(exc: BaseException, preset: EncoderPreset) -> CheckpointError:
    """Translate a Hugging Face hub / download failure into a CheckpointError that says what to do."""
    repo = preset.hub_repo or "?"
    page = f"https://huggingface.co/{repo}"
    login = "log in with `hf auth login` (or `huggingface-cli login`), or set HF_TOKEN"
    from huggingface_hub import errors as hf_errors

    if isinstance(exc, hf_errors.GatedRepoError):
        msg = (f"{preset.name}: {repo} is a gated repository: accept its licence on {page} with your Hugging "
               f"Face account, then {login}")
    elif isinstance(exc, hf_errors.RepositoryNotFoundError):
        msg = (f"{preset.name}: {repo} was not found or needs authorisation: if it is gated, accept its "
               f"licence on {page} and {login}; otherwise check the hub id")
    elif isinstance(exc, (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled, ConnectionError,
                          TimeoutError)):
        msg = (f"{preset.name}: could not download weights from {repo} (offline, or not in the local cache): "
               f"connect and retry, pre-download with `hf download {repo}` where you are online, or pass "
               "weights=PATH to a local file")
    elif isinstance(exc, hf_errors.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            msg = f"{preset.name}: access to {repo} denied (HTTP {status}): accept its licence on {page} and {login}"
        else:
            msg = f"{preset.name}: the hub refused the download of {repo} ({exc}); retry later or pass weights=PATH"
    elif isinstance(exc, RuntimeError) and ("size mismatch" in str(exc) or "key" in str(exc).lower()):
        msg = (f"{preset.name}: the checkpoint in {repo} does not fit the preset's architecture "
               f"({preset.timm_name} with {dict(preset.kwargs)}): {str(exc)[:500]}")
    else:
        msg = f"{preset.name}: loading weights from {repo} failed: {type(exc).__name__}: {exc}"
    err = CheckpointError(msg)
    err.__cause__ = exc
    return err


def _is_hub_failure(exc: BaseException) -> bool:
    from huggingface_hub import errors as hf_errors

    return isinstance(exc, (hf_errors.HfHubHTTPError, hf_errors.LocalEntryNotFoundError,
                            hf_errors.OfflineModeIsEnabled, ConnectionError, TimeoutError)) or (
        type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "requests", "urllib3"))


def hub_overlay(preset: EncoderPreset) -> dict[str, Any]:
    """``pretrained_cfg_overlay`` that makes timm fetch the preset's weights from its hub repository.

    Raises
    ------
    CheckpointError
        The preset has no published weights.
    """
    if preset.hub_repo is None:
        raise CheckpointError(f"{preset.name}: no published weights; pass weights='none' or a local path")
    # hf_hub_filename=None: an architecture's own timm weights may name a file the preset's repo lacks
    overlay: dict[str, Any] = dict(hf_hub_id=preset.hub_repo, hf_hub_filename=None, source="hf-hub")
    # ``num_classes`` here says how many classes the *checkpoint's* classifier has. timm drops the classifier
    # weights (and loads the rest strictly) only when the model's num_classes (0: slidestream pools itself) differs
    # from it. Pathology repositories publish headless backbones (0); timm's own repositories (``timm/<arch>.<tag>``,
    # e.g. resnet50-trunc's ImageNet weights) keep their classifier, which the architecture's pretrained config
    # already describes: overriding it with 0 would make ``fc.weight``/``fc.bias`` unexpected keys of a strict load.
    if not _is_timm_own_weights(preset):
        overlay["num_classes"] = 0
    return overlay


def _is_timm_own_weights(preset: EncoderPreset) -> bool:
    """True when the preset's hub repository is the one timm's pretrained config names for its architecture."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(preset.timm_name)
    except (RuntimeError, ValueError):
        return False
    return cfg is not None and getattr(cfg, "hf_hub_id", None) == preset.hub_repo


def _create_timm(preset: EncoderPreset, *, pretrained: bool) -> nn.Module:
    import timm

    kwargs = resolve_kwargs(preset.kwargs)
    kwargs["num_classes"] = 0  # slidestream pools itself; a classifier would only waste memory
    if pretrained:
        kwargs["pretrained_cfg_overlay"] = hub_overlay(preset)
    model = timm.create_model(preset.timm_name, pretrained=pretrained, **kwargs)
    for name in preset.drop_modules:
        setattr(model, name, nn.Identity())
    return model


class HFTokenBackbone(nn.Module):
    """A transformers vision model seen as a timm-like backbone: ``forward_features(x) -> (B, N, D)`` tokens.

    ``num_prefix_tokens`` counts the class token plus any register tokens, as in timm.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.num_prefix_tokens = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).last_hidden_state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[:, 0]


def _create_transformers(preset: EncoderPreset, *, trust_remote_code: bool) -> nn.Module:
    if preset.trust_remote_code and not trust_remote_code:
        raise CheckpointError(
            f"{preset.name}: {preset.hub_repo} ships its own modelling code, which would run on this machine; "
            "read it on the hub and pass trust_remote_code=True if you accept that")
    try:
        import transformers
    except ImportError as exc:
        raise CheckpointError(
            f"{preset.name}: its hub weights ({preset.hub_repo}) are published in Hugging Face transformers "
            "format and `transformers` is not installed: `pip install 'transformers>=4.45,<5'`, or download "
            f"its model.safetensors (`hf download {preset.hub_repo} model.safetensors`) and pass weights=PATH: "
            f"transformers-format files are converted to the timm layout of {preset.timm_name}") from exc
    return HFTokenBackbone(transformers.AutoModel.from_pretrained(
        preset.hub_repo, trust_remote_code=preset.trust_remote_code and trust_remote_code))


def _build_architecture(preset: EncoderPreset) -> nn.Module:
    """The preset's architecture with random weights: the timm model, wrapped by the preset's ``head``."""
    model = _create_timm(preset, pretrained=False)
    if preset.head is not None:
        module, _, attr = preset.head.rpartition(".")
        try:
            head_cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"preset {preset.name!r}: head {preset.head!r} names no importable class "
                              f"({exc})") from exc
        model = head_cls(model)
    return model


def _ignored_prefixes(preset: EncoderPreset) -> tuple[str, ...]:
    ignore = tuple(f"{name}." for name in preset.drop_modules)
    if ignore:
        ignore += ("fc.", "head.", "classifier.")  # the classifier sits after a dropped stage
    return ignore


def download_hub_file(preset: EncoderPreset) -> Path:
    """Fetch a preset's ``hub_file`` into the Hugging Face cache (or find it there) and return its path.

    Raises
    ------
    CheckpointError
        No hub file, gated repository without access, offline without a cached copy (the message says what to
        do).
    """
    if preset.hub_repo is None or preset.hub_file is None:
        raise CheckpointError(f"{preset.name}: no published weight file; pass weights='none' or a local path")
    from huggingface_hub import hf_hub_download

    folder, _, filename = preset.hub_file.rpartition("/")
    try:
        return Path(hf_hub_download(preset.hub_repo, filename, subfolder=folder or None,
                                    repo_type=preset.hub_repo_type))
    except Exception as exc:
        if _is_hub_failure(exc):
            raise hub_error(exc, preset) from exc
        raise


def check_weights(preset: EncoderPreset | str, path: str | os.PathLike) -> LoadReport:
    """Check that a weight file fits a preset, without building the model in memory.

    The architecture is built on the meta device and the file goes through exactly the loading path of
    ``create_encoder(preset, weights=path)`` (prefixes, the preset's ``key_prefix``, transformers-layout
    conversion, the architecture's checkpoint filter, strict key and shape checks); nothing is copied.

    Parameters
    ----------
    preset : EncoderPreset or str
        A preset or its registered name.
    path : str or os.PathLike
        The weight file.

    Returns
    -------
    LoadReport
        With the keys the encoder would ignore in ``unexpected``.

    Raises
    ------
    CheckpointError
        The file is unreadable or unsafe, or a weight is missing or has another shape.
    """
    preset = preset if isinstance(preset, EncoderPreset) else get_preset(preset)
    if not preset.traits.has_architecture:
        raise ConfigError(f"{preset.name}: this encoder has no weights to check")
    with torch.device("meta"):
        model = _build_architecture(preset)
    return load_local_weights(model, path, ignore_prefixes=_ignored_prefixes(preset),
                              key_prefix=preset.key_prefix, dry_run=True)


def build_backbone(preset: EncoderPreset, weights: str | os.PathLike = "hub", *,
                   trust_remote_code: bool = False) -> tuple[nn.Module, str, bool]:
    """Build a preset's backbone (on the current default device) with the requested weights.

    Parameters
    ----------
    preset : EncoderPreset
    weights : {"hub", "none"} or path
        Where the weights come from.
    trust_remote_code : bool
        Allow transformers checkpoints that ship their own modelling code (``hibou-l``).

    Returns
    -------
    backbone : torch.nn.Module
        In eval mode.
    source : str
        ``"hub:<repo>"``, ``"hub:<repo>/<hub_file>#sha256=<hex>"``, ``"file:<path>#sha256=<hex>"``,
        ``"none (random init)"`` or ``"none (weight-free)"``.
    random_init : bool
        True when the weights are random.

    Raises
    ------
    CheckpointError
        Weights requested but unavailable (gated, offline, missing package, bad file).
    ConfigError
        ``weights`` is not "hub", "none" or a path.
    """
    if not preset.traits.has_weights:
        if weights not in ("hub", "none"):
            raise ConfigError(f"{preset.name}: the handcrafted encoder has no weights; drop weights={weights!r}")
        return HandcraftedEncoder().eval(), "none (weight-free)", False
    if isinstance(weights, str) and weights == "none":
        model = _build_architecture(preset)
        warnings.warn(f"{preset.name}: built with RANDOM weights (weights='none'); its features are meaningless "
                      "outside tests and benchmarks", RandomWeightsWarning, stacklevel=3)
        return model.eval(), "none (random init)", True
    if isinstance(weights, str) and weights == "hub" and (preset.hub_file is not None or preset.head is not None):
        # a named file of the repository (not timm's default one), loaded like a local file
        path = download_hub_file(preset)
        model = _build_architecture(preset)
        report = load_local_weights(model, path, ignore_prefixes=_ignored_prefixes(preset),
                                    key_prefix=preset.key_prefix)
        return model.eval(), f"hub:{preset.hub_repo}/{preset.hub_file}#sha256={report.sha256}", False
    if isinstance(weights, str) and weights == "hub":
        if preset.backend == "transformers":
            try:
                model = _create_transformers(preset, trust_remote_code=trust_remote_code)
            except CheckpointError:
                raise
            except Exception as exc:
                if _is_hub_failure(exc):
                    raise hub_error(exc, preset) from exc
                raise
        else:
            try:
                model = _create_timm(preset, pretrained=True)
            except CheckpointError:
                raise
            except Exception as exc:
                if _is_hub_failure(exc) or isinstance(exc, RuntimeError):
                    raise hub_error(exc, preset) from exc
                raise
        return model.eval(), f"hub:{preset.hub_repo}", False
    if not isinstance(weights, (str, os.PathLike)):
        raise ConfigError(f"weights must be 'hub', 'none' or a path, got {weights!r}")
    model = _build_architecture(preset)
    report = load_local_weights(model, weights, ignore_prefixes=_ignored_prefixes(preset),
                                key_prefix=preset.key_prefix)
    return model.eval(), report.source, False
