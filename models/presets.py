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
- ``hibou-b`` / ``hibou-l``: DINOv2 with 4 registers and a fused SwiGLU MLP (hidden 2048 / 2736, hence
  ``mlp_ratio`` 5.33334 / 5.34375: 85.74M / 303.66M parameters); the embedding is transformers'
  ``pooler_output``, the normalised class token. Both repositories ask for access (gated).
- ``phikon``: transformers ``ViTModel`` with LayerNorm ``eps=1e-12`` (the preset's ``norm_layer``), class token of
  ``last_hidden_state`` as in TRIDENT (not the tanh pooler). ``phikon``, ``phikon-v2``, ``hibou-*`` and
  ``midnight`` files in transformers layout also load as ``weights=PATH`` without transformers
  (:mod:`slidestream.models.convert`).
- ``conch-v1.5`` / ``conch-v1``: a timm ViT trunk plus CONCH's attention-pooling head
  (:mod:`slidestream.models.conch`); the weights come from the repositories' own files (``hub_file``), CONCH v1's
  from the ``visual.`` part of the whole vision-language checkpoint. TRIDENT feeds 512-px tiles at 20x resized
  to 448 px: tile at 0.5 µm/px with ``--tile-size 512`` for the same field of view (the encoder resizes).
- ``ctranspath``: timm's Swin-T with CTransPath's convolutional stem (:mod:`slidestream.models.layers`);
  timm's Swin returns channels-last maps, so the embedding is timm's own average-pool head (``pooling="head"``).
  The hub file is an unofficial rehost of the authors' Google Drive file (``jamesdolezal/CTransPath``); TRIDENT's
  ``ctranspath`` is CHIEF's retrained CTransPath (``CHIEF_CTransPath.pth``), which loads as ``weights=PATH``.
- ``kaiko-*``, ``lunit-vits16``: timm ports by 1aurent of kaiko.ai's and Lunit's published weights (the hub ids
  TRIDENT and LazySlide use); ``kaiko-vitl14`` is published at 518 px and runs at 224 (position embeddings
  resampled by timm on load, the function TRIDENT applies at forward time).
- ``gpfm`` / ``openmidnight``: timm architectures with a named hub file (``GPFM.pth``; OpenMidnight's original
  DINOv2 checkpoint ``teacher_checkpoint_load.pt``, converted by timm's DINOv2 filter). TRIDENT unpickles both
  without restriction; slidestream loads tensors only and says so if a file holds anything else.
- Not here: Virchow and H-optimus have no published smaller siblings besides ``h0-mini``; MUSK, GenBio-PathFM
  and TRIDENT's ``keep`` need their authors' code (not on PyPI).
"""

from __future__ import annotations

from .registry import _IMAGENET_MEAN, _IMAGENET_STD, EncoderPreset, register_encoder

_SWIGLU = "timm.layers.SwiGLUPacked"
_SILU = "torch.nn.SiLU"
# Bioptimus' stain-aware normalisation (H-optimus-0/1, H0-mini)
_BIOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
_BIOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
_HIBOU_MEAN = (0.7068, 0.5755, 0.722)
_HIBOU_STD = (0.195, 0.2316, 0.1816)
_LUNIT_MEAN = (0.70322989, 0.53606487, 0.66096631)
_LUNIT_STD = (0.21716536, 0.26081574, 0.20723464)
# OpenAI CLIP's normalisation, which CONCH (v1) kept
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_KAIKO = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), pooling="cls", dtype="bfloat16",
              license="other (Kaiko non-commercial)", gated=False, mpp=0.5)

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
        embed_dim=1536, pooling="cls", dtype="float16", license="CC-BY-NC-ND-4.0",
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
        kwargs=dict(img_size=224, mlp_layer=_SWIGLU, act_layer=_SILU, mlp_ratio=5.34375),
        mean=_HIBOU_MEAN, std=_HIBOU_STD,
        embed_dim=1024, pooling="cls", dtype="bfloat16", license="Apache-2.0", gated=True,
        backend="transformers", trust_remote_code=True,
        description="Hibou-L (HistAI): ViT-L/14 DINOv2 with 4 registers and SwiGLU, 1.2B tiles; hub weights "
                    "need `pip install 'transformers<5'` and trust_remote_code=True",
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

# The patch encoders of TRIDENT's and LazySlide's registries that load with timm (+ a small head module) or
# from transformers-format files (see the module docstring for how each differs from its reference loader).
PATHOLOGY_REGISTRY_PRESETS: tuple[EncoderPreset, ...] = (
    EncoderPreset(
        name="conch-v1.5", timm_name="vit_large_patch16_224", hub_id="hf-hub:MahmoodLab/conchv1_5",
        hub_file="pytorch_model_vision.bin", head="slidestream.models.conch.ConchV15Tower",
        kwargs=dict(img_size=448, init_values=1e-6), input_size=448,
        embed_dim=768, pooling="attn-pool", dtype="float16", license="CC-BY-NC-ND-4.0", gated=True, mpp=0.5,
        description="CONCH v1.5 (Mahmood Lab; TITAN's patch encoder): ViT-L/16 at 448 px + attention pooling "
                    "(768); TRIDENT feeds 512-px tiles at 20x resized to 448: tile with --tile-size 512",
    ),
    EncoderPreset(
        name="conch-v1", timm_name="vit_base_patch16_224", hub_id="hf-hub:MahmoodLab/CONCH",
        hub_file="pytorch_model.bin", key_prefix="visual.", head="slidestream.models.conch.ConchV1Tower",
        kwargs=dict(img_size=448), input_size=448, mean=_CLIP_MEAN, std=_CLIP_STD,
        embed_dim=512, pooling="attn-pool", dtype="float32", license="CC-BY-NC-ND-4.0", gated=True, mpp=0.5,
        description="CONCH (Mahmood Lab): vision tower of the CoCa model, ViT-B/16 at 448 px + attention "
                    "pooling, before the contrastive projection (512); 512-px tiles at 20x in TRIDENT",
    ),
    EncoderPreset(
        name="phikon", timm_name="vit_base_patch16_224", hub_id="hf-hub:owkin/phikon",
        kwargs=dict(img_size=224, norm_layer="slidestream.models.layers.LayerNormEps12"),
        embed_dim=768, pooling="cls", dtype="float32", license="other (Owkin non-commercial)", gated=False,
        backend="transformers",
        description="Phikon (Owkin): ViT-B/16 iBOT, 40M TCGA tiles; hub weights need `pip install "
                    "'transformers<5'` (or weights=PATH to its model.safetensors, converted)",
    ),
    EncoderPreset(
        name="ctranspath", timm_name="swin_tiny_patch4_window7_224", hub_id="hf-hub:jamesdolezal/CTransPath",
        hub_file="ctranspath.pth", kwargs=dict(embed_layer="slidestream.models.layers.CTransPathStem"),
        embed_dim=768, pooling="head", dtype="float32", license="GPL-3.0", gated=False, mpp=1.0,
        description="CTransPath (Wang et al. 2022): Swin-T with a convolutional stem, mean of the final tokens "
                    "(768); unofficial rehost of the original weights; CHIEF's CTransPath file loads as "
                    "weights=PATH",
    ),
    EncoderPreset(
        name="kaiko-vits16", timm_name="vit_small_patch16_224",
        hub_id="hf-hub:1aurent/vit_small_patch16_224.kaiko_ai_towards_large_pathology_fms",
        kwargs=dict(img_size=224, dynamic_img_size=True), embed_dim=384, **_KAIKO,
        description="kaiko.ai ViT-S/16 DINO, TCGA at several magnifications; timm port by 1aurent",
    ),
    EncoderPreset(
        name="kaiko-vits8", timm_name="vit_small_patch8_224",
        hub_id="hf-hub:1aurent/vit_small_patch8_224.kaiko_ai_towards_large_pathology_fms",
        kwargs=dict(img_size=224, dynamic_img_size=True), embed_dim=384, **_KAIKO,
        description="kaiko.ai ViT-S/8 DINO, TCGA at several magnifications; timm port by 1aurent",
    ),
    EncoderPreset(
        name="kaiko-vitb16", timm_name="vit_base_patch16_224",
        hub_id="hf-hub:1aurent/vit_base_patch16_224.kaiko_ai_towards_large_pathology_fms",
        kwargs=dict(img_size=224, dynamic_img_size=True), embed_dim=768, **_KAIKO,
        description="kaiko.ai ViT-B/16 DINO, TCGA at several magnifications; timm port by 1aurent",
    ),
    EncoderPreset(
        name="kaiko-vitb8", timm_name="vit_base_patch8_224",
        hub_id="hf-hub:1aurent/vit_base_patch8_224.kaiko_ai_towards_large_pathology_fms",
        kwargs=dict(img_size=224, dynamic_img_size=True), embed_dim=768, **_KAIKO,
        description="kaiko.ai ViT-B/8 DINO, TCGA at several magnifications; timm port by 1aurent",
    ),
    EncoderPreset(
        name="kaiko-vitl14", timm_name="vit_large_patch14_reg4_dinov2",
        hub_id="hf-hub:1aurent/vit_large_patch14_reg4_dinov2.kaiko_ai_towards_large_pathology_fms",
        kwargs=dict(img_size=224, dynamic_img_size=True), embed_dim=1024, **_KAIKO,
        description="kaiko.ai ViT-L/14 DINOv2 with 4 registers (published at 518 px, run at 224); timm port "
                    "by 1aurent",
    ),
    EncoderPreset(
        name="hibou-b", timm_name="vit_base_patch14_reg4_dinov2", hub_id="hf-hub:histai/hibou-b",
        kwargs=dict(img_size=224, mlp_layer=_SWIGLU, act_layer=_SILU, mlp_ratio=5.33334),
        mean=_HIBOU_MEAN, std=_HIBOU_STD,
        embed_dim=768, pooling="cls", dtype="bfloat16", license="Apache-2.0", gated=True,
        backend="transformers", trust_remote_code=True,
        description="Hibou-B (HistAI): ViT-B/14 DINOv2 with 4 registers, 1.2B tiles; hub weights need "
                    "`pip install 'transformers<5'` and trust_remote_code=True",
    ),
    EncoderPreset(
        name="gpfm", timm_name="vit_large_patch14_dinov2", hub_id="hf-hub:majiabo/GPFM", hub_file="GPFM.pth",
        kwargs=dict(img_size=224, init_values=1e-5),
        embed_dim=1024, pooling="cls", dtype="float16", license="CC-BY-NC-ND-4.0", gated=False,
        description="GPFM (Ma et al. 2024): ViT-L/14 DINOv2 distilled from several expert models, 190M tiles",
    ),
    EncoderPreset(
        name="openmidnight", timm_name="vit_giant_patch14_reg4_dinov2", hub_id="hf-hub:SophontAI/OpenMidnight",
        hub_file="teacher_checkpoint_load.pt", kwargs=dict(img_size=224),
        embed_dim=1536, pooling="cls", dtype="float16", license="Apache-2.0", gated=True,
        description="OpenMidnight (Sophont): ViT-g/14 DINOv2 with 4 registers, open replication of Midnight; "
                    "original DINOv2 checkpoint converted on load",
    ),
    EncoderPreset(
        name="lunit-vits16", timm_name="vit_small_patch16_224",
        hub_id="hf-hub:1aurent/vit_small_patch16_224.lunit_dino", kwargs=dict(img_size=224),
        mean=_LUNIT_MEAN, std=_LUNIT_STD,
        embed_dim=384, pooling="cls", dtype="bfloat16", license="other (Lunit non-commercial)", gated=False,
        description="Lunit DINO ViT-S/16 (Kang et al. 2023 benchmark), 33M tiles; timm port by 1aurent",
    ),
)

for _preset in PATHOLOGY_REGISTRY_PRESETS:
    register_encoder(_preset)
