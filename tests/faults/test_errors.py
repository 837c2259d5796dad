"""Fault injection: friendly errors, not tracebacks.

Each case plants one bad input or option value that used to end in a traceback or in a misleading message
(``--out`` naming a file, ``--device cuda`` without a GPU, a bad ``SLIDESTREAM_SCHEDULER``, ``--target-mpp nan``,
a negative ``--batch-size``, binary bytes in a manifest, float32 and greyscale TIFFs called "damaged" or tiled into
0 tiles, a slide without tissue at training time, a pixel-size hint naming the wrong option) and checks the exit
status, a message naming the option or the file, and that nothing else of the batch was lost or changed.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import tifffile
import torch

from slidestream.errors import ConfigError, UnsupportedSlideError
from slidestream.fileio import output_folder
from slidestream.pipeline.embed import embed_batch
from slidestream.tiling.grid import TilingParams
from slidestream.wsi import open_slide

from .conftest import TILING, cli, flat, ok, snapshot

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def usage_error(result, option: str) -> str:
    out = flat(result)
    assert result.exit_code == 2, out
    assert "Traceback" not in result.output
    assert f"Invalid value for '{option}'" in out or f"Invalid value for {option}" in out, out
    return out


def failure(result) -> str:
    out = flat(result)
    assert result.exit_code == 1, out
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return out


def _write_tiff(path, data, photometric=None):
    # 0.5 µm/px in the TIFF resolution tags (20,000 pixels per cm), tiled like a slide
    tifffile.imwrite(path, data, tile=(256, 256), resolution=(20000, 20000), resolutionunit="CENTIMETER",
                     photometric=photometric)
    return path


@pytest.fixture
def batch(batch_copy):
    return batch_copy


def test_out_naming_a_file_is_a_usage_error_for_every_command(batch):
    root = batch
    afile = root / "afile"
    afile.write_bytes(b"not a folder\n")
    slides, stores, model, manifest = root / "slides", root / "stores", root / "model", root / "manifest.csv"
    commands = {
        "tile": ["tile", slides, "--out", afile],
        "run": ["run", slides, "--model", model, "--out", afile],
        "heatmap": ["heatmap", stores, "--model", "x", "--out", afile],
        "predict": ["predict", manifest, "--stores", stores, "--model", model, "--out", afile],
        "train": ["train", manifest, "--stores", stores, "--encoder", "handcrafted", "--out", afile],
        "export-features": ["export-features", stores, "--encoder", "handcrafted", "--out", afile],
        "bench": ["bench", manifest, "--out", afile],
        "demo": ["demo", "--out", afile],
        "qupath-project": ["qupath-project", slides, "--out", afile],
    }
    before = snapshot(root)
    for name, args in commands.items():
        out = usage_error(cli(*args), "--out")
        assert "is a file" in out, name
    assert snapshot(root) == before
    # and the library, for its own callers: a file, or a file among the parents
    for path in (afile, afile / "sub"):
        with pytest.raises(ConfigError, match="is a file, not a folder"):
            output_folder(path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu(batch):
    before = snapshot(batch)
    out = usage_error(cli("embed", batch / "stores", "--device", "cuda"), "--device")
    assert "CUDA is not available" in out and "--device cpu" in out
    usage_error(cli("train", batch / "manifest.csv", "--stores", batch / "stores", "--encoder", "handcrafted",
                    "--out", batch / "m2", "--device", "cuda:1"), "--device")
    with pytest.raises(ConfigError, match="--device cuda: CUDA is not available"):
        embed_batch([batch / "stores" / "s0.zarr"], "handcrafted", device="cuda", overwrite=True)
    assert snapshot(batch) == before


@pytest.mark.parametrize("address", ["bogus", "tcp://", "http://host:8786", "tcp://host:port", "local cluster"])
def test_a_bad_scheduler_from_the_environment(batch, address):
    before = snapshot(batch)
    r = cli("tile", batch / "slides", "--out", batch / "stores", *TILING, env={"SLIDESTREAM_SCHEDULER": address})
    out = usage_error(r, "--scheduler")
    assert "SLIDESTREAM_SCHEDULER" in out
    assert snapshot(batch) == before


@pytest.mark.parametrize("args,option", [
    (["--target-mpp", "nan"], "--target-mpp"),
    (["--target-mpp", "-0.5"], "--target-mpp"),
    (["--target-mpp", "inf"], "--target-mpp"),
    (["--tile-size", "0"], "--tile-size"),
    (["--min-tissue", "nan"], "--min-tissue"),
    (["--tissue-threshold", "nan"], "--tissue-threshold"),
    (["--workers", "-2"], "--workers"),
])
def test_bad_tiling_numbers_at_the_door(batch, args, option):
    before = snapshot(batch)
    usage_error(cli("tile", batch / "slides", "--out", batch / "new", *args), option)
    assert snapshot(batch) == before and not (batch / "new").exists()


def test_the_library_refuses_a_nan_pixel_size_too():
    for mpp in (math.nan, math.inf, -1.0, 0.0):
        with pytest.raises(ConfigError, match="--target-mpp"):
            TilingParams(mpp=mpp)


def test_negative_batch_size(batch):
    before = snapshot(batch)
    usage_error(cli("embed", batch / "stores", "--batch-size", "-3"), "--batch-size")
    assert snapshot(batch) == before


@pytest.mark.parametrize("content", [b"slide,label\n\xff\xfe\x00\x01,1\n", b"PK\x03\x04\x14\x00\x06\x00\x08\x00\xa0\xb1"])
def test_binary_bytes_in_a_manifest(batch, content):
    manifest = batch / "binary.csv"
    manifest.write_bytes(content)
    before = snapshot(batch)
    for args in (["info", manifest], ["tile", manifest, "--out", batch / "stores"],
                 ["predict", manifest, "--stores", batch / "stores", "--model", batch / "model", "--out",
                  batch / "pred"]):
        out = failure(cli(*args))
        assert f"{manifest}: not a readable CSV manifest" in out and "UTF-8" in out
    assert snapshot(batch) == before


def test_float_and_grey_tiffs_are_named_and_the_batch_goes_on(batch):
    slides = batch / "slides"
    rng = np.random.default_rng(0)
    f32 = _write_tiff(slides / "f32.tif", rng.random((512, 512, 3), dtype=np.float32), photometric="rgb")
    grey = _write_tiff(slides / "grey.tif", rng.integers(0, 255, (512, 512), dtype=np.uint8),
                       photometric="minisblack")
    with pytest.raises(UnsupportedSlideError, match="32-bit floating-point samples"):
        open_slide(f32)
    with open_slide(grey) as slide:  # a grey image still opens (CAMELYON16's masks are such files)
        assert slide.dimensions == (512, 512)
    r = cli("tile", slides, "--out", batch / "tiles", *TILING)
    out = failure(r)
    assert "f32.tif: 32-bit floating-point samples" in out and "damaged" not in out
    assert "grey.tif: greyscale image" in out and "colour saturation" in out
    record = (batch / "tiles" / "run-tile.json").read_text()
    assert '"ok": 4' in record  # the four slides of the batch were tiled


def test_a_slide_without_tissue_is_left_out_of_training_by_name(batch):
    slides = batch / "slides"
    blank = _write_tiff(slides / "blank.tif", np.full((1024, 1024, 3), 243, np.uint8), photometric="rgb")
    ok("tile", blank, "--out", batch / "stores", *TILING)
    ok("embed", batch / "stores", "--encoder", "handcrafted")
    manifest = batch / "with_blank.csv"
    rows = list(csv.reader(open(batch / "manifest.csv"))) + [["slides/blank.tif", "0"]]
    csv.writer(open(manifest, "w", newline="")).writerows(rows)
    r = cli("train", manifest, "--stores", batch / "stores", "--encoder", "handcrafted", "--out", batch / "m2",
            "--folds", "2", "--epochs", "1", "--device", "cpu")
    out = failure(r)  # exit 1: a slide was left out
    assert "blank" in out and "no tissue tiles" in out and "Traceback" not in out
    assert (batch / "m2" / "model.safetensors").is_file()  # trained on the other four


def test_the_pixel_size_hint_names_target_mpp(batch):
    r = cli("tile", batch / "slides" / "s0.svs", "--out", batch / "fine", "--target-mpp", "0.25")
    out = failure(r)
    assert "choose --target-mpp 0.5 or coarser" in out, out
