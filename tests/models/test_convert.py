"""transformers ViT/DINOv2 layouts → timm: a model saved in the published transformers layout loads back exactly."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from slidestream.models import EncoderPreset, RandomWeightsWarning, create_encoder
from slidestream.models.convert import hf_vit_prefix, hf_vit_to_timm

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def to_transformers_layout(model, *, dinov2: bool, registers: bool = False) -> dict[str, torch.Tensor]:
    """A timm ViT's weights under the key names transformers' ``ViTModel`` / ``Dinov2Model`` save.

    Written from transformers' documented layout (``embeddings.*``, ``encoder.layer.N.*``, ``layernorm.*``);
    timm's no_embed_class models get the class slot of the position embeddings back (zero for the class token,
    whose value then carries it), as a transformers checkpoint has.
    """
    sd = model.state_dict()
    out = {"embeddings.cls_token": sd["cls_token"].clone(),
           "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
           "layernorm.weight": sd["norm.weight"], "layernorm.bias": sd["norm.bias"]}
    pos = sd["pos_embed"]
    if getattr(model, "no_embed_class", False):
        cls_pos = torch.randn(1, 1, pos.shape[-1])
        out["embeddings.cls_token"] = sd["cls_token"] - cls_pos
        pos = torch.cat([cls_pos, pos], 1)
    out["embeddings.position_embeddings"] = pos
    if registers:
        out["embeddings.register_tokens"] = sd["reg_token"]
    if dinov2:
        out["embeddings.mask_token"] = torch.zeros(1, pos.shape[-1])
    for i in range(len(model.blocks)):
        b, L = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = sd[b + f"attn.qkv.{kind}"].chunk(3, 0)
            out[L + f"attention.attention.query.{kind}"] = q
            out[L + f"attention.attention.key.{kind}"] = k
            out[L + f"attention.attention.value.{kind}"] = v
            out[L + f"attention.output.dense.{kind}"] = sd[b + f"attn.proj.{kind}"]
            if dinov2:
                out[L + f"norm1.{kind}"] = sd[b + f"norm1.{kind}"]
                out[L + f"norm2.{kind}"] = sd[b + f"norm2.{kind}"]
                swiglu = b + "mlp.fc1.weight" in sd and sd[b + "mlp.fc1.weight"].shape[0] != sd[b + "mlp.fc2.weight"].shape[1]
                out[L + f"mlp.{'weights_in' if swiglu else 'fc1'}.{kind}"] = sd[b + f"mlp.fc1.{kind}"]
                out[L + f"mlp.{'weights_out' if swiglu else 'fc2'}.{kind}"] = sd[b + f"mlp.fc2.{kind}"]
            else:
                out[L + f"layernorm_before.{kind}"] = sd[b + f"norm1.{kind}"]
                out[L + f"layernorm_after.{kind}"] = sd[b + f"norm2.{kind}"]
                out[L + f"intermediate.dense.{kind}"] = sd[b + f"mlp.fc1.{kind}"]
                out[L + f"output.dense.{kind}"] = sd[b + f"mlp.fc2.{kind}"]
        if dinov2:
            out[L + "layer_scale1.lambda1"] = sd[b + "ls1.gamma"]
            out[L + "layer_scale2.lambda1"] = sd[b + "ls2.gamma"]
    return out


def _encoder(preset):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        return create_encoder(preset, weights="none")


@pytest.mark.parametrize("case", ["vit-eps12", "dinov2-swiglu-registers"])
def test_transformers_file_loads_and_gives_the_same_embeddings(tmp_path, case):
    if case == "vit-eps12":  # Phikon's layout: ViTModel, LayerNorm eps 1e-12, pooler present
        preset = EncoderPreset(name="test-hf-vit", timm_name="vit_tiny_patch16_224", hub_id=None, input_size=32,
                               kwargs=dict(img_size=32, norm_layer="slidestream.models.layers.LayerNormEps12"),
                               embed_dim=192, pooling="cls", dtype="float32")
    else:  # Hibou's layout: DINOv2 with registers, SwiGLU, layer scale
        preset = EncoderPreset(name="test-hf-dinov2", timm_name="vit_small_patch14_reg4_dinov2", hub_id=None,
                               input_size=28, kwargs=dict(img_size=28, depth=2, mlp_ratio=5.33334,
                                                          mlp_layer="timm.layers.SwiGLUPacked",
                                                          act_layer="torch.nn.SiLU"),
                               embed_dim=768, pooling="cls+mean", dtype="float32")
    torch.manual_seed(0)
    ref_enc = _encoder(preset)
    for p in ref_enc.backbone.parameters():  # layer-scale and norm parameters start at constants
        p.data.normal_(0, 0.05)
    dinov2 = case != "vit-eps12"
    state = to_transformers_layout(ref_enc.backbone, dinov2=dinov2, registers=dinov2)
    if not dinov2:
        state["pooler.dense.weight"] = torch.zeros(192, 192)
        state["pooler.dense.bias"] = torch.zeros(192)
    path = tmp_path / "model.safetensors"
    save_file({f"vit.{k}" if not dinov2 else k: v.contiguous() for k, v in state.items()}, str(path))
    enc = create_encoder(preset, weights=path)
    x = torch.randint(0, 256, (2, preset.input_size, preset.input_size, 3), dtype=torch.uint8)
    with torch.inference_mode():
        torch.testing.assert_close(enc(x), ref_enc(x), rtol=1e-6, atol=1e-6)


def test_eps_matters_for_transformers_vit_weights():
    # the same weights under timm's default eps (1e-6) give other tokens: why phikon names LayerNormEps12
    torch.manual_seed(0)
    a = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=0).eval()
    b = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=0,
                          norm_layer=__import__("slidestream.models.layers", fromlist=["x"]).LayerNormEps12).eval()
    b.load_state_dict(a.state_dict())
    for m in b.modules():
        if isinstance(m, torch.nn.LayerNorm):
            assert m.eps == 1e-12
    x = torch.randn(1, 3, 32, 32) * 1e-3  # small activations make eps visible
    with torch.no_grad():
        assert not torch.equal(a.forward_features(x), b.forward_features(x))


def test_position_embeddings_are_resized_like_transformers_and_folded_for_registers():
    model = timm.create_model("vit_small_patch14_reg4_dinov2", img_size=28, num_classes=0, depth=1)
    torch.manual_seed(1)
    pos = torch.randn(1, 1 + 4 * 4, 384)  # a 56-px checkpoint (4x4 patches) for a 28-px model (2x2)
    cls = torch.randn(1, 1, 384)
    out = hf_vit_to_timm({"embeddings.cls_token": cls, "embeddings.position_embeddings": pos,
                          "embeddings.patch_embeddings.projection.weight": torch.zeros(384, 3, 14, 14)}, model)
    grid = pos[:, 1:].reshape(1, 4, 4, 384).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(2, 2), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, 4, 384)
    torch.testing.assert_close(out["pos_embed"], ref)
    torch.testing.assert_close(out["cls_token"], cls + pos[:, :1])


def test_prefix_detection():
    assert hf_vit_prefix(["dinov2.embeddings.patch_embeddings.projection.weight", "x"]) == "dinov2."
    assert hf_vit_prefix(["embeddings.patch_embeddings.projection.weight"]) == ""
    assert hf_vit_prefix(["patch_embed.proj.weight", "blocks.0.attn.qkv.weight"]) is None
