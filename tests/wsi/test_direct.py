"""Direct tile reading (wsi/direct.py) agrees with OpenSlide/tiffslide, is thread-safe and falls back cleanly."""

from __future__ import annotations

import pickle
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from slidestream.errors import (
    ConfigError,
    CorruptSlideError,
    SlideError,
    UnsupportedSlideError,
)
from slidestream.tiling.reads import resize_patch
from slidestream.wsi.direct import DirectTiffReader, TileCache
from slidestream.wsi.slide import open_slide
from slidestream.synth import SynthConfig, write_synthetic_slide

# Decoders (libjpeg-turbo in OpenSlide and in imagecodecs) may round differently; the issue allows 1 grey level.
MAX_MAD = 1.0


# --------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def synth_svs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Aperio-style JPEG (YCbCr, JFIF) SVS, 3 levels with 2x steps, edge tiles padded in the file."""
    path = tmp_path_factory.mktemp("direct") / "synth.svs"
    write_synthetic_slide(path, SynthConfig(width=2600, height=2100, mpp=0.25, tumor=True, level_downsample=2,
                                            min_level_size=600))
    return path


@pytest.fixture(scope="module")
def synth_svs_4x(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("direct4") / "synth4.svs"
    write_synthetic_slide(path, SynthConfig(width=2300, height=2050, mpp=0.25, seed=3, min_level_size=256))
    return path


def _smooth_image(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))


def _half(image: np.ndarray) -> np.ndarray:
    # channel by channel: PIL would premultiply RGBA while resizing
    height, width = image.shape[:2]
    planes = [Image.fromarray(np.ascontiguousarray(image[..., c])) for c in range(image.shape[2])]
    return np.dstack([np.asarray(p.resize((width // 2, height // 2), Image.Resampling.BOX)) for p in planes])


def _write_pyramid(path: Path, image: np.ndarray, levels: int = 3, premultiply: bool = False, **kwargs) -> Path:
    """Generic tiled pyramidal TIFF as OpenSlide expects it: reduced levels flagged in NewSubfileType."""
    with tifffile.TiffWriter(path) as tw:
        level = image
        for k in range(levels):
            stored = level
            if premultiply:  # associated alpha: colour stored multiplied by alpha
                stored = level.copy()
                stored[..., :3] = (level[..., :3].astype(np.uint32) * level[..., 3:] // 255).astype(np.uint8)
            tw.write(stored, tile=(64, 64), metadata=None, subfiletype=1 if k else 0, **kwargs)
            level = _half(level)
    return path


GENERIC_TIFFS = {
    "lzw": {"compression": "lzw", "photometric": "rgb"},
    "deflate-predictor": {"compression": "zlib", "predictor": 2, "photometric": "rgb"},
    "adobe-deflate": {"compression": "adobe_deflate", "photometric": "rgb"},
    "uncompressed": {"compression": None, "photometric": "rgb"},
    "jpeg-ycbcr": {"compression": "jpeg", "photometric": "ycbcr"},
    "jpeg-rgb": {"compression": "jpeg", "photometric": "rgb"},
    "zstd": {"compression": "zstd", "photometric": "rgb"},
    "webp": {"compression": "webp", "photometric": "rgb"},
    "jpeg2000": {"compression": "jpeg2000", "photometric": "rgb"},
    "rgba-unassociated": {"compression": "zlib", "photometric": "rgb", "extrasamples": ["unassalpha"]},
    "rgba-associated": {"compression": "zlib", "photometric": "rgb", "extrasamples": ["assocalpha"]},
}


@pytest.fixture(scope="module", params=sorted(GENERIC_TIFFS))
def generic_tiff(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    kwargs = GENERIC_TIFFS[request.param]
    image = _smooth_image(421, 299, seed=len(request.param))
    if "extrasamples" in kwargs:
        alpha = np.full(image.shape[:2], 255, np.uint8)
        alpha[:, :50] = 0
        alpha[100:160] = 100
        image = np.dstack([image, alpha])
    path = tmp_path_factory.mktemp(request.param) / f"{request.param}.tiff"
    return _write_pyramid(path, image, premultiply=kwargs.get("extrasamples") == ["assocalpha"], **kwargs)


# --------------------------------------------------------------------------------------------------- helpers


def _random_regions(slide, n_per_level: int, seed: int, max_size: int = 400):
    """(location, level, size) spread over each level, some unaligned, some reaching outside the slide."""
    rng = np.random.default_rng(seed)
    regions = []
    for level, ((width, height), downsample) in enumerate(zip(slide.level_dimensions, slide.level_downsamples)):
        margin = int(40 * downsample)
        for _ in range(n_per_level):
            w = int(rng.integers(1, min(width, max_size) + 30))
            h = int(rng.integers(1, min(height, max_size) + 30))
            x = int(rng.integers(-margin, int(width * downsample) + 1))
            y = int(rng.integers(-margin, int(height * downsample) + 1))
            regions.append(((x, y), level, (w, h)))
    return regions


def _compare(path: Path, regions, backend: str = "auto") -> list[float]:
    with open_slide(path, backend=backend) as fast, open_slide(path, backend=backend, direct=False) as ref:
        assert fast.direct_levels, "the direct reader should serve this file"
        assert ref.direct_levels == ()
        mads = []
        for location, level, size in regions:
            ours = fast.read_region(location, level, size)
            theirs = ref.read_region(location, level, size)
            assert ours.shape == theirs.shape == (size[1], size[0], 3)
            assert ours.dtype == np.uint8
            mads.append(float(np.abs(ours.astype(np.int16) - theirs).mean()))
    return mads


# --------------------------------------------------------------------------------------------------- agreement


def test_real_aperio_jpeg_matches_openslide(cmu_slide: Path) -> None:
    # CMU-1: abbreviated JPEG streams with shared JPEGTables, RGB colour space without an Adobe marker.
    with open_slide(cmu_slide) as slide:
        assert slide.backend == "openslide" and slide.direct_levels == (0,)
        reader = slide._backend.reader
        assert reader.levels[0].compression == "jpeg" and reader.levels[0].jpegtables
    regions = _random_regions(open_slide(cmu_slide), 40, seed=1)
    regions += [((0, 0), 0, (240, 240)), ((240, 480), 0, (240, 240)), ((2200, 2950), 0, (64, 64)),
                ((-100, -50), 0, (300, 200)), ((1000, 1000), 0, (448, 448))]
    mads = _compare(cmu_slide, regions)
    assert max(mads) <= MAX_MAD


def test_boxes_tiff_matches_openslide_at_fractional_positions(slides_dir: Path) -> None:
    # Four levels with downsamples 1, 2, 4.016, 8.086: most level-0 locations fall between level pixels, where
    # OpenSlide interpolates bilinearly.
    path = slides_dir / "openslide-fixtures" / "boxes.tiff"
    with open_slide(path) as slide:
        assert slide.direct_levels == (0, 1, 2, 3)
        regions = _random_regions(slide, 40, seed=2)
    mads = _compare(path, regions)
    assert max(mads) <= MAX_MAD


def test_boxes_tiff_level0_equals_expected_png(slides_dir: Path) -> None:
    fixtures = slides_dir / "openslide-fixtures"
    expected = np.asarray(Image.open(fixtures / "boxes.png").convert("RGB"))
    with open_slide(fixtures / "boxes.tiff") as slide:
        got = slide.read_region((0, 0), 0, slide.dimensions)
    assert np.array_equal(got, expected)


def test_synthetic_svs_matches_openslide(synth_svs: Path) -> None:
    with open_slide(synth_svs) as slide:
        assert slide.vendor == "aperio" and slide.level_count == 3
        assert slide.direct_levels == (0, 1, 2)
        regions = _random_regions(slide, 25, seed=3)
        # aligned and unaligned tile reads, the tiler's 448 px reads, and the padded bottom-right edge tiles
        regions += [((256, 512), 0, (256, 256)), ((300, 700), 0, (448, 448)), ((2400, 1900), 0, (256, 256)),
                    ((2, 6), 1, (300, 200)), ((2595, 2099), 0, (10, 10)), ((-7, -3), 1, (50, 50))]
    mads = _compare(synth_svs, regions)
    assert max(mads) <= MAX_MAD


def test_synthetic_svs_4x_pyramid_matches_openslide(synth_svs_4x: Path) -> None:
    with open_slide(synth_svs_4x) as slide:
        assert slide.level_downsamples[1] == pytest.approx(4, rel=0.01)
        regions = _random_regions(slide, 25, seed=4)
    assert max(_compare(synth_svs_4x, regions)) <= MAX_MAD


def test_generic_tiffs_match_openslide(generic_tiff: Path) -> None:
    with open_slide(generic_tiff) as slide:
        assert slide.vendor == "generic-tiff" and slide.level_count == 3
        regions = _random_regions(slide, 15, seed=5, max_size=200)
    assert max(_compare(generic_tiff, regions)) <= MAX_MAD


def test_tiffslide_backend_floors_like_tiffslide(synth_svs: Path, slides_dir: Path) -> None:
    for path in (synth_svs, slides_dir / "openslide-fixtures" / "boxes.tiff"):
        with open_slide(path, backend="tiffslide") as slide:
            regions = _random_regions(slide, 15, seed=6, max_size=200)
        mads = _compare(path, regions, backend="tiffslide")
        assert max(mads) == 0.0  # no interpolation on either side, same decoder: identical pixels


def test_tiler_read_at_half_resolution_matches_openslide(synth_svs: Path) -> None:
    # The CAMELYON case: 448 px at 0.25 µm/px area-averaged to 224 px at 0.5 µm/px.
    with open_slide(synth_svs) as fast, open_slide(synth_svs, direct=False) as ref:
        for x, y in [(0, 0), (448, 448), (1001, 333), (2100, 1600)]:
            ours = resize_patch(fast.read_region((x, y), 0, (448, 448)), 224)
            theirs = resize_patch(ref.read_region((x, y), 0, (448, 448)), 224)
            assert ours.shape == (224, 224, 3)
            assert np.abs(ours.astype(np.int16) - theirs).mean() <= MAX_MAD


# --------------------------------------------------------------------------------------------------- cache, threads


def test_neighbouring_reads_decode_each_tile_once(synth_svs: Path) -> None:
    with DirectTiffReader(synth_svs, [(2600, 2100)]) as reader:
        tile_w, tile_h = reader.levels[0].tile_size
        for x in range(0, 2600 - 448, 448):  # a row of 448 px reads on the 256 px grid
            reader.read_level_region(0, x, 100, 448, 448)
        info = reader.cache.info()
        x_end = (2600 - 448) // 448 * 448
        tiles_touched = (x_end + 448 - 1) // tile_w + 1
        rows_touched = (100 + 448 - 1) // tile_h - 100 // tile_h + 1
        assert info["misses"] == tiles_touched * rows_touched
        assert info["hits"] > 0


def test_cache_memory_is_bounded(synth_svs: Path) -> None:
    tile_bytes = 256 * 256 * 3
    with DirectTiffReader(synth_svs, [(2600, 2100)], cache_bytes=5 * tile_bytes) as reader:
        for y in range(0, 2100 - 300, 300):
            for x in range(0, 2600 - 300, 300):
                reader.read_level_region(0, x, y, 300, 300)
                assert reader.cache.info()["bytes"] <= 5 * tile_bytes
        assert reader.cache.info()["tiles"] == 5


def test_tile_cache_evicts_least_recently_used() -> None:
    cache = TileCache(max_bytes=3 * 100)
    tiles = {k: np.full(100, k, np.uint8) for k in range(4)}
    for k in range(3):
        cache.put((0, k), tiles[k])
    assert cache.get((0, 0)) is tiles[0]  # 0 becomes the most recent
    cache.put((0, 3), tiles[3])
    assert cache.get((0, 1)) is None and cache.get((0, 0)) is tiles[0] and cache.get((0, 3)) is tiles[3]
    with pytest.raises(ValueError):
        TileCache(-1)


def test_returned_regions_are_private_copies(synth_svs: Path) -> None:
    with open_slide(synth_svs) as slide:
        for location, size in [((256, 256), (256, 256)), ((300, 300), (400, 400))]:
            first = slide.read_region(location, 0, size)
            expected = first.copy()
            first[:] = 0  # callers may write into regions; the cache must not see it
            assert np.array_equal(slide.read_region(location, 0, size), expected)


def test_concurrent_reads_equal_serial_reads(synth_svs: Path) -> None:
    with open_slide(synth_svs) as slide:
        regions = _random_regions(slide, 30, seed=7, max_size=450)
        serial = [slide.read_region(*r) for r in regions]
    with open_slide(synth_svs) as slide:
        results: list[list[np.ndarray | None]] = [[None] * len(regions) for _ in range(4)]
        errors: list[BaseException] = []

        def work(k: int) -> None:
            try:
                order = np.random.default_rng(k).permutation(len(regions))
                for i in order:
                    results[k][i] = slide.read_region(*regions[i])
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    for per_thread in results:
        for got, want in zip(per_thread, serial):
            assert np.array_equal(got, want)


# --------------------------------------------------------------------------------------------------- fallback, errors


def test_files_without_tiles_fall_back(slides_dir: Path) -> None:
    stripped = slides_dir / "ome-edge" / "cells.tif"  # plain stripped RGB TIFF, read by tiffslide
    with open_slide(stripped) as slide:
        assert slide.direct_levels == ()
        assert slide.read_region((0, 0), 0, (10, 10)).shape == (10, 10, 3)
    with pytest.raises(UnsupportedSlideError, match="directly"):
        open_slide(stripped, direct=True)
    dicom = slides_dir / "openslide-fixtures" / "boxes_0.dcm"
    with open_slide(dicom) as slide:
        assert slide.direct_levels == ()


def test_levels_in_unsupported_compressions_are_read_by_the_backend(tmp_path: Path) -> None:
    image = _smooth_image(300, 200, seed=9)
    path = tmp_path / "mixed.tiff"
    with tifffile.TiffWriter(path) as tw:
        for k, compression in enumerate(["lzw", "lzma", "lzw"]):  # LZMA (34925): not decoded directly
            tw.write(image[:: 2**k, :: 2**k].copy(), tile=(64, 64), photometric="rgb", compression=compression,
                     metadata=None, subfiletype=1 if k else 0)
    with open_slide(path) as slide:
        assert slide.level_count == 3 and slide.direct_levels == (0, 2)
        assert "34925" in slide._backend.reader.unsupported[1]
        regions = _random_regions(slide, 10, seed=10, max_size=150)
    assert max(_compare(path, regions)) == 0.0  # lossless, and level 1 comes from the backend itself
    with pytest.raises(UnsupportedSlideError, match="34925"):
        open_slide(path, direct=True)


def test_direct_true_accepts_fully_tiled_files(cmu_slide: Path) -> None:
    with open_slide(cmu_slide, direct=True) as slide:
        assert slide.direct_levels == (0,)


def test_bad_direct_value_is_refused(cmu_slide: Path) -> None:
    with pytest.raises(ConfigError, match="direct"):
        open_slide(cmu_slide, direct="yes")


def test_pickle_keeps_direct_reading(cmu_slide: Path) -> None:
    with open_slide(cmu_slide) as slide, pickle.loads(pickle.dumps(slide)) as clone:
        assert clone.direct_levels == (0,)
        assert np.array_equal(clone.read_region((500, 500), 0, (64, 64)), slide.read_region((500, 500), 0, (64, 64)))
    with open_slide(cmu_slide, direct=False) as slide, pickle.loads(pickle.dumps(slide)) as clone:
        assert clone.direct_levels == ()


def test_corrupt_tile_raises_corrupt_slide_error(synth_svs: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.svs"
    shutil.copy(synth_svs, damaged)
    with tifffile.TiffFile(damaged) as tf:
        page = tf.pages[0]
        columns = -(-page.imagewidth // page.tilewidth)
        index = 3 * columns + 4  # a tissue tile in the middle, not the probed coarsest level
        offset, count = page.dataoffsets[index], page.databytecounts[index]
    with open(damaged, "r+b") as fh:
        fh.seek(offset + 2)  # keep the SOI marker, destroy the headers
        fh.write(b"\xff\x00" * ((count - 2) // 2))
    with open_slide(damaged) as slide:
        assert 0 in slide.direct_levels
        with pytest.raises(CorruptSlideError, match="cannot decode region"):
            slide.read_region((4 * 256, 3 * 256), 0, (256, 256))
        # other tiles still read
        assert slide.read_region((0, 0), 0, (256, 256)).shape == (256, 256, 3)


def test_read_after_close_raises(cmu_slide: Path) -> None:
    slide = open_slide(cmu_slide)
    slide.close()
    with pytest.raises(SlideError, match="closed"):
        slide.read_region((0, 0), 0, (10, 10))
    reader = DirectTiffReader(cmu_slide, [(2220, 2967)])
    reader.close()
    with pytest.raises(ValueError, match="closed"):
        reader.raw_tile(0, 0, 0)
