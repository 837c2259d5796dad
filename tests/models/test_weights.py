"""Weight loading: local files round-trip, unsafe pickles are refused, hub failures say what to do.

Nothing here touches the network: hub tests run with HF_HUB_OFFLINE=1 in a subprocess, or translate real
huggingface_hub exception objects.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import timm
import torch
from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError
from safetensors.torch import save_file

from slidestream.errors import CheckpointError, ConfigError
from slidestream.models import RandomWeightsWarning, create_encoder, get_preset, load_state_dict_file
from slidestream.models.weights import hub_error, strip_prefixes

TINY = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def tiny_reference():
    """A randomly initialised tiny ViT encoder, its state dict and a batch of tiles."""
    torch.manual_seed(1234)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        enc = create_encoder(TINY, weights="none")
    state = {k: v.clone() for k, v in enc.backbone.state_dict().items()}
    x = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        ref = enc(x)
    return state, x, ref


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "bin-wrapped"])
def test_local_weights_round_trip(tmp_path, tiny_reference, fmt):
    state, x, ref = tiny_reference
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(state, str(path))
    elif fmt == "pth":
        path = tmp_path / "w.pth"
        torch.save(state, path)
    else:  # a training checkpoint: DataParallel prefix inside {"state_dict": ...} next to non-tensor entries
        path = tmp_path / "w.bin"
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    enc = create_encoder(TINY, weights=path)
    assert not enc.random_init
    assert enc.weights_source == f"file:{path.resolve()}#sha256={_sha(path)}"
    with torch.inference_mode():
        out = enc(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


class _Payload:
    """Unpickling this object calls os.mkdir(marker): stands in for any code a pickle could run."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, tiny_reference):
    state = dict(tiny_reference[0])
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pth"
    torch.save({**state, "extra": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refused"):
        create_encoder(TINY, weights=path)
    assert not marker.exists()
    # the payload is live: an unrestricted load would have run it
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_mismatched_weights_name_missing_and_misshaped_keys(tmp_path):
    other = timm.create_model("resnet18", pretrained=False, num_classes=0)
    path = tmp_path / "resnet18.safetensors"
    save_file(other.state_dict(), str(path))
    with pytest.raises(CheckpointError, match="missing from the file") as exc:
        create_encoder(TINY, weights=path)
    assert "blocks.0" in str(exc.value) or "cls_token" in str(exc.value)

    small = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, embed_dim=96, num_heads=3)
    path2 = tmp_path / "narrow.pth"
    torch.save(small.state_dict(), path2)
    with pytest.raises(CheckpointError, match="other shapes"):
        create_encoder(TINY, weights=path2)


def test_unused_keys_warn_but_load(tmp_path, tiny_reference):
    state, x, ref = tiny_reference
    path = tmp_path / "with_head.safetensors"
    save_file({**state, "head.weight": torch.zeros(10, 192), "head.bias": torch.zeros(10)}, str(path))
    with pytest.warns(UserWarning, match="head.weight"):
        enc = create_encoder(TINY, weights=path)
    with torch.inference_mode():
        torch.testing.assert_close(enc(x), ref, rtol=0, atol=0)


def test_bad_files_are_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        create_encoder(TINY, weights=tmp_path / "nope.safetensors")
    odd = tmp_path / "w.npz"
    odd.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="unknown weight format"):
        load_state_dict_file(odd)
    junk = tmp_path / "w.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_state_dict_file(junk)
    trunc = tmp_path / "w.pt"
    trunc.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError):
        load_state_dict_file(trunc)
    with pytest.raises(ConfigError):
        create_encoder(TINY, weights=123)


def test_directory_with_model_safetensors(tmp_path, tiny_reference):
    state, x, ref = tiny_reference
    save_file(state, str(tmp_path / "model.safetensors"))
    enc = create_encoder(TINY, weights=tmp_path)
    with torch.inference_mode():
        torch.testing.assert_close(enc(x), ref, rtol=0, atol=0)


def test_strip_prefixes_only_when_it_helps():
    t = torch.zeros(1)
    model_keys = {"a.weight", "b.weight"}
    out, stripped = strip_prefixes({"module.backbone.a.weight": t, "module.backbone.b.weight": t}, model_keys)
    assert set(out) == model_keys and stripped == "module.backbone."
    # a DINO-style teacher: backbone.* plus a projection head that the encoder does not have
    out, stripped = strip_prefixes({"backbone.a.weight": t, "backbone.b.weight": t, "head.w": t}, model_keys)
    assert set(out) == model_keys | {"head.w"} and stripped == "backbone."
    # a real key that happens to start with "model." is left alone when stripping would break it
    keys = {"model.weight"}
    out, stripped = strip_prefixes({"model.weight": t}, keys)
    assert set(out) == keys and stripped == ""


def test_resnet50_trunc_is_layer3_average_pool(tmp_path):
    torch.manual_seed(0)
    full = timm.create_model("resnet50", pretrained=False).eval()
    path = tmp_path / "resnet50.pth"
    torch.save(full.state_dict(), path)  # includes layer4 and fc, which the preset drops
    enc = create_encoder("resnet50-trunc", weights=path)
    assert enc.embed_dim == 1024 and enc.channels_last
    x = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8)
    with torch.inference_mode():
        out = enc(x)
        z = enc.preprocess(x)
        h = full.maxpool(full.act1(full.bn1(full.conv1(z))))
        h = full.layer3(full.layer2(full.layer1(h)))
        ref = h.mean((2, 3))
    assert out.shape == (2, 1024)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_handcrafted_has_no_weights():
    enc = create_encoder("handcrafted")
    assert enc.weights_source == "none (weight-free)" and not enc.random_init
    with pytest.raises(ConfigError, match="no weights"):
        create_encoder("handcrafted", weights="/some/file.pth")


def _response(status: int):
    # huggingface_hub >= 1.0 builds its errors on httpx (2.x: the httpx2 fork); make a real response object
    try:
        import httpx2 as http
    except ImportError:
        import httpx as http
    return http.Response(status, request=http.Request("GET", "https://huggingface.co/api/models/x"))


def test_hub_errors_say_what_to_do():
    uni = get_preset("uni")
    gated = hub_error(GatedRepoError("gated", response=_response(401)), uni)
    assert isinstance(gated, CheckpointError)
    text = str(gated)
    assert "https://huggingface.co/MahmoodLab/uni" in text and "HF_TOKEN" in text and "login" in text
    missing = str(hub_error(RepositoryNotFoundError("404", response=_response(404)), uni))
    assert "licence" in missing and "hub id" in missing
    offline = str(hub_error(LocalEntryNotFoundError("offline"), uni))
    assert "offline" in offline and "weights=PATH" in offline


def test_hub_download_offline_raises_checkpoint_error(tmp_path):
    # a real hub load in a fresh interpreter, offline and with an empty cache: must fail cleanly, no network
    code = textwrap.dedent("""
        from slidestream.errors import CheckpointError
        from slidestream.models import create_encoder
        try:
            create_encoder("lunit-vits8", weights="hub")
        except CheckpointError as exc:
            print("CHECKPOINT-ERROR:", exc)
        else:
            print("LOADED")
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_TOKEN", None)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "CHECKPOINT-ERROR:" in res.stdout, res.stdout + res.stderr
    assert "1aurent/vit_small_patch8_224.lunit_dino" in res.stdout and "weights=PATH" in res.stdout


def test_transformers_presets_explain_what_they_need():
    with pytest.raises(CheckpointError, match="trust_remote_code"):
        create_encoder("hibou-l", weights="hub")
    if importlib.util.find_spec("transformers") is not None:
        pytest.skip("transformers is installed: the hub path would go online")
    with pytest.raises(CheckpointError, match="pip install") as exc:
        create_encoder("phikon-v2", weights="hub")
    assert "weights=PATH" in str(exc.value)


@pytest.mark.parametrize("name", ["uni", "uni2-h", "virchow", "virchow2", "h-optimus-0", "h-optimus-1", "h0-mini",
                                  "prov-gigapath", "lunit-vits8", "resnet50-trunc"])
def test_hub_weights_would_come_from_the_preset_repository(name):
    # resolve what timm would download, with timm's own (internal) resolution, without downloading it
    from timm.models import split_model_name_tag
    from timm.models._builder import _resolve_pretrained_source, resolve_pretrained_cfg

    from slidestream.models.weights import hub_overlay

    preset = get_preset(name)
    arch, tag = split_model_name_tag(preset.timm_name)
    cfg = resolve_pretrained_cfg(arch, pretrained_cfg=tag or None, pretrained_cfg_overlay=hub_overlay(preset))
    assert _resolve_pretrained_source(cfg.to_dict()) == ("hf-hub", preset.hub_id.removeprefix("hf-hub:"))
    assert not cfg.custom_load


@pytest.mark.parametrize("name", ["kaiko-vits16", "kaiko-vits8", "kaiko-vitb16", "kaiko-vitb8", "kaiko-vitl14",
                                  "lunit-vits16"])
def test_new_timm_hub_presets_resolve_to_their_repository(name):
    test_hub_weights_would_come_from_the_preset_repository(name)


def _ctranspath_original_layout(model) -> dict:
    """A timm >= 0.9 CTransPath state dict in the layout of the published file (timm 0.5.4: downsampling at
    the end of stages 0-2, relative-position indices and shifted-window masks saved as buffers)."""
    import re

    out = {}
    for k, v in model.state_dict().items():
        m = re.match(r"layers\.(\d+)\.downsample\.(.+)", k)
        out[f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}" if m else k] = v
        if k.endswith("attn.relative_position_bias_table"):
            out[k.replace("relative_position_bias_table", "relative_position_index")] = torch.zeros(49, 49,
                                                                                                  dtype=torch.long)
    out["layers.0.blocks.1.attn_mask"] = torch.zeros(64, 49, 49)
    return out


def test_hub_file_is_downloaded_from_the_preset_repository_and_loaded_like_a_local_file(tmp_path, monkeypatch):
    import huggingface_hub

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        ref = create_encoder("ctranspath", weights="none")
    path = tmp_path / "ctranspath.pth"
    torch.save({"model": _ctranspath_original_layout(ref.backbone)}, path)
    calls = []

    def fake_download(repo_id, filename, *, subfolder=None, repo_type=None, **kw):
        calls.append((repo_id, filename, subfolder, repo_type))
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every key of the published layout is used or knowingly dropped
        enc = create_encoder("ctranspath", weights="hub")
    assert calls == [("jamesdolezal/CTransPath", "ctranspath.pth", None, "model")]
    assert enc.weights_source == f"hub:jamesdolezal/CTransPath/ctranspath.pth#sha256={_sha(path)}"
    assert not enc.random_init
    x = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8)
    with torch.inference_mode():
        torch.testing.assert_close(enc(x), ref(x), rtol=0, atol=0)


def test_hub_file_failures_say_what_to_do(monkeypatch):
    import huggingface_hub

    def gated(*a, **kw):
        raise GatedRepoError("gated", response=_response(403))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", gated)
    with pytest.raises(CheckpointError, match="accept its licence") as exc:
        create_encoder("conch-v1.5", weights="hub")
    assert "MahmoodLab/conchv1_5" in str(exc.value)

    def offline(*a, **kw):
        raise LocalEntryNotFoundError("not cached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(CheckpointError, match="weights=PATH"):
        create_encoder("gpfm", weights="hub")


def test_new_transformers_presets_explain_what_they_need():
    with pytest.raises(CheckpointError, match="trust_remote_code"):
        create_encoder("hibou-b", weights="hub")
    if importlib.util.find_spec("transformers") is not None:
        pytest.skip("transformers is installed: the hub path would go online")
    with pytest.raises(CheckpointError, match="pip install") as exc:
        create_encoder("phikon", weights="hub")
    assert "owkin/phikon" in str(exc.value) and "weights=PATH" in str(exc.value)


@pytest.mark.parametrize("name, arch", [("resnet50-trunc", "resnet50"), ("resnet18.a1_in1k", "resnet18")])
def test_hub_weights_with_a_classifier_load_as_timm_loads_them(tmp_path, monkeypatch, name, arch):
    # timm's own hub checkpoints (timm/resnet50.tv_in1k) hold the ImageNet classifier (fc.weight, fc.bias). The
    # download is replaced by a local file with exactly those keys: timm's loader then runs the same code as for
    # the hub (pretrained_cfg 'file' instead of 'hf_hub_id'), with the overlay slidestream really passes
    import slidestream.models.weights as weights_mod

    torch.manual_seed(5)
    full = timm.create_model(arch, pretrained=False).eval()  # num_classes=1000: the checkpoint's key set
    state = full.state_dict()
    assert {"fc.weight", "fc.bias"} <= set(state) and state["fc.weight"].shape[0] == 1000
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    real_overlay = weights_mod.hub_overlay

    def local_file(preset):
        overlay = real_overlay(preset)
        assert overlay["hf_hub_id"] == preset.hub_repo
        return {**overlay, "source": "", "file": str(path)}  # timm's 'file' source outranks the hub id

    monkeypatch.setattr(weights_mod, "hub_overlay", local_file)
    enc = create_encoder(name, weights="hub")
    assert enc.weights_source == f"hub:{get_preset(name).hub_repo}" and not enc.random_init
    backbone = enc.backbone
    for key in ("conv1.weight", "layer1.0.conv1.weight", "layer3.0.bn1.running_mean"):
        torch.testing.assert_close(backbone.state_dict()[key], state[key], rtol=0, atol=0)
    # the same numbers as the same file loaded as local weights
    monkeypatch.setattr(weights_mod, "hub_overlay", real_overlay)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an ad-hoc preset's local load warns that it has no use for fc.*
        local = create_encoder(name, weights=path)
    x = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        torch.testing.assert_close(enc(x), local(x), rtol=0, atol=0)
