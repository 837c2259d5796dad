"""Planted decompression bombs, slide and annotation: each is refused within seconds with a clear error and
bounded memory, by the real command line, and the rest of the batch is tiled, recorded and unlocked.

Before the pixel budget, the first of these files made OpenSlide abort the whole process (16 GiB for one tile),
the Deflate strip made ``info`` die with a MemoryError traceback, and the untiled pyramid-less TIFF was decoded
whole for the tissue overview.
"""

from __future__ import annotations

import gzip
import json
import zlib

import numpy as np
import pytest

# Peak resident memory allowed to a command fed bombs (the acceptance bound is 2 GB; tiling the good slides of
# a batch takes a few hundred MB).
PEAK = 2 * 10**9


def _slide_bombs(folder, hostile_tiff):
    deflate = zlib.compress(b"\xff" * 3000, 9)
    tile = zlib.compress(b"\xf0" * (256 * 256 * 3), 9)
    return {
        # 2 KB: 10^6 x 10^6 in 65536 px tiles; OpenSlide's first tile decode asked for 16 GiB and aborted
        "huge_tiles": hostile_tiff(folder / "huge_tiles.tif", [{"width": 10**6, "height": 10**6,
                                                                 "tile": (65536, 65536)}]),
        # a single 65536 x 65536 tile, within the image limit: only the tile check stops it
        "one_tile": hostile_tiff(folder / "one_tile.tif", [{"width": 65536, "height": 65536, "tile": (65536, 65536)}]),
        # 200 bytes: a Deflate strip claiming 10^6 x 10^6 (tifffile allocated it: MemoryError in `info`)
        "deflate_strip": hostile_tiff(folder / "deflate_strip.tif", [{"width": 10**6, "height": 10**6,
                                                                      "compression": 8}], data=deflate),
        "bigtiff_strip": hostile_tiff(folder / "bigtiff_strip.tif", [{"width": 200_000, "height": 200_000}],
                                      bigtiff=True),
        # 1.2 MB: 100000 x 100000 in 256 px tiles and no pyramid (the overview decoded all of it)
        "no_pyramid": hostile_tiff(folder / "no_pyramid.tif", [{"width": 100_000, "height": 100_000,
                                                                "tile": (256, 256), "compression": 8,
                                                                "extra": {282: ("R", [20000, 1]),  # 0.5 µm/px
                                                                          283: ("R", [20000, 1]),
                                                                          296: ("H", 3)}}], data=tile),
    }


@pytest.fixture(scope="module")
def bombs(tmp_path_factory, hostile_tiff):
    return _slide_bombs(tmp_path_factory.mktemp("bombs"), hostile_tiff)


@pytest.mark.parametrize("name", ["huge_tiles", "one_tile", "deflate_strip", "bigtiff_strip"])
def test_info_refuses_each_bomb_and_lists_the_good_slides(bombs, good_slides, slidestream_cli, name):
    run = slidestream_cli("info", "--json", good_slides[0], bombs[name], good_slides[1])
    assert run.rc == 1, run.out
    doc = json.loads(run.out[run.out.index("{"):run.out.rindex("}") + 1])
    assert [d["path"] for d in doc["slides"]] == [str(p) for p in good_slides]
    (failed,) = doc["failed"]
    assert failed["type"] == "SlideTooLargeError" and failed["path"] == str(bombs[name])
    assert "over the" in failed["error"] and "--max-pixels" in failed["error"]
    assert "Traceback" not in run.out
    assert run.seconds < 30 and run.peak < PEAK, (run.seconds, run.peak)


def test_a_batch_with_bombs_tiles_the_good_slides(bombs, good_slides, slidestream_cli, tmp_path):
    out = tmp_path / "stores"
    run = slidestream_cli("tile", good_slides[0], *bombs.values(), good_slides[1], "--out", out, "--workers", "2",
                          "--no-save-patches", timeout=600)
    assert run.rc == 1, run.out
    assert run.peak < PEAK, run.peak
    record = json.loads((out / "run-tile.json").read_text())
    status = {s["slide_id"]: s for s in record["slides"]}
    assert status["good_a"]["status"] == status["good_b"]["status"] == "ok"
    assert status["good_a"]["details"]["tiles"] > 10 and status["good_b"]["details"]["tiles"] > 10
    for name in bombs:
        assert status[name]["status"] == "failed" and "SlideTooLargeError" not in status[name]["error"]
        assert str(bombs[name]) in status[name]["error"] and "pixels" in status[name]["error"]
        assert not (out / f"{name}.zarr").exists()
    assert "no pyramid level small enough" in status["no_pyramid"]["error"]
    assert record["counts"] == {"ok": 2, "skipped": 0, "failed": len(bombs)}
    assert sorted(p.name for p in out.glob("*.zarr")) == ["good_a.zarr", "good_b.zarr"]
    assert list((out / ".locks").glob("*")) == []  # every lock released
    assert "Traceback" not in run.out


def test_the_budget_is_the_users_to_set(tmp_path, hostile_tiff, slidestream_cli):
    # a genuine 6000 x 6000 image in one Deflate strip: 36 megapixels decoded at once
    strip = zlib.compress(bytes(6000 * 6000 * 3), 9)
    path = hostile_tiff(tmp_path / "one_strip.tif", [{"width": 6000, "height": 6000, "compression": 8}], data=strip)
    assert slidestream_cli("info", path).rc == 0
    low = slidestream_cli("info", "--max-pixels", "1e7", path)
    assert low.rc == 1 and "over the budget of 10,000,000 pixels" in " ".join(low.out.split())
    assert slidestream_cli("info", "--max-pixels", "many", path).rc == 2


def test_a_raised_budget_still_cannot_crash_the_batch(bombs, good_slides, slidestream_cli):
    # raised past the 65536 x 65536 tile, the file reaches OpenSlide, which aborts on it: in the probing process
    run = slidestream_cli("info", "--json", "--max-pixels", "5e9", good_slides[0], bombs["one_tile"])
    assert run.rc == 1, run.out
    doc = json.loads(run.out[run.out.index("{"):run.out.rindex("}") + 1])
    assert [d["path"] for d in doc["slides"]] == [str(good_slides[0])]
    assert doc["failed"][0]["type"] == "CorruptSlideError" and "separate process" in doc["failed"][0]["error"]


def _roi_bombs(folder):
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 2000, (100_000, 2)).round(1).tolist()  # a scribble: make_valid ran to 8 GB on these
    scribble = folder / "scribble.geojson"
    scribble.write_text(json.dumps({"type": "Feature", "properties": {"objectType": "annotation"},
                                    "geometry": {"type": "Polygon", "coordinates": [xy + [xy[0]]]}}))
    inflating = folder / "inflating.geojson.gz"  # 200 KB that decompress to 200 MB
    with gzip.open(inflating, "wb", compresslevel=9) as f:
        f.write(b'{"type": "FeatureCollection", "features": [')
        for _ in range(200):
            f.write(b" " * (1 << 20))
        f.write(b"]}")
    return {"scribble": (scribble, "max_crossings="), "inflating": (inflating, "max_bytes=")}


@pytest.mark.parametrize("name", ["scribble", "inflating"])
def test_roi_bombs_are_refused(good_slides, slidestream_cli, tmp_path, name):
    path, option = _roi_bombs(tmp_path)[name]
    out = tmp_path / "stores"
    run = slidestream_cli("tile", good_slides[0], "--out", out, "--roi", path, "--no-save-patches")
    assert run.rc == 1, run.out
    record = json.loads((out / "run-tile.json").read_text())
    (slide,) = record["slides"]
    assert slide["status"] == "failed" and str(path) in slide["error"] and option in slide["error"]
    assert run.seconds < 60 and run.peak < PEAK, (run.seconds, run.peak)
    assert list(out.glob("*.zarr")) == [] and list((out / ".locks").glob("*")) == []
