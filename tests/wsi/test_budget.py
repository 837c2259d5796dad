"""The pixel budget: TIFF directories read without decoding, decompression bombs refused before any decoder runs,
thumbnails and regions held to the budget, and formats that cannot be validated probed in a separate process.

Files that would make OpenSlide abort the process (a tile claiming gigapixels) are only ever handed to
``check_pixel_budget`` here; opening them with ``open_slide`` is tested in a child process in tests/faults.
"""

from __future__ import annotations

import pickle
import struct
import time
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from slidestream.errors import ConfigError, CorruptSlideError, SlideTooLargeError
from slidestream.wsi import open_slide
from slidestream.wsi import budget as budget_module
from slidestream.wsi.budget import DEFAULT_MAX_PIXELS, MAX_SLIDE_PIXELS, check_pixel_budget, probe_in_child
from slidestream.wsi.direct import DirectTiffReader, jpeg_frame_size
from slidestream.wsi.tiffdir import TiffStructureError, read_tiff_layout


# --------------------------------------------------------------------------------------------------- directories


def test_layout_matches_tifffile_on_a_pyramid_with_subifds(tmp_path):
    path = tmp_path / "ome.ome.tif"
    image = np.zeros((300, 520, 3), np.uint8)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(image, tile=(128, 128), subifds=2, photometric="rgb")
        tw.write(image[::2, ::2], tile=(64, 64), subfiletype=1, photometric="rgb")
        tw.write(image[::4, ::4], subfiletype=1, photometric="rgb", rowsperstrip=10)
    layout = read_tiff_layout(path)
    assert layout.bigtiff and not layout.ndpi and layout.ifd_count == 1
    assert [(i.where, i.width, i.height, i.tile) for i in layout.images] == [
        ("IFD 0", 520, 300, (128, 128)), ("SubIFD 0 of IFD 0", 260, 150, (64, 64)),
        ("SubIFD 1 of IFD 0", 130, 75, None)]
    assert layout.images[2].unit == (130, 10, 1) and layout.images[0].unit_pixels == 128 * 128


def test_layout_of_a_real_svs_matches_tifffile(cmu_slide):
    layout = read_tiff_layout(cmu_slide)
    with tifffile.TiffFile(cmu_slide) as tf:
        pages = [(int(p.imagewidth), int(p.imagelength), p.is_tiled) for p in tf.pages]
    assert [(i.width, i.height, i.tile is not None) for i in layout.images] == pages


def test_damaged_directories_are_reported(tmp_path, hostile_tiff):
    good = hostile_tiff(tmp_path / "good.tif", [{"width": 64, "height": 64, "tile": (16, 16)}])
    data = good.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[:40])
    with pytest.raises(TiffStructureError, match="truncated") as info:
        read_tiff_layout(cut)
    assert info.value.corrupt
    loop = tmp_path / "loop.tif"
    first = struct.unpack_from("<I", data, 4)[0]
    n = struct.unpack_from("<H", data, first)[0]
    patched = bytearray(data)
    struct.pack_into("<I", patched, first + 2 + 12 * n, first)  # next directory: itself
    loop.write_bytes(bytes(patched))
    with pytest.raises(TiffStructureError, match="loops"):
        read_tiff_layout(loop)
    plain = tmp_path / "plain.png"
    Image.new("RGB", (4, 4)).save(plain)
    with pytest.raises(TiffStructureError) as info:
        read_tiff_layout(plain)
    assert not info.value.corrupt


# --------------------------------------------------------------------------------------------------- bombs


BOMBS = {
    # a 10^6 x 10^6 image in one strip, classic and BigTIFF
    "strip": ({"width": 10**6, "height": 10**6}, False, "over the limit"),
    "bigtiff-strip": ({"width": 10**6, "height": 10**6}, True, "over the limit"),
    # within the image limit, but one tile of 65536 x 65536 (OpenSlide allocates 16 GiB for it, then aborts)
    "huge-tile": ({"width": 65536, "height": 65536, "tile": (65536, 65536)}, False, "tiles of 65,536 x 65,536"),
    "bigtiff-huge-tile": ({"width": 200_000, "height": 100_000, "tile": (32768, 32768)}, True, "tiles of 32,768"),
    # a 40000 x 40000 strip: 1.6 gigapixels decoded at once
    "one-strip": ({"width": 40_000, "height": 40_000}, False, "strips of 40,000 x 40,000"),
    # many strips of a sane size, but an image beyond any slide
    "huge-image": ({"width": 2_000_000, "height": 1_000_000, "rows_per_strip": 1000}, True, "over the limit"),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_bombs_are_refused_from_their_headers(tmp_path, hostile_tiff, name):
    image, bigtiff, message = BOMBS[name]
    path = hostile_tiff(tmp_path / f"{name}.tif", [image], bigtiff=bigtiff)
    assert path.stat().st_size < 20_000
    t0 = time.perf_counter()
    with pytest.raises(SlideTooLargeError, match=message) as info:
        check_pixel_budget(path)
    assert time.perf_counter() - t0 < 1.0
    err = info.value
    assert err.path == str(path) and str(path) in str(err) and "--max-pixels" in str(err)
    assert err.claimed > err.budget and f"{err.budget:,}" in str(err)
    # the budget is the user's: raised far enough, the same file passes the check
    assert check_pixel_budget(path, max_pixels=err.claimed) == "tiff"


def test_a_bomb_in_a_subifd_or_an_associated_image_is_found(tmp_path, hostile_tiff):
    path = hostile_tiff(tmp_path / "svs-like.tif", [
        {"width": 1024, "height": 1024, "tile": (256, 256)},
        {"width": 50_000, "height": 30_000},  # a "macro image" in one strip
    ])
    with pytest.raises(SlideTooLargeError, match="IFD 1"):
        check_pixel_budget(path)
    sub = tmp_path / "sub.tif"
    with tifffile.TiffWriter(sub) as tw:
        tw.write(np.zeros((64, 64, 3), np.uint8), tile=(16, 16), subifds=1, photometric="rgb")
        tw.write(np.zeros((32, 32, 3), np.uint8), subfiletype=1, photometric="rgb", rowsperstrip=32)
    assert check_pixel_budget(sub) == "tiff"
    with pytest.raises(SlideTooLargeError, match="SubIFD 0 of IFD 0"):
        check_pixel_budget(sub, max_pixels=512)


def test_deflate_strip_bomb_is_refused_before_tifffile_decodes_it(tmp_path, hostile_tiff):
    stream = zlib.compress(b"\xff" * 300_000, 9)
    path = hostile_tiff(tmp_path / "deflate.tif", [{"width": 30_000, "height": 30_000, "compression": 8}],
                        data=stream)
    with pytest.raises(SlideTooLargeError, match="strips of 30,000 x 30,000"):
        open_slide(path)


def test_real_slides_pass(cmu_slide, slides_dir):
    assert check_pixel_budget(cmu_slide) == "tiff"
    assert check_pixel_budget(slides_dir / "openslide-fixtures" / "boxes.tiff") == "tiff"
    assert check_pixel_budget(slides_dir / "openslide-fixtures" / "boxes.png") == "image"
    assert check_pixel_budget(slides_dir / "openslide-fixtures" / "boxes_0.dcm") == "other"
    assert DEFAULT_MAX_PIXELS < MAX_SLIDE_PIXELS


def test_plain_images_are_held_to_the_budget(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (1200, 1000), "white").save(path)
    assert check_pixel_budget(path) == "image"
    with pytest.raises(SlideTooLargeError, match="1,200 x 1,000"):
        open_slide(path, max_pixels=1_000_000)
    # a PNG whose header claims 30000 x 30000: PIL's own bomb guard, reported as ours
    bomb = tmp_path / "bomb.png"
    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    struct.pack_into(">II", data, ihdr + 4, 30_000, 30_000)
    struct.pack_into(">I", data, ihdr + 17, zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    bomb.write_bytes(bytes(data))
    with pytest.raises(SlideTooLargeError, match="PIL refuses"):
        open_slide(bomb)


def test_max_pixels_is_checked():
    for bad in (0, -5, 1.5, "many", True):
        with pytest.raises(ConfigError, match="max_pixels"):
            budget_module.check_max_pixels(bad)
    assert budget_module.check_max_pixels(2e9) == 2_000_000_000


# --------------------------------------------------------------------------------------------------- reads


def test_thumbnail_of_a_slide_without_pyramid_is_refused_at_once(tmp_path, hostile_tiff):
    # 100000 x 100000 in 256 px tiles (all pointing at one Deflate tile): 1.2 MB on disk, 10^10 pixels
    tile = zlib.compress(b"\xf0" * (256 * 256 * 3), 9)
    path = hostile_tiff(tmp_path / "flat.tif", [{"width": 100_000, "height": 100_000, "tile": (256, 256),
                                                 "compression": 8}], data=tile)
    with open_slide(path, mpp=0.5) as slide:
        assert slide.level_count == 1
        t0 = time.perf_counter()
        with pytest.raises(SlideTooLargeError, match="level 0 .* read for a 1024 x 1024 thumbnail") as info:
            slide.thumbnail(1024)
        assert time.perf_counter() - t0 < 1.0
        assert info.value.claimed == 10**10 and "pyramid" in str(info.value)
        region = slide.read_region((0, 0), 0, (300, 200))  # what the budget allows still reads
        assert region.shape == (200, 300, 3) and (region == 0xF0).all()
        with pytest.raises(ConfigError, match="pixel budget"):
            slide.read_region((0, 0), 0, (20_000, 20_000))


def test_budget_travels_with_the_slide(slides_dir):
    # boxes.tiff: levels of 300 x 250, 150 x 125, 75 x 62, 37 x 31 in 64 px tiles
    with open_slide(slides_dir / "openslide-fixtures" / "boxes.tiff", max_pixels=5000) as slide:
        assert slide.max_pixels == 5000
        with pytest.raises(SlideTooLargeError, match="level 0 .* 75,000 pixels"):
            slide.thumbnail(300)
        assert slide.thumbnail(37).shape == (31, 37, 3)  # level 3 is within the budget
        again = pickle.loads(pickle.dumps(slide))
        assert again.max_pixels == 5000
        again.close()


def test_a_jpeg_tile_claiming_more_than_its_tile_is_refused(tmp_path):
    path = tmp_path / "jpeg.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(np.full((128, 128, 3), 200, np.uint8), tile=(64, 64), compression="jpeg", photometric="rgb")
    with tifffile.TiffFile(path) as tf:
        offset = tf.pages[0].dataoffsets[0]
        count = tf.pages[0].databytecounts[0]
    data = bytearray(path.read_bytes())
    tile = bytes(data[offset:offset + count])
    assert jpeg_frame_size(tile) == (64, 64)
    sof = tile.index(b"\xff\xc0")
    struct.pack_into(">HH", data, offset + sof + 5, 60_000, 60_000)  # height, width
    path.write_bytes(bytes(data))
    reader = DirectTiffReader(path, [(128, 128)])
    with pytest.raises(ValueError, match="60000x60000 JPEG image in a 64x64 tile"):
        reader.raw_tile(0, 0, 0)
    assert len(reader.raw_tile(0, 1, 0)) > 0
    reader.close()


# --------------------------------------------------------------------------------------------------- probe


def test_unvalidated_formats_are_probed_once_in_a_child(slides_dir, monkeypatch):
    dicom = slides_dir / "openslide-fixtures" / "boxes_0.dcm"
    budget_module._probed.clear()
    calls = []
    real_run = budget_module.subprocess.run
    monkeypatch.setattr(budget_module.subprocess, "run", lambda *a, **k: calls.append(a) or real_run(*a, **k))
    with open_slide(dicom) as slide:
        assert slide.backend == "openslide"
    with open_slide(dicom):
        pass
    assert len(calls) == 1  # remembered for this file


def test_a_crash_in_the_probe_is_one_slide_error(slides_dir):
    dicom = slides_dir / "openslide-fixtures" / "boxes_0.dcm"
    with pytest.raises(CorruptSlideError, match="crashed \\(SIGABRT\\)") as info:
        probe_in_child(dicom, code="import os; os.abort()")
    assert str(dicom) in str(info.value)
    with pytest.raises(CorruptSlideError, match="MemoryError"):
        probe_in_child(dicom, code="raise MemoryError('16 GiB')")
    with pytest.raises(CorruptSlideError, match="did not finish"):
        probe_in_child(dicom, code="import time; time.sleep(30)", timeout=0.5)
    # and the real probe of a real file passes
    probe_in_child(dicom)


def test_the_probe_runs_under_a_memory_limit(slides_dir):
    dicom = slides_dir / "openslide-fixtures" / "boxes_0.dcm"
    # the real probe, with an allocation of 2 GiB where OpenSlide would allocate a bombed tile
    greedy = budget_module._PROBE_CODE.replace("import openslide\n", "import openslide\nbytearray(2 << 30)\n")
    assert greedy != budget_module._PROBE_CODE
    t0 = time.perf_counter()
    with pytest.raises(CorruptSlideError, match="MemoryError"):
        probe_in_child(dicom, code=greedy, memory=1 << 30)
    assert time.perf_counter() - t0 < 30
