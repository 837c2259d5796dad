"""Hugging Face transformers ViT / DINOv2 checkpoints → timm ``VisionTransformer`` state dicts, without transformers.

Phikon (``ViTModel``), Phikon-v2 and Midnight (``Dinov2Model``) and Hibou (DINOv2 with registers, its own code)
publish only transformers-format weights. Their presets name the equivalent timm architecture; with this
converter a downloaded ``model.safetensors`` / ``pytorch_model.bin`` of theirs loads as ``weights=PATH`` through
the same strict checks as any timm file, and gives the same tokens as transformers (the LayerNorm ``eps`` must
match: Phikon's 1e-12 comes from its preset).

Key mapping (``N`` = layer index)::

    embeddings.cls_token / register_tokens / position_embeddings   cls_token / reg_token / pos_embed
    embeddings.patch_embeddings.projection.*                        patch_embed.proj.*
    encoder.layer.N.{layernorm_before | norm1}.*                    blocks.N.norm1.*
    encoder.layer.N.attention.attention.{query,key,value}.*         blocks.N.attn.qkv.* (concatenated q, k, v)
    encoder.layer.N.attention.output.dense.*                        blocks.N.attn.proj.*
    encoder.layer.N.layer_scale{1,2}.lambda1                        blocks.N.ls{1,2}.gamma
    encoder.layer.N.{layernorm_after | norm2}.*                     blocks.N.norm2.*
    encoder.layer.N.{intermediate.dense | mlp.fc1 | mlp.weights_in}.*   blocks.N.mlp.fc1.*
    encoder.layer.N.{output.dense | mlp.fc2 | mlp.weights_out}.*        blocks.N.mlp.fc2.*
    layernorm.*                                                     norm.*
    embeddings.mask_token, pooler.*                                 dropped

timm's register-token ViTs add no position embedding to the class token (``no_embed_class``), so the class slot
of the position embeddings is folded into ``cls_token``. Position embeddings for another patch grid are resized
as transformers does at forward time (bicubic to the target size, ``align_corners=False``, no antialias).
Hibou's own modelling code is assumed to use transformers' Dinov2-with-registers names (not checkable offline).
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["hf_vit_prefix", "hf_vit_to_timm"]

_MARKER = "embeddings.patch_embeddings.projection.weight"
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_RENAMES = (
    ("layernorm_before.", "norm1."), ("norm1.", "norm1."),
    ("layernorm_after.", "norm2."), ("norm2.", "norm2."),
    ("attention.output.dense.", "attn.proj."),
    ("layer_scale1.lambda1", "ls1.gamma"), ("layer_scale2.lambda1", "ls2.gamma"),
    ("intermediate.dense.", "mlp.fc1."), ("output.dense.", "mlp.fc2."),
    ("mlp.weights_in.", "mlp.fc1."), ("mlp.weights_out.", "mlp.fc2."),
    ("mlp.fc1.", "mlp.fc1."), ("mlp.fc2.", "mlp.fc2."),
)


def hf_vit_prefix(keys) -> str | None:
    """The wrapper prefix of a transformers ViT/DINOv2 checkpoint (``""``, ``"vit."``, ``"dinov2."`` ...), or
    None when the keys are not in that layout."""
    for k in keys:
        if k.endswith(_MARKER):
            return k[: -len(_MARKER)]
    return None


def _resize_patch_pos(patches: Tensor, grid: tuple[int, int]) -> Tensor:
    n, dim = patches.shape[1], patches.shape[2]
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"position embeddings of {n} patches are not a square grid")
    if (side, side) == tuple(grid):
        return patches
    img = patches.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    img = F.interpolate(img, size=tuple(grid), mode="bicubic", align_corners=False, antialias=False)
    return img.permute(0, 2, 3, 1).reshape(1, -1, dim).to(patches.dtype)


def hf_vit_to_timm(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Rename (and where needed merge, fold or resize) a transformers ViT/DINOv2 state dict for a timm ViT.

    Parameters
    ----------
    state : dict of str to torch.Tensor
        Keys in transformers' layout, optionally under one wrapper prefix (see :func:`hf_vit_prefix`); keys
        outside the prefix are dropped.
    model : timm.models.vision_transformer.VisionTransformer
        The target (its ``no_embed_class`` flag and patch grid decide the position embeddings; only shapes are
        read, so a meta-device model works).

    Returns
    -------
    dict of str to torch.Tensor
        timm keys; the caller checks them strictly against the model.
    """
    prefix = hf_vit_prefix(state)
    if prefix is None:
        return dict(state)
    src = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, value in src.items():
        if key in ("embeddings.mask_token",) or key.startswith("pooler."):
            continue
        if key == "embeddings.cls_token":
            out["cls_token"] = value
        elif key == "embeddings.register_tokens":
            out["reg_token"] = value
        elif key == "embeddings.position_embeddings":
            out["pos_embed"] = value
        elif key.startswith("embeddings.patch_embeddings.projection."):
            out["patch_embed.proj." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("layernorm."):
            out["norm." + key.rsplit(".", 1)[1]] = value
        elif (m := _LAYER.match(key)) is not None:
            i, rest = int(m.group(1)), m.group(2)
            if rest.startswith("attention.attention."):
                part, kind = rest.removeprefix("attention.attention.").split(".", 1)
                qkv.setdefault((i, kind), {})[part] = value
                continue
            for old, new in _RENAMES:
                if rest.startswith(old):
                    out[f"blocks.{i}.{new}{rest[len(old):]}"] = value
                    break
            else:
                out[f"blocks.{i}.{rest}"] = value  # left for the strict check to report
        else:
            out[key] = value
    for (i, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise ValueError(f"layer {i}: attention {kind} lacks one of query/key/value ({sorted(parts)})")
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    pos = out.get("pos_embed")
    if pos is not None and getattr(model, "pos_embed", None) is not None:
        n_prefix_hf = 1  # transformers' ViT and DINOv2 position embeddings always have a class slot
        cls_pos, patches = pos[:, :n_prefix_hf], pos[:, n_prefix_hf:]
        patches = _resize_patch_pos(patches, tuple(model.patch_embed.grid_size))
        if getattr(model, "no_embed_class", False):
            if "cls_token" in out:
                out["cls_token"] = out["cls_token"] + cls_pos
            out["pos_embed"] = patches
        else:
            out["pos_embed"] = torch.cat([cls_pos, patches], dim=1)
    return out
