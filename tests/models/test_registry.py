"""Encoder presets and the registry: every preset builds on the meta device with the advertised width."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.data import resolve_model_data_config

from slidestream.errors import ConfigError
from slidestream.models import (
    EncoderPreset,
    RandomWeightsWarning,
    create_encoder,
    get_preset,
    list_encoders,
    list_encoders_table,
    pool_features,
    register_encoder,
)

REQUIRED = {"uni", "uni2-h", "virchow", "virchow2", "h-optimus-0", "h-optimus-1", "h0-mini", "prov-gigapath",
            "phikon-v2", "hibou-l", "midnight", "lunit-vits8", "resnet50-trunc", "handcrafted"}
DEEP = [n for n in sorted(REQUIRED) if n != "handcrafted"]


def test_required_presets_are_registered():
    assert REQUIRED <= set(list_encoders())


# parameter counts from the model cards (millions) and class + register tokens: a wrong kwarg changes them
PARAMS_M = {"uni": 303, "uni2-h": 681, "virchow2": 631, "h-optimus-0": 1135, "h0-mini": 86, "prov-gigapath": 1135,
            "lunit-vits8": 21.7, "resnet50-trunc": 8.5}
PREFIX_TOKENS = {"uni": 1, "uni2-h": 9, "virchow": 1, "virchow2": 5, "h-optimus-0": 5, "h0-mini": 5, "midnight": 1}


@pytest.mark.parametrize("name", DEEP)
def test_preset_builds_on_meta_and_pools_to_embed_dim(name):
    preset = get_preset(name)
    with pytest.warns(RandomWeightsWarning):
        enc = create_encoder(name, weights="none", device="meta")
    assert enc.random_init and enc.weights_source.startswith("none")
    assert all(p.is_meta for p in enc.backbone.parameters())
    x = torch.empty(3, preset.input_size, preset.input_size, 3, dtype=torch.uint8, device="meta")
    out = enc(x)
    assert tuple(out.shape) == (3, preset.embed_dim)
    assert out.dtype == torch.float32
    if name in PARAMS_M:
        n = sum(p.numel() for p in enc.backbone.parameters()) / 1e6
        assert abs(n - PARAMS_M[name]) / PARAMS_M[name] < 0.01, n
    if name in PREFIX_TOKENS:
        assert enc.num_prefix_tokens == PREFIX_TOKENS[name]
    if preset.pooling == "cls+mean":  # Virchow, Virchow2, Midnight: class token next to the patch mean
        assert preset.embed_dim == 2 * enc.backbone.embed_dim


def test_pool_features_skips_register_tokens():
    b, d, regs, patches = 2, 4, 4, 6
    cls = torch.randn(b, 1, d)
    reg = torch.full((b, regs, d), 1e3)  # would dominate any mean that included them
    pat = torch.randn(b, patches, d)
    tokens = torch.cat([cls, reg, pat], 1)
    out = pool_features(tokens, "cls+mean", num_prefix_tokens=1 + regs)
    torch.testing.assert_close(out, torch.cat([cls[:, 0], pat.mean(1)], -1))
    torch.testing.assert_close(pool_features(tokens, "mean", 1 + regs), pat.mean(1))
    torch.testing.assert_close(pool_features(tokens, "cls", 1 + regs), cls[:, 0])
    fmap = torch.randn(b, 7, 3, 5)
    torch.testing.assert_close(pool_features(fmap, "avg"), fmap.mean((2, 3)))
    with pytest.raises(ConfigError):
        pool_features(fmap, "cls")


def test_encoder_pooling_uses_backbone_prefix_tokens():
    preset = EncoderPreset(name="test-tiny-reg", timm_name="vit_tiny_patch16_224", hub_id=None,
                           kwargs=dict(reg_tokens=4, img_size=64), input_size=64, embed_dim=384,
                           pooling="cls+mean", dtype="float32")
    torch.manual_seed(0)
    with pytest.warns(RandomWeightsWarning):
        enc = create_encoder(preset, weights="none")
    x = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    with torch.inference_mode():
        tokens = enc.backbone.forward_features(enc.preprocess(x))
        out = enc(x)
    assert tokens.shape[1] == 5 + 16
    torch.testing.assert_close(out, torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], -1))


def test_preprocess_resizes_antialiased_and_normalises_with_preset_stats():
    lunit = get_preset("lunit-vits8")
    preset = EncoderPreset(name="test-small-lunit", timm_name="vit_small_patch8_224", hub_id=None,
                           kwargs={"img_size": 64}, input_size=64, mean=lunit.mean, std=lunit.std,
                           embed_dim=384, pooling="cls", dtype="float32")
    with pytest.warns(RandomWeightsWarning):
        enc = create_encoder(preset, weights="none")
    x = torch.randint(0, 256, (2, 100, 80, 3), dtype=torch.uint8)
    z = enc.preprocess(x)
    ref = F.interpolate(x.permute(0, 3, 1, 2).float(), size=(64, 64), mode="bilinear", antialias=True)
    mean = torch.tensor(lunit.mean).view(1, 3, 1, 1)
    std = torch.tensor(lunit.std).view(1, 3, 1, 1)
    torch.testing.assert_close(z, (ref / 255.0 - mean) / std, atol=1e-5, rtol=1e-5)
    same = torch.randint(0, 256, (1, 64, 64, 3), dtype=torch.uint8)  # right size: no resize at all
    torch.testing.assert_close(enc.preprocess(same), (same.permute(0, 3, 1, 2) / 255.0 - mean) / std)


def test_plain_timm_name_runs_on_cpu():
    torch.manual_seed(0)
    with pytest.warns(RandomWeightsWarning):
        enc = create_encoder("resnet18", weights="none")
    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    cfg = resolve_model_data_config(model)
    p = enc.preset
    assert p.pooling == "head" and p.embed_dim == model.num_features
    assert p.input_size == cfg["input_size"][-1]
    assert p.mean == pytest.approx(cfg["mean"]) and p.std == pytest.approx(cfg["std"])
    assert enc.channels_last
    x = torch.randint(0, 256, (2, 96, 96, 3), dtype=torch.uint8)
    with torch.inference_mode():
        out = enc(x)
    assert out.shape == (2, p.embed_dim) and out.dtype == torch.float32 and torch.isfinite(out).all()
    with torch.inference_mode():
        ref = enc.backbone(enc.preprocess(x))
    torch.testing.assert_close(out, ref)


def test_plain_timm_name_with_tag_keeps_the_tag():
    p = get_preset("vit_small_patch16_224.augreg_in21k")
    assert p.timm_name == "vit_small_patch16_224.augreg_in21k"
    assert p.hub_id == "hf-hub:timm/vit_small_patch16_224.augreg_in21k"
    assert p.embed_dim == 384


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ConfigError, match="virchow2") as exc:
        get_preset("virchow3")
    assert "slidestream encoders" in str(exc.value)
    with pytest.raises(ConfigError, match="vit_small_patch16_224"):
        get_preset("vit_smal_patch16_224")


def test_names_are_case_and_separator_insensitive():
    assert get_preset("UNI2_H") is get_preset("uni2-h")


def test_register_rejects_silent_overwrite():
    p = EncoderPreset(name="test-dup", timm_name="resnet18", hub_id=None, embed_dim=512, pooling="avg")
    register_encoder(p)
    register_encoder(p)  # the same preset again is harmless
    other = EncoderPreset(name="test-dup", timm_name="resnet34", hub_id=None, embed_dim=512, pooling="avg")
    with pytest.raises(ConfigError, match="already registered"):
        register_encoder(other)
    register_encoder(other, overwrite=True)
    assert get_preset("test-dup").timm_name == "resnet34"


def test_preset_validation():
    with pytest.raises(ConfigError, match="pooling"):
        EncoderPreset(name="bad", timm_name="resnet18", hub_id=None, embed_dim=1, pooling="max")
    with pytest.raises(ConfigError, match="dtype"):
        EncoderPreset(name="bad", timm_name="resnet18", hub_id=None, embed_dim=1, dtype="int8")


def test_table_rows_are_json_and_match_presets():
    rows = list_encoders_table()
    json.dumps(rows)
    names = [r["name"] for r in rows]
    assert names == sorted(names) and REQUIRED <= set(names)
    for row in rows:
        p = get_preset(row["name"])
        assert row["embed_dim"] == p.embed_dim and row["hub_id"] == p.hub_id and row["gated"] == p.gated
        assert set(row) >= {"name", "hub_id", "embed_dim", "input_size", "mean", "std", "pooling", "dtype",
                            "license", "gated"}


def test_bad_dtype_and_meta_with_weights_are_config_errors():
    with pytest.raises(ConfigError, match="dtype"):
        create_encoder("handcrafted", dtype="int8")
    with pytest.raises(ConfigError, match="meta"):
        create_encoder("uni", weights="hub", device="meta")


def test_dtype_defaults_and_autocast_output_is_float32():
    from slidestream.models.encoder import resolve_dtype

    preset = get_preset("uni2-h")
    assert resolve_dtype(None, preset, torch.device("cpu")) == torch.float32
    assert resolve_dtype(None, preset, torch.device("cuda")) == torch.bfloat16  # logic only, no GPU needed
    assert resolve_dtype("fp16", preset, torch.device("cpu")) == torch.float16
    tiny = EncoderPreset(name="test-tiny", timm_name="vit_tiny_patch16_224", hub_id=None,
                         kwargs={"img_size": 64}, input_size=64, embed_dim=192, pooling="cls", dtype="float32")
    torch.manual_seed(0)
    with pytest.warns(RandomWeightsWarning):
        enc32 = create_encoder(tiny, weights="none")
    with pytest.warns(RandomWeightsWarning):
        enc16 = create_encoder(tiny, weights="none", dtype="bfloat16")
    enc16.backbone.load_state_dict(enc32.backbone.state_dict())
    x = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    with torch.inference_mode():
        a, b = enc32(x), enc16(x)
    assert b.dtype == torch.float32 and enc16.compute_dtype == torch.bfloat16
    assert not torch.equal(a, b)  # autocast really ran in bfloat16
    torch.testing.assert_close(b, a, rtol=0.1, atol=0.1)
    info = enc16.describe()
    json.dumps(info)
    assert info["dtype"] == "bfloat16" and info["random_init"] and info["embed_dim"] == 192


def test_encoders_command_shows_licence_and_gating():
    from click.testing import CliRunner

    from slidestream.cli.main import main

    r = CliRunner().invoke(main, ["encoders"], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    header = next(line for line in r.output.splitlines() if "name" in line and "license" in line)
    assert "gated" in header and "mpp" in header
    conch = next(line for line in r.output.splitlines() if "conch-v1.5" in line)
    assert "CC-BY-NC-ND-4.0" in conch and "yes" in conch
    kaiko = next(line for line in r.output.splitlines() if "kaiko-vitb16" in line)
    assert kaiko.rstrip(" │").endswith("no")
    rows = json.loads(CliRunner().invoke(main, ["encoders", "--json"]).output)
    by_name = {row["name"]: row for row in rows}
    assert by_name["conch-v1.5"]["hub_file"] == "pytorch_model_vision.bin" and by_name["conch-v1.5"]["gated"]
    assert by_name["h-optimus-1"]["license"] == "CC-BY-NC-ND-4.0" and by_name["hibou-l"]["gated"]
