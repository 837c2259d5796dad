"""A Zarr v3 codec that stores each tile as a JPEG stream, so a slide's own JPEG tiles can be kept as they are.

``patches`` of a store tiled at a slide's native grid (the pyramid level's own tile size, tiles on the stored tile
grid) holds the slide's compressed tiles byte for byte: one Zarr chunk per tile, inside shards of
``chunk_tiles`` tiles. Readers decode them with :class:`JpegTileCodec` (imagecodecs' libjpeg-turbo, the decoder
slidestream's direct reader uses), so ``patches[i]`` is the same uint8 ``(S, S, 3)`` tile that reading the
slide gives. Writing pixels through Zarr encodes them as JPEG (lossy, ``level`` quality); the tiler does not do
that, it writes the stored bytes (see :meth:`slidestream.store.SlideStore.write_jpeg_shard`).

The codec is registered with Zarr under :data:`CODEC_NAME` when this module is imported (opening a store through
:mod:`slidestream.store` does it), and for any Zarr reader through the ``zarr.codecs`` entry point that an
installed slidestream declares.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import imagecodecs
import numpy as np
import zarr.registry
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.common import parse_named_configuration

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer

CODEC_NAME = "slidestream.jpeg"

@dataclass(frozen=True)
class JpegTileCodec(ArrayBytesCodec):
    """Array → bytes codec: an ``(..., H, W, 3)`` uint8 chunk holding one tile ↔ a baseline JPEG stream.

    Parameters
    ----------
    colorspace : int, str or None
        Colour space of the JPEG data (libjpeg ``J_COLOR_SPACE``, e.g. 2 RGB, 3 YCbCr; None: as the stream says).
        Aperio writes "RGB" JPEG (no colour transform) as well as YCbCr; this keeps decoding faithful to the
        slide's own TIFF tags.
    outcolorspace : int, str or None
        Colour space decoded to (2, RGB).
    level : int
        Quality used when pixels are *encoded* through Zarr (not on the tiler's pass-through path).
    """

    is_fixed_size = False
    colorspace: int | str | None = None
    outcolorspace: int | str | None = 2
    level: int = 90

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        _, config = parse_named_configuration(data, CODEC_NAME, require_configuration=False)
        return cls(**(config or {}))

    def to_dict(self) -> dict[str, Any]:
        return {"name": CODEC_NAME, "configuration": {
            "colorspace": self.colorspace, "outcolorspace": self.outcolorspace, "level": self.level}}

    def validate(self, *, shape, dtype, chunk_grid) -> None:
        if np.dtype(dtype.to_native_dtype()) != np.uint8:
            raise ValueError(f"{CODEC_NAME} stores uint8 RGB tiles, not {dtype}")

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        pixels = imagecodecs.jpeg8_decode(chunk_bytes.to_bytes(), colorspace=self.colorspace,
                                          outcolorspace=self.outcolorspace)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(pixels.reshape(chunk_spec.shape))

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer:
        pixels = np.ascontiguousarray(chunk_array.as_ndarray_like()).reshape(chunk_spec.shape[-3:])
        # encode in the colour space the stream is decoded from: "RGB" JPEG (Aperio) stays untransformed
        jpeg_space = "RGB" if self.colorspace in (2, "RGB", "rgb") else "YCBCR"
        data = imagecodecs.jpeg8_encode(pixels, level=self.level, colorspace="RGB", outcolorspace=jpeg_space)
        return chunk_spec.prototype.buffer.from_bytes(data)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        # libjpeg releases the GIL: decoding in threads lets a many-tile read use several cores.
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer:
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        # Zarr asks only fixed-size codecs (is_fixed_size) for this; a JPEG's size is known after encoding.
        raise ValueError(f"{CODEC_NAME} is a variable-size codec: its encoded size cannot be computed in advance")


zarr.registry.register_codec(CODEC_NAME, JpegTileCodec)
