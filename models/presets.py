"""Built-in encoder presets (registered on import).

Facts come from the model cards on the Hugging Face hub and from timm's architecture definitions. Each preset's
``kwargs`` turn the named timm architecture into the published one, so the architecture can be built offline
(random init, meta device, local weights) exactly as the hub checkpoint expects it.

Notes on choices that differ from a model card:

- ``phikon-v2``, ``hibou-l`` and ``midnight`` publish weights only in Hugging Face *transformers* format
  (``Dinov2Model`` / custom code). Their presets name the equivalent timm architecture (used for random init,
  meta-device checks and local timm-format state dicts) and set ``backend="transformers"``: ``weights="hub"``
  loads through ``transformers.AutoModel`` and raises :class:`~slidestream.errors.CheckpointError` saying how
  to install it when it is missing. ``hibou-l`` ships its own modelling code, so it also needs
  ``trust_remote_code=True`` passed to :func:`~slidestream.models.encoder.create_encoder`.
- Model cards resize with bicubic interpolation (sometimes 256 then centre-crop 224); slidestream tiles are cut
  at the preset's ``mpp`` and ``input_size`` already, and any resize is antialiased bilinear.
- ``h0-mini``: the SwiGLU hidden size (``mlp_ratio=5.33334``, i.e. 4096 packed) follows DINOv2's SwiGLU sizing
  for ViT-B (not printed on the model card); the embedding is the class token (768), the card's alternative is
  class token + mean patch token (1536: register ``h0-mini`` with ``pooling="cls+mean"`` under another name).
"""

from __future__ import annotations

from .registry import _IMAGENET_MEAN, _IMAGENET_STD, EncoderPreset, register_encoder

_SWIGLU = "timm.layers.SwiGLUPacked"
_SILU = "torch.nn.SiLU"
# Bioptimus' stain-aware normalisation (H-optimus-0/1, H0-mini)
_BIOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
_BIOPTIMUS_STD = (0.211883, 0.230117, 0.177517)

BUILTIN_PRESETS: tuple[EncoderPreset, ...] = (
    EncoderPreset(
        name="uni", timm_name="vit_large_patch16_224", hub_id="hf-hub:MahmoodLab/uni",
        kwargs=dict(img_size=224, init_values=1e-5, dynamic_img_size=True),
        embed_dim=1024, pooling="cls", dtype="bfloat16", license="CC-BY-NC-ND-4.0", gated=True,
        description="UNI (Mahmood Lab): ViT-L/16 DINOv2, 100M tiles from Mass-100K, 20x",
    ),
    EncoderPreset(
        name="uni2-h", timm_name="vit_giant_patch14_224", hub_id="hf-hub:MahmoodLab/UNI2-h",
        kwargs=dict(img_size=224, patch_size=14, depth=24, num_heads=24, init_values=1e-5, embed_dim=1536,
                    mlp_ratio=2.66667 * 2, no_embed_class=True, mlp_layer=_SWIGLU, act_layer=_SILU,
                    reg_tokens=8, dynamic_img_size=True),
        embed_dim=1536, pooling="cls", dtype="bfloat16", license="CC-BY-NC-ND-4.0", gated=True,
        description="UNI2-h (Mahmood Lab): ViT-H/14 with 8 registers, 200M tiles from 350k H&E and IHC slides",
    ),
    EncoderPreset(
        name="virchow", timm_name="vit_huge_patch14_224", hub_id="hf-hub:paige-ai/Virchow",
        kwargs=dict(img_size=224, init_values=1e-5, mlp_ratio=5.3375, mlp_layer=_SWIGLU, act_layer=_SILU,
                    dynamic_img_size=True),
        embed_dim=2560, pooling="cls+mean", dtype="float16", license="Apache-2.0", gated=True,
        description="Virchow (Paige): ViT-H/14 DINOv2, 1.5M slides; class token + mean patch token (2560)",
    ),
    EncoderPreset(
        name="virchow2", timm_name="vit_huge_patch14_224", hub_id="hf-hub:paige-ai/Virchow2",
        kwargs=dict(img_size=224, init_values=1e-5, mlp_ratio=5.3375, mlp_layer=_SWIGLU, act_layer=_SILU,
                    reg_tokens=4, dynamic_img_size=True),
        embed_dim=2560, pooling="cls+mean", dtype="float16", license="CC-BY-NC-ND-4.0", gated=True,
        description="Virchow2 (Paige): ViT-H/14 with 4 registers, 3.1M slides, mixed magnification; "
                    "class token + mean of patch tokens, registers skipped (2560)",
    ),
    EncoderPreset(
        name="h-optimus-0", timm_name="vit_giant_patch14_reg4_dinov2", hub_id="hf-hub:bioptimus/H-optimus-0",
        kwargs=dict(img_size=224, init_values=1e-5, dynamic_img_size=False),
        mean=_BIOPTIMUS_MEAN, std=_BIOPTIMUS_STD,
        embed_dim=1536, pooling="cls", dtype="float16", license="Apache-2.0", gated=True,
        description="H-optimus-0 (Bioptimus): ViT-g/14 with 4 registers, 1.1B parameters, >500k slides",
    ),
    EncoderPreset(
        name="h-optimus-1", timm_name="vit_giant_patch14_reg4_dinov2", hub_id="hf-hub:bioptimus/H-optimus-1",
        kwargs=dict(img_size=224, init_values=1e-5, dynamic_img_size=False),
        mean=_BIOPTIMUS_MEAN, std=_BIOPTIMUS_STD,
        embed_dim=1536, pooling="cls", dtype="float16", license="other (Bioptimus, non-commercial; see model card)",
        gated=True,
        description="H-optimus-1 (Bioptimus): ViT-g/14 with 4 registers, >1M slides",
    ),
    EncoderPreset(
        name="h0-mini", timm_name="vit_base_patch14_reg4_dinov2", hub_id="hf-hub:bioptimus/H0-mini",
        kwargs=dict(img_size=224, init_values=1e-5, mlp_ratio=5.33334, mlp_layer=_SWIGLU, act_layer=_SILU,
                    dynamic_img_size=False),
        mean=_BIOPTIMUS_MEAN, std=_BIOPTIMUS_STD,
        embed_dim=768, pooling="cls", dtype="float16", license="CC-BY-NC-ND-4.0", gated=True,
        description="H0-mini (Bioptimus): ViT-B/14 with 4 registers distilled from H-optimus-0; class token",
    ),
    EncoderPreset(
        name="prov-gigapath", timm_name="vit_giant_patch14_dinov2", hub_id="hf-hub:prov-gigapath/prov-gigapath",
        kwargs=dict(img_size=224, patch_size=16, embed_dim=1536, depth=40, num_heads=24, init_values=1e-5,
                    mlp_ratio=5.33334),
        embed_dim=1536, pooling="cls", dtype="bfloat16", license="Apache-2.0", gated=True,
        description="Prov-GigaPath tile encoder (Providence/Microsoft): ViT-g/16 DINOv2, 171k slides",
    ),
    EncoderPreset(
        name="phikon-v2", timm_name="vit_large_patch16_224", hub_id="hf-hub:owkin/phikon-v2",
        kwargs=dict(img_size=224, init_values=1e-5),
        embed_dim=1024, pooling="cls", dtype="bfloat16", license="other (Owkin non-commercial)", gated=False,
        backend="transformers",
        description="Phikon-v2 (Owkin): ViT-L/16 DINOv2, 460M tiles from PANCAN-XL; hub weights need transformers",
    ),
    EncoderPreset(
        name="hibou-l", timm_name="vit_large_patch14_reg4_dinov2", hub_id="hf-hub:histai/hibou-L",
        kwargs=dict(img_size=224),
        mean=(0.7068, 0.5755, 0.722), std=(0.195, 0.2316, 0.1816),
        embed_dim=1024, pooling="cls", dtype="bfloat16", license="Apache-2.0", gated=False,
        backend="transformers", trust_remote_code=True,
        description="Hibou-L (HistAI): ViT-L/14 DINOv2 with 4 registers, 1.2B tiles; hub weights need "
                    "transformers and trust_remote_code=True",
    ),
    EncoderPreset(
        name="midnight", timm_name="vit_giant_patch14_dinov2", hub_id="hf-hub:kaiko-ai/midnight",
        kwargs=dict(img_size=224),
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        embed_dim=3072, pooling="cls+mean", dtype="bfloat16", license="MIT", gated=False,
        backend="transformers",
        description="Midnight-12k (kaiko.ai): ViT-g/14 DINOv2, 12k slides; class token + mean patch token "
                    "(3072); hub weights need transformers",
    ),
    EncoderPreset(
        name="lunit-vits8", timm_name="vit_small_patch8_224", hub_id="hf-hub:1aurent/vit_small_patch8_224.lunit_dino",
        kwargs=dict(img_size=224),
        mean=(0.70322989, 0.53606487, 0.66096631), std=(0.21716536, 0.26081574, 0.20723464),
        embed_dim=384, pooling="cls", dtype="bfloat16", license="other (Lunit non-commercial)", gated=False,
        description="Lunit DINO ViT-S/8 (Kang et al. 2023 benchmark), 33M tiles; timm port by 1aurent",
    ),
    EncoderPreset(
        name="resnet50-trunc", timm_name="resnet50.tv_in1k", hub_id="hf-hub:timm/resnet50.tv_in1k",
        kwargs={}, drop_modules=("layer4",),
        embed_dim=1024, pooling="avg", dtype="float16", license="BSD-3-Clause", gated=False,
        mean=_IMAGENET_MEAN, std=_IMAGENET_STD,
        description="ImageNet ResNet50 (torchvision weights) cut after layer3 + average pooling: the CLAM "
                    "baseline (1024)",
    ),
    EncoderPreset(
        name="handcrafted", timm_name=None, hub_id=None, kwargs={},
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
        embed_dim=96, pooling="none", dtype="float32", license="Apache-2.0", gated=False, backend="handcrafted",
        description="Weight-free colour, H&E optical density, texture and nuclei-density statistics (96)",
    ),
)

for _preset in BUILTIN_PRESETS:
    register_encoder(_preset)
