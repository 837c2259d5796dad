"""The presets of TRIDENT's and LazySlide's encoders: architecture, pooling, and the published checkpoint layouts.

Each preset is built with random weights (meta device for the large ones) and checked for its output width,
parameter count and pooling; then a file with the key layout of the published checkpoint (written from the
reference code's layout, tensors of the right shapes but no data) goes through the preset's own loading path
with strict key and shape checks (:func:`slidestream.models.check_weights`), so a wrong kwarg, prefix or
converter fails here without downloading anything.
"""

from __future__ import annotations

import warnings

import pytest
import timm
import torch

from slidestream.errors import CheckpointError
from slidestream.models import RandomWeightsWarning, check_weights, create_encoder, get_preset, pool_features
from slidestream.models.presets import PATHOLOGY_REGISTRY_PRESETS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NEW = [p.name for p in PATHOLOGY_REGISTRY_PRESETS]
# million parameters measured on the meta device; they match the model cards and LazySlide's param_size
PARAMS_M = {"conch-v1.5": 306.71, "conch-v1": 87.57, "phikon": 85.80, "ctranspath": 27.52, "kaiko-vits16": 21.67,
            "kaiko-vits8": 21.67, "kaiko-vitb16": 85.80, "kaiko-vitb8": 85.81, "kaiko-vitl14": 303.23,
            "hibou-b": 85.74, "hibou-l": 303.66, "gpfm": 303.23, "openmidnight": 1134.77, "lunit-vits16": 21.67}
PREFIX_TOKENS = {"kaiko-vitl14": 5, "hibou-b": 5, "hibou-l": 5, "openmidnight": 5, "gpfm": 1, "phikon": 1,
                 "kaiko-vits16": 1, "conch-v1.5": 1, "conch-v1": 1}


def _random(name, device="cpu"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        return create_encoder(name, weights="none", device=device)


def test_every_registry_encoder_is_a_preset():
    assert set(NEW) <= set(PARAMS_M) | {"lunit-vits16"}
    assert {"conch-v1.5", "conch-v1", "phikon", "ctranspath", "kaiko-vitb16", "kaiko-vitl14", "hibou-b"} <= set(NEW)


@pytest.mark.parametrize("name", [*NEW, "hibou-l"])
def test_builds_on_meta_with_the_published_size(name):
    preset = get_preset(name)
    enc = _random(name, device="meta")
    x = torch.empty(2, preset.input_size, preset.input_size, 3, dtype=torch.uint8, device="meta")
    assert tuple(enc(x).shape) == (2, preset.embed_dim)
    n = sum(p.numel() for p in enc.backbone.parameters()) / 1e6
    assert n == pytest.approx(PARAMS_M[name], abs=0.01)
    if name in PREFIX_TOKENS:
        assert enc.num_prefix_tokens == PREFIX_TOKENS[name]
    assert not enc.channels_last


@pytest.mark.parametrize("name", ["kaiko-vits16", "phikon", "hibou-b", "ctranspath",
                                  pytest.param("conch-v1", marks=pytest.mark.slow)])  # ViT-B at 448 px
def test_cpu_forward_pools_as_the_reference_does(name):
    torch.manual_seed(0)
    preset = get_preset(name)
    enc = _random(name)
    x = torch.randint(0, 256, (2, 160, 160, 3), dtype=torch.uint8)  # resized to the input size
    with torch.inference_mode():
        out = enc(x)
        z = enc.preprocess(x)
        tokens = enc.backbone.forward_features(z)
    assert out.shape == (2, preset.embed_dim) and torch.isfinite(out).all()
    if preset.pooling == "cls":
        torch.testing.assert_close(out, pool_features(tokens, "cls"))
    elif name == "ctranspath":  # mean of the final normalised 7x7 tokens, channels-last
        assert tokens.shape == (2, 7, 7, 768)
        torch.testing.assert_close(out, tokens.mean((1, 2)), rtol=1e-5, atol=1e-5)
    else:  # CONCH: one query attends over all trunk tokens, then LayerNorm
        tower = enc.backbone
        ref = tower.ln_contrast(tower.attn_pool_contrast(tokens)[:, 0])
        torch.testing.assert_close(out, ref)
        assert tokens.shape == (2, 1 + 28 * 28, 768)


# ---------------------------------------------------------------------------------------------------------------
# Published checkpoint layouts (key → shape), written from the reference code of each model
# ---------------------------------------------------------------------------------------------------------------

def _vit_blocks(prefix: str, depth: int, dim: int, hidden: int, *, layer_scale: bool) -> dict:
    out = {}
    for i in range(depth):
        b = f"{prefix}blocks.{i}."
        out.update({b + "norm1.weight": (dim,), b + "norm1.bias": (dim,), b + "attn.qkv.weight": (3 * dim, dim),
                    b + "attn.qkv.bias": (3 * dim,), b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
                    b + "norm2.weight": (dim,), b + "norm2.bias": (dim,), b + "mlp.fc1.weight": (hidden, dim),
                    b + "mlp.fc1.bias": (hidden,), b + "mlp.fc2.weight": (dim, hidden), b + "mlp.fc2.bias": (dim,)})
        if layer_scale:
            out.update({b + "ls1.gamma": (dim,), b + "ls2.gamma": (dim,)})
    return out


def _timm_vit(prefix: str, *, depth: int, dim: int, patch: int, tokens: int, hidden: int, layer_scale=False) -> dict:
    out = {prefix + "cls_token": (1, 1, dim), prefix + "pos_embed": (1, tokens, dim),
           prefix + "patch_embed.proj.weight": (dim, 3, patch, patch), prefix + "patch_embed.proj.bias": (dim,),
           prefix + "norm.weight": (dim,), prefix + "norm.bias": (dim,)}
    out.update(_vit_blocks(prefix, depth, dim, hidden, layer_scale=layer_scale))
    return out


def conch_v15_layout() -> dict:
    """``pytorch_model_vision.bin``: TRIDENT's CONCHVisionTower (iBOT ViT-L/16 trunk built at 224)."""
    out = _timm_vit("trunk.", depth=24, dim=1024, patch=16, tokens=197, hidden=4096, layer_scale=True)
    p = "attn_pool_contrast."
    out.update({p + "query": (1, 768), p + "ln_k.weight": (1024,), p + "ln_k.bias": (1024,), p + "ln_q.weight": (768,),
                p + "ln_q.bias": (768,), p + "to_q.weight": (768, 768), p + "to_kv.weight": (1536, 1024),
                p + "to_out.weight": (768, 768), "ln_contrast.weight": (768,), "ln_contrast.bias": (768,)})
    assert len(out) == 352
    return out


def conch_v1_layout() -> dict:
    """``pytorch_model.bin`` of CONCH: the whole CoCa model, vision tower under ``visual.``."""
    out = _timm_vit("visual.trunk.", depth=12, dim=768, patch=16, tokens=785, hidden=3072)
    for name, d, ctx, q in (("attn_pool_contrast", 512, 768, 1), ("attn_pool_caption", 768, 768, 256)):
        p = f"visual.{name}."
        out[p + "query"] = (q, d)
        if d == ctx:
            out[p + "attn.in_proj_weight"] = (3 * d, d)
        else:
            out.update({p + "attn.q_proj_weight": (d, d), p + "attn.k_proj_weight": (d, ctx),
                        p + "attn.v_proj_weight": (d, ctx)})
        out.update({p + "attn.in_proj_bias": (3 * d,), p + "attn.out_proj.weight": (d, d), p + "attn.out_proj.bias": (d,),
                    p + "ln_q.weight": (d,), p + "ln_q.bias": (d,), p + "ln_k.weight": (ctx,), p + "ln_k.bias": (ctx,)})
    out.update({"visual.ln_contrast.weight": (512,), "visual.ln_contrast.bias": (512,), "visual.proj_contrast": (512, 512),
                "visual.ln_caption.weight": (768,), "visual.ln_caption.bias": (768,), "logit_scale": (),
                "text.token_embedding.weight": (32007, 768), "text.positional_embedding": (128, 768),
                "text_decoder.ln_final.weight": (768,)})
    return out


def ctranspath_layout() -> dict:
    """``ctranspath.pth``: timm 0.5.4 Swin-T with CTransPath's ConvStem, no head, under ``{"model": ...}``."""
    out = {"patch_embed.proj.0.weight": (12, 3, 3, 3), "patch_embed.proj.3.weight": (24, 12, 3, 3),
           "patch_embed.proj.6.weight": (96, 24, 1, 1), "patch_embed.proj.6.bias": (96,),
           "patch_embed.norm.weight": (96,), "patch_embed.norm.bias": (96,), "norm.weight": (768,), "norm.bias": (768,)}
    for i, c in ((1, 12), (4, 24)):
        out.update({f"patch_embed.proj.{i}.{k}": (c,) for k in ("weight", "bias", "running_mean", "running_var")})
        out[f"patch_embed.proj.{i}.num_batches_tracked"] = ()
    depths, heads, res = (2, 2, 6, 2), (3, 6, 12, 24), (56, 28, 14, 7)
    for s, (depth, h, r) in enumerate(zip(depths, heads, res)):
        d = 96 * 2 ** s
        for j in range(depth):
            b = f"layers.{s}.blocks.{j}."
            out.update({b + "norm1.weight": (d,), b + "norm1.bias": (d,), b + "attn.qkv.weight": (3 * d, d),
                        b + "attn.qkv.bias": (3 * d,), b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
                        b + "attn.relative_position_bias_table": (169, h), b + "attn.relative_position_index": (49, 49),
                        b + "norm2.weight": (d,), b + "norm2.bias": (d,), b + "mlp.fc1.weight": (4 * d, d),
                        b + "mlp.fc1.bias": (4 * d,), b + "mlp.fc2.weight": (d, 4 * d), b + "mlp.fc2.bias": (d,)})
            if j % 2 == 1 and r > 7:  # shifted windows keep their mask as a buffer
                out[b + "attn_mask"] = ((r // 7) ** 2, 49, 49)
        if s < 3:  # timm 0.5.4 downsamples at the end of a stage
            out.update({f"layers.{s}.downsample.reduction.weight": (2 * d, 4 * d),
                        f"layers.{s}.downsample.norm.weight": (4 * d,), f"layers.{s}.downsample.norm.bias": (4 * d,)})
    assert len(out) == 200
    return out


def hf_vit_layout(depth=12, dim=768, patch=16, tokens=197, hidden=3072) -> dict:
    """transformers ``ViTModel`` (Phikon), without the pooler."""
    out = {"embeddings.cls_token": (1, 1, dim), "embeddings.position_embeddings": (1, tokens, dim),
           "embeddings.patch_embeddings.projection.weight": (dim, 3, patch, patch),
           "embeddings.patch_embeddings.projection.bias": (dim,), "layernorm.weight": (dim,), "layernorm.bias": (dim,)}
    for i in range(depth):
        b = f"encoder.layer.{i}."
        for k in ("weight", "bias"):
            out.update({b + f"attention.attention.{n}.{k}": (dim, dim) if k == "weight" else (dim,)
                        for n in ("query", "key", "value")})
            out.update({b + f"layernorm_before.{k}": (dim,), b + f"layernorm_after.{k}": (dim,),
                        b + f"attention.output.dense.{k}": (dim, dim) if k == "weight" else (dim,),
                        b + f"intermediate.dense.{k}": (hidden, dim) if k == "weight" else (hidden,),
                        b + f"output.dense.{k}": (dim, hidden) if k == "weight" else (dim,)})
    return out


def hf_dinov2_layout(depth, dim, patch, tokens, hidden, *, registers=0, swiglu=False) -> dict:
    """transformers ``Dinov2Model`` / Dinov2-with-registers (Phikon-v2, Hibou)."""
    out = {"embeddings.cls_token": (1, 1, dim), "embeddings.mask_token": (1, dim),
           "embeddings.position_embeddings": (1, tokens, dim), "embeddings.patch_embeddings.projection.weight":
           (dim, 3, patch, patch), "embeddings.patch_embeddings.projection.bias": (dim,),
           "layernorm.weight": (dim,), "layernorm.bias": (dim,)}
    if registers:
        out["embeddings.register_tokens"] = (1, registers, dim)
    fc1, fc2 = ("weights_in", "weights_out") if swiglu else ("fc1", "fc2")
    mid = 2 * hidden if swiglu else hidden
    for i in range(depth):
        b = f"encoder.layer.{i}."
        out.update({b + "layer_scale1.lambda1": (dim,), b + "layer_scale2.lambda1": (dim,)})
        for k in ("weight", "bias"):
            out.update({b + f"attention.attention.{n}.{k}": (dim, dim) if k == "weight" else (dim,)
                        for n in ("query", "key", "value")})
            out.update({b + f"norm1.{k}": (dim,), b + f"norm2.{k}": (dim,),
                        b + f"attention.output.dense.{k}": (dim, dim) if k == "weight" else (dim,),
                        b + f"mlp.{fc1}.{k}": (mid, dim) if k == "weight" else (mid,),
                        b + f"mlp.{fc2}.{k}": (dim, hidden) if k == "weight" else (dim,)})
    return out


def dinov2_original_layout(depth, dim, patch, tokens, hidden, registers) -> dict:
    """facebookresearch/dinov2 keys with fused SwiGLU (``w12``/``w3``): OpenMidnight's teacher checkpoint."""
    out = {"cls_token": (1, 1, dim), "pos_embed": (1, tokens, dim), "register_tokens": (1, registers, dim),
           "mask_token": (1, dim), "patch_embed.proj.weight": (dim, 3, patch, patch), "patch_embed.proj.bias": (dim,),
           "norm.weight": (dim,), "norm.bias": (dim,)}
    for key, shape in _vit_blocks("", depth, dim, hidden, layer_scale=True).items():
        if ".mlp.fc1." in key:
            key, shape = key.replace("fc1", "w12"), (2 * hidden, *shape[1:])
        elif ".mlp.fc2." in key:
            key = key.replace("fc2", "w3")
        out[key] = shape
    return out


def timm_arch_layout(arch: str, **kwargs) -> dict:
    """A timm-format hub file (the 1aurent ports, GPFM): the architecture's own keys at the published size."""
    with torch.device("meta"):
        model = timm.create_model(arch, num_classes=0, **kwargs)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


PUBLISHED = {
    "conch-v1.5": (conch_v15_layout, "pytorch_model_vision.bin", None),
    "conch-v1": (conch_v1_layout, "pytorch_model.bin", None),
    "ctranspath": (ctranspath_layout, "ctranspath.pth", "model"),
    "phikon": (lambda: {**hf_vit_layout(), "pooler.dense.weight": (768, 768), "pooler.dense.bias": (768,)},
               "pytorch_model.bin", None),
    "hibou-b": (lambda: hf_dinov2_layout(12, 768, 14, 257, 2048, registers=4, swiglu=True), "model.safetensors", None),
    "hibou-l": (lambda: hf_dinov2_layout(24, 1024, 14, 257, 2736, registers=4, swiglu=True), "model.safetensors",
                None),
    "phikon-v2": (lambda: hf_dinov2_layout(24, 1024, 16, 197, 4096), "model.safetensors", None),
    "kaiko-vits16": (lambda: timm_arch_layout("vit_small_patch16_224"), "model.safetensors", None),
    "kaiko-vits8": (lambda: timm_arch_layout("vit_small_patch8_224"), "model.safetensors", None),
    "kaiko-vitb16": (lambda: timm_arch_layout("vit_base_patch16_224"), "model.safetensors", None),
    "kaiko-vitb8": (lambda: timm_arch_layout("vit_base_patch8_224"), "model.safetensors", None),
    # published at 518 px: 37x37 position embeddings, resampled to 16x16 on load
    "kaiko-vitl14": (lambda: timm_arch_layout("vit_large_patch14_reg4_dinov2", img_size=518), "model.safetensors",
                     None),
    "lunit-vits16": (lambda: timm_arch_layout("vit_small_patch16_224"), "model.safetensors", None),
    "gpfm": (lambda: timm_arch_layout("vit_large_patch14_dinov2", img_size=224, init_values=1e-5), "GPFM.pth", None),
    "openmidnight": (lambda: dinov2_original_layout(40, 1536, 14, 257, 4096, registers=4),
                     "teacher_checkpoint_load.pt", None),
}


def _write_layout(path, layout: dict, wrap: str | None):
    # every tensor is a stride-0 view of one zero: the file keeps shapes and costs a few bytes per key
    state = {k: torch.zeros(()).expand(shape) for k, shape in layout.items()}
    torch.save({wrap: state} if wrap else state, path)
    return path


def test_every_new_preset_has_a_published_layout_under_test():
    assert set(NEW) <= set(PUBLISHED)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_checkpoint_layout_loads_strictly(tmp_path, name):
    make, filename, wrap = PUBLISHED[name]
    preset = get_preset(name)
    if preset.hub_file is not None:
        assert preset.hub_file == filename
    path = _write_layout(tmp_path / filename.replace(".safetensors", ".pth"), make(), wrap)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an ignored key would warn: the layouts must fit exactly
        report = check_weights(name, path)
    assert report.unexpected == []


def test_a_layout_of_another_size_is_refused(tmp_path):
    path = _write_layout(tmp_path / "b16.pth", timm_arch_layout("vit_base_patch16_224"), None)
    with pytest.raises(CheckpointError, match="other shapes"):
        check_weights("kaiko-vits16", path)
    hibou_gelu = hf_dinov2_layout(24, 1024, 14, 257, 4096, registers=4, swiglu=False)  # the old hibou-l preset
    path = _write_layout(tmp_path / "hibou.pth", hibou_gelu, None)
    with pytest.raises(CheckpointError):
        check_weights("hibou-l", path)


def test_timm_layout_file_round_trips_through_create_encoder(tmp_path):
    torch.manual_seed(0)
    ref = _random("kaiko-vits16")
    path = tmp_path / "model.pth"
    torch.save(ref.backbone.state_dict(), path)
    enc = create_encoder("kaiko-vits16", weights=path)
    x = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8)
    with torch.inference_mode():
        torch.testing.assert_close(enc(x), ref(x), rtol=0, atol=0)
