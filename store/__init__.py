"""The per-slide Zarr v3 store, ``<slide_id>.zarr``: the one data contract between the stages.

The tiler writes coords, tissue fractions, patches and QC into it; embedding adds ``features/<encoder>``;
prediction adds ``scores/<model>``. :mod:`slidestream.store.slide_store` documents the layout;
:mod:`slidestream.store.integrity` how damage is found (checksums, missing chunks, :func:`verify_store`).
"""

from .codecs import JpegTileCodec
from .integrity import StoreCheck, verify_store
from .slide_store import (DEFAULT_CHUNK_TILES, JPEG_CHUNK_TILES, SCHEMA_VERSION, JpegTiles, SlideIdentity, SlideStore,
                          checked_array, identity_dict, identity_of)

__all__ = ["DEFAULT_CHUNK_TILES", "JPEG_CHUNK_TILES", "SCHEMA_VERSION", "JpegTileCodec", "JpegTiles", "SlideIdentity",
           "SlideStore", "StoreCheck", "checked_array", "identity_dict", "identity_of", "verify_store"]
