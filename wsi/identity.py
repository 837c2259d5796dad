"""What identifies a slide: its id in file names (``<slide_id>.zarr``) and a cheap fingerprint of its content."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

__all__ = ["file_fingerprint", "slide_id_from_path"]

# Bytes hashed at each end of the file by file_fingerprint: headers and directories of TIFF-like formats sit at
# the start or the end, so an edit, re-export or truncation almost always changes one of them.
_FINGERPRINT_CHUNK = 1 << 20

_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_MAX_ID_LENGTH = 200


def slide_id_from_path(path: str | os.PathLike) -> str:
    """Identifier of a slide for file names (``<slide_id>.zarr``), from the file's name without extension.

    Characters outside ``[A-Za-z0-9._-]`` become ``_``; a leading ``.`` becomes ``_`` so the id is never hidden
    and never ``.``/``..``; directory parts are dropped, so ``"../x.svs"`` gives ``"x"`` and cannot escape an
    output folder. Very long names are cut and suffixed with a hash of the full name.

    Parameters
    ----------
    path : str or os.PathLike
        Slide path; only the last component is used.

    Returns
    -------
    str
        Non-empty, at most 200 + 9 characters. Different names can map to the same id (``"a b"`` and ``"a_b"``):
        stores must detect such collisions through the slide identity they record.

    Examples
    --------
    >>> slide_id_from_path("/data/TCGA 01.svs")
    'TCGA_01'
    >>> slide_id_from_path(".hidden.svs")
    '_hidden'
    """
    name = Path(os.fspath(path)).name
    stem = Path(name).stem if name not in ("", ".", "..") else name
    slide_id = _UNSAFE_ID_CHARS.sub("_", stem)
    if slide_id.startswith("."):
        slide_id = "_" + slide_id[1:]
    if not slide_id:
        slide_id = "slide"
    if len(slide_id) > _MAX_ID_LENGTH:
        digest = hashlib.blake2b(stem.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()
        slide_id = f"{slide_id[:_MAX_ID_LENGTH]}-{digest}"
    return slide_id


def file_fingerprint(path: str | os.PathLike) -> str:
    """Cheap content fingerprint of a file: BLAKE2b of its size and its first and last MiB.

    Reads at most 2 MiB, so it is fast on slides of any size. It detects re-exports, truncation and edits of
    headers/directories; a change confined to the middle of a large file goes unnoticed. For multi-file formats
    (MIRAX ``.mrxs`` + data folder, DICOM series) only the given file is hashed.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    str
        32 lowercase hex digits.
    """
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        digest = hashlib.blake2b(digest_size=16)
        digest.update(size.to_bytes(8, "little"))
        digest.update(fh.read(_FINGERPRINT_CHUNK))
        if size > _FINGERPRINT_CHUNK:
            fh.seek(max(_FINGERPRINT_CHUNK, size - _FINGERPRINT_CHUNK))
            digest.update(fh.read(_FINGERPRINT_CHUNK))
    return digest.hexdigest()
