"""The weight-free handcrafted encoder: shape, robustness, determinism, and that it sees nuclei."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from slidestream.models import create_encoder, get_preset
from slidestream.models.handcrafted import FEATURE_NAMES, N_FEATURES, handcrafted_features

# stain vectors for painting (Macenko's reference, deliberately not the Ruifrok matrix the encoder uses)
_H_VEC = np.array([0.5626, 0.7201, 0.4062])
_E_VEC = np.array([0.2159, 0.8012, 0.5581])


def _smooth_noise(rng: np.random.Generator, size: int, cell: int = 16) -> np.ndarray:
    coarse = rng.random((size // cell + 2, size // cell + 2))
    return np.kron(coarse, np.ones((cell, cell)))[:size, :size]


def synthetic_tile(rng: np.random.Generator, tumour: bool, size: int = 224) -> np.ndarray:
    """An H&E-like tile at ~0.5 µm/px: eosin stroma with nuclei; tumour nuclei are denser, larger, darker."""
    yy, xx = np.mgrid[:size, :size]
    eosin = (0.25 + 0.15 * _smooth_noise(rng, size)) * rng.uniform(0.8, 1.2)
    hema = np.zeros((size, size))
    n = rng.integers(35, 55) if tumour else rng.integers(6, 12)
    for _ in range(n):
        cy, cx = rng.uniform(0, size, 2)
        r = rng.uniform(6.0, 10.0) if tumour else rng.uniform(3.0, 5.0)
        dose = rng.uniform(0.8, 1.1) if tumour else rng.uniform(0.45, 0.65)
        ry, rx = r * rng.uniform(0.75, 1.25, 2)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        hema = np.maximum(hema, inside * dose)
    od = eosin[..., None] * _E_VEC + hema[..., None] * _H_VEC
    rgb = 255.0 * np.power(10.0, -od) + rng.normal(0.0, 4.0, (size, size, 3))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _batch(seed: int, tumour: bool, n: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([synthetic_tile(rng, tumour) for _ in range(n)]))


def test_shape_dtype_and_names_match_the_preset():
    x = torch.randint(0, 256, (5, 224, 224, 3), dtype=torch.uint8)
    out = handcrafted_features(x)
    assert out.shape == (5, N_FEATURES) and out.dtype == torch.float32
    assert N_FEATURES == len(FEATURE_NAMES) == len(set(FEATURE_NAMES)) == get_preset("handcrafted").embed_dim
    enc = create_encoder("handcrafted")
    torch.testing.assert_close(enc(x), out)


@pytest.mark.parametrize("kind", ["white", "black", "grey", "pure-red", "noise", "stripes"])
def test_finite_on_degenerate_tiles(kind):
    size = 224
    if kind == "white":
        x = torch.full((2, size, size, 3), 255, dtype=torch.uint8)
    elif kind == "black":
        x = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    elif kind == "grey":
        x = torch.full((2, size, size, 3), 128, dtype=torch.uint8)
    elif kind == "pure-red":
        x = torch.zeros((2, size, size, 3), dtype=torch.uint8)
        x[..., 0] = 255
    elif kind == "noise":
        x = torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8)
    else:
        x = torch.zeros((2, size, size, 3), dtype=torch.uint8)
        x[:, :, ::2] = 255
    out = handcrafted_features(x)
    assert torch.isfinite(out).all()
    if kind in ("white", "black", "grey"):
        names = list(FEATURE_NAMES)
        # a flat tile has no texture: gradient, local variance and blob responses vanish
        for name in ("grad_mean", "h_grad_mean", "grey_localvar_mean", "dog_fine_mean", "dog_coarse_mean"):
            assert abs(float(out[0, names.index(name)])) < 1e-5, name
    if kind == "white":
        assert float(out[0, FEATURE_NAMES.index("tissue_frac")]) == 0.0
        assert float(out[0, FEATURE_NAMES.index("h_mean")]) == pytest.approx(0.0, abs=1e-6)


def test_odd_and_small_sizes_and_float_input():
    rng = np.random.default_rng(3)
    tile = synthetic_tile(rng, tumour=True, size=256)
    odd = torch.from_numpy(tile[:225, :131]).unsqueeze(0)
    assert torch.isfinite(handcrafted_features(odd)).all()
    small = torch.from_numpy(tile[:40, :40]).unsqueeze(0)
    assert torch.isfinite(handcrafted_features(small)).all()
    with pytest.raises(ValueError, match="too small"):
        handcrafted_features(torch.from_numpy(tile[:16, :16]).unsqueeze(0))
    x = torch.from_numpy(tile).unsqueeze(0)
    torch.testing.assert_close(handcrafted_features(x.float()), handcrafted_features(x))
    with pytest.raises(TypeError):
        handcrafted_features(x.to(torch.int64))


def test_deterministic_and_independent_of_batch():
    x = torch.cat([_batch(0, True, 3), _batch(1, False, 3)])
    a = handcrafted_features(x)
    b = handcrafted_features(x.clone())
    assert torch.equal(a, b)
    for i in range(x.shape[0]):
        torch.testing.assert_close(handcrafted_features(x[i:i + 1]), a[i:i + 1], rtol=1e-5, atol=1e-5)


def test_separates_dense_dark_nuclei_from_sparse_ones():
    train = torch.cat([_batch(10, True, 12), _batch(11, False, 12)])
    test = torch.cat([_batch(20, True, 12), _batch(21, False, 12)])
    y = np.array([1] * 12 + [0] * 12)
    ftr, fte = handcrafted_features(train).numpy(), handcrafted_features(test).numpy()
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    ztr, zte = (ftr - mu) / sd, (fte - mu) / sd
    centroids = np.stack([ztr[y == 0].mean(0), ztr[y == 1].mean(0)])
    pred = np.argmin(((zte[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    accuracy = float((pred == y).mean())
    assert accuracy >= 0.95, accuracy
    # and the nuclear features move the way the biology says
    names = list(FEATURE_NAMES)
    tum, nor = fte[y == 1], fte[y == 0]
    for name in ("h_frac_0.40", "h_q90", "nuc_erode5_frac", "nuc_block_frac_30", "dark_frac_0.45"):
        k = names.index(name)
        assert tum[:, k].mean() > nor[:, k].mean(), name
    k = names.index("nuc_perimeter_per_area")  # small nuclei have more boundary per area
    assert tum[:, k].mean() < nor[:, k].mean()


def test_separates_tumour_on_synthetic_slide_regions(tmp_path):
    # the project's synthetic slides (slidestream.synth) paint tumour regions with denser, larger, darker nuclei
    synth = pytest.importorskip("slidestream.synth")
    from shapely.geometry import box

    cfg = synth.SynthConfig(width=3072, height=3072, mpp=0.5, tumor=True, n_tumors=2, n_tissue=1, seed=5,
                            tumor_diameter_um=(450.0, 600.0), pen_marks=False, holes=False)
    slide = synth.write_synthetic_slide(tmp_path / "tumour.svs", cfg)
    tumours, tissue = slide.tumors, slide.tissue
    size, tiles, labels = 224, [], []
    for y in range(0, cfg.height - size, size):
        for x in range(0, cfg.width - size, size):
            cell = box(x, y, x + size, y + size)
            in_tumour = any(t.contains(cell) for t in tumours)
            if in_tumour or (tissue.contains(cell) and not any(t.intersects(cell.buffer(size)) for t in tumours)):
                tiles.append((x, y))
                labels.append(int(in_tumour))
    labels = np.array(labels)
    if labels.sum() < 4 or (labels == 0).sum() < 4:
        pytest.skip("synthetic slide has too few pure tumour or normal tiles")
    rng = np.random.default_rng(0)
    pick = np.concatenate([rng.choice(np.flatnonzero(labels == c), 8, replace=(labels == c).sum() < 8)
                           for c in (0, 1)])
    x = torch.from_numpy(np.stack([synth.render_synthetic_region(cfg, tiles[i], (size, size)) for i in pick]))
    y = labels[pick]
    f = handcrafted_features(x).numpy()
    k = list(FEATURE_NAMES).index("h_frac_0.40")
    assert f[y == 1, k].mean() > f[y == 0, k].mean()
    z = (f - f.mean(0)) / (f.std(0) + 1e-6)
    centroids = np.stack([z[y == c].mean(0) for c in (0, 1)])  # resubstitution: a separability check
    pred = np.argmin(((z[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (pred == y).mean() >= 0.9


def test_throughput_is_reported():
    x = torch.cat([_batch(30, True, 32), _batch(31, False, 32)])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        handcrafted_features(x)
        wall, cpu = float("inf"), float("inf")
        for _ in range(3):
            t0, c0 = time.perf_counter(), time.thread_time()
            out = handcrafted_features(x)
            wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.thread_time() - c0)
    finally:
        torch.set_num_threads(threads)
    assert torch.isfinite(out).all()
    # printed only (run with -s): a timed assert would fail on a busy machine, not on slow code
    print(f"\nhandcrafted, 224 px, 1 thread, batch {x.shape[0]}: {x.shape[0] / wall:.0f} tiles/s wall, "
          f"{x.shape[0] / cpu:.0f} tiles/s of CPU time")


def test_features_match_reference_implementations():
    # the statistics are what their names say: recomputed with numpy / scikit-image on the same pyramid
    from skimage.feature import graycomatrix, graycoprops

    rng = np.random.default_rng(42)
    tile = synthetic_tile(rng, tumour=True)
    f = handcrafted_features(torch.from_numpy(tile).unsqueeze(0))[0].numpy()
    names = list(FEATURE_NAMES)
    half = tile.astype(np.float64).reshape(112, 2, 112, 2, 3).mean((1, 3))  # 2x2 means, (112, 112, 3)
    for c, ch in enumerate("rgb"):
        assert f[names.index(f"{ch}_mean")] == pytest.approx(half[..., c].mean() / 255.0, abs=1e-5)
        assert f[names.index(f"{ch}_std")] == pytest.approx(half[..., c].std() / 255.0, abs=1e-4)
        # histogram quantiles of the 2x2 means: within one grey level of numpy's
        ref = np.quantile(half[..., c], 0.5) / 255.0
        assert abs(f[names.index(f"{ch}_q50")] - ref) <= 1.0 / 255.0
    grey = half @ np.array([0.299, 0.587, 0.114]) / 255.0
    quarter = grey.reshape(56, 2, 56, 2).mean((1, 3))
    q = np.clip((quarter * 8).astype(np.uint8), 0, 7)
    for d in (1, 2):
        glcm = graycomatrix(q, [d], [0, np.pi / 2], levels=8, symmetric=True, normed=True)
        for prop in ("contrast", "homogeneity"):  # linear in P: the mean over both directions
            ref = graycoprops(glcm, prop).mean()
            assert f[names.index(f"glcm{d}_{prop}")] == pytest.approx(ref, rel=1e-3, abs=1e-5), (d, prop)
    flat = handcrafted_features(torch.full((1, 64, 64, 3), 200, dtype=torch.uint8))[0]
    assert float(flat[names.index("lbp_riu2_8")]) == pytest.approx(1.0)  # every neighbour >= centre
