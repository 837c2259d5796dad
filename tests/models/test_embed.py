"""The embedding runner on real stores of a synthetic slide: patches vs slide, resume, reruns, provenance.

Everything runs on the CPU with a handcrafted encoder and a random-init ``vit_tiny_patch16_224`` (no downloads).
Tests marked ``gpu`` run the same checks on CUDA and are skipped without one (``bench/gpu_check.sh`` runs them).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from slidestream.errors import ConfigError, SlideError, StoreError
from slidestream.models import RandomWeightsWarning, create_encoder
from slidestream.models import get_preset
from slidestream.models.embed import MPP_TOLERANCE, MppMismatchWarning, check_tile_mpp, embed_store
from slidestream.stain import get_normalizer
from slidestream.tiling.grid import TilingParams
from slidestream.store import SlideStore
from slidestream.tiling.tiler import tile_slide
from slidestream.synth import SynthConfig, write_synthetic_slide

TINY = "vit_tiny_patch16_224"
CHUNK = 4

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _random_encoder(name: str = TINY, seed: int = 0, **kw):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        return create_encoder(name, weights="none", **kw)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """One synthetic slide tiled twice (224 px at 0.5 µm/px, chunks of 4 tiles): with and without patches; and
    once more at 1 µm/px (another pixel size than the 0.5 µm/px presets expect)."""
    root = tmp_path_factory.mktemp("embed")
    slide = write_synthetic_slide(root / "slide.svs", SynthConfig(width=2048, height=2048, mpp=0.5, seed=3)).path
    params = TilingParams(mpp=0.5, tile_size=224)
    with_patches = tile_slide(slide, root / "patches", params, chunk_tiles=CHUNK).store
    coords_only = tile_slide(slide, root / "coords", params, chunk_tiles=CHUNK, save_patches=False).store
    coarse = tile_slide(slide, root / "coarse", TilingParams(mpp=1.0, tile_size=112, min_tissue=0.25),
                        chunk_tiles=CHUNK).store
    return {"slide": slide, "patches": with_patches, "coords": coords_only, "coarse": coarse}


@pytest.fixture(scope="module")
def tiny():
    return _random_encoder()


@pytest.fixture(scope="module")
def handcrafted():
    return create_encoder("handcrafted")


@pytest.fixture()
def store(stores, tmp_path) -> SlideStore:
    """A private copy of the store with patches (tests write features into it)."""
    path = tmp_path / stores["patches"].name
    shutil.copytree(stores["patches"], path)
    return SlideStore.open(path, mode="r+")


def _copy(src: Path, tmp_path: Path, sub: str) -> SlideStore:
    path = tmp_path / sub / src.name
    shutil.copytree(src, path)
    return SlideStore.open(path, mode="r+")


def _raw(store: SlideStore, name: str) -> np.ndarray:
    return store.group[f"features/{name}"][...]


def test_the_fixture_has_several_chunks_and_a_partial_last_one(stores):
    s = SlideStore.open(stores["patches"])
    assert s.n_tiles > 3 * CHUNK and s.n_tiles % CHUNK != 0
    assert not SlideStore.open(stores["coords"]).has_patches


@pytest.mark.parametrize("which", ["handcrafted", "tiny"])
def test_stored_patches_and_slide_reads_give_identical_features(stores, tmp_path, request, which):
    encoder = request.getfixturevalue(which)
    a = _copy(stores["patches"], tmp_path, "a")
    b = _copy(stores["coords"], tmp_path, "b")
    ra = embed_store(a, encoder, name="f")
    rb = embed_store(b, encoder, name="f")
    assert (ra.source, rb.source) == ("patches", "slide")
    assert ra.n_embedded == rb.n_embedded == a.n_tiles == b.n_tiles
    fa, fb = a.read_features("f"), b.read_features("f")
    assert fa.shape == (a.n_tiles, encoder.embed_dim)
    assert np.isfinite(fa).all() and fa.std(axis=0).max() > 0  # real features, not a constant
    np.testing.assert_array_equal(fa, fb)


def test_features_match_the_encoder_on_the_stored_patches(store, tiny):
    embed_store(store, tiny, name="f", out_dtype="float32", batch_size=5)
    with torch.inference_mode():
        expected = torch.cat([tiny(torch.from_numpy(store.patches[sl])) for sl in store.chunk_slices("patches")])
    np.testing.assert_allclose(store.read_features("f"), expected.numpy(), rtol=1e-5, atol=1e-5)
    assert _raw(store, "f").dtype == np.float32


def test_rerun_is_bitwise_identical_and_a_complete_store_is_skipped(store, tiny):
    first = embed_store(store, tiny, name="f")
    a = _raw(store, "f").copy()
    again = embed_store(store, tiny, name="f", overwrite=True)
    assert again.chunks_written == first.chunks_written == len(store.chunk_slices("patches"))
    np.testing.assert_array_equal(_raw(store, "f"), a)
    skipped = embed_store(store, tiny, name="f")
    assert skipped.chunks_written == 0 and skipped.n_embedded == 0
    np.testing.assert_array_equal(_raw(store, "f"), a)
    assert store.status["features/f"] == "complete"


def test_resume_rewrites_only_chunks_not_marked_done(store, handcrafted):
    embed_store(store, handcrafted, name="f")
    ref = _raw(store, "f").copy()
    slices = store.chunk_slices("features/f")
    arr, done = store.group["features/f"], store.group["done/features/f"]
    lost = [1, len(slices) - 1]  # a middle chunk and the partial last one
    for ci in lost:
        arr[slices[ci]] = np.zeros((slices[ci].stop - slices[ci].start, arr.shape[1]), np.float16)
        done[ci] = 0
    # a sentinel in a chunk marked done: a resume must not touch it
    kept = slices[0]
    arr[kept] = np.full((kept.stop - kept.start, arr.shape[1]), 7.0, np.float16)
    with pytest.raises(StoreError, match="incomplete"):
        store.read_features("f")
    res = embed_store(store, handcrafted, name="f")
    assert res.chunks_written == len(lost)
    assert res.n_embedded == sum(slices[ci].stop - slices[ci].start for ci in lost)
    out = _raw(store, "f")
    for ci in lost:
        np.testing.assert_array_equal(out[slices[ci]], ref[slices[ci]])
    assert (out[kept] == 7.0).all()


class _Interrupt(Exception):
    pass


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(store, handcrafted, tmp_path, stores):
    ref_store = _copy(stores["patches"], tmp_path, "ref")
    embed_store(ref_store, handcrafted, name="f")
    n_chunks = len(store.chunk_slices("patches"))
    seen = []

    def stop_after_two(done, total):
        seen.append(done)
        if len(seen) == 3:  # the initial call, then two finished chunks
            raise _Interrupt

    with pytest.raises(_Interrupt):
        embed_store(store, handcrafted, name="f", progress=stop_after_two)
    marked = int(store.done_chunks("features/f").sum())
    assert 2 <= marked < n_chunks
    assert store.status.get("features/f") != "complete"
    res = embed_store(store, handcrafted, name="f")
    assert res.chunks_written == n_chunks - marked
    np.testing.assert_array_equal(_raw(store, "f"), _raw(ref_store, "f"))


@pytest.mark.parametrize("workers", [0, 3])
def test_loader_threads_do_not_change_the_result(stores, tmp_path, handcrafted, workers):
    ref = _copy(stores["patches"], tmp_path, "ref")
    embed_store(ref, handcrafted)
    for src in ("patches", "coords"):
        s = _copy(stores[src], tmp_path, f"{src}-{workers}")
        res = embed_store(s, handcrafted, workers=workers)
        assert res.chunks_written == len(s.chunk_slices("features/handcrafted"))
        np.testing.assert_array_equal(_raw(s, "handcrafted"), _raw(ref, "handcrafted"))
    with pytest.raises(ConfigError, match="workers"):
        embed_store(s, handcrafted, name="x", workers=-1)


def test_progress_counts_tiles_up_to_the_total(store, handcrafted):
    calls = []
    embed_store(store, handcrafted, progress=lambda d, n: calls.append((d, n)))
    assert calls[0] == (0, store.n_tiles) and calls[-1] == (store.n_tiles, store.n_tiles)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and len(calls) == len(store.chunk_slices()) + 1


def test_provenance_attributes(store, tiny, handcrafted):
    embed_store(store, tiny, name="tiny")
    embed_store(store, handcrafted)
    t = dict(store.group["features/tiny"].attrs)
    assert t["random_init"] is True and t["weights"].startswith("none")
    assert t["encoder"] == TINY and t["embed_dim"] == 192 and t["dtype"] == "float32" and t["stain"] is None
    assert t["input_size"] == 224 and len(t["mean"]) == len(t["std"]) == 3 and t["pooling"]
    h = dict(store.group["features/handcrafted"].attrs)
    assert h["random_init"] is False and h["encoder"] == "handcrafted" and h["dtype"] == "float32"
    assert _raw(store, "tiny").dtype == np.float16
    assert store.status["features/tiny"] == store.status["features/handcrafted"] == "complete"


def test_changed_encoder_weights_or_dtype_refuse_to_mix_unless_overwrite(store, tiny, tmp_path):
    embed_store(store, tiny, name="f")
    before = _raw(store, "f").copy()
    weights = tmp_path / "tiny.safetensors"
    save_file({k: v.clone() for k, v in _random_encoder(seed=1).backbone.state_dict().items()}, str(weights))
    other = create_encoder(TINY, weights=weights)
    assert other.random_init is False
    with pytest.raises(StoreError, match="overwrite"):
        embed_store(store, other, name="f")
    with pytest.raises(StoreError, match="overwrite"):
        embed_store(store, create_encoder("handcrafted"), name="f")
    with pytest.raises(StoreError, match="overwrite"):
        embed_store(store, tiny, name="f", amp_dtype="bfloat16")
    np.testing.assert_array_equal(_raw(store, "f"), before)  # refused runs wrote nothing
    res = embed_store(store, other, name="f", overwrite=True)
    assert res.chunks_written == len(store.chunk_slices())
    attrs = dict(store.group["features/f"].attrs)
    assert attrs["random_init"] is False and attrs["weights"].startswith("file:") and "sha256=" in attrs["weights"]
    assert not np.array_equal(_raw(store, "f"), before)


def test_cpu_runs_fp32_unless_bf16_is_asked_for(store, tiny):
    res32 = embed_store(store, tiny, name="fp32", out_dtype="float32")
    res16 = embed_store(store, tiny, name="bf16", out_dtype="float32", amp_dtype="bfloat16")
    assert (res32.dtype, res16.dtype) == ("float32", "bfloat16")
    assert store.group["features/bf16"].attrs["dtype"] == "bfloat16"
    assert tiny.compute_dtype == torch.float32  # the override lasts for the run only
    a, b = store.read_features("fp32"), store.read_features("bf16")
    assert not np.array_equal(a, b)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() > 0.98, cos.min()
    with pytest.raises(ConfigError, match="amp_dtype"):
        embed_store(store, tiny, name="x", amp_dtype="int8")
    with pytest.raises(ConfigError, match="out_dtype"):
        embed_store(store, tiny, name="x", out_dtype="bfloat16")


def test_stain_transform_runs_before_the_encoder_and_is_recorded(store, handcrafted):
    norm = get_normalizer("reinhard")
    norm.fit_source(store.patches[: 2 * CHUNK])
    embed_store(store, handcrafted, name="plain", out_dtype="float32")
    embed_store(store, handcrafted, name="normed", out_dtype="float32", stain=norm)
    assert dict(store.group["features/normed"].attrs)["stain"] == norm.to_dict()
    with torch.inference_mode():
        expected = torch.cat([handcrafted(norm.transform(torch.from_numpy(store.patches[sl])))
                              for sl in store.chunk_slices("patches")])
    np.testing.assert_allclose(store.read_features("normed"), expected.numpy(), rtol=1e-5, atol=1e-5)
    assert not np.allclose(store.read_features("normed"), store.read_features("plain"))
    # patches that were stain-normalised while tiling must not be normalised twice
    store.update_attrs(stain={"method": "macenko"})
    with pytest.raises(ConfigError, match="stain-normalised already"):
        embed_store(store, handcrafted, name="twice", stain=norm)


def test_a_coords_only_store_needs_its_slide(stores, tmp_path, handcrafted):
    s = _copy(stores["coords"], tmp_path, "c")
    moved = tmp_path / "moved.svs"
    shutil.copy(stores["slide"], moved)
    s.group.attrs["slide"] = {**s.slide, "path": str(tmp_path / "gone.svs")}
    with pytest.raises(SlideError, match=r"gone\.svs"):
        embed_store(s, handcrafted)
    assert s.status.get("features/handcrafted") != "complete"
    res = embed_store(s, handcrafted, slide_path=moved)
    assert res.source == "slide" and res.chunks_written == len(s.chunk_slices("features/handcrafted"))


def test_an_empty_store_completes_with_no_rows(tmp_path, handcrafted, stores):
    src = SlideStore.open(stores["patches"])
    s = SlideStore.create(tmp_path / "empty.zarr", coords=np.zeros((0, 2)), tissue=np.zeros(0), slide=src.slide,
                          tiling=src.tiling, tile_size=224, chunk_tiles=CHUNK)
    res = embed_store(s, handcrafted)
    assert res.n_tiles == 0 and res.chunks_written == 0
    assert s.read_features("handcrafted").shape == (0, handcrafted.embed_dim)


# ---------------------------------------------------------------------------------------------------- CUDA
@gpu
@needs_cuda
def test_cuda_fp32_matches_cpu(store, tiny, tmp_path, stores):
    cuda = _random_encoder(device="cuda", dtype="float32")
    cuda.load_state_dict(tiny.state_dict())
    embed_store(store, tiny, name="cpu", out_dtype="float32")
    res = embed_store(store, cuda, name="cuda", out_dtype="float32")
    assert res.device.startswith("cuda") and res.dtype == "float32"
    a, c = store.read_features("cpu"), store.read_features("cuda")
    # cuDNN may run the patch-embedding convolution in TF32: close, not bitwise
    cos = (a * c).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(c, axis=1))
    assert cos.min() > 0.999, cos.min()
    np.testing.assert_allclose(c, a, rtol=2e-2, atol=2e-2)
    b = _copy(stores["coords"], tmp_path, "b")
    embed_store(b, cuda, name="cuda", out_dtype="float32")
    np.testing.assert_allclose(b.read_features("cuda"), c, rtol=1e-4, atol=1e-4)


@gpu
@needs_cuda
def test_cuda_bf16_autocast_is_close_to_fp32_and_resumes(store, tiny):
    cuda = _random_encoder(device="cuda", dtype="bfloat16")
    cuda.load_state_dict(tiny.state_dict())
    embed_store(store, tiny, name="ref", out_dtype="float32")
    res = embed_store(store, cuda, name="f", workers=3)
    assert res.dtype == "bfloat16" and store.group["features/f"].attrs["dtype"] == "bfloat16"
    a, b = store.read_features("ref"), store.read_features("f")
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() > 0.98, cos.min()
    full = _raw(store, "f").copy()
    store.group["done/features/f"][1] = 0
    res = embed_store(store, cuda, name="f")
    assert res.chunks_written == 1
    np.testing.assert_allclose(_raw(store, "f").astype(np.float32), full.astype(np.float32), rtol=2e-2, atol=2e-2)
    with pytest.raises(StoreError, match="overwrite"):
        embed_store(store, cuda, name="f", amp_dtype="float32")
    # a float32 encoder asked for bf16 by the runner gets it, for that run only
    fp32 = _random_encoder(device="cuda", dtype="float32")
    fp32.load_state_dict(tiny.state_dict())
    res = embed_store(store, fp32, name="g", amp_dtype="bfloat16")
    assert res.dtype == "bfloat16" and fp32.compute_dtype == torch.float32
    np.testing.assert_allclose(_raw(store, "g").astype(np.float32), _raw(store, "f").astype(np.float32),
                               rtol=2e-2, atol=2e-2)


def test_tiles_at_another_pixel_size_are_refused_unless_allowed(stores, tmp_path, handcrafted):
    store = _copy(stores["coarse"], tmp_path, "a")
    assert store.tiling["mpp"] == 1.0 and handcrafted.preset.mpp == 0.5 and store.n_tiles
    with pytest.raises(ConfigError, match=r"cut at 1 µm/px .* expects 0.5 µm/px") as exc:
        embed_store(store, handcrafted)
    assert "--allow-mpp-mismatch" in str(exc.value) and "--target-mpp 0.5" in str(exc.value)
    assert "features/handcrafted" not in store.group  # refused before anything was written
    with pytest.warns(MppMismatchWarning, match="embedding anyway"):
        res = embed_store(store, handcrafted, allow_mpp_mismatch=True)
    expected = {"tile_mpp": 1.0, "encoder_mpp": 0.5, "relative_difference": 1.0, "tolerance": MPP_TOLERANCE}
    assert res.mpp_mismatch == expected and res.n_embedded == store.n_tiles
    assert dict(store.group["features/handcrafted"].attrs)["mpp_mismatch"] == expected
    # a matching store records nothing: its attributes stay those of earlier versions (resumable)
    ok = _copy(stores["patches"], tmp_path, "b")
    assert embed_store(ok, handcrafted).mpp_mismatch is None
    assert "mpp_mismatch" not in dict(ok.group["features/handcrafted"].attrs)


def test_pixel_size_tolerance_and_which_encoders_are_checked(stores, tmp_path):
    uni = get_preset("uni")
    assert check_tile_mpp(uni, 0.5) is None and check_tile_mpp(uni, 0.5054) is None  # a 0.2527 slide's 2x level
    assert check_tile_mpp(uni, 0.5 * (1 + MPP_TOLERANCE) - 1e-6) is None
    with pytest.raises(ConfigError, match="'uni' expects 0.5"):
        check_tile_mpp(uni, 0.5 * (1 + MPP_TOLERANCE) + 1e-3)
    with pytest.raises(ConfigError):
        check_tile_mpp(uni, 0.25)
    assert check_tile_mpp(uni, None) is None  # a store that records no pixel size
    # a plain timm name (ImageNet model) declares no pixel size: never refused, nothing recorded
    store = _copy(stores["coarse"], tmp_path, "c")
    with warnings.catch_warnings():
        warnings.simplefilter("error", MppMismatchWarning)
        res = embed_store(store, _random_encoder(), name="tiny")
    assert res.mpp_mismatch is None and "mpp_mismatch" not in dict(store.group["features/tiny"].attrs)
