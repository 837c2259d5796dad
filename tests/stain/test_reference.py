"""Stain normalisation against reference implementations on the real H&E patch pair from torchstain.

* Macenko, per patch: torchstain's ``MacenkoNormalizer(backend="numpy")`` with the same target.
* Reinhard: a straightforward L*a*b* statistics transfer written here with scikit-image's ``rgb2lab``/``lab2rgb``.
* Vahadane: our sparse-NMF solver against scikit-learn's ``DictionaryLearning`` with non-negativity.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from slidestream.stain import get_normalizer
from slidestream.stain.macenko import macenko_stain_vectors
from slidestream.stain.matrix import tissue_od
from slidestream.stain.vahadane import VahadaneConfig, nonnegative_lasso_2, sparse_nmf_stain_vectors


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        rgba = np.asarray(im)
    assert rgba.ndim == 3 and rgba.shape[2] == 4, "the shared patches are RGBA"
    return np.ascontiguousarray(rgba[..., :3])


@pytest.fixture(scope="module")
def he_pair(shared_data: Path) -> tuple[np.ndarray, np.ndarray]:
    patches = shared_data / "patches"
    return _read_rgb(patches / "he-source.png"), _read_rgb(patches / "he-target.png")


def mean_abs_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean())


def test_macenko_per_patch_matches_torchstain(he_pair):
    torchstain = pytest.importorskip("torchstain")
    source, target = he_pair
    reference = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
    reference.fit(target)
    expected, _, _ = reference.normalize(I=source, stains=False)

    norm = get_normalizer("macenko")
    fitted = norm.fit(target)
    # the stain vectors are the same estimate; torchstain orders and signs them the same way
    np.testing.assert_allclose(fitted.stain_matrix, reference.HERef, atol=1e-6)
    out = norm.transform(source)
    assert out.shape == source.shape and out.dtype == np.uint8
    assert mean_abs_diff(out, expected) <= 3.0
    # and the normalisation did something substantial: the source is far from its normalised self
    assert mean_abs_diff(source, expected) > 10.0

    out_torch = norm.transform(torch.from_numpy(source)).numpy()
    assert np.abs(out_torch.astype(int) - out).max() <= 1


def _reinhard_reference(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Textbook Reinhard in scikit-image's CIE L*a*b*: standardise each channel, rescale to the target's."""
    from skimage.color import lab2rgb, rgb2lab

    src = rgb2lab(source / 255.0).reshape(-1, 3)
    tgt = rgb2lab(target / 255.0).reshape(-1, 3)
    lab = (src - src.mean(0)) / src.std(0) * tgt.std(0) + tgt.mean(0)
    with warnings.catch_warnings():  # out-of-gamut colours: clipped, as ours are
        warnings.simplefilter("ignore", UserWarning)
        rgb = lab2rgb(lab.reshape(source.shape))
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def test_reinhard_matches_scikit_image_reference(he_pair):
    source, target = he_pair
    expected = _reinhard_reference(source, target)
    norm = get_normalizer("reinhard", ignore_background=False)  # textbook: statistics over all pixels
    norm.fit(target)
    out = norm.transform(source)
    assert mean_abs_diff(out, expected) <= 3.0
    assert mean_abs_diff(source, expected) > 10.0
    out_torch = norm.transform(torch.from_numpy(source)).numpy()
    assert np.abs(out_torch.astype(int) - out).max() <= 1
    # the default (background ignored) differs, but only moderately, on these tissue-filled patches
    default = get_normalizer("reinhard")
    default.fit(target)
    assert mean_abs_diff(default.transform(source), expected) < 10.0


def test_vahadane_solver_matches_scikit_learn_dictionary_learning(he_pair):
    """Same objective, same optimum: our closed-form alternating solver vs DictionaryLearning(positive)."""
    from sklearn.decomposition import DictionaryLearning

    _, target = he_pair
    cfg = VahadaneConfig(max_pixels=300)
    od, _ = tissue_od(target.reshape(-1, 3), cfg, dense=False)
    ours = sparse_nmf_stain_vectors(od, macenko_stain_vectors(od), sparsity=0.1, max_iter=300, tol=1e-9)

    learner = DictionaryLearning(
        n_components=2,
        alpha=0.1,
        positive_dict=True,
        positive_code=True,
        fit_algorithm="cd",
        transform_algorithm="lasso_cd",
        random_state=0,
        max_iter=300,
        tol=1e-9,
    )
    learner.fit(np.maximum(od, 0.0))
    theirs = learner.components_.T / np.linalg.norm(learner.components_, axis=1)
    if theirs[0, 0] < theirs[0, 1]:
        theirs = theirs[:, [1, 0]]

    v = np.maximum(od, 0.0).T

    def objective(w):
        h = nonnegative_lasso_2(w, v, 0.1)
        return float(0.5 * ((v - w @ h) ** 2).sum() + 0.1 * h.sum())

    assert objective(ours) <= objective(theirs) * (1 + 1e-4)
    np.testing.assert_allclose(ours, theirs, atol=5e-3)


def test_vahadane_on_real_patches(he_pair):
    source, target = he_pair
    norm = get_normalizer("vahadane")
    fitted = norm.fit(target)
    assert np.all(fitted.stain_matrix >= 0)
    assert fitted.stain_matrix[0, 0] > fitted.stain_matrix[0, 1]  # hematoxylin absorbs more red
    out = norm.transform(source)
    # normalising brings the source's mean colour towards the target's
    before = np.abs(source.reshape(-1, 3).mean(0) - target.reshape(-1, 3).mean(0)).mean()
    after = np.abs(out.reshape(-1, 3).mean(0) - target.reshape(-1, 3).mean(0)).mean()
    assert after < before / 2
    assert np.abs(norm.transform(torch.from_numpy(source)).numpy().astype(int) - out).max() <= 1


def test_per_slide_mode_on_real_slide_tiles(cmu_slide: Path):
    """A slide's stain fitted once from a sample of real tiles maps every tile by one consistent transform."""
    openslide = pytest.importorskip("openslide")
    with openslide.OpenSlide(str(cmu_slide)) as slide:
        region = np.asarray(slide.read_region((600, 800), 0, (896, 448)).convert("RGB"))
    tiles = np.stack([region[y : y + 224, x : x + 224] for y in (0, 224) for x in range(0, 896, 224)])
    norm = get_normalizer("macenko")
    source = norm.fit_source(tiles)
    assert source.stain_matrix[0, 0] > source.stain_matrix[0, 1]
    out = norm.transform(tiles)
    # one transform for all: a colour maps to the same output wherever it occurs, alone or in any tile
    colour = tiles[1, 50, 50]
    where = (tiles == colour).all(axis=-1)
    assert where.sum() >= 1
    alone = norm.transform(np.broadcast_to(colour, (1, 1, 3)).copy())[0, 0]
    assert np.all(out[where] == alone)
    # every tissue tile changed (CMU-1 is darker than the reference), and the fixed map equals the per-image map
    # of a tile whose own stain is the source
    tissue = [i for i in range(len(tiles)) if tiles[i].mean() < 200]
    assert len(tissue) >= 4
    assert all(mean_abs_diff(out[i], tiles[i]) > 5.0 for i in tissue)
    norm.source = None
    busy = tiles[tissue[0]]
    np.testing.assert_array_equal(norm.transform(busy, source=norm.estimate(busy)), norm.transform(busy))
    # the mostly-white tile has too little tissue for its own estimate: per-image mode leaves it alone
    np.testing.assert_array_equal(norm.transform(tiles[0]), tiles[0])
