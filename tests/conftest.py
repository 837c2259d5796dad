"""Shared fixtures: where the shared test data lives, and how its absence is handled."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    env = os.environ.get("SLIDESTREAM_SHARED_DATA")
    return Path(env) if env else _PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ``../shared/data``; skips (or fails under SLIDESTREAM_REQUIRE_SHARED_DATA=1) when absent."""
    path = _shared_data_dir()
    if not (path / "README.md").is_file():
        msg = f"shared test data not found at {path} (set SLIDESTREAM_SHARED_DATA)"
        if os.environ.get("SLIDESTREAM_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def slides_dir(shared_data: Path) -> Path:
    return shared_data / "slides"


@pytest.fixture(scope="session")
def cmu_slide(slides_dir: Path) -> Path:
    return slides_dir / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a test module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    the test machines are small and shared, small models run fastest on one thread, and OpenMP threads would spin
    against other jobs. Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)



def _tiff_bytes(ifds: list[dict], *, bigtiff: bool, data: bytes) -> bytes:
    """A TIFF whose directories hold exactly ``ifds`` (tag -> (struct code, values)), ``data`` at byte 16."""
    import struct

    types = {"B": 1, "H": 3, "I": 4, "Q": 16, "R": 5}  # R: RATIONAL, given as [numerator, denominator, ...]
    o, inline = "<", 8 if bigtiff else 4
    buf = bytearray(16) + data
    buf += b"\0" * (-len(buf) % 8)
    starts = []
    for ifd in ifds:
        starts.append(len(buf))
        entries = sorted(ifd.items())
        size = (8 + len(entries) * 20 + 8) if bigtiff else (2 + len(entries) * 12 + 4)
        extra, body = bytearray(), bytearray(struct.pack(o + ("Q" if bigtiff else "H"), len(entries)))
        for tag, (code, values) in entries:
            values = list(values) if isinstance(values, (list, tuple)) else [values]
            raw = struct.pack(o + code.replace("R", "I") * len(values), *values)
            count = len(values) // 2 if code == "R" else len(values)
            if len(raw) <= inline:
                value = raw.ljust(inline, b"\0")
            else:
                value = struct.pack(o + ("Q" if bigtiff else "I"), len(buf) + size + len(extra))
                extra += raw + b"\0" * (len(raw) % 2)
            head = struct.pack(o + ("HHQ" if bigtiff else "HHI"), tag, types[code], count)
            body += head + value
        body += b"\0" * (8 if bigtiff else 4)
        buf += body + extra
        buf += b"\0" * (-len(buf) % 8)
    for k, start in enumerate(starts):
        nxt = starts[k + 1] if k + 1 < len(starts) else 0
        (n,) = struct.unpack_from(o + ("Q" if bigtiff else "H"), buf, start)
        struct.pack_into(o + ("Q" if bigtiff else "I"), buf, start + (8 + n * 20 if bigtiff else 2 + n * 12), nxt)
    if bigtiff:
        struct.pack_into(o + "2sHHHQ", buf, 0, b"II", 43, 8, 0, starts[0])
    else:
        struct.pack_into(o + "2sHI", buf, 0, b"II", 42, starts[0])
    return bytes(buf)


def _image_ifd(width: int, height: int, *, tile: tuple[int, int] | None = None, rows_per_strip: int | None = None,
               compression: int = 1, data_len: int = 8, big: bool = False, extra: dict | None = None) -> dict:
    """Directory of an RGB image whose every tile or strip points at the ``data_len`` bytes at byte 16."""
    offsets = "Q" if big else "I"
    ifd = {256: ("I", width), 257: ("I", height), 258: ("H", [8, 8, 8]), 259: ("H", compression),
           262: ("H", 2), 277: ("H", 3), 284: ("H", 1)}
    if tile is not None:
        n = -(-width // tile[0]) * -(-height // tile[1])
        ifd.update({322: ("I", tile[0]), 323: ("I", tile[1]), 324: (offsets, [16] * n), 325: (offsets, [data_len] * n)})
    else:
        rows = rows_per_strip or height
        n = -(-height // rows)
        ifd.update({278: ("I", rows), 273: (offsets, [16] * n), 279: (offsets, [data_len] * n)})
    ifd.update(extra or {})
    return ifd


@pytest.fixture(scope="session")
def hostile_tiff():
    """``hostile_tiff(path, images, bigtiff=False, data=...)``: write a tiny TIFF whose directories claim what
    ``images`` says, each a dict of ``width``, ``height`` and optionally ``tile`` (w, h), ``rows_per_strip``,
    ``compression``, ``extra`` (more tags); every tile or strip points at ``data`` (default 8 white bytes; pass a
    zlib stream with ``compression=8`` for a Deflate bomb). Returns ``path``."""

    def write(path: Path, images: list[dict], *, bigtiff: bool = False, data: bytes = b"\xff" * 8) -> Path:
        ifds = [_image_ifd(**{"data_len": len(data), "big": bigtiff, **image}) for image in images]
        Path(path).write_bytes(_tiff_bytes(ifds, bigtiff=bigtiff, data=data))
        return Path(path)

    return write
