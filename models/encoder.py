"""Encoders: a backbone plus the one preprocessing and pooling path every preset shares.

An :class:`Encoder` takes tiles as they come out of a slide store — uint8 ``(B, H, W, 3)`` on the model's
device — and returns float32 embeddings ``(B, D)``. Conversion to float, antialiased resizing to the preset's
input size, mean/std normalisation, channels_last for CNNs, reduced-precision autocast and token pooling all
happen here, driven by the :class:`~slidestream.models.registry.EncoderPreset`; nothing is retyped per model.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .registry import EncoderPreset, get_preset
from .weights import build_backbone

__all__ = ["Encoder", "check_device_available", "create_encoder", "pool_features", "resolve_dtype"]

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32,
           "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_dtype(dtype: str | torch.dtype | None, preset: EncoderPreset, device: torch.device) -> torch.dtype:
    """Compute dtype: the given one, else the preset's recommendation on CUDA and float32 elsewhere.

    Reduced precision is only a default on CUDA because CPU autocast is slower than float32 for most models.
    """
    if dtype is None:
        return _DTYPES[preset.dtype] if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise ConfigError(f"dtype {dtype} is not supported; use bfloat16, float16 or float32")
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ConfigError(f"dtype {dtype!r} is not one of bfloat16, float16, float32") from None


def pool_features(features: Tensor, pooling: str, num_prefix_tokens: int = 1) -> Tensor:
    """Pool backbone outputs into one vector per tile.

    Parameters
    ----------
    features : torch.Tensor
        Tokens ``(B, N, D)`` (class token first, then ``num_prefix_tokens - 1`` register tokens, then patch
        tokens) or a CNN feature map ``(B, C, H, W)``.
    pooling : str
        ``"cls"``: class token ``(B, D)``; ``"mean"``: mean of patch tokens ``(B, D)``; ``"cls+mean"``: both
        concatenated ``(B, 2D)``; ``"avg"``: spatial mean of an NCHW feature map ``(B, C)`` (or of patch
        tokens). Channels-last maps (timm's Swin, ``(B, H, W, C)``) cannot be told apart from NCHW by shape:
        their presets use ``"head"``, timm's own pooling, which :class:`Encoder` applies instead.
    num_prefix_tokens : int
        Class plus register tokens, skipped by the patch-token mean.

    Returns
    -------
    torch.Tensor
        ``(B, D')`` in the dtype of ``features``.
    """
    if features.ndim == 4:
        if pooling != "avg":
            raise ConfigError(f"pooling {pooling!r} needs tokens, but the backbone returned a feature map "
                              f"{tuple(features.shape)}; use pooling='avg'")
        return features.mean((2, 3))
    if features.ndim != 3:
        raise ConfigError(f"cannot pool backbone output of shape {tuple(features.shape)}")
    if pooling == "cls":
        return features[:, 0]
    patches = features[:, num_prefix_tokens:]
    if pooling in ("mean", "avg"):
        return patches.mean(1)
    if pooling == "cls+mean":
        return torch.cat([features[:, 0], patches.mean(1)], dim=-1)
    raise ConfigError(f"unknown pooling {pooling!r}")


def _is_cnn(backbone: nn.Module) -> bool:
    # convolutional trunks run faster channels_last; ViTs only have a conv patch embedding
    return not hasattr(backbone, "patch_embed") and any(isinstance(m, nn.Conv2d) for m in backbone.modules())


class Encoder(nn.Module):
    """A tile encoder: uint8 RGB tiles in, float32 embeddings out.

    Build it with :func:`create_encoder`. Parameters are frozen (``requires_grad=False``) and the module is in
    eval mode; wrap calls in ``torch.inference_mode()`` for speed.

    Attributes
    ----------
    preset : EncoderPreset
        Everything the encoder was built from.
    backbone : torch.nn.Module
        The timm (or transformers, or handcrafted) model.
    weights_source : str
        ``"hub:<repo>"``, ``"file:<path>#sha256=<hex>"``, ``"none (random init)"`` or ``"none (weight-free)"``.
    random_init : bool
        True when the weights are random: such features are for tests and benchmarks only.
    embed_dim : int
        Output width D.
    compute_dtype : torch.dtype
        Autocast dtype of the backbone (float32 means no autocast).
    """

    def __init__(self, preset: EncoderPreset, backbone: nn.Module, *, weights_source: str, random_init: bool,
                 compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.preset = preset
        self.backbone = backbone
        self.weights_source = weights_source
        self.random_init = random_init
        self.embed_dim = preset.embed_dim
        self.compute_dtype = compute_dtype
        self.channels_last = not preset.traits.raw_input and _is_cnn(backbone)
        self.num_prefix_tokens = int(getattr(backbone, "num_prefix_tokens", 1))
        mean = torch.tensor(preset.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(preset.std, dtype=torch.float32).view(1, 3, 1, 1)
        # (x / 255 - mean) / std folded into one multiply-add
        self.register_buffer("_scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("_shift", -mean / std, persistent=False)
        self.requires_grad_(False)
        self.eval()

    @property
    def device(self) -> torch.device:
        return self._scale.device

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable provenance for stores: preset, weights, normalisation, pooling, dtype."""
        p = self.preset
        return {"encoder": p.name, "timm_name": p.timm_name, "hub_id": p.hub_id, "weights": self.weights_source,
                "random_init": self.random_init, "embed_dim": self.embed_dim, "input_size": p.input_size,
                "mean": list(p.mean), "std": list(p.std), "pooling": p.pooling,
                "dtype": str(self.compute_dtype).removeprefix("torch."), "mpp": p.mpp, "license": p.license}

    @staticmethod
    def _check_input(x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[-1] != 3:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ConfigError(f"encoders take tiles as (B, H, W, 3) RGB tensors, got {shape}")
        if x.dtype != torch.uint8 and not x.is_floating_point():
            raise ConfigError(f"tiles must be uint8 (or float in [0, 255]), got {x.dtype}")

    def preprocess(self, x: Tensor) -> Tensor:
        """Tiles → normalised float input of the backbone.

        Parameters
        ----------
        x : torch.Tensor
            uint8 ``(B, H, W, 3)`` RGB (or float with values in [0, 255], e.g. after an on-device stain
            transform), on the encoder's device.

        Returns
        -------
        torch.Tensor
            float32 ``(B, 3, S, S)`` with ``S = preset.input_size``: resized with antialiased bilinear
            interpolation when ``(H, W) != (S, S)``, then ``(x / 255 - mean) / std``; channels_last memory
            format for CNN backbones.
        """
        self._check_input(x)
        size = self.preset.input_size
        z = x.permute(0, 3, 1, 2).float()
        if z.shape[-2:] != (size, size):
            z = F.interpolate(z, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        z = z * self._scale + self._shift
        return z.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    def forward_tokens(self, x: Tensor) -> Tensor:
        """Unpooled backbone output for preprocessed input: tokens ``(B, N, D)`` or a feature map."""
        with self._autocast():
            return self.backbone.forward_features(x)

    def _autocast(self):
        if self.compute_dtype == torch.float32 or self.device.type == "meta":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.compute_dtype)

    def forward(self, x: Tensor) -> Tensor:
        """uint8 ``(B, H, W, 3)`` tiles on the encoder's device → float32 embeddings ``(B, embed_dim)``."""
        if self.preset.traits.raw_input:
            self._check_input(x)
            return self.backbone(x)
        z = self.preprocess(x)
        with self._autocast():
            if self.preset.pooling in ("head", "attn-pool"):
                out = self.backbone(z)  # timm's pooling head (num_classes=0), or the preset's head module
            else:
                out = pool_features(self.backbone.forward_features(z), self.preset.pooling, self.num_prefix_tokens)
        return out.float()

    def extra_repr(self) -> str:
        return (f"preset={self.preset.name!r}, weights={self.weights_source!r}, embed_dim={self.embed_dim}, "
                f"dtype={self.compute_dtype}")


def cpu_has_fast_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AMX-BF16 tiles, Intel Xeon 4th generation and
    later), where bfloat16 autocast is faster than float32; on other CPUs it is slower."""
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # a private probe: absent from some torch builds
        return False


def check_device_available(device: torch.device) -> None:
    """Refuse a CUDA or MPS device this machine does not have, before a model is moved there (PyTorch's own error
    comes from deep inside the first copy).

    Raises
    ------
    ConfigError
        Naming the device and what to use instead.
    """
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device {device}: CUDA is not available on this machine (no NVIDIA GPU or driver, "
                              "or a PyTorch built without CUDA); use --device cpu")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to "
                              f"cuda:{count - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {device}: Apple MPS is not available on this machine; use --device cpu")


def create_encoder(name: str | EncoderPreset, *, weights: str | os.PathLike = "hub",
                   device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None,
                   compile: bool = False, trust_remote_code: bool = False) -> Encoder:
    """Build a ready-to-run encoder from a preset name, a timm name or a preset.

    Parameters
    ----------
    name : str or EncoderPreset
        Registered preset (``"uni2-h"``, ``"virchow2"`` ... see ``list_encoders()``), any timm architecture
        name, or a preset object.
    weights : {"hub", "none"} or path
        ``"hub"``: published weights (download on first use; gated models need a login); ``"none"``: random
        init (warns; ``random_init=True``); a path: a local ``.safetensors``/``.pth``/``.bin`` state dict in timm
        layout. Ignored for ``handcrafted`` ("hub" or "none").
    device : str or torch.device
        Where the encoder runs; ``"meta"`` builds the architecture without memory (``weights="none"`` only).
    dtype : {"bfloat16", "float16", "float32"}, torch.dtype or None
        Autocast dtype; None means the preset's recommendation on CUDA and float32 elsewhere.
    compile : bool
        Compile the backbone with ``torch.compile`` (first batches are slow).
    trust_remote_code : bool
        Allow transformers checkpoints that ship their own code (needed for ``hibou-l`` hub weights).

    Returns
    -------
    Encoder

    Raises
    ------
    ConfigError
        Unknown name (with suggestions), bad dtype or device, or weights on the meta device.
    CheckpointError
        Weights unavailable: gated/offline hub, missing ``transformers``, unsafe or mismatched file.
    """
    preset = name if isinstance(name, EncoderPreset) else get_preset(name)
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {device!r} is not a torch device ({exc})") from exc
    check_device_available(dev)
    compute_dtype = resolve_dtype(dtype, preset, dev)
    is_none = isinstance(weights, str) and weights == "none"
    if dev.type == "meta" and not is_none and preset.traits.has_weights:
        raise ConfigError("the meta device holds no data: use weights='none' with device='meta'")
    if is_none and preset.traits.has_weights:
        # random init straight on the target device: no CPU copy of a billion parameters
        with torch.device(dev):
            backbone, source, random_init = build_backbone(preset, weights, trust_remote_code=trust_remote_code)
    else:
        backbone, source, random_init = build_backbone(preset, weights, trust_remote_code=trust_remote_code)
    encoder = Encoder(preset, backbone, weights_source=source, random_init=random_init,
                      compute_dtype=compute_dtype)
    if encoder.channels_last:
        encoder.backbone.to(memory_format=torch.channels_last)
    encoder = encoder.to(dev)
    if compile:
        encoder.backbone.compile()
    return encoder
