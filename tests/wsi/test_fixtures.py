"""Every shared slide fixture and every kind of bad input through ``open_slide``.

Expected facts come from ``shared/data/README.md`` (and, for boxes.tiff, its companion boxes.png).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from slidestream.errors import ConfigError, CorruptSlideError, MissingMPPError, SlideError, UnsupportedSlideError
from slidestream.wsi import mpp_from_ome_xml, mpp_from_resolution, open_slide


@pytest.fixture(scope="module")
def fixtures_dir(slides_dir: Path) -> Path:
    return slides_dir / "openslide-fixtures"


@pytest.fixture(scope="module")
def ome_dir(slides_dir: Path) -> Path:
    return slides_dir / "ome-edge"


# ------------------------------------------------------------------------------------------ CMU-1-Small-Region.svs


@pytest.mark.parametrize("backend", ["auto", "openslide", "tiffslide"])
def test_cmu_facts(cmu_slide: Path, backend: str) -> None:
    with open_slide(cmu_slide, backend=backend) as slide:
        assert slide.backend == ("openslide" if backend == "auto" else backend)
        assert slide.vendor == "aperio"
        assert slide.dimensions == (2220, 2967)
        assert slide.level_count == 1
        assert slide.level_dimensions == ((2220, 2967),)
        assert slide.level_downsamples == (1.0,)
        assert slide.has_mpp
        assert slide.mpp == pytest.approx(0.499)
        assert slide.mpp_xy == pytest.approx((0.499, 0.499))
        assert slide.mpp_source == ("vendor" if backend == "tiffslide" else "openslide")
        assert slide.objective_power == 20.0
        assert slide.bounds == (0, 0, 2220, 2967)
        assert slide.bounds_offset == (0, 0)
        assert sorted(slide.associated_images) == ["label", "macro", "thumbnail"]


def test_cmu_associated_images_are_rgb_arrays(cmu_slide: Path) -> None:
    with open_slide(cmu_slide) as slide:
        props = slide.properties
        for name in ("label", "macro", "thumbnail"):
            image = slide.associated_images[name]
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            # OpenSlide states each associated image's size in its properties.
            assert image.shape[:2] == (
                int(props[f"openslide.associated.{name}.height"]),
                int(props[f"openslide.associated.{name}.width"]),
            )
            assert slide.associated_images[name] is image  # decoded once, then cached
            assert not image.flags.writeable  # the cache cannot be corrupted by a caller
        with pytest.raises(KeyError):
            slide.associated_images["nonexistent"]


def test_cmu_backends_agree_on_pixels(cmu_slide: Path) -> None:
    with open_slide(cmu_slide, backend="openslide") as a, open_slide(cmu_slide, backend="tiffslide") as b:
        for location in [(0, 0), (1000, 1500), (2000, 2700), (1111, 37)]:
            pa = a.read_region(location, 0, (220, 260)).astype(np.int16)
            pb = b.read_region(location, 0, (220, 260)).astype(np.int16)
            assert np.abs(pa - pb).mean() <= 1.0
        # Associated images decode the same way too.
        label_a = a.associated_images["label"].astype(np.int16)
        label_b = b.associated_images["label"].astype(np.int16)
        assert label_a.shape == label_b.shape
        assert np.abs(label_a - label_b).mean() <= 1.0


def test_cmu_is_tissue_not_blank(cmu_slide: Path) -> None:
    # A real H&E field: the centre must hold stained (non-white, varied) pixels.
    with open_slide(cmu_slide) as slide:
        region = slide.read_region((900, 1300), 0, (256, 256))
    assert region.mean() < 230
    assert region.std() > 10


# ------------------------------------------------------------------------------------------ boxes.tiff


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_boxes_levels_and_pixels(fixtures_dir: Path, backend: str) -> None:
    expected = np.asarray(Image.open(fixtures_dir / "boxes.png").convert("RGB"))
    with open_slide(fixtures_dir / "boxes.tiff", backend=backend) as slide:
        assert slide.vendor == "generic-tiff"
        assert slide.dimensions == (300, 250)
        assert slide.level_dimensions == ((300, 250), (150, 125), (75, 62), (37, 31))
        assert slide.level_downsamples == pytest.approx((1.0, 2.0, 4.016, 8.086), abs=1e-3)
        assert slide.mpp == pytest.approx(352.78, rel=1e-4)
        assert slide.mpp_source == ("openslide" if backend == "openslide" else "tiff-resolution")
        level0 = slide.read_region((0, 0), 0, (300, 250))
        assert level0.shape == expected.shape
        assert np.abs(level0.astype(np.int16) - expected).mean() <= 1.0
        # Every level is a reduced copy of level 0: same mean colour within a few grey levels.
        for level, (w, h) in enumerate(slide.level_dimensions):
            whole = slide.read_region((0, 0), level, (w, h))
            assert whole.shape == (h, w, 3)
            assert np.abs(whole.reshape(-1, 3).mean(0) - expected.reshape(-1, 3).mean(0)).max() < 8


def test_boxes_backends_agree_on_every_level(fixtures_dir: Path) -> None:
    with open_slide(fixtures_dir / "boxes.tiff", backend="openslide") as a:
        with open_slide(fixtures_dir / "boxes.tiff", backend="tiffslide") as b:
            for level, (w, h) in enumerate(a.level_dimensions):
                pa = a.read_region((0, 0), level, (w, h)).astype(np.int16)
                pb = b.read_region((0, 0), level, (w, h)).astype(np.int16)
                assert np.abs(pa - pb).mean() <= 1.0


# ------------------------------------------------------------------------------------------ small openslide fixtures


def test_small_svs(fixtures_dir: Path) -> None:
    with open_slide(fixtures_dir / "small.svs") as slide:
        assert slide.vendor == "aperio"
        assert slide.dimensions == (16, 16)
        assert slide.mpp == pytest.approx(0.499)
        assert slide.read_region((0, 0), 0, (16, 16)).shape == (16, 16, 3)


@pytest.mark.parametrize("name", ["boxes_0.dcm", "boxes_1.dcm"])
def test_dicom_through_openslide(fixtures_dir: Path, name: str) -> None:
    with open_slide(fixtures_dir / name) as slide:
        assert slide.backend == "openslide"
        assert slide.vendor == "dicom"
        assert slide.dimensions == (16, 16)
        region = slide.read_region((0, 0), 0, (16, 16))
        assert region.shape == (16, 16, 3) and region.dtype == np.uint8
        assert "thumbnail" in slide.associated_images


def test_dicom_refused_by_tiffslide_with_hint(fixtures_dir: Path) -> None:
    with pytest.raises(UnsupportedSlideError) as info:
        open_slide(fixtures_dir / "boxes_0.dcm", backend="tiffslide")
    assert "boxes_0.dcm" in str(info.value)
    assert "backend='auto'" in str(info.value)


def test_unopenable_tiff_is_a_clear_error(fixtures_dir: Path) -> None:
    with pytest.raises(SlideError) as info:
        open_slide(fixtures_dir / "unopenable.tiff")
    message = str(info.value)
    assert "unopenable.tiff" in message
    assert "52479" in message  # the unknown compression is named


@pytest.mark.parametrize("backend", ["auto", "openslide", "tiffslide"])
def test_unreadable_svs_is_corrupt(fixtures_dir: Path, backend: str) -> None:
    with pytest.raises(CorruptSlideError) as info:
        open_slide(fixtures_dir / "unreadable.svs", backend=backend)
    assert "unreadable.svs" in str(info.value)
    assert "marker" in str(info.value).lower()  # the decoder's reason travels with it


# ------------------------------------------------------------------------------------------ ome-edge


def test_plain_tiff_without_resolution_has_no_mpp(ome_dir: Path) -> None:
    path = ome_dir / "cells.tif"
    with open_slide(path) as slide:
        assert slide.backend == "tiffslide"  # a stripped TIFF: OpenSlide refuses it
        assert slide.dimensions == (93, 131)
        assert not slide.has_mpp
        assert slide.mpp_source is None
        assert slide.objective_power is None
        with pytest.raises(MissingMPPError) as info:
            _ = slide.mpp
        assert "cells.tif" in str(info.value) and "--mpp" in str(info.value)
        with pytest.raises(MissingMPPError):
            slide.level_for_mpp(0.5)
        assert slide.describe()["mpp"] is None
        assert slide.read_region((0, 0), 0, (93, 131)).shape == (131, 93, 3)
    with open_slide(path, mpp=0.25) as slide:
        assert slide.mpp == 0.25
        assert slide.mpp_source == "override"
        assert slide.objective_power == 40.0


def test_two_channel_ome_is_refused_but_its_mpp_is_readable(ome_dir: Path) -> None:
    path = ome_dir / "cells-2c.ome.tif"
    with pytest.raises(UnsupportedSlideError) as info:
        open_slide(path)
    assert "cells-2c.ome.tif" in str(info.value)
    assert "2 channels" in str(info.value) and "not RGB" in str(info.value)
    # The pixel size the metadata states is still understood by both MPP sources.
    with tifffile.TiffFile(path) as tf:
        assert mpp_from_ome_xml(tf.ome_metadata) == pytest.approx((0.25, 0.25))
        tags = tf.pages[0].tags
        from_tags = mpp_from_resolution(
            tags["XResolution"].value, tags["YResolution"].value, tags["ResolutionUnit"].value
        )
    assert from_tags == pytest.approx((0.25, 0.25))


def test_planar_ome_is_refused(ome_dir: Path) -> None:
    with pytest.raises(UnsupportedSlideError) as info:
        open_slide(ome_dir / "cells.ome.tif")
    assert "cells.ome.tif" in str(info.value)
    assert "SYX" in str(info.value)


# ------------------------------------------------------------------------------------------ bad inputs


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(SlideError) as info:
        open_slide(tmp_path / "nope.svs")
    assert "nope.svs" in str(info.value) and "no such file" in str(info.value)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedSlideError) as info:
        open_slide(tmp_path)
    assert "directory" in str(info.value)


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.svs"
    path.write_bytes(b"")
    with pytest.raises(CorruptSlideError) as info:
        open_slide(path)
    assert "empty.svs" in str(info.value) and "0 bytes" in str(info.value)


def test_unknown_format(tmp_path: Path) -> None:
    path = tmp_path / "notes.svs"
    path.write_text("this is not a slide\n" * 10)
    with pytest.raises(UnsupportedSlideError) as info:
        open_slide(path)
    assert "notes.svs" in str(info.value) and "unknown format" in str(info.value)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.999])
def test_truncated_copy_of_cmu(cmu_slide: Path, tmp_path: Path, fraction: float) -> None:
    data = cmu_slide.read_bytes()
    path = tmp_path / "cut.svs"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CorruptSlideError) as info:
        open_slide(path)
    assert "cut.svs" in str(info.value) and "truncated" in str(info.value)


def test_tiff_with_tile_data_beyond_the_end(tmp_path: Path) -> None:
    # Directories intact (written first), pixel data cut off: still truncated, still caught at open.
    rng = np.random.default_rng(1)
    path = tmp_path / "cut_data.tif"
    tifffile.imwrite(path, rng.integers(0, 255, (256, 256, 3), dtype=np.uint8), photometric="rgb", tile=(64, 64))
    data = path.read_bytes()
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        first_tile_end = page.dataoffsets[0] + page.databytecounts[0]
        # tifffile writes the directory first, so cutting after the first tile keeps it whole.
        assert page.offset < page.dataoffsets[0] and len(tf.pages) == 1
    assert first_tile_end + 10 < len(data)
    path.write_bytes(data[: first_tile_end + 10])
    with pytest.raises(CorruptSlideError) as info:
        open_slide(path, backend="tiffslide")
    assert "cut_data.tif" in str(info.value) and "truncated" in str(info.value)


@pytest.mark.parametrize("suffix, fmt", [(".png", "PNG"), (".jpg", "JPEG")])
def test_plain_images_are_one_level_slides(tmp_path: Path, suffix: str, fmt: str) -> None:
    yy, xx = np.mgrid[0:120, 0:160]
    pixels = np.stack([xx, yy, (xx + yy) // 2], axis=-1).astype(np.uint8)  # smooth, so JPEG keeps it closely
    path = tmp_path / f"photo{suffix}"
    Image.fromarray(pixels).save(path, format=fmt, quality=95)
    with open_slide(path) as slide:
        assert slide.backend == "pil"
        assert slide.vendor == fmt.lower()
        assert slide.dimensions == (160, 120)
        assert slide.level_count == 1
        assert not slide.has_mpp  # PNG/JPEG DPI is not a microscope pixel size
        with pytest.raises(MissingMPPError):
            _ = slide.mpp
        region = slide.read_region((10, 20), 0, (50, 40))
        tolerance = 0 if fmt == "PNG" else 3
        assert np.abs(region.astype(np.int16) - pixels[20:60, 10:60]).mean() <= tolerance
        region[:] = 0  # callers own what they get back; the slide's copy must not change
        assert slide.read_region((10, 20), 0, (1, 1)).max() > 0
    with open_slide(path, mpp=0.5) as slide:
        assert slide.mpp == 0.5 and slide.mpp_source == "override"
        assert slide.level_for_mpp(1.0) == 0


def test_png_with_transparency_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 2] = 200
    rgba[:, 5:, 3] = 255  # left half transparent
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    with open_slide(path) as slide:
        region = slide.read_region((0, 0), 0, (10, 10))
    assert (region[:, :5] == 255).all()
    assert (region[:, 5:] == [0, 0, 200]).all()


def test_truncated_png_is_corrupt(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    path = tmp_path / "cut.png"
    Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptSlideError) as info:
        open_slide(path)
    assert "cut.png" in str(info.value)


def test_bad_arguments(cmu_slide: Path) -> None:
    with pytest.raises(ConfigError):
        open_slide(cmu_slide, backend="bioformats")
    for bad in (0, -0.5, float("nan"), float("inf"), "0.5"):
        with pytest.raises(ConfigError):
            open_slide(cmu_slide, mpp=bad)


def test_every_shared_slide_opens_or_fails_cleanly(slides_dir: Path) -> None:
    # Whatever the file, the only exceptions that escape are slidestream's own, and describe() is JSON.
    paths = sorted(p for p in slides_dir.rglob("*") if p.is_file() and p.suffix != ".md")
    assert len(paths) >= 10
    opened = 0
    for path in paths:
        try:
            slide = open_slide(path)
        except SlideError as exc:
            assert path.name in str(exc)
            continue
        with slide:
            facts = json.loads(json.dumps(slide.describe()))
            assert facts["dimensions"] == list(slide.dimensions)
            assert facts["file_size"] == path.stat().st_size
            opened += 1
    assert opened >= 7


def test_copied_slide_keeps_its_facts(cmu_slide: Path, tmp_path: Path) -> None:
    # Content, not the name, decides the reader: a renamed copy opens the same way.
    path = tmp_path / "renamed.bin"
    shutil.copyfile(cmu_slide, path)
    with open_slide(path) as slide:
        assert slide.vendor == "aperio" and slide.dimensions == (2220, 2967)
