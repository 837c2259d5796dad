"""Sample formats read from TIFF headers: what is refused when opened, what the tiler refuses as greyscale."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from slidestream.errors import UnsupportedSlideError
from slidestream.wsi.pixels import check_pixel_format, is_greyscale
from slidestream.wsi.tiffdir import read_tiff_layout


@pytest.mark.parametrize("bigtiff", [False, True])
@pytest.mark.parametrize("dtype,photometric,samples,bits,fmt", [
    (np.uint8, "rgb", 3, 8, 1),
    (np.uint16, "rgb", 3, 16, 1),
    (np.float32, "rgb", 3, 32, 3),
    (np.int16, "minisblack", 1, 16, 2),
    (np.uint8, "minisblack", 1, 8, 1),
])
def test_the_sample_format_is_read_from_the_headers(tmp_path, bigtiff, dtype, photometric, samples, bits, fmt):
    shape = (256, 256, 3) if samples == 3 else (256, 256)
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, np.zeros(shape, dtype), tile=(128, 128), photometric=photometric, bigtiff=bigtiff)
    image = read_tiff_layout(path).images[0]
    assert (image.samples, image.bits, image.sample_format) == (samples, bits, fmt)
    assert image.photometric == (2 if photometric == "rgb" else 1)
    refused = fmt != 1 or bits > 16
    if refused:
        with pytest.raises(UnsupportedSlideError, match=f"{bits}-bit .*samples"):
            check_pixel_format(path)
    else:
        check_pixel_format(path)
    assert is_greyscale(path) == (photometric == "minisblack")


def test_other_files_are_left_to_the_readers(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n")
    check_pixel_format(path)
    assert is_greyscale(path, {"pil.mode": "L"}) and not is_greyscale(path, {"pil.mode": "RGB"})
