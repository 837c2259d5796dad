"""Property tests: any uint8 input, random or degenerate, gives a same-shaped uint8 result without warnings, the
numpy and torch paths agree, and every estimate that succeeds is finite and serialisable."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from slidestream.stain import (
    LabStats,
    StainEstimationError,
    StainMatrixParams,
    augment_hed,
    from_dict,
    get_normalizer,
)
from slidestream.stain._kernel import apply_log_affine_numpy, log_affine_torch_math

METHODS = ["macenko", "reinhard", "vahadane"]
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def images(draw) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 batches: random pixels, or the degenerate content real tiles have."""
    n = draw(st.integers(1, 3))
    h = draw(st.integers(1, 12))
    w = draw(st.integers(1, 12))
    kind = draw(st.sampled_from(["random", "constant", "white+few", "two colours", "dark", "pale"]))
    shape = (n, h, w, 3)
    if kind == "random":
        return draw(arrays(np.uint8, shape))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "constant":
        return np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), shape).copy()
    if kind == "white+few":
        out = np.full(shape, 255, np.uint8)
        out.reshape(-1, 3)[: draw(st.integers(0, 5))] = rng.integers(0, 256, 3, dtype=np.uint8)
        return out
    if kind == "two colours":
        pick = rng.random(shape[:3]) < 0.5
        return np.where(pick[..., None], rng.integers(0, 256, 3), rng.integers(0, 256, 3)).astype(np.uint8)
    if kind == "dark":
        return rng.integers(0, 8, shape, dtype=np.uint8)
    return rng.integers(235, 256, shape, dtype=np.uint8)  # pale / near-white


def _check_same_layout(out, batch) -> None:
    assert isinstance(out, type(batch))
    assert tuple(out.shape) == tuple(batch.shape)
    assert out.dtype == batch.dtype


@pytest.mark.parametrize("method", METHODS)
@SETTINGS
@given(batch=images())
def test_per_image_transform_is_total(method, batch):
    norm = get_normalizer(method, min_tissue_pixels=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow / invalid-value warnings: nothing non-finite happens inside
        out = norm.transform(batch)
        out_t = norm.transform(torch.from_numpy(batch))
    _check_same_layout(out, batch)
    _check_same_layout(out_t, torch.from_numpy(batch))
    assert np.abs(out.astype(int) - out_t.numpy()).max() <= 1
    try:
        params = norm.estimate(batch)
    except StainEstimationError:
        return
    record = json.loads(json.dumps(params.to_dict()))  # JSON would carry a NaN silently: check the values
    values = np.concatenate([np.ravel(v) for k, v in record.items() if k != "kind"]).astype(float)
    assert np.all(np.isfinite(values))
    assert type(params).from_dict(record).to_dict() == params.to_dict()


@st.composite
def stain_params(draw) -> StainMatrixParams:
    """Arbitrary valid stain descriptions, including nearly degenerate ones (vectors just over 2° apart)."""
    vectors = draw(arrays(np.float64, (3, 2), elements=st.floats(0.01, 1.0)))
    u = vectors[:, 0] / np.linalg.norm(vectors[:, 0])
    v = vectors[:, 1] / np.linalg.norm(vectors[:, 1])
    if math.degrees(math.acos(min(1.0, float(u @ v)))) < 2.5:
        # too close to be valid: put v at 2.5° from u, in the plane of u and a fixed axis
        w = np.cross(u, [0.0, 0.0, 1.0] if abs(u[2]) < 0.9 else [1.0, 0.0, 0.0])
        v = u * math.cos(math.radians(2.5)) + w / np.linalg.norm(w) * math.sin(math.radians(2.5))
    max_conc = draw(arrays(np.float64, (2,), elements=st.floats(0.01, 100.0)))
    return StainMatrixParams(np.column_stack([u, v]), max_conc)


@pytest.mark.parametrize("method", ["macenko", "vahadane"])
@SETTINGS
@given(batch=images(), source=stain_params(), target=stain_params())
def test_fixed_source_transform_is_total_for_any_valid_params(method, batch, source, target):
    norm = get_normalizer(method, target=target)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = norm.transform(batch, source=source)
        out_t = norm.transform(torch.from_numpy(batch), source=source)
    _check_same_layout(out, batch)
    assert np.abs(out.astype(int) - out_t.numpy()).max() <= 1
    # a record with a fixed source round-trips and reproduces the output exactly
    norm.source = source
    np.testing.assert_array_equal(from_dict(json.loads(json.dumps(norm.to_dict()))).transform(batch), out)


@SETTINGS
@given(
    batch=images(),
    mean=arrays(np.float64, (3,), elements=st.floats(-50.0, 100.0)),
    std=arrays(np.float64, (3,), elements=st.floats(0.05, 60.0)),
)
def test_reinhard_fixed_source_is_total(batch, mean, std):
    norm = get_normalizer("reinhard", target=LabStats(mean[::-1].copy(), std[::-1].copy()))
    source = LabStats(mean, std)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = norm.transform(batch, source=source)
        out_t = norm.transform(torch.from_numpy(batch), source=source)
    _check_same_layout(out, batch)
    assert np.abs(out.astype(int) - out_t.numpy()).max() <= 1


@SETTINGS
@given(batch=images(), sigma=st.floats(0.0, 0.9), bias=st.floats(0.0, 0.9), seed=st.integers(0, 2**32 - 1))
def test_augment_hed_is_total(batch, sigma, bias, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = augment_hed(batch, sigma=sigma, bias=bias, rng=seed)
        out_t = augment_hed(torch.from_numpy(batch), sigma=sigma, bias=bias, rng=seed)
    _check_same_layout(out, batch)
    assert np.abs(out.astype(int) - out_t.numpy()).max() <= 1
    single = augment_hed(batch[0], sigma=sigma, bias=bias, rng=seed)
    assert single.shape == batch.shape[1:] and single.dtype == np.uint8


@SETTINGS
@given(
    batch=images(),
    matrix=arrays(np.float64, (3, 3), elements=st.floats(-3.0, 3.0)),
    offset=arrays(np.float64, (3,), elements=st.floats(-6.0, 6.0)),
)
def test_compiled_kernel_and_torch_math_agree_with_float64(batch, matrix, offset):
    """The CPU kernel's table-product form and the accelerator's log/exp form (on the CPU here) against float64."""
    n = batch.shape[0]
    a, b = np.broadcast_to(matrix, (n, 3, 3)), np.broadcast_to(offset, (n, 3))
    y = np.log(batch.astype(np.float64) + 1.0) @ matrix + offset
    expected = np.clip(np.rint(np.exp(np.minimum(y, np.log(256.0))) - 1.0), 0, 255)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = apply_log_affine_numpy(batch, a, b)
        got_t = log_affine_torch_math(torch.from_numpy(batch), torch.from_numpy(a.copy()), torch.from_numpy(b.copy()))
    _check_same_layout(got, batch)
    assert np.abs(got.astype(int) - expected).max() <= 1
    assert np.abs(got_t.numpy().astype(int) - expected).max() <= 1


@SETTINGS
@given(
    batch=images(),
    scale=arrays(np.float64, (3,), elements=st.floats(0.05, 5.0)),
    offset=arrays(np.float64, (3,), elements=st.floats(-100.0, 100.0)),
)
def test_compiled_reinhard_agrees_with_the_lab_formulas(batch, scale, offset):
    """The CPU kernel (tables, Newton cube roots, threshold search) against the L*a*b* formulas in float64 and
    against the accelerator's torch form run on the CPU."""
    from slidestream.stain._color import lab_to_rgb, rgb_to_lab
    from slidestream.stain._lab_kernel import reinhard_numpy
    from slidestream.stain.reinhard import reinhard_torch_math

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = reinhard_numpy(batch, scale, offset)
    _check_same_layout(got, batch)
    expected = np.rint(lab_to_rgb(rgb_to_lab(batch / 255.0) * scale + offset) * 255.0)
    assert np.abs(got.astype(int) - expected).max() <= 1
    flat = torch.from_numpy(batch.reshape(-1, 3))
    t = reinhard_torch_math(flat, scale, offset).numpy().reshape(batch.shape)
    assert np.abs(got.astype(int) - t).max() <= 1
