"""Behaviour of ``Slide``: regions, thumbnails, level choice by MPP, identity, and the metadata rules."""

from __future__ import annotations

import hashlib
import json
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile

from slidestream.errors import ConfigError, CorruptSlideError, SlideError
from slidestream.wsi import (
    check_target_mpp,
    file_fingerprint,
    mpp_from_ome_xml,
    mpp_from_resolution,
    objective_from_mpp,
    open_slide,
)
from slidestream.wsi._backends import composite_on_white

BOXES_MPP = 352.7777798  # README: boxes.tiff is 352.78 µm/px (72 dpi written as 28.3465 px/cm)
BOXES_DOWNSAMPLES = (1.0, 2.0, 4.0161290, 8.0863121)


@pytest.fixture(scope="module")
def boxes(slides_dir: Path) -> Path:
    return slides_dir / "openslide-fixtures" / "boxes.tiff"


def _write_pyramid(path: Path, *, mpp: float | None, tile: int = 64) -> np.ndarray:
    """A 3-level tiled RGB TIFF (downsamples 1, 2, 4) with random pixels; returns level 0."""
    rng = np.random.default_rng(7)
    level0 = rng.integers(0, 256, (256, 384, 3), dtype=np.uint8)
    with tifffile.TiffWriter(path) as tw:
        for index, factor in enumerate((1, 2, 4)):
            kwargs = {}
            if mpp is not None:
                kwargs = {"resolution": (1e4 / (mpp * factor),) * 2, "resolutionunit": "CENTIMETER"}
            tw.write(
                level0[::factor, ::factor],
                photometric="rgb",
                tile=(tile, tile),
                subfiletype=1 if index else 0,
                **kwargs,
            )
    return level0


# ------------------------------------------------------------------------------------------ read_region


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_region_partly_outside_is_white(cmu_slide: Path, backend: str) -> None:
    with open_slide(cmu_slide, backend=backend) as slide:
        w, h = slide.dimensions
        inside = slide.read_region((0, 0), 0, (30, 20))
        region = slide.read_region((-10, -5), 0, (40, 25))
        assert region.shape == (25, 40, 3) and region.dtype == np.uint8
        assert inside.flags.writeable and region.flags.writeable  # callers own what they get (in-place stain ops)
        assert (region[:5] == 255).all() and (region[:, :10] == 255).all()
        assert np.array_equal(region[5:, 10:], inside)
        corner = slide.read_region((w - 8, h - 6), 0, (20, 20))
        assert np.array_equal(corner[:6, :8], slide.read_region((w - 8, h - 6), 0, (8, 6)))
        assert (corner[6:] == 255).all() and (corner[:, 8:] == 255).all()
        assert (slide.read_region((w + 100, 0), 0, (16, 16)) == 255).all()


def test_tiled_pyramid_regions_match_the_written_pixels(tmp_path: Path) -> None:
    path = tmp_path / "pyramid.tif"
    level0 = _write_pyramid(path, mpp=0.25)
    for backend in ("openslide", "tiffslide"):
        with open_slide(path, backend=backend) as slide:
            assert slide.level_downsamples == (1.0, 2.0, 4.0)
            assert np.array_equal(slide.read_region((70, 33), 0, (100, 90)), level0[33:123, 70:170])
            # location is level 0 even when reading level 2: (128, 64) is level-2 pixel (32, 16).
            assert np.array_equal(slide.read_region((128, 64), 2, (40, 30)), level0[::4, ::4][16:46, 32:72])
            # Left of and above the slide at level 1: (-4, -2) is level-1 pixel (-2, -1).
            region = slide.read_region((-4, -2), 1, (10, 8))
            assert (region[:1] == 255).all() and (region[:, :2] == 255).all()
            assert np.array_equal(region[1:, 2:], level0[::2, ::2][:7, :8])
            if backend == "tiffslide":  # floor(location / downsample), also for negative locations
                assert np.array_equal(slide.read_region((-3, -1), 1, (10, 8)), region)


def test_read_region_rejects_bad_arguments(cmu_slide: Path) -> None:
    with open_slide(cmu_slide) as slide:
        with pytest.raises(ConfigError, match="level 1 does not exist"):
            slide.read_region((0, 0), 1, (8, 8))
        with pytest.raises(ConfigError):
            slide.read_region((0, 0), -1, (8, 8))
        with pytest.raises(ConfigError):
            slide.read_region((0.5, 0), 0, (8, 8))
        with pytest.raises(ConfigError):
            slide.read_region((0, 0), 0, (-1, 8))
        with pytest.raises(ConfigError):
            slide.read_region((0, 0), 0, (8,))
        assert slide.read_region((0, 0), 0, (0, 5)).shape == (5, 0, 3)
        # numpy integers are fine
        assert slide.read_region((np.int64(3), np.int32(4)), np.int64(0), (np.int64(2), 2)).shape == (2, 2, 3)


def test_closed_slide_refuses_reads(cmu_slide: Path) -> None:
    slide = open_slide(cmu_slide)
    slide.close()
    slide.close()  # idempotent
    assert slide.closed
    with pytest.raises(SlideError, match="closed"):
        slide.read_region((0, 0), 0, (4, 4))
    with pytest.raises(SlideError, match="closed"):
        slide.associated_images["label"]


def test_corrupt_tile_fails_at_read_with_the_file_name(tmp_path: Path) -> None:
    # The probe at open only decodes the first tile of the coarsest level; damage elsewhere surfaces at read.
    path = tmp_path / "damaged.tif"
    rng = np.random.default_rng(3)
    tifffile.imwrite(
        path, rng.integers(0, 256, (128, 128, 3), dtype=np.uint8), photometric="rgb", tile=(64, 64),
        compression="jpeg",
    )
    with tifffile.TiffFile(path) as tf:
        offset = tf.pages[0].dataoffsets[3]
    data = bytearray(path.read_bytes())
    data[offset : offset + 64] = b"\xff" * 64  # the last tile's JPEG header
    path.write_bytes(bytes(data))
    for backend in ("openslide", "tiffslide"):
        with open_slide(path, backend=backend) as slide:
            assert slide.read_region((0, 0), 0, (64, 64)).shape == (64, 64, 3)
            with pytest.raises(CorruptSlideError) as info:
                slide.read_region((64, 64), 0, (64, 64))
            assert "damaged.tif" in str(info.value) and "level=0" in str(info.value)


def test_reading_from_threads(cmu_slide: Path) -> None:
    with open_slide(cmu_slide) as slide:
        locations = [(x, y) for x in range(0, 2000, 500) for y in range(0, 2800, 700)]
        expected = {loc: slide.read_region(loc, 0, (64, 64)) for loc in locations}
        errors: list[str] = []

        def work() -> None:
            for loc in locations:
                if not np.array_equal(slide.read_region(loc, 0, (64, 64)), expected[loc]):
                    errors.append(f"{loc} differs")

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors


def test_pickle_reopens_the_slide(tmp_path: Path, ome_cells: Path) -> None:
    with open_slide(ome_cells, mpp=0.3) as slide:
        clone = pickle.loads(pickle.dumps(slide))
    with clone:
        assert clone.path == slide.path
        assert clone.backend == "tiffslide"
        assert clone.mpp == 0.3 and clone.mpp_source == "override"
        assert clone.read_region((0, 0), 0, (10, 10)).shape == (10, 10, 3)


@pytest.fixture(scope="module")
def ome_cells(slides_dir: Path) -> Path:
    return slides_dir / "ome-edge" / "cells.tif"


# ------------------------------------------------------------------------------------------ compositing


def test_composite_on_white() -> None:
    rgba = np.array([[[200, 100, 0, 255], [200, 100, 0, 0], [200, 100, 0, 128], [0, 0, 0, 51]]], np.uint8)
    out = composite_on_white(rgba)
    assert out.dtype == np.uint8 and out.shape == (1, 4, 3)
    assert out[0, 0].tolist() == [200, 100, 0]  # opaque: unchanged
    assert out[0, 1].tolist() == [255, 255, 255]  # transparent: white
    expected = np.round(np.array([200, 100, 0]) * 128 / 255 + 255 * (1 - 128 / 255))
    assert np.abs(out[0, 2].astype(int) - expected).max() <= 1
    assert out[0, 3].tolist() == [204, 204, 204]  # black at 20 % over white


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_rgba_tiff_is_composited_on_white(tmp_path: Path, backend: str) -> None:
    rgba = np.zeros((16, 32, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = np.arange(32, dtype=np.uint8)[None, :] * 8  # alpha 0 … 248 left to right
    path = tmp_path / "rgba.tif"
    tifffile.imwrite(path, rgba, photometric="rgb", extrasamples=["unassalpha"], tile=(16, 16))
    with open_slide(path, backend=backend) as slide:
        region = slide.read_region((0, 0), 0, (32, 16))
    assert (region[:, 0] == 255).all()
    expected = composite_on_white(rgba)
    assert np.abs(region.astype(int) - expected).max() <= 1


# ------------------------------------------------------------------------------------------ thumbnail


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_thumbnail_size_and_content(cmu_slide: Path, backend: str) -> None:
    with open_slide(cmu_slide, backend=backend) as slide:
        thumb = slide.thumbnail(256)
        assert thumb.dtype == np.uint8
        assert max(thumb.shape[:2]) == 256
        assert thumb.shape == (256, round(2220 * 256 / 2967), 3)
        # Area averaging keeps the mean colour of the slide.
        full = slide.read_region((0, 0), 0, slide.dimensions)
        assert np.abs(thumb.reshape(-1, 3).mean(0) - full.reshape(-1, 3).mean(0)).max() < 2.0


def test_thumbnail_never_upsamples_and_uses_small_levels(boxes: Path) -> None:
    with open_slide(boxes) as slide:
        assert slide.thumbnail(1024).shape == (250, 300, 3)  # smaller than max_size: level-0 size
        assert np.array_equal(slide.thumbnail(1024), slide.read_region((0, 0), 0, (300, 250)))
        # 37 px wide is exactly level 3: returned as read, no resampling.
        small = slide.thumbnail(37)
        assert small.shape == (31, 37, 3)
        assert np.array_equal(small, slide.read_region((0, 0), 3, (37, 31)))
        with pytest.raises(ConfigError):
            slide.thumbnail(0)


def test_thumbnail_in_bands_matches_one_shot(cmu_slide: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import slidestream.wsi.slide as slide_module

    with open_slide(cmu_slide) as slide:
        one_shot = slide.thumbnail(300)
        monkeypatch.setattr(slide_module, "_THUMBNAIL_BAND_BYTES", 3 * 2220 * 40)  # force ~4 output rows a band
        banded = slide.thumbnail(300)
    assert banded.shape == one_shot.shape
    assert np.array_equal(banded, one_shot)


# ------------------------------------------------------------------------------------------ levels and MPP


def test_level_mpp_and_level_for_mpp_on_boxes(boxes: Path) -> None:
    with open_slide(boxes) as slide:
        for level, downsample in enumerate(BOXES_DOWNSAMPLES):
            assert slide.level_mpp(level) == pytest.approx(BOXES_MPP * downsample, rel=1e-5)
        assert slide.level_for_mpp(BOXES_MPP) == 0
        assert slide.level_for_mpp(BOXES_MPP * 2) == 1
        assert slide.level_for_mpp(BOXES_MPP * 3.9) == 1
        assert slide.level_for_mpp(BOXES_MPP * 4) == 2  # level 2 is 4.016: within the 1 % tolerance
        assert slide.level_for_mpp(BOXES_MPP * 4, tolerance=0.0) == 1
        assert slide.level_for_mpp(BOXES_MPP * 8.0) == 2  # level 3 is 8.086: 1.08 % coarser, beyond 1 %
        assert slide.level_for_mpp(BOXES_MPP * 8.1) == 3
        assert slide.level_for_mpp(BOXES_MPP * 100) == 3
        assert slide.level_for_mpp(BOXES_MPP / 2) == 0  # finer than level 0: 0, and check_target_mpp refuses
        with pytest.raises(ConfigError, match="does not upsample"):
            slide.check_target_mpp(BOXES_MPP / 2)
        slide.check_target_mpp(BOXES_MPP * 2)
        with pytest.raises(ConfigError, match="level 4 does not exist"):
            slide.level_mpp(4)
        with pytest.raises(ConfigError):
            slide.level_for_mpp(0)
        assert slide.level_for_downsample(2.0) == 1
        assert slide.level_for_downsample(0.5) == 0


def test_level_for_mpp_on_cmu(cmu_slide: Path) -> None:
    with open_slide(cmu_slide) as slide:
        assert slide.level_mpp(0) == pytest.approx(0.499)
        assert slide.level_for_mpp(0.5) == 0
        assert slide.level_for_mpp(1.0) == 0  # one level only
        slide.check_target_mpp(0.5)
        slide.check_target_mpp(0.495)  # 0.8 % finer: within tolerance
        with pytest.raises(ConfigError) as info:
            slide.check_target_mpp(0.25)
        assert "CMU-1-Small-Region.svs" in str(info.value)


def test_check_target_mpp_function() -> None:
    check_target_mpp(0.5, 0.25)
    check_target_mpp(0.5, 0.504)
    with pytest.raises(ConfigError):
        check_target_mpp(0.5, 0.51)
    with pytest.raises(ConfigError):
        check_target_mpp(-1, 0.25)
    with pytest.raises(ConfigError):
        check_target_mpp(0.5, 0.51, tolerance=0.0)
    check_target_mpp(0.5, 0.51, tolerance=0.05)


def test_mpp_override_wins_over_metadata(cmu_slide: Path) -> None:
    with open_slide(cmu_slide, mpp=0.25) as slide:
        assert slide.mpp == 0.25 and slide.mpp_source == "override"
        assert slide.objective_power == 20.0  # what the file states is kept
        assert slide.describe()["mpp_source"] == "override"


def test_tiff_resolution_units(tmp_path: Path) -> None:
    pixels = np.zeros((32, 48, 3), np.uint8)
    inch = tmp_path / "inch.tif"
    tifffile.imwrite(inch, pixels, photometric="rgb", resolution=(50_800, 25_400), resolutionunit="INCH")
    with open_slide(inch) as slide:
        assert slide.mpp_source == "tiff-resolution"
        assert slide.mpp_xy == pytest.approx((0.5, 1.0))
        assert slide.mpp == pytest.approx(0.75)
    unitless = tmp_path / "none.tif"
    tifffile.imwrite(unitless, pixels, photometric="rgb", resolution=(4, 4), resolutionunit="NONE")
    with open_slide(unitless) as slide:
        assert not slide.has_mpp and slide.mpp_source is None


def test_mpp_from_resolution_rules() -> None:
    assert mpp_from_resolution(28.346456527709961, 28.346456527709961, "centimeter") == pytest.approx(
        (BOXES_MPP, BOXES_MPP)
    )
    assert mpp_from_resolution(40000, 40000, "CENTIMETER") == pytest.approx((0.25, 0.25))
    assert mpp_from_resolution((101600, 2), (101600, 2), 2) == pytest.approx((0.5, 0.5))  # rational, unit 2=inch
    assert mpp_from_resolution(4.0, 4.0, "none") is None
    assert mpp_from_resolution(4.0, 4.0, 1) is None
    assert mpp_from_resolution(4.0, 4.0, None) is None
    assert mpp_from_resolution(0, 4.0, "inch") is None
    assert mpp_from_resolution(None, None, "inch") is None


def test_mpp_from_ome_xml_units() -> None:
    def ome(attrs: str) -> str:
        return (
            '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image ID="Image:0">'
            f'<Pixels ID="Pixels:0" {attrs}/></Image></OME>'
        )

    assert mpp_from_ome_xml(ome('PhysicalSizeX="0.5" PhysicalSizeY="0.5"')) == pytest.approx((0.5, 0.5))
    nm = ome('PhysicalSizeX="250" PhysicalSizeXUnit="nm" PhysicalSizeY="260" PhysicalSizeYUnit="nm"')
    assert mpp_from_ome_xml(nm) == pytest.approx((0.25, 0.26))
    assert mpp_from_ome_xml(ome('PhysicalSizeX="0.5"')) is None
    assert mpp_from_ome_xml(ome('PhysicalSizeX="1" PhysicalSizeXUnit="pixel" PhysicalSizeY="1"')) is None
    assert mpp_from_ome_xml("<not xml") is None
    assert mpp_from_ome_xml(None) is None


@pytest.mark.parametrize(
    "mpp, power",
    [(0.499, 20.0), (0.2456, 40.0), (0.25, 40.0), (0.243, 40.0), (0.226, 40.0), (0.92, 10.0), (1.0, 10.0), (0.1, 100.0),
     (0.3, 33.0)],
)
def test_objective_from_mpp(mpp: float, power: float) -> None:
    assert objective_from_mpp(mpp) == power


def test_objective_from_mpp_rejects_nonsense() -> None:
    assert objective_from_mpp(0) is None
    assert objective_from_mpp(float("nan")) is None


def test_objective_power_derived_when_file_states_none(tmp_path: Path) -> None:
    path = tmp_path / "pyr.tif"
    _write_pyramid(path, mpp=0.25)
    with open_slide(path) as slide:
        assert "openslide.objective-power" not in slide.properties
        assert slide.objective_power == 40.0
        assert slide.level_for_mpp(0.5) == 1
        assert slide.level_for_mpp(1.0) == 2
        assert slide.level_mpp(2) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------ identity and describe


def test_properties_are_read_only(cmu_slide: Path) -> None:
    with open_slide(cmu_slide) as slide:
        assert slide.properties["openslide.vendor"] == "aperio"
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in slide.properties.items())
        with pytest.raises(TypeError):
            slide.properties["openslide.vendor"] = "x"  # type: ignore[index]
    with open_slide(cmu_slide, backend="tiffslide") as slide:  # tiffslide's typed values become strings too
        assert all(isinstance(v, str) for v in slide.properties.values())
        assert float(slide.properties["tiffslide.mpp-x"]) == pytest.approx(0.499)


def test_describe_is_json(boxes: Path) -> None:
    with open_slide(boxes) as slide:
        facts = json.loads(json.dumps(slide.describe()))
    assert facts["path"] == str(boxes)
    assert facts["slide_id"] == "boxes"
    assert facts["backend"] == "openslide" and facts["vendor"] == "generic-tiff"
    assert facts["dimensions"] == [300, 250]
    assert facts["level_count"] == 4
    assert [lvl["dimensions"] for lvl in facts["levels"]] == [[300, 250], [150, 125], [75, 62], [37, 31]]
    assert [lvl["downsample"] for lvl in facts["levels"]] == pytest.approx(BOXES_DOWNSAMPLES)
    assert facts["levels"][2]["mpp"] == pytest.approx(BOXES_MPP * BOXES_DOWNSAMPLES[2], rel=1e-5)
    assert facts["mpp"] == pytest.approx(BOXES_MPP) and facts["mpp_source"] == "openslide"
    assert facts["bounds"] == [0, 0, 300, 250]
    assert facts["associated_images"] == []
    assert facts["file_size"] == boxes.stat().st_size


def test_fingerprint_detects_changed_bytes(cmu_slide: Path, tmp_path: Path) -> None:
    data = bytearray(cmu_slide.read_bytes())
    assert len(data) > 3 * (1 << 20) // 2  # so first and last MiB differ
    path = tmp_path / "copy.svs"
    path.write_bytes(bytes(data))
    with open_slide(path) as slide:
        original = slide.fingerprint()
        # re-derived: BLAKE2b-128 of the size (8 bytes, little-endian), the first MiB and the last MiB (not
        # overlapping the first)
        mib = 1 << 20
        tail = bytes(data[max(mib, len(data) - mib):])
        expected = hashlib.blake2b(len(data).to_bytes(8, "little") + bytes(data[:mib]) + tail,
                                   digest_size=16).hexdigest()
        assert original == expected
        assert original == file_fingerprint(cmu_slide)  # content, not path
    for position in (100, len(data) - 100):
        changed = bytearray(data)
        changed[position] ^= 0xFF
        path.write_bytes(bytes(changed))
        assert file_fingerprint(path) != original
    path.write_bytes(bytes(data) + b"\x00")  # size alone changes it
    assert file_fingerprint(path) != original
    path.write_bytes(bytes(data))
    assert file_fingerprint(path) == original


def test_fingerprint_of_small_file(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"slide" * 10)
    b.write_bytes(b"slide" * 9 + b"slidf")
    assert file_fingerprint(a) != file_fingerprint(b)
